"""Issue 3 and 13 benchmarks: segment-parallel extraction on the Ray Data actor pool.

Run: .venv/bin/python benchmarks/bench_pipeline.py take     (~8 min: a 10-minute take on 1 vs 2 actors)
     .venv/bin/python benchmarks/bench_pipeline.py rss      (~12 min: peak actor RSS for 1, 10 and 60-minute
                                                            takes on 2 actors, re-encoded at 10 fps)
     .venv/bin/python benchmarks/bench_pipeline.py clips    (~7 min: the 48 demo clips at extract.segment_s
                                                            0 vs 60, and the overhead over bare MediaPipe)

Each mode writes its tables into benchmarks/README.md. Everything in a mode runs in one process, side
by side, on one local Ray (``num_cpus=2``) after a warm-up run, so Ray's start-up is paid by neither side.
The lower bound of extraction cost is MediaPipe's bare per-frame time on the same decoded frames
(``bench_extract.bare_mediapipe``) divided by the 2 cores; the time a run sits above it is split
with the run's own records: audio (``audio_s``), decode + tracking beyond bare MediaPipe
(``extract_s - audio_s - bare``), and the rest (Ray, probing, writing, finishing, idle actors).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import ray  # noqa: E402
from bench_extract import bare_mediapipe, decoded_frames  # noqa: E402
from common import demo_clips, machine, table, write_readme_section  # noqa: E402

from a2bs.config import load_config  # noqa: E402
from a2bs.extract.audio import ffmpeg_exe  # noqa: E402
from a2bs.extract.pipeline import run_extract  # noqa: E402
from a2bs.runtime.batch import SUMMARY_NAME  # noqa: E402

TAKE_S = 600.0
# The memory run's takes: 1, 10 and 60 minutes, re-encoded at 10 fps so the 60-minute take fits in
# minutes. Every segment is still 60 s of footage with the same per-segment work apart from the frame
# count; the growth it looks for is per segment (benchmarks/measure_actor_rss.py).
RSS_TAKES_MIN = (1, 10, 60)
RSS_TAKE_FPS = 10.0


def make_take(clips: list[Path], seconds: float, out: Path, fps: float = 0.0) -> Path:
    """One continuous take of about `seconds`: demo clips joined and re-encoded (H.264 + AAC), at `fps`
    frames per second (0: the clips' own 30 fps)."""
    clip_s = 10.67
    chosen = [clips[i % len(clips)] for i in range(int(seconds / clip_s + 0.5))]
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.parent.parent / f"{out.stem}.txt"  # outside the input folder
    listing.write_text("".join(f"file '{c}'\n" for c in chosen))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-af", "aresample=async=1:first_pts=0", "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
                    *(["-r", f"{fps:g}"] if fps else []), "-c:a", "aac", str(out)], check=True)
    return out


class ActorRss:
    """Peak RSS of the Ray Data actor processes (sampled every 0.2 s while a run is going)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "MapWorker" in cmd or "_PoolActor" in cmd:
                    self.peak_mb = max(self.peak_mb, p.info["memory_info"].rss / 2**20)

    def __enter__(self) -> "ActorRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _run(inputs: list[str], out: str, *overrides: str) -> tuple[float, object, list[dict]]:
    import json

    cfg = load_config(None, list(overrides))
    t0 = time.perf_counter()
    summary = run_extract(inputs, out, cfg, progress=False)
    wall = time.perf_counter() - t0
    assert summary.failed == 0, summary.failures
    return wall, summary, json.loads(Path(out, SUMMARY_NAME).read_text())["segments"]


def _warm(tmp: str, clip: Path) -> None:
    run_extract([str(clip)], f"{tmp}/warm", load_config(None, ["ray.extract_actors=2"]), progress=False)


def bench_take(tmp: str) -> str:
    clips = demo_clips()
    take = make_take(clips, TAKE_S, Path(tmp, "in", "actor", "take.mp4"))
    _warm(tmp, clips[0])
    runs = {actors: _run([str(take)], f"{tmp}/take{actors}", f"ray.extract_actors={actors}") for actors in (1, 2)}
    (w1, s, _), (w2, _, _) = runs[1], runs[2]
    return table(["take min", "segments (60 s)", "frames", "1 actor s", "2 actors s", "speed-up 1->2",
                  "frames/s (2 actors)"],
                 [[f"{s.hours * 60:.1f}", s.segments, s.frames, f"{w1:.1f}", f"{w2:.1f}", f"**{w1 / w2:.2f}**",
                   f"{s.frames / w2:.1f}"]])


def bench_rss(tmp: str) -> str:
    """Peak RSS of an extraction actor for takes of RSS_TAKES_MIN minutes on 2 actors, side by side."""
    clips = demo_clips()
    takes = {m: make_take(clips, m * 60.0, Path(tmp, f"in{m}", "actor", f"take{m}.mp4"), RSS_TAKE_FPS)
             for m in RSS_TAKES_MIN}
    _warm(tmp, clips[0])
    rows = []
    for minutes, take in takes.items():
        with ActorRss() as rss:
            wall, s, _ = _run([str(take)], f"{tmp}/rss{minutes}", "ray.extract_actors=2")
        rows.append([f"{s.hours * 60:.1f}", s.segments, s.frames, f"{wall:.0f}", f"{rss.peak_mb:.0f}"])
    base = float(rows[0][-1])
    for r in rows:
        r.append(f"**{float(r[-1]) / base:.2f}**")
    return table(["take min", "segments (60 s)", "frames (10 fps)", "2 actors s", "peak RSS of an extraction actor MB",
                  "vs 1 min"], rows)


def bench_clips(tmp: str) -> str:
    clips = demo_clips()[:48]
    bare_s, frames = 0.0, 0
    for c in clips:
        f = decoded_frames(c)
        bare_s += bare_mediapipe(f)
        frames += len(f)
    src = Path(tmp, "in", "spk")
    src.mkdir(parents=True)
    for c in clips:
        shutil.copy(c, src / f"{c.parent.name}_{c.name}")  # copies: symlinks out of the input folder are refused
    _warm(tmp, clips[0])
    rows, split = [], []
    limit = bare_s / 2.0
    for segment_s in (0, 60):
        wall, s, segs = _run([str(src.parent)], f"{tmp}/out{segment_s}", "ray.extract_actors=2",
                             f"extract.segment_s={segment_s}")
        work = sum(r["extract_s"] for r in segs)
        audio = sum(r["audio_s"] for r in segs)
        rows.append([segment_s, len(clips), s.segments, s.frames, f"{wall:.1f}", f"{s.frames / wall:.1f}",
                     f"{limit:.1f}", f"**{(wall / limit - 1) * 100:.0f}%**"])
        core_s = 2 * wall
        split.append([segment_s, f"{bare_s:.1f}", f"{audio:.1f} ({audio / bare_s * 100:.0f}%)",
                      f"{work - audio - bare_s:.1f} ({(work - audio - bare_s) / bare_s * 100:.0f}%)",
                      f"{core_s - work:.1f} ({(core_s - work) / bare_s * 100:.0f}%)"])
    return "\n".join([
        table(["segment_s", "clips", "segments", "frames", "2 actors s", "frames/s", "bare MediaPipe limit s",
               "overhead"], rows),
        "",
        table(["segment_s", "bare MediaPipe core-s", "audio core-s", "decode + tracker beyond bare core-s",
               "rest: Ray, probe, writes, idle core-s (2 x wall - work)"], split)])


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "clips"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        body = {"take": bench_take, "rss": bench_rss, "clips": bench_clips}[mode](tmp)
    ray.shutdown()
    head = (f"`.venv/bin/python benchmarks/bench_pipeline.py {mode}` ({machine()}; load average {load:.1f} at the "
            f"start, {os.getloadavg()[0]:.1f} at the end). One local Ray (`num_cpus=2`), after a warm-up run.\n\n")
    title = {"take": "## Long takes on 2 actors (issue 13)",
             "rss": "## Long takes on 2 actors: actor memory (issue 13)",
             "clips": "## Ray Data extraction: demo clips, segments and overhead (issues 3, 13)"}[mode]
    print(body)
    write_readme_section(title, f"{title}\n\n{head}{body}\n")


if __name__ == "__main__":
    main()
