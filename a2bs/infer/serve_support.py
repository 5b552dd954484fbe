"""The parts of `a2bs serve` around the connection loop: who may connect (the token rule), the
server's Prometheus metrics, and the per-session send queue with its drop policy."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from pathlib import Path

from a2bs.config import Config, ConfigError


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost`` (the only binds that need no token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(cfg: Config) -> str | None:
    """The access token (from ``serve.token_file``), or None when the server runs open.

    Raises:
        ConfigError: a token is required (non-loopback bind or ``serve.require_token``) but no file
            is given, or the file is missing or empty.
    """
    s = cfg.serve
    required = s.require_token or not is_loopback(s.host)
    if not s.token_file:
        if required:
            why = "serve.require_token is set" if s.require_token else f"binding to {s.host!r} (not loopback)"
            raise ConfigError(f"{why} needs an access token: give --token-file FILE")
        return None
    path = Path(s.token_file)
    if not path.is_file():
        raise ConfigError(f"token file {path}: not found")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"token file {path}: empty")
    return token


class ServeMetrics:
    """Prometheus metrics of one server (its own registry, so several servers can share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("a2bs_serve_sessions", "Sessions holding a slot", registry=r)
        self.ended = Counter("a2bs_serve_sessions_ended", "Sessions ended, by outcome", ["outcome"], registry=r)
        self.refused = Counter("a2bs_serve_sessions_refused", "Connections refused, by reason", ["reason"],
                               registry=r)
        self.frames = Counter("a2bs_serve_frames", "Frames queued to clients", registry=r)
        self.dropped = Counter("a2bs_serve_frames_dropped", "Frames dropped for slow readers", registry=r)
        self.late = Counter("a2bs_serve_late_frames",
                            "Frames whose audio waited longer than serve.late_frame_ms in the server", registry=r)
        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
        self.step = Histogram("a2bs_serve_step_seconds", "Batched model step time per tick", buckets=buckets,
                              registry=r)
        self.tick = Histogram("a2bs_serve_tick_seconds", "Whole tick (front end, step, post-processing)",
                              buckets=buckets, registry=r)
        self.batch = Histogram("a2bs_serve_tick_streams", "Streams stepped per tick",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.wait = Histogram("a2bs_serve_frame_wait_seconds", "Audio arrival -> frames queued, per tick and stream",
                              buckets=buckets, registry=r)

    def text(self) -> tuple[bytes, str]:
        """(exposition body, content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class SendQueue:
    """Messages waiting to be sent to one client, in order.

    At most `limit` frames messages wait: queuing one more drops the oldest waiting frames (a live rig
    wants the newest; the client sees the gap in ``start``). Other messages are never dropped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.items: collections.deque = collections.deque()  # (kind, n_frames, text)
        self.waiting_frames_messages = 0
        self.dropped_frames = 0
        self.ready = asyncio.Event()

    def put(self, kind: str, n_frames: int, text: str) -> int:
        """Queue a message; returns the frames dropped to make room."""
        dropped = 0
        if kind == "frames":
            while self.waiting_frames_messages >= self.limit:
                old = next(m for m in self.items if m[0] == "frames")
                self.items.remove(old)
                self.waiting_frames_messages -= 1
                dropped += old[1]
            self.waiting_frames_messages += 1
        self.dropped_frames += dropped
        self.items.append((kind, n_frames, text))
        self.ready.set()
        return dropped

    async def get(self) -> tuple[str, int, str]:
        """The next message (waits for one)."""
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        item = self.items.popleft()
        self.waiting_frames_messages -= item[0] == "frames"
        return item
