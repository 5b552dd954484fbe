"""The extraction graph: inputs -> (clip, segment) tasks -> the columnar clip store.

The manifest step (a2bs.extract.plan) probes each input and cuts it into segments of
``extract.segment_s``; each segment is one task on a Ray Data actor pool (or in this process), taken
longest first. A ``SegmentExtractor`` writes its segment's part atomically under
``CLIPS/clips/<clip_id>/seg-NNNNN.parquet`` (a2bs.extract.store); only small status rows travel back
through the object store, never frames. A bad input or a bad region of one is a failed row with its
reason (and time range), never an exception that stops the batch. When a clip's tasks are done the
driver finishes it (a2bs.extract.finish: relative pose, ``--json``) and lists it in the clips
manifest (``CLIPS/_manifest.json``, :class:`a2bs.manifests.ClipsManifest`), written last: the
earlier manifest's clips plus every clip of this run. A rerun extracts only the segments not on disk.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from a2bs.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    save_config,
)
from a2bs.errors import InputError, ManifestError
from a2bs.extract.finish import finish_pose, write_clip_json
from a2bs.extract.heap import fix_mmap_threshold, release_free_memory
from a2bs.extract.plan import ProbedInput, longest_first, probe_inputs, segment_tasks
from a2bs.extract.store import (
    CLIPS_SUBDIR,
    Segment,
    all_segments_on_disk,
    plan_segments,
    read_segment_meta,
    segment_uri,
    write_pose,
    write_segment,
)
from a2bs.manifests import ClipEntry, ClipsManifest, front_end_differences
from a2bs.runtime import storage
from a2bs.runtime.batch import CONFIG_NAME, error_reason, map_items, write_run_records
from a2bs.runtime.faults import fault_point
from a2bs.runtime.inputs import list_inputs

log = logging.getLogger(__name__)


class SegmentExtractor:
    """One face tracker per worker (a fresh FaceLandmarker for every segment); keeps the last remote
    file it downloaded, so consecutive segments of an ``s3://`` take download it once. Its memory stays
    flat however many segments it runs (a2bs.extract.heap)."""

    def __init__(self, cfg_dict: dict, clips_dir: str) -> None:
        from a2bs.extract.face import FaceTracker

        fix_mmap_threshold()
        self.cfg = config_from_dict(cfg_dict)
        self.clips_dir = clips_dir
        self.tracker = FaceTracker(self.cfg.video)
        self._download: tuple[str, tempfile.TemporaryDirectory, str] | None = None

    def _local(self, uri: str) -> str:
        if not storage.is_remote(uri):
            return uri
        if self._download is None or self._download[0] != uri:
            self._drop_download()
            tmp = tempfile.TemporaryDirectory(prefix="a2bs-")
            self._download = (uri, tmp, storage.local_copy(uri, tmp.name))
        return self._download[2]

    def _drop_download(self) -> None:
        if self._download is not None:
            self._download[1].cleanup()
            self._download = None

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        """Extract and write one segment; never raises for a bad input."""
        from a2bs.extract.clip import extract_segment

        seg = Segment(int(item["segment"]), float(item["start_s"]), float(item["end_s"]))
        row = {"source": item["uri"], "clip_id": item["clip_id"], "segment": seg.index, "start_s": seg.start_s,
               "end_s": seg.end_s, "status": "failed", "reason": "", "frames": 0, "face_frames": 0,
               "footage_s": 0.0, "extract_s": 0.0, "audio_s": 0.0, "meta": ""}
        try:
            feats = extract_segment(self._local(item["uri"]), self.cfg, self.tracker, item["clip_id"], seg,
                                    int(item["n_segments"]), bool(item["has_video"]), float(item["audio_offset_s"]))
            meta = {**feats.meta(), "segment_s": float(item["segment_s"])}
            fault_point("extract.before_write", clip_id=item["clip_id"], segment=seg.index, source=item["uri"])
            if feats.raw is not None:  # first: the part's existence says the segment is complete
                write_pose(self.clips_dir, item["clip_id"], seg.index, feats.raw.rotation, feats.raw.translation_cm,
                           feats.raw.has_face)
            write_segment(self.clips_dir, feats.part, meta)
            row.update(status="ok", frames=meta["frames"], face_frames=meta["face_frames"],
                       footage_s=max(0.0, min(seg.end_s, feats.audio_end_s) - seg.start_s),
                       extract_s=feats.extract_s, audio_s=feats.audio_s, meta=json.dumps(meta))  # a string: one Arrow type
        except InputError as exc:
            row["reason"] = exc.reason
        except Exception as exc:  # an unexpected decoder failure must not stop the batch
            row["reason"] = error_reason(exc)
        finally:
            release_free_memory()
        return row

    def close(self) -> None:
        self.tracker.close()
        self._drop_download()


@dataclass
class ExtractSummary:
    """What an extract run did (clip counts; ``segments`` = segments extracted by this run)."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    segments: int = 0
    hours: float = 0.0
    frames: int = 0
    wall_s: float = 0.0
    failures: list[dict] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        return (f"extract: {self.ok} ok, {self.failed} failed, {self.skipped} skipped; {self.segments} segments, "
                f"{self.hours * 60:.1f} min of footage, {self.frames} frames in {self.wall_s:.1f} s "
                f"({self.frames_per_s:.1f} frames/s)")


class Progress:
    """Status text of a running extract, updated with each new row only (O(1) per row)."""

    def __init__(self, failed_before: int = 0) -> None:
        self.seen = self.frames = self.failed = 0
        self.failed_before = failed_before
        self.footage_s = 0.0

    def __call__(self, rows: list[dict], elapsed_s: float) -> str:
        for r in rows[self.seen:]:
            if r["status"] == "ok":
                self.frames += r["frames"]
                self.footage_s += r["footage_s"]
            else:
                self.failed += 1
        self.seen = len(rows)
        minutes = self.footage_s / 60.0
        footage = f"{minutes / 60.0:.1f} h" if minutes >= 90 else f"{minutes:.1f} min"
        text = f"{self.frames / max(elapsed_s, 1e-9):.0f} frames/s, {footage} of footage"
        failed = self.failed_before + self.failed
        return text + (f", {failed} failed" if failed else "")


def _earlier_clips(clips_dir: str, cfg: Config) -> dict[str, ClipEntry]:
    """The clips already listed in `clips_dir`, which must have the audio front end of `cfg`.

    Raises:
        ConfigError: another audio front end, or a clips folder of the layout before the clip store.
    """
    try:
        earlier = ClipsManifest.load(clips_dir)
    except ManifestError as exc:
        if storage.exists(storage.join(clips_dir, "_manifest.json")):
            raise ConfigError(f"{exc}; extract into a new --out") from None
        return {}  # a fresh folder, or a run interrupted before its manifest: parts on disk are reused
    differ = front_end_differences(earlier.audio, cfg.audio)
    if differ:
        raise ConfigError(f"{clips_dir}: its clips were extracted with another audio front end "
                          f"(audio.{'; audio.'.join(differ)} in this run; use another --out)")
    return dict(earlier.clips)


def _check_plan(clips_dir: str, probed: ProbedInput, on_disk: list[int], segment_s: float) -> None:
    """Parts left by an interrupted run must follow this run's plan (else ConfigError)."""
    was = read_segment_meta(segment_uri(clips_dir, probed.clip_id, on_disk[0])).get("segment_s", -1.0)
    if plan_segments(probed.duration_s, was) != plan_segments(probed.duration_s, segment_s):
        raise ConfigError(f"{clips_dir}: clip {probed.clip_id} has parts cut with extract.segment_s={was} "
                          f"(this run: {segment_s}); rerun with that value or use another --out")


def _failure(probed: ProbedInput, row: dict[str, Any]) -> dict[str, Any]:
    end_s = row["end_s"] if math.isfinite(row["end_s"]) else probed.duration_s
    return {"source": probed.uri, "reason": row["reason"], "clip_id": probed.clip_id, "segment": row["segment"],
            "start_s": row["start_s"], "end_s": end_s}


def run_extract(inputs: list[str], clips_dir: str, cfg: Config, write_json: bool = False, use_ray: bool = True,
                progress: bool = True) -> ExtractSummary:
    """Extract every input into ``clips_dir``; bad inputs and regions are listed in ``_failures.json``.

    Raises:
        ConfigError: the face model is unusable, or ``clips_dir`` holds clips of another audio front end,
            of an older layout, or parts cut with another ``extract.segment_s``.
    """
    from a2bs.extract.face import load_model_bytes

    t0 = time.perf_counter()
    load_model_bytes(cfg.video)  # a bad model file is a configuration error: say so before any work
    clips = _earlier_clips(clips_dir, cfg)
    on_disk, old_files = all_segments_on_disk(clips_dir)
    if old_files:
        raise ConfigError(f"{clips_dir}: holds clip files of the layout before the clip store ({old_files[0]}); "
                          "extract into a new --out")
    entries, failures = list_inputs(inputs)
    storage.makedirs(storage.join(clips_dir, CLIPS_SUBDIR))
    save_config(cfg, storage.join(clips_dir, CONFIG_NAME))

    summary = ExtractSummary(failures=list(failures), failed=len(failures))
    clip_rows: dict[str, dict[str, Any]] = {}  # source -> its row in _summary.json
    owners: dict[str, ProbedInput] = {}  # clip_id -> the input extracted for it (the first of identical files)
    tasks: list[dict[str, Any]] = []
    for probed in probe_inputs(entries, cfg, use_ray):
        row = {"source": probed.uri, "speaker_id": probed.speaker_id, "clip_id": probed.clip_id, "status": "ok",
               "reason": probed.reason, "frames": 0, "face_frames": 0, "segments": []}
        clip_rows[probed.uri] = row
        if probed.reason:
            row["status"] = "failed"
            log.error(f"failed: {probed.uri}: {probed.reason}")
            continue
        cid = probed.clip_id
        known = clips.get(cid)
        if cid in owners or (known and set(range(known.n_segments)) <= set(on_disk.get(cid, []))):
            row["status"] = "skipped"  # done earlier, or the same content under another name in this run
            if cid not in owners and known:
                clips[cid] = replace(known, source_uri=probed.uri)  # this run saw it here
            continue
        owners[cid] = probed
        segment_s = known.segment_s if known else cfg.extract.segment_s
        if not known and on_disk.get(cid):
            _check_plan(clips_dir, probed, on_disk[cid], segment_s)
        tasks += segment_tasks(probed, segment_s, set(on_disk.get(cid, [])))

    probe_failed = sum(r["status"] == "failed" for r in clip_rows.values())
    seg_rows = map_items(longest_first(tasks), SegmentExtractor,
                         {"cfg_dict": config_to_dict(cfg), "clips_dir": clips_dir},
                         use_ray=use_ray, ray_cfg=cfg.ray, n_actors=cfg.ray.extract_actors,
                         cpus_per_actor=cfg.ray.cpus_per_actor, progress=progress, label="extract",
                         unit="segments", describe=Progress(summary.failed + probe_failed))
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for r in seg_rows:
        by_clip.setdefault(r["clip_id"], []).append(r)
        if r["status"] == "ok":
            summary.segments += 1
            summary.frames += r["frames"]
            summary.hours += r["footage_s"] / 3600.0
    for cid, probed in owners.items():
        rows = sorted(by_clip.get(cid, []), key=lambda r: r["segment"])
        entry = _finish_clip(clips_dir, cfg, probed, clips.get(cid), rows, on_disk.get(cid, []), write_json)
        row = clip_rows[probed.uri]
        bad = [r for r in rows if r["status"] == "failed"]
        row.update(status="failed" if bad else ("ok" if rows else "skipped"),
                   reason="; ".join(dict.fromkeys(r["reason"] for r in bad)))
        summary.failures += [_failure(probed, r) for r in bad]
        if entry is not None:
            clips[cid] = entry
            row.update(frames=entry.frames, face_frames=entry.face_frames, segments=list(entry.segments))
    for row in clip_rows.values():
        if row["status"] == "failed" and not any(f["source"] == row["source"] for f in summary.failures):
            summary.failures.append({"source": row["source"], "reason": row["reason"]})
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
    summary.wall_s = time.perf_counter() - t0
    records = {**asdict(summary), "clips": sorted(clip_rows.values(), key=lambda r: r["source"]),
               "segments": [{**{k: v for k, v in r.items() if k != "meta"},
                             "end_s": r["end_s"] if math.isfinite(r["end_s"]) else None} for r in seg_rows]}
    write_run_records(clips_dir, summary.failures, records)
    ClipsManifest(cfg.audio, clips).write(clips_dir)
    return summary


def _finish_clip(clips_dir: str, cfg: Config, probed: ProbedInput, known: ClipEntry | None, rows: list[dict],
                 before: list[int], write_json: bool) -> ClipEntry | None:
    """The clip's manifest entry once this run's segments are done (None when no part of it exists).

    Its parts are finished (relative pose, JSON) whenever this run wrote one of them; parts left by
    earlier runs are indexed from their footers.
    """
    metas = {i: read_segment_meta(segment_uri(clips_dir, probed.clip_id, i)) for i in before}
    metas |= {r["segment"]: json.loads(r["meta"]) for r in rows if r["status"] == "ok"}
    if not metas:
        return None
    present = sorted(metas)
    n_segments = known.n_segments if known else len(segment_tasks(probed, cfg.extract.segment_s, set()))
    segment_s = known.segment_s if known else cfg.extract.segment_s
    if n_segments > 1 and (rows or not known):
        finish_pose(clips_dir, probed.clip_id, present)
    first = metas[present[0]]
    fps, interval = first["original_fps"], first["frame_interval"]
    mel_rate = cfg.audio.sample_rate / cfg.audio.hop_length
    if write_json:
        write_clip_json(clips_dir, probed.clip_id, present, fps, interval, cfg.audio.sample_rate, mel_rate)
    last = metas.get(n_segments - 1)
    duration = last["audio_end_s"] if last else (probed.duration_s or 0.0)
    return ClipEntry(probed.uri, probed.speaker_id, duration, fps, fps / interval if fps else 0.0, mel_rate,
                     sum(m["frames"] for m in metas.values()), sum(m["face_frames"] for m in metas.values()),
                     interval, segment_s, n_segments, tuple(present))
