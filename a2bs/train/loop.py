"""The per-worker training loop, shared by Ray Train workers, Tune trials and plain local runs.

:func:`run_loop` knows nothing about where it runs: a :class:`WorkerContext` gives it its rank, its
batches, a way to wrap the model for data parallelism, to restore the latest checkpoint and to
report an epoch. :func:`train_loop_per_worker` builds that context inside a Ray Train worker.

Per epoch: staged loss weights (``losses.stage_weights``), AdamW + OneCycleLR stepped per batch,
gradient clipping, autocast + GradScaler on CUDA only; then validation over whole clips (each
worker validates the clips :func:`a2bs.train.data.clip_rank` gives it), a checkpoint written by
rank 0 and reported by every rank, and (rank 0) the history as CSV/JSON and TensorBoard scalars.

``val_loss`` uses the weights of the *final* stage whatever the epoch, so it is comparable across
epochs and the best checkpoint is not simply the last epoch before a new term is switched on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from a2bs.config import Config, TrainConfig, config_from_dict, config_to_dict
from a2bs.manifests import ModelCard
from a2bs.models.identity import drop_identities
from a2bs.models.registry import build_model
from a2bs.runtime import storage
from a2bs.runtime.faults import fault_point
from a2bs.schema import N_BLENDSHAPES, N_TARGETS, POSE_BOUNDED_INDICES
from a2bs.train.checkpoint import (
    checkpoint_dir_name,
    load_checkpoint,
    save_checkpoint,
    state_digest,
    unwrap,
)
from a2bs.train.augment import make_augmenter
from a2bs.train.data import clip_rank, ray_train_batches, ray_val_arrays
from a2bs.train.losses import TERMS, compute_loss, stage_weights
from a2bs.train.metrics import (
    SCALAR_METRICS,
    VAL_LOSS,
    VAL_OBJECTIVE,
    format_metrics,
    seed_objective,
    val_key,
)
from a2bs.train.validation import merge_metrics, score_batches, val_batch_rows

log = logging.getLogger("a2bs.train")

HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
TENSORBOARD_DIR = "tensorboard"
INVOCATION_FILE = "_invocation.json"


@dataclass
class WorkerContext:
    """What the loop needs from its runtime.

    Attributes:
        rank / world_size: this worker and the number of data-parallel workers.
        device: where the model and batches live.
        run_dir: the run folder (history, TensorBoard).
        steps_per_epoch: optimizer steps of this worker per epoch (equal on all workers).
        frame_rate_hz: audio frames per second of the shards (start_s -> frame index).
        train_batches: epoch -> tensor batches (audio, targets, vad, mask) on `device`.
        val_arrays: () -> numpy batches of all validation rows (with clip_id and start_s).
        wrap_model: model on `device` -> the model to train (DDP when world_size > 1).
        restore: context manager yielding the latest checkpoint folder, or None.
        report: (metrics, local checkpoint folder or None) -> None; called by every rank each epoch.
        card: the run's model card (:meth:`a2bs.manifests.ModelCard.for_run`); each checkpoint's model file
            carries it with that checkpoint's model config, epoch and metrics.
        all_gather: object -> list of every rank's object (identity list on one worker).
        committed: blocks until every reported checkpoint is persisted and registered.
        invocation: id of this `a2bs train` call (restarts after failures keep it; --resume makes a new one).
        overlap_frames: frames shared by consecutive windows (see :func:`a2bs.train.data.scored_mask`).
        target_mean: (59,) train-split channel means for :func:`init_output_bias` (None = leave the init).
    """

    rank: int
    world_size: int
    device: torch.device
    run_dir: str
    steps_per_epoch: int
    frame_rate_hz: float
    train_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]]
    val_arrays: Callable[[], Iterable[dict[str, np.ndarray]]]
    wrap_model: Callable[[nn.Module], nn.Module]
    restore: Callable[[], ContextManager[str | None]]
    report: Callable[[dict[str, Any], str | None], None]
    card: ModelCard
    all_gather: Callable[[Any], list[Any]] = lambda obj: [obj]
    committed: Callable[[], None] = lambda: None
    invocation: str = ""
    overlap_frames: int = 0
    target_mean: list[float] | None = None


def resolve_device(tc: TrainConfig) -> torch.device:
    """``train.device``: "auto" is CUDA when ``use_gpu`` is set and a GPU is visible, else CPU."""
    if tc.device == "cuda" or (tc.device == "auto" and tc.use_gpu and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cuda")
    if tc.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, not {tc.device!r}")
    return torch.device("cpu")


def final_stage_epoch(cfg: Config) -> int:
    """An epoch at which every loss term has started (used for the comparable ``val_loss``)."""
    lc = cfg.loss
    return max(lc.temporal_start_epoch, lc.silence_start_epoch, lc.pose_start_epoch, 0)


def init_output_bias(model: nn.Module, target_mean: list[float]) -> bool:
    """Set the output head's biases so a zero feature vector predicts `target_mean` (59 values).

    Without it the head starts at sigmoid(0) = 0.5 for every blendshape while most sit near 0.05: the
    first steps then shift the skip sum by a large common offset, the head's per-frame LayerNorm
    turns every frame into the same vector and the outputs stop depending on the audio (observed on the
    demo corpus: jawOpen predictions with std 1e-4 after ~20 steps at any learning rate tried).
    Uses ``model.init_output_bias(mean)`` when the model has one, else the a2bs ``OutputHead`` layout
    (``head.proj``: 52 blendshape logits, then tx ty tz qx qy qz before ``tanh x pose_scale``).

    Returns:
        True if a bias was set.
    """
    mean = torch.as_tensor(target_mean, dtype=torch.float32)
    if callable(getattr(model, "init_output_bias", None)):
        model.init_output_bias(mean)
        return True
    head = getattr(model, "head", None)
    proj = getattr(head, "proj", None)
    n_out = N_BLENDSHAPES + len(POSE_BOUNDED_INDICES)
    if not isinstance(proj, nn.Conv1d) or proj.bias is None or proj.out_channels != n_out or mean.numel() != N_TARGETS:
        return False
    shapes = mean[:N_BLENDSHAPES].clamp(1e-3, 1 - 1e-3)
    scale = float(getattr(head, "pose_scale", 0.2)) or 0.2
    pose = (mean[list(POSE_BOUNDED_INDICES)] / scale).clamp(-0.95, 0.95)
    with torch.no_grad():
        proj.bias.copy_(torch.cat([torch.log(shapes / (1 - shapes)), torch.atanh(pose)]).to(proj.bias))
    return True


def validate(model: nn.Module, cfg: Config, ctx: WorkerContext) -> dict[str, Any]:
    """Validation loss and whole-clip metrics of this worker's clips, merged over all workers."""
    scored = score_batches(model, ctx.val_arrays(), ctx.frame_rate_hz, ctx.overlap_frames, ctx.device,
                           loss_cfg=cfg.loss, loss_epoch=final_stage_epoch(cfg),
                           keep_clip=lambda clip_id: clip_rank(clip_id, ctx.world_size) == ctx.rank)
    gathered = ctx.all_gather({"sums": scored.loss_sums.tolist(), "metrics": scored.metrics})
    total = np.sum([g["sums"] for g in gathered], axis=0)
    merged = merge_metrics([g["metrics"] for g in gathered])
    n = max(total[-1], 1e-12)
    out = {val_key(f"{k}_loss"): float(total[i] / n) for i, k in enumerate(TERMS)}
    out[VAL_LOSS] = float(total[len(TERMS)] / n)
    out.update({val_key(k): merged[k] for k in SCALAR_METRICS})
    out[VAL_OBJECTIVE] = seed_objective(out)
    out["val_clips"] = merged["n_clips"]
    out["val_frames"] = merged["n_frames"]
    out["per_channel_mae"] = merged["per_channel_mae"]
    return out


class _History:
    """Rank 0's record of the run: history.json/csv (rewritten whole each epoch) and TensorBoard."""

    def __init__(self, run_dir: str, rows: list[dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self.rows = rows
        self.writer = None
        if not storage.is_remote(run_dir):
            self.writer = _summary_writer(str(Path(run_dir, TENSORBOARD_DIR)))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        storage.atomic_write_text(storage.join(self.run_dir, HISTORY_JSON), json.dumps(self.rows, indent=1, default=float))
        storage.atomic_write_csv(storage.join(self.run_dir, HISTORY_CSV),
                                 [{k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
                                  for r in self.rows])
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.writer.add_scalar(k.replace("val_", "val/").replace("train_", "train/"), v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(logdir: str) -> Any:
    # torch's writer needs the `tensorboard` package; tensorboardX (a ray[tune] dependency) writes the
    # same event files. With neither, the CSV/JSON history is the record.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(logdir)


def one_cycle(optimizer: torch.optim.Optimizer, tc: TrainConfig, total_steps: int,
              done_steps: int = 0) -> torch.optim.lr_scheduler.OneCycleLR:
    """The run's LR schedule: OneCycleLR peaking at ``train.lr`` over `total_steps` optimizer steps.

    `done_steps` > 0 starts it that many steps in (a resumed run whose schedule length changed); the
    optimizer's param groups must then hold ``initial_lr`` (set by a first call or a loaded state).
    """
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=tc.lr, total_steps=max(total_steps, 1),
                                               last_epoch=done_steps - 1)


def run_loop(cfg: Config, ctx: WorkerContext) -> None:
    """Train `cfg` from scratch or from the latest checkpoint, reporting every epoch."""
    tc = cfg.train
    torch.manual_seed(tc.seed + ctx.rank)  # ranks differ in dropout; DDP broadcasts rank 0's weights
    np.random.seed(tc.seed + ctx.rank)
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    with ctx.restore() as ckpt_dir:
        state = load_checkpoint(ckpt_dir) if ckpt_dir else None
    model_cfg = state.model_cfg if state else cfg.model  # a checkpoint rebuilds its own model
    model = build_model(model_cfg)
    if state:
        model.load_state_dict(state.model_state)
    elif tc.init_output_bias and ctx.target_mean is not None:
        init_output_bias(model, ctx.target_mean)
    model = model.to(ctx.device)
    model = ctx.wrap_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.epochs * ctx.steps_per_epoch
    scheduler = one_cycle(optimizer, tc, total_steps)
    amp = tc.mixed_precision and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    history: list[dict[str, Any]] = list(state.history) if state else []
    starts = state.starts + 1 if state else 0
    start_epoch = state.epoch + 1 if state else 0
    loaded_digest = ""
    if state:
        optimizer.load_state_dict(state.optimizer)
        if int(state.scheduler.get("total_steps", total_steps)) == total_steps:
            scheduler.load_state_dict(state.scheduler)
        else:  # epochs or batch geometry changed on resume: continue the new schedule at the same step
            done = int(state.scheduler.get("last_epoch", 0))
            scheduler = one_cycle(optimizer, tc, total_steps, done_steps=min(done, total_steps - 1))
        scaler.load_state_dict(state.scaler)
        loaded_digest = state_digest(optimizer.state_dict())
    end_epoch = _stop_epoch(tc, ctx, start_epoch)
    recorder = _History(ctx.run_dir, history) if ctx.rank == 0 else None
    cfg_dict = config_to_dict(cfg)
    if ctx.rank == 0:
        how = f"resumed after epoch {state.epoch}" if state else "from scratch"
        log.info(f"train: epochs {start_epoch}..{end_epoch - 1} of {tc.epochs} ({how}), {ctx.world_size} worker(s), "
                 f"{ctx.steps_per_epoch} steps/epoch/worker on {ctx.device}")
    try:
        for epoch in range(start_epoch, end_epoch):
            # A test can kill a worker here; it waits for the last checkpoint to be committed first, so the
            # restarted worker group resumes from it (a crash right after ray.train.report could beat the
            # controller to registering it).
            fault_point("train.epoch_start", prepare=ctx.committed, epoch=epoch, rank=ctx.rank)
            t0 = time.perf_counter()
            train_stats = _train_epoch(model, optimizer, scheduler, scaler, cfg, ctx, epoch, amp, total_steps)
            t1 = time.perf_counter()
            val = validate(model, cfg, ctx)
            t2 = time.perf_counter()
            per_channel = val.pop("per_channel_mae")
            scores = {"train": {k.removeprefix("train_"): v for k, v in train_stats.items() if k.endswith("loss")},
                      "val": {k.removeprefix("val_"): float(v) for k, v in val.items()}}
            digests = ctx.all_gather(state_digest(unwrap(model).state_dict()))
            metrics: dict[str, Any] = {
                "epoch": epoch, **train_stats, **val,
                "lr": scheduler.get_last_lr()[0], "train_s": t1 - t0, "val_s": t2 - t1, "epoch_s": t2 - t0,
                "world_size": ctx.world_size, "params_in_sync": float(len(set(digests)) == 1),
                "start": starts, "resumed_from_epoch": (state.epoch if state and epoch == start_epoch else -1),
            }
            row = {**metrics, "param_digests": digests,
                   "loaded_optimizer_digest": loaded_digest if epoch == start_epoch else ""}
            with tempfile.TemporaryDirectory(prefix="a2bs-ckpt-") as tmp:
                ckpt = None
                if ctx.rank == 0:
                    row["optimizer_digest"] = metrics["optimizer_digest"] = state_digest(optimizer.state_dict())
                    card = replace(ctx.card, model=model_cfg, identities=model_cfg.identities, epoch=epoch,
                                   metrics=scores)
                    save_checkpoint(tmp, model, card, optimizer, scheduler, scaler, epoch,
                                    {**metrics, "per_channel_mae": per_channel}, history + [row], cfg_dict, starts)
                    ckpt = tmp
                ctx.report(metrics, ckpt)
            if recorder is not None:
                recorder.add(row)
                log.info(_epoch_line(metrics))
    finally:
        if recorder is not None:
            recorder.close()


def _stop_epoch(tc: TrainConfig, ctx: WorkerContext, start_epoch: int) -> int:
    """End epoch (exclusive) of this invocation: `max_epochs_per_run` counts from where the invocation
    began, so a worker-group restart inside it does not extend it. Rank 0 decides, all ranks agree."""
    if tc.max_epochs_per_run <= 0:
        return tc.epochs
    stop = None
    if ctx.rank == 0:
        uri = storage.join(ctx.run_dir, INVOCATION_FILE)
        rec = json.loads(storage.read_text(uri)) if storage.exists(uri) else {}
        if rec.get("id") != ctx.invocation or not ctx.invocation:
            rec = {"id": ctx.invocation, "stop_epoch": min(tc.epochs, start_epoch + tc.max_epochs_per_run)}
            storage.atomic_write_text(uri, json.dumps(rec))
        stop = int(rec["stop_epoch"])
    return int(ctx.all_gather(stop)[0])


def _epoch_line(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']}: train_loss {m['train_loss']:.4f} val_loss {m[VAL_LOSS]:.4f} {format_metrics(m)} "
            f"({m['epoch_s']:.1f} s, {m['train_samples_per_s']:.0f} seq/s)")


def _train_identity(batch: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """The model's identity argument: the batch's rows with ``train.identity_dropout`` of them replaced
    by the average ({} for a model without identities: called as before)."""
    if "identity" not in batch:
        return {}
    return {"identity": drop_identities(batch["identity"], len(cfg.model.identities), cfg.train.identity_dropout)}


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, cfg: Config,
                 ctx: WorkerContext, epoch: int, amp: bool, total_steps: int) -> dict[str, float]:
    tc = cfg.train
    model.train()
    weights = stage_weights(cfg.loss, epoch)
    sums = {"total": 0.0, **{k: 0.0 for k in TERMS}}
    n_batches = rows = 0
    grad_norm = 0.0
    wait_s = 0.0
    t_start = time.perf_counter()
    t_wait = t_start
    for batch in ctx.train_batches(epoch):
        wait_s += time.perf_counter() - t_wait
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            pred = model(batch["audio"], **_train_identity(batch, cfg))  # (B, T, 59)
        terms = compute_loss(pred.float(), batch["targets"], cfg.loss, epoch, batch["mask"], batch["vad"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.unscale_(optimizer)
        grad_norm += float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm))
        scaler.step(optimizer)
        scaler.update()
        # OneCycleLR raises past its last step; a short extra batch (uneven split) must not crash the run.
        if scheduler.last_epoch + 1 < total_steps:
            scheduler.step()
        for k in sums:
            sums[k] += float(terms[k].detach())
        n_batches += 1
        rows += int(batch["audio"].shape[0])
        t_wait = time.perf_counter()
    train_s = time.perf_counter() - t_start
    nb = max(n_batches, 1)
    out = {"train_loss": sums["total"] / nb, **{f"train_{k}_loss": sums[k] / nb for k in TERMS},
           "grad_norm": grad_norm / nb, "train_batches": n_batches, "train_rows": rows * ctx.world_size,
           "train_samples_per_s": rows * ctx.world_size / max(train_s, 1e-9), "data_wait_s": wait_s}
    out.update({f"weight_{k}": v for k, v in weights.items()})
    return out


# ---------------------------------------------------------------------------------------------
# Ray Train worker entry point


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker``: build the worker's context and run :func:`run_loop`.

    `loop_config` holds ``cfg`` (config dict), ``run_dir``, ``steps_per_epoch``, ``n_mels``,
    ``frame_rate_hz`` and the run's model ``card`` (see :func:`a2bs.train.trainer.make_trainer`).
    """
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["cfg"])
    tc = cfg.train
    rctx = ray.train.get_context()
    rank, world = rctx.get_world_rank(), rctx.get_world_size()
    device = ray.train.torch.get_device() if resolve_device(tc).type == "cuda" else torch.device("cpu")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    n_mels = int(loop_config["n_mels"])
    train_it = ray.train.get_dataset_shard("train")
    val_it = ray.train.get_dataset_shard("val")
    augmenter = make_augmenter(cfg.augment, cfg.audio, tc.seed)  # cfg.audio is the shards' front end

    def train_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        return ray_train_batches(train_it, n_mels, tc.batch_size, tc.shuffle_buffer_rows, tc.seed, epoch, rank, device,
                                 augmenter, cfg.model.identities)

    def val_arrays() -> Iterator[dict[str, np.ndarray]]:
        return ray_val_arrays(val_it, n_mels, val_batch_rows(tc), cfg.model.identities)

    @contextlib.contextmanager
    def restore() -> Iterator[str | None]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
        else:
            with ckpt.as_directory() as d:
                yield d

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        epoch = int(metrics["epoch"])
        checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(epoch))

    def all_gather(obj: Any) -> list[Any]:
        if world == 1:
            return [obj]
        out: list[Any] = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out

    def committed() -> None:
        ray.train.get_all_reported_checkpoints()

    ctx = WorkerContext(
        rank=rank, world_size=world, device=device, run_dir=loop_config["run_dir"],
        steps_per_epoch=int(loop_config["steps_per_epoch"]), frame_rate_hz=float(loop_config["frame_rate_hz"]),
        train_batches=train_batches, val_arrays=val_arrays,
        wrap_model=lambda m: ray.train.torch.prepare_model(m, move_to_device=False),
        restore=restore, report=report, card=loop_config["card"], all_gather=all_gather, committed=committed,
        invocation=str(loop_config.get("invocation", "")), overlap_frames=int(loop_config.get("overlap_frames", 0)),
        target_mean=loop_config.get("target_mean"),
    )
    run_loop(cfg, ctx)
