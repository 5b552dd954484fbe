"""Issue 5 quality: the PoC on the demo corpus under several training variants, scored on held-out clips.

Run: .venv/bin/python benchmarks/bench_quality.py SHARDS_DIR [--variant NAME=key=value,key=value ...]
     [--seeds 0 1] [--threads 2] [--split known] [--out DIR]

SHARDS_DIR is the demo corpus built with the demo preset (`a2bs extract a2bs/demo/corpus --out C &&
a2bs build C --out SHARDS --config a2bs/demo/demo.yaml`). Each variant x seed trains `a2bs train
--no-ray` with a2bs/demo/demo.yaml plus the variant's overrides, then `a2bs evaluate` scores the
exported model on a held-out split (`--split`, default `a2bs evaluate`'s: test when the shards have
one, else val; `known` = known voices on unseen clips) against the seed's targets. Without --variant it compares the
defaults with the earlier default dropout (`model.dropout=0.1`). Prints a markdown table (as in
benchmarks/README.md, "Quality").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, parse_variants, table  # noqa: E402

from a2bs.cli import main as a2bs  # noqa: E402
from a2bs.demo.job import DEMO_PRESET  # noqa: E402

DEMO_YAML = DEMO_PRESET
DEFAULT_VARIANTS = {"defaults": [], "dropout=0.1": ["model.dropout=0.1"]}
METRICS = ("mae", "mouth_mae", "jaw_corr", "lip_corr")


def run_variant(shards: str, overrides: list[str], seed: int, threads: int, work: Path, split: str | None) -> dict:
    """Train and evaluate one variant; returns the report's metrics, targets met, best epoch and seconds."""
    run, report = work / "run", work / "report"
    t0 = time.perf_counter()
    args = ["train", shards, "--out", str(run), "--config", str(DEMO_YAML), "--no-ray",
            f"train.seed={seed}", f"train.torch_threads={threads}", *overrides]
    if a2bs(args) != 0:
        raise SystemExit(f"bench_quality: training failed: {' '.join(args)}")
    train_s = time.perf_counter() - t0
    if a2bs(["evaluate", str(run / "model.safetensors"), shards, "--out", str(report),
             *(["--split", split] if split else [])]) != 0:
        raise SystemExit("bench_quality: evaluation failed")
    rep = json.loads((report / "report.json").read_text())
    best_epoch = json.loads((run / "metrics.json").read_text())["best_epoch"]
    return {**{k: rep["metrics"][k] for k in METRICS}, "met": sum(r["passed"] for r in rep["targets"]), "split": rep["split"],
            "best_epoch": best_epoch, "train_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=key=value,key=value (repeatable); default: defaults vs dropout=0.1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default=None, help="the split to table (default: a2bs evaluate's headline)")
    ap.add_argument("--out", default="", help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    variants = parse_variants(args.variant, DEFAULT_VARIANTS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="a2bs-bench-quality-") as tmp:
        root = Path(args.out or tmp)
        for name, overrides in variants.items():
            for seed in args.seeds:
                r = run_variant(args.shards, overrides, seed, args.threads, root / f"{name}-seed{seed}", args.split)
                rows.append([name, seed, r["split"], r["best_epoch"], *(f"{r[k]:.4f}" for k in METRICS), f"{r['met']}/4",
                             f"{r['train_s']:.0f}"])
                print(rows[-1], flush=True)
    print(f"\nMachine: {machine()}; {args.threads} torch thread(s), a2bs/demo/demo.yaml, 50 epochs.\n")
    print(table(["variant", "train.seed", "split", "best epoch", "MAE", "mouth MAE", "jaw r", "lip r", "targets met",
                 "train s"], rows))


if __name__ == "__main__":
    main()
