"""Finishing a clip once its segments are on disk: the relative head pose, and the seed's JSON.

The pose of a frame is relative to the clip's rest pose (median position, mean rotation of every
face frame: a2bs.extract.face.relative_pose), which no single segment knows. A clip of more than one
segment therefore stores the absolute pose of each segment beside its part (store.write_pose), and
the driver rewrites the parts' pose columns here, part by part (memory: one part plus 104 bytes per
frame of the clip). Finishing is idempotent: a rerun that adds a missing segment finishes the clip
again from the stored absolute poses, with the same result as if every segment had come at once.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from a2bs.extract.clip import audio_json, face_json
from a2bs.extract.face import relative_pose
from a2bs.extract.store import (
    concat_parts,
    iter_segments,
    read_pose,
    read_segment,
    read_segment_meta,
    segment_uri,
    write_segment,
)
from a2bs.runtime import storage
from a2bs.schema import N_BLENDSHAPES


def finish_pose(clips_dir: str, clip_id: str, segments: list[int]) -> None:
    """Make the pose of the clip's parts `segments` relative to the rest pose of all of them."""
    poses = [read_pose(clips_dir, clip_id, i) for i in segments]
    pose = relative_pose(*(np.concatenate([p[k] for p in poses]) for k in range(3)))
    start = 0
    for index in segments:
        uri = segment_uri(clips_dir, clip_id, index)
        part, meta = read_segment(uri), read_segment_meta(uri)
        n = len(part.frame_index)
        targets = np.array(part.targets)  # the part's arrays are read-only views
        targets[:, N_BLENDSHAPES:] = pose[start:start + n]
        write_segment(clips_dir, replace(part, targets=targets), meta)
        start += n
    if start != len(pose):
        raise RuntimeError(f"clip {clip_id}: stored poses ({len(pose)} frames) do not match its parts ({start})")


def write_clip_json(clips_dir: str, clip_id: str, segments: list[int], original_fps: float, frame_interval: int,
                    sample_rate: int, mel_frame_rate: float) -> None:
    """The seed's face and audio JSON of the whole clip (``CLIPS/json/<clip_id>.{face,audio}.json``)."""
    whole = concat_parts(list(iter_segments(clips_dir, clip_id, segments)))
    face = face_json(whole, original_fps, frame_interval, f"session_{clip_id}_extract")
    storage.atomic_write_text(storage.join(clips_dir, "json", f"{clip_id}.face.json"), json.dumps(face))
    audio = audio_json(whole, sample_rate, mel_frame_rate)
    storage.atomic_write_text(storage.join(clips_dir, "json", f"{clip_id}.audio.json"), json.dumps(audio))
