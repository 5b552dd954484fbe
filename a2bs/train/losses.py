"""Multi-component training loss: base, temporal, silence and pose terms with a staged schedule.

All terms take predictions and targets of shape (B, T, 59) (52 blendshapes, then the pose
``tx ty tz qw qx qy qz`` of :mod:`a2bs.schema`), a face mask (B, T) (1 where a face was seen, 0 for
missing faces and padding) and the voice activity (B, T) in [0, 1]. Every term is a weighted mean
(sum of weighted errors / sum of weights), so it does not depend on batch size, sequence length or
how many frames are masked; a batch with no valid frame gives exactly 0.

- ``base``: smooth L1 (``beta = smooth_l1_beta``) over observed channels; pose channels are weighted
  by ``pose_loss_scale`` and unobserved blendshapes (tongueOut) by 0.
- ``temporal``: L1 between predicted and target 1st differences plus L1 between 2nd differences
  (per 10 ms frame), over frame pairs/triples that are all unmasked, same channel weights as base.
  L1 rather than smooth L1 because per-frame differences are far below ``beta``, where smooth L1
  would give almost no gradient.
- ``silence``: where ``vad < silence_vad_threshold`` (and a face is present), the mouth must not move
  more than the truth (``relu(|dpred| - |dtarget|)`` on the mouth channels over silent frame pairs) and
  must not open more than the truth (``relu(pred_jawOpen - target_jawOpen)`` on silent frames). The
  one-sided form is 0 for perfect predictions and never pushes against the data.
- ``pose``: hinge ``relu(|pose| - pose_limit)`` on the six independent pose values. With the model's
  ``tanh x pose_scale`` head and ``pose_scale <= pose_limit`` it is 0; it guards larger pose scales.

Staging (epochs, 0-based): ``base`` from epoch 0, then temporal and silence from their start epochs,
then pose (``LossConfig.*_start_epoch``); before its start a term's weight is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from a2bs.config import LossConfig
from a2bs.schema import (
    BLENDSHAPE_INDEX,
    JAW_INDEX,
    MOUTH_INDICES,
    N_BLENDSHAPES,
    N_TARGETS,
    POSE_BOUNDED_INDICES,
    UNOBSERVED_BLENDSHAPES,
)

TERMS: tuple[str, ...] = ("base", "temporal", "silence", "pose")


def channel_weights(cfg: LossConfig, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(59,) per-channel weights: 1 for observed blendshapes, 0 for unobserved, pose_loss_scale for pose."""
    w = torch.ones(N_TARGETS, device=device, dtype=dtype)
    for name in UNOBSERVED_BLENDSHAPES:
        w[BLENDSHAPE_INDEX[name]] = 0.0
    w[N_BLENDSHAPES:] = cfg.pose_loss_scale
    return w


def stage_weights(cfg: LossConfig, epoch: int) -> dict[str, float]:
    """Weight of each term at `epoch` (0-based): its configured weight once started, else 0."""
    return {
        "base": cfg.base_weight,
        "temporal": cfg.temporal_weight if epoch >= cfg.temporal_start_epoch else 0.0,
        "silence": cfg.silence_weight if epoch >= cfg.silence_start_epoch else 0.0,
        "pose": cfg.pose_weight if epoch >= cfg.pose_start_epoch else 0.0,
    }


def _weighted_mean(err: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(err * weight) / sum(weight), 0 when the weights sum to 0 (broadcasting `weight`)."""
    weight = weight.expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1e-12)


def base_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Smooth L1 over masked frames and observed channels (pose scaled by ``pose_loss_scale``)."""
    w = mask[..., None] * channel_weights(cfg, pred.device, pred.dtype)  # (B, T, 59)
    err = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.smooth_l1_beta)  # (B, T, 59)
    return _weighted_mean(err, w)


def temporal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """L1 between 1st differences + L1 between 2nd differences (valid where all frames involved are)."""
    cw = channel_weights(cfg, pred.device, pred.dtype)  # (59,)
    dp, dt = pred.diff(dim=1), target.diff(dim=1)  # (B, T-1, 59)
    m1 = mask[:, 1:] * mask[:, :-1]  # (B, T-1)
    d2p, d2t = dp.diff(dim=1), dt.diff(dim=1)  # (B, T-2, 59)
    m2 = m1[:, 1:] * m1[:, :-1]  # (B, T-2)
    first = _weighted_mean((dp - dt).abs(), m1[..., None] * cw)
    second = _weighted_mean((d2p - d2t).abs(), m2[..., None] * cw)
    return first + second


def silence_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, vad: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    """Mouth moving or jaw opening beyond the truth on silent (vad < threshold), unmasked frames."""
    silent = (vad < cfg.silence_vad_threshold).to(pred.dtype) * mask  # (B, T)
    idx = list(MOUTH_INDICES)
    dp = pred[..., idx].diff(dim=1).abs()  # (B, T-1, M)
    dt = target[..., idx].diff(dim=1).abs()
    pair = silent[:, 1:] * silent[:, :-1]  # (B, T-1)
    still = _weighted_mean(F.relu(dp - dt), pair[..., None])
    opening = F.relu(pred[..., JAW_INDEX] - target[..., JAW_INDEX])  # (B, T)
    closed = _weighted_mean(opening, silent)
    return still + closed


def pose_limit_loss(pred: torch.Tensor, mask: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Hinge on the six independent pose values beyond +-pose_limit (qw is derived, so excluded)."""
    pose = pred[..., list(POSE_BOUNDED_INDICES)]  # (B, T, 6)
    return _weighted_mean(F.relu(pose.abs() - cfg.pose_limit), mask[..., None])


def compute_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    cfg: LossConfig,
    epoch: int = 0,
    mask: torch.Tensor | None = None,
    vad: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms and their staged weighted sum.

    Args:
        pred: (B, T, 59) model output.
        target: (B, T, 59).
        cfg: weights, beta, thresholds and the staging schedule.
        epoch: current epoch (0-based), selects the stage weights.
        mask: (B, T) float, 1 where a face was seen; None = all frames valid.
        vad: (B, T) voice activity in [0, 1]; None = speech everywhere (no silence term).

    Returns:
        ``{"base", "temporal", "silence", "pose", "total"}``: scalar tensors. Every term is computed
        (and can be logged) even before its stage starts; only ``total`` applies the stage weights.
    """
    if pred.shape != target.shape or pred.shape[-1] != N_TARGETS:
        raise ValueError(f"loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, T, 59)")
    b, t, _ = pred.shape
    mask = torch.ones(b, t, device=pred.device, dtype=pred.dtype) if mask is None else mask.to(pred.dtype)
    vad = torch.ones(b, t, device=pred.device, dtype=pred.dtype) if vad is None else vad.to(pred.dtype)
    terms = {
        "base": base_loss(pred, target, mask, cfg),
        "temporal": temporal_loss(pred, target, mask, cfg),
        "silence": silence_loss(pred, target, mask, vad, cfg),
        "pose": pose_limit_loss(pred, mask, cfg),
    }
    weights = stage_weights(cfg, epoch)
    total = sum(weights[k] * terms[k] for k in TERMS)
    return {**terms, "total": total}
