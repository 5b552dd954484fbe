"""Sequence shards: split assignment, shard plans, writing one shard, listing a split's files.

Layout of a shards folder::

    SHARDS/train/part-00000.parquet ...   rows in a2bs.schema.sequence_schema
    SHARDS/val/part-00000.parquet ...
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
from a2bs.config import Config
from a2bs.extract.clip import record_arrays
from a2bs.manifests import ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import N_TARGETS, sequence_schema

SPLITS = ("train", "val")


def assign_splits(keys: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic split of speakers or clips: rank keys by a seeded hash, the first
    ``round(val_fraction * n)`` (at least one when there are two or more keys) go to ``val``."""
    unique = sorted(set(keys))
    ranked = sorted(unique, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    val = set(ranked[:n_val])
    return {k: ("val" if k in val else "train") for k in unique}


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
