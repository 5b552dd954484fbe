"""Issue 14 benchmark: the cost of on-the-fly augmentation on training throughput, and what it does to
the validation numbers, side by side (augment.enabled=false vs the defaults) in one run.

Run: .venv/bin/python benchmarks/bench_augment.py SHARDS_DIR [SHARDS_DIR ...] [--epochs 2] [--whole-runs]
     [--quality-epochs 50] [--seeds 0] [--runs-dir out/bench_augment] [--write-readme]

- cost (on the first SHARDS_DIR): the augmenter alone (ms per batch of `--batch-size` windows); the
  training step interleaved (each batch trained once as read and once augmented, in alternating order,
  so a shared machine's changing load falls on both alike): (augment + step) / step, goal <= 1.2;
  with ``--whole-runs`` also `a2bs train` in this process and through Ray Train (1 worker), off then on,
  median epoch seconds after epoch 0.
- quality (``--quality-epochs`` > 0): every SHARDS_DIR trained in this process with the demo preset
  (a2bs/demo/demo.yaml; its `sequence` settings are the shards' own), on vs off, per seed: the val split
  at the selected epoch and at the last epoch (the last is not chosen on the val split, so it is the
  fair number when val holds voices the model never heard). Run folders are kept in ``--runs-dir``;
  one that already holds a history is reused, a partial one (a run stopped early) compared at the
  epochs every setting reached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
import torch
from common import machine, table, write_readme_section

from a2bs.config import load_config
from a2bs.models.registry import build_model
from a2bs.train.augment import make_augmenter
from a2bs.train.data import LocalBatches, shard_info
from a2bs.train.losses import compute_loss
from a2bs.train.trainer import train

SECTION = "## Augmentation (issue 14)"
DEMO_PRESET = Path(__file__).resolve().parent.parent / "a2bs" / "demo" / "demo.yaml"
# on = the default strengths, switched on; strong = the first, stronger defaults; off = none (the default).
SETTINGS = {"on": ["augment.enabled=true"], "off": ["augment.enabled=false"],
            "strong": ["augment.enabled=true", "augment.noise_prob=0.3", "augment.noise_snr_min_db=10", "augment.speed_prob=0.5",
                       "augment.time_mask_prob=0.2", "augment.time_mask_frames=3", "augment.freq_mask_prob=0.5",
                       "augment.freq_masks=2"]}
METRICS = (("val_mae", "MAE"), ("val_mouth_mae", "mouth MAE"), ("val_jaw_corr", "jaw r"), ("val_lip_corr", "lip r"))


def augmenter_ms(shards: str, batch_size: int, rounds: int = 30) -> float:
    """Milliseconds the default augmenter takes per batch (no training)."""
    info = shard_info(shards)
    cfg = load_config(None, ["augment.enabled=true"])
    aug = make_augmenter(cfg.augment, info.manifest.audio)
    assert aug is not None
    batch = next(LocalBatches(info.train_files, info.n_mels, batch_size).torch_batches(0))
    t0 = time.perf_counter()
    for i in range(rounds):
        aug(batch, aug.rng(0, 0, i))
    return (time.perf_counter() - t0) / rounds * 1000


def interleaved_ratio(shards: str, batch_size: int, epochs: int) -> tuple[float, float]:
    """(augment + training step) / training step over `epochs` epochs of tcn_poc, and ms per step."""
    info = shard_info(shards)
    cfg = load_config(None, ["augment.enabled=true"])
    aug = make_augmenter(cfg.augment, info.manifest.audio)
    assert aug is not None
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = compute_loss(model(batch["audio"]), batch["targets"], cfg.loss, 10, batch["mask"], batch["vad"])
        opt.zero_grad()
        loss["total"].backward()
        opt.step()

    plain = augmented = 0.0
    n = 0
    src = LocalBatches(info.train_files, info.n_mels, batch_size, shuffle_rows=2048)
    for e in range(epochs):
        for i, batch in enumerate(src.torch_batches(e)):
            for which in ((0, 1) if i % 2 else (1, 0)):
                t0 = time.perf_counter()
                step(aug(batch, aug.rng(e, 0, i)) if which else batch)
                dt = time.perf_counter() - t0
                plain, augmented = (plain, augmented + dt) if which else (plain + dt, augmented)
            n += 1
    return augmented / plain, plain / n * 1000


def run(shards: str, overrides: list[str], use_ray: bool) -> dict:
    """One timed training run: median epoch times after epoch 0."""
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        cfg = load_config(None, overrides)
        t0 = time.perf_counter()
        result = train(shards, f"{tmp}/run", cfg, use_ray=use_ray)
        wall = time.perf_counter() - t0
    h = result.history
    steady = h[1:] or h
    return {"wall_s": wall, "epoch_s": statistics.median(r["epoch_s"] for r in steady),
            "train_s": statistics.median(r["train_s"] for r in steady),
            "seq_per_s": statistics.median(r["train_samples_per_s"] for r in steady)}


def cost_section(shards: str, epochs: int, batch_size: int, whole_runs: bool) -> list[str]:
    step_ratio, step_ms = interleaved_ratio(shards, batch_size, epochs)
    print("interleaved", step_ratio, step_ms, flush=True)
    ms = augmenter_ms(shards, batch_size)
    lines = [(f"Training step interleaved (each batch as read and augmented, alternating; {epochs} epoch(s), one "
              f"torch thread): **(augment + step) / step = {step_ratio:.2f}x** (goal <= 1.2), a step "
              f"{step_ms:.0f} ms; the default augmenter alone: **{ms:.1f} ms per batch of {batch_size} windows** "
              f"(it runs in the training thread).")]
    if not whole_runs:
        return lines
    base = [f"train.epochs={epochs}", f"train.batch_size={batch_size}", "train.torch_threads=1",
            "train.checkpoints_to_keep=1"]
    rows = []
    for name, use_ray, extra in (("in-process", False, []), ("Ray Train, 1 worker", True, ["train.num_workers=1"])):
        r = {k: run(shards, base + extra + v, use_ray) for k, v in SETTINGS.items()}
        ratio = r["on"]["epoch_s"] / r["off"]["epoch_s"]
        rows.append([name, f"{r['off']['epoch_s']:.2f}", f"{r['on']['epoch_s']:.2f}", f"**{ratio:.2f}x**",
                     f"{r['off']['seq_per_s']:.0f}", f"{r['on']['seq_per_s']:.0f}"])
        print(rows[-1], flush=True)
    return lines + [("Whole runs, off then on (epoch times include validation, untouched by augmentation, and the "
                     "machine's load at that moment):"),
                    table(["loop (tcn_poc)", "epoch s off", "epoch s on", "on / off (goal <= 1.2)", "seq/s off",
                           "seq/s on"], rows)]


def quality_run(shards: str, name: str, seed: int, epochs: int, runs_dir: Path) -> list[dict]:
    """History of one quality run in RUNS_DIR (trained now unless its folder already holds a history, which
    may be partial: a run stopped early is compared at the epochs it reached)."""
    info = shard_info(shards)
    run_dir = runs_dir / f"{Path(shards).name}-{name}-seed{seed}-e{epochs}"
    if not (run_dir / "history.json").is_file():
        overrides = [f"sequence.split_by={info.manifest.sequence.split_by}", *SETTINGS[name],
                     f"train.epochs={epochs}", f"train.seed={seed}", "train.checkpoints_to_keep=1"]
        train(shards, str(run_dir), load_config(DEMO_PRESET, overrides), use_ray=False)
    return json.loads((run_dir / "history.json").read_text())


def quality_section(shard_dirs: list[str], epochs: int, seeds: list[int], runs_dir: Path,
                    settings: list[str]) -> list[str]:
    """Settings side by side per shards folder and seed, at the epochs every one of them reached."""
    rows = []
    for shards in shard_dirs:
        info = shard_info(shards)
        split = f"{info.manifest.sequence.split_by}: val {'/'.join(info.manifest.splits['val'].speakers)}"
        for seed in seeds:
            runs = {name: quality_run(shards, name, seed, epochs, runs_dir) for name in settings}
            reached = min(len(h) for h in runs.values())
            for name, h in runs.items():
                h = h[:reached]
                best = min(h, key=lambda r: r["val_objective"])  # the demo preset's train.best_metric
                for which, m in ((f"selected ({best['epoch']})", best), (f"last ({h[-1]['epoch']})", h[-1])):
                    rows.append([split, name, seed, f"{reached}/{epochs}", which,
                                 *(f"{m[k]:.3f}" for k, _ in METRICS)])
                print(rows[-2], rows[-1], flush=True)
    return [table(["shards (split: val speakers)", "augment", "seed", "epochs compared", "epoch", 
                   *(label for _, label in METRICS)], rows)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the interleaved cost run (and of each whole run)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quality-epochs", type=int, default=0, help="epochs of each quality run (0 = no quality runs)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--settings", default="on,off", help="quality runs of these settings (on, off)")
    ap.add_argument("--runs-dir", type=Path, default=Path("out/bench_augment"),
                    help="quality run folders (a folder with a history is reused, even a partial one)")
    ap.add_argument("--whole-runs", action="store_true", help="also time whole training runs off vs on")
    ap.add_argument("--no-cost", action="store_true", help="quality runs only (e.g. to fill --results in parallel)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    lines = []
    if args.quality_epochs:  # first: the long part, kept in --runs-dir as it goes
        lines += quality_section(args.shards, args.quality_epochs, [int(s) for s in args.seeds.split(",")],
                                 args.runs_dir, args.settings.split(","))
    if not args.no_cost:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        lines = cost_section(args.shards[0], args.epochs, args.batch_size, args.whole_runs) + lines
    load_end = os.getloadavg()
    header = (f"`.venv/bin/python benchmarks/bench_augment.py {' '.join(Path(s).name for s in args.shards)} "
              f"--epochs {args.epochs} --quality-epochs {args.quality_epochs} --seeds {args.seeds} "
              f"--settings {args.settings}`: on = the `augment` defaults (a2bs/config/sections.py), strong = the first "
              f"defaults (`{' '.join(SETTINGS['strong'])}`), off = `augment.enabled=false`. Quality: the demo "
              f"preset trained in this process on each shards folder (its split and val speakers in the first "
              f"column); a run stopped before {args.quality_epochs} epochs is compared with the others at the "
              f"epochs all of them reached. Machine: {machine()}; load average {load_start[0]:.1f} at the start, "
              f"{load_end[0]:.1f} at the end (shared machine).")
    text = "\n\n".join([SECTION, header, *lines]) + "\n"
    print(text)
    if args.write_readme:
        write_readme_section(SECTION, text)


if __name__ == "__main__":
    main()
