"""Frame decoding (a2bs.extract.video) on real encodes: a time segment equals the same range of a whole-file
pass (index, time, pixels) and seeks once; scaling inside the decoder gives the expected size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import media_factory as mf
import numpy as np
import pytest

from a2bs.extract.video import iter_frames

GOP = 24  # frames between key frames in the encodes below (scene cuts off, so exactly)
SECONDS = 5.0
_X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(GOP), "-sc_threshold", "0"]


def _encode(out: Path, source: Path, vf: str, *codec: str, extra: tuple[str, ...] = ()) -> Path:
    mf.run_ffmpeg("-i", source, "-t", f"{SECONDS:g}", "-an", "-vf", vf, *codec, *extra, out)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory, demo_clip: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video")
    vfr_mode = ["-fps_mode", "vfr"] if mf.ffmpeg_supports("fps_mode") else ["-vsync", "vfr"]
    # B-frames (x264 -bf 3) so presentation and decode order differ; the HEVC encode has open GOPs
    # (x265's default), whose leading pictures cannot be decoded after a seek.
    clips = {
        "60fps": _encode(d / "60.mp4", demo_clip, "fps=60", *_X264, "-bf", "3", extra=("-r", "60")),
        "30fps": _encode(d / "30.mp4", demo_clip, "fps=30", *_X264, "-bf", "3"),
        "vfr": _encode(d / "vfr.mp4", demo_clip,
                       # intervals cycle 1/60, 1/20, 1/30 s (as media_factory's vfr case), in 1/600 s ticks
                       "settb=1/600,setpts=floor(N/3)*60+gte(mod(N\\,3)\\,1)*10+gte(mod(N\\,3)\\,2)*30",
                       *_X264, extra=(*vfr_mode, "-enc_time_base:v", "filter")),
        "hevc_open_gop": _encode(d / "hevc.mp4", demo_clip, "fps=30", "-c:v", "libx265", "-preset", "ultrafast",
                                 "-x265-params", f"keyint={GOP}:min-keyint={GOP}:scenecut=0:log-level=error"),
    }
    # Matroska's index lists key frames only: a segment decodes from the file start instead of seeking.
    clips["mkv"] = d / "30.mkv"
    mf.run_ffmpeg("-i", clips["30fps"], "-c", "copy", clips["mkv"])
    return clips


def _digest(frames) -> list[tuple[int, float, str]]:
    return [(i, t, hashlib.sha256(rgb.tobytes()).hexdigest()) for i, t, rgb in frames]


@pytest.fixture(scope="module")
def whole(clips) -> dict[str, list[tuple[int, float, str]]]:
    """Every clip's whole-file pass at a 30 fps limit."""
    return {name: _digest(iter_frames(path, 30.0)[1]) for name, path in clips.items()}


def test_the_whole_file_grid(clips, whole) -> None:
    for name in ("60fps", "30fps", "hevc_open_gop"):
        stream, _ = iter_frames(clips[name], 30.0)
        index = np.array([i for i, _, _ in whole[name]])
        assert stream.frame_interval == (2 if name == "60fps" else 1) and not stream.variable_rate
        assert len(index) == SECONDS * 30 and (index == np.arange(len(index)) * stream.frame_interval).all(), name
        np.testing.assert_allclose([t for _, t, _ in whole[name]], index / stream.original_fps, atol=1e-12)
    stream, _ = iter_frames(clips["vfr"], 30.0)
    times = np.array([t for _, t, _ in whole["vfr"]])
    assert stream.variable_rate and [i for i, _, _ in whole["vfr"]] == list(range(len(times)))
    np.testing.assert_allclose(np.diff(times)[:6], [1 / 60, 1 / 20, 1 / 30] * 2, atol=1e-9)  # container times


# Key frames sit every GOP frames: 0.4 s apart at 60 fps, 0.8 s at 30 fps (times as frame index / fps).
SEGMENTS = {
    "at a key frame": lambda fps: (3 * GOP / fps, 6 * GOP / fps),
    "off key frames": lambda fps: (3 * GOP / fps + 0.13, 5 * GOP / fps - 0.07),
    "just before a key frame": lambda fps: (4 * GOP / fps - 0.01, 4 * GOP / fps + 0.5),
    "to the end": lambda fps: (2.71, float("inf")),
}


@pytest.mark.parametrize("where", SEGMENTS)
@pytest.mark.parametrize("name", ["60fps", "30fps", "vfr", "hevc_open_gop", "mkv"])
def test_a_segment_equals_the_same_frames_of_a_whole_file_pass(clips, whole, name: str, where: str) -> None:
    stream, _ = iter_frames(clips[name], 30.0)
    start_s, end_s = SEGMENTS[where](stream.original_fps)
    _, frames = iter_frames(clips[name], 30.0, start_s=start_s, end_s=end_s)
    segment = _digest(frames)
    expected = [f for f in whole[name] if start_s <= f[1] < end_s]
    assert len(expected) >= 10
    assert segment == expected  # indices, times and pixels
    if name == "mkv":
        assert frames.seeks == 0  # no index of every frame: decoded from the file start
        return
    # One seek to the key frame before start_s (an open GOP may need the one before that), and no more
    # decoding before the first kept frame than a GOP holds.
    assert frames.seeks == 1 or (name == "hevc_open_gop" and frames.seeks == 2)
    assert frames.decoded_before_first <= 2 * GOP if frames.seeks == 2 else GOP
    if where == "at a key frame" and name != "vfr":
        assert frames.decoded_before_first == 0


def test_max_frame_side_scales_inside_the_decoder(tmp_path: Path, demo_clip: Path) -> None:
    wide = _encode(tmp_path / "wide.mp4", demo_clip, "scale=640:360,setsar=1", *_X264)
    # Stored turned 90 degrees counter-clockwise, with a display matrix that turns it back.
    stored = _encode(tmp_path / "stored.mp4", demo_clip, "scale=640:360,setsar=1,transpose=cclock", *_X264)
    portrait = tmp_path / "rotated.mp4"
    mf.run_ffmpeg("-display_rotation:v:0", "-90", "-i", stored, "-c", "copy", portrait)
    full = [rgb for _, _, rgb in iter_frames(wide, 30.0)[1]]
    assert full[0].shape == (360, 640, 3)
    stream, frames = iter_frames(wide, 30.0, max_side=320)
    small = [rgb for _, _, rgb in frames]
    assert (stream.width, stream.height) == (640, 360)
    assert len(small) == len(full) and {f.shape for f in small} == {(180, 320, 3)}
    # The same picture as an area resize of the full-size frame, up to the rounding of one swscale pass.
    ref = cv2.resize(full[10], (320, 180), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(small[10].astype(np.int16) - ref).mean() < 2.0
    assert next(rgb.shape for _, _, rgb in iter_frames(wide, 30.0, max_side=1000)[1]) == (360, 640, 3)
    stream, frames = iter_frames(portrait, 30.0, max_side=320)
    upright = [rgb for _, _, rgb in frames]
    assert (stream.width, stream.height, stream.quarter_turns) == (640, 360, 3)
    assert {f.shape for f in upright} == {(180, 320, 3)} and upright[10].flags.c_contiguous
    # Upright: the picture of the unrotated encode (not its transpose), up to a second encode's loss.
    assert np.abs(upright[10].astype(np.int16) - small[10]).mean() < 4.0
