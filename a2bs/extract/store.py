"""The columnar clip store: one Parquet part per time segment of a clip.

Layout of a clips folder::

    CLIPS/clips/<clip_id>/seg-00000.parquet   segment 0: frames with 0 <= time < segment_s
    CLIPS/clips/<clip_id>/seg-00001.parquet   segment 1: segment_s <= time < 2 * segment_s ...
    CLIPS/clips/<clip_id>/seg-00001.pose.npy  its absolute head pose (clips of more than one segment)
    CLIPS/_manifest.json                      written last (a2bs.manifests.ClipsManifest)

A part is one row of :func:`a2bs.schema.segment_schema`: the face frames whose timestamps fall in
the segment's range and the audio frames whose centres do, so the parts of a clip, in order, are
exactly its whole-file features cut at the segment borders (:func:`split_part` /
:func:`concat_parts`). Per-frame values are fixed-size lists: reading a part gives zero-copy numpy
views, and no reader ever holds more than the parts it asks for.

A part's Parquet footer also carries its extraction facts (:func:`read_segment_meta`: the video
rate, frame counts, where its audio ends), so a rerun can index the parts it skips without reading
their columns.

The segment rule (:func:`plan_segments`) lives here too, so extraction (which cuts) and build
(which reads across borders) share one definition.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from a2bs.runtime import storage
from a2bs.schema import N_TARGETS, segment_schema

CLIPS_SUBDIR = "clips"
# A tail shorter than this share of a segment joins the segment before it (no task for a few frames).
MIN_TAIL_SHARE = 0.25
# Frame times are float: a frame this close below a border belongs to the next segment.
BORDER_EPS_S = 1e-6


@dataclass(frozen=True)
class Segment:
    """One time range of a clip: frames with ``start_s <= time < end_s`` (``end_s`` is inf for the last)."""

    index: int
    start_s: float
    end_s: float


def plan_segments(duration_s: float | None, segment_s: float) -> list[Segment]:
    """The segments of a file of `duration_s` seconds (probed; ``None`` when unknown).

    ``segment_s <= 0`` or an unknown duration gives one segment over the whole file. The last
    segment is open-ended, so frames past the probed duration are never lost, and a tail shorter
    than ``MIN_TAIL_SHARE`` of a segment joins the segment before it.
    """
    if segment_s <= 0 or not duration_s or duration_s <= 0:
        return [Segment(0, 0.0, math.inf)]
    n = max(1, math.floor(duration_s / segment_s + (1.0 - MIN_TAIL_SHARE)))
    return [Segment(k, k * segment_s, (k + 1) * segment_s if k < n - 1 else math.inf) for k in range(n)]


def in_segment(time_s: np.ndarray, segment: Segment) -> np.ndarray:
    """Boolean mask of the frame times that belong to `segment`."""
    t = np.asarray(time_s, dtype=np.float64) + BORDER_EPS_S
    return (t >= segment.start_s) & (t < segment.end_s)


@dataclass
class SegmentPart:
    """The features of one segment of a clip (or, concatenated, of a whole clip)."""

    clip_id: str
    segment: int
    start_s: float
    end_s: float
    frame_index: np.ndarray  # (F,) int32, on the file's global FPS-limited grid
    frame_time_s: np.ndarray  # (F,) float64
    targets: np.ndarray  # (F, 59) float32: 52 blendshapes then 7 pose values
    has_face: np.ndarray  # (F,) bool
    audio_time_s: np.ndarray  # (A,) float64, frame centres
    mel_db: np.ndarray  # (A, n_mels) float32
    rms: np.ndarray  # (A,) float32
    zcr: np.ndarray  # (A,) float32
    vad: np.ndarray  # (A,) float32

    @property
    def n_mels(self) -> int:
        return int(self.mel_db.shape[1])


_FACE = ("frame_index", "frame_time_s", "targets", "has_face")
_AUDIO = ("audio_time_s", "mel_db", "rms", "zcr", "vad")


def segment_folder(clips_dir: str, clip_id: str) -> str:
    """The folder holding the segment parts of one clip."""
    return storage.join(clips_dir, CLIPS_SUBDIR, clip_id)


def segment_uri(clips_dir: str, clip_id: str, index: int) -> str:
    """Where segment `index` of clip `clip_id` lives."""
    return storage.join(segment_folder(clips_dir, clip_id), f"seg-{index:05d}.parquet")


def _segment_index(name: str) -> int | None:
    """The index in a part's file name ``seg-NNNNN.parquet`` (None for any other file)."""
    if name.startswith("seg-") and name.endswith(".parquet") and name[4:-8].isdigit():
        return int(name[4:-8])
    return None


def segments_on_disk(clips_dir: str, clip_id: str) -> list[int]:
    """Indices of the clip's segment parts that exist, sorted."""
    names = (u.rsplit("/", 1)[-1] for u in storage.list_files(segment_folder(clips_dir, clip_id), ".parquet"))
    return sorted(i for i in map(_segment_index, names) if i is not None)


def all_segments_on_disk(clips_dir: str) -> tuple[dict[str, list[int]], list[str]]:
    """Every clip's parts that exist (one listing of the store), and files that are not parts.

    Returns:
        ``{clip_id: sorted indices}`` and the URIs of other Parquet files under ``CLIPS/clips``
        (the layout before the clip store, manifest v1, held one ``<clip_id>.parquet`` per clip there).
    """
    found: dict[str, list[int]] = {}
    other = []
    base = storage.join(clips_dir, CLIPS_SUBDIR)
    for uri in storage.list_files(base, ".parquet"):
        parts = uri[len(base):].strip("/").split("/")
        index = _segment_index(parts[-1]) if len(parts) == 2 else None
        if index is None:
            other.append(uri)
        else:
            found.setdefault(parts[0], []).append(index)
    return {c: sorted(v) for c, v in found.items()}, other


def _list_column(values: np.ndarray, width: int = 0) -> pa.Array:
    """One row holding `values`: a list of scalars, or of fixed-size lists of `width`."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    inner = pa.FixedSizeListArray.from_arrays(flat, width) if width else flat
    return pa.ListArray.from_arrays(pa.array([0, len(inner)], pa.int32()), inner)


def part_table(part: SegmentPart) -> pa.Table:
    """A one-row Arrow table of `part` in ``segment_schema(part.n_mels)``."""
    schema = segment_schema(part.n_mels)
    widths = {"targets": N_TARGETS, "mel_db": part.n_mels}
    columns = [pa.array([part.clip_id]), pa.array([part.segment], pa.int32()),
               pa.array([part.start_s]), pa.array([part.end_s])]
    columns += [_list_column(getattr(part, name), widths.get(name, 0)) for name in _FACE + _AUDIO]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema)], schema=schema)


_META_KEY = b"a2bs_segment"


def write_segment(clips_dir: str, part: SegmentPart, meta: dict[str, Any] | None = None) -> str:
    """Write one segment part atomically; returns its URI. Its existence marks the segment as done.

    Args:
        meta: JSON-able facts about the part, kept in its footer (:func:`read_segment_meta`).
    """
    uri = segment_uri(clips_dir, part.clip_id, part.segment)
    table = part_table(part)
    if meta:
        table = table.replace_schema_metadata({**table.schema.metadata, _META_KEY: json.dumps(meta).encode()})
    storage.write_parquet_atomic(table, uri)
    return uri


def read_segment_meta(uri: str) -> dict[str, Any]:
    """The `meta` a part was written with (its footer only; ``{}`` if none)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    return json.loads(metadata[_META_KEY]) if _META_KEY in metadata else {}


def pose_uri(clips_dir: str, clip_id: str, index: int) -> str:
    """Where the absolute head pose of segment `index` lives (clips of more than one segment)."""
    return storage.join(segment_folder(clips_dir, clip_id), f"seg-{index:05d}.pose.npy")


def write_pose(clips_dir: str, clip_id: str, index: int, rotation: np.ndarray, translation_cm: np.ndarray,
               has_face: np.ndarray) -> None:
    """Store a segment's absolute pose: (F, 3, 3) rotations, (F, 3) translations and the face flags.

    The relative pose of a clip needs the rest pose of all its frames; keeping the absolute values
    (float64, not the float32 of the part) lets the clip be finished, or finished again when a missing
    segment arrives, with the same numbers as a whole-file pass.
    """
    values = np.concatenate([rotation.reshape(-1, 9), translation_cm.reshape(-1, 3),
                             np.asarray(has_face, np.float64).reshape(-1, 1)], axis=1)
    buf = io.BytesIO()
    np.save(buf, values.astype(np.float64))
    storage.atomic_write_bytes(pose_uri(clips_dir, clip_id, index), buf.getvalue())


def read_pose(clips_dir: str, clip_id: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A segment's absolute pose: rotations (F, 3, 3), translations (F, 3) in cm, face flags (F,)."""
    values = np.load(io.BytesIO(storage.read_bytes(pose_uri(clips_dir, clip_id, index))))
    return values[:, :9].reshape(-1, 3, 3), values[:, 9:12], values[:, 12] > 0.5


def _values(column: pa.ChunkedArray, width: int = 0) -> np.ndarray:
    """The one row of a list column as a numpy array, (n,) or (n, width); zero-copy for numbers."""
    flat = column.combine_chunks().flatten()
    if width:
        flat = flat.flatten()
    if pa.types.is_boolean(flat.type):
        return flat.to_numpy(zero_copy_only=False)  # Arrow packs booleans into bits: this one copies
    values = flat.to_numpy(zero_copy_only=True)
    return values.reshape(-1, width) if width else values


def read_segment_mel(uri: str) -> np.ndarray:
    """A segment part's log-mel alone, (A, n_mels) float32: the one column read."""
    table = storage.read_parquet(uri, columns=["mel_db"])
    return _values(table.column("mel_db"), int(table.schema.metadata[b"n_mels"]))


def read_segment(uri: str) -> SegmentPart:
    """Read one segment part (numeric columns are read-only zero-copy views into Arrow buffers)."""
    table = storage.read_parquet(uri)
    n_mels = int(table.schema.metadata[b"n_mels"])
    widths = {"targets": N_TARGETS, "mel_db": n_mels}
    arrays = {name: _values(table.column(name), widths.get(name, 0)) for name in _FACE + _AUDIO}
    head = {name: table.column(name)[0].as_py() for name in ("clip_id", "segment", "start_s", "end_s")}
    return SegmentPart(**head, **arrays)


def iter_segments(clips_dir: str, clip_id: str, indices: Iterable[int]) -> Iterator[SegmentPart]:
    """The clip's parts `indices`, read one at a time (memory: one part, whatever the clip's length)."""
    for index in indices:
        yield read_segment(segment_uri(clips_dir, clip_id, index))


def concat_parts(parts: list[SegmentPart]) -> SegmentPart:
    """Parts of one clip, in order, joined into one (``segment`` -1, the range of all of them)."""
    if not parts:
        raise ValueError("no segment parts to join")
    arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(SegmentPart)
              if f.name in _FACE + _AUDIO}
    return SegmentPart(parts[0].clip_id, -1, parts[0].start_s, parts[-1].end_s, **arrays)


def split_part(whole: SegmentPart, plan: list[Segment]) -> list[SegmentPart]:
    """Cut a whole-clip part at the borders of `plan`: what a segment-parallel extraction should give."""
    out = []
    for seg in plan:
        face, audio = in_segment(whole.frame_time_s, seg), in_segment(whole.audio_time_s, seg)
        arrays = {n: getattr(whole, n)[face] for n in _FACE} | {n: getattr(whole, n)[audio] for n in _AUDIO}
        out.append(SegmentPart(whole.clip_id, seg.index, seg.start_s, seg.end_s, **arrays))
    return out
