"""Issues 14/15: unseen voices and identities -- training variants x seeds on speaker-split shards.

Run: .venv/bin/python benchmarks/bench_unseen.py SHARDS_DIR --out DIR [--variant NAME=key=value,...]
     [--seeds 0 1 2] [--jobs 2] [--threads 1]

SHARDS_DIR is built with the demo preset (`a2bs build CLIPS --out SHARDS --config a2bs/demo/demo.yaml`):
split by speaker into train, val (chooses the epoch), test (unseen voices) and known (known voices,
unseen clips). Each variant x seed runs `a2bs train --no-ray` (demo preset + the variant's overrides)
and `a2bs evaluate` in its own process, `--jobs` at a time under `nice`, each with `--threads` torch
threads. A variant's overrides may include `shards=DIR` to train on other shards (e.g. fewer training
voices with the same val and test speakers). Runs already evaluated in --out are read back, not
redone, so a later call with more seeds or variants extends the same table.

Prints two markdown tables: val (the split that chooses; compare variants on it only; "val
objective" = the best epoch's `val_objective`, the demo preset's selection metric, lower is better) and the
reported splits (test = unseen voices, known = known voices on unseen clips), each with the average
identity and with the true identity of the speaker's face ("+id"), plus per-variant means over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine, parse_variants, table

DEMO_YAML = REPO / "a2bs" / "demo" / "demo.yaml"
DEFAULT_VARIANTS = {"defaults": [], "augment": ["augment.enabled=true"]}
VAL_COLS = (("val", "avg", "lip_corr"), ("val", "avg", "jaw_corr"), ("val", "avg", "mouth_mae"),
            ("val", "id", "lip_corr"), ("val", "id", "jaw_corr"), ("val", "id", "mouth_mae"), ("val", "id", "mae"))
REPORT_COLS = (("test", "avg", "lip_corr"), ("test", "avg", "jaw_corr"), ("test", "avg", "mouth_mae"),
               ("test", "avg", "mae"), ("test", "id", "lip_corr"), ("test", "id", "jaw_corr"),
               ("test", "id", "mouth_mae"), ("test", "id", "mae"), ("known", "avg", "lip_corr"),
               ("known", "avg", "jaw_corr"), ("known", "avg", "mouth_mae"), ("known", "id", "lip_corr"),
               ("known", "id", "jaw_corr"), ("known", "id", "mouth_mae"))
SHORT = {"lip_corr": "lip r", "jaw_corr": "jaw r", "mouth_mae": "mouth MAE", "mae": "MAE"}


def _cli(args: list[str], log: Path) -> None:
    """Run `a2bs ARGS` at low priority with this worktree first on the path; SystemExit naming it on failure."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with log.open("a") as out:
        rc = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "a2bs.cli", *args, "--quiet"],
                            check=False, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"bench_unseen: `a2bs {' '.join(args)}` failed (exit {rc}); see {log}")


def _read_summary(work: Path) -> dict:
    """A finished run's summary (with the best epoch's val_objective, read from the run when older)."""
    summary = json.loads((work / "summary.json").read_text())
    if "val_objective" not in summary:
        best = json.loads((work / "run" / "metrics.json").read_text())["best"]
        summary["val_objective"] = best.get("val_objective", float("nan"))
    return summary


def run_one(shards: str, overrides: list[str], seed: int, threads: int, work: Path) -> dict:
    """Train and evaluate one variant x seed in `work` (reused when already done); returns its summary."""
    done = work / "summary.json"
    if done.is_file():
        return _read_summary(work)
    work.mkdir(parents=True, exist_ok=True)
    run, report = work / "run", work / "report"
    if not (run / "metrics.json").is_file():  # written when training has finished
        _cli(["train", shards, "--out", str(run), "--config", str(DEMO_YAML), "--no-ray",
              f"train.seed={seed}", f"train.torch_threads={threads}", *overrides], work / "log.txt")
    if not (report / "report.json").is_file():
        _cli(["evaluate", str(run / "model.safetensors"), shards, "--out", str(report)], work / "log.txt")
    rep = json.loads((report / "report.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    summary = {"best_epoch": metrics["best_epoch"], "chosen_on": metrics["chosen_on"], "train_s": metrics["wall_s"],
               "val_objective": metrics["best"].get("val_objective", float("nan")),
               "last_train_loss": metrics["last"]["train_loss"], "last_val_loss": metrics["last"]["val_loss"],
               "splits": {name: {"avg": s["metrics"], "id": s.get("with_identity", {}).get("metrics", {}),
                                 "speakers": s["speakers"]} for name, s in rep["splits"].items()}}
    done.write_text(json.dumps(summary, indent=1))
    return summary


def _cell(summary: dict, col: tuple[str, str, str]) -> float:
    split, who, key = col
    return summary["splits"].get(split, {}).get(who, {}).get(key, float("nan"))


def _header(col: tuple[str, str, str]) -> str:
    split, who, key = col
    return f"{split}{' +id' if who == 'id' else ''} {SHORT[key]}"


def tables(results: dict[tuple[str, int], dict], variants: list[str], seeds: list[int]) -> str:
    """The val table and the reported-splits table, per run and per-variant means over seeds."""
    out = []
    for cols, extra in ((VAL_COLS, ("best epoch", "train s", "val objective")), (REPORT_COLS, ())):
        rows = []
        for name in variants:
            runs = [results[(name, s)] for s in seeds if (name, s) in results]
            for seed, r in zip([s for s in seeds if (name, s) in results], runs):
                ex = [r["best_epoch"], f"{r['train_s']:.0f}", f"{r['val_objective']:.3f}"] if extra else []
                rows.append([name, seed, *ex, *(f"{_cell(r, c):.3f}" for c in cols)])
            if len(runs) > 1:
                ex = [f"{mean(r['best_epoch'] for r in runs):.0f}", f"{mean(r['train_s'] for r in runs):.0f}",
                      f"**{mean(r['val_objective'] for r in runs):.3f}**"] if extra else []
                rows.append([f"**{name}** mean", len(runs), *ex, *(f"**{mean(_cell(r, c) for r in runs):.3f}**" for c in cols)])
        out.append(table(["variant", "seed", *extra, *(_header(c) for c in cols)], rows))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards")
    ap.add_argument("--out", required=True, help="keep the runs here (a rerun reuses finished ones)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=key=value,key=value (repeatable; shards=DIR trains on other shards); "
                         "default: defaults vs augment.enabled=true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--table-only", action="store_true", help="only table the runs already finished in --out")
    args = ap.parse_args()
    variants = parse_variants(args.variant, DEFAULT_VARIANTS)
    root = Path(args.out)
    jobs = []
    for name, overrides in variants.items():
        shards = next((kv.split("=", 1)[1] for kv in overrides if kv.startswith("shards=")), args.shards)
        rest = [kv for kv in overrides if not kv.startswith("shards=")]
        jobs += [((name, seed), shards, rest, seed) for seed in args.seeds]
    results: dict[tuple[str, int], dict] = {}
    if args.table_only:
        for key, *_ in jobs:
            work = root / f"{key[0]}-seed{key[1]}"
            if (work / "summary.json").is_file():
                results[key] = _read_summary(work)
        print(tables(results, list(variants), args.seeds))
        return
    t0 = time.time()
    load0 = os.getloadavg()[0]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(run_one, shards, rest, seed, args.threads, root / f"{key[0]}-seed{seed}")
                   for key, shards, rest, seed in jobs}
        for key, fut in futures.items():
            results[key] = fut.result()
            print(key, {c[0] + c[1] + c[2]: round(_cell(results[key], c), 3) for c in VAL_COLS[:3]}, flush=True)
    print(f"\nMachine: {machine()}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{args.jobs} training(s) at a time, {args.threads} torch thread(s) each; {time.time() - t0:.0f} s.\n")
    print(tables(results, list(variants), args.seeds))


if __name__ == "__main__":
    main()
