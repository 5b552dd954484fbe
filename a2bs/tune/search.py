"""`a2bs tune`: Ray Tune over named search spaces, ASHA early stopping, ranked results, best-config YAML.

Each trial is one of (``tune.workers_per_trial``):

- 0: a single-worker function trainable: the trial process runs :func:`a2bs.train.loop.run_loop`
  itself, reading shards with pyarrow (no Ray Train start-up, best for many small trials);
- N >= 1: a function trainable that launches a TorchTrainer of N workers and forwards its reports
  with ``TuneReportCallback`` (Ray Train V2's replacement for passing a Trainer to a Tuner).
  When ASHA (or ``max_t``) stops such a trial, Tune ends the trial's process and Ray Train's
  PlacementGroupCleaner frees the worker group's resources. On a host running several Ray instances
  the cleaner cannot reach the state API (seen on the 2-core development machine) and the CPUs stay
  reserved, so later trials wait: prefer 0 there, or one Ray instance per host.

ASHA stops trials on ``tune.metric`` (default ``val_base_loss``: the smooth-L1 term does not depend on
the loss weights being searched, so trials stay comparable). Trials are then ranked by a combined
objective of the seed's targets (:func:`a2bs.train.metrics.seed_objective`). Outputs in TUNE_DIR::

    results.csv   one row per trial, best first: objective, targets met, metrics, sampled values
    best.yaml     overrides (vs the defaults) of the best trial: `a2bs train --config best.yaml`
    tune/         Ray Tune experiment (trial folders, checkpoints)
    train_runs/   per-trial history.json/csv and TensorBoard events (and Ray Train runs for N >= 1)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import yaml

from a2bs.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from a2bs.manifests import resolve_front_end
from a2bs.runtime import console, storage
from a2bs.train.metrics import (
    JAW_CORR,
    LIP_CORR,
    MAE,
    MOUTH_MAE,
    POSE_MAE,
    SEED_TARGETS,
    SMILE_CORR,
    VAL_LOSS,
    format_metrics,
    metric_value,
    seed_objective,
    targets_met,
    val_key,
)

log = logging.getLogger("a2bs.tune")

FULL_DILATIONS = [1, 2, 4, 8, 16, 32, 64, 128, 128, 128]
RESULTS_NAME = "results.csv"
BEST_NAME = "best.yaml"
EXPERIMENT_NAME = "tune"
# Validation metrics copied from each trial's best epoch into the results table.
TABLE_METRICS: tuple[str, ...] = tuple(val_key(n) for n in (MAE, MOUTH_MAE, JAW_CORR, LIP_CORR, SMILE_CORR, POSE_MAE))


def _spaces() -> dict[str, Callable[[], dict[str, Any]]]:
    from ray import tune

    return {
        # For tests: seconds per trial on a CPU.
        "tiny": lambda: {
            "model.channels": tune.choice([16, 32]),
            "model.dilations": tune.choice([[1, 2], [1, 2, 4]]),
            "model.dropout": tune.uniform(0.0, 0.2),
            "train.lr": tune.loguniform(1e-3, 1e-2),
            "loss.temporal_weight": tune.uniform(0.0, 1.0),
        },
        # The PoC family: 240 ms windows, short receptive fields.
        "small": lambda: {
            "model.dilations": tune.choice([[1, 2, 4, 8], [1, 2, 4, 8, 16]]),
            "model.channels": tune.choice([64, 96, 128, 192, 256]),
            "model.kernel_size": tune.choice([3, 5]),
            "model.dropout": tune.uniform(0.0, 0.3),
            "train.lr": tune.loguniform(3e-4, 1e-2),
            "loss.temporal_weight": tune.uniform(0.0, 1.0),
            "loss.silence_weight": tune.uniform(0.0, 0.3),
            "loss.pose_weight": tune.uniform(0.0, 0.3),
            # Scales every augmentation probability (0 = none; a2bs.config.AugmentConfig).
            "augment.strength": tune.uniform(0.0, 1.5),
        },
        # Adds the full 10-layer schedule (use with long windows, e.g. the full preset).
        "full": lambda: {
            "model.dilations": tune.choice([[1, 2, 4, 8], [1, 2, 4, 8, 16], FULL_DILATIONS]),
            "model.channels": tune.choice([64, 128, 192, 256]),
            "model.kernel_size": tune.choice([3, 5]),
            "model.dropout": tune.uniform(0.0, 0.3),
            "train.lr": tune.loguniform(1e-4, 5e-3),
            "loss.temporal_weight": tune.uniform(0.0, 1.0),
            "loss.silence_weight": tune.uniform(0.0, 0.3),
            "loss.pose_weight": tune.uniform(0.0, 0.3),
            "augment.strength": tune.uniform(0.0, 1.5),
        },
    }


def search_space(name: str) -> dict[str, Any]:
    """The named search space: dotted config keys -> Ray Tune sampling domains."""
    spaces = _spaces()
    if name not in spaces:
        raise ConfigError(f"unknown tune.space '{name}' (known: {', '.join(sorted(spaces))})")
    return spaces[name]()


def apply_sample(cfg: Config, sample: dict[str, Any]) -> Config:
    """`cfg` with a trial's sampled dotted keys applied (unknown keys are a ConfigError)."""
    nested: dict[str, Any] = {}
    for dotted, value in sample.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_config(None, nested, base=cfg)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _trial(sample: dict[str, Any], base: dict[str, Any], shards_dir: str, tune_dir: str) -> None:
    """Ray Tune function trainable: one trial of `sample` on top of the `base` config."""
    import ray.tune

    from a2bs.train.data import shard_info
    from a2bs.train.loop import run_loop
    from a2bs.train.trainer import local_context, make_trainer

    cfg = apply_sample(config_from_dict(base), sample)
    tcfg = cfg.tune
    info = shard_info(shards_dir)
    ctx = ray.tune.get_context()
    # History/TensorBoard of each trial go beside the experiment, not into the trial folder: Tune syncs
    # that folder in the background and trips over the history's temporary files.
    run_dir = storage.join(tune_dir, "train_runs", ctx.get_trial_id())
    if tcfg.workers_per_trial <= 0:
        if tcfg.cpus_per_trial >= 1 and not cfg.train.torch_threads:
            cfg = load_config(None, {"train": {"torch_threads": int(tcfg.cpus_per_trial)}}, base=cfg)

        def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
            checkpoint = ray.tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
            ray.tune.report(_scalars(metrics), checkpoint=checkpoint)

        @contextlib.contextmanager
        def restore() -> Iterator[str | None]:
            ckpt = ray.tune.get_checkpoint()
            if ckpt is None:
                yield None
            else:
                with ckpt.as_directory() as d:
                    yield d

        run_loop(cfg, local_context(info, run_dir, cfg, report_fn=report, restore_fn=restore))
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        train_cfg = load_config(None, {"train": {"num_workers": tcfg.workers_per_trial,
                                                 "cpus_per_worker": tcfg.cpus_per_trial,
                                                 "use_gpu": tcfg.gpus_per_trial > 0}}, base=cfg)
        make_trainer(info, run_dir, train_cfg, callbacks=[TuneReportCallback()],
                     storage_path=storage.join(tune_dir, "train_runs"), name=ctx.get_trial_id()).fit()


@dataclass
class TuneResult:
    """What a search produced."""

    tune_dir: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # best first
    best: dict[str, Any] | None = None
    best_yaml: str = ""
    wall_s: float = 0.0

    def line(self) -> str:
        """One-line summary."""
        if self.best is None:
            return f"tune: no trial finished an epoch ({len(self.rows)} trials) in {self.wall_s:.1f} s"
        b = self.best
        return (f"tune: {len(self.rows)} trials, best {b['trial_id']} objective {b['objective']:.3f} "
                f"({b['targets_met']}/{len(SEED_TARGETS)} seed targets, {format_metrics(b, (MAE, JAW_CORR))}) "
                f"-> {self.best_yaml} in {self.wall_s:.1f} s")


def _row(result: Any, keys: list[str], max_epochs: int) -> dict[str, Any]:
    df = result.metrics_dataframe
    cfg = result.config or {}
    row: dict[str, Any] = {"trial_id": str((result.metrics or {}).get("trial_id", "?")),
                           "status": "error" if result.error else "ok"}
    if df is None or df.empty or val_key(MAE) not in df:
        return {**row, "objective": math.inf, "targets_met": 0, "epochs": 0, "stopped_early": True,
                **{k: cfg.get(k) for k in keys}}
    records = df.to_dict("records")
    scored = [(seed_objective(r), r) for r in records]
    best_obj, best = min(scored, key=lambda x: x[0])
    met = targets_met(best)
    row.update({
        "trial_id": str(best.get("trial_id") or row["trial_id"]),
        "objective": best_obj, "targets_met": sum(met.values()),
        **{f"met_{k}": v for k, v in met.items()},
        "best_epoch": int(best.get("epoch", -1)), "epochs": len(records), "stopped_early": len(records) < max_epochs,
        **{k: best.get(k, math.nan) for k in (*TABLE_METRICS, val_key("base_loss"), VAL_LOSS)},
        **{k: cfg.get(k) for k in keys},
    })
    return row


def best_overrides(cfg: Config) -> dict[str, Any]:
    """`cfg` as an overrides-only mapping: every value that differs from the defaults (tune/ray left out)."""
    default, mine = config_to_dict(Config()), config_to_dict(cfg)
    out: dict[str, Any] = {}
    for section, values in mine.items():
        if section in ("tune", "ray"):
            continue
        diff = {k: v for k, v in values.items() if default[section].get(k) != v}
        if diff:
            out[section] = diff
    return out


def run_tune(shards_dir: str, tune_dir: str, cfg: Config, progress: bool = True) -> TuneResult:
    """Search `cfg.tune.space` on SHARDS_DIR; write TUNE_DIR/results.csv and TUNE_DIR/best.yaml.

    Args:
        shards_dir: shards folder (``a2bs build`` output).
        tune_dir: output folder, local or s3://.
        cfg: base config; each trial is this plus its sampled values, for ``tune.max_epochs`` epochs.
        progress: show the trials on the console (Ray Tune's own status table goes to the log).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from a2bs.runtime.cluster import init_ray
    from a2bs.train.data import shard_info
    from a2bs.train.trainer import with_data_identities
    from a2bs.tune.progress import TrialProgress

    t0 = time.perf_counter()
    tc = cfg.tune
    if tc.max_epochs < 1 or not 1 <= tc.grace_period <= tc.max_epochs:
        raise ConfigError("tune: need 1 <= tune.grace_period <= tune.max_epochs")
    space = search_space(tc.space)
    shards_dir = shards_dir if storage.is_remote(shards_dir) else os.path.abspath(shards_dir)
    tune_dir = tune_dir if storage.is_remote(tune_dir) else os.path.abspath(tune_dir)
    info = shard_info(shards_dir)  # fail early on a missing manifest or split
    # The shards' front end is every trial's (a setting that contradicts it is an error).
    cfg = replace(cfg, audio=resolve_front_end(info.manifest.audio, cfg, source="the shards"))
    cfg = with_data_identities(cfg, info.manifest)  # every trial conditions on the same faces
    storage.makedirs(tune_dir)
    base = load_config(None, {"train": {"epochs": tc.max_epochs, "max_epochs_per_run": 0}}, base=cfg)
    save_config(base, storage.join(tune_dir, "config.yaml"))
    init_ray(cfg.ray)
    # Per-epoch trial checkpoints make Tune warn about frequent experiment snapshots; that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    per_trial = {"cpu": tc.cpus_per_trial, "gpu": tc.gpus_per_trial}
    concurrent = tc.max_concurrent
    if tc.workers_per_trial > 0:
        # The trial only drives its TorchTrainer, whose workers reserve the resources (Tune refuses an
        # all-zero request, hence a token share of a CPU).
        per_trial = {"cpu": 0.01}
        if not concurrent:  # leave a CPU to Ray Data, which only uses CPUs no worker reserved
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            concurrent = max(1, int((cpus - 1.0) // max(tc.workers_per_trial * tc.cpus_per_trial, 1e-9)))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=config_to_dict(base), shards_dir=shards_dir, tune_dir=tune_dir), per_trial)
    run_storage = storage.ray_storage_kwargs(tune_dir)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode="min", num_samples=tc.num_samples,
            scheduler=ASHAScheduler(max_t=tc.max_epochs, grace_period=tc.grace_period,
                                    reduction_factor=tc.reduction_factor),
            # Tune ignores TuneConfig.max_concurrent_trials when given a generator: limit it here.
            search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME, failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1 if progress else 0,
            callbacks=[TrialProgress(tc.num_samples, tc.metric)] if progress else [], **run_storage),
    )
    grid = tuner.fit()
    keys = sorted(space)
    rows = sorted((_row(r, keys, tc.max_epochs) for r in grid), key=lambda r: (r["objective"], r["trial_id"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    result = TuneResult(tune_dir, rows)
    finished = [r for r in rows if math.isfinite(r["objective"])]
    if finished:
        result.best = finished[0]
        best_cfg = apply_sample(cfg, {k: finished[0][k] for k in keys})
        result.best_yaml = storage.join(tune_dir, BEST_NAME)
        header = (f"# a2bs tune: best of {len(rows)} trials (space '{tc.space}'), trial {finished[0]['trial_id']}, "
                  f"objective {finished[0]['objective']:.4f}\n# use: a2bs train SHARDS --out RUN --config {BEST_NAME}\n")
        storage.atomic_write_text(result.best_yaml, header + yaml.safe_dump(best_overrides(best_cfg), sort_keys=True))
    storage.atomic_write_csv(storage.join(tune_dir, RESULTS_NAME),
                             [{k: str(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows],
                             header=["rank"])
    result.wall_s = time.perf_counter() - t0
    console.say(format_table(rows, keys))
    return result


def format_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """Plain-text ranking: objective, seed targets (Y met / . not, for mae, jaw, lip, mouth), metrics, sampled values."""
    head = f"{'rank':>4} {'trial':>12} {'objective':>9} {'targets':>7} {'mae':>7} {'jaw_r':>6} {'lip_r':>6} " \
           f"{'mouth':>7} {'ep':>3}  sampled"
    lines = [head]
    for r in rows:
        flags = "".join("Y" if r.get(f"met_{n}") else "." for n, _, _ in SEED_TARGETS)
        sampled = " ".join(f"{k.split('.')[-1]}={_short(r.get(k))}" for k in keys)
        lines.append(f"{r['rank']:>4} {r['trial_id']:>12} {r['objective']:>9.3f} {flags:>7} "
                     f"{metric_value(r, MAE):>7.4f} {metric_value(r, JAW_CORR):>6.3f} "
                     f"{metric_value(r, LIP_CORR):>6.3f} {metric_value(r, MOUTH_MAE):>7.4f} "
                     f"{r.get('epochs', 0):>3}  {sampled}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v).replace(" ", "")
