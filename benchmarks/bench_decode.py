"""Issue 13: decoding 1080p footage. Run: .venv/bin/python benchmarks/bench_extract.py decode [--work DIR] [--write]

Takes: the first demo clips concatenated, upscaled to 1080 px high and letterboxed to 1920x1080, with
light temporal noise (camera sensor noise: without it x264 codes the upscaled frames, and the 60 fps
copy's repeated frames, as near-skips and decoding is unrealistically cheap), H.264 CRF 18, 2 s GOP,
at 30 and 60 fps. Everything below runs side by side in one run, on the same takes:

1. decode ms per kept frame (30 fps limit): the previous OpenCV reader (grab/retrieve, BGR at full
   size, cv2 resize, cvtColor) against a2bs.extract.video (PyAV; scaling inside the colour
   conversion) at full size and at the default ``video.max_frame_side``; PyAV without frame threads.
2. decode + track (FaceTracker over iter_frames) against bare MediaPipe ``detect_for_video`` on the
   same frames already decoded, at full size and at the default max_frame_side.
3. labels against max_frame_side: blendshape and pose differences from the full-size labels, next to
   the difference between the full-size 1080p labels and the labels of the source clips (the noise
   of one upscale + re-encode).
4. a segment start: seek + lead-in decode and the tracked warm-up (``extract.warmup_s``) of a segment
   in the middle of the take, against the same frames inside a sequential pass.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import bare_landmarker, demo_clips, machine, table, write_readme_section

from a2bs.config import Config, VideoConfig
from a2bs.extract import video
from a2bs.extract.audio import ffmpeg_exe
from a2bs.extract.face import FaceTracker
from a2bs.extract.video import iter_frames

SECTION = "## Decoding 1080p footage (issue 13)"
N_CLIPS = 3
CHUNK = 100  # frames decoded ahead for the bare-MediaPipe side (a 1080p RGB frame is 6 MB)
SIDES = [0, 960, 640, 480, 320, 256]
SECONDS = 5.0  # of each take measured (the machine is shared and slow: keep a run within ~20 min)


def make_take(work: Path, fps: int, seconds: float) -> Path:
    """A 1080p H.264 take from the first demo clips, at most `seconds` long (cached in `work`)."""
    out = work / f"take_1080p{fps}.mp4"
    if out.is_file():
        return out
    clips = demo_clips(N_CLIPS)
    inputs = [a for c in clips for a in ("-i", str(c))]
    graph = "".join(f"[{i}:v]" for i in range(len(clips))) + f"concat=n={len(clips)}:v=1:a=0,fps={fps}," \
        "scale=-2:1080:flags=bicubic,pad=1920:1080:(ow-iw)/2:0,noise=alls=4:allf=t,format=yuv420p[v]"
    import subprocess

    tmp = out.with_suffix(".tmp.mp4")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]", "-t", f"{seconds:g}",
                    "-c:v", "libx264", "-preset", "fast", "-crf", "18", "-g", str(2 * fps), str(tmp)], check=True)
    tmp.rename(out)
    return out


def cv2_frames(path: Path, fps_limit: float, max_side: int):
    """The previous reader (OpenCV's FFmpeg backend), for comparison."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS)
    interval = video.frame_interval_for(fps, fps_limit)
    index = 0
    while index < SECONDS * fps and cap.grab():
        if index % interval == 0:
            _, bgr = cap.retrieve()
            if max_side and max(bgr.shape[:2]) > max_side:
                scale = max_side / max(bgr.shape[:2])
                bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            yield index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        index += 1
    cap.release()


def timed_decode(frames) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in frames)
    return time.perf_counter() - t0, n


def pyav_frames(path: Path, max_side: int, thread_type: str = "AUTO"):
    video.DECODER_THREAD_TYPE = thread_type
    try:
        yield from iter_frames(path, 30.0, max_side, end_s=SECONDS)[1]
    finally:
        video.DECODER_THREAD_TYPE = "AUTO"


def bare_mediapipe(path: Path, max_side: int) -> tuple[float, int]:
    """Seconds of one bare landmarker over the kept frames, decoded ahead in chunks (not timed)."""
    import mediapipe as mp

    elapsed, n = 0.0, 0
    frames = iter_frames(path, 30.0, max_side, end_s=SECONDS)[1]
    with bare_landmarker() as lm:
        while chunk := [f for _, f in zip(range(CHUNK), frames)]:
            t0 = time.perf_counter()
            for _, time_s, rgb in chunk:
                lm.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), int(time_s * 1000))
            elapsed += time.perf_counter() - t0
            n += len(chunk)
    return elapsed, n


def track(path: Path, max_side: int, start_s: float = 0.0, end_s: float | None = None) -> tuple[float, object]:
    """Seconds of FaceTracker over iter_frames (decode + track), and the track."""
    with FaceTracker(VideoConfig()) as tracker:
        t0 = time.perf_counter()
        result = tracker.track(iter_frames(path, 30.0, max_side, start_s, SECONDS if end_s is None else end_s)[1])
        return time.perf_counter() - t0, result


def speed_tables(takes: dict[int, Path], side: int) -> tuple[str, float]:
    """The decode and decode+track tables, and decode+track s/frame of the 30 fps take at `side`."""
    dec_rows, track_rows = [], []
    per_frame_s = 0.0
    for fps, path in takes.items():
        runs: dict[str, list[float]] = {}
        n = 0
        for _ in range(2):  # every side twice, alternating, each one's best
            decoders = [("cv2 full", cv2_frames, (path, 30.0, 0)), (f"cv2 {side}", cv2_frames, (path, 30.0, side)),
                        ("pyav full", pyav_frames, (path, 0)), (f"pyav {side}", pyav_frames, (path, side)),
                        (f"pyav {side}, no frame threads", pyav_frames, (path, side, "SLICE"))]
            for name, frames, args in decoders:
                s, n = timed_decode(frames(*args))
                runs.setdefault(name, []).append(s)
            for ms in (0, side):
                s, _ = bare_mediapipe(path, ms)
                runs.setdefault(f"bare {ms}", []).append(s)
                s, _ = track(path, ms)
                runs.setdefault(f"track {ms}", []).append(s)
        best = {k: 1000 * min(v) / n for k, v in runs.items()}
        per_frame_s = best[f"track {side}"] / 1000 if fps == 30 else per_frame_s
        dec_rows.append([f"1080p {fps} fps", n, *(f"{best[k]:.2f}" for k in
                         ["cv2 full", f"cv2 {side}", "pyav full", f"pyav {side}", f"pyav {side}, no frame threads"])])
        for ms in (0, side):
            label = "full size" if not ms else f"max_frame_side={ms}"
            track_rows.append([f"1080p {fps} fps", label, n, f"{best[f'bare {ms}']:.2f}", f"{best[f'track {ms}']:.2f}",
                               f"**{best[f'track {ms}'] / best[f'bare {ms}']:.3f}**",
                               f"{best[f'track {ms}'] / best['bare 0']:.3f}"])
    return "\n\n".join([
        table(["take", "kept frames", "cv2 full ms/frame", f"cv2 {side} ms/frame", "PyAV full ms/frame",
               f"PyAV {side} ms/frame", f"PyAV {side}, slice threads only"], dec_rows),
        table(["take", "frames fed", "kept frames", "bare MediaPipe ms/frame", "decode+track ms/frame",
               "ratio (same frames)", "ratio vs bare at full size"], track_rows)]), per_frame_s


def label_table(take: Path, sources: list[Path]) -> str:
    """Label differences against max_frame_side on the 30 fps take."""
    with FaceTracker(VideoConfig()) as tracker:
        src = [tracker.track(iter_frames(c, 30.0, end_s=SECONDS)[1]) for c in sources[:1]]
        ref_shapes = np.concatenate([t.blendshapes for t in src])
        ref_pose = np.concatenate([t.pose for t in src])
        by_side = {s: tracker.track(iter_frames(take, 30.0, s, end_s=SECONDS)[1]) for s in SIDES}
    full = by_side[0]
    n = min(len(full.blendshapes), len(ref_shapes))

    def row(name: str, shapes: np.ndarray, pose: np.ndarray, base_shapes: np.ndarray, base_pose: np.ndarray):
        d = np.abs(shapes[:n] - base_shapes[:n])
        dp = np.abs(pose[:n, :3] - base_pose[:n, :3]) * 1000
        dq = np.abs(pose[:n, 3:] - base_pose[:n, 3:])
        return [name, f"{d.mean():.4f}", f"{np.percentile(d.max(axis=1), 99):.3f}", f"{dp.mean():.2f}",
                f"{dq.mean():.4f}"]

    rows = [row("noise: full-size 1080p vs the 384 px source clips", full.blendshapes, full.pose, ref_shapes, ref_pose)]
    for s in SIDES[1:]:
        t = by_side[s]
        rows.append(row(f"max_frame_side={s} vs full size", t.blendshapes, t.pose, full.blendshapes, full.pose))
    return table(["1080p 30 fps take, labels", "blendshapes mean abs diff", "p99 of per-frame max",
                  "position mean abs diff mm", "rotation quaternion mean abs diff"], rows)


def segment_table(take: Path, side: int, per_frame: float) -> str:
    """A segment that starts mid-take (seek + lead-in + warm-up) against the same frames in a sequential
    pass (`per_frame`: decode+track seconds per frame of the sequential pass)."""
    warmup_s = Config().extract.warmup_s
    start_s, length_s = 19.9, 4.0
    frames = iter_frames(take, 30.0, side, start_s=start_s - warmup_s, end_s=start_s + length_s)[1]
    t0 = time.perf_counter()
    next(frames)
    to_first = time.perf_counter() - t0
    frames.close()
    seg_s, result = track(take, side, start_s - warmup_s, start_s + length_s)
    kept = int((result.time_s >= start_s).sum())
    extra = seg_s - kept * per_frame
    rows = [[f"{start_s:.1f}-{start_s + length_s:.1f} s", frames.seeks, frames.decoded_before_first,
             f"{1000 * to_first:.0f}", len(result.frame_index) - kept, f"{1000 * extra:.0f}",
             f"{100 * extra / (60 * 30 * per_frame):.1f} %"]]
    return table(["segment of the 1080p 30 fps take", "seeks", "frames decoded before the first kept",
                  "seek + lead-in ms", "warm-up frames tracked", "segment start costs ms", "of a 60 s segment"], rows)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_extract.py decode")
    parser.add_argument("--work", help="folder that keeps the 1080p takes between runs (default: temporary)")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/README.md")
    args = parser.parse_args(argv)
    side = VideoConfig().max_frame_side or 640
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # The 30 fps take is long enough for a segment at 20 s; the 60 fps one only for the speed tables.
        takes = {30: make_take(work, 30, 60.0), 60: make_take(work, 60, SECONDS + 1)}
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = os.getloadavg()[0]
        header = (f"`nice .venv/bin/python benchmarks/bench_extract.py decode --write`. {machine()}; run {started}, "
                  f"load average {load:.1f} at the start (shared machine: ratios are side by side, best of two).")
        parts = [SECTION, "", header, ""]
        speed, per_frame = speed_tables(takes, side)
        parts += [speed, "", label_table(takes[30], demo_clips(N_CLIPS)), "", segment_table(takes[30], side, per_frame)]
    text = "\n".join(parts)
    print(text)
    if args.write:
        write_readme_section(SECTION, text)
