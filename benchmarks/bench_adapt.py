"""Issue 15 adaptation: a new actor from ~2 minutes of footage -- finetune vs base model vs from scratch, per seed.

Run: .venv/bin/python benchmarks/bench_adapt.py BASE_MODEL CORPUS_CLIPS --speaker astronaut_rms --out /work/runs/adapt
     [--minutes 2] [--footage-seed 1] [--seeds 0 1 2] [--threads 1] [--lock /work/runs/quiet.lock]

BASE_MODEL was trained with the demo preset on speaker-split shards in which `--speaker` is a test
(unseen) voice; CORPUS_CLIPS is `a2bs extract` of the demo corpus. The benchmark
1. renders new footage of that one voice on its face with `a2bs.synth.corpus.generate_corpus` (another
   seed than the corpus, into OUT/footage) and keeps the first clips, in order, that share no sentence
   with the speaker's corpus clips (flite and festival speak a sentence the same way every time, so a
   shared one would leak the evaluation audio) until they last `--minutes`;
2. `a2bs extract`s them and builds them once, split by clip: ``finetune.val_fraction`` of the clips in
   val (they choose the epoch of every model trained below), the rest in train;
3. per seed (``finetune.seed`` / ``train.seed``): `a2bs finetune BASE_MODEL` learns a new identity (the
   speaker's name) from those shards, with the identity rows only, with ``--head`` and with ``--train all``
   (the backbone too, at ``finetune.backbone_lr``); `a2bs train`
   (demo preset, no identities) trains a model from scratch on the same shards;
4. `a2bs evaluate --split test`s every model on the speaker's corpus clips (the "other clips": the test
   split, no val split, never seen by any choice): the base model (the same for every seed) with the
   average identity and with its face's identity, the fine-tuned ones with the new identity, the scratch one.
Every step is skipped when its output exists, so a rerun only redoes what is missing; each `a2bs` step
runs under ``flock -s LOCK`` when `--lock` is given (one training at a time on a shared machine).
Prints a markdown table per seed and their mean, and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine, table

DEMO_YAML = REPO / "a2bs" / "demo" / "demo.yaml"
FILLER = "hopper_awb"  # the train split of the scored shards (another face and voice), never scored
FINETUNES = (("finetune", "identity"), ("finetune_head", "head"), ("finetune_all", "all"))  # run folder, --train
METRICS = ("mae", "mouth_mae", "jaw_corr", "lip_corr")
# model variants: (label, report folder, scored with the identity of the clips' face)
VARIANTS = (("base model (unseen voice), average identity", "report_base", False),
            ("base model, its face's identity ({face})", "report_base", True),
            ("fine-tuned: new identity {speaker!r} (identity rows)", "report_finetune", True),
            ("fine-tuned: new identity {speaker!r} + output head (--head)", "report_finetune_head", True),
            ("fine-tuned: new identity {speaker!r} + head + backbone (--train all)", "report_finetune_all", True),
            ("from scratch on the same footage", "report_scratch", False))


def cli(args: list[str], log: Path, lock: str = "") -> float:
    """Run `a2bs ARGS` under nice (and ``flock -s LOCK``) with this worktree first on the path; returns its wall seconds."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    locked = ["flock", "-s", lock] if lock else []
    t0 = time.perf_counter()
    with log.open("a") as out:
        rc = subprocess.run([*locked, "nice", "-n", "10", sys.executable, "-m", "a2bs.cli", *args, "--quiet"],
                            check=False, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"bench_adapt: `a2bs {' '.join(args)}` failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def spoken(texts: list[str], language: str) -> set[str]:
    """The sentences of `language`'s pool (a2bs.synth.sentences) that occur in `texts` (clip records' text)."""
    from a2bs.synth.sentences import SENTENCES

    return {s for s in SENTENCES[language.split("-")[0]] if any(s in t for t in texts)}


def render_footage(speaker: str, out: Path, seconds: float, seed: int) -> list[Path]:
    """New clips of `speaker` (face_voice) sharing no sentence with its corpus clips, `seconds` in all."""
    from a2bs.synth.corpus import generate_corpus
    from a2bs.synth.speech import VOICES

    face, voice_name = speaker.split("_", 1)
    voice = next(v for v in VOICES if v.name == voice_name)
    meta = json.loads((REPO / "a2bs" / "demo" / "corpus" / "corpus.json").read_text())
    taken = spoken([c["text"] for c in meta["clips"] if c["speaker"] == speaker], voice.language)
    n = int(seconds / 6) + 4
    while True:  # a rerun keeps the clips already rendered, so growing n only renders the new ones
        records = generate_corpus(out, n_clips=n, seed=seed, voices=(voice,), faces=(face,), progress=False)
        picked, total = [], 0.0
        for r in records:
            if taken.isdisjoint(spoken([r["text"]], voice.language)) and total < seconds:
                picked.append(out / r["file"])
                total += r["duration_s"]
        if total >= seconds:
            return picked
        n += 4


def select_clips(src: Path, dst: Path, speakers: tuple[str, ...]) -> None:
    """A clips folder (`a2bs extract` layout) holding only the clips of `speakers` in `src`, as symlinks."""
    if (dst / "_manifest.json").is_file():
        return
    (dst / "clips").mkdir(parents=True, exist_ok=True)
    man = json.loads((src / "_manifest.json").read_text())
    man["clips"] = {k: v for k, v in man["clips"].items() if v["speaker_id"] in speakers}
    missing = set(speakers) - {v["speaker_id"] for v in man["clips"].values()}
    if missing:
        raise SystemExit(f"bench_adapt: no clips of speaker(s) {sorted(missing)} in {src}")
    for k in man["clips"]:
        link = dst / "clips" / k
        if not link.exists():
            link.symlink_to(src / "clips" / k)
    (dst / "_config.yaml").write_text((src / "_config.yaml").read_text())
    (dst / "_manifest.json").write_text(json.dumps(man, indent=1))


def scores(report_dir: Path, with_identity: bool) -> dict:
    """The headline split's metrics of an `a2bs evaluate` report, with the clips' face given or not."""
    rep = json.loads((report_dir / "report.json").read_text())
    entry = rep["splits"][rep["split"]]
    return (entry["with_identity"] if with_identity else entry)["metrics"]


def main() -> None:
    from a2bs.config import FinetuneConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_model")
    ap.add_argument("corpus_clips")
    ap.add_argument("--speaker", default="astronaut_rms", help="held-out speaker <face>_<voice> of the corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--footage-seed", type=int, default=1, help="synth seed of the new footage (the corpus used 0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (finetune and scratch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lock", default="", help="run every a2bs step under `flock -s LOCK`")
    args = ap.parse_args()
    out, speaker = Path(args.out), args.speaker
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}

    def step(name: str, args_: list[str], done: Path) -> None:
        if not done.exists():
            times[name] = cli(args_, log, args.lock)
            (out / "times.json").write_text(json.dumps(times, indent=1))

    load0 = os.getloadavg()[0]
    picked = render_footage(speaker, out / "footage", args.minutes * 60, args.footage_seed)
    foot = out / "footage_clips"
    step("extract", ["extract", *map(str, picked), "--out", str(foot), "--no-ray"], foot / "_summary.json")
    footage_s = sum(c["duration_s"] for c in json.loads((foot / "_manifest.json").read_text())["clips"].values())
    demo = ["--no-ray", "--config", str(DEMO_YAML)]
    # the speaker's corpus clips as the test split, scored with the new identity (speaker) and its face's (prefix);
    # `a2bs build` wants a train split, so one other corpus speaker fills it (evaluate scores held-out splits only)
    select_clips(Path(args.corpus_clips), out / "scored_clips", (speaker, FILLER))
    for rule in ("speaker", "prefix"):
        step(f"build scored {rule}", ["build", str(out / "scored_clips"), "--out", str(out / f"scored_{rule}"), *demo,
                                      "sequence.split_by=speaker", "sequence.val_fraction=0", "sequence.test_fraction=0",
                                      "sequence.known_clip_fraction=0", f"sequence.test_speakers=[{speaker}]",
                                      f"sequence.identity_from={rule}"], out / f"scored_{rule}" / "_manifest.json")
    # one split of the footage for every model: the same clips train, the same clips choose the epoch
    val_fraction = FinetuneConfig.val_fraction
    shards = out / "footage_shards"
    step("build footage", ["build", str(foot), "--out", str(shards), *demo, "sequence.split_by=clip",
                           f"sequence.val_fraction={val_fraction}", "sequence.test_fraction=0",
                           "sequence.known_clip_fraction=0", "sequence.identity_from="], shards / "_manifest.json")
    evaluate = ["--split", "test"]
    step("evaluate base", ["evaluate", args.base_model, str(out / "scored_prefix"), "--out", str(out / "report_base"),
                           *evaluate], out / "report_base" / "report.json")
    threads = f"train.torch_threads={args.threads}"
    for seed in args.seeds:
        run = out / f"seed{seed}"
        for name, mode in FINETUNES:
            step(f"seed{seed} {name}", ["finetune", args.base_model, str(shards), "--identity", speaker,
                                        "--train", mode, "--out", str(run / name), f"finetune.seed={seed}", threads],
                 run / name / "model.safetensors")
        step(f"seed{seed} scratch", ["train", str(shards), "--out", str(run / "scratch"), *demo,
                                     "sequence.identity_from=", f"train.seed={seed}", threads],
             run / "scratch" / "model.safetensors")
        for name in (*(n for n, _ in FINETUNES), "scratch"):
            step(f"seed{seed} evaluate {name}", ["evaluate", str(run / name / "model.safetensors"),
                                                 str(out / "scored_speaker"), "--out", str(run / f"report_{name}"),
                                                 *evaluate], run / f"report_{name}" / "report.json")
    report(args, out, times, picked, footage_s, load0)


def report(args: argparse.Namespace, out: Path, times: dict, picked: list[Path], footage_s: float,
           load0: float) -> None:
    """Print a table per seed and their mean; write OUT/results.json."""
    speaker, face = args.speaker, args.speaker.split("_", 1)[0]
    labels = [label.format(face=face, speaker=speaker) for label, _, _ in VARIANTS]
    per_seed: dict[int, list[dict]] = {}
    for seed in args.seeds:
        per_seed[seed] = [scores(out / rep if rep == "report_base" else out / f"seed{seed}" / rep, known)
                          for _, rep, known in VARIANTS]
    scored = [c for c in json.loads((out / "scored_clips" / "_manifest.json").read_text())["clips"].values()
              if c["speaker_id"] == speaker]
    shards_man = json.loads((out / "footage_shards" / "_manifest.json").read_text())
    print(f"\nMachine: {machine()}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    print(f"Footage: {len(picked)} new clips of {speaker}, {footage_s:.0f} s (synth seed {args.footage_seed}); "
          f"windows train {shards_man['splits']['train']['rows']}, val {shards_man['splits'].get('val', {}).get('rows', 0)}; "
          f"scored on its {len(scored)} corpus clips ({sum(c['duration_s'] for c in scored):.0f} s).")
    results: dict = {"labels": labels, "seeds": {}, "times": times}
    for seed, rows in per_seed.items():
        ft = {n: json.loads((out / f"seed{seed}" / n / "finetune.json").read_text()) for n, _ in FINETUNES}
        kept = ", ".join(f"{n} epoch {ft[n]['best_epoch']}/{ft[n]['epochs']} ({times.get(f'seed{seed} {n}', float('nan')):.0f} s)"
                         for n in ft)
        print(f"\nSeed {seed}: kept {kept}; scratch `a2bs train` {times.get(f'seed{seed} scratch', float('nan')):.0f} s.\n")
        print(table(["model", "MAE", "mouth MAE", "jaw r", "lip r"],
                    [[label, *(f"{m[k]:.4f}" for k in METRICS)] for label, m in zip(labels, rows)]))
        results["seeds"][seed] = {"metrics": rows, "finetune": ft}
    mean = [{k: sum(per_seed[s][i][k] for s in args.seeds) / len(args.seeds) for k in METRICS}
            for i in range(len(VARIANTS))]
    print(f"\nMean of seeds {', '.join(map(str, args.seeds))} (the base model is the same for every seed):\n")
    print(table(["model", "MAE", "mouth MAE", "jaw r", "lip r"],
                [[label, *(f"{m[k]:.4f}" for k in METRICS)] for label, m in zip(labels, mean)]))
    results["mean"] = mean
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
