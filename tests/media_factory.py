"""Generate a corpus of good and broken media (and Parquet) files for tests, and probe them.

Usage from fixtures::

    paths = build_corpus(tmp_dir, source=demo_clip)          # every case
    paths = build_corpus(tmp_dir, demo_clip, ["vfr", "no_audio"])
    case = CASES["no_audio"]; case.expect, case.error_hint     # what the pipeline should do

``source`` is a good talking-head clip (mp4, H.264 + AAC). Cases derived from it are trimmed
to ``CLIP_SECONDS``. ``expect`` is one of:

* ``"ok"``            - usable audio+video with a face: rows for every decodable frame;
* ``"ok_audio_only"`` - no video track: audio features only;
* ``"ok_no_face"``    - valid audio+video, but no frame has a face;
* ``"error"``         - the input must be rejected with a clear message that contains
  ``error_hint`` (``Case.hint_matches`` also accepts ``alt_hints``), without hanging.

The builders live in ``media_cases``; they are re-exported here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

# tests/ is on sys.path (via conftest), so the sibling module imports as top-level.
from media_cases import (  # noqa: F401  (re-exported API)
    CLIP_SECONDS,
    UNICODE_NAME,
    FFmpegError,
    ffmpeg_exe,
    ffmpeg_supports,
    make_audio_only_m4a,
    make_audio_only_mp3,
    make_audio_only_wav,
    make_baseline,
    make_corrupt_parquet,
    make_dangling_symlink,
    make_directory_named_mp4,
    make_fps,
    make_long_clip,
    make_missing,
    make_mono_8k,
    make_no_audio,
    make_no_face,
    make_one_frame,
    make_rotated,
    make_silent_audio,
    make_standin_source,
    make_stereo_44k,
    make_text_as_mp4,
    make_truncated,
    make_truncated_faststart,
    make_truncated_parquet,
    make_uhd_4k,
    make_unicode_name,
    make_vfr,
    make_zero_byte,
    mp4_top_level_atoms,
    run_ffmpeg,
)

Expect = Literal["ok", "ok_audio_only", "ok_no_face", "error"]
Builder = Callable[[Path, "Path | None"], Path]


@dataclass(frozen=True)
class Case:
    """One corpus entry: how to build it and what the pipeline should do with it."""

    name: str
    builder: Builder
    expect: Expect
    error_hint: str = ""  # substring a clear error message should contain (expect == "error")
    alt_hints: tuple[str, ...] = ()  # other acceptable wordings
    needs_source: bool = True
    kind: Literal["media", "parquet"] = "media"
    note: str = ""

    def build(self, out_dir: str | Path, source: str | Path | None = None) -> Path:
        """Build this case into ``out_dir`` and return its path."""
        if self.needs_source and source is None:
            raise ValueError(f"case {self.name!r} needs a source clip")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return self.builder(out_dir, Path(source) if source is not None else None)

    def hint_matches(self, message: str) -> bool:
        """Whether ``message`` mentions the reason (case-insensitive, any accepted wording)."""
        msg = message.lower()
        return any(h.lower() in msg for h in (self.error_hint, *self.alt_hints) if h)


def _nosrc(fn: Callable[[Path], Path]) -> Builder:
    return lambda d, s: fn(d)


def _fps(fps: float) -> Builder:
    return lambda d, s: make_fps(d, s, fps)  # type: ignore[arg-type]


_NOT_FOUND = ("no such file", "does not exist", "missing")
_CASE_LIST: list[Case] = [
    Case("baseline", make_baseline, "ok", note="source trimmed by stream copy"),
    Case("zero_byte", _nosrc(make_zero_byte), "error", "empty", ("0 bytes", "zero"),
         needs_source=False),
    Case("truncated", make_truncated, "error", "truncated",
         ("cannot decode", "moov atom not found", "invalid data", "not a media file"),
         note="moov after mdat, cut at 40%: index lost, ffmpeg/cv2 cannot open it at all"),
    Case("truncated_faststart", make_truncated_faststart, "ok",
         note="moov first, cut at 40%: header still claims the full duration/frame count but "
              "only the first ~35-40% of frames (and audio) decode; the pipeline should keep "
              "those rows (a 'truncated' warning is fine) rather than crash"),
    Case("text_as_mp4", _nosrc(make_text_as_mp4), "error", "not a media file",
         ("invalid data", "cannot decode", "unrecognized"), needs_source=False),
    Case("no_audio", make_no_audio, "error", "no audio track", ("no audio",)),
    Case("audio_only_wav", make_audio_only_wav, "ok_audio_only", note="16 kHz mono PCM"),
    Case("audio_only_mp3", make_audio_only_mp3, "ok_audio_only", note="44.1 kHz mono"),
    Case("audio_only_m4a", make_audio_only_m4a, "ok_audio_only", note="AAC, source rate"),
    Case("no_face", make_no_face, "ok_no_face", note="frames filled gray, audio kept"),
    Case("vfr", make_vfr, "ok", note="intervals cycle 1/60, 1/20, 1/30 s"),
    Case("rotated_90", make_rotated, "ok",
         note="pixels stored turned 90° CCW + display matrix 'rotate 90' (CW): upright only if "
              "the reader applies rotation"),
    Case("one_frame", make_one_frame, "ok", note="1 video frame, ~34 ms audio"),
    Case("uhd_4k", make_uhd_4k, "ok", note="3840x2160, 1 s, letterboxed"),
    Case("stereo_44k", make_stereo_44k, "ok"),
    Case("mono_8k", make_mono_8k, "ok"),
    Case("silent_audio", make_silent_audio, "ok", note="all-zero audio track"),
    Case("unicode_name", make_unicode_name, "ok", note=UNICODE_NAME),
    Case("directory_named_mp4", _nosrc(make_directory_named_mp4), "error", "directory",
         ("not a regular file", "not a file", "not a media file"), needs_source=False,
         note="stands in for 'unreadable': root ignores chmod 000 and a FIFO would hang"),
    Case("dangling_symlink", _nosrc(make_dangling_symlink), "error", "not found",
         (*_NOT_FOUND, "broken symlink", "dangling"), needs_source=False),
    Case("missing", _nosrc(make_missing), "error", "not found", _NOT_FOUND, needs_source=False),
    Case("fps_24", _fps(24), "ok"),
    Case("fps_60", _fps(60), "ok", note="frames duplicated by the fps filter"),
    Case("fps_120", _fps(120), "ok", note="frames duplicated by the fps filter"),
    Case("corrupt_parquet", _nosrc(make_corrupt_parquet), "error", "corrupt",
         ("parquet", "deserialize", "invalid"), needs_source=False, kind="parquet",
         note="footer intact: opens and shows the schema, fails when data is read"),
    Case("truncated_parquet", _nosrc(make_truncated_parquet), "error", "corrupt",
         ("parquet", "magic bytes", "truncated", "footer"), needs_source=False, kind="parquet",
         note="footer cut off: fails on open"),
]
CASES: dict[str, Case] = {c.name: c for c in _CASE_LIST}


def case_names(expect: Expect | None = None, kind: str | None = None) -> list[str]:
    """Names of the cases with the given ``expect`` and/or ``kind`` (all if both None)."""
    return [c.name for c in _CASE_LIST
            if (expect is None or c.expect == expect) and (kind is None or c.kind == kind)]


def build_corpus(out_dir: str | Path, source: str | Path | None,
                 cases: Iterable[str] | None = None) -> dict[str, Path]:
    """Build all (or the named) cases into ``out_dir``; returns ``{name: path}``."""
    names = list(CASES) if cases is None else list(cases)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise KeyError(f"unknown cases {unknown}; known: {sorted(CASES)}")
    return {n: CASES[n].build(out_dir, source) for n in names}


# ---------------------------------------------------------------------------------------------
# Probing (parses `ffmpeg -i` stderr; the bundled ffmpeg has no ffprobe)
# ---------------------------------------------------------------------------------------------

class ProbeError(RuntimeError):
    """ffmpeg could not open the file as media."""


_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def _ffmpeg_info(path: str | Path) -> str:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True, text=True, errors="replace", timeout=60)
    return proc.stderr  # always exits 1 ("At least one output file must be specified")


def probe(path: str | Path) -> dict:
    """Describe a media file: duration_s, fps, width, height, has_video, has_audio, video_codec,
    audio_codec, audio_sample_rate, audio_channels, rotation, n_frames.

    width/height are the stored (coded) size; ``rotation`` is the clockwise angle a player turns
    the picture (legacy ``rotate`` tag / cv2 ORIENTATION_META convention: 0, 90, 180, 270).
    n_frames is the container's frame count via cv2 (None if unknown). Missing fields are None.
    Raises ProbeError when ffmpeg cannot open the file.
    """
    err = _ffmpeg_info(path)
    if "Input #0" not in err:
        reason = [ln for ln in err.strip().splitlines() if ln.strip()]
        raise ProbeError(f"{path}: {reason[-1] if reason else 'ffmpeg could not open it'}")
    info: dict = dict(duration_s=None, fps=None, width=None, height=None, has_video=False,
                      has_audio=False, video_codec=None, audio_codec=None, audio_sample_rate=None,
                      audio_channels=None, rotation=0, n_frames=None)
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err)
    if m:
        info["duration_s"] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    for line in err.splitlines():
        if not re.match(r"\s*Stream #", line):
            continue
        if ": Video: " in line and not info["has_video"] and "attached pic" not in line:
            info["has_video"] = True
            info["video_codec"] = line.split(": Video: ")[1].split()[0].rstrip(",")
            if m := re.search(r", (\d{2,5})x(\d{2,5})", line):
                info["width"], info["height"] = int(m[1]), int(m[2])
            if m := re.search(r", ([\d.]+)(k?) (fps|tbr)", line):
                info["fps"] = float(m[1]) * (1000 if m[2] else 1)
        elif ": Audio: " in line and not info["has_audio"]:
            info["has_audio"] = True
            info["audio_codec"] = line.split(": Audio: ")[1].split()[0].rstrip(",")
            if m := re.search(r", (\d+) Hz, ([^,]+)", line):
                info["audio_sample_rate"] = int(m[1])
                layout = m[2].strip()
                n = re.match(r"(\d+) channels", layout)
                info["audio_channels"] = int(n[1]) if n else _CHANNELS.get(layout.split("(")[0])
    if m := re.search(r"Display Matrix: rotation of (-?[\d.]+) degrees", err):
        info["rotation"] = round(-float(m[1])) % 360  # display matrix angle is counter-clockwise
    elif m := re.search(r"^\s*rotate\s*: (-?\d+)", err, re.M):  # ffmpeg < 6 tag
        info["rotation"] = int(m[1]) % 360
    if info["has_video"]:
        import cv2

        cap = cv2.VideoCapture(str(path))
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else 0
        cap.release()
        info["n_frames"] = int(count) if count and count > 0 else None
    return info


def frame_times(path: str | Path) -> list[float]:
    """Presentation timestamps (s) of the first video stream's packets, sorted (no decoding)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i",
                           str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
                          capture_output=True, text=True, errors="replace", timeout=120)
    tb = re.search(r"^#tb 0: (\d+)/(\d+)", proc.stdout, re.M)
    if not tb:
        raise ProbeError(f"{path}: no video packets ({proc.stderr.strip()[-300:]})")
    scale = int(tb[1]) / int(tb[2])
    pts = [int(ln.split(",")[2]) for ln in proc.stdout.splitlines() if ln and ln[0] != "#"]
    return sorted(p * scale for p in pts)


def decoded_frame_count(path: str | Path) -> int:
    """How many video frames actually decode (decode errors just end the count)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "quiet", "-i",
                           str(path), "-map", "0:v:0", "-f", "framecrc", "-"],
                          capture_output=True, text=True, errors="replace", timeout=300)
    return sum(1 for ln in proc.stdout.splitlines() if ln and ln[0] != "#")


def decode_audio(path: str | Path, sample_rate: int | None = None) -> np.ndarray:
    """First audio stream decoded to mono float32 (at ``sample_rate`` if given)."""
    rate = ["-ar", str(sample_rate)] if sample_rate else []
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i",
                           str(path), "-map", "0:a:0", "-ac", "1", *rate, "-f", "f32le", "-"],
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise ProbeError(f"{path}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return np.frombuffer(proc.stdout, dtype="<f4")


def audio_rms(path: str | Path) -> float:
    """RMS of the first audio stream (mono mix)."""
    x = decode_audio(path).astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0
