"""Issue 14: leave-one-speaker-out. Each speaker in turn is the test split (``sequence.test_speakers``),
val voices are drawn from the others (``sequence.val_fraction``) and choose the epoch; the table gives
every held-out speaker's metrics against the seed's targets, the val voice(s) and the training cost.

Run: .venv/bin/python benchmarks/bench_loso.py CLIPS_DIR [--config a2bs/demo/demo.yaml] [--epochs 50]
     [--speakers A B ...] [--seed 0] [--threads 2] [--out DIR] [--write-readme] [key=value ...]

CLIPS_DIR is an `a2bs extract` output (e.g. `a2bs extract a2bs/demo/corpus --out C`). Every fold builds
its own shards (in-process), trains in this process (`a2bs train --no-ray`: the same loop as Ray
Train's workers) and scores the exported model with `a2bs evaluate --split test`. A quick smoke run:
`--epochs 2 --speakers hopper_awb astronaut_slt model.channels=32`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_readme_section  # noqa: E402

from a2bs.build.pipeline import run_build  # noqa: E402
from a2bs.config import load_config  # noqa: E402
from a2bs.demo.job import DEMO_PRESET  # noqa: E402
from a2bs.evaluate.report import evaluate  # noqa: E402
from a2bs.manifests import ClipsManifest  # noqa: E402
from a2bs.train.trainer import train  # noqa: E402

SECTION = "## Leave-one-speaker-out (issue 14)"
METRICS = ("mae", "mouth_mae", "jaw_corr", "lip_corr")


def run_fold(clips: str, speaker: str, overrides: list[str], config: str, work: Path) -> dict:
    """Build, train and evaluate with `speaker` as the test split; its metrics, best epoch, val voices, seconds."""
    cfg = load_config(config, [*overrides, f"sequence.test_speakers=[{speaker}]", "sequence.known_clip_fraction=0"])
    shards, run, report = work / "shards", work / "run", work / "report"
    run_build(clips, str(shards), cfg, use_ray=False, progress=False)
    t0 = time.perf_counter()
    result = train(str(shards), str(run), cfg, use_ray=False)
    train_s = time.perf_counter() - t0
    rep = evaluate(result.model_path, str(shards), str(report), split="test")
    test = rep.splits["test"]
    return {**{k: test["metrics"][k] for k in METRICS}, "met": sum(r["passed"] for r in test["targets"]),
            "best_epoch": result.best_epoch, "val": ", ".join(result.chosen_on_speakers),
            "val_lip_corr": rep.splits["val"]["metrics"]["lip_corr"], "train_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every fold")
    ap.add_argument("--config", default=str(DEMO_PRESET), help="config file (default: the demo preset)")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--speakers", nargs="+", default=None, help="the folds (default: every speaker)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="keep the folds here (a rerun reuses finished folds; default: a temporary folder)")
    ap.add_argument("--write-readme", action="store_true", help="replace the section in benchmarks/README.md")
    args = ap.parse_intermixed_args()  # key=value overrides may follow the options
    speakers = args.speakers or sorted({e.speaker_id for e in ClipsManifest.load(args.clips).clips.values()})
    overrides = [f"train.epochs={args.epochs}", f"train.seed={args.seed}", f"train.torch_threads={args.threads}",
                 *args.overrides]
    rows, folds = [], []
    with tempfile.TemporaryDirectory(prefix="a2bs-bench-loso-") as tmp:
        root = Path(args.out or tmp)
        for speaker in speakers:
            done = root / speaker / "fold.json"  # with --out, a rerun reuses the folds already finished
            if done.is_file():
                r = json.loads(done.read_text())
            else:
                shutil.rmtree(root / speaker, ignore_errors=True)  # a fold stopped half-way starts over
                r = run_fold(args.clips, speaker, overrides, args.config, root / speaker)
                done.write_text(json.dumps(r))
            folds.append(r)
            rows.append([speaker, r["val"], r["best_epoch"], *(f"{r[k]:.4f}" for k in METRICS), f"{r['met']}/4",
                         f"{r['val_lip_corr']:.3f}", f"{r['train_s']:.0f}"])
            print(json.dumps({"speaker": speaker, **r}), flush=True)
    mean = ["mean", "", "", *(f"{statistics.fmean(f[k] for f in folds):.4f}" for k in METRICS), "", "",
            f"{statistics.fmean(f['train_s'] for f in folds):.0f}"]
    setup = (f"Machine: {machine()}; {args.threads} torch thread(s), {Path(args.config).name} + "
             f"{' '.join(overrides)}, one fold per held-out speaker (test), the val voice(s) chose the epoch "
             "(`benchmarks/bench_loso.py`). Test = a voice no choice has seen.")
    text = "\n".join([
        SECTION, "", setup, "",
        table(["test speaker", "val speaker(s)", "best epoch", "MAE", "mouth MAE", "jaw r", "lip r", "targets met",
               "val lip r", "train s"], [*rows, mean]),
    ])
    print("\n" + text)
    if args.write_readme:
        write_readme_section(SECTION, text)


if __name__ == "__main__":
    main()
