"""Sequential, FPS-limited frame decoding.

Frames are read in order with ``grab()`` and only the selected ones are decoded to pixels with
``retrieve()``: one seek per selected frame (the seed's ``CAP_PROP_POS_FRAMES`` loop) makes the
demuxer go back to the previous key frame and decode forward every time, which costs far more
(see benchmarks/bench_extract.py). Frames are yielded one by one, never collected, so memory stays
flat however long the clip is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from a2bs.errors import InputError

VFR_PROBE_S = 2.0


@dataclass(frozen=True)
class VideoStream:
    """Decoding parameters of one clip."""

    original_fps: float
    frame_count: int  # container estimate; the true count is what decoding yields
    width: int
    height: int
    frame_interval: int


def frame_interval_for(original_fps: float, fps_limit: float) -> int:
    """Keep every n-th frame: 60 fps at a 30 fps limit -> 2, 120 -> 4, 24 -> 1."""
    if fps_limit <= 0:
        return 1
    return max(1, int(original_fps / fps_limit))


def open_video(path: str | os.PathLike, fps_limit: float) -> tuple[cv2.VideoCapture, VideoStream]:
    """Open `path` for sequential decoding (auto-rotation from container metadata is on)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise InputError(path, "cannot open video stream")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or fps <= 0:
        cap.release()
        raise InputError(path, "video stream reports no frame rate")
    stream = VideoStream(
        original_fps=fps,
        frame_count=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        frame_interval=frame_interval_for(fps, fps_limit),
    )
    return cap, stream


def iter_frames(
    path: str | os.PathLike, fps_limit: float, max_side: int = 0, start_s: float = 0.0, end_s: float = math.inf
) -> tuple[VideoStream, Iterator[tuple[int, float, np.ndarray]]]:
    """Stream the selected frames of a video.

    Args:
        path: video file.
        fps_limit: keep every ``frame_interval_for(original_fps, fps_limit)``-th frame.
        max_side: downscale frames whose longer side exceeds this (0 = keep size).
        start_s, end_s: yield only the selected frames with ``start_s <= time_s < end_s``; frame indices
            and times stay those of the whole file (the global FPS-limited grid).

    Returns:
        The stream parameters and an iterator of ``(frame_index, time_s, rgb)``. ``time_s`` is
        ``frame_index / original_fps`` (timestamps follow original frame indices) unless the clip
        has a variable frame rate: when a container timestamp within the first
        ``VFR_PROBE_S`` seconds is more than a quarter frame off its index time, the container
        timestamps are used for the whole clip. (Deciding early and once keeps a single odd packet
        near the end of a constant-rate clip from moving that frame.)
    """
    cap, stream = open_video(path, fps_limit)

    def frames() -> Iterator[tuple[int, float, np.ndarray]]:
        try:
            index = 0
            variable_rate: bool | None = None  # undecided until a deviation or VFR_PROBE_S seconds
            while cap.grab():
                time_s = index / stream.original_fps
                if variable_rate is None:
                    pts_s = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    if abs(pts_s - time_s) > 0.25 / stream.original_fps:
                        variable_rate = True
                    elif time_s >= VFR_PROBE_S:
                        variable_rate = False
                if variable_rate:
                    time_s = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if time_s >= end_s:
                    break
                if index % stream.frame_interval == 0 and time_s >= start_s:
                    ok, bgr = cap.retrieve()
                    if ok and bgr is not None:
                        if max_side and max(bgr.shape[:2]) > max_side:
                            scale = max_side / max(bgr.shape[:2])
                            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                        yield index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            cap.release()

    return stream, frames()
