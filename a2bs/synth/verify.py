"""Check the demo corpus: does MediaPipe read back the shapes the generator drove?

Runs the FaceLandmarker (VIDEO mode, a fresh instance per clip) on every frame of every clip
and correlates each driven curve with the blendshape or head angle it should produce.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from a2bs.synth.face import make_landmarker, mp_image

# (label, driven key, extracted key, sign): sign -1 where image and head axes point opposite.
PAIRS: tuple[tuple[str, str, str, int], ...] = (
    ("jawOpen", "jawOpen", "jawOpen", 1),
    ("mouthClose (lip press)", "mouthClose", "mouthPress", 1),
    ("mouthClose (lip press)/roll", "mouthClose", "mouthRollLower", 1),
    ("mouthFunnel", "mouthFunnel", "mouthFunnel", 1),
    ("mouthPucker", "mouthPucker", "mouthPucker", 1),
    ("mouthSmile", "mouthSmile", "mouthSmile", 1),
    ("mouthStretch", "mouthStretch", "mouthStretch", 1),
    ("eyeBlink", "eyeBlink", "eyeBlink", 1),
    ("head yaw", "headYaw_deg", "yaw", 1),
    ("head pitch", "headPitch_deg", "pitch", 1),
    ("head roll", "headRoll_deg", "roll", 1),
    ("head x", "headTx_frac", "tx", 1),
    ("head y", "headTy_frac", "ty", -1),
    ("head scale (z)", "headScale", "tz", 1),
)


def euler_deg(m: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll (degrees) of a 4x4 facial transformation matrix."""
    r = m[:3, :3] / np.linalg.norm(m[:3, 0])
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def extract_clip(video_path: Path) -> dict[str, np.ndarray]:
    """Per-frame MediaPipe readings of the shapes the corpus drives (NaN where no face)."""
    import cv2

    cap = cv2.VideoCapture(str(video_path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    rows: list[dict[str, float]] = []
    with make_landmarker(video=True) as lm:
        k = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            res = lm.detect_for_video(mp_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)),
                                      int(round(k * 1000 / fps)))
            k += 1
            if not res.face_blendshapes:
                rows.append({})
                continue
            bs = {c.category_name: c.score for c in res.face_blendshapes[0]}
            m = np.asarray(res.facial_transformation_matrixes[0])
            yaw, pitch, roll = euler_deg(m)
            rows.append({
                "jawOpen": bs["jawOpen"], "mouthFunnel": bs["mouthFunnel"],
                "mouthPucker": bs["mouthPucker"], "mouthClose": bs["mouthClose"],
                "mouthPress": (bs["mouthPressLeft"] + bs["mouthPressRight"]) / 2,
                "mouthRollLower": bs["mouthRollLower"],
                "mouthSmile": (bs["mouthSmileLeft"] + bs["mouthSmileRight"]) / 2,
                "mouthStretch": (bs["mouthStretchLeft"] + bs["mouthStretchRight"]) / 2,
                "eyeBlink": (bs["eyeBlinkLeft"] + bs["eyeBlinkRight"]) / 2,
                "yaw": yaw, "pitch": pitch, "roll": roll,
                "tx": m[0, 3], "ty": m[1, 3], "tz": m[2, 3],
            })
    cap.release()
    keys = {k for r in rows for k in r}
    return {k: np.array([r.get(k, np.nan) for r in rows], np.float64) for k in keys}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def verify_corpus(corpus_dir: Path, progress: bool = True, limit: int | None = None,
                  save: bool = True, jobs: int = 1) -> dict:
    """Correlate driven vs extracted curves per clip and overall.

    With `save`, the result is also written to ``<corpus_dir>/verification.json``; `jobs` > 1
    reads that many clips at once (one process each).

    Returns:
        ``{"per_clip": {clip_id: {label: r}}, "overall": {label: r over all frames},
        "overall_centred": {label: r with each clip's mean removed}, "mean_per_clip",
        "min_per_clip", "face_ratio": share of frames with a face,
        "table": markdown}``.
    """
    corpus_dir = Path(corpus_dir)
    meta = json.loads((corpus_dir / "corpus.json").read_text())
    clips = meta["clips"][:limit] if limit else meta["clips"]
    per_clip: dict[str, dict[str, float]] = {}
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {p[0]: [] for p in PAIRS}
    n_face = n_all = 0
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        readings = list(pool.map(extract_clip, [corpus_dir / rec["file"] for rec in clips]))
    for rec, got in zip(clips, readings):
        drv = np.load(corpus_dir / rec["driven"])
        row: dict[str, float] = {}
        for label, dkey, ekey, sign in PAIRS:
            d = drv[dkey].astype(np.float64)
            e = got.get(ekey, np.full(len(d), np.nan))
            n = min(len(d), len(e))
            row[label] = _pearson(d[:n], sign * e[:n])
            pooled[label].append((d[:n], sign * e[:n]))
        jaw = got.get("jawOpen", np.array([]))
        n_face += int(np.isfinite(jaw).sum())
        n_all += max(len(jaw), 1)
        per_clip[rec["clip_id"]] = row
        if progress:
            print(f"verify {rec['clip_id']}: jawOpen r={row['jawOpen']:.3f} "
                  f"blink r={row['eyeBlink']:.3f} roll r={row['head roll']:.3f}", flush=True)
    def pooled_r(pairs: list[tuple[np.ndarray, np.ndarray]], centre: bool) -> float:
        # Centring each clip removes per-face offsets (rest pose, photo's own smile or tilt).
        def c(x: np.ndarray) -> np.ndarray:
            return x - np.nanmean(x) if centre else x
        return _pearson(np.concatenate([c(a) for a, _ in pairs]),
                        np.concatenate([c(b) for _, b in pairs]))

    overall = {k: pooled_r(v, False) for k, v in pooled.items()}
    centred = {k: pooled_r(v, True) for k, v in pooled.items()}
    mean_pc = {k: float(np.nanmean([r[k] for r in per_clip.values()])) for k in overall}
    min_pc = {k: float(np.nanmin([r[k] for r in per_clip.values()])) for k in overall}
    lines = ["| driven shape | MediaPipe reading | r pooled | r pooled, clip-centred "
             "| mean r per clip | min r per clip |", "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {ekey} | {overall[label]:.3f} | {centred[label]:.3f} "
              f"| {mean_pc[label]:.3f} | {min_pc[label]:.3f} |" for label, _, ekey, _ in PAIRS]
    table = "\n".join(lines)
    result = {"per_clip": per_clip, "overall": overall, "overall_centred": centred,
              "mean_per_clip": mean_pc,
              "min_per_clip": min_pc, "face_ratio": n_face / max(n_all, 1), "table": table}
    if save:
        tmp = corpus_dir / "verification.json.part"
        tmp.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
        tmp.replace(corpus_dir / "verification.json")
    if progress:
        print(table)
        print(f"frames with a face: {100 * result['face_ratio']:.1f}% over {len(clips)} clips")
    return result


# Per-voice columns of the README: (header, PAIRS label).
VOICE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("jawOpen r", "jawOpen"), ("pucker r", "mouthPucker"), ("blink r", "eyeBlink"),
    ("yaw r", "head yaw"), ("roll r", "head roll"),
)


def voice_table(result: dict, meta: dict) -> str:
    """Markdown table of each voice's clips: mean per-clip r of the main readings (README).

    Args:
        result: what `verify_corpus` returned (or verification.json).
        meta: corpus.json (its ``voices`` and ``clips``).
    """
    voices = meta["voices"]
    head = "| speaker | engine | language | clips | s in all |" + "".join(
        f" {h} |" for h, _ in VOICE_COLUMNS)
    lines = [head, "|---" * (5 + len(VOICE_COLUMNS)) + "|"]
    for v in sorted(voices, key=lambda v: (v["face"], v["name"])):
        clips = [c for c in meta["clips"] if c["voice"] == v["name"]]
        rows = [result["per_clip"][c["clip_id"]] for c in clips if c["clip_id"] in result["per_clip"]]
        cells = "".join(f" {np.nanmean([r[k] for r in rows]):.3f} |" for _, k in VOICE_COLUMNS)
        lines.append(f"| {v['face']}_{v['name']} | {v['engine']} | {v['language']} | {len(clips)} "
                     f"| {sum(c['duration_s'] for c in clips):.1f} |{cells}")
    return "\n".join(lines)


def face_summary(result: dict, meta: dict) -> str:
    """One line: share of frames with a face, and jawOpen r per face (mean and min per clip)."""
    parts = []
    for face in sorted({c["face"] for c in meta["clips"]}):
        rs = [result["per_clip"][c["clip_id"]]["jawOpen"] for c in meta["clips"]
              if c["face"] == face and c["clip_id"] in result["per_clip"]]
        parts.append(f"{face}: mean {np.nanmean(rs):.3f} (min {np.nanmin(rs):.3f})")
    return (f"Face found in {100 * result['face_ratio']:.1f} % of frames; jawOpen r per face: "
            + ", ".join(parts) + ".")
