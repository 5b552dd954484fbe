"""Probe an input file before any decoding, so a bad file gets one clear reason.

Uses the ffmpeg binary bundled with imageio-ffmpeg (`ffmpeg -i FILE` prints the container's streams).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from a2bs.errors import InputError
from a2bs.extract.audio import ffmpeg_exe

MP4_TOP_LEVEL_ATOMS = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}


@dataclass(frozen=True)
class MediaInfo:
    """What the container says about a file's streams."""

    path: str
    duration_s: float | None
    has_video: bool
    has_audio: bool
    fps: float | None
    width: int | None
    height: int | None
    audio_sample_rate: int | None
    # Where the audio stream starts after the container's start (its first sample is t = 0 on the
    # audio timeline; ffmpeg's input seeking counts from the container's start).
    audio_offset_s: float = 0.0


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):([\d.]+)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (?!.*attached pic)(.*)")
_AUDIO = re.compile(r"Stream #\d+:\d+.*?: Audio: (.*)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"([\d.]+)\s*(?:fps|tbr)\b")
_HZ = re.compile(r"(\d+)\s*Hz")
_FILE_START = re.compile(r"Duration:.*?start:\s*(-?[\d.]+)")
_STREAM_START = re.compile(r"\bstart (-?[\d.]+)")


def check_readable(path: str | os.PathLike) -> Path:
    """Raise InputError with a plain reason unless `path` is a non-empty readable regular file."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "not found" if not p.is_symlink() else "not found (broken symbolic link)")
    if p.is_dir():
        raise InputError(p, "is a directory, not a media file")
    if not p.is_file():
        raise InputError(p, "not a regular file (device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise InputError(p, "permission denied")
    if p.stat().st_size == 0:
        raise InputError(p, "empty file (0 bytes)")
    return p


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read the container header of `path`.

    Raises:
        InputError: the file is missing, empty, unreadable, not a media file, or truncated.
    """
    p = check_readable(path)
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise InputError(p, f"cannot be read ({exc.strerror or exc})") from None
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p)], capture_output=True, check=False, timeout=60
    )
    err = proc.stderr.decode("utf-8", "replace")
    if "moov atom not found" in err:
        # ffmpeg picks the MP4 demuxer from the suffix: only a file that starts like an MP4 is a cut one.
        if head[4:8] in MP4_TOP_LEVEL_ATOMS:
            raise InputError(p, "truncated or incomplete MP4 (moov atom not found)")
        raise InputError(p, "not a media file (no MP4/MOV structure in it)")
    if "Invalid data found when processing input" in err or "could not find codec parameters" in err.lower():
        raise InputError(p, "not a media file (ffmpeg cannot parse it)")
    if "Permission denied" in err:
        raise InputError(p, "permission denied")
    video = _VIDEO.search(err)
    audio = _AUDIO.search(err)
    if not video and not audio:
        raise InputError(p, "no audio or video stream")
    m = _DURATION.search(err)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    fps = width = height = rate = None
    offset = 0.0
    if video:
        size = _SIZE.search(video[1])
        if size:
            width, height = int(size[1]), int(size[2])
        f = _FPS.search(video[1])
        fps = float(f[1]) if f else None
    if audio:
        hz = _HZ.search(audio[1])
        rate = int(hz[1]) if hz else None
        file_start, audio_start = _FILE_START.search(err), _STREAM_START.search(audio[1])
        if file_start and audio_start:
            offset = max(0.0, float(audio_start[1]) - float(file_start[1]))
    return MediaInfo(str(p), duration, bool(video), bool(audio), fps, width, height, rate, offset)
