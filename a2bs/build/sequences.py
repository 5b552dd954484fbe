"""Clip features -> synchronised 100 Hz targets -> validated, windowed training sequences.

Targets arrive at the video rate (30 Hz after the FPS limit) and are linearly interpolated per
channel onto the audio frame timestamps (``np.interp``), as the seed describes. ``has_face`` is
interpolated the same way and thresholded at 0.5 into a per-frame validity mask; audio frames
outside the span of the face track (e.g. an audio track longer than the video) are masked out.

A clip is read one segment part at a time (:mod:`a2bs.extract.store`): :func:`synchronise_parts`
carries across each border the last face frame and the audio frames still waiting for the next
one, and :class:`Windower` the frames a window crossing the border needs, so memory is a part or
two whatever the clip's length and the windows equal a whole-clip pass (``np.interp`` only ever
uses the two frames around a timestamp, or the track's first/last frame beyond its ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from a2bs.config import SequenceConfig
from a2bs.extract.store import SegmentPart
from a2bs.schema import (
    BLENDSHAPE_RANGE,
    MEL_DB_RANGE,
    N_BLENDSHAPES,
    N_TARGETS,
    POSE_RANGE,
    POSE_REST,
)

# Timestamps are float: an audio frame this close to the face track's span counts as inside it.
SPAN_EPS_S = 1e-9


@dataclass
class SyncedClip:
    """One clip (or a run of it) on the 100 Hz audio timeline."""

    time_s: np.ndarray  # (A,)
    mel_db: np.ndarray  # (A, n_mels)
    targets: np.ndarray  # (A, 59)
    vad: np.ndarray  # (A,)
    mask: np.ndarray  # (A,) 1.0 where a face was seen


@dataclass(frozen=True)
class TrackSpan:
    """What synchronisation needs to know about a clip's whole face track beyond the frames at hand."""

    first_s: float  # time of the first face-track frame
    last_s: float  # time of the last one
    frame_step_s: float  # median spacing of the frames
    any_face: bool  # False: no frame saw a face (targets are the rest values, the mask is zero)

    @classmethod
    def of(cls, frame_time_s: np.ndarray, has_face: np.ndarray) -> TrackSpan:
        """The span of a face track given whole (a clip's parts joined, or one part on its own)."""
        if len(frame_time_s) == 0:
            return cls(0.0, 0.0, 0.0, False)
        step = float(np.median(np.diff(frame_time_s))) if len(frame_time_s) > 1 else 0.0
        return cls(float(frame_time_s[0]), float(frame_time_s[-1]), step, bool(np.any(has_face)))


def synchronise(
    audio_time_s: np.ndarray,
    frame_time_s: np.ndarray,
    targets: np.ndarray,
    has_face: np.ndarray,
    track: TrackSpan | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate (F, C) video-rate targets onto audio timestamps.

    Args:
        track: the whole clip's face track when the frames given are only the ones around these
            audio timestamps (default: the frames given are the whole track).

    Returns:
        (A, C) float32 targets and (A,) float32 mask. Without any face frame the targets are the
        rest values and the mask is all zero.
    """
    track = track or TrackSpan.of(frame_time_s, has_face)
    n_audio = len(audio_time_s)
    if not track.any_face:
        rest = np.zeros((n_audio, targets.shape[1] if targets.ndim == 2 else N_TARGETS), np.float32)
        rest[:, N_BLENDSHAPES:] = POSE_REST
        return rest, np.zeros(n_audio, np.float32)
    out = np.empty((n_audio, targets.shape[1]), dtype=np.float32)
    for c in range(targets.shape[1]):
        out[:, c] = np.interp(audio_time_s, frame_time_s, targets[:, c])
    face = np.interp(audio_time_s, frame_time_s, has_face.astype(np.float64))
    # Beyond the last video frame np.interp would hold the edge value: that is not a seen face.
    inside = ((audio_time_s >= track.first_s - SPAN_EPS_S)
              & (audio_time_s <= track.last_s + track.frame_step_s + SPAN_EPS_S))
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


@dataclass
class SyncedRun:
    """Consecutive audio frames of a clip, synchronised and validated."""

    first_index: int  # the clip-wide index of the run's first audio frame
    clip: SyncedClip
    counts: ClipCounts


def track_span(tracks: Iterable[tuple[np.ndarray, np.ndarray]]) -> TrackSpan:
    """The span of a clip's face track from its parts' (frame_time_s, has_face) in segment order (only
    the frame times are held at once: ~1 MB per hour of 30 Hz video)."""
    times, any_face = [], False
    for frame_time_s, has_face in tracks:
        times.append(np.asarray(frame_time_s, dtype=np.float64))
        any_face = any_face or bool(np.any(has_face))
    span = TrackSpan.of(np.concatenate(times) if times else np.zeros(0), np.zeros(0, bool))
    return TrackSpan(span.first_s, span.last_s, span.frame_step_s, any_face)


def _cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([a, b]) if len(a) else b


def synchronise_parts(parts: Iterable[SegmentPart], n_segments: int, segments: Iterable[int],
                      track: TrackSpan, frame_rate_hz: float) -> Iterator[SyncedRun]:
    """Synchronise a clip part by part; equal to :func:`synchronise` and :func:`validate` on the whole clip.

    Args:
        parts: the clip's parts present, in segment order.
        n_segments: segments in the clip's plan; `segments`: the indices present (a missing one is a gap).
        track: the face track's span over the parts present (:func:`track_span`).
        frame_rate_hz: audio frames per second (places the first frame after a gap on the clip's grid).

    Yields:
        Runs in time order. Audio frames whose interpolation needs a face frame of a missing segment
        are left out, so a run that does not continue the one before starts after a gap.

    Memory: one part, plus the audio frames waiting for the next face frame (a few; all of them
    before the first face frame of a clip whose video starts late).
    """
    present = set(segments)
    last_missing = max((k for k in range(n_segments) if k not in present), default=-1)
    face_t, face_y, face_h = np.zeros(0), np.zeros((0, N_TARGETS), np.float32), np.zeros(0, bool)
    audio_t = audio_vad = np.zeros(0)
    audio_mel: np.ndarray | None = None
    audio_first, expected, joined_from_start = 0, 0, True
    for part in parts:
        if part.segment != expected:  # a gap: what waited for the missing part cannot be completed
            joined_from_start = False
            face_t, face_y, face_h = face_t[:0], face_y[:0], face_h[:0]
            audio_t, audio_vad, audio_mel = audio_t[:0], audio_vad[:0], None
            audio_first = int(np.rint(part.audio_time_s[0] * frame_rate_hz)) if len(part.audio_time_s) else 0
        expected = part.segment + 1
        after_gap = not joined_from_start and len(face_t) == 0
        face_t, face_y = _cat(face_t, part.frame_time_s), _cat(face_y, part.targets)
        face_h = _cat(face_h, part.has_face)
        audio_t, audio_vad = _cat(audio_t, part.audio_time_s), _cat(audio_vad, part.vad)
        audio_mel = part.mel_db if audio_mel is None else np.concatenate([audio_mel, part.mel_db])
        lo, hi = 0, len(audio_t)
        if track.any_face:
            if len(face_t) == 0:
                # No face frame yet: from the clip's start the audio waits for the first one; after a gap
                # the frame before it is lost.
                lo = hi = 0 if joined_from_start else len(audio_t)
            else:
                if after_gap:  # the frame before the part's first one was in the missing segment
                    lo = int(np.searchsorted(audio_t, face_t[0], side="left"))
                at_end = part.segment > last_missing and face_t[-1] >= track.last_s
                if not at_end:  # frames after the last face frame here need the next one
                    hi = max(lo, int(np.searchsorted(audio_t, face_t[-1], side="right")))
        if hi > lo:
            targets, mask = synchronise(audio_t[lo:hi], face_t, face_y, face_h, track)
            mel, targets, counts = validate(audio_mel[lo:hi], targets)
            yield SyncedRun(audio_first + lo,
                            SyncedClip(audio_t[lo:hi], mel, targets, audio_vad[lo:hi], mask), counts)
        audio_first += hi
        audio_t, audio_vad, audio_mel = audio_t[hi:], audio_vad[hi:], audio_mel[hi:]
        face_t, face_y, face_h = face_t[-1:], face_y[-1:], face_h[-1:]


def window_params(cfg: SequenceConfig, frame_rate_hz: float) -> tuple[int, int]:
    """(window length, step) in audio frames: 240 ms / 120 ms overlap at 100 Hz -> (24, 12)."""
    length = int(round(cfg.sequence_ms * frame_rate_hz / 1000.0))
    step = length - int(round(cfg.overlap_ms * frame_rate_hz / 1000.0))
    if length <= 0 or step <= 0:
        raise ValueError(
            f"sequence.sequence_ms={cfg.sequence_ms} and overlap_ms={cfg.overlap_ms} give no valid window"
        )
    return length, step


def window_starts(n_frames: int, length: int, step: int, first_index: int = 0) -> np.ndarray:
    """Start indices of every full window: the seed's [0-23], [12-35], ... pattern.

    `first_index` is the clip-wide index of the first of the `n_frames`: starts stay on the clip's
    grid (multiples of `step`) and are returned relative to that first frame.
    """
    first = -(-first_index // step) * step
    if first_index + n_frames < first + length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first, first_index + n_frames - length + 1, step, dtype=np.int64) - first_index


def expected_windows(n_frames: int, cfg: SequenceConfig, frame_rate_hz: float) -> int:
    """Number of windows a clip of `n_frames` audio frames yields before face filtering."""
    length, step = window_params(cfg, frame_rate_hz)
    return len(window_starts(n_frames, length, step))


def make_windows(clip: SyncedClip, cfg: SequenceConfig, frame_rate_hz: float,
                 first_index: int = 0) -> dict[str, np.ndarray]:
    """Sliding windows kept only where >= ``min_face_ratio`` of frames saw a face.

    `first_index`: the clip-wide index of ``clip``'s first frame when it is a run of a longer clip.

    Returns:
        ``start_s`` (N,), ``audio`` (N, T, n_mels), ``targets`` (N, T, 59), ``vad`` (N, T), ``mask`` (N, T).
    """
    length, step = window_params(cfg, frame_rate_hz)
    starts = window_starts(len(clip.time_s), length, step, first_index)
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


class Windower:
    """:func:`make_windows` over a clip that arrives in runs (:func:`synchronise_parts`).

    Keeps only the frames from the next window start on, so a window that crosses a border is built
    from both runs; a run that does not continue the one before (a gap) starts afresh, so no window
    spans a gap.
    """

    def __init__(self, cfg: SequenceConfig, frame_rate_hz: float) -> None:
        self.cfg, self.frame_rate_hz = cfg, frame_rate_hz
        self.length, self.step = window_params(cfg, frame_rate_hz)
        self.buffer: SyncedClip | None = None
        self.first_index = 0  # clip-wide index of the buffer's first frame

    def push(self, run: SyncedRun) -> dict[str, np.ndarray]:
        """The windows completed by `run` (see :func:`make_windows`)."""
        buf = self.buffer
        if buf is None or run.first_index != self.first_index + len(buf.time_s):
            buf, self.first_index = run.clip, run.first_index
        else:
            buf = SyncedClip(*(np.concatenate([getattr(buf, k), getattr(run.clip, k)])
                               for k in ("time_s", "mel_db", "targets", "vad", "mask")))
        windows = make_windows(buf, self.cfg, self.frame_rate_hz, self.first_index)
        # The next window start not yet complete: frames before it are never needed again.
        end = self.first_index + len(buf.time_s)
        next_start = max(-(-self.first_index // self.step), (end - self.length) // self.step + 1) * self.step
        keep = min(next_start - self.first_index, len(buf.time_s))
        self.buffer = SyncedClip(buf.time_s[keep:], buf.mel_db[keep:], buf.targets[keep:], buf.vad[keep:],
                                 buf.mask[keep:])
        self.first_index += keep
        return windows
