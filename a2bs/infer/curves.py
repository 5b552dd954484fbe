"""Curves: a face-rig animation (52 blendshapes + 7 pose values per frame) at a frame rate, and its files.

Resampling (the model predicts at 100 Hz; rigs want 30, 60 or any fps): output frame ``k`` is at
``k / fps`` seconds, there is one per frame time inside the audio (``ceil(duration_s * fps)`` rows), and
its values are the linear interpolation of the two nearest source frames (the last source frame is
held past the end); the pose quaternion is renormalised afterwards. :class:`StreamResampler` does the
same arithmetic frame by frame, so streamed curves equal offline ones.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from a2bs.infer.livelink import csv_text, livelink_values
from a2bs.infer.postprocess import renormalise_quaternions
from a2bs.runtime import storage
from a2bs.schema import ARKIT_BLENDSHAPES, N_BLENDSHAPES, N_TARGETS, TARGET_NAMES

FORMAT_SUFFIXES = {"livelink-csv": ".csv", "json": ".json", "npz": ".npz", "parquet": ".parquet"}
# "npy" was the first name of the npz format (which always wrote an .npz archive); still accepted.
FORMAT_ALIASES = {"npy": "npz"}


def output_format(fmt: str) -> str:
    """The name of output format `fmt` with aliases resolved; ValueError for an unknown format."""
    name = FORMAT_ALIASES.get(fmt, fmt)
    if name not in FORMAT_SUFFIXES:
        raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMAT_SUFFIXES)}; npy = npz)")
    return name


def frame_count(duration_s: float, fps: float) -> int:
    """Output rows for `duration_s` of audio at `fps`: one per frame time k / fps < duration_s."""
    return max(1, int(math.ceil(duration_s * fps - 1e-9))) if duration_s > 0 else 0


def source_positions(frames: np.ndarray, src_hz: float, fps: float) -> np.ndarray:
    """Fractional source-frame index of output frames `frames` (same formula offline and streaming)."""
    return np.asarray(frames, dtype=np.float64) * src_hz / fps


def interp_rows(src: np.ndarray, first_index: int, positions: np.ndarray, n_src_total: int | None) -> np.ndarray:
    """Linear interpolation of source rows at fractional `positions`.

    Args:
        src: source rows available, ``src[j]`` being source frame ``first_index + j``.
        first_index: source index of ``src[0]``.
        positions: fractional source indices wanted.
        n_src_total: total source frames when known (positions past the last frame hold it).
    """
    i0 = np.floor(positions)
    w = positions - i0
    i0 = i0.astype(np.int64)
    if n_src_total is not None:
        last = n_src_total - 1
        hold = i0 >= last
        i0 = np.minimum(i0, last)
        w[hold] = 0.0
    i1 = i0 + (w > 0)  # the next source frame, or the same one at an exact position or held
    a = src[i0 - first_index].astype(np.float64)
    b = src[i1 - first_index].astype(np.float64)
    out = a + w[:, None] * (b - a)
    return renormalise_quaternions(out)


@dataclass
class Curves:
    """Animation curves: ``values`` (N, 59) at ``fps``, frame ``k`` at ``(start_frame + k) / fps`` s.

    Columns are ``names`` (``a2bs.schema.TARGET_NAMES``): the 52 ARKit blendshapes in Apple's order,
    then head pose ``headX/Y/Z`` (metres, relative to rest) and ``headQw/Qx/Qy/Qz`` (unit quaternion).
    """

    values: np.ndarray
    fps: float
    duration_s: float | None = None  # audio duration (defaults to N / fps)
    start_frame: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1, N_TARGETS)
        if self.duration_s is None:
            self.duration_s = (self.start_frame + len(self.values)) / self.fps

    def __len__(self) -> int:
        return len(self.values)

    @property
    def names(self) -> list[str]:
        """Column names of ``values``."""
        return list(TARGET_NAMES)

    @property
    def times_s(self) -> np.ndarray:
        """(N,) frame times in seconds."""
        return (self.start_frame + np.arange(len(self.values), dtype=np.float64)) / self.fps

    @property
    def blendshapes(self) -> np.ndarray:
        """(N, 52) blendshape weights in [0, 1]."""
        return self.values[:, :N_BLENDSHAPES]

    @property
    def pose(self) -> np.ndarray:
        """(N, 7) head pose [tx, ty, tz, qw, qx, qy, qz]."""
        return self.values[:, N_BLENDSHAPES:]

    def channel(self, name: str) -> np.ndarray:
        """(N,) values of one channel by name."""
        return self.values[:, TARGET_NAMES.index(name)]

    def resample(self, fps: float) -> "Curves":
        """These curves at another frame rate (linear interpolation, quaternion renormalised)."""
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        n = frame_count(float(self.duration_s), fps)
        if len(self.values) == 0 or n == 0:
            return Curves(np.zeros((0, N_TARGETS), np.float32), fps, self.duration_s, meta=dict(self.meta))
        pos = source_positions(np.arange(n), self.fps, fps) - self.start_frame
        out = interp_rows(self.values, 0, np.maximum(pos, 0.0), len(self.values))
        return Curves(out, fps, self.duration_s, meta=dict(self.meta))

    @staticmethod
    def concat(chunks: Sequence["Curves"]) -> "Curves":
        """Join consecutive chunks (as a stream returns them) into one Curves."""
        if not chunks:
            raise ValueError("nothing to concatenate")
        first = chunks[0]
        values = np.concatenate([c.values for c in chunks], axis=0)
        return Curves(values, first.fps, chunks[-1].duration_s, first.start_frame, dict(first.meta))

    # ---- formats -------------------------------------------------------------------------------

    def livelink_values(self, eye_range_rad: float = 0.0) -> np.ndarray:
        """(N, 61) Live Link Face curves in CSV order (head angles in radians; eye angles 0 unless a range)."""
        return livelink_values(self.values, eye_range_rad)

    def to_livelink_csv(self, path: str | os.PathLike, eye_range_rad: float = 0.0) -> str:
        """Write a Live Link Face CSV; returns the path."""
        storage.atomic_write_text(path, csv_text(self.livelink_values(eye_range_rad), self.times_s, self.fps))
        return str(path)

    def to_json(self, path: str | os.PathLike | None = None, session_id: str = "a2bs_infer") -> dict[str, Any]:
        """The seed's face JSON (sessionInfo, frameCount, frames[]); also written to `path` if given."""
        frames = []
        for k, (t, row) in enumerate(zip(self.times_s, self.values.astype(np.float64))):
            p = row[N_BLENDSHAPES:]
            frames.append({
                "frame_index": self.start_frame + k,
                "timestamp": round(float(t), 6),
                "sessionId": session_id,
                "blendshapes": {n: round(float(v), 6) for n, v in zip(ARKIT_BLENDSHAPES, row[:N_BLENDSHAPES])},
                "headPosition": {"x": float(p[0]), "y": float(p[1]), "z": float(p[2])},
                "headRotation": {"w": float(p[3]), "x": float(p[4]), "y": float(p[5]), "z": float(p[6])},
                "has_face": True,
            })
        data = {
            "sessionInfo": {"sessionId": session_id, "targetFPS": self.fps, "originalFPS": self.fps,
                            "frameInterval": 1},
            "frameCount": len(frames),
            "frames": frames,
        }
        if path is not None:
            storage.atomic_write_text(path, json.dumps(data))
        return data

    def to_npz(self, path: str | os.PathLike) -> str:
        """Write ``values`` (N, 59), ``names``, ``fps``, ``time_s``, ``duration_s`` as .npz; returns the path."""
        import io as _io

        buf = _io.BytesIO()
        np.savez(buf, values=self.values, names=np.array(TARGET_NAMES), fps=np.float64(self.fps),
                 time_s=self.times_s, duration_s=np.float64(self.duration_s))
        storage.atomic_write_bytes(path, buf.getvalue())
        return str(path)

    def to_parquet(self, path: str | os.PathLike) -> str:
        """Write one row per frame: ``frame``, ``time_s`` and one float32 column per channel."""
        import pyarrow as pa

        cols: dict[str, Any] = {"frame": pa.array(self.start_frame + np.arange(len(self)), pa.int32()),
                                "time_s": pa.array(self.times_s, pa.float64())}
        for i, name in enumerate(TARGET_NAMES):
            cols[name] = pa.array(self.values[:, i], pa.float32())
        table = pa.table(cols).replace_schema_metadata(
            {"fps": str(self.fps), "duration_s": str(self.duration_s)})
        storage.write_parquet_atomic(table, path)
        return str(path)

    def save(self, path: str | os.PathLike, fmt: str, eye_range_rad: float = 0.0,
             session_id: str = "a2bs_infer") -> str:
        """Write in format `fmt` (``livelink-csv``, ``json``, ``npz`` (alias ``npy``), ``parquet``); returns the path."""
        fmt = output_format(fmt)
        if fmt == "livelink-csv":
            return self.to_livelink_csv(path, eye_range_rad)
        if fmt == "json":
            self.to_json(path, session_id)
            return str(path)
        if fmt == "npz":
            return self.to_npz(path)
        return self.to_parquet(path)


def load_npz(path: str | os.PathLike) -> Curves:
    """Read curves written by :meth:`Curves.to_npz`."""
    with np.load(path) as z:
        if [str(n) for n in z["names"]] != list(TARGET_NAMES):
            raise ValueError(f"{path}: channel names do not match a2bs.schema.TARGET_NAMES")
        return Curves(z["values"], float(z["fps"]), float(z["duration_s"]))


class StreamResampler:
    """Source frames (100 Hz) in chunks -> output frames at `fps`, identical to :meth:`Curves.resample`."""

    def __init__(self, src_hz: float, fps: float) -> None:
        self.src_hz, self.fps = float(src_hz), float(fps)
        self._buf = np.zeros((0, N_TARGETS), np.float32)
        self._buf_start = 0  # source index of _buf[0]
        self._n_src = 0
        self.next_frame = 0

    def _emit(self, total_src: int | None, n_out: int | None) -> np.ndarray:
        # Output frame k reads source frames up to ceil(k * src_hz / fps). Streaming: the frames whose
        # highest source frame has arrived; at the end, every frame below `n_out`. All candidates at
        # once (array ops, no Python loop per frame), at the positions Curves.resample uses.
        if total_src is None:  # no k at or past n_src * fps / src_hz is complete: a bound on the candidates
            hi = int(self._n_src * self.fps / self.src_hz) + 2
        else:
            hi = n_out if total_src > 0 else self.next_frame
        if hi <= self.next_frame:
            return np.zeros((0, N_TARGETS), np.float32)
        pos = source_positions(np.arange(self.next_frame, hi), self.src_hz, self.fps)
        if total_src is None:  # positions rise with k: the complete frames are a prefix
            pos = pos[: int(np.count_nonzero(np.ceil(pos) < self._n_src))]
            if not len(pos):
                return np.zeros((0, N_TARGETS), np.float32)
        out = interp_rows(self._buf, self._buf_start, pos, total_src).astype(np.float32)
        self.next_frame += len(pos)
        # Keep only what later frames can still read: from the floor of the next position (the same
        # double arithmetic as source_positions).
        keep = min(math.floor(self.next_frame * self.src_hz / self.fps), self._n_src - 1)
        drop = max(0, keep - self._buf_start)
        self._buf, self._buf_start = self._buf[drop:], self._buf_start + drop
        return out

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Add (n, 59) source frames; returns the (m, 59) output frames now complete."""
        frames = np.asarray(frames, dtype=np.float32).reshape(-1, N_TARGETS)
        self._buf = np.concatenate([self._buf, frames])
        self._n_src += len(frames)
        return self._emit(None, None)

    @staticmethod
    def push_many(resamplers: Sequence["StreamResampler"], frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``[r.push(f) for r, f in zip(resamplers, frames)]``, bit for bit, with one interpolation for all.

        What a serving tick calls for its streams: the per-push array calls of :meth:`push`, ~20 us a
        stream, were a large share of a tick's CPU beside the model; here a stream costs a few scalar steps.
        """
        parts, positions, bases, counts, spans = [], [], [], [], []
        offset = 0
        for r, f in zip(resamplers, frames):
            f = np.asarray(f, dtype=np.float32).reshape(-1, N_TARGETS)
            n_src = r._n_src + len(f)
            # The frames now complete (the test of _emit, one scalar at a time: a push completes 0-3).
            k = r.next_frame
            while math.ceil(k * r.src_hz / r.fps) < n_src:
                positions.append(k * r.src_hz / r.fps)  # source_positions' double arithmetic
                bases.append(offset - r._buf_start)
                k += 1
            counts.append(k - r.next_frame)
            size = len(r._buf) + len(f)
            parts += (r._buf, f)
            spans.append((offset, size))
            r._n_src, r.next_frame = n_src, k
            offset += size
        src = np.concatenate(parts) if parts else np.zeros((0, N_TARGETS), np.float32)
        out = np.zeros((0, N_TARGETS), np.float32)
        if positions:
            pos = np.asarray(positions)
            i0 = np.floor(pos)
            w = pos - i0
            i0 = i0.astype(np.int64) + np.asarray(bases, np.int64)
            a = src[i0].astype(np.float64)
            b = src[i0 + (w > 0)].astype(np.float64)
            out = renormalise_quaternions(a + w[:, None] * (b - a)).astype(np.float32)  # interp_rows' arithmetic
        results, lo = [], 0
        for r, n, (start, size) in zip(resamplers, counts, spans):
            results.append(out[lo : lo + n])
            lo += n
            keep = min(math.floor(r.next_frame * r.src_hz / r.fps), r._n_src - 1)  # as in _emit
            drop = max(0, keep - r._buf_start)
            r._buf, r._buf_start = src[start + drop : start + size], r._buf_start + drop
        return results

    def flush(self, duration_s: float, frames: np.ndarray | None = None) -> np.ndarray:
        """End of stream: add the last source `frames`, return the output frames left up to
        ``frame_count(duration_s, fps)`` (frames at or past the end of the audio are not emitted)."""
        if frames is not None:
            frames = np.asarray(frames, dtype=np.float32).reshape(-1, N_TARGETS)
            self._buf = np.concatenate([self._buf, frames])
            self._n_src += len(frames)
        return self._emit(self._n_src, frame_count(duration_s, self.fps))
