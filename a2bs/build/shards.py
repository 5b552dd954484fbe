"""Sequence shards: split assignment, shard plans, writing one shard, listing a split's files.

Layout of a shards folder::

    SHARDS/train/part-00000.parquet ...   rows in a2bs.schema.sequence_schema
    SHARDS/val/part-00000.parquet ...     also test/ and known/ when the build holds them out (SPLITS)
    SHARDS/_manifest.json                 written last (a2bs.manifests.ShardsManifest): front end,
                                          windows, splits (speakers, clips, rows, shards), channel stats

A shard's name depends only on its split and its position in a plan sorted by clip id, so a rerun
rewrites the same names (never appends) and the manifest lists exactly the files that belong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from a2bs.build.sequences import ClipCounts, Windower, synchronise_parts, track_span
from a2bs.config import Config, ConfigError, SequenceConfig
from a2bs.extract.audio import MelNormaliser
from a2bs.extract.store import iter_segments, read_segment_mel, segment_uri
from a2bs.manifests import MelNorm, ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import MEL_DB_RANGE, N_TARGETS, sequence_schema

# train: fitted on. val: every choice (best epoch, Tune and its early stopping). test: unseen speakers (or clips),
# only reported. known: held-out clips of training speakers (sequence.known_clip_fraction), only reported.
SPLITS = ("train", "val", "test", "known")
SELECTION_SPLIT = "val"
REPORTED_SPLITS = ("test", "known")
# Window data per Parquet row group of a shard: what a shard writer holds at once, whatever the length
# of its clips (309 windows of 240 ms at 80 mels, 7 of the full preset's 10 s).
ROW_GROUP_BYTES = 4 << 20


def _ranked(keys: list[str], salt: str) -> list[str]:
    """The distinct keys in a seeded pseudo-random order (independent of the order given)."""
    return sorted(set(keys), key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())


IDENTITY_RULES = ("", "speaker", "prefix")  # sequence.identity_from


def clip_identity(speaker_id: str, rule: str) -> str:
    """The face (identity) of a clip of `speaker_id` by rule `rule` (``sequence.identity_from``); "" = none.

    "speaker": the speaker id itself; "prefix": the speaker id up to its first "_" (the whole id when it
    has none), so `astronaut_slt` and `astronaut_awb` share the face `astronaut`; "": no identity.
    """
    if rule not in IDENTITY_RULES:
        raise ConfigError(f"sequence.identity_from must be one of {', '.join(map(repr, IDENTITY_RULES))}, not {rule!r}")
    if rule == "speaker":
        return speaker_id
    if rule == "prefix":
        return speaker_id.split("_", 1)[0]
    return ""


def assign_splits(keys: list[str], val_fraction: float, seed: int, test_fraction: float = 0.0) -> dict[str, str]:
    """Deterministic split of speakers or clips into train, val and test.

    Keys are ranked by a seeded hash: the first ``round(val_fraction * n)`` go to val, the next
    ``round(test_fraction * n)`` to test, the rest to train. A non-zero share gets at least one key
    while train keeps at least one (val before test: with two keys there is no test). Val is drawn
    first, so it is the same whether or not a test split is asked for.
    """
    ranked = _ranked(keys, str(seed))
    n = len(ranked)

    def share(fraction: float, left: int) -> int:
        k = round(fraction * n)
        return min(max(k, 1 if fraction > 0 else 0), max(left - 1, 0))  # train keeps one

    n_val = share(val_fraction, n)
    n_test = share(test_fraction, n - n_val)
    out = {k: "val" for k in ranked[:n_val]}
    out.update({k: "test" for k in ranked[n_val:n_val + n_test]})
    out.update({k: "train" for k in ranked[n_val + n_test:]})
    return dict(sorted(out.items()))


def known_clips(clips: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    """Clip ids held out from each training speaker (`clips`: dicts with clip_id and speaker_id).

    Per speaker, ``round(fraction * n)`` of its clips (at least one when `fraction` > 0, never all of
    them), ranked by a seeded hash, so every known voice is scored and still trained on.
    """
    by_speaker: dict[str, list[str]] = {}
    for c in clips:
        by_speaker.setdefault(c["speaker_id"], []).append(c["clip_id"])
    out: set[str] = set()
    for speaker, ids in by_speaker.items():
        k = min(max(round(fraction * len(ids)), 1 if fraction > 0 else 0), len(ids) - 1)
        out.update(_ranked(ids, f"known:{seed}:{speaker}")[:k])
    return out


def select_speakers(clips: list[dict[str, Any]], speakers: tuple[str, ...], where: str) -> list[dict[str, Any]]:
    """The clips of `speakers` (``sequence.speakers``; all clips when empty), in their order.

    Raises:
        ConfigError: a named speaker has no clip in `where` (the folder's speakers are listed).
    """
    if not speakers:
        return clips
    present = {c["speaker_id"] for c in clips}
    unknown = sorted(set(speakers) - present)
    if unknown:
        raise ConfigError(f"sequence.speakers: no clips of speaker {unknown[0]!r} in {where} "
                          f"(speakers: {', '.join(sorted(present))})")
    return [c for c in clips if c["speaker_id"] in speakers]


def split_clips(clips: list[dict[str, Any]], seq: SequenceConfig) -> None:
    """Set ``clip["split"]`` of every clip (dicts with clip_id and speaker_id) from the sequence settings.

    With ``test_speakers`` those speakers are the test split and val is drawn from the others; with
    ``val_speakers`` those are the val split (and test, without ``test_speakers``, is drawn from the rest).

    Raises:
        ConfigError: an unknown ``split_by``, shares outside [0, 1) or summing to 1 or more, a
            ``known_clip_fraction`` or ``test_speakers`` with ``split_by=clip`` (every held-out clip is
            then of a known voice), a test or val speaker without clips, or one named in both.
    """
    if seq.split_by not in ("speaker", "clip"):
        raise ConfigError(f"sequence.split_by must be 'speaker' or 'clip', not {seq.split_by!r}")
    for name in ("val_fraction", "test_fraction", "known_clip_fraction"):
        if not 0.0 <= getattr(seq, name) < 1.0:
            raise ConfigError(f"sequence.{name} must be in [0, 1), not {getattr(seq, name)}")
    if seq.val_fraction + seq.test_fraction >= 1.0:
        raise ConfigError(f"sequence.val_fraction + sequence.test_fraction must be below 1 "
                          f"({seq.val_fraction} + {seq.test_fraction} leaves nothing to train on)")
    if seq.known_clip_fraction and seq.split_by != "speaker":
        raise ConfigError("sequence.known_clip_fraction needs sequence.split_by=speaker (with split_by=clip the "
                          "val and test clips are already of known voices)")
    speakers = {c["speaker_id"] for c in clips}
    for name in ("test_speakers", "val_speakers"):
        named = getattr(seq, name)
        if named and seq.split_by != "speaker":
            raise ConfigError(f"sequence.{name} needs sequence.split_by=speaker")
        unknown = sorted(set(named) - speakers)
        if unknown:
            raise ConfigError(f"sequence.{name}: no clips of speaker {unknown[0]!r} "
                              f"(speakers: {', '.join(sorted(speakers))})")
    both = sorted(set(seq.test_speakers) & set(seq.val_speakers))
    if both:
        raise ConfigError(f"sequence.val_speakers and sequence.test_speakers both name {both[0]!r}")
    if (seq.test_speakers or seq.val_speakers) and set(seq.test_speakers + seq.val_speakers) == speakers:
        raise ConfigError("sequence.test_speakers/val_speakers: every speaker is a test or val speaker, "
                          "none is left to train on")
    key = "speaker_id" if seq.split_by == "speaker" else "clip_id"
    named = set(seq.test_speakers) | set(seq.val_speakers)
    rest = [c[key] for c in clips if c["speaker_id"] not in named]
    splits = assign_splits(rest, 0.0 if seq.val_speakers else seq.val_fraction, seq.split_seed,
                           0.0 if seq.test_speakers else seq.test_fraction)
    splits.update(dict.fromkeys(seq.test_speakers, "test"))
    splits.update(dict.fromkeys(seq.val_speakers, "val"))
    for c in clips:
        c["split"] = splits[c[key]]
    known = known_clips([c for c in clips if c["split"] == "train"], seq.known_clip_fraction, seq.split_seed)
    for c in clips:
        if c["clip_id"] in known:
            c["split"] = "known"


@dataclass
class ShardPlan:
    """Which clip files one shard is built from."""

    split: str
    index: int
    clip_uris: list[str] = field(default_factory=list)
    estimated_rows: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}/part-{self.index:05d}.parquet"


def plan_shards(clips: list[dict[str, Any]], rows_per_shard: int) -> list[ShardPlan]:
    """Group clips (dicts with clip_id, uri, split, windows) into shards of about `rows_per_shard` rows."""
    plans: list[ShardPlan] = []
    for split in SPLITS:
        current: ShardPlan | None = None
        for clip in sorted((c for c in clips if c["split"] == split), key=lambda c: c["clip_id"]):
            if current is None or (current.estimated_rows and current.estimated_rows + clip["windows"] > rows_per_shard):
                current = ShardPlan(split, sum(p.split == split for p in plans))
                plans.append(current)
            current.clip_uris.append(clip["uri"])
            current.estimated_rows += clip["windows"]
    return plans


@dataclass(frozen=True)
class ClipSource:
    """One clip of a shard: where its segment parts are and what the clips manifest says about it."""

    clips_dir: str
    clip_id: str
    speaker_id: str
    mel_frame_rate: float
    n_segments: int  # segments in the clip's plan
    segments: tuple[int, ...]  # the parts present (a missing one is a gap no window crosses)
    identity: str = ""  # the clip's face (clip_identity); "" = none


def _face_track(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame_time_s, has_face) of one part, without reading its other columns."""
    table = storage.read_parquet(uri, columns=["frame_time_s", "has_face"])
    return (table.column("frame_time_s").combine_chunks().flatten().to_numpy(),
            table.column("has_face").combine_chunks().flatten().to_numpy(zero_copy_only=False))


def clip_windows(clip: ClipSource, cfg: Config,
                 mel_norm: MelNorm | None = None) -> Iterator[tuple[dict[str, np.ndarray], ClipCounts]]:
    """The windows of one clip with what validation clipped, read part by part (memory: a part or two).

    `mel_norm`: normalise the clip's log-mel causally from its first frame (all of its frames go through
    the normaliser, also those no window keeps, as in an inference front end fed the same audio).
    """
    track = track_span(_face_track(segment_uri(clip.clips_dir, clip.clip_id, k)) for k in clip.segments)
    parts = iter_segments(clip.clips_dir, clip.clip_id, clip.segments)
    if mel_norm is not None:
        norm = MelNormaliser(mel_norm)
        parts = (replace(part, mel_db=norm(part.mel_db)) for part in parts)
    windower = Windower(cfg.sequence, clip.mel_frame_rate)
    for run in synchronise_parts(parts, clip.n_segments, clip.segments, track, clip.mel_frame_rate):
        yield windower.push(run), run.counts


def _list_rows(values: np.ndarray) -> pa.Array:
    """(N, ...) values as N rows of a list column, each row one window's values flattened."""
    n = len(values)
    width = int(np.prod(values.shape[1:], dtype=np.int64))
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width),
                                    pa.array(np.ascontiguousarray(values).reshape(-1)))


class ShardRows:
    """Window rows -> a shard file, one row group of about `row_group_bytes` at a time, and its statistics.

    Row groups hold a fixed number of windows (all windows of a shard have the same size) and the
    statistics are summed per row group, so neither depends on how the clips were cut into parts.
    """

    def __init__(self, writer: pq.ParquetWriter, split: str, n_mels: int,
                 row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.writer, self.split, self.row_group_bytes = writer, split, row_group_bytes
        self.row_group_rows = 0  # set by the first window
        self.schema = sequence_schema(n_mels)
        self.rows = 0
        self.target_sum = np.zeros(N_TARGETS)
        self.target_sq_sum = np.zeros(N_TARGETS)
        self.valid_frames = 0.0
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, clip_id: str, speaker_id: str, windows: dict[str, np.ndarray], identity: str = "") -> None:
        """Queue one clip's windows (:func:`a2bs.build.sequences.make_windows`) of face `identity` ("" = none);
        full row groups are written."""
        n = len(windows["start_s"])
        if n == 0:
            return
        if not self.row_group_rows:
            window_bytes = sum(windows[k][0].nbytes for k in ("audio", "targets", "vad", "mask"))
            self.row_group_rows = max(1, self.row_group_bytes // window_bytes)
        self._pending.append({"clip_id": np.full(n, clip_id, dtype=object),
                              "speaker_id": np.full(n, speaker_id, dtype=object),
                              "identity": np.full(n, identity, dtype=object), **windows})
        self._pending_rows += n
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def finish(self) -> None:
        """Write the rows still queued."""
        if self._pending_rows:
            self._flush(self._pending_rows)

    def _flush(self, n: int) -> None:
        """Write the first `n` queued rows as one row group (only those rows are copied)."""
        take, rest, left = [], [], n
        for piece in self._pending:
            k = min(left, len(piece["start_s"]))
            if k:
                take.append({key: v[:k] for key, v in piece.items()})
            if k < len(piece["start_s"]):
                rest.append({key: v[k:] for key, v in piece.items()})
            left -= k
        self._pending, self._pending_rows = rest, self._pending_rows - n
        rows = {key: np.concatenate([p[key] for p in take]) for key in take[0]}
        del take
        m = rows["mask"][..., None].astype(np.float64)  # float64 sums: the manifest's means initialise training
        t = rows["targets"].astype(np.float64)
        self.target_sum += (t * m).sum(axis=(0, 1))
        t *= t
        t *= m
        self.target_sq_sum += t.sum(axis=(0, 1))
        self.valid_frames += float(m.sum())
        del t, m
        columns = [pa.array(rows["clip_id"], pa.string()), pa.array(rows["speaker_id"], pa.string()),
                   pa.array([self.split] * n, pa.string()), pa.array(rows["identity"], pa.string()),
                   pa.array(rows["start_s"], pa.float64()),
                   pa.array(np.full(n, rows["audio"].shape[1], np.int32))]
        columns += [_list_rows(rows[k]) for k in ("audio", "targets", "vad", "mask")]
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows += n


def build_shard(plan: ShardPlan, out_dir: str, cfg: Config, clips: list[ClipSource],
                mel_norm: MelNorm | None = None) -> dict[str, Any]:
    """Window the clips of a plan (``plan.clip_uris``, in order) into one shard file, written atomically
    and a row group at a time (log-mel normalised by `mel_norm`, if given); return its statistics."""
    counts = ClipCounts(0, np.zeros(N_TARGETS, np.int64))
    with storage.atomic_parquet_writer(storage.join(out_dir, plan.name), sequence_schema(cfg.audio.n_mels)) as pw:
        rows = ShardRows(pw, plan.split, cfg.audio.n_mels)
        for clip in clips:
            for windows, run_counts in clip_windows(clip, cfg, mel_norm):
                counts = counts.add(run_counts)
                rows.add(clip.clip_id, clip.speaker_id, windows, clip.identity)
        rows.finish()
    return {
        "name": plan.name,
        "split": plan.split,
        "rows": rows.rows,
        "clips": len(plan.clip_uris),
        "mel_clipped": int(counts.mel_clipped),
        "target_clipped": counts.target_clipped.tolist(),
        "target_sum": rows.target_sum.tolist(),
        "target_sq_sum": rows.target_sq_sum.tolist(),
        "valid_frames": rows.valid_frames,
    }


def mean_log_mel(clips: list[ClipSource], speech_floor_db: float = MEL_DB_RANGE[0]) -> np.ndarray:
    """(n_mels,) mean log-mel (dB, clipped to schema.MEL_DB_RANGE) over the audio frames of `clips` that
    the mel normalisation counts (MelNormaliser.speech at `speech_floor_db`; the default: all), read one
    part at a time: its prior."""
    total, frames = None, 0
    for clip in clips:
        for k in clip.segments:
            mel = np.clip(read_segment_mel(segment_uri(clip.clips_dir, clip.clip_id, k)).astype(np.float64),
                          *MEL_DB_RANGE)
            mel = mel[MelNormaliser.speech(mel, speech_floor_db)]
            if len(mel):
                total = mel.sum(axis=0) if total is None else total + mel.sum(axis=0)
                frames += len(mel)
    if total is None:
        raise ValueError("mel_norm: the training split has no frames at or above mel_norm.speech_floor_db")
    return total / frames


def shard_files(shards_dir: str, split: str) -> list[str]:
    """The non-empty shard files of a split, as listed by the shards manifest."""
    return ShardsManifest.load(shards_dir).files(shards_dir, split)
