"""The main job: the whole chain on the bundled demo corpus with an embedded local Ray.

extract -> build -> train -> evaluate -> infer, each stage writing under one output folder, so a
new user sees every artefact a2bs makes in one run. Reruns skip what is already done.
"""

from __future__ import annotations

import time
from itertools import zip_longest
from pathlib import Path

from a2bs.config import Config, load_config
from a2bs.runtime import console, storage

DEMO_CORPUS = Path(__file__).resolve().parent / "corpus"
DEMO_PRESET = Path(__file__).resolve().parent / "demo.yaml"


def demo_config(cfg: Config | None = None) -> Config:
    """The demo preset (``a2bs/demo/demo.yaml``, shipped in the package) applied on top of `cfg`."""
    return load_config(DEMO_PRESET, base=cfg)  # a missing preset is an error, never a silent fallback


def demo_clip_paths(clips_per_speaker: int = 0, speakers: int = 0) -> list[Path]:
    """The demo corpus' clips, sorted; a subset for a quick smoke run when asked.

    `clips_per_speaker` > 0 keeps the first that many clips of each speaker; `speakers` > 0 keeps that many
    speakers, taken in turn from each face (the speaker folder's prefix, as ``sequence.identity_from=prefix``
    reads it), so a small subset still has every face and both held-out splits have voices to draw from.

    Raises:
        FileNotFoundError: the corpus is not inside the installed package.
    """
    from a2bs.build.shards import clip_identity

    clips = sorted(DEMO_CORPUS.rglob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"demo corpus not found under {DEMO_CORPUS}")
    by_speaker: dict[str, list[Path]] = {}
    for c in clips:
        by_speaker.setdefault(c.parent.name, []).append(c)
    if speakers > 0:
        by_face: dict[str, list[str]] = {}
        for name in sorted(by_speaker):
            by_face.setdefault(clip_identity(name, "prefix"), []).append(name)
        in_turn = [name for row in zip_longest(*by_face.values()) for name in row if name]
        by_speaker = {name: by_speaker[name] for name in in_turn[:speakers]}
    if clips_per_speaker > 0:
        by_speaker = {name: group[:clips_per_speaker] for name, group in by_speaker.items()}
    return sorted(c for group in by_speaker.values() for c in group)


def run_demo(out_dir: str, cfg: Config, clips_per_speaker: int = 0, speakers: int = 0) -> int:
    """Run every stage on the demo corpus; show one line per stage and a closing summary.

    `clips_per_speaker` or `speakers` > 0 runs on a subset (:func:`demo_clip_paths`: a quick smoke run; the
    full corpus is the demo).

    Layout: OUT/clips (extract), OUT/shards (build), OUT/train (RUN_DIR, model.safetensors),
    OUT/report (evaluate on every held-out split), OUT/infer (Live Link CSV of one held-out clip).
    The closing lines give both held-out numbers against the seed's targets (:func:`held_out_lines`).
    """
    from a2bs.build.pipeline import run_build
    from a2bs.evaluate.report import evaluate
    from a2bs.extract.pipeline import run_extract
    from a2bs.infer.offline import run_infer
    from a2bs.train.trainer import run_exists, train

    t0 = time.perf_counter()
    clips = demo_clip_paths(clips_per_speaker, speakers)
    storage.makedirs(out_dir)
    clips_dir, shards_dir = storage.join(out_dir, "clips"), storage.join(out_dir, "shards")
    run_dir, report_dir = storage.join(out_dir, "train"), storage.join(out_dir, "report")
    subset = clips_per_speaker > 0 or speakers > 0
    inputs = [str(c) for c in clips] if subset else [str(DEMO_CORPUS)]
    extract = run_extract(inputs, clips_dir, cfg, progress=True)
    console.say(extract.line())
    build = run_build(clips_dir, shards_dir, cfg)
    console.say(build.line())
    trained = train(shards_dir, run_dir, cfg, resume=run_exists(run_dir))
    console.say(trained.line())
    report = evaluate(trained.model_path, shards_dir, report_dir)
    console.say(report.line())
    held_out = _held_out_clip(clips_dir, shards_dir, clips)
    inferred = run_infer(trained.model_path, [str(held_out)], storage.join(out_dir, "infer"), cfg, fmt="livelink-csv")
    console.say(inferred.line())
    for line in held_out_lines(report.splits, build_split_by(shards_dir)):
        console.say(line)
    console.summary(f"demo: done in {time.perf_counter() - t0:.0f} s; model {trained.model_path}, "
                    f"report {report_dir}/report.json (targets.md: every split), plots in {report_dir}")
    return 0


def build_split_by(shards_dir: str) -> str:
    """How the shards were split ("speaker" or "clip"), from their manifest."""
    from a2bs.manifests import ShardsManifest

    return ShardsManifest.load(shards_dir).sequence.split_by


def held_out_lines(splits: dict[str, dict], split_by: str) -> list[str]:
    """The demo's two numbers, each against the seed's targets: known voices on unseen clips (the
    ``known`` split, or with a by-clip split its test clips) and unseen voices (the test split of a
    by-speaker split); a number the split settings do not give says so. A model with identities is
    scored with the average face and, after it, with each voice's own face (the rig a user picks)."""
    from a2bs.train.metrics import JAW_CORR, LIP_CORR, MAE, MOUTH_MAE, format_metrics

    def scored(entry: dict) -> str:
        passed = sum(r["passed"] for r in entry["targets"])
        return (f"{format_metrics(entry['metrics'], (MAE, MOUTH_MAE, JAW_CORR, LIP_CORR))} "
                f"({passed}/{len(entry['targets'])} seed targets)")

    known = "known" if "known" in splits else ("test" if split_by == "clip" and "test" in splits else None)
    unseen = "test" if split_by == "speaker" and "test" in splits else None
    lines = []
    for title, name in (("known voices, unseen clips", known), ("unseen voices", unseen)):
        if name is None:
            lines.append(f"demo: {title}: none held out (too few speakers, or sequence.*_fraction 0)")
            continue
        entry, own = splits[name], splits[name].get("with_identity")
        line = f"demo: {title} ({name} split: {', '.join(entry['speakers'])}): "
        if own is None:
            lines.append(line + scored(entry))
        else:
            lines.append(f"{line}average face: {scored(entry)}; "
                         f"with their face ({', '.join(own['identities'])}): {scored(own)}")
    return lines


def _held_out_clip(clips_dir: str, shards_dir: str, clips: list[Path]) -> Path:
    """A demo clip never trained on: of the test split if there is one, else of val. The shards manifest
    lists its clip ids, the clips manifest their source files (the first of `clips` if none matches)."""
    from a2bs.manifests import ClipsManifest, ShardsManifest

    sources = ClipsManifest.load(clips_dir).clips
    splits = ShardsManifest.load(shards_dir).splits
    held = splits.get("test") or splits["val"]
    ids = {sources[cid].source_uri for cid in held.clips if cid in sources}
    return next((c for c in clips if str(c) in ids), clips[0])
