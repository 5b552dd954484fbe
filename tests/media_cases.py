"""Builders for the generated test-media corpus (good and broken inputs).

Each ``make_*`` function writes one file (or directory / symlink) into ``out_dir`` and
returns its path. Everything is generated with the ffmpeg binary bundled by
``imageio_ffmpeg`` (there is no system ffmpeg), so the corpus is reproducible: fixed
encoder settings, fixed thread count and ``bitexact`` flags give the same bytes on
every run with the same ffmpeg build. The public entry point is ``media_factory``;
this module only holds the builders so that file stays short.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Derived clips are trimmed to this many seconds so every builder stays fast even when the
# source is a 15 s 720p demo clip (and downstream pipeline tests stay fast too).
CLIP_SECONDS = 4.0
UNICODE_NAME = "Zoë interview – take 2.mp4"  # NFC "ë" and an EN DASH

# Fixed threads: x264 output is deterministic for a given thread count, not across counts.
_X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p",
         "-threads", "2"]
_AAC = ["-c:a", "aac", "-b:a", "96k"]
# Strip encoder version strings and input metadata so the bytes don't depend on them.
_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
             "-map_metadata", "-1"]


class FFmpegError(RuntimeError):
    """ffmpeg exited non-zero while building a case."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio_ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_supports(option: str) -> bool:
    """Whether the bundled ffmpeg lists ``option`` (e.g. ``"display_rotation"``) in ``-h full``."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-h", "full"], capture_output=True,
                         text=True, errors="replace", timeout=60).stdout
    return f"-{option}" in out


def run_ffmpeg(*args: str | os.PathLike, timeout: float = 300.0) -> None:
    """Run ffmpeg quietly (overwriting outputs); raise FFmpegError with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise FFmpegError(
            f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def _fresh(path: Path) -> Path:
    """Remove whatever is at ``path`` (file, symlink or directory) so a rebuild starts clean."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _vfps(fps: float) -> str:
    return f"{fps:g}"


def _reencode(source: Path, out: Path, vf: str | None = None, seconds: float = CLIP_SECONDS,
              extra: list[str] | None = None) -> Path:
    """Re-encode the source (video via libx264, audio via AAC) with an optional video filter."""
    vf_args = ["-vf", vf] if vf else []
    run_ffmpeg("-i", source, "-t", f"{seconds:g}", "-map", "0:v:0", "-map", "0:a:0?", *vf_args,
               *_X264, *_AAC, *(extra or []), *_BITEXACT, _fresh(out))
    return out


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

def make_standin_source(out: Path, seconds: float = 3.0, size: str = "320x240",
                        fps: float = 30, sample_rate: int = 48000) -> Path:
    """A faceless lavfi stand-in for a talking-head clip: testsrc2 video + 440 Hz sine AAC."""
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={_vfps(fps)}:duration={seconds:g}",
               "-f", "lavfi", "-i",
               f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds:g}",
               *_X264, *_AAC, "-shortest", *_BITEXACT, _fresh(Path(out)))
    return Path(out)


def make_baseline(out_dir: Path, source: Path) -> Path:
    """The source trimmed to CLIP_SECONDS by stream copy: the known-good reference."""
    out = _fresh(out_dir / "baseline.mp4")
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-map", "0", "-c", "copy", *_BITEXACT, out)
    return out


def make_long_clip(source: Path, out: Path, minutes: float, reencode: bool = False) -> Path:
    """Loop ``source`` to ``minutes`` long for memory benchmarks (stream copy: takes seconds).

    Video and audio are looped from two separate inputs so each loops on its own duration:
    with one input the video gets a ~20 ms timestamp gap at every seam (AAC priming makes the
    audio slightly longer). The price is slow audio drift (a few ms per loop), irrelevant for
    memory benchmarks. ``reencode=True`` (or a copy failure) re-encodes instead: exact but slow.
    """
    out = _fresh(Path(out))
    t = f"{minutes * 60:g}"
    loop = ["-stream_loop", "-1", "-i", source]
    if not reencode:
        try:
            run_ffmpeg(*loop, *loop, "-t", t, "-map", "0:v:0", "-map", "1:a:0?", "-c", "copy",
                       *_BITEXACT, out, timeout=1800)
            return out
        except FFmpegError:
            pass  # e.g. a source whose streams cannot be stream-copied into mp4
    run_ffmpeg(*loop, "-t", t, "-map", "0:v:0", "-map", "0:a:0?", *_X264, *_AAC, *_BITEXACT, out,
               timeout=7200)
    return out


# ---------------------------------------------------------------------------------------------
# Broken files
# ---------------------------------------------------------------------------------------------

def make_zero_byte(out_dir: Path) -> Path:
    """An empty file named .mp4."""
    out = _fresh(out_dir / "zero_byte.mp4")
    out.write_bytes(b"")
    return out


def mp4_top_level_atoms(path: Path) -> list[str]:
    """Top-level MP4 box types in file order (stops at a box that runs past the end)."""
    data = Path(path).read_bytes()
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        elif size == 0:  # box extends to end of file
            size = len(data) - pos
        atoms.append(kind)
        if size < 8:
            break
        pos += size
    return atoms


def _truncated(source: Path, out: Path, faststart: bool, fraction: float) -> Path:
    # Re-mux first: the demo source may or may not be faststart, and each variant needs a
    # known atom order (moov after mdat -> cut loses the index; moov first -> cut keeps it).
    full = _fresh(out.with_name(out.stem + ".full.tmp.mp4"))
    flags = ["-movflags", "+faststart"] if faststart else []
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-map", "0", "-c", "copy", *flags,
               *_BITEXACT, full)
    atoms = mp4_top_level_atoms(full)
    if (atoms.index("moov") < atoms.index("mdat")) != faststart:
        raise RuntimeError(f"unexpected atom order {atoms} for faststart={faststart}")
    data = full.read_bytes()
    full.unlink()
    _fresh(out).write_bytes(data[: int(len(data) * fraction)])
    return out


def make_truncated(out_dir: Path, source: Path, fraction: float = 0.4) -> Path:
    """moov-at-end mp4 cut at ``fraction`` of its bytes: the index is gone, nothing decodes."""
    return _truncated(source, out_dir / "truncated.mp4", faststart=False, fraction=fraction)


def make_truncated_faststart(out_dir: Path, source: Path, fraction: float = 0.4) -> Path:
    """faststart mp4 cut at ``fraction``: header intact (full duration), early frames decode."""
    out = out_dir / "truncated_faststart.mp4"
    return _truncated(source, out, faststart=True, fraction=fraction)


def make_text_as_mp4(out_dir: Path) -> Path:
    """A plain text file with a .mp4 name."""
    out = _fresh(out_dir / "text_file.mp4")
    out.write_text("This is not a video. It is a text file with a .mp4 extension.\n" * 20)
    return out


def make_directory_named_mp4(out_dir: Path) -> Path:
    """A directory called clip.mp4 (root can read any file, so this stands in for 'unreadable').

    chmod 000 does not stop root and a FIFO would block a reader forever, so the robust
    "cannot read this path" cases are this directory and a dangling symlink.
    """
    out = _fresh(out_dir / "clip.mp4")
    out.mkdir()
    return out


def make_dangling_symlink(out_dir: Path) -> Path:
    """A symlink named .mp4 whose (relative) target does not exist."""
    out = _fresh(out_dir / "dangling_link.mp4")
    out.symlink_to("deleted_target_does_not_exist.mp4")
    return out


def make_missing(out_dir: Path) -> Path:
    """A path that does not exist (its parent does)."""
    return _fresh(out_dir / "does_not_exist.mp4")


def _small_table(rows: int = 600) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({
        "clip_id": pa.array([f"clip{i // 200:03d}" for i in range(rows)]),
        "frame": pa.array(np.arange(rows, dtype=np.int32)),
        "blendshapes": pa.array(list(rng.random((rows, 52), dtype=np.float32)),
                                type=pa.list_(pa.float32(), 52)),
    })


def make_corrupt_parquet(out_dir: Path) -> Path:
    """Valid Parquet with the middle quarter overwritten by 0xFF.

    The footer survives, so opening and reading the schema work; reading the data fails
    (page headers no longer deserialize), which is the nasty late-failure case.
    """
    out = _fresh(out_dir / "corrupt.parquet")
    pq.write_table(_small_table(), out, row_group_size=150)
    data = bytearray(out.read_bytes())
    n = len(data)
    data[n * 3 // 8: n * 5 // 8] = b"\xff" * (n * 5 // 8 - n * 3 // 8)
    out.write_bytes(bytes(data))
    return out


def make_truncated_parquet(out_dir: Path) -> Path:
    """Valid Parquet with its last 5 % (footer and magic bytes) cut off: fails on open."""
    out = _fresh(out_dir / "truncated.parquet")
    pq.write_table(_small_table(), out, row_group_size=150)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) * 95 // 100])
    return out


# ---------------------------------------------------------------------------------------------
# Unusual but valid media
# ---------------------------------------------------------------------------------------------

def make_no_audio(out_dir: Path, source: Path) -> Path:
    """The source video with the audio stream dropped (-an, stream copy)."""
    out = _fresh(out_dir / "no_audio.mp4")
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-map", "0:v:0", "-c:v", "copy", "-an",
               *_BITEXACT, out)
    return out


def make_audio_only_wav(out_dir: Path, source: Path) -> Path:
    """The source's audio as 16 kHz mono 16-bit WAV."""
    out = _fresh(out_dir / "audio_only.wav")
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-vn", "-ac", "1", "-ar", "16000",
               "-c:a", "pcm_s16le", *_BITEXACT, out)
    return out


def make_audio_only_mp3(out_dir: Path, source: Path) -> Path:
    """The source's audio as 44.1 kHz mono MP3."""
    out = _fresh(out_dir / "audio_only.mp3")
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-vn", "-ac", "1", "-ar", "44100",
               "-c:a", "libmp3lame", "-b:a", "96k", *_BITEXACT, out)
    return out


def make_audio_only_m4a(out_dir: Path, source: Path) -> Path:
    """The source's audio as AAC in an .m4a (mp4 container without a video track)."""
    out = _fresh(out_dir / "audio_only.m4a")
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-vn", *_AAC, *_BITEXACT, out)
    return out


def make_no_face(out_dir: Path, source: Path) -> Path:
    """Every frame filled with flat gray (drawbox t=fill), audio kept: no face anywhere."""
    return _reencode(source, out_dir / "no_face.mp4",
                     vf="drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill")


def make_vfr(out_dir: Path, source: Path) -> Path:
    """Variable frame rate: frame intervals cycle 1/60, 1/20, 1/30 s (mean 30 fps, same duration).

    Needs ``-enc_time_base:v filter``: ffmpeg >= 7 otherwise encodes on a 1/fps grid and
    the irregular timestamps collapse back to constant ones.
    """
    # Integer ticks of 1/600 s (60 per 3 frames, offsets 0, 10, 40): float seconds/TB would be
    # truncated by setpts and add 1-tick jitter.
    expr = "floor(N/3)*60+gte(mod(N\\,3)\\,1)*10+gte(mod(N\\,3)\\,2)*30"
    mode = ["-fps_mode", "vfr"] if ffmpeg_supports("fps_mode") else ["-vsync", "vfr"]
    return _reencode(source, out_dir / "vfr.mp4", vf=f"settb=1/600,setpts={expr}",
                     extra=[*mode, "-enc_time_base:v", "filter"])


def make_rotated(out_dir: Path, source: Path) -> Path:
    """Phone-style portrait clip: pixels stored turned 90° counter-clockwise plus metadata
    telling players to turn them 90° clockwise, so a rotation-aware reader sees the face upright
    and a reader that ignores rotation sees it sideways. (cv2 CAP_PROP_ORIENTATION_META = 90.)
    """
    stored = _reencode(source, out_dir / "rotated_90.stored.tmp.mp4", vf="transpose=cclock")
    out = _fresh(out_dir / "rotated_90.mp4")
    if ffmpeg_supports("display_rotation"):
        # Counter-clockwise angle; -90 == legacy "rotate=90" tag.
        run_ffmpeg("-display_rotation:v:0", "-90", "-i", stored, "-map", "0", "-c", "copy",
                   *_BITEXACT, out)
    else:  # ffmpeg < 6.1
        run_ffmpeg("-i", stored, "-map", "0", "-c", "copy", "-metadata:s:v:0", "rotate=90",
                   *_BITEXACT, out)
    stored.unlink()
    return out


def make_one_frame(out_dir: Path, source: Path) -> Path:
    """A single video frame with 0.2 s of audio.

    The frame is picked with a trim filter, not ``-frames:v 1``: ffmpeg 9 ends the whole output at
    that limit, which leaves no audio packet at all.
    """
    out = _fresh(out_dir / "one_frame.mp4")
    run_ffmpeg("-i", source, "-t", "0.2", "-map", "0:v:0", "-map", "0:a:0?", "-vf", "trim=end_frame=1",
               *_X264, *_AAC, *_BITEXACT, out)
    return out


def make_uhd_4k(out_dir: Path, source: Path) -> Path:
    """1 s at 3840x2160: source scaled up to fit and letterboxed, audio kept."""
    vf = ("scale=3840:2160:force_original_aspect_ratio=decrease,"
          "pad=3840:2160:(ow-iw)/2:(oh-ih)/2,setsar=1")
    return _reencode(source, out_dir / "uhd_4k.mp4", vf=vf, seconds=1.0)


def _audio_variant(source: Path, out: Path, audio: list[str]) -> Path:
    run_ffmpeg("-i", source, "-t", f"{CLIP_SECONDS:g}", "-map", "0:v:0", "-map", "0:a:0",
               "-c:v", "copy", *_AAC, *audio, *_BITEXACT, _fresh(out))
    return out


def make_stereo_44k(out_dir: Path, source: Path) -> Path:
    """Video copied, audio re-encoded as 44.1 kHz stereo AAC."""
    return _audio_variant(source, out_dir / "stereo_44k.mp4", ["-ac", "2", "-ar", "44100"])


def make_mono_8k(out_dir: Path, source: Path) -> Path:
    """Video copied, audio re-encoded as 8 kHz mono AAC (telephone-band)."""
    return _audio_variant(source, out_dir / "mono_8k.mp4", ["-ac", "1", "-ar", "8000"])


def make_silent_audio(out_dir: Path, source: Path) -> Path:
    """Video copied, audio replaced by digital silence (anullsrc) of the same length."""
    out = _fresh(out_dir / "silent_audio.mp4")
    run_ffmpeg("-i", source, "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
               "-t", f"{CLIP_SECONDS:g}", "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
               *_AAC, "-shortest", *_BITEXACT, out)
    return out


def make_unicode_name(out_dir: Path, source: Path) -> Path:
    """A byte copy of the baseline named with spaces, "ë" and an en dash."""
    out = _fresh(out_dir / UNICODE_NAME)
    shutil.copyfile(make_baseline(out_dir, source), out)
    return out


def make_fps(out_dir: Path, source: Path, fps: float) -> Path:
    """Re-encoded at a constant ``fps`` via the fps filter (duplicates or drops frames)."""
    return _reencode(source, out_dir / f"fps_{_vfps(fps)}.mp4", vf=f"fps={_vfps(fps)}",
                     extra=["-r", _vfps(fps)])
