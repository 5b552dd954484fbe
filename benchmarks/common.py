"""Shared helpers for the benchmarks: machine line, demo clips, markdown tables."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_CORPUS = REPO / "a2bs" / "demo" / "corpus"


def machine() -> str:
    """'<date>, <cpu model>, <cores> cores, <RAM> GB'."""
    model = platform.processor() or "cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{datetime.date.today().isoformat()}, {model}, {os.cpu_count()} cores, {mem_gb:.0f} GB"


def bare_landmarker():
    """A bare MediaPipe FaceLandmarker in VIDEO mode with a2bs's outputs: the limit extraction is measured against."""
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import FaceLandmarker, FaceLandmarkerOptions, RunningMode

    from a2bs.config import VideoConfig
    from a2bs.extract.face import load_model_bytes

    opts = FaceLandmarkerOptions(base_options=BaseOptions(model_asset_buffer=load_model_bytes(VideoConfig())),
                                 running_mode=RunningMode.VIDEO, num_faces=1, output_face_blendshapes=True,
                                 output_facial_transformation_matrixes=True)
    return FaceLandmarker.create_from_options(opts)


def demo_clips(n: int | None = None) -> list[Path]:
    clips = sorted(DEMO_CORPUS.rglob("*.mp4"))
    if not clips:
        raise SystemExit(f"no demo corpus under {DEMO_CORPUS}")
    return clips[:n] if n else clips


def parse_variants(specs: list[str], default: dict[str, list[str]]) -> dict[str, list[str]]:
    """`--variant NAME=key=value,key=value` options as {NAME: [key=value, ...]}; `default` without any."""
    if not specs:
        return default
    variants = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        variants[name] = [kv for kv in rest.split(",") if kv]
    return variants


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_readme_section(section: str, text: str) -> None:
    """Replace (or append) the section headed `section` in benchmarks/README.md, keeping every other one."""
    from a2bs.runtime.storage import atomic_write_text

    readme = Path(__file__).resolve().parent / "README.md"
    old = readme.read_text(encoding="utf-8") if readme.is_file() else "# Benchmarks\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = old.find("\n## ", start + len(section))
        new = old[:start] + text.rstrip("\n") + "\n" + (old[nxt:] if nxt >= 0 else "")
    atomic_write_text(readme, new)
