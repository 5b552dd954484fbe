"""Issue 13: does an extraction actor's memory grow with the segments it has run?

Run: .venv/bin/python benchmarks/measure_actor_rss.py [--minutes 12] [--fps 10] [--modes process,ray]
                                                      [--heap off,on]

Makes one take from demo clips (``bench_pipeline.make_take``, re-encoded at ``--fps`` to bound CPU)
and, for each mode, in a fresh process, runs one part of an actor's per-segment work on the take's
consecutive 60 s segments, printing after each segment the RSS (psutil) and what glibc malloc holds
in use and holds free (``mallinfo2``). RSS that grows while malloc's in-use bytes stay flat and its
free bytes grow is memory freed but kept in malloc's heaps (a2bs.extract.heap); both growing would
be a leak.

Modes: ``landmarker`` = a fresh landmarker started and closed, no frames; ``audio`` = audio decode +
features; ``decode`` = decoding alone; ``track`` = decode + fresh landmarker + tracking;
``process`` = ``SegmentExtractor.process`` (the actor's whole task: audio, decode, fresh landmarker,
tracking, Parquet + pose writes); ``ray`` = ``process`` on one Ray Data actor
(``a2bs.runtime.batch.map_items``). ``--heap off`` runs them without a2bs.extract.heap's two calls
(the code before the fix), ``on`` with them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("landmarker", "audio", "decode", "track", "process", "ray")


def memory_mb() -> tuple[float, float, float]:
    """(RSS, malloc in use, malloc free) in MB for this process (glibc)."""
    import psutil

    class MallInfo2(ctypes.Structure):  # defined here: a Ray actor gets this function by value
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (psutil.Process().memory_info().rss / 2**20, (info.uordblks + info.hblkhd) / 2**20,
            info.fordblks / 2**20)


def _heap_off() -> None:
    """The code before the fix: SegmentExtractor without a2bs.extract.heap's calls."""
    from a2bs.extract import pipeline

    pipeline.fix_mmap_threshold = lambda: False
    pipeline.release_free_memory = lambda: None


class _MeasuredExtractor:
    """A SegmentExtractor whose rows also carry the actor's memory after the segment."""

    def __init__(self, heap: bool, **kwargs) -> None:
        from a2bs.extract.pipeline import SegmentExtractor

        if not heap:
            _heap_off()
        self.inner = SegmentExtractor(**kwargs)

    def process(self, item: dict) -> dict:
        return {**self.inner.process(item), "memory_mb": list(memory_mb())}


def run_mode(mode: str, take: str, out: str, n_segments: int, heap: bool) -> list[tuple[float, float, float]]:
    """``memory_mb()`` after each of the take's first `n_segments` segments."""
    from a2bs.config import config_to_dict, load_config
    from a2bs.extract.audio import range_audio_features
    from a2bs.extract.plan import probe_input, segment_tasks
    from a2bs.extract.video import iter_frames
    from a2bs.runtime.batch import map_items
    from a2bs.runtime.inputs import ManifestEntry

    cfg = load_config(None, [])
    probed = probe_input(ManifestEntry(take, "actor", str(Path(take).parent)), take)
    tasks = segment_tasks(probed, cfg.extract.segment_s, set())[:n_segments]
    kwargs = {"heap": heap, "cfg_dict": config_to_dict(cfg), "clips_dir": out}
    if mode == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rows = sorted(map_items(tasks, _MeasuredExtractor, kwargs, use_ray=True, ray_cfg=cfg.ray, n_actors=1,
                                progress=False), key=lambda r: r["segment"])
        assert all(r["status"] == "ok" for r in rows), rows
        return [tuple(r["memory_mb"]) for r in rows]
    actor = _MeasuredExtractor(**kwargs)
    tracker, points = actor.inner.tracker, []

    def frames(task: dict):
        return iter_frames(take, cfg.video.fps_limit, cfg.video.max_frame_side, task["start_s"], task["end_s"])[1]

    for t in tasks:
        if mode == "process":
            assert actor.process(t)["status"] == "ok"
        elif mode == "track":
            tracker.track_raw(frames(t))
        elif mode == "decode":
            for _ in frames(t):
                pass
        elif mode == "audio":
            range_audio_features(take, cfg.audio, t["start_s"], t["end_s"], cfg.extract.audio_margin_s)
        elif mode == "landmarker":
            tracker.close()
            tracker._landmarker = tracker._start()
        points.append(memory_mb())
    actor.inner.close()
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=12, help="take length = segments run")
    ap.add_argument("--fps", type=float, default=10.0, help="frame rate of the take (0: the clips' 30 fps)")
    ap.add_argument("--modes", default="process,ray", help=f"some of {','.join(MODES)}")
    ap.add_argument("--heap", default="off,on", help="without (off) and/or with (on) a2bs.extract.heap")
    ap.add_argument("--child", nargs=5, metavar=("MODE", "TAKE", "OUT", "N", "HEAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, take, out, n, heap = args.child
        print(json.dumps(run_mode(mode, take, out, int(n), heap == "on")))
        return
    from bench_pipeline import make_take
    from common import demo_clips, machine, table

    n = args.minutes
    load = os.getloadavg()[0]
    rows = []
    shown = sorted({0, 1, 4, 9, n - 1} & set(range(n)))
    with tempfile.TemporaryDirectory() as tmp:
        take = make_take(demo_clips(), n * 60.0, Path(tmp, "in", "actor", "take.mp4"), args.fps)
        for mode in args.modes.split(","):
            for heap in args.heap.split(","):
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(take), f"{tmp}/{mode}-{heap}",
                                      str(n), heap], stdout=subprocess.PIPE, text=True, check=True).stdout
                pts = json.loads(out.strip().splitlines()[-1])
                print(mode, heap, " ".join(f"{r:.0f}/{u:.0f}/{f:.0f}" for r, u, f in pts), flush=True)
                rows.append([mode, heap] + [f"{pts[i][0]:.0f} / {pts[i][1]:.0f} / {pts[i][2]:.0f}" for i in shown]
                            + [f"{(pts[-1][0] - pts[1][0]) / max(1, n - 2):+.1f}"])
    print(f"\n{machine()}; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"take {n} min at {args.fps:g} fps, 60 s segments\n")
    print(table(["mode", "heap fix"] + [f"RSS / malloc in use / free MB after {i + 1}" for i in shown]
                + ["RSS MB per segment (2nd to last)"], rows))


if __name__ == "__main__":
    main()
