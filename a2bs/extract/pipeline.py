"""The extraction graph: inputs -> clip features, on a Ray Data actor pool (or in this process).

Each ``ClipExtractor`` writes one Parquet file per clip atomically under ``CLIPS/clips/<clip_id>.parquet``;
only small status rows travel back through the object store, never frames. A bad input is a failed
row with its reason, never an exception that stops the batch. The clips manifest
(``CLIPS/_manifest.json``, :class:`a2bs.manifests.ClipsManifest`) is written last: the earlier
manifest's clips plus every clip of this run, so reruns keep earlier clips and never duplicate one.
"""

from __future__ import annotations

import json
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
from a2bs.extract.clip import (
    audio_json,
    clip_record,
    extract_clip,
    face_json,
    records_to_table,
)
from a2bs.manifests import ClipEntry, ClipsManifest, front_end_differences
from a2bs.runtime import storage
from a2bs.runtime.batch import CONFIG_NAME, error_reason, map_items, write_run_records
from a2bs.runtime.faults import fault_point
from a2bs.runtime.inputs import ManifestEntry, check_entry, content_id, list_inputs

CLIPS_SUBDIR = "clips"


def clip_uri(clips_dir: str, clip_id: str) -> str:
    """Where the features of clip `clip_id` live under a clips folder."""
    return storage.join(clips_dir, CLIPS_SUBDIR, f"{clip_id}.parquet")


def process_entry(entry: ManifestEntry, cfg: Config, tracker: Any, clips_dir: str, write_json: bool) -> dict:
    """Extract one input unless its output exists; never raises for a bad input."""
    row = {"source": entry.uri, "speaker_id": entry.speaker_id, "clip_id": "", "status": "failed",
           "reason": "", "frames": 0, "face_frames": 0, "duration_s": 0.0, "video_fps": 0.0, "face_fps": 0.0,
           "mel_frame_rate": 0.0, "extract_s": 0.0}
    try:
        check_entry(entry)
        if not storage.is_remote(entry.uri):
            from a2bs.extract.media import check_readable

            check_readable(entry.uri)
        row["clip_id"] = cid = content_id(entry.uri)
        out = clip_uri(clips_dir, cid)
        if storage.exists(out):
            row["status"] = "skipped"
            return row
        with tempfile.TemporaryDirectory(prefix="a2bs-") as tmp:
            local = storage.local_copy(entry.uri, tmp)
            clip = extract_clip(local, cfg, tracker, entry.speaker_id, entry.uri, cid)
        fault_point("extract.before_write", clip_id=cid, source=entry.uri)
        if write_json:  # JSON first: the Parquet file is what marks the clip as done
            storage.atomic_write_text(storage.join(clips_dir, "json", f"{cid}.face.json"), json.dumps(face_json(clip)))
            storage.atomic_write_text(storage.join(clips_dir, "json", f"{cid}.audio.json"), json.dumps(audio_json(clip)))
        storage.write_parquet_atomic(records_to_table([clip_record(clip)]), out)
        row.update(status="ok", frames=int(len(clip.face.frame_index)), face_frames=int(clip.face.has_face.sum()),
                   duration_s=float(clip.audio.duration_s), video_fps=float(clip.original_fps),
                   face_fps=float(clip.target_fps), mel_frame_rate=float(clip.audio.frame_rate_hz),
                   extract_s=float(clip.extract_s))
    except InputError as exc:
        row["reason"] = exc.reason
    except Exception as exc:  # an unexpected decoder failure must not stop the batch
        row["reason"] = error_reason(exc)
    return row


class ClipExtractor:
    """One face tracker per worker (it starts a fresh FaceLandmarker for every clip)."""

    def __init__(self, cfg_dict: dict, clips_dir: str, write_json: bool) -> None:
        from a2bs.extract.face import FaceTracker

        self.cfg = config_from_dict(cfg_dict)
        self.clips_dir = clips_dir
        self.write_json = write_json
        self.tracker = FaceTracker(self.cfg.video)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        entry = ManifestEntry(str(item["uri"]), str(item["speaker_id"]), str(item["root"]))
        return process_entry(entry, self.cfg, self.tracker, self.clips_dir, self.write_json)

    def close(self) -> None:
        self.tracker.close()


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


_CLIP_FILE_COLUMNS = ["source_uri", "speaker_id", "duration_s", "original_fps", "target_fps", "sample_rate",
                      "n_mels", "mel_frame_rate", "has_face"]


def _entry_from_clip_file(uri: str, source_uri: str = "") -> tuple[ClipEntry, dict[str, Any]]:
    """A manifest entry read back from a clip's features (for clips a manifest does not list yet),
    and the record's scalar columns."""
    row = storage.read_parquet(uri, columns=_CLIP_FILE_COLUMNS).to_pylist()[0]
    entry = ClipEntry(source_uri or row["source_uri"], row["speaker_id"], row["duration_s"], row["original_fps"],
                      row["target_fps"], row["mel_frame_rate"], len(row["has_face"]), int(sum(row["has_face"])))
    return entry, row


def _earlier_clips(clips_dir: str, cfg: Config) -> dict[str, ClipEntry]:
    """The clips already in `clips_dir`, which must have the audio front end of `cfg` (else ConfigError).

    Read from its manifest; a folder without a usable one (a fresh folder, or a2bs < 0.2) is indexed
    from its clip files, whose sample rate, mel bands and frame rate must match.
    """
    try:
        earlier = ClipsManifest.load(clips_dir)
    except ManifestError:
        clips = {}
        want = (cfg.audio.sample_rate, cfg.audio.n_mels, cfg.audio.sample_rate / cfg.audio.hop_length)
        for uri in storage.list_files(storage.join(clips_dir, CLIPS_SUBDIR), suffix=".parquet"):
            entry, row = _entry_from_clip_file(uri)
            got = (row["sample_rate"], row["n_mels"], row["mel_frame_rate"])
            if got != want:
                raise ConfigError(f"{clips_dir}: holds clips of another audio front end ({got[0]} Hz, {got[1]} mel "
                                  f"bands at {got[2]:g} frames/s; this run: {want[0]} Hz, {want[1]} at {want[2]:g}; "
                                  "use another --out)")
            clips[uri.rsplit("/", 1)[-1].removesuffix(".parquet")] = entry
        return clips
    differ = front_end_differences(earlier.audio, cfg.audio)
    if differ:
        raise ConfigError(f"{clips_dir}: its clips were extracted with another audio front end "
                          f"(audio.{'; audio.'.join(differ)} in this run; use another --out)")
    return dict(earlier.clips)


def progress_text(rows: list[dict], elapsed_s: float, failed_before: int = 0) -> str:
    """Status of a running extract: frames/s, footage done, skipped and failed clips so far."""
    ok = [r for r in rows if r["status"] == "ok"]
    frames = sum(r["frames"] for r in ok)
    minutes = sum(r["duration_s"] for r in ok) / 60.0
    skipped = sum(r["status"] == "skipped" for r in rows)
    failed = failed_before + sum(r["status"] == "failed" for r in rows)
    footage = f"{minutes / 60.0:.1f} h" if minutes >= 90 else f"{minutes:.1f} min"
    text = f"{frames / max(elapsed_s, 1e-9):.0f} frames/s, {footage} of footage"
    return text + (f", {skipped} skipped" if skipped else "") + (f", {failed} failed" if failed else "")


def run_extract(inputs: list[str], clips_dir: str, cfg: Config, write_json: bool = False, use_ray: bool = True,
                progress: bool = True) -> ExtractSummary:
    """Extract every input into ``clips_dir``; bad inputs are listed in ``_failures.json``.

    Raises:
        ConfigError: the face model is unusable, or ``clips_dir`` holds clips of another audio front end.
    """
    from a2bs.extract.face import load_model_bytes

    t0 = time.perf_counter()
    load_model_bytes(cfg.video)  # a bad model file is a configuration error: say so before any work
    clips = _earlier_clips(clips_dir, cfg)
    entries, failures = list_inputs(inputs)
    storage.makedirs(storage.join(clips_dir, CLIPS_SUBDIR))
    save_config(cfg, storage.join(clips_dir, CONFIG_NAME))
    rows = map_items([e.to_dict() for e in entries], ClipExtractor,
                     {"cfg_dict": config_to_dict(cfg), "clips_dir": clips_dir, "write_json": write_json},
                     use_ray=use_ray, ray_cfg=cfg.ray, n_actors=cfg.ray.extract_actors,
                     cpus_per_actor=cfg.ray.cpus_per_actor, progress=progress, label="extract", unit="clips",
                     describe=lambda done, elapsed_s: progress_text(done, elapsed_s, len(failures)))
    summary = ExtractSummary(failures=list(failures), failed=len(failures))
    for r in rows:
        if r["status"] == "ok":
            summary.ok += 1
            summary.hours += r["duration_s"] / 3600.0
            summary.frames += r["frames"]
            clips[r["clip_id"]] = ClipEntry(r["source"], r["speaker_id"], r["duration_s"], r["video_fps"],
                                            r["face_fps"], r["mel_frame_rate"], r["frames"], r["face_frames"])
        elif r["status"] == "skipped":
            summary.skipped += 1
            # This run saw the clip at `source`; the rest is what its features record.
            known = clips.get(r["clip_id"]) or _entry_from_clip_file(clip_uri(clips_dir, r["clip_id"]))[0]
            clips[r["clip_id"]] = replace(known, source_uri=r["source"])
        else:
            summary.failed += 1
            summary.failures.append({"source": r["source"], "reason": r["reason"]})
    summary.wall_s = time.perf_counter() - t0
    write_run_records(clips_dir, summary.failures, {**asdict(summary), "clips": rows})
    ClipsManifest(cfg.audio, clips).write(clips_dir)
    return summary
