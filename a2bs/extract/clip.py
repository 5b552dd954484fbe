"""One clip -> its feature record: face track at the FPS-limited rate + 100 Hz audio features.

This is the unit of work the Ray Data pipeline maps over; it is plain Python so it also runs
without Ray (``a2bs extract`` on a few local files, tests, notebooks).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from a2bs.config import Config
from a2bs.errors import InputError
from a2bs.extract.audio import AudioFeatures, extract_audio_features
from a2bs.extract.face import FaceTrack, FaceTracker
from a2bs.extract.media import probe
from a2bs.extract.video import iter_frames
from a2bs.runtime.inputs import AUDIO_SUFFIXES, content_id
from a2bs.schema import (
    ARKIT_BLENDSHAPES,
    CLIP_SCHEMA,
    N_BLENDSHAPES,
    N_TARGETS,
    POSE_NAMES,
    SCHEMA_VERSION,
)


@dataclass
class ClipFeatures:
    """Everything extracted from one input file."""

    clip_id: str
    speaker_id: str
    source_uri: str
    original_fps: float
    frame_interval: int
    target_fps: float
    face: FaceTrack
    audio: AudioFeatures
    extract_s: float = 0.0

    @property
    def targets(self) -> np.ndarray:
        """(F, 59): 52 blendshapes then 7 pose values."""
        return np.concatenate([self.face.blendshapes, self.face.pose], axis=1).astype(np.float32)


def empty_track() -> FaceTrack:
    """The face track of an audio-only input: no frames."""
    return FaceTrack(
        frame_index=np.zeros(0, np.int32),
        time_s=np.zeros(0, np.float64),
        blendshapes=np.zeros((0, N_BLENDSHAPES), np.float32),
        pose=np.zeros((0, len(POSE_NAMES)), np.float32),
        has_face=np.zeros(0, bool),
    )


def extract_clip(
    path: str | os.PathLike,
    cfg: Config,
    tracker: FaceTracker | None,
    speaker_id: str = "",
    source_uri: str = "",
    clip_id: str = "",
) -> ClipFeatures:
    """Extract the face track (if the file has video) and audio features of one file.

    Args:
        path: local file to read.
        cfg: resolved config (``video`` and ``audio`` sections are used).
        tracker: a reusable FaceTracker; required for video inputs.
        speaker_id: speaker label (default: the parent folder name).
        source_uri: where the file came from (default: `path`).
        clip_id: content id if already computed.

    Raises:
        InputError: with a one-line reason when the file cannot be used.
    """
    t0 = time.perf_counter()
    info = probe(path)
    if not info.has_audio:
        raise InputError(path, "no audio track (a2bs needs speech to learn from)")
    audio = extract_audio_features(path, cfg.audio)
    if info.has_video and Path(path).suffix.lower() not in AUDIO_SUFFIXES:
        if tracker is None:
            raise ValueError("a FaceTracker is needed for video inputs")
        stream, frames = iter_frames(path, cfg.video.fps_limit, cfg.video.max_frame_side)
        track = tracker.track(frames)
        if track.frame_index.size == 0:
            raise InputError(path, "video stream has no decodable frames")
        original_fps, interval = stream.original_fps, stream.frame_interval
    else:
        track, original_fps, interval = empty_track(), 0.0, 1
    return ClipFeatures(
        clip_id=clip_id or content_id(path),
        speaker_id=speaker_id or Path(path).parent.name,
        source_uri=source_uri or str(path),
        original_fps=original_fps,
        frame_interval=interval,
        target_fps=original_fps / interval if original_fps else 0.0,
        face=track,
        audio=audio,
        extract_s=time.perf_counter() - t0,
    )


def clip_record(clip: ClipFeatures) -> dict[str, Any]:
    """One row of ``CLIP_SCHEMA`` (numpy arrays flattened for Arrow list columns)."""
    a = clip.audio
    return {
        "clip_id": clip.clip_id,
        "speaker_id": clip.speaker_id,
        "source_uri": clip.source_uri,
        "duration_s": float(a.duration_s),
        "original_fps": float(clip.original_fps),
        "frame_interval": int(clip.frame_interval),
        "target_fps": float(clip.target_fps),
        "frame_index": clip.face.frame_index.astype(np.int32),
        "frame_time_s": clip.face.time_s.astype(np.float64),
        "targets": clip.targets.reshape(-1),
        "has_face": clip.face.has_face.astype(bool),
        "sample_rate": int(a.sample_rate),
        "mel_frame_rate": float(a.frame_rate_hz),
        "audio_time_s": a.time_s,
        "mel_db": a.mel_db.reshape(-1),
        "n_mels": int(a.mel_db.shape[1]),
        "rms": a.rms,
        "zcr": a.zcr,
        "vad": a.vad,
        "schema_version": SCHEMA_VERSION,
    }


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Arrow table of clip records in ``CLIP_SCHEMA``."""
    columns = {name: [r[name] for r in records] for name in CLIP_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=CLIP_SCHEMA)


def record_arrays(row: dict[str, Any]) -> dict[str, np.ndarray]:
    """Reshape a clip record's flat lists back into arrays: targets (F, 59), mel_db (A, n_mels)."""
    n_mels = int(row["n_mels"])
    return {
        "frame_time_s": np.asarray(row["frame_time_s"], dtype=np.float64),
        "targets": np.asarray(row["targets"], dtype=np.float32).reshape(-1, N_TARGETS),
        "has_face": np.asarray(row["has_face"], dtype=bool),
        "audio_time_s": np.asarray(row["audio_time_s"], dtype=np.float64),
        "mel_db": np.asarray(row["mel_db"], dtype=np.float32).reshape(-1, n_mels),
        "vad": np.asarray(row["vad"], dtype=np.float32),
        "rms": np.asarray(row["rms"], dtype=np.float32),
        "zcr": np.asarray(row["zcr"], dtype=np.float32),
    }


def face_json(clip: ClipFeatures, session_id: str | None = None) -> dict[str, Any]:
    """The seed's face data structure (sessionInfo, frameCount, frames[])."""
    sid = session_id or f"session_{clip.clip_id}_extract"
    frames = []
    for k in range(len(clip.face.frame_index)):
        pose = clip.face.pose[k]
        frames.append(
            {
                "frame_index": int(clip.face.frame_index[k]),
                "timestamp": float(clip.face.time_s[k]),
                "sessionId": sid,
                "blendshapes": {n: float(v) for n, v in zip(ARKIT_BLENDSHAPES, clip.face.blendshapes[k])},
                "headPosition": {"x": float(pose[0]), "y": float(pose[1]), "z": float(pose[2])},
                "headRotation": {"w": float(pose[3]), "x": float(pose[4]), "y": float(pose[5]), "z": float(pose[6])},
                "has_face": bool(clip.face.has_face[k]),
            }
        )
    return {
        "sessionInfo": {
            "sessionId": sid,
            "targetFPS": clip.target_fps,
            "originalFPS": clip.original_fps,
            "frameInterval": clip.frame_interval,
        },
        "frameCount": len(frames),
        "frames": frames,
    }


def audio_json(clip: ClipFeatures) -> dict[str, Any]:
    """The seed's audio data structure (sample_rate, mel_frame_rate, timestamps, mel_features ...)."""
    a = clip.audio
    return {
        "sample_rate": a.sample_rate,
        "mel_frame_rate": a.frame_rate_hz,
        "n_frames": int(a.mel_db.shape[0]),
        "timestamps": [round(float(t), 6) for t in a.time_s],
        "mel_features": np.round(a.mel_db, 4).tolist(),
        "voice_activity": np.round(a.vad, 4).tolist(),
        "zero_crossing_rate": np.round(a.zcr, 5).tolist(),
        "rms_energy": np.round(a.rms, 6).tolist(),
    }
