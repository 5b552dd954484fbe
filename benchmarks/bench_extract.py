"""Issue 2 benchmarks: face-extraction overhead over bare MediaPipe, and sequential decode vs seeking.

Run: .venv/bin/python benchmarks/bench_extract.py   (prints markdown tables)
     .venv/bin/python benchmarks/bench_extract.py decode [--work DIR] [--write]   (issue 13, below)

1. Per-frame cost of a2bs's FaceTracker (blendshape mapping + pose) on already-decoded frames, and
   of the whole face path (sequential decode + landmarking), against MediaPipe's bare
   ``detect_for_video`` on the same decoded frames, measured side by side in one run.
2. Clips back to back, as an extraction actor runs them: one FaceTracker (which starts a fresh
   landmarker for every clip, so labels do not depend on the clips before) against one bare
   landmarker reused across the same clips.
3. On a 60 fps re-encode (frame interval 2), sequential grab/retrieve against the seed's
   seek-per-selected-frame loop (``cap.set(CAP_PROP_POS_FRAMES)``): identical frames, speed-up.

Issue 13 (``decode``, bench_decode.py): 1080p H.264 takes made by upscaling demo clips; decode cost of
the OpenCV reader against the PyAV reader (scaling inside the colour conversion), decode + track against
bare MediaPipe, labels against ``video.max_frame_side``, and the cost of a segment start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import bare_landmarker, demo_clips, machine, table  # noqa: E402

from a2bs.config import VideoConfig  # noqa: E402
from a2bs.extract.audio import ffmpeg_exe  # noqa: E402
from a2bs.extract.face import FaceTracker  # noqa: E402
from a2bs.extract.video import frame_interval_for, iter_frames  # noqa: E402


def decoded_frames(path: Path) -> list[tuple[int, float, np.ndarray]]:
    _, it = iter_frames(path, fps_limit=1000.0)
    return list(it)


def bare_mediapipe(frames: list[tuple[int, float, np.ndarray]]) -> float:
    """Seconds for one bare landmarker over `frames`."""
    import mediapipe as mp

    with bare_landmarker() as lm:
        t0 = time.perf_counter()
        for i, (_, _, rgb) in enumerate(frames):
            lm.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), i * 33)
        return time.perf_counter() - t0


def ours_on_decoded(frames: list[tuple[int, float, np.ndarray]], n_clips: int = 1) -> float:
    """Seconds for one FaceTracker tracking `frames` as `n_clips` clips in turn."""
    parts = np.array_split(np.arange(len(frames)), n_clips)
    with FaceTracker(VideoConfig()) as tracker:
        t0 = time.perf_counter()
        for idx in parts:
            tracker.track(frames[i] for i in idx)
        return time.perf_counter() - t0


def ours_with_decode(path: Path) -> tuple[float, int]:
    with FaceTracker(VideoConfig()) as tracker:
        t0 = time.perf_counter()
        _, frames = iter_frames(path, fps_limit=30.0)
        track = tracker.track(frames)
        return time.perf_counter() - t0, len(track.frame_index)


def seek_loop(path: Path, fps_limit: float) -> list[np.ndarray]:
    """The seed's method: one seek per selected frame."""
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    interval = frame_interval_for(cap.get(cv2.CAP_PROP_FPS), fps_limit)
    out = []
    for idx in range(0, total, interval):
        cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        ok, bgr = cap.read()
        if ok:
            out.append(bgr)
    cap.release()
    return out


def sequential(path: Path, fps_limit: float) -> list[np.ndarray]:
    _, it = iter_frames(path, fps_limit)
    return [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for _, _, rgb in it]


def main() -> None:
    clips = demo_clips(3)
    rows = []
    totals = np.zeros(4)
    for clip in clips:
        frames = decoded_frames(clip)
        # Alternate the order so drift on a noisy machine hits both sides alike.
        bare1 = bare_mediapipe(frames)
        ours1 = ours_on_decoded(frames)
        full, n_full = ours_with_decode(clip)
        bare2 = bare_mediapipe(frames)
        bare = min(bare1, bare2)
        n = len(frames)
        totals += [bare, ours1, full, n]
        rows.append([clip.name, n, f"{1000 * bare / n:.2f}", f"{1000 * ours1 / n:.2f}", f"{ours1 / bare:.3f}",
                     f"{1000 * full / n_full:.2f}", f"{full / bare * n / n_full:.3f}"])
    rows.append(["**all**", int(totals[3]), f"{1000 * totals[0] / totals[3]:.2f}",
                 f"{1000 * totals[1] / totals[3]:.2f}", f"**{totals[1] / totals[0]:.3f}**",
                 f"{1000 * totals[2] / totals[3]:.2f}", f"**{totals[2] / totals[0]:.3f}**"])
    print(f"Machine: {machine()}\n")
    print(table(["clip", "frames", "bare ms/frame", "FaceTracker ms/frame", "ratio",
                 "decode+track ms/frame", "ratio"], rows))

    # The same decoded clips back to back: the tracker's fresh landmarker per clip vs one reused bare one.
    frames = [f for clip in clips for f in decoded_frames(clip)]
    bare1 = bare_mediapipe(frames)
    ours = ours_on_decoded(frames, len(clips))
    ours_one = ours_on_decoded(frames, 1)  # the same frames as one clip: no restart
    bare = min(bare1, bare_mediapipe(frames))
    print()
    print(table(["clips back to back", "frames", "bare, one landmarker s", "FaceTracker, fresh per clip s", "ratio",
                 "restart s per clip"],
                [[len(clips), len(frames), f"{bare:.2f}", f"{ours:.2f}", f"**{ours / bare:.3f}**",
                  f"{(ours - ours_one) / max(len(clips) - 1, 1):.2f}"]]))

    with tempfile.TemporaryDirectory() as tmp:
        clip60 = Path(tmp) / "clip60.mp4"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(clips[0]), "-vf", "fps=60", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-g", "120", "-an", str(clip60)], check=True)
        t0 = time.perf_counter()
        a = sequential(clip60, 30.0)
        t_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = seek_loop(clip60, 30.0)
        t_seek = time.perf_counter() - t0
        identical = len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
        print()
        print(table(["60 fps clip, 30 fps limit", "frames kept", "sequential s", "seek-per-frame s", "speed-up",
                     "identical frames"],
                    [[clips[0].name, len(a), f"{t_seq:.2f}", f"{t_seek:.2f}", f"**{t_seek / t_seq:.1f}x**",
                      identical]]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["decode"]:
        from bench_decode import main as decode_main

        decode_main(sys.argv[2:])
    else:
        main()
