"""Validation scoring: a model over batches of windows -> loss sums and whole-clip metrics.

The one home of how a validation frame is scored, shared by the training loop
(:func:`a2bs.train.loop.validate`) and ``a2bs evaluate`` (:func:`a2bs.evaluate.report.score_split`),
so the numbers of an evaluated model file match the run's validation of the same epoch: each clip
frame counts once, from the window where it sits most central (:func:`a2bs.train.data.scored_mask`),
and the windows of a clip meet in one :class:`a2bs.train.metrics.MetricAccumulator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from a2bs.config import LossConfig, TrainConfig
from a2bs.train.data import scored_mask, to_tensors
from a2bs.train.losses import TERMS, compute_loss
from a2bs.train.metrics import SCALAR_METRICS, MetricAccumulator


def val_batch_rows(tc: TrainConfig) -> int:
    """Windows per validation batch of a training run: ``train.val_batch_size``, at least ``train.batch_size``."""
    return max(tc.batch_size, tc.val_batch_size)


@dataclass
class ScoredPass:
    """What one pass over validation batches produced.

    Attributes:
        metrics: :meth:`MetricAccumulator.compute` of the scored frames.
        loss_sums: frame-weighted sums of each loss term and ``total`` (``TERMS`` order), then the
            valid-frame count; zeros when no loss config was given.
        clip_frames: scored frames per clip id.
        groups: metrics of each group of clips (e.g. per speaker) when a grouping was given.
    """

    metrics: dict[str, Any]
    loss_sums: np.ndarray
    clip_frames: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


def score_batches(
    model: nn.Module,
    batches: Iterable[dict[str, np.ndarray]],
    frame_rate_hz: float,
    overlap_frames: int,
    device: torch.device,
    loss_cfg: LossConfig | None = None,
    loss_epoch: int = 0,
    keep_clip: Callable[[str], bool] | None = None,
    group_of: Mapping[str, str] | None = None,
) -> ScoredPass:
    """Run `model` (in eval mode, no gradients) over validation batches and score them.

    Args:
        batches: numpy batches of :func:`a2bs.train.data.arrow_to_arrays` with ``clip_id`` and ``start_s``.
        frame_rate_hz: audio frames per second of the shards (``start_s`` -> clip frame index).
        overlap_frames: frames shared by consecutive windows of a clip.
        device: where the model runs.
        loss_cfg: also sum the loss terms with these weights (None = metrics only).
        loss_epoch: the epoch whose stage weights make ``total``.
        keep_clip: score only the rows whose clip id it accepts (e.g. this worker's clips).
        group_of: clip id -> group (e.g. its speaker): also score each group on its own.
    """
    model.eval()
    acc = MetricAccumulator()
    group_accs: dict[str, MetricAccumulator] = {}
    sums = np.zeros(len(TERMS) + 2)
    clip_frames: dict[str, int] = {}
    with torch.no_grad():
        for arrays in batches:
            if keep_clip is not None:
                keep = np.array([keep_clip(str(c)) for c in arrays["clip_id"]], dtype=bool)
                if not keep.any():
                    continue
                arrays = {k: v[keep] for k, v in arrays.items()}
            batch = to_tensors(arrays, device)
            # (B, T, 59); a model with identities sees each window's face
            pred = (model(batch["audio"], identity=batch["identity"]) if "identity" in batch
                    else model(batch["audio"])).float()
            if loss_cfg is not None:
                terms = compute_loss(pred, batch["targets"], loss_cfg, loss_epoch, batch["mask"], batch["vad"])
                frames = float(batch["mask"].sum())
                sums += np.array([float(terms[k]) for k in (*TERMS, "total")] + [1.0]) * frames
            scored = scored_mask(arrays["mask"], overlap_frames)
            starts = np.rint(arrays["start_s"] * frame_rate_hz).astype(np.int64)
            acc.update(pred, batch["targets"], scored, list(arrays["clip_id"]), starts)
            if group_of is not None:
                groups = np.array([group_of[str(c)] for c in arrays["clip_id"]], dtype=object)
                for g in sorted(set(groups)):
                    rows = np.flatnonzero(groups == g)
                    group_accs.setdefault(g, MetricAccumulator()).update(
                        pred[rows], batch["targets"][rows], scored[rows], list(arrays["clip_id"][rows]), starts[rows])
            for cid, n in zip(arrays["clip_id"], (scored > 0.5).sum(axis=1)):
                clip_frames[str(cid)] = clip_frames.get(str(cid), 0) + int(n)
    return ScoredPass(acc.compute(), sums, clip_frames, {g: a.compute() for g, a in sorted(group_accs.items())})


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-worker validation metrics, weighting by each worker's valid frames.

    MAEs merge exactly; a correlation becomes the frame-weighted mean of the workers' values (each of
    which follows the whole-clip definition on that worker's clips). With one worker it is the identity.
    """
    parts = [p for p in parts if p.get("n_frames")]
    if len(parts) <= 1:
        return parts[0] if parts else {"n_frames": 0, "n_clips": 0, **{k: math.nan for k in SCALAR_METRICS},
                                       "per_channel_mae": {}}
    w = np.array([p["n_frames"] for p in parts], dtype=np.float64)
    out: dict[str, Any] = {"n_frames": int(w.sum()), "n_clips": int(sum(p["n_clips"] for p in parts))}
    for key in SCALAR_METRICS:
        vals = np.array([p.get(key, math.nan) for p in parts], dtype=np.float64)
        ok = ~np.isnan(vals)
        out[key] = float(np.average(vals[ok], weights=w[ok])) if ok.any() else math.nan
    names = parts[0]["per_channel_mae"].keys()
    out["per_channel_mae"] = {n: float(np.average([p["per_channel_mae"][n] for p in parts], weights=w)) for n in names}
    return out
