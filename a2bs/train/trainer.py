"""`a2bs train`: a Ray Train TorchTrainer around the per-worker loop, then export of the best model.

Run folder (local path or s3:// URI)::

    RUN_DIR/config.yaml          resolved config (written before training starts)
    RUN_DIR/ray_train/           Ray Train storage: epoch_NNNN/ checkpoints + Ray's run snapshot
    RUN_DIR/history.json|csv     one row per epoch (rank 0), TensorBoard events in RUN_DIR/tensorboard
    RUN_DIR/model.safetensors    best checkpoint's model (train.best_metric / best_mode, on val), self-contained
    RUN_DIR/metrics.json         best and last epoch metrics, pass/fail against the seed's targets

Fault tolerance: ``FailureConfig(max_failures)`` restarts a failed worker group from the latest
checkpoint. Ray Train restores a run from the snapshot in ``RUN_DIR/ray_train`` when the same
storage path and name are used again, which is what ``--resume`` does; without ``--resume`` an
existing run folder is refused rather than silently continued.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from a2bs.build.shards import SELECTION_SPLIT
from a2bs.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from a2bs.manifests import ModelCard, ShardsManifest, resolve_front_end
from a2bs.models.model_file import MODEL_FILE_NAME
from a2bs.runtime import storage
from a2bs.train.augment import make_augmenter
from a2bs.train.checkpoint import (
    CHECKPOINT_FILES,
    checkpoint_dir_name,
    copy_checkpoint,
    list_checkpoints,
    read_meta,
)
from a2bs.train.data import (
    TRAIN_COLUMNS,
    VAL_COLUMNS,
    identity_columns,
    LocalBatches,
    ShardInfo,
    ray_dataset,
    shard_info,
    steps_per_epoch,
    total_mb,
)
from a2bs.train.loop import (
    HISTORY_JSON,
    WorkerContext,
    resolve_device,
    run_loop,
    train_loop_per_worker,
)
from a2bs.train.metrics import VAL_LOSS, format_metrics, target_table
from a2bs.train.progress import track_epochs
from a2bs.train.validation import val_batch_rows

log = logging.getLogger("a2bs.train")

RAY_RUN_NAME = "ray_train"
LOCAL_CHECKPOINTS = "checkpoints"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: str
    model_path: str
    best_epoch: int
    best_metrics: dict[str, Any]
    last_epoch: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    world_size: int = 1
    chosen_on: str = SELECTION_SPLIT  # the only split any choice (the best epoch, Tune's trials) is made on
    chosen_on_speakers: tuple[str, ...] = ()

    @property
    def targets(self) -> list[dict[str, Any]]:
        """Pass/fail rows of the best epoch against the seed's targets."""
        return target_table(self.best_metrics)

    def line(self) -> str:
        """One-line summary."""
        m = self.best_metrics
        passed = sum(r["passed"] for r in self.targets)
        done = "finished" if self.last_epoch + 1 >= self.epochs else "stopped"
        return (f"train: {done} at epoch {self.last_epoch + 1}/{self.epochs} on {self.world_size} worker(s); "
                f"best epoch {self.best_epoch} (chosen on {self._chosen_on()}): "
                f"val_loss {m.get(VAL_LOSS, math.nan):.4f} {format_metrics(m)} "
                f"({passed}/{len(self.targets)} seed targets) -> {self.model_path} in {self.wall_s:.1f} s")

    def _chosen_on(self) -> str:
        n = len(self.chosen_on_speakers)
        return f"{self.chosen_on}, {n} speaker{'s' if n != 1 else ''}" if n else self.chosen_on


def run_exists(run_dir: str) -> bool:
    """True if `run_dir` already holds a started run (its resolved config is written first)."""
    return storage.exists(storage.join(run_dir, CONFIG_NAME))


def resume_config(run_dir: str, config_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The stored config of a run, with an optional YAML file and key=value overrides on top."""
    uri = storage.join(run_dir, CONFIG_NAME)
    if not storage.exists(uri):
        raise ConfigError(f"{run_dir}: no run to resume ({CONFIG_NAME} not found)")
    base = config_from_dict(yaml.safe_load(storage.read_text(uri)) or {})
    return load_config(config_path, overrides, base=base)


def _abs(uri: str) -> str:
    # Ray workers may run in another working directory: hand them absolute paths.
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


def make_trainer(info: ShardInfo, run_dir: str, cfg: Config, callbacks: Sequence[Any] = (),
                 storage_path: str | None = None, name: str = RAY_RUN_NAME) -> Any:
    """The TorchTrainer for `cfg` on the shards described by `info`.

    Args:
        info: shard files and sizes (:func:`a2bs.train.data.shard_info`).
        run_dir: folder for history and TensorBoard.
        cfg: resolved config.
        callbacks: Ray Train ``UserCallback`` objects (e.g. Tune's ``TuneReportCallback``).
        storage_path: Ray Train storage (default `run_dir`).
        name: Ray Train run name inside `storage_path`.
    """
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    use_gpu = tc.use_gpu and tc.device != "cpu"
    cpus = data_safe_cpus_per_worker(tc.num_workers, tc.cpus_per_worker)
    loop_config = {
        "cfg": config_to_dict(cfg),
        "run_dir": run_dir,
        "steps_per_epoch": steps_per_epoch(info.train_rows, tc.num_workers, tc.batch_size),
        "n_mels": info.n_mels,
        "frame_rate_hz": info.frame_rate_hz,
        "invocation": uuid.uuid4().hex,
        "overlap_frames": info.overlap_frames,
        "target_mean": info.train_means if tc.init_output_bias else None,
        "card": ModelCard.for_run(cfg, info.manifest),
    }
    datasets = {
        "train": ray_dataset(info.train_files, identity_columns(TRAIN_COLUMNS, cfg.model.identities)
                             ).randomize_block_order(seed=tc.seed),
        "val": ray_dataset(info.val_files, identity_columns(VAL_COLUMNS, cfg.model.identities)),
    }
    # Small splits are read once: a streaming read costs ~2 s of start-up per epoch (task launch, file
    # listing) before its first batch, which dominates epochs of a small corpus.
    for split, files in (("train", info.train_files), ("val", info.val_files)):
        if total_mb(files) <= tc.cache_max_mb:
            datasets[split] = datasets[split].materialize()
    for ds in datasets.values():
        # The epoch lines report progress; Ray Data's bars would add a line per split, epoch and worker.
        ds.context.enable_progress_bars = False
    kwargs = storage.ray_storage_kwargs(storage_path or run_dir)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        datasets=datasets,
        # Only the train set is split; every worker sees all validation rows and keeps its own clips.
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=name,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(tc.checkpoints_to_keep, 1),
                                               checkpoint_score_attribute=tc.best_metric,
                                               checkpoint_score_order=tc.best_mode),
            callbacks=list(callbacks),
            **kwargs,
        ),
    )


def data_safe_cpus_per_worker(num_workers: int, cpus_per_worker: float) -> float:
    """CPUs per training worker that leave one CPU of the cluster to Ray Data's shard readers.

    Ray Data only schedules read tasks on CPUs the training workers have not reserved: with every CPU
    reserved (e.g. 2 workers x 1 CPU on a 2-core machine) the first epoch would wait forever.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    if not total or total - num_workers * cpus_per_worker >= 1.0:
        return cpus_per_worker
    fit = (total - 1.0) / num_workers
    if fit <= 0:
        raise ConfigError(f"train.num_workers={num_workers} needs more than the cluster's {total:g} CPUs "
                          "(one CPU stays free for reading shards)")
    log.warning(f"train: {num_workers} x {cpus_per_worker:g} CPUs would leave no CPU of {total:g} to read shards; "
                f"reserving {fit:g} CPUs per worker instead")
    return fit


def _better(a: float, b: float, mode: str) -> bool:
    if math.isnan(a):
        return False
    return math.isnan(b) or (a < b if mode == "min" else a > b)


def _best(candidates: list[tuple[str, dict[str, Any]]], metric: str, mode: str) -> tuple[str, dict[str, Any]]:
    best = candidates[0]
    for c in candidates[1:]:
        if _better(float(c[1].get(metric, math.nan)), float(best[1].get(metric, math.nan)), mode):
            best = c
    return best


def export_best(run_dir: str, candidates: list[tuple[str, dict[str, Any]]], latest_dir: str, cfg: Config,
                wall_s: float, chosen_on_speakers: Sequence[str] = ()) -> TrainResult:
    """Copy the best checkpoint's model to RUN_DIR/model.safetensors and write RUN_DIR/metrics.json.

    Args:
        candidates: (checkpoint folder URI, its reported metrics) of every retained checkpoint.
        latest_dir: the latest checkpoint folder (its history is the run's history).
        chosen_on_speakers: the speakers of the split the candidates were scored on (val).
    """
    tc = cfg.train
    best_dir, _ = _best(candidates, tc.best_metric, tc.best_mode)
    best_meta = read_meta(best_dir)
    latest_meta = read_meta(latest_dir)
    model_path = storage.join(run_dir, MODEL_FILE_NAME)
    storage.atomic_write_bytes(model_path, storage.read_bytes(storage.join(best_dir, MODEL_FILE_NAME)))
    history = latest_meta.get("history", [])
    result = TrainResult(run_dir=run_dir, model_path=model_path, best_epoch=int(best_meta["epoch"]),
                         best_metrics=best_meta["metrics"], last_epoch=int(latest_meta["epoch"]),
                         epochs=tc.epochs, history=history, wall_s=wall_s,
                         world_size=int(latest_meta["metrics"].get("world_size", tc.num_workers)),
                         chosen_on_speakers=tuple(chosen_on_speakers))
    report = {
        "best_metric": tc.best_metric, "best_mode": tc.best_mode, "best_epoch": result.best_epoch,
        "chosen_on": result.chosen_on, "chosen_on_speakers": list(result.chosen_on_speakers),
        "best": result.best_metrics, "last_epoch": result.last_epoch, "last": latest_meta["metrics"],
        "targets": result.targets, "epochs": tc.epochs, "wall_s": wall_s, "model_path": model_path,
    }
    storage.atomic_write_text(storage.join(run_dir, METRICS_NAME), json.dumps(report, indent=1, default=float))
    return result


def train(shards_dir: str, run_dir: str, cfg: Config, resume: bool = False, use_ray: bool = True) -> TrainResult:
    """Train on SHARDS_DIR into RUN_DIR and export the best model.

    Args:
        shards_dir: folder of sequence shards (``a2bs build`` output), local or s3://.
        run_dir: run folder, local or s3:// (Ray Train storage, history, exported model).
        cfg: resolved config (for ``resume``, usually :func:`resume_config` of the run).
        resume: continue the run in `run_dir` from its latest checkpoint.
        use_ray: False runs the same loop in this process (one worker, no Ray), e.g. for debugging.

    Raises:
        ConfigError: `run_dir` holds a run and `resume` is False, or nothing to resume, or the shards
            do not match the model's input size.
    """
    t0 = time.perf_counter()
    run_dir = _abs(run_dir)
    shards_dir = _abs(shards_dir)
    if resume and not run_exists(run_dir):
        raise ConfigError(f"{run_dir}: no run to resume")
    if not resume and run_exists(run_dir):
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, or choose a new --out")
    info = shard_info(shards_dir)
    # The shards' front end is the run's (a setting that contradicts it is an error): the model card records it.
    cfg = replace(cfg, audio=resolve_front_end(info.manifest.audio, cfg, source="the shards"))
    if info.n_mels != cfg.model.n_mels:
        raise ConfigError(f"model.n_mels={cfg.model.n_mels} but the shards hold {info.n_mels} mel bins")
    if cfg.train.best_mode not in ("min", "max"):
        raise ConfigError(f"train.best_mode must be 'min' or 'max', not {cfg.train.best_mode!r}")
    make_augmenter(cfg.augment, cfg.audio)  # a bad `augment` section fails here, not in every worker
    cfg = with_data_identities(cfg, info.manifest)
    storage.makedirs(run_dir)
    save_config(cfg, storage.join(run_dir, CONFIG_NAME))
    with track_epochs(run_dir, cfg.train.epochs, resume):
        candidates, latest = (_fit_ray if use_ray else _fit_local)(info, run_dir, cfg)
    return export_best(run_dir, candidates, latest, cfg, time.perf_counter() - t0,
                       info.manifest.splits[SELECTION_SPLIT].speakers)


def with_data_identities(cfg: Config, shards: ShardsManifest) -> Config:
    """`cfg` with ``model.identities`` = the train split's faces, sorted, when it has more than one and
    the config names none (identity conditioning is on by default for data with several faces).

    Raises:
        ConfigError: the config names identities but the shards know no faces.
    """
    faces = shards.splits["train"].identities
    if cfg.model.identities and not faces:
        raise ConfigError("model.identities is set but the shards know no faces (build them with "
                          "sequence.identity_from=speaker or prefix)")
    if cfg.model.identities or len(faces) < 2:
        return cfg
    return replace(cfg, model=replace(cfg.model, identities=tuple(faces)))


def _fit_ray(info: ShardInfo, run_dir: str, cfg: Config) -> tuple[list[tuple[str, dict]], str]:
    from a2bs.runtime.cluster import init_ray

    init_ray(cfg.ray)
    result = make_trainer(info, run_dir, cfg).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{run_dir}: training reported no checkpoint")

    def uri(ckpt: Any) -> str:
        return f"s3://{ckpt.path}" if storage.is_remote(run_dir) and run_dir.startswith("s3://") else ckpt.path

    candidates = [(uri(c), m) for c, m in (result.best_checkpoints or [])] or [(uri(result.checkpoint), result.metrics)]
    return candidates, uri(result.checkpoint)


def local_context(info: ShardInfo, run_dir: str, cfg: Config, report_fn: Any = None, restore_fn: Any = None) -> WorkerContext:
    """A one-worker context that reads shards in this process and keeps checkpoints in
    RUN_DIR/checkpoints, or hands them to `report_fn(metrics, ckpt_dir)` and restores through
    `restore_fn()` (a context manager yielding a folder or None), e.g. Ray Tune's."""
    tc = cfg.train
    device = resolve_device(tc)
    train_src = LocalBatches(info.train_files, info.n_mels, tc.batch_size, shuffle_rows=max(tc.shuffle_buffer_rows, 1),
                             seed=tc.seed, augmenter=make_augmenter(cfg.augment, info.manifest.audio, tc.seed),
                             identities=cfg.model.identities)
    val_src = LocalBatches(info.val_files, info.n_mels, val_batch_rows(tc), columns=VAL_COLUMNS,
                           identities=cfg.model.identities)
    ckpt_root = storage.join(run_dir, LOCAL_CHECKPOINTS)

    @contextlib.contextmanager
    def restore() -> Iterator[str | None]:
        saved = list_checkpoints(ckpt_root)
        if not saved:
            yield None
        elif not storage.is_remote(saved[-1]):
            yield saved[-1]
        else:
            with tempfile.TemporaryDirectory(prefix="a2bs-restore-") as tmp:
                for name in CHECKPOINT_FILES:
                    Path(tmp, name).write_bytes(storage.read_bytes(storage.join(saved[-1], name)))
                yield tmp

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        if ckpt_dir:
            copy_checkpoint(ckpt_dir, storage.join(ckpt_root, checkpoint_dir_name(int(metrics["epoch"]))))

    return WorkerContext(
        rank=0, world_size=1, device=device, run_dir=run_dir,
        steps_per_epoch=steps_per_epoch(info.train_rows, 1, tc.batch_size), frame_rate_hz=info.frame_rate_hz,
        train_batches=lambda epoch: train_src.torch_batches(epoch, device),
        val_arrays=lambda: val_src.arrays(),
        wrap_model=lambda m: m, restore=restore_fn or restore, report=report_fn or report,
        card=ModelCard.for_run(cfg, info.manifest), invocation=uuid.uuid4().hex, overlap_frames=info.overlap_frames,
        target_mean=info.train_means if tc.init_output_bias else None,
    )


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch uses `count` intra-op threads inside the block (0 = leave them), the caller's count after.

    ``train.torch_threads`` is for one in-process run (training, fine-tuning): the calling process
    (API, tests) keeps its own.
    """
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_local(info: ShardInfo, run_dir: str, cfg: Config) -> tuple[list[tuple[str, dict]], str]:
    ckpt_root = storage.join(run_dir, LOCAL_CHECKPOINTS)
    with torch_threads(cfg.train.torch_threads):
        run_loop(cfg, local_context(info, run_dir, cfg))
    saved = list_checkpoints(ckpt_root)
    if not saved:
        raise RuntimeError(f"{run_dir}: training wrote no checkpoint")
    return [(d, read_meta(d)["metrics"]) for d in saved], saved[-1]


def read_history(run_dir: str) -> list[dict[str, Any]]:
    """The per-epoch history rank 0 wrote into `run_dir`."""
    return json.loads(storage.read_text(storage.join(run_dir, HISTORY_JSON)))
