"""Plain helpers shared by tests (importable; conftest modules only hold fixtures)."""

from __future__ import annotations

import socket
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DEMO_CORPUS = REPO / "a2bs" / "demo" / "corpus"


def demo_clips() -> list[Path]:
    """The bundled demo clips, sorted."""
    return sorted(DEMO_CORPUS.rglob("*.mp4"))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
