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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from a2bs.build.sequences import SyncedClip, make_windows, synchronise, validate
from a2bs.config import Config, ConfigError, SequenceConfig
from a2bs.extract.clip import record_arrays
from a2bs.manifests import ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import N_TARGETS, sequence_schema

# train: fitted on. val: every choice (best epoch, Tune and its early stopping). test: unseen speakers (or clips),
# only reported. known: held-out clips of training speakers (sequence.known_clip_fraction), only reported.
SPLITS = ("train", "val", "test", "known")
SELECTION_SPLIT = "val"
REPORTED_SPLITS = ("test", "known")


def _ranked(keys: list[str], salt: str) -> list[str]:
    """The distinct keys in a seeded pseudo-random order (independent of the order given)."""
    return sorted(set(keys), key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())


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


def split_clips(clips: list[dict[str, Any]], seq: SequenceConfig) -> None:
    """Set ``clip["split"]`` of every clip (dicts with clip_id and speaker_id) from the sequence settings.

    With ``test_speakers`` those speakers are the test split and val is drawn from the others.

    Raises:
        ConfigError: an unknown ``split_by``, shares outside [0, 1) or summing to 1 or more, a
            ``known_clip_fraction`` or ``test_speakers`` with ``split_by=clip`` (every held-out clip is
            then of a known voice), or a test speaker without clips.
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
    if seq.test_speakers and seq.split_by != "speaker":
        raise ConfigError("sequence.test_speakers needs sequence.split_by=speaker")
    speakers = {c["speaker_id"] for c in clips}
    unknown = sorted(set(seq.test_speakers) - speakers)
    if unknown:
        raise ConfigError(f"sequence.test_speakers: no clips of speaker {unknown[0]!r} "
                          f"(speakers: {', '.join(sorted(speakers))})")
    if seq.test_speakers and set(seq.test_speakers) == speakers:
        raise ConfigError("sequence.test_speakers: every speaker is a test speaker, none is left to train on")
    key = "speaker_id" if seq.split_by == "speaker" else "clip_id"
    rest = [c[key] for c in clips if c["speaker_id"] not in seq.test_speakers]
    splits = assign_splits(rest, seq.val_fraction, seq.split_seed, 0.0 if seq.test_speakers else seq.test_fraction)
    splits.update(dict.fromkeys(seq.test_speakers, "test"))
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


def build_shard(plan: ShardPlan, out_dir: str, cfg: Config) -> dict[str, Any]:
    """Window every clip of a plan and write the shard atomically; return its statistics."""
    n_mels = cfg.audio.n_mels
    cols: dict[str, list] = {n: [] for n in sequence_schema(n_mels).names}
    mel_clipped = 0
    target_clipped = np.zeros(N_TARGETS, np.int64)
    sums = np.zeros(N_TARGETS)
    sq_sums = np.zeros(N_TARGETS)
    n_valid = 0.0
    for uri in plan.clip_uris:
        row = storage.read_parquet(uri).to_pylist()[0]
        arrs = record_arrays(row)
        targets, mask = synchronise(arrs["audio_time_s"], arrs["frame_time_s"], arrs["targets"], arrs["has_face"])
        mel, targets, counts = validate(arrs["mel_db"], targets)
        mel_clipped += counts.mel_clipped
        target_clipped += counts.target_clipped
        clip = SyncedClip(arrs["audio_time_s"], mel, targets, arrs["vad"], mask)
        w = make_windows(clip, cfg.sequence, row["mel_frame_rate"])
        n = len(w["start_s"])
        if n == 0:
            continue
        m = w["mask"][..., None].astype(np.float64)  # float64 sums: the manifest's means initialise training
        sums += (w["targets"] * m).sum(axis=(0, 1))
        sq_sums += ((w["targets"].astype(np.float64) ** 2) * m).sum(axis=(0, 1))
        n_valid += float(m.sum())
        cols["clip_id"] += [row["clip_id"]] * n
        cols["speaker_id"] += [row["speaker_id"]] * n
        cols["split"] += [plan.split] * n
        cols["start_s"] += w["start_s"].tolist()
        cols["n_frames"] += [w["audio"].shape[1]] * n
        cols["audio"] += list(w["audio"].reshape(n, -1))
        cols["targets"] += list(w["targets"].reshape(n, -1))
        cols["vad"] += list(w["vad"])
        cols["mask"] += list(w["mask"])
    table = pa.Table.from_pydict(cols, schema=sequence_schema(n_mels))
    storage.write_parquet_atomic(table, storage.join(out_dir, plan.name))
    return {
        "name": plan.name,
        "split": plan.split,
        "rows": table.num_rows,
        "clips": len(plan.clip_uris),
        "mel_clipped": int(mel_clipped),
        "target_clipped": target_clipped.tolist(),
        "target_sum": sums.tolist(),
        "target_sq_sum": sq_sums.tolist(),
        "valid_frames": n_valid,
    }


def shard_files(shards_dir: str, split: str) -> list[str]:
    """The non-empty shard files of a split, as listed by the shards manifest."""
    return ShardsManifest.load(shards_dir).files(shards_dir, split)
