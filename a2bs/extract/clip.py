"""One segment of a clip -> its features: face track at the FPS-limited rate + 100 Hz audio features.

A segment is the unit of work the Ray Data pipeline maps over (a2bs.extract.store.plan_segments: a
short clip is one segment, a long take many). It decodes only its own time range: video from
``extract.warmup_s`` before its start (tracked with a fresh landmarker and discarded, so tracking
has settled by the first frame kept) and audio with ``extract.audio_margin_s`` on each side, so its
frames equal those of a whole-file pass (docs/scaling.md gives the measured differences). Plain
Python: it also runs without Ray.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from a2bs.config import Config
from a2bs.errors import InputError
from a2bs.extract.audio import range_audio_features
from a2bs.extract.face import FaceTracker, RawTrack, relative_pose
from a2bs.extract.store import BORDER_EPS_S, Segment, SegmentPart, in_segment
from a2bs.extract.video import iter_frames
from a2bs.runtime.inputs import AUDIO_SUFFIXES
from a2bs.schema import ARKIT_BLENDSHAPES, N_BLENDSHAPES, POSE_REST

# A segment before the last must decode to its end: stopping earlier than this means the file is
# damaged there (a truncated tail, a corrupt GOP), and the segment fails rather than keep a hole.
# The last segment keeps what decodes, as a whole-file pass does.
TRUNCATION_SLACK_S = 0.5


@dataclass
class SegmentFeatures:
    """What one segment of a clip gives."""

    part: SegmentPart  # pose relative to the clip's rest pose, or POSE_REST until the clip is finished
    raw: RawTrack | None  # the absolute pose, for clips of more than one segment (None: already relative)
    original_fps: float
    frame_interval: int
    audio_end_s: float  # where the decoded audio stops (the clip's audio duration for the last segment)
    extract_s: float  # all of it
    audio_s: float  # of which audio decoding and features

    def meta(self) -> dict[str, Any]:
        """The facts kept in the part's footer (a2bs.extract.store.write_segment)."""
        return {"original_fps": self.original_fps, "frame_interval": self.frame_interval,
                "audio_end_s": self.audio_end_s, "frames": len(self.part.frame_index),
                "face_frames": int(self.part.has_face.sum())}


def has_video_track(path: str | os.PathLike, info_has_video: bool) -> bool:
    """Whether a file's video is tracked: audio files with cover art are audio-only."""
    return info_has_video and Path(path).suffix.lower() not in AUDIO_SUFFIXES


def _empty_raw() -> RawTrack:
    return RawTrack(np.zeros(0, np.int32), np.zeros(0), np.zeros((0, N_BLENDSHAPES), np.float32),
                    np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0, bool))


def _range_text(seg: Segment) -> str:
    return f"{seg.start_s:g}-{seg.end_s:g} s" if np.isfinite(seg.end_s) else f"{seg.start_s:g} s to the end"


def extract_segment(path: str | os.PathLike, cfg: Config, tracker: FaceTracker | None, clip_id: str, seg: Segment,
                    n_segments: int, has_video: bool, audio_offset_s: float = 0.0) -> SegmentFeatures:
    """Extract one segment of a local file.

    Args:
        seg: the time range (frames with ``seg.start_s <= time < seg.end_s``).
        n_segments: segments in the clip's plan; with one, the pose is made relative here.
        has_video: track the video (see :func:`has_video_track`); a FaceTracker is then required.
        audio_offset_s: where the audio stream starts after the container's start (probed).

    Raises:
        InputError: with a one-line reason naming the range when it cannot be used.
    """
    t0 = time.perf_counter()
    last = not np.isfinite(seg.end_s)
    audio, audio_end_s = range_audio_features(path, cfg.audio, seg.start_s, seg.end_s, cfg.extract.audio_margin_s,
                                              audio_offset_s)
    if not last and audio_end_s < seg.end_s - TRUNCATION_SLACK_S:
        raise InputError(path, f"audio stops at {audio_end_s:.1f} s in segment {_range_text(seg)} "
                               "(truncated or damaged file)")
    audio_s = time.perf_counter() - t0
    raw, original_fps, interval = _empty_raw(), 0.0, 1
    if has_video:
        if tracker is None:
            raise ValueError("a FaceTracker is needed for video inputs")
        # Warm-up: track from before the start (not for the first segment), keep only the segment's frames.
        warm_s = max(0.0, seg.start_s - cfg.extract.warmup_s - 2 * BORDER_EPS_S) if seg.start_s > 0 else 0.0
        stream, frames = iter_frames(path, cfg.video.fps_limit, cfg.video.max_frame_side, warm_s, seg.end_s)
        tracked = tracker.track_raw(frames)
        raw = tracked.select(in_segment(tracked.time_s, seg))
        if raw.frame_index.size == 0:
            raise InputError(path, "video stream has no decodable frames" if seg.start_s <= 0 else
                             f"no decodable video frames in segment {_range_text(seg)} (truncated or damaged file)")
        step_s = stream.frame_interval / stream.original_fps
        if not last and raw.time_s[-1] < seg.end_s - step_s - TRUNCATION_SLACK_S:
            raise InputError(path, f"video stops at {raw.time_s[-1]:.1f} s in segment {_range_text(seg)} "
                                   "(truncated or damaged file)")
        original_fps, interval = stream.original_fps, stream.frame_interval
    if n_segments == 1:
        pose, keep_raw = relative_pose(raw.rotation, raw.translation_cm, raw.has_face), None
    else:  # the rest pose needs the whole clip: a2bs.extract.finish makes it relative
        pose, keep_raw = np.tile(np.asarray(POSE_REST, np.float32), (len(raw.has_face), 1)), raw
    part = SegmentPart(
        clip_id, seg.index, seg.start_s, seg.end_s,
        frame_index=raw.frame_index, frame_time_s=raw.time_s,
        targets=np.concatenate([raw.blendshapes, pose], axis=1).astype(np.float32), has_face=raw.has_face,
        audio_time_s=audio.time_s, mel_db=audio.mel_db, rms=audio.rms, zcr=audio.zcr, vad=audio.vad,
    )
    return SegmentFeatures(part, keep_raw, original_fps, interval, audio_end_s, time.perf_counter() - t0, audio_s)


def face_json(part: SegmentPart, original_fps: float, frame_interval: int, session_id: str) -> dict[str, Any]:
    """The seed's face data structure (sessionInfo, frameCount, frames[]) of a whole clip's features."""
    frames = []
    for k in range(len(part.frame_index)):
        shapes, pose = part.targets[k, :N_BLENDSHAPES], part.targets[k, N_BLENDSHAPES:]
        frames.append(
            {
                "frame_index": int(part.frame_index[k]),
                "timestamp": float(part.frame_time_s[k]),
                "sessionId": session_id,
                "blendshapes": {n: float(v) for n, v in zip(ARKIT_BLENDSHAPES, shapes)},
                "headPosition": {"x": float(pose[0]), "y": float(pose[1]), "z": float(pose[2])},
                "headRotation": {"w": float(pose[3]), "x": float(pose[4]), "y": float(pose[5]), "z": float(pose[6])},
                "has_face": bool(part.has_face[k]),
            }
        )
    return {
        "sessionInfo": {
            "sessionId": session_id,
            "targetFPS": original_fps / frame_interval if original_fps else 0.0,
            "originalFPS": original_fps,
            "frameInterval": frame_interval,
        },
        "frameCount": len(frames),
        "frames": frames,
    }


def audio_json(part: SegmentPart, sample_rate: int, mel_frame_rate: float) -> dict[str, Any]:
    """The seed's audio data structure (sample_rate, mel_frame_rate, timestamps, mel_features ...)."""
    return {
        "sample_rate": sample_rate,
        "mel_frame_rate": mel_frame_rate,
        "n_frames": int(part.mel_db.shape[0]),
        "timestamps": [round(float(t), 6) for t in part.audio_time_s],
        "mel_features": np.round(part.mel_db, 4).tolist(),
        "voice_activity": np.round(part.vad, 4).tolist(),
        "zero_crossing_rate": np.round(part.zcr, 5).tolist(),
        "rms_energy": np.round(part.rms, 6).tolist(),
    }
