"""The manifest step of an extract run: probe every input, then cut it into (clip, segment) tasks.

Each input is probed once (content id, duration, streams): local files in the driver on a few
threads (ffmpeg's header read and the 8 MiB content hash are I/O), ``s3://`` files on the actor
pool (a probe needs the file, and the driver should not download a corpus). Its duration gives the
segment plan (a2bs.extract.store.plan_segments); segments already on disk are left out, and the
tasks are ordered longest first, so a long take's segments start before short clips and no
straggler is left at the end.
"""

from __future__ import annotations

import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from a2bs.config import Config
from a2bs.errors import InputError
from a2bs.extract.clip import has_video_track
from a2bs.extract.store import plan_segments
from a2bs.runtime import storage
from a2bs.runtime.batch import error_reason, map_items
from a2bs.runtime.inputs import ManifestEntry, check_entry, content_id

PROBE_THREADS = 4


@dataclass(frozen=True)
class ProbedInput:
    """One input after the probe: its clip id and what its plan needs (``reason`` set when it failed)."""

    uri: str
    speaker_id: str
    root: str
    clip_id: str = ""
    duration_s: float | None = None  # container duration (None: unknown)
    has_video: bool = False
    audio_offset_s: float = 0.0  # a2bs.extract.media.MediaInfo.audio_offset_s
    reason: str = ""


def probe_input(entry: ManifestEntry, local_path: str) -> ProbedInput:
    """Probe one input (read from `local_path`); never raises for a bad input."""
    from a2bs.extract.media import check_readable, probe

    try:
        check_entry(entry)
        if not storage.is_remote(entry.uri):
            check_readable(entry.uri)
        cid = content_id(entry.uri)
        info = probe(local_path)
        if not info.has_audio:
            raise InputError(entry.uri, "no audio track (a2bs needs speech to learn from)")
        return ProbedInput(entry.uri, entry.speaker_id, entry.root, cid, info.duration_s,
                           has_video_track(entry.uri, info.has_video), info.audio_offset_s)
    except InputError as exc:
        return ProbedInput(entry.uri, entry.speaker_id, entry.root, reason=exc.reason)
    except Exception as exc:  # an unexpected failure must not stop the batch
        return ProbedInput(entry.uri, entry.speaker_id, entry.root, reason=error_reason(exc))


class RemoteProber:
    """Pool worker that probes ``s3://`` inputs (download, probe, delete)."""

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        entry = ManifestEntry(str(item["uri"]), str(item["speaker_id"]), str(item["root"]))
        try:
            with tempfile.TemporaryDirectory(prefix="a2bs-probe-") as tmp:
                probed = probe_input(entry, storage.local_copy(entry.uri, tmp))
        except Exception as exc:  # the download itself failed
            probed = ProbedInput(entry.uri, entry.speaker_id, entry.root, reason=error_reason(exc))
        row = {**probed.__dict__, "source": entry.uri, "status": "failed" if probed.reason else "ok"}
        row["duration_s"] = math.nan if probed.duration_s is None else probed.duration_s  # one Arrow type
        return row


def probe_inputs(entries: list[ManifestEntry], cfg: Config, use_ray: bool) -> list[ProbedInput]:
    """Probe every entry (local ones on threads here, remote ones on the actor pool), in entry order."""
    local = [e for e in entries if not storage.is_remote(e.uri)]
    remote = [e for e in entries if storage.is_remote(e.uri)]
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        found = {p.uri: p for p in pool.map(lambda e: probe_input(e, e.uri), local)}
    if remote:
        rows = map_items([e.to_dict() for e in remote], RemoteProber, {}, use_ray=use_ray, ray_cfg=cfg.ray,
                         n_actors=cfg.ray.extract_actors, cpus_per_actor=cfg.ray.cpus_per_actor, progress=False)
        for r in rows:
            duration = None if math.isnan(r["duration_s"]) else r["duration_s"]
            found[r["uri"]] = ProbedInput(r["uri"], r["speaker_id"], r["root"], r["clip_id"], duration,
                                          bool(r["has_video"]), float(r["audio_offset_s"]), r["reason"])
    return [found[e.uri] for e in entries]


def segment_tasks(probed: ProbedInput, segment_s: float, done: set[int]) -> list[dict[str, Any]]:
    """The tasks of one clip: its planned segments that are not in `done`."""
    plan = plan_segments(probed.duration_s, segment_s)
    duration = probed.duration_s or math.inf
    return [{"uri": probed.uri, "speaker_id": probed.speaker_id, "root": probed.root, "clip_id": probed.clip_id,
             "segment": s.index, "start_s": s.start_s, "end_s": s.end_s, "n_segments": len(plan),
             "segment_s": segment_s, "has_video": probed.has_video, "audio_offset_s": probed.audio_offset_s,
             "length_s": min(s.end_s, duration) - s.start_s}
            for s in plan if s.index not in done]


def longest_first(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks in the order the pool should take them: longest first (unknown lengths count as long),
    a clip's segments together and in order."""
    return sorted(tasks, key=lambda t: (-t["length_s"], t["clip_id"], t["segment"]))
