"""Issue 3 benchmarks: Ray Data extraction scaling (1 vs 2 actors) and overhead over bare MediaPipe.

Run: .venv/bin/python benchmarks/bench_pipeline.py [N_CLIPS]   (prints markdown tables)

The lower bound of extraction cost is MediaPipe's bare per-frame time (measured here on the same
clips' decoded frames); the pipeline's overhead is how far the 2-actor wall time sits above
``bare_seconds / 2 cores``. Everything runs in one process, side by side, on one local Ray.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
from bench_extract import bare_mediapipe, decoded_frames  # noqa: E402
from common import demo_clips, machine, table  # noqa: E402

from a2bs.build.pipeline import run_build  # noqa: E402
from a2bs.config import load_config  # noqa: E402
from a2bs.extract.pipeline import run_extract  # noqa: E402


def main() -> None:
    n_clips = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    clips = demo_clips()[:: max(1, len(demo_clips()) // n_clips)][:n_clips]
    bare_s, frames = 0.0, 0
    for c in clips:
        f = decoded_frames(c)
        bare_s += bare_mediapipe(f)
        frames += len(f)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "in", "spk")
        src.mkdir(parents=True)
        for c in clips:
            shutil.copy(c, src / c.name)  # copies: symlinks out of the input folder are refused
        # Warm-up: worker processes and imports, so neither side pays Ray's start-up.
        run_extract([str(src / next(iter(os.listdir(src))))], f"{tmp}/warm", load_config(None, ["ray.extract_actors=2"]),
                    progress=False)
        results = {}
        # Two rounds each on small sets (noise); one round when the set is large enough to average out.
        for actors in ((1, 2, 1, 2) if len(clips) <= 16 else (1, 2)):
            cfg = load_config(None, [f"ray.extract_actors={actors}"])
            out = f"{tmp}/out{actors}_{len(results)}"
            t0 = time.perf_counter()
            s = run_extract([str(src.parent)], out, cfg, progress=False)
            wall = time.perf_counter() - t0
            assert s.ok == len(clips), s.failures
            results.setdefault(actors, []).append((wall, s))
            if actors == 2 and "build" not in results:
                t0 = time.perf_counter()
                b = run_build(out, f"{tmp}/shards", cfg)
                results["build"] = (time.perf_counter() - t0, b)
    w1 = min(w for w, _ in results[1])
    w2 = min(w for w, _ in results[2])
    s2 = results[2][0][1]
    hours = s2.hours
    limit = bare_s / 2.0
    print(f"Machine: {machine()}\n")
    print(table(["clips", "footage min", "frames", "1 actor s", "2 actors s", "scaling 1->2"],
                [[len(clips), f"{hours * 60:.1f}", s2.frames, f"{w1:.1f}", f"{w2:.1f}", f"**{w1 / w2:.2f}**"]]))
    print()
    print(table(["bare MediaPipe limit s (2 cores)", "pipeline s", "overhead", "frames/s",
                 "footage h per core-hour", "build s (sequences)"],
                [[f"{limit:.1f}", f"{w2:.1f}", f"**{(w2 / limit - 1) * 100:.0f}%**", f"{s2.frames / w2:.1f}",
                  f"{hours / (w2 * 2 / 3600):.2f}", f"{results['build'][0]:.1f} ({sum(results['build'][1].rows.values())})"]]))
    ray.shutdown()


if __name__ == "__main__":
    main()
