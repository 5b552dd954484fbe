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


def demo_clips(n: int | None = None) -> list[Path]:
    clips = sorted(DEMO_CORPUS.rglob("*.mp4"))
    if not clips:
        raise SystemExit(f"no demo corpus under {DEMO_CORPUS}")
    return clips[:n] if n else clips


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
