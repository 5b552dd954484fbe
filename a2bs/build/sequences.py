"""Clip features -> synchronised 100 Hz targets -> validated, windowed training sequences.

Targets arrive at the video rate (30 Hz after the FPS limit) and are linearly interpolated per
channel onto the audio frame timestamps (``np.interp``), as the seed describes. ``has_face`` is
interpolated the same way and thresholded at 0.5 into a per-frame validity mask; audio frames
outside the span of the face track (e.g. an audio track longer than the video) are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2bs.config import SequenceConfig
from a2bs.schema import (
    BLENDSHAPE_RANGE,
    MEL_DB_RANGE,
    N_BLENDSHAPES,
    N_TARGETS,
    POSE_RANGE,
    POSE_REST,
)


@dataclass
class SyncedClip:
    """One clip on the 100 Hz audio timeline."""

    time_s: np.ndarray  # (A,)
    mel_db: np.ndarray  # (A, n_mels)
    targets: np.ndarray  # (A, 59)
    vad: np.ndarray  # (A,)
    mask: np.ndarray  # (A,) 1.0 where a face was seen


def synchronise(
    audio_time_s: np.ndarray,
    frame_time_s: np.ndarray,
    targets: np.ndarray,
    has_face: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate (F, C) video-rate targets onto audio timestamps.

    Returns:
        (A, C) float32 targets and (A,) float32 mask. Without any face frame the targets are the
        rest values and the mask is all zero.
    """
    n_audio = len(audio_time_s)
    if len(frame_time_s) == 0 or not has_face.any():
        rest = np.zeros((n_audio, targets.shape[1] if targets.ndim == 2 else N_TARGETS), np.float32)
        rest[:, N_BLENDSHAPES:] = POSE_REST
        return rest, np.zeros(n_audio, np.float32)
    out = np.empty((n_audio, targets.shape[1]), dtype=np.float32)
    for c in range(targets.shape[1]):
        out[:, c] = np.interp(audio_time_s, frame_time_s, targets[:, c])
    face = np.interp(audio_time_s, frame_time_s, has_face.astype(np.float64))
    # Beyond the last video frame np.interp would hold the edge value: that is not a seen face.
    frame_step = np.median(np.diff(frame_time_s)) if len(frame_time_s) > 1 else 0.0
    inside = (audio_time_s >= frame_time_s[0] - 1e-9) & (audio_time_s <= frame_time_s[-1] + frame_step + 1e-9)
    mask = ((face >= 0.5) & inside).astype(np.float32)
    return out, mask


@dataclass
class ClipCounts:
    """What validation clipped, per channel (counts of values outside the valid range)."""

    mel_clipped: int
    target_clipped: np.ndarray  # (59,) int64

    def add(self, other: "ClipCounts") -> "ClipCounts":
        return ClipCounts(self.mel_clipped + other.mel_clipped, self.target_clipped + other.target_clipped)


def validate(mel_db: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, ClipCounts]:
    """Clip only out-of-range values (never z-score) and count them.

    Ranges: mel [-80, 10] dB, blendshapes [0, 1], pose [-1, 1] (see ``a2bs.schema``).
    """
    lo = np.full(targets.shape[1], POSE_RANGE[0], np.float32)
    hi = np.full(targets.shape[1], POSE_RANGE[1], np.float32)
    lo[:N_BLENDSHAPES], hi[:N_BLENDSHAPES] = BLENDSHAPE_RANGE
    target_out = ((targets < lo) | (targets > hi)).sum(axis=0).astype(np.int64)
    mel_out = int(((mel_db < MEL_DB_RANGE[0]) | (mel_db > MEL_DB_RANGE[1])).sum())
    mel = np.clip(mel_db, *MEL_DB_RANGE) if mel_out else mel_db
    tgt = np.clip(targets, lo, hi) if target_out.any() else targets
    return mel.astype(np.float32, copy=False), tgt.astype(np.float32, copy=False), ClipCounts(mel_out, target_out)


def window_params(cfg: SequenceConfig, frame_rate_hz: float) -> tuple[int, int]:
    """(window length, step) in audio frames: 240 ms / 120 ms overlap at 100 Hz -> (24, 12)."""
    length = int(round(cfg.sequence_ms * frame_rate_hz / 1000.0))
    step = length - int(round(cfg.overlap_ms * frame_rate_hz / 1000.0))
    if length <= 0 or step <= 0:
        raise ValueError(
            f"sequence.sequence_ms={cfg.sequence_ms} and overlap_ms={cfg.overlap_ms} give no valid window"
        )
    return length, step


def window_starts(n_frames: int, length: int, step: int) -> np.ndarray:
    """Start indices of every full window: the seed's [0-23], [12-35], ... pattern."""
    if n_frames < length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_frames - length + 1, step, dtype=np.int64)


def expected_windows(n_frames: int, cfg: SequenceConfig, frame_rate_hz: float) -> int:
    """Number of windows a clip of `n_frames` audio frames yields before face filtering."""
    length, step = window_params(cfg, frame_rate_hz)
    return len(window_starts(n_frames, length, step))


def make_windows(clip: SyncedClip, cfg: SequenceConfig, frame_rate_hz: float) -> dict[str, np.ndarray]:
    """Sliding windows kept only where >= ``min_face_ratio`` of frames saw a face.

    Returns:
        ``start_s`` (N,), ``audio`` (N, T, n_mels), ``targets`` (N, T, 59), ``vad`` (N, T), ``mask`` (N, T).
    """
    length, step = window_params(cfg, frame_rate_hz)
    starts = window_starts(len(clip.time_s), length, step)
    if len(starts):
        face_ratio = np.array([clip.mask[s : s + length].mean() for s in starts])
        starts = starts[face_ratio >= cfg.min_face_ratio]
    idx = starts[:, None] + np.arange(length)[None, :]  # (N, T)
    return {
        "start_s": clip.time_s[starts] if len(starts) else np.zeros(0),
        "audio": clip.mel_db[idx],
        "targets": clip.targets[idx],
        "vad": clip.vad[idx],
        "mask": clip.mask[idx],
    }
