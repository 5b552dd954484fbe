"""The Ray Data graph of a2bs: inputs -> clip features (actor pool) -> sequence shards.

extract: manifest entries -> ``ClipExtractor`` actors (one FaceLandmarker each) -> one Parquet file
         per clip, written by the actor atomically under ``CLIPS/clips/<clip_id>.parquet``. Only
         small status rows travel back through the object store, never frames.
build:   clip files -> shard plans -> Ray tasks that window clips and write shards -> manifest last.

Both run on an embedded local Ray by default and on a cluster with ``ray.address=auto`` or under
``ray job submit``. ``use_ray=False`` runs the same per-clip code in this process.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from a2bs import io
from a2bs.config import Config, RayConfig, config_from_dict, config_to_dict, save_config
from a2bs.data.extract import audio_json, clip_record, extract_clip, face_json, records_to_table
from a2bs.data.manifest import ManifestEntry, check_entry, content_id, list_inputs
from a2bs.data.sequences import expected_windows
from a2bs.data.shards import MANIFEST_NAME, SPLITS, assign_splits, build_shard, plan_shards
from a2bs.errors import InputError
from a2bs.schema import SCHEMA_VERSION, TARGET_NAMES

log = logging.getLogger("a2bs")
CLIPS_SUBDIR = "clips"
FAILURES_NAME = "_failures.json"


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start an embedded local Ray (once per process)."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls every
        # second: without it each poll logged a warning (~200 lines in a demo run) and a crashed
        # controller's resources would never be released. It also gives a UI on 127.0.0.1:8265.
        ray.init(num_cpus=cfg.num_cpus or None, include_dashboard=True, log_to_driver=True)


def clip_uri(clips_dir: str, clip_id: str) -> str:
    return io.join(clips_dir, CLIPS_SUBDIR, f"{clip_id}.parquet")


def process_entry(entry: ManifestEntry, cfg: Config, tracker: Any, clips_dir: str, write_json: bool) -> dict:
    """Extract one input unless its output exists; never raises for a bad input."""
    row = {"source": entry.uri, "speaker_id": entry.speaker_id, "clip_id": "", "status": "failed",
           "reason": "", "frames": 0, "face_frames": 0, "duration_s": 0.0, "extract_s": 0.0}
    try:
        check_entry(entry)
        if not io.is_remote(entry.uri):
            from a2bs.data.media import check_readable

            check_readable(entry.uri)
        row["clip_id"] = cid = content_id(entry.uri)
        out = clip_uri(clips_dir, cid)
        if io.exists(out):
            row["status"] = "skipped"
            return row
        with tempfile.TemporaryDirectory(prefix="a2bs-") as tmp:
            local = io.local_copy(entry.uri, tmp)
            clip = extract_clip(local, cfg, tracker, entry.speaker_id, entry.uri, cid)
        if write_json:  # JSON first: the Parquet file is what marks the clip as done
            io.atomic_write_text(io.join(clips_dir, "json", f"{cid}.face.json"), json.dumps(face_json(clip)))
            io.atomic_write_text(io.join(clips_dir, "json", f"{cid}.audio.json"), json.dumps(audio_json(clip)))
        io.write_parquet_atomic(records_to_table([clip_record(clip)]), out)
        row.update(status="ok", frames=int(len(clip.face.frame_index)), face_frames=int(clip.face.has_face.sum()),
                   duration_s=float(clip.audio.duration_s), extract_s=float(clip.extract_s))
    except InputError as exc:
        row["reason"] = exc.reason
    except Exception as exc:  # an unexpected decoder failure must not stop the batch
        row["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return row


class ClipExtractor:
    """Ray Data actor: one FaceLandmarker per actor, reused for every clip it is given."""

    def __init__(self, cfg_dict: dict, clips_dir: str, write_json: bool) -> None:
        from a2bs.data.face import FaceTracker

        self.cfg = config_from_dict(cfg_dict)
        self.clips_dir = clips_dir
        self.write_json = write_json
        self.tracker = FaceTracker(self.cfg.video)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [
            process_entry(ManifestEntry(str(u), str(s), str(r)), self.cfg, self.tracker, self.clips_dir, self.write_json)
            for u, s, r in zip(batch["uri"], batch["speaker_id"], batch["root"])
        ]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


@dataclass
class ExtractSummary:
    """What an extract run did."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    hours: float = 0.0
    frames: int = 0
    wall_s: float = 0.0
    failures: list[dict] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        return (f"extract: {self.ok} ok, {self.failed} failed, {self.skipped} skipped; "
                f"{self.hours * 60:.1f} min of footage, {self.frames} frames in {self.wall_s:.1f} s "
                f"({self.frames_per_s:.1f} frames/s)")


def _actor_count(cfg: RayConfig) -> int:
    import ray

    if cfg.extract_actors:
        return cfg.extract_actors
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.cpus_per_actor, 1e-3)))


def run_extract(inputs: list[str], clips_dir: str, cfg: Config, write_json: bool = False, use_ray: bool = True,
                progress: bool = True) -> ExtractSummary:
    """Extract every input into ``clips_dir``; bad inputs are listed in ``_failures.json``."""
    from a2bs.data.face import load_model_bytes

    t0 = time.perf_counter()
    load_model_bytes(cfg.video)  # a bad model file is a configuration error: say so before any work
    entries, failures = list_inputs(inputs)
    io.makedirs(io.join(clips_dir, CLIPS_SUBDIR))
    save_config(cfg, io.join(clips_dir, "_config.yaml"))
    rows: list[dict] = []
    if entries and use_ray:
        import ray

        init_ray(cfg.ray)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        n_actors = min(_actor_count(cfg.ray), len(entries))
        ds = ray.data.from_items([e.to_dict() for e in entries], override_num_blocks=len(entries))
        ds = ds.map_batches(
            ClipExtractor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            fn_constructor_kwargs={"cfg_dict": config_to_dict(cfg), "clips_dir": clips_dir, "write_json": write_json},
            num_cpus=cfg.ray.cpus_per_actor,
            # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a killed
            # actor is replaced and its clip retried (tests/integration/test_reliability.py).
        )
        rows = ds.take_all()
    elif entries:
        from a2bs.data.face import FaceTracker

        with FaceTracker(cfg.video) as tracker:
            for i, e in enumerate(entries, 1):
                rows.append(process_entry(e, cfg, tracker, clips_dir, write_json))
                if progress:
                    r = rows[-1]
                    print(f"[{i}/{len(entries)}] {r['status']:7s} {e.uri}" + (f": {r['reason']}" if r["reason"] else ""),
                          flush=True)
    summary = ExtractSummary(failures=list(failures))
    summary.failed = len(failures)
    for r in rows:
        if r["status"] == "ok":
            summary.ok += 1
            summary.hours += r["duration_s"] / 3600.0
            summary.frames += r["frames"]
        elif r["status"] == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append({"source": r["source"], "reason": r["reason"]})
    summary.wall_s = time.perf_counter() - t0
    io.atomic_write_text(io.join(clips_dir, FAILURES_NAME), json.dumps(summary.failures, indent=1))
    io.atomic_write_text(io.join(clips_dir, "_summary.json"),
                         json.dumps({**asdict(summary), "clips": rows}, indent=1, default=float))
    return summary


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

    fs, _ = io.filesystem(clips_dir)
    out = []
    for uri in io.list_files(io.join(clips_dir, CLIPS_SUBDIR), suffix=".parquet"):
        _, path = io.filesystem(uri)
        t = pq.read_table(path, filesystem=fs, columns=["clip_id", "speaker_id", "duration_s", "mel_frame_rate"])
        row = t.to_pylist()[0]
        row["uri"] = uri
        out.append(row)
    return out


def run_build(clips_dir: str, shards_dir: str, cfg: Config, use_ray: bool = True) -> BuildSummary:
    """Window every clip into sequence shards with a by-speaker/by-clip split; manifest written last."""
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
    manifest_uri = io.join(shards_dir, MANIFEST_NAME)
    if io.exists(manifest_uri):
        old = json.loads(io.read_text(manifest_uri))
        if old.get("fingerprint") == fingerprint and all(io.exists(io.join(shards_dir, s["name"])) for s in old["shards"]):
            return BuildSummary(len(clips), old["rows"], len(old["shards"]), True, time.perf_counter() - t0)
    plans = plan_shards(clips, cfg.sequence.rows_per_shard)
    if use_ray:
        import ray

        init_ray(cfg.ray)
        cfg_dict = config_to_dict(cfg)
        ds = ray.data.from_items([{"i": i} for i in range(len(plans))], override_num_blocks=max(1, len(plans)))
        stats = ds.map(lambda r: build_shard(plans[r["i"]], shards_dir, config_from_dict(cfg_dict))).take_all()
    else:
        stats = [build_shard(p, shards_dir, cfg) for p in plans]
    stats.sort(key=lambda s: s["name"])
    # Remove shards a previous, larger run left behind, so the folder matches the manifest.
    keep = {s["name"] for s in stats}
    for split in SPLITS:
        for uri in io.list_files(io.join(shards_dir, split), suffix=".parquet"):
            rel = f"{split}/{uri.rsplit('/', 1)[-1]}"
            if rel not in keep:
                io.delete(uri)
    manifest = _manifest(clips, stats, cfg, fingerprint)
    save_config(cfg, io.join(shards_dir, "_config.yaml"))
    io.atomic_write_text(manifest_uri, json.dumps(manifest, indent=1))
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


def summarise_failures(rows: Iterable[dict]) -> list[str]:
    """One line per failure: '<source>: <reason>'."""
    return [f"{r['source']}: {r['reason']}" for r in rows]
