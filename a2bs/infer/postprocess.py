"""Optional post-processing of 100 Hz predictions (each switched on in ``InferConfig``).

Order: neutral calibration -> articulation gain -> clip to [0, 1] -> One-Euro smoothing. Everything
runs at the model's 100 Hz rate, before resampling to the output fps, and every step is causal, so
the streaming path gives the same curves as the offline path (the one exception, by design: offline
neutral calibration measures the rest face on the whole clip's silence; streaming uses the silence
seen so far, or a rest face given up front).

The One-Euro filter (Casiez et al., CHI 2012) is a first-order low-pass whose cutoff rises with the
signal's speed: still faces are smoothed hard, fast mouth moves pass with little lag. It looks at no
future frame, so it adds no latency to streaming and gives identical results chunked or whole.
"""

from __future__ import annotations

import math

import numpy as np

from a2bs.config import InferConfig
from a2bs.schema import ARKIT_BLENDSHAPES, MOUTH_INDICES, N_BLENDSHAPES

_QUAT = slice(N_BLENDSHAPES + 3, N_BLENDSHAPES + 7)
UPPER_FACE_INDEX = np.array(
    [i for i, n in enumerate(ARKIT_BLENDSHAPES) if n.startswith(("eye", "brow", "cheek", "nose"))], dtype=np.int64
)


def _alpha(cutoff_hz: np.ndarray | float, rate_hz: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau * rate_hz)


class OneEuroFilter:
    """Causal, stateful One-Euro filter over the channels of (n, C) frames at a fixed rate.

    Args:
        rate_hz: frame rate of the input.
        min_cutoff_hz: cutoff when the signal is still (lower = smoother, more lag).
        beta: how fast the cutoff rises with speed (higher = less lag on fast moves).
        d_cutoff_hz: cutoff of the speed estimate.
    """

    def __init__(self, rate_hz: float, min_cutoff_hz: float, beta: float, d_cutoff_hz: float) -> None:
        self.rate_hz = float(rate_hz)
        self.min_cutoff_hz = float(min_cutoff_hz)
        self.beta = float(beta)
        self.d_alpha = _alpha(float(d_cutoff_hz), self.rate_hz)
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new stream)."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Filter (n, C) frames that follow the previous call's; returns (n, C) float64."""
        x = np.asarray(frames, dtype=np.float64)
        out = np.empty_like(x)
        for i in range(x.shape[0]):  # recursive by nature; frame by frame keeps chunked == whole exactly
            if self._x is None:
                self._x, self._dx = x[i].copy(), np.zeros_like(x[i])
                out[i] = x[i]
                continue
            dx = (x[i] - self._x) * self.rate_hz
            self._dx = self._dx + self.d_alpha * (dx - self._dx)
            a = _alpha(self.min_cutoff_hz + self.beta * np.abs(self._dx), self.rate_hz)
            self._x = self._x + a * (x[i] - self._x)
            out[i] = self._x
        return out


def estimate_rest(blendshapes: np.ndarray, vad: np.ndarray, cfg: InferConfig) -> np.ndarray | None:
    """Rest face (52,) = mean blendshapes over silence frames (vad < threshold); None if too few."""
    silent = np.asarray(vad) < cfg.neutral_vad_threshold
    if int(silent.sum()) < max(1, cfg.neutral_min_frames):
        return None
    return np.asarray(blendshapes, dtype=np.float64)[silent].mean(axis=0)


def renormalise_quaternions(targets: np.ndarray) -> np.ndarray:
    """Scale the pose quaternion of (n, 59) rows back to unit length (in place; returned)."""
    q = targets[:, _QUAT]
    # np.linalg.norm's own formula for a vector norm along an axis, without its per-call checks.
    targets[:, _QUAT] = q / np.maximum(np.sqrt(np.add.reduce(q * q, axis=1, keepdims=True)), 1e-12)
    return targets


def apply_gain_and_clip(targets: np.ndarray, rest: np.ndarray | None, cfg: InferConfig) -> np.ndarray:
    """Subtract the rest face ((52,) or per frame (n, 52); None = none), apply gains, clip shapes to [0, 1]."""
    y = np.array(targets, dtype=np.float64)
    shapes = y[:, :N_BLENDSHAPES]
    if rest is not None:
        shapes -= rest
    if cfg.mouth_gain != 1.0:
        shapes[:, MOUTH_INDICES] *= cfg.mouth_gain
    if cfg.upper_face_gain != 1.0:
        shapes[:, UPPER_FACE_INDEX] *= cfg.upper_face_gain
    np.clip(shapes, 0.0, 1.0, out=shapes)
    return y


class PostProcessor:
    """Stateful post-processing for one stream of (n, 59) frames at `rate_hz`.

    Args:
        cfg: the ``infer`` config section.
        rate_hz: frame rate of the predictions (100 Hz).
        rest: fixed rest face (52,) for neutral calibration; None = measure it (causally) on silence.
    """

    def __init__(self, cfg: InferConfig, rate_hz: float, rest: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.rate_hz = rate_hz
        self.fixed_rest = None if rest is None else np.asarray(rest, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.smoother = (
            OneEuroFilter(self.rate_hz, self.cfg.one_euro_min_cutoff_hz, self.cfg.one_euro_beta,
                          self.cfg.one_euro_d_cutoff_hz)
            if self.cfg.smoothing else None
        )
        self._silence_sum = np.zeros(N_BLENDSHAPES)
        self._silence_n = 0

    @property
    def stateless(self) -> bool:
        """True when a frame's result depends on no other frame (no smoothing, no rest face measured or
        given): then one call on many streams' rows gives each row what its own stream's call would."""
        return self.smoother is None and not self.cfg.neutral_calibration

    @property
    def rest(self) -> np.ndarray | None:
        """The rest face in use (None until enough silence was seen)."""
        if not self.cfg.neutral_calibration:
            return None
        if self.fixed_rest is not None:
            return self.fixed_rest
        if self._silence_n < max(1, self.cfg.neutral_min_frames):
            return None
        return self._silence_sum / self._silence_n

    def _running_rest(self, shapes: np.ndarray, vad: np.ndarray) -> np.ndarray:
        # Per frame: the mean of the silent frames up to and including it (0 until there are enough),
        # so a frame's calibration never depends on how the stream was cut into chunks.
        silent = (vad < self.cfg.neutral_vad_threshold).astype(np.float64)
        counts = self._silence_n + np.cumsum(silent)  # (n,)
        sums = self._silence_sum + np.cumsum(shapes * silent[:, None], axis=0)  # (n, 52)
        self._silence_n, self._silence_sum = int(counts[-1]), sums[-1].copy()
        ready = counts >= max(1, self.cfg.neutral_min_frames)
        return np.where(ready[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)

    def __call__(self, targets: np.ndarray, vad: np.ndarray | None = None) -> np.ndarray:
        """Process the next (n, 59) frames (with their (n,) voice activity when calibrating)."""
        y = np.asarray(targets, dtype=np.float64)
        if y.shape[0] == 0:
            return y.astype(np.float32)
        rest = self.rest
        if self.cfg.neutral_calibration and self.fixed_rest is None and vad is not None:
            rest = self._running_rest(y[:, :N_BLENDSHAPES], np.asarray(vad))
        y = apply_gain_and_clip(y, rest, self.cfg)
        if self.smoother is not None:
            y = renormalise_quaternions(self.smoother(y))
        return y.astype(np.float32)


def postprocess_offline(targets: np.ndarray, vad: np.ndarray, cfg: InferConfig, rate_hz: float,
                        rest: np.ndarray | None = None) -> np.ndarray:
    """Whole-clip post-processing; the rest face comes from the whole clip's silence unless given."""
    if cfg.neutral_calibration and rest is None:
        rest = estimate_rest(np.asarray(targets)[:, :N_BLENDSHAPES], vad, cfg)
    proc = PostProcessor(cfg, rate_hz, rest=rest)
    if cfg.neutral_calibration and rest is None:
        proc.fixed_rest = np.zeros(N_BLENDSHAPES)  # too little silence to measure: calibrate to zero
    return proc(targets)
