"""Validation metrics over whole clips, and the pass/fail table against the seed's targets.

Definitions (all on frames with mask > 0.5; unobserved blendshapes, i.e. tongueOut, never count):

- ``mae``: mean |pred - target| over all valid frames and the 51 observed blendshapes (pose excluded:
  it has other units and its own metric). Frame-weighted, pooled over clips.
- ``mouth_mae``: the same over the observed ``schema.MOUTH_CHANNELS`` (jaw* and mouth*).
- ``pose_mae``: mean |error| over the six independent pose values (tx, ty, tz in metres; qx, qy, qz);
  qw is derived from them and left out. Also ``pose_translation_mae_m`` and ``pose_rotation_deg_mae``
  (mean angle of the relative rotation, ``2 acos |<q_pred, q_true>|``, in degrees).
- Correlations (``jaw_corr``, ``lip_corr``, ``smile_corr``): Pearson r of each channel is computed per
  clip over the clip's concatenated valid frames (never averaged over windows), then averaged over
  clips weighted by their valid frame count. A (clip, channel) pair whose *target* std is <= ``eps``
  (the channel does not move in that clip; r undefined) is skipped. A constant *prediction* of a
  moving target counts as r = 0. A group value (lip: ``schema.LIP_CHANNELS``, smile:
  ``schema.SMILE_CHANNELS``) is the plain mean over its channels that have at least one usable clip;
  NaN if none has (reported as not available, and fails its target).
- ``per_channel_mae``: {channel name: MAE} for the 51 observed blendshapes and the 7 pose slots.

If windows of one clip overlap, pass ``start_frames`` to :meth:`MetricAccumulator.update`: each clip
frame then counts once (the first prediction seen for it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from a2bs.schema import (
    BLENDSHAPE_INDEX,
    JAW_CHANNEL,
    LIP_CHANNELS,
    MOUTH_INDICES,
    N_BLENDSHAPES,
    N_TARGETS,
    OBSERVED_BLENDSHAPE_INDICES,
    POSE_BOUNDED_INDICES,
    SMILE_CHANNELS,
    TARGET_NAMES,
)

# Metric names: the scalar keys of MetricAccumulator.compute(). Training reports each as
# ``val_<name>`` (:func:`val_key`) next to the loss terms (``val_loss``, ``val_<term>_loss``).
MAE = "mae"
MOUTH_MAE = "mouth_mae"
POSE_MAE = "pose_mae"
POSE_TRANSLATION_MAE_M = "pose_translation_mae_m"
POSE_ROTATION_DEG_MAE = "pose_rotation_deg_mae"
JAW_CORR = "jaw_corr"
LIP_CORR = "lip_corr"
SMILE_CORR = "smile_corr"
SCALAR_METRICS: tuple[str, ...] = (MAE, MOUTH_MAE, POSE_MAE, POSE_TRANSLATION_MAE_M, POSE_ROTATION_DEG_MAE,
                                   JAW_CORR, LIP_CORR, SMILE_CORR)
VAL_PREFIX = "val_"
VAL_LOSS = "val_loss"
VAL_OBJECTIVE = "val_objective"

# The seed's targets for good performance: (metric, comparison, threshold).
SEED_TARGETS: tuple[tuple[str, str, float], ...] = (
    (MAE, "<", 0.05),
    (JAW_CORR, ">", 0.7),
    (LIP_CORR, ">", 0.6),
    (MOUTH_MAE, "<", 0.04),
)


def val_key(name: str) -> str:
    """The key under which training reports a validation metric: ``mae`` -> ``val_mae``."""
    return VAL_PREFIX + name


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """The value of metric `name` in `metrics`, keyed ``val_<name>`` (training) or ``<name>`` (evaluate); NaN if absent."""
    return float(metrics.get(val_key(name), metrics.get(name, math.nan)))


def format_metrics(metrics: dict[str, Any], names: Sequence[str] = (MAE, MOUTH_MAE, JAW_CORR, LIP_CORR)) -> str:
    """``"mae 0.0312 mouth_mae 0.0301 jaw_corr 0.812 lip_corr 0.700"``: correlations to 3 decimals, the rest to 4."""
    return " ".join(f"{n} {metric_value(metrics, n):.{3 if n.endswith('_corr') else 4}f}" for n in names)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def pearson(pred: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> float:
    """Pearson r of two 1-D arrays; NaN if the target std <= eps, 0 if only the prediction is constant."""
    if pred.size < 2:
        return math.nan
    tc, pc = target - target.mean(), pred - pred.mean()
    t_std, p_std = math.sqrt(float(np.mean(tc * tc))), math.sqrt(float(np.mean(pc * pc)))
    if t_std <= eps:
        return math.nan
    if p_std <= eps:
        return 0.0
    return float(np.clip(np.mean(tc * pc) / (t_std * p_std), -1.0, 1.0))


def quaternion_angle_deg(q_pred: np.ndarray, q_true: np.ndarray) -> np.ndarray:
    """Angle (degrees) of the rotation between unit quaternions (..., 4) in w, x, y, z order."""
    qp = q_pred / np.maximum(np.linalg.norm(q_pred, axis=-1, keepdims=True), 1e-12)
    qt = q_true / np.maximum(np.linalg.norm(q_true, axis=-1, keepdims=True), 1e-12)
    dot = np.clip(np.abs(np.sum(qp * qt, axis=-1)), 0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))


class MetricAccumulator:
    """Collects predictions/targets per clip over a validation pass; :meth:`compute` gives the metrics.

    Args:
        eps: a target std at or below this marks a channel as not moving in a clip (see module doc).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        """Forget everything collected."""
        self._pred: dict[str, list[np.ndarray]] = defaultdict(list)
        self._target: dict[str, list[np.ndarray]] = defaultdict(list)
        self._frame: dict[str, list[np.ndarray]] = defaultdict(list)
        self._n_updates = 0

    def update(
        self,
        pred: Any,
        target: Any,
        mask: Any = None,
        clip_ids: Sequence[str] | None = None,
        start_frames: Sequence[int] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            pred: (B, T, 59) or (T, 59), numpy or torch.
            target: same shape.
            mask: (B, T) or (T,), > 0.5 where the frame counts; None = all frames.
            clip_ids: B clip ids; None = every batch row is its own clip.
            start_frames: B clip frame indices of each row's first frame (dedups overlapping windows).
        """
        p, t = _to_numpy(pred), _to_numpy(target)
        if p.ndim == 2:
            p, t = p[None], t[None]
            mask = None if mask is None else _to_numpy(mask)[None]
        if p.shape != t.shape or p.shape[-1] != N_TARGETS:
            raise ValueError(f"metrics: pred {p.shape} and target {t.shape} must both be (B, T, 59)")
        b, n, _ = p.shape
        m = np.ones((b, n), dtype=bool) if mask is None else _to_numpy(mask).reshape(b, n) > 0.5
        if clip_ids is None:
            clip_ids = [f"__row{self._n_updates}_{i}" for i in range(b)]
        if len(clip_ids) != b:
            raise ValueError(f"metrics: {len(clip_ids)} clip ids for a batch of {b}")
        starts = [None] * b if start_frames is None else list(start_frames)
        self._n_updates += 1
        for i, clip in enumerate(clip_ids):
            clip = str(clip)
            self._pred[clip].append(p[i][m[i]])
            self._target[clip].append(t[i][m[i]])
            if starts[i] is not None:
                self._frame[clip].append(int(starts[i]) + np.flatnonzero(m[i]))

    def _clip_arrays(self, clip: str) -> tuple[np.ndarray, np.ndarray]:
        p = np.concatenate(self._pred[clip], axis=0)  # (F, 59)
        t = np.concatenate(self._target[clip], axis=0)
        frames = self._frame.get(clip)
        if frames and sum(len(f) for f in frames) == len(p):
            idx = np.concatenate(frames)
            _, first = np.unique(idx, return_index=True)  # sorted by frame, first occurrence kept
            p, t = p[first], t[first]
        return p, t

    def compute(self) -> dict[str, Any]:
        """Metrics dict: scalars (floats, NaN where undefined), ``per_channel_mae`` and ``n_frames``/``n_clips``."""
        clips = [c for c in self._pred if sum(len(a) for a in self._pred[c])]
        arrays = {c: self._clip_arrays(c) for c in clips}
        n_frames = sum(len(p) for p, _ in arrays.values())
        out: dict[str, Any] = {"n_clips": len(clips), "n_frames": n_frames}
        if n_frames == 0:
            return {**out, **{k: math.nan for k in SCALAR_METRICS}, "per_channel_mae": {}}
        p_all = np.concatenate([p for p, _ in arrays.values()], axis=0)  # (F, 59)
        t_all = np.concatenate([t for _, t in arrays.values()], axis=0)
        abs_err = np.abs(p_all - t_all)  # (F, 59)
        out[MAE] = float(abs_err[:, OBSERVED_BLENDSHAPE_INDICES].mean())
        out[MOUTH_MAE] = float(abs_err[:, MOUTH_INDICES].mean())
        out[POSE_MAE] = float(abs_err[:, POSE_BOUNDED_INDICES].mean())
        out[POSE_TRANSLATION_MAE_M] = float(abs_err[:, N_BLENDSHAPES : N_BLENDSHAPES + 3].mean())
        q = slice(N_BLENDSHAPES + 3, N_BLENDSHAPES + 7)
        out[POSE_ROTATION_DEG_MAE] = float(quaternion_angle_deg(p_all[:, q], t_all[:, q]).mean())
        out[JAW_CORR] = self._group_corr(arrays, (JAW_CHANNEL,))
        out[LIP_CORR] = self._group_corr(arrays, LIP_CHANNELS)
        out[SMILE_CORR] = self._group_corr(arrays, SMILE_CHANNELS)
        keep = list(OBSERVED_BLENDSHAPE_INDICES) + list(range(N_BLENDSHAPES, N_TARGETS))
        out["per_channel_mae"] = {TARGET_NAMES[i]: float(abs_err[:, i].mean()) for i in keep}
        return out

    def _channel_corr(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], ch: int) -> float:
        rs, ws = [], []
        for p, t in arrays.values():
            r = pearson(p[:, ch], t[:, ch], self.eps)
            if not math.isnan(r):
                rs.append(r)
                ws.append(len(p))
        return float(np.average(rs, weights=ws)) if rs else math.nan

    def _group_corr(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str]) -> float:
        values = [self._channel_corr(arrays, BLENDSHAPE_INDEX[n]) for n in names]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan


def target_met(value: float, op: str, threshold: float) -> bool:
    """Whether `value` meets a seed target (``op`` is "<" or ">"); NaN never does."""
    return not math.isnan(value) and (value < threshold if op == "<" else value > threshold)


def targets_met(metrics: dict[str, Any]) -> dict[str, bool]:
    """{metric name: met?} for :data:`SEED_TARGETS` (keys of `metrics` may carry the ``val_`` prefix)."""
    return {name: target_met(metric_value(metrics, name), op, threshold) for name, op, threshold in SEED_TARGETS}


def seed_objective(metrics: dict[str, Any]) -> float:
    """Mean over the seed's targets of value/threshold ("<" targets) or (1-value)/(1-threshold) (">").

    Each term is below 1 exactly when its target is met; lower is better; a missing correlation counts
    as 0. Keys may carry the ``val_`` prefix. Reported as ``val_objective`` every epoch (usable as
    ``train.best_metric``) and used by ``a2bs tune`` to rank trials.
    """
    terms = []
    for name, op, threshold in SEED_TARGETS:
        v = metric_value(metrics, name)
        if op == "<":
            terms.append(v / threshold if not math.isnan(v) else math.inf)
        else:
            terms.append((1.0 - (0.0 if math.isnan(v) else v)) / (1.0 - threshold))
    return float(sum(terms) / len(terms))


def target_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Pass/fail rows against :data:`SEED_TARGETS`: metric, value, target (e.g. ``"< 0.05"``), passed.

    Keys of `metrics` may carry the ``val_`` prefix."""
    rows = []
    for name, op, threshold in SEED_TARGETS:
        value = metric_value(metrics, name)
        rows.append({"metric": name, "value": value, "target": f"{op} {threshold:g}",
                     "passed": target_met(value, op, threshold)})
    return rows


def format_target_table(metrics: dict[str, Any]) -> str:
    """Markdown pass/fail table against the seed's targets."""
    lines = ["| metric | value | target | result |", "|---|---:|---|---|"]
    for row in target_table(metrics):
        value = "n/a" if math.isnan(row["value"]) else f"{row['value']:.4f}"
        lines.append(f"| {row['metric']} | {value} | {row['target']} | {'PASS' if row['passed'] else 'FAIL'} |")
    return "\n".join(lines)
