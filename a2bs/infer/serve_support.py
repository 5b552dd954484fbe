"""The parts of `a2bs serve` around the connection loop: who may connect (the token rule and the
admission limit shared by worker processes), the server's Prometheus metrics, the per-session send
queue with its drop policy, the step clock, the process settings and the listening line."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from a2bs.config import Config, ConfigError
from a2bs.infer.wire import STREAM_PATH

if TYPE_CHECKING:
    from a2bs.infer.offline import LoadedModel


class StepClock:
    """When the next tick runs: at most one tick per `period_s` while there is work, so one batched
    model call takes every session's audio of a period instead of one call per arriving message.

    :meth:`delay` is asked when work is waiting. Ticks fall on a fixed grid while work keeps coming;
    work that arrives after the clock fell idle (or after a tick overran its period) starts a new grid
    at once. Either way a frame's audio waits at most one period for its tick. `period_s` 0 = a tick
    as soon as work waits.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = max(0.0, float(period_s))
        self._due_s = float("-inf")  # when the next tick on the grid is due

    def delay(self, now_s: float) -> float:
        """Seconds from `now_s` until the next tick (0 = at once); books that tick."""
        if now_s >= self._due_s:
            self._due_s = now_s + self.period_s
            return 0.0
        wait_s = self._due_s - now_s
        self._due_s += self.period_s
        return wait_s


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


def resolve_workers(cfg: Config) -> int:
    """``serve.workers`` as a number of processes (``"auto"``: one per CPU this process may run on).

    Raises:
        ConfigError: not ``auto`` or a whole number >= 1.
    """
    value = str(cfg.serve.workers).strip().lower()
    if value == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        return max(1, len(usable))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"serve.workers must be 'auto' or a whole number >= 1, got {cfg.serve.workers!r}")
    return int(value)


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def event_loop_factory(cfg: Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``serve.event_loop`` names, as a factory (for :class:`asyncio.Runner`).

    Raises:
        ConfigError: an unknown name, or ``uvloop`` asked for where it is not installed.
    """
    name = str(cfg.serve.event_loop).strip().lower()
    if name not in EVENT_LOOPS:
        raise ConfigError(f"serve.event_loop must be one of {', '.join(EVENT_LOOPS)}, got {cfg.serve.event_loop!r}")
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("serve.event_loop=uvloop, but uvloop is not installed (pip install uvloop; "
                                  "not available on Windows)") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_event_loop(main: Coroutine[Any, Any, Any], cfg: Config) -> Any:
    """Run `main` to completion on the event loop ``serve.event_loop`` names."""
    with asyncio.Runner(loop_factory=event_loop_factory(cfg)) as runner:
        return runner.run(main)


class SharedAdmission:
    """The admission limit of several worker processes: sessions held per worker and sessions served,
    in shared memory.

    Created before the workers are forked; a worker asks :meth:`try_admit` before a session and calls
    :meth:`release` after it, so the limit holds for the server as a whole. For the parent's choice of
    worker a worker also counts the connections it holds (:meth:`adopted`, :meth:`closed`): a session
    is admitted only after its WebSocket handshake, and a burst of connections must not all go to a
    worker that has not admitted its last ones yet (:meth:`loads`).
    """

    def __init__(self, ctx: Any, limit: int, workers: int) -> None:
        self.limit = int(limit)
        self._held = ctx.Array("i", int(workers))  # one lock for the whole array
        self._open = ctx.Array("i", int(workers), lock=False)  # under _held's lock too
        self._adopted = ctx.Array("i", int(workers), lock=False)
        self._served = ctx.Value("i", 0)

    def try_admit(self, worker: int) -> bool:
        """Take a place for `worker` if one is free (atomic across processes)."""
        with self._held.get_lock():
            if sum(self._held) >= self.limit:
                return False
            self._held[worker] += 1
            return True

    def release(self, worker: int, served: bool) -> None:
        """Give `worker`'s place back; `served`: it held a session (counted for the stop line)."""
        with self._held.get_lock():
            self._held[worker] -= 1
        if served:
            with self._served.get_lock():
                self._served.value += 1

    def held(self) -> list[int]:
        """Places taken now, per worker."""
        with self._held.get_lock():
            return list(self._held)

    def adopted(self, worker: int) -> None:
        """`worker` took over a connection the parent handed it (still open)."""
        with self._held.get_lock():
            self._adopted[worker] += 1
            self._open[worker] += 1

    def closed(self, worker: int) -> None:
        """One of `worker`'s connections is gone."""
        with self._held.get_lock():
            self._open[worker] -= 1

    def loads(self, handed: list[int]) -> list[int]:
        """Connections per worker: open ones, and those handed to it (`handed`, counted by the parent)
        that it has not taken over yet."""
        with self._held.get_lock():
            return [self._open[w] + handed[w] - self._adopted[w] for w in range(len(handed))]

    @property
    def served(self) -> int:
        """Sessions served so far, in all workers."""
        return self._served.value


def use_multiprocess_metrics(directory: str) -> None:
    """Make this process's Prometheus metrics shared files in `directory` (a worker, before its metrics
    exist): prometheus_client's multiprocess mode, so any worker's /metrics reports the sum of all."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # chosen at import time, maybe before the variable was set


class ServeMetrics:
    """Prometheus metrics of one server (its own registry, so several servers can share a process).

    With `multiprocess_dir` (the workers of one `a2bs serve`, after :func:`use_multiprocess_metrics`),
    :meth:`text` aggregates the metrics of every worker: counters and histograms summed, the session
    gauge summed over live workers.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("a2bs_serve_sessions", "Sessions holding a slot", registry=r,
                              multiprocess_mode="livesum")
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
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST


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


def tune_process(cfg: Config) -> None:
    """Process-wide settings for a process that only serves (`a2bs serve`; not applied when embedding).

    - torch intra-op threads = ``serve.step_threads``;
    - numpy's BLAS on one thread: the front end's small products (every session's log-mel at once)
      were 15x slower with OpenBLAS's threads spinning against the model step on 2 cores.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, cfg.serve.step_threads))
    threadpool_limits(1, "blas")


def listening_line(cfg: Config, port: int, model: LoadedModel, backend: str, token: str | None, workers: int) -> str:
    """The line `a2bs serve` prints once it listens."""
    procs = f", {workers} worker processes" if workers > 1 else ""
    if cfg.serve.precision != "fp32":
        backend = f"{backend} {cfg.serve.precision}"
    return (f"serve: listening on ws://{cfg.serve.host}:{port}{STREAM_PATH} ({model.model_cfg.name}, {backend}, "
            f"up to {cfg.serve.max_sessions} sessions{procs}{', token required' if token else ''}); /healthz, /metrics")
