"""Sequential, FPS-limited frame decoding with PyAV (FFmpeg's libraries, bundled in the `av` wheels).

Frames are decoded in order and only the selected ones are converted to RGB: one seek per selected
frame (the seed's ``CAP_PROP_POS_FRAMES`` loop) makes the demuxer go back to the previous key frame
and decode forward every time, which costs far more (see benchmarks/bench_extract.py). Frames are
yielded one by one, never collected, so memory stays flat however long the clip is.

Frame grid. A frame's index is its position in presentation order counted from the file start, and
the kept frames are those with ``index % frame_interval == 0``, so a time segment of a clip
(``start_s``/``end_s``) yields exactly the frames a whole-file pass yields in that range. A segment
seeks once to the key frame before ``start_s`` and decodes forward. The index of a frame it decodes
is the number of frames that precede it in presentation order: the container's index gives the
frames decoded before that key frame (they all precede it), and the packets demuxed since the key
frame give the rest, including an open GOP's leading pictures. Packets the container marks as
discarded (edit lists) produce no frame and are not counted. When the container's index does not
list every frame (Matroska cues, MPEG-TS), a segment decodes from the file start instead: slower,
equally exact. A variable-frame-rate clip is indexed the same way (its segments seek too); only its
frame times differ: they are the container timestamps (the VFR rule in iter_frames), which a segment
reads without decoding anything before its key frame. The decision is taken once, on the first
``VFR_PROBE_S`` seconds of packet timestamps, so every segment of a clip decides alike.

Scaling. ``max_side`` is applied by libswscale in the same pass as the YUV->RGB conversion, so a
1080p or 4K frame is never converted at full size. At full size the pixels equal OpenCV's FFmpeg
backend (the same swscale conversion).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from a2bs.errors import InputError

VFR_PROBE_S = 2.0
# Packets demuxed past VFR_PROBE_S when probing, so B-frame reordering cannot hide an early frame.
_PROBE_REORDER_S = 1.0
# A key frame found by seeking may be presented after the target (its dts is before it, its pts is
# not): go back one key frame at most this many times before decoding from the file start.
_MAX_SEEKS = 3
# Frame and slice threads: frame threading is what speeds up 1080p H.264 (benchmarks/README.md).
DECODER_THREAD_TYPE = "AUTO"
# Rounding allowance when comparing a frame time with start_s.
_TIME_SLACK_S = 1e-6


@dataclass(frozen=True)
class VideoStream:
    """Decoding parameters of one clip."""

    original_fps: float
    frame_count: int  # container estimate; the true count is what decoding yields
    width: int  # displayed size (after container rotation), before max_side scaling
    height: int
    frame_interval: int
    variable_rate: bool  # frame times follow container timestamps (see iter_frames)
    quarter_turns: int = 0  # counter-clockwise quarter turns from the container's display matrix


def frame_interval_for(original_fps: float, fps_limit: float) -> int:
    """Keep every n-th frame: 60 fps at a 30 fps limit -> 2, 120 -> 4, 24 -> 1."""
    if fps_limit <= 0:
        return 1
    return max(1, int(original_fps / fps_limit))


def _open(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(path, f"cannot open video stream ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(path, "cannot open video stream (no video track)")
    return container, container.streams.video[0]


def _probe(container, stream, fps: float) -> tuple[bool, int]:
    """The VFR rule (see iter_frames), decided on the container timestamps of the first seconds, and
    the counter-clockwise quarter turns the display matrix asks for (np.rot90's k)."""
    start, tb = stream.start_time or 0, stream.time_base
    times_s: list[float] = []
    turns = None
    try:
        for packet in container.demux(stream):
            if turns is None:
                for frame in packet.decode():
                    turns = round(frame.rotation / 90) % 4
            if packet.pts is None or packet.is_discard:
                continue
            times_s.append(float((packet.pts - start) * tb))
            if times_s[-1] > VFR_PROBE_S + _PROBE_REORDER_S and turns is not None:
                break
    except av.FFmpegError:
        pass  # a damaged file: decide on what was read
    variable = False
    for i, t in enumerate(sorted(times_s)):
        if abs(t - i / fps) > 0.25 / fps:
            variable = True
            break
        if i / fps >= VFR_PROBE_S:
            break
    return variable, turns or 0


def open_video(path: str | os.PathLike, fps_limit: float) -> VideoStream:
    """Read the decoding parameters of `path` (raises InputError if it has no usable video stream)."""
    container, stream = _open(path)
    try:
        # The average rate is what OpenCV reported as CAP_PROP_FPS (a VFR clip's r_frame_rate is the
        # finest timestamp step, not its frame rate).
        rate = stream.average_rate or stream.guessed_rate
        if not rate or rate <= 0:
            raise InputError(path, "video stream reports no frame rate")
        fps = float(rate)
        width, height = stream.codec_context.width, stream.codec_context.height
        frame_count = int(stream.frames or 0)
        variable, turns = _probe(container, stream, fps)
    finally:
        container.close()
    if turns % 2:
        width, height = height, width
    return VideoStream(
        original_fps=fps,
        frame_count=frame_count,
        width=width,
        height=height,
        frame_interval=frame_interval_for(fps, fps_limit),
        variable_rate=variable,
        quarter_turns=turns,
    )


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most `max_side` (0 = unchanged), aspect kept."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Frames(Iterator[tuple[int, float, np.ndarray]]):
    """Iterator of ``(frame_index, time_s, rgb)`` that also counts its decoding work.

    Attributes:
        seeks: seeks made (0 for a pass from the file start, 1 for a segment, rarely more).
        decoded: frames decoded so far.
        decoded_before_first: frames decoded before the first yielded one (the key frame's GOP
            lead-in for a segment), or None until a frame is yielded.
    """

    def __init__(self, path: str | os.PathLike, stream: VideoStream, max_side: int, start_s: float, end_s: float):
        self.path, self.stream = path, stream
        self.max_side, self.start_s, self.end_s = max_side, start_s, end_s
        self.seeks = 0
        self.decoded = 0
        self.decoded_before_first: int | None = None
        self._it = self._frames()

    def __next__(self) -> tuple[int, float, np.ndarray]:
        return next(self._it)

    def close(self) -> None:
        """Stop decoding and release the file (also done at the end of iteration)."""
        self._it.close()

    def _seek(self, container, vstream) -> tuple[int, Iterator[av.Packet]] | None:
        """Seek to the key frame before start_s: (frames presented before it, packets from it on), or
        None to decode from the file start (start_s at the start, or no index listing every frame).

        The key frame is accepted when neither its timestamp nor its place in the index puts it after
        start_s (for a closed GOP the index place is exact; the timestamp also covers an open GOP's
        leading pictures, which cannot be decoded after a seek); otherwise the key frame before it is
        taken, which costs a second seek."""
        s, tb, start = self.stream, vstream.time_base, vstream.start_time or 0
        entries = vstream.index_entries
        if not vstream.frames or len(entries) < vstream.frames:
            return None
        target = start + math.floor(self.start_s / tb)
        for _ in range(_MAX_SEEKS):
            container.seek(target, backward=True, stream=vstream)
            self.seeks += 1
            packets = container.demux(vstream)
            key = next(packets, None)
            if key is None or key.dts is None or key.pts is None:
                return None
            before = _frames_before(entries, key.dts)
            if before is None:
                return None
            if before == 0:
                return before, itertools.chain([key], packets)
            late = float((key.pts - start) * tb) > self.start_s + _TIME_SLACK_S
            if not s.variable_rate:
                late = late or before > math.ceil(self.start_s * s.original_fps - _TIME_SLACK_S * s.original_fps)
            if not late:
                return before, itertools.chain([key], packets)
            target = key.dts - 1  # go back one key frame
        return None

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        container, vstream = _open(self.path)
        try:
            yield from self._decode(container, vstream)
        finally:
            container.close()

    def _decode(self, container, vstream) -> Iterator[tuple[int, float, np.ndarray]]:
        s = self.stream
        vstream.thread_type = DECODER_THREAD_TYPE
        tb, start = vstream.time_base, vstream.start_time or 0
        seek = self._seek(container, vstream) if self.start_s * s.original_fps > 1 else None
        if seek is None and self.seeks:
            container.seek(start, backward=True, stream=vstream)
            self.seeks += 1
        before_key, packets = seek or (0, container.demux(vstream))
        pending: list[int] = []  # pts of demuxed packets not yet presented (min-heap)
        presented = 0  # packets demuxed since the key frame and presented before the current frame
        reformatter = VideoReformatter()  # keeps its swscale context across frames
        size: tuple[int, int] | None = None

        def wanted(pts: int) -> bool:
            """Whether the frame of a packet about to be decoded will be kept. Its index counts the packets
            demuxed so far with an earlier pts: a frame no other frame references (the only kind the
            decoder may skip) is coded after every frame presented before it."""
            index = before_key + presented + sum(1 for q in pending if q < pts)
            time_s = float((pts - start) * tb) if s.variable_rate else index / s.original_fps
            return index % s.frame_interval == 0 and self.start_s - _TIME_SLACK_S <= time_s < self.end_s

        for frame in _decoded(vstream, packets, pending, wanted):
            self.decoded += 1
            # The decoder presents in order, so every packet with an earlier pts has been demuxed.
            while pending and pending[0] < frame.pts:
                heapq.heappop(pending)
                presented += 1
            if not pending or pending[0] != frame.pts:
                continue  # a timestamp no packet carried: it cannot be placed on the grid
            heapq.heappop(pending)
            index = before_key + presented
            presented += 1
            time_s = float((frame.pts - start) * tb) if s.variable_rate else index / s.original_fps
            if time_s >= self.end_s:
                return
            if index % s.frame_interval or time_s < self.start_s:
                continue  # decoded only: no colour conversion
            if size is None:
                size = scaled_size(frame.width, frame.height, self.max_side)
            rgb = reformatter.reformat(frame, size[0], size[1], "rgb24", interpolation=Interpolation.AREA).to_ndarray()
            if s.quarter_turns:
                rgb = np.ascontiguousarray(np.rot90(rgb, s.quarter_turns))
            if self.decoded_before_first is None:
                self.decoded_before_first = self.decoded - 1
            yield index, time_s, rgb


def _frames_before(entries, dts: int) -> int | None:
    """Frames presented before the key frame with this dts: the index entries before it, less the
    ones an edit list discards (None if the index does not hold that dts)."""
    position = bisect_left(entries, dts, key=lambda e: e.timestamp)
    if position >= len(entries) or entries[position].timestamp != dts:
        return None
    return position - sum(1 for k in range(position) if entries[k].is_discard)


def _decoded(
    vstream, packets: Iterator[av.Packet], pending: list[int], wanted: Callable[[int], bool]
) -> Iterator[av.VideoFrame]:
    """Decode `packets`, pushing each countable packet's pts on `pending`; frames without a pts are
    dropped. A packet whose frame is not `wanted` is decoded only if other frames reference it (the
    decoder's non-reference skip: half the frames of a 60 fps take at a 30 fps limit, and a segment's
    lead-in). A demuxing error ends the stream (a damaged tail: keep what decoded, flush the decoder);
    an undecodable packet loses only its frame."""
    codec = vstream.codec_context
    while True:
        try:
            packet = next(packets, None)
        except av.FFmpegError:
            packet = None
        if packet is not None and packet.pts is not None and not packet.is_discard:
            heapq.heappush(pending, packet.pts)
            codec.skip_frame = "DEFAULT" if wanted(packet.pts) else "NONREF"
        try:
            frames = vstream.decode(packet)
        except av.FFmpegError:
            frames = []
        yield from (f for f in frames if f.pts is not None)
        if packet is None or packet.size == 0:
            return


def iter_frames(
    path: str | os.PathLike, fps_limit: float, max_side: int = 0, start_s: float = 0.0, end_s: float = math.inf
) -> tuple[VideoStream, Frames]:
    """Stream the selected frames of a video.

    Args:
        path: video file.
        fps_limit: keep every ``frame_interval_for(original_fps, fps_limit)``-th frame.
        max_side: downscale frames whose longer side exceeds this, inside the decoder's colour
            conversion (0 = keep size).
        start_s, end_s: yield only the selected frames with ``start_s <= time_s < end_s``; frame indices
            and times stay those of the whole file (the global FPS-limited grid). A segment seeks once
            to the key frame before ``start_s`` (module docstring).

    Returns:
        The stream parameters and an iterator of ``(frame_index, time_s, rgb)`` (a :class:`Frames`,
        which also counts seeks and decoded frames). ``time_s`` is ``frame_index / original_fps``
        (timestamps follow original frame indices) unless the clip has a variable frame rate: when a
        container timestamp within the first ``VFR_PROBE_S`` seconds is more than a quarter frame off
        its index time, the container timestamps are used for the whole clip. (Deciding early and once
        keeps a single odd packet near the end of a constant-rate clip from moving that frame, and
        lets a segment decide without decoding the file start: it reads those packets' timestamps.)
    """
    stream = open_video(path, fps_limit)
    return stream, Frames(path, stream, max_side, start_s, end_s)
