"""The build graph: clip features -> sequence shards (Ray tasks or this process), manifest written last.

Clip files are planned into shards; each shard task windows its clips and writes one Parquet file.
A rerun with the same clips and settings rewrites nothing (the manifest's fingerprint says so).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from a2bs.build.sequences import expected_windows
from a2bs.build.shards import MANIFEST_NAME, SPLITS, assign_splits, build_shard, plan_shards
from a2bs.config import Config, config_from_dict, config_to_dict, save_config
from a2bs.errors import InputError
from a2bs.extract.pipeline import CLIPS_SUBDIR
from a2bs.runtime import storage
from a2bs.runtime.batch import CONFIG_NAME
from a2bs.runtime.cluster import init_ray, rows_as_done
from a2bs.runtime.console import tracked
from a2bs.schema import SCHEMA_VERSION, TARGET_NAMES


@dataclass
class BuildSummary:
    """What a build run did."""

    clips: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    up_to_date: bool = False
    wall_s: float = 0.0

    def line(self) -> str:
        state = " (up to date, nothing rewritten)" if self.up_to_date else ""
        counts = ", ".join(f"{k} {v}" for k, v in self.rows.items())
        return f"build: {self.clips} clips -> {self.shards} shards, sequences {counts} in {self.wall_s:.1f} s{state}"


def _clip_index(clips_dir: str) -> list[dict]:
    import pyarrow.parquet as pq

    fs, _ = storage.filesystem(clips_dir)
    out = []
    for uri in storage.list_files(storage.join(clips_dir, CLIPS_SUBDIR), suffix=".parquet"):
        _, path = storage.filesystem(uri)
        t = pq.read_table(path, filesystem=fs, columns=["clip_id", "speaker_id", "duration_s", "mel_frame_rate"])
        row = t.to_pylist()[0]
        row["uri"] = uri
        out.append(row)
    return out


def run_build(clips_dir: str, shards_dir: str, cfg: Config, use_ray: bool = True,
              progress: bool = True) -> BuildSummary:
    """Window every clip into sequence shards with a by-speaker/by-clip split; manifest written last.

    `progress` shows the shards done on the console (:mod:`a2bs.runtime.console`).
    """
    t0 = time.perf_counter()
    clips = _clip_index(clips_dir)
    if not clips:
        raise InputError(clips_dir, "no clip features found (run `a2bs extract` first)")
    key = "speaker_id" if cfg.sequence.split_by == "speaker" else "clip_id"
    if cfg.sequence.split_by not in ("speaker", "clip"):
        raise ValueError(f"sequence.split_by must be 'speaker' or 'clip', not {cfg.sequence.split_by!r}")
    splits = assign_splits([c[key] for c in clips], cfg.sequence.val_fraction, cfg.sequence.split_seed)
    for c in clips:
        c["split"] = splits[c[key]]
        c["windows"] = expected_windows(int(c["duration_s"] * c["mel_frame_rate"]) + 1, cfg.sequence,
                                        c["mel_frame_rate"])
    settings = {"audio": config_to_dict(cfg.audio), "sequence": config_to_dict(cfg.sequence)}
    fingerprint = json.dumps({"clips": sorted(c["clip_id"] for c in clips), "settings": settings,
                              "schema_version": SCHEMA_VERSION}, sort_keys=True)
    manifest_uri = storage.join(shards_dir, MANIFEST_NAME)
    if storage.exists(manifest_uri):
        old = json.loads(storage.read_text(manifest_uri))
        if old.get("fingerprint") == fingerprint and all(storage.exists(storage.join(shards_dir, s["name"])) for s in old["shards"]):
            return BuildSummary(len(clips), old["rows"], len(old["shards"]), True, time.perf_counter() - t0)
    plans = plan_shards(clips, cfg.sequence.rows_per_shard)
    if use_ray:
        import ray

        init_ray(cfg.ray)
        cfg_dict = config_to_dict(cfg)
        ds = ray.data.from_items([{"i": i} for i in range(len(plans))], override_num_blocks=max(1, len(plans)))
        done = rows_as_done(ds.map(lambda r: build_shard(plans[r["i"]], shards_dir, config_from_dict(cfg_dict))))
    else:
        done = (build_shard(p, shards_dir, cfg) for p in plans)
    stats = list(tracked(done, "build", len(plans), "shards", enabled=progress))
    stats.sort(key=lambda s: s["name"])
    # Remove shards a previous, larger run left behind, so the folder matches the manifest.
    keep = {s["name"] for s in stats}
    for split in SPLITS:
        for uri in storage.list_files(storage.join(shards_dir, split), suffix=".parquet"):
            rel = f"{split}/{uri.rsplit('/', 1)[-1]}"
            if rel not in keep:
                storage.delete(uri)
    manifest = _manifest(clips, stats, cfg, fingerprint)
    save_config(cfg, storage.join(shards_dir, CONFIG_NAME))
    storage.atomic_write_text(manifest_uri, json.dumps(manifest, indent=1))
    return BuildSummary(len(clips), manifest["rows"], len(stats), False, time.perf_counter() - t0)


def _manifest(clips: list[dict], stats: list[dict], cfg: Config, fingerprint: str) -> dict[str, Any]:
    rows = {s: sum(x["rows"] for x in stats if x["split"] == s) for s in SPLITS}
    n = max(sum(x["valid_frames"] for x in stats), 1.0)
    mean = np.sum([x["target_sum"] for x in stats], axis=0) / n
    var = np.sum([x["target_sq_sum"] for x in stats], axis=0) / n - mean**2
    clipped = np.sum([x["target_clipped"] for x in stats], axis=0)
    return {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "config": config_to_dict(cfg),
        "rows": rows,
        "clips": {s: sorted(c["clip_id"] for c in clips if c["split"] == s) for s in SPLITS},
        "speakers": {s: sorted({c["speaker_id"] for c in clips if c["split"] == s}) for s in SPLITS},
        "shards": [{k: x[k] for k in ("name", "split", "rows", "clips")} for x in stats],
        "channels": {
            name: {"mean": float(mean[i]), "std": float(np.sqrt(max(var[i], 0.0))), "clipped": int(clipped[i])}
            for i, name in enumerate(TARGET_NAMES)
        },
        "mel_clipped": int(sum(x["mel_clipped"] for x in stats)),
    }
