"""How a segment's warm-up changes its first face frames, against a whole-file pass (docs/scaling.md).

Run: .venv/bin/python benchmarks/measure_warmup.py TAKE.mp4 [SEGMENT_S]   (prints a markdown table)

For each segment start of the take and each warm-up, a fresh FaceLandmarker tracks from
``start - warmup`` to ``start + 5 s``; its frames from ``start`` on are compared with the same
frames of one whole-file pass: the share that differ at all, and the largest (and 99th-percentile)
difference of blendshape scores, head rotation and head position in the first second after a
start and after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

from a2bs.config import Config  # noqa: E402
from a2bs.extract.face import FaceTracker  # noqa: E402
from a2bs.extract.media import probe  # noqa: E402
from a2bs.extract.store import plan_segments  # noqa: E402
from a2bs.extract.video import iter_frames  # noqa: E402

WARMUPS_S = (0.0, 0.5, 1.0, 2.0)
COMPARE_S = 5.0
SETTLE_S = 1.0


def _diff(a, b) -> np.ndarray:
    """Per frame: blendshape score difference (max over the 52), rotation angle in degrees and
    translation difference in mm, as (F, 3)."""
    shapes = np.abs(a.blendshapes - b.blendshapes).max(axis=1)
    rel = np.einsum("fji,fjk->fik", a.rotation, b.rotation)
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    trans = 10 * np.abs(a.translation_cm - b.translation_cm).max(axis=1)
    return np.stack([shapes, angle, trans], axis=1)


def main() -> None:
    take, segment_s = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 40.0
    cfg = Config()
    starts = [s.start_s for s in plan_segments(probe(take).duration_s, segment_s)][1:]
    with FaceTracker(cfg.video) as tracker:
        whole = tracker.track_raw(iter_frames(take, cfg.video.fps_limit)[1])
        rows = []
        for warm in WARMUPS_S:
            early, late = [], []  # differences in the first SETTLE_S after a start, and after it
            for start in starts:
                seg = tracker.track_raw(iter_frames(take, cfg.video.fps_limit, 0, max(0.0, start - warm),
                                                    start + COMPARE_S)[1])
                seg = seg.select(seg.time_s >= start - 1e-6)
                ref = whole.select(np.isin(whole.frame_index, seg.frame_index))
                d = _diff(seg, ref)
                first = seg.time_s < start + SETTLE_S
                early.append(d[first])
                late.append(d[~first])
            early, late = np.concatenate(early), np.concatenate(late)
            rows.append([f"{warm:g}", len(starts), f"{(np.concatenate([early, late]) > 0).any(axis=1).mean():.0%}"]
                        + [f"{v:.3g}" for v in early.max(axis=0)] + [f"{v:.3g}" for v in late.max(axis=0)]
                        + [f"{v:.3g}" for v in np.percentile(late, 99, axis=0)])
    print(table(["warm-up s", "segment starts", "frames differing",
                 f"max blendshape, first {SETTLE_S:g} s", "max rotation deg", "max translation mm",
                 "max blendshape, after", "max rotation deg", "max translation mm",
                 "p99 blendshape, after", "p99 rotation deg", "p99 translation mm"], rows))


if __name__ == "__main__":
    main()
