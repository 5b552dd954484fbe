"""Issue 14 benchmark: the cost of on-the-fly augmentation on training throughput, and what it does to
the validation numbers, side by side (augment.enabled=false vs the defaults) in one run.

Run: .venv/bin/python benchmarks/bench_augment.py SHARDS_DIR [SHARDS_DIR ...] [--epochs 4]
     [--quality-epochs 50] [--seeds 0] [--write-readme]

- cost: the augmenter alone (ms per batch of `--batch-size` windows); the training step interleaved
  (each batch trained once as read and once augmented, in alternating order, so a shared machine's
  changing load falls on both alike): (augment + step) / step; then `a2bs train` in this process and
  through Ray Train (1 worker) on the first SHARDS_DIR, off vs on, median epoch seconds after epoch 0
  (goal: on / off <= 1.2 per epoch).
- quality (``--quality-epochs`` > 0): every SHARDS_DIR trained in this process with the demo preset
  (a2bs/demo/demo.yaml; its `sequence` settings are the shards' own), off vs on, per seed: the val split
  at the selected epoch and at the last epoch (the last is not chosen on the val split, so it is the
  fair number when val holds voices the model never heard).
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
SETTINGS = {"on": [], "off": ["augment.enabled=false"]}
METRICS = (("val_mae", "MAE"), ("val_mouth_mae", "mouth MAE"), ("val_jaw_corr", "jaw r"), ("val_lip_corr", "lip r"))


def augmenter_ms(shards: str, batch_size: int, rounds: int = 30) -> float:
    """Milliseconds the default augmenter takes per batch (no training)."""
    info = shard_info(shards)
    cfg = load_config()
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
    cfg = load_config()
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


def run(shards: str, overrides: list[str], use_ray: bool, preset: Path | None = None) -> dict:
    """One training run: median epoch times after epoch 0, and the selected and last epochs' metrics."""
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        cfg = load_config(preset, overrides)
        t0 = time.perf_counter()
        result = train(shards, f"{tmp}/run", cfg, use_ray=use_ray)
        wall = time.perf_counter() - t0
    h = result.history
    steady = h[1:] or h
    return {"wall_s": wall, "epoch_s": statistics.median(r["epoch_s"] for r in steady),
            "train_s": statistics.median(r["train_s"] for r in steady),
            "seq_per_s": statistics.median(r["train_samples_per_s"] for r in steady),
            "best_epoch": result.best_epoch, "best": result.best_metrics, "last": h[-1], "rows": h[0]["train_rows"]}


def cost_section(shards: str, epochs: int, batch_size: int) -> list[str]:
    ratio, step_ms = interleaved_ratio(shards, batch_size, epochs)
    print("interleaved", ratio, step_ms, flush=True)
    base = [f"train.epochs={epochs}", f"train.batch_size={batch_size}", "train.torch_threads=1",
            "train.checkpoints_to_keep=1"]
    rows = []
    for name, use_ray, extra in (("in-process", False, []), ("Ray Train, 1 worker", True, ["train.num_workers=1"])):
        r = {k: run(shards, base + extra + v, use_ray) for k, v in SETTINGS.items()}
        ratio = r["on"]["epoch_s"] / r["off"]["epoch_s"]
        rows.append([name, f"{r['off']['epoch_s']:.2f}", f"{r['on']['epoch_s']:.2f}", f"**{ratio:.2f}x**",
                     f"{r['off']['seq_per_s']:.0f}", f"{r['on']['seq_per_s']:.0f}"])
        print(rows[-1], flush=True)
    ms = augmenter_ms(shards, batch_size)
    return [(f"Training step interleaved (each batch as read and augmented, alternating; {epochs} epochs, one "
             f"torch thread): **(augment + step) / step = {ratio:.2f}x** (goal <= 1.2), a step {step_ms:.0f} ms; "
             f"the default augmenter alone: **{ms:.1f} ms per batch of {batch_size} windows** (it runs in the "
             f"training thread). Whole runs, off then on (epoch times include validation, untouched by "
             f"augmentation, and the machine's load at that moment):"),
            table(["loop (tcn_poc)", "epoch s off", "epoch s on", "on / off (goal <= 1.2)", "seq/s off", "seq/s on"],
                  rows)]


def quality_section(shard_dirs: list[str], epochs: int, seeds: list[int], results: Path | None,
                    settings: list[str]) -> list[str]:
    """Off vs on per shards folder and seed; with `results`, runs already recorded there are reused."""
    done = json.loads(results.read_text()) if results and results.is_file() else {}
    rows = []
    for shards in shard_dirs:
        info = shard_info(shards)
        split = f"{info.manifest.sequence.split_by}: val {'/'.join(info.manifest.splits['val'].speakers)}"
        seq = [f"sequence.split_by={info.manifest.sequence.split_by}"]
        for name in settings:
            overrides = SETTINGS[name]
            for seed in seeds:
                key = f"{Path(shards).resolve()} {name} seed={seed} epochs={epochs}"
                if key not in done:
                    done[key] = run(shards, seq + overrides + [f"train.epochs={epochs}", f"train.seed={seed}",
                                                               "train.checkpoints_to_keep=1"], False, DEMO_PRESET)
                    if results:
                        results.write_text(json.dumps(done, indent=1, default=float))
                r = done[key]
                for which, m in ((f"selected (epoch {r['best_epoch']})", r["best"]), ("last", r["last"])):
                    rows.append([split, name, seed, which, *(f"{m[k]:.3f}" for k, _ in METRICS),
                                 f"{r['wall_s']:.0f}"])
                print(rows[-2], rows[-1], flush=True)
    return [table(["shards (split: val speakers)", "augment", "seed", "epoch", *(label for _, label in METRICS),
                   "train wall s"], rows)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of each cost run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quality-epochs", type=int, default=0, help="epochs of each quality run (0 = no quality runs)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--settings", default="on,off", help="quality runs of these settings (on, off)")
    ap.add_argument("--results", type=Path, help="JSON file keeping every quality run (reused when rerun)")
    ap.add_argument("--no-cost", action="store_true", help="quality runs only (e.g. to fill --results in parallel)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    lines = []
    if args.quality_epochs:  # first: the long part, kept in --results as it goes
        lines += quality_section(args.shards, args.quality_epochs, [int(s) for s in args.seeds.split(",")],
                                 args.results, args.settings.split(","))
    if not args.no_cost:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        lines = cost_section(args.shards[0], args.epochs, args.batch_size) + lines
    load_end = os.getloadavg()
    header = (f"`.venv/bin/python benchmarks/bench_augment.py {' '.join(Path(s).name for s in args.shards)} "
              f"--epochs {args.epochs} --quality-epochs {args.quality_epochs} --seeds {args.seeds}`: "
              f"off = `augment.enabled=false`, on = the `augment` defaults (a2bs/config.py). Machine: {machine()}; "
              f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (shared machine).")
    text = "\n\n".join([SECTION, header, *lines]) + "\n"
    print(text)
    if args.write_readme:
        write_readme_section(SECTION, text)


if __name__ == "__main__":
    main()
