"""Issue 15 adaptation: a new actor from ~2 minutes of footage -- finetune vs base model vs from scratch.

Run: .venv/bin/python benchmarks/bench_adapt.py BASE_MODEL CORPUS_CLIPS --speaker astronaut_rms --out /work/runs/adapt
     [--minutes 2] [--seed 1] [--threads 1]

BASE_MODEL was trained with the demo preset on speaker-split shards in which `--speaker` is a test
(unseen) voice; CORPUS_CLIPS is `a2bs extract` of the demo corpus. The benchmark
1. renders new footage of that one voice on its face with `a2bs.synth.corpus.generate_corpus` (another
   seed than the corpus, into OUT/footage) and keeps the first clips, in order, that share no sentence
   with the speaker's corpus clips (flite and festival speak a sentence the same way every time, so a
   shared one would leak the evaluation audio) until they last `--minutes`;
2. `a2bs extract`s them; `a2bs finetune BASE_MODEL` learns a new identity (the speaker's name) from them;
   `a2bs train` (demo preset, split by clip, no identities) trains a model from scratch on the same clips;
3. `a2bs evaluate`s every model on the speaker's corpus clips (the "other clips"): the base model with the
   average identity and with its face's identity, the fine-tuned one with the new identity, the scratch model.
Every step is skipped when its output exists, so a rerun only redoes what is missing. Prints a markdown table.
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
# `a2bs evaluate` wants a val split: the eval shards hold two other corpus speakers (one val, one train,
# neither scored) and the speaker as the test split, which is what is scored
FILLERS = ("astronaut_slt", "hopper_awb")
METRICS = ("mae", "mouth_mae", "jaw_corr", "lip_corr")


def cli(args: list[str], log: Path) -> float:
    """Run `a2bs ARGS` under nice with this worktree first on the path; returns its wall seconds."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    with log.open("a") as out:
        rc = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "a2bs.cli", *args, "--quiet"],
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
    rep = json.loads((report_dir / "report.json").read_text())
    entry = rep["splits"][rep["split"]]
    return (entry["with_identity"] if with_identity else entry)["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_model")
    ap.add_argument("corpus_clips")
    ap.add_argument("--speaker", default="astronaut_rms", help="held-out speaker <face>_<voice> of the corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1, help="synth seed of the new footage (the corpus used 0)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out, speaker, face = Path(args.out), args.speaker, args.speaker.split("_", 1)[0]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}

    def step(name: str, args_: list[str], done: Path) -> None:
        if not done.exists():
            times[name] = cli(args_, log)
            (out / "times.json").write_text(json.dumps(times, indent=1))

    load0 = os.getloadavg()[0]
    picked = render_footage(speaker, out / "footage", args.minutes * 60, args.seed)
    foot = out / "footage_clips"
    step("extract", ["extract", *map(str, picked), "--out", str(foot), "--no-ray"], foot / "_summary.json")
    footage_s = sum(c["duration_s"] for c in json.loads((foot / "_manifest.json").read_text())["clips"].values())
    # the speaker's corpus clips, scored with the new identity (speaker) and with its face's (prefix)
    select_clips(Path(args.corpus_clips), out / "eval_clips", (speaker, *FILLERS))
    for rule in ("speaker", "prefix"):
        step(f"build eval {rule}", ["build", str(out / "eval_clips"), "--out", str(out / f"eval_{rule}"), "--no-ray",
                                    "--config", str(DEMO_YAML), "sequence.split_by=speaker", "sequence.val_fraction=0.5",
                                    "sequence.test_fraction=0", "sequence.known_clip_fraction=0",
                                    f"sequence.test_speakers=[{speaker}]", f"sequence.identity_from={rule}"],
             out / f"eval_{rule}" / "_manifest.json")
    threads = f"train.torch_threads={args.threads}"
    step("finetune", ["finetune", args.base_model, str(foot), "--identity", speaker, "--out", str(out / "finetune"),
                      threads], out / "finetune" / "model.safetensors")
    step("build scratch", ["build", str(foot), "--out", str(out / "scratch_shards"), "--no-ray", "--config",
                           str(DEMO_YAML), "sequence.split_by=clip", "sequence.test_fraction=0",
                           "sequence.known_clip_fraction=0", "sequence.identity_from="],
         out / "scratch_shards" / "_manifest.json")
    step("train scratch", ["train", str(out / "scratch_shards"), "--out", str(out / "scratch"), "--no-ray",
                           "--config", str(DEMO_YAML), "sequence.identity_from=", threads],
         out / "scratch" / "model.safetensors")
    models = {"base": (args.base_model, "eval_prefix"), "finetune": (str(out / "finetune" / "model.safetensors"),
              "eval_speaker"), "scratch": (str(out / "scratch" / "model.safetensors"), "eval_speaker")}
    for name, (model, shards) in models.items():
        step(f"evaluate {name}", ["evaluate", model, str(out / shards), "--out", str(out / f"report_{name}"),
                                  "--split", "test"], out / f"report_{name}" / "report.json")
    ft = json.loads((out / "finetune" / "finetune.json").read_text())
    rows = [("base model (unseen voice), average identity", scores(out / "report_base", False)),
            (f"base model, its face's identity ({face})", scores(out / "report_base", True)),
            (f"fine-tuned: new identity {speaker!r}", scores(out / "report_finetune", True)),
            ("from scratch on the same footage", scores(out / "report_scratch", False))]
    metric_rows = [[name, *(f"{m[k]:.4f}" for k in METRICS)] for name, m in rows]
    scored = [c for c in json.loads((out / "eval_clips" / "_manifest.json").read_text())["clips"].values()
              if c["speaker_id"] == speaker]
    print(f"\nMachine: {machine()}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    print(f"Footage: {len(picked)} new clips of {speaker}, {footage_s:.0f} s (synth seed {args.seed}); scored on its "
          f"{len(scored)} corpus clips ({sum(c['duration_s'] for c in scored):.0f} s).")
    print(f"Fine-tuning: {ft.get('epochs', '?')} epochs, `a2bs finetune` wall {times.get('finetune', float('nan')):.0f} s "
          f"(building its windows included); from scratch: `a2bs train` wall {times.get('train scratch', float('nan')):.0f} s.\n")
    print(table(["model", "MAE", "mouth MAE", "jaw r", "lip r"], metric_rows))


if __name__ == "__main__":
    main()
