"""Issue 8 benchmark: peak memory of extracting one long clip (1, 5 and 30 minutes).

Run: .venv/bin/python benchmarks/bench_memory.py [MINUTES ...]   (prints a markdown table)

Each clip is the first demo clip looped (stream copy, so building it is quick) and extracted in a
fresh subprocess (`a2bs extract --no-ray`), whose peak RSS comes from getrusage. Frames are
streamed through MediaPipe one at a time, so peak memory should grow only with the clip's features
(~40 MB per hour), not with its frames (30 minutes of 384x384 RGB frames would be 24 GB).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import demo_clips, machine, table  # noqa: E402
from media_factory import make_long_clip  # noqa: E402


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` to completion; return (peak RSS of the child in MB, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:  # ru_maxrss of children is a running max: keep runs in increasing size
        raise RuntimeError("run clips in increasing length so each child's peak is visible")
    return peak / 1024.0, time.perf_counter() - t0


def main() -> None:
    minutes = [float(m) for m in sys.argv[1:]] or [1.0, 5.0, 30.0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in sorted(minutes):
            clip = make_long_clip(demo_clips()[0], Path(tmp) / f"long_{m:g}min.mp4", m)
            out = Path(tmp) / f"out_{m:g}"
            rss, wall = peak_rss_mb([sys.executable, "-m", "a2bs.cli", "extract", str(clip), "--out", str(out),
                                     "--no-ray", "--quiet"])
            summary = json.loads((out / "_summary.json").read_text())
            frames = summary["frames"]
            rows.append([f"{m:g}", frames, f"{rss:.0f}", f"{wall:.0f}", f"{clip.stat().st_size / 2**20:.1f}"])
            print(rows[-1], flush=True)
    print(f"\nMachine: {machine()}\n")
    print(table(["clip minutes", "frames", "peak RSS MB", "wall s", "clip MB"], rows))


if __name__ == "__main__":
    main()
