"""`a2bs serve`: live speech in over WebSocket, face-rig frames out, every session in one batched step.

Protocol (docs/serving.md): connect to ``ws://HOST:PORT/v1/stream``; send a JSON start message
``{"sample_rate": 16000, "encoding": "pcm_s16le", "fps": 60}``; receive ``{"event": "ready", ...}``;
send binary mono PCM of any length and ``{"event": "end"}`` to flush; receive
``{"event": "frames", "start": K, "values": [[...], ...]}`` as frames become ready and
``{"event": "done", "frames": N, "dropped": D}``. Errors are ``{"event": "error", "reason": ...}`` then a
close, for that session only. ``GET /healthz`` and ``GET /metrics`` (Prometheus text) share the port.

The asyncio event loop does the I/O and, on a fixed step clock (``serve.step_period_ms``, one 10 ms
model frame hop), the ticks of :class:`a2bs.infer.engine.ServeEngine`: while any session has audio
waiting, one tick per period steps every session's pending frames in one batched step, so the model
calls per second do not grow with the messages per second and batches grow with the load. `a2bs serve` runs
``serve.workers`` such servers in processes sharing the port (:mod:`a2bs.infer.serve_workers`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from a2bs.config import Config, ConfigError
from a2bs.infer.curves import Curves
from a2bs.infer.engine import EngineStream, ServeEngine, TickOutput, parse_spec
from a2bs.infer.live import LiveLinkSink, livelink_sink_for
from a2bs.infer.offline import LoadedModel
from a2bs.infer.serve_support import (
    SendQueue,
    ServeMetrics,
    SharedAdmission,
    StepClock,
    event_loop_factory,
    is_loopback,
    listening_line,
    read_token,
    resolve_workers,
    run_event_loop,
    tune_process,
)
from a2bs.infer.wire import (
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    STREAM_PATH,
    VALUE_DECIMALS,
    StreamError,
    decode_pcm,
    encode_frames_f32,
)
from a2bs.schema import TARGET_NAMES

log = logging.getLogger("a2bs.serve")


@dataclass
class Session:
    """The event-loop side of one connection."""

    stream: EngineStream
    ws: Any
    outbox: SendQueue
    sink: LiveLinkSink | None = None
    finished: bool = False  # "done" queued


class Server:
    """The WebSocket service around a :class:`ServeEngine`.

    Args:
        model: a loaded causal model.
        cfg: resolved config (``serve``, ``infer``).
        token: the access token, or None for an open (loopback) server.
        identity: the face of sessions that name none (None = the model's learned average).
        admission: the limit shared with other worker processes (None = this server's slots alone).
        metrics_dir: the workers' shared metrics directory (None = this server's metrics alone).
        worker: this server's index among the workers of one `a2bs serve` (told in "ready"; needed
            with `admission`), or None.
    """

    def __init__(self, model: LoadedModel, cfg: Config, token: str | None = None,
                 identity: str | None = None, admission: SharedAdmission | None = None,
                 metrics_dir: str | None = None, worker: int | None = None) -> None:
        self.model, self.cfg, self.token = model, cfg, token
        self.identity = identity
        self.admission = admission
        self.worker = worker
        self.engine = ServeEngine(model, cfg)
        self.metrics = ServeMetrics(metrics_dir)
        self._sessions: dict[int, Session] = {}
        self._wake: asyncio.Event | None = None
        self._ticked: asyncio.Condition | None = None
        self._ticker: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.ws_server: Any = None
        self.sessions_served = 0

    # ---- HTTP side -----------------------------------------------------------------------------

    def _authorised(self, request: Any) -> bool:
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        else:  # browsers cannot set headers on a WebSocket: ?token= works too
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def process_request(self, connection: Any, request: Any) -> Any:
        """Health, metrics and the token check, before any WebSocket handshake."""
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path == "/metrics":
            body, content_type = self.metrics.text()
            response = connection.respond(200, body.decode())
            response.headers["Content-Type"] = content_type
            return response
        if path != STREAM_PATH:
            return connection.respond(404, f"not found: WebSocket streams are at {STREAM_PATH}\n")
        if self.token is not None and not self._authorised(request):
            self.metrics.refused.labels("token").inc()
            return connection.respond(401, "a valid token is required (Authorization: Bearer TOKEN)\n")
        return None

    # ---- one session ---------------------------------------------------------------------------

    async def _refuse(self, ws: Any, reason: str, code: int = CLOSE_POLICY) -> None:
        try:
            await ws.send(json.dumps({"event": "error", "reason": reason}))
            await ws.close(code, reason[:120])
        except Exception:  # the client may already be gone; nothing else to tell it
            pass

    @property
    def capacity(self) -> int:
        """The admission limit (of all workers when they share one)."""
        return self.engine.capacity if self.admission is None else self.admission.limit

    async def _start(self, ws: Any) -> Session | None:
        s = self.cfg.serve
        try:
            async with asyncio.timeout(s.idle_timeout_s):
                first = await ws.recv()
        except TimeoutError:
            self.metrics.refused.labels("no_start").inc()
            await self._refuse(ws, f"no start message within {s.idle_timeout_s:g} s")
            return None
        try:
            if isinstance(first, bytes):
                raise StreamError("the first message must be the JSON start message, not audio")
            try:
                msg = json.loads(first)
            except ValueError:
                raise StreamError("the first message is not valid JSON") from None
            spec = parse_spec(msg, self.cfg, self.model, self.identity)
            sink = self._livelink(spec.livelink, spec.fps, ws) if spec.livelink else None
        except (StreamError, ConfigError) as exc:
            self.metrics.refused.labels("bad_start").inc()
            await self._refuse(ws, str(exc))
            return None
        stream = self.engine.open(spec)
        if stream is None:  # the last slot went while this client was sending its start message
            self.metrics.refused.labels("full").inc()
            if sink is not None:
                sink.close()
            await self._refuse(ws, f"server full: {self.capacity} sessions in use; try again later",
                               CLOSE_TRY_LATER)
            return None
        if s.socket_send_buffer_bytes > 0:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, s.socket_send_buffer_bytes)
        session = Session(stream, ws, SendQueue(s.send_queue_messages), sink=sink)
        self._sessions[stream.slot] = session
        self.metrics.sessions.set(self.engine.active)
        return session

    def _livelink(self, address: str, fps: float, ws: Any) -> LiveLinkSink:
        sink = livelink_sink_for(address, self.cfg, fps)
        client = ws.remote_address[0] if ws.remote_address else ""
        host = sink.address[0]
        if not self.cfg.serve.livelink_any_host and not (host == client or (is_loopback(host) and is_loopback(client))):
            sink.close()
            raise StreamError(f"livelink {address!r}: UDP goes only to the client's own address ({client}) "
                              "unless the server sets serve.livelink_any_host=true")
        return sink

    async def _reader(self, session: Session) -> None:
        """Receive audio until the end message."""
        ws, stream, s = session.ws, session.stream, self.cfg.serve
        while True:
            try:
                async with asyncio.timeout(s.idle_timeout_s):  # no task per message, unlike wait_for
                    msg = await ws.recv()
            except TimeoutError:
                raise StreamError(f"idle for {s.idle_timeout_s:g} s: closing") from None
            if isinstance(msg, bytes):
                stream.feed(decode_pcm(msg, stream.spec.encoding), time.perf_counter())
                self._wake.set()
                while stream.pending_input_s > s.max_pending_audio_s and not stream.closed:
                    async with self._ticked:  # back-pressure: stop reading until a tick took the audio
                        await self._ticked.wait()
                continue
            try:
                obj = json.loads(msg)
            except ValueError:
                obj = None
            if obj != {"event": "end"}:
                raise StreamError('text messages after the start must be {"event": "end"}; audio goes in '
                                  "binary messages")
            stream.ending = True
            self._wake.set()
            return

    async def _sender(self, session: Session) -> None:
        """Send queued messages in order; after "done", close the connection."""
        while True:
            kind, _, text = await session.outbox.get()
            await session.ws.send(text)
            if kind == "done":
                await session.ws.close()
                return

    async def handler(self, ws: Any) -> None:
        """One WebSocket connection (the websockets library calls this after the handshake)."""
        from websockets.exceptions import ConnectionClosed

        session: Session | None = None
        outcome = "done"
        # A place under the admission limit: this server's free slots, or the count shared by the workers.
        shared = self.admission is not None
        admitted = self.admission.try_admit(self.worker) if shared else self.engine.active < self.engine.capacity
        if not admitted:
            self.metrics.refused.labels("full").inc()
            await self._refuse(ws, f"server full: {self.capacity} of {self.capacity} sessions in use; "
                                   "try again later", CLOSE_TRY_LATER)
            return
        try:
            session = await self._start(ws)
            if session is None:
                return
            spec = session.stream.spec
            ready = {"event": "ready", "names": list(TARGET_NAMES), "fps": spec.fps, "sample_rate": spec.sample_rate,
                     "frames": spec.frames, "model_sample_rate": self.model.audio_cfg.sample_rate,
                     "precision": self.cfg.serve.precision}
            if self.worker is not None:
                ready["worker"] = self.worker
            await ws.send(json.dumps(ready))
            sender = asyncio.create_task(self._sender(session))
            try:
                await self._reader(session)
                await sender  # until "done" is sent (or the client goes)
            finally:
                sender.cancel()
        except StreamError as exc:
            outcome = "error"
            await self._refuse(ws, str(exc))
        except ConnectionClosed:
            outcome = "vanished"
        finally:
            if shared:
                self.admission.release(self.worker, served=session is not None)
            if session is not None:
                session.stream.closed = True
                if session.sink is not None:
                    session.sink.close()
                self._sessions.pop(session.stream.slot, None)
                self.sessions_served += 1
                self.metrics.ended.labels(outcome).inc()
                self._wake.set()  # the next prepare frees the slot

    # ---- ticks ---------------------------------------------------------------------------------

    def _deliver(self, session: Session, out: TickOutput) -> None:
        n = len(out.values)
        if n:
            if session.stream.spec.frames == "f32":  # binary: no JSON to write here or to parse there
                message: str | bytes = encode_frames_f32(out.start_frame, out.values)
            else:
                values = np.round(out.values.astype(np.float64), VALUE_DECIMALS).tolist()
                message = json.dumps({"event": "frames", "start": out.start_frame, "values": values},
                                     separators=(",", ":"))
            dropped = session.outbox.put("frames", n, message)
            self.metrics.dropped.inc(dropped)
            self.metrics.frames.inc(n)
            if out.wait_s * 1000.0 > self.cfg.serve.late_frame_ms:
                self.metrics.late.inc(n)
            if session.sink is not None:
                session.sink.write(Curves(out.values, session.stream.spec.fps, start_frame=out.start_frame),
                                   np.full(n, np.nan))
        if out.done and not session.finished:
            session.finished = True
            session.outbox.put("done", 0, json.dumps({"event": "done", "frames": out.start_frame + n,
                                                      "dropped": session.outbox.dropped_frames}))

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        clock = StepClock(self.cfg.serve.step_period_ms / 1000.0)
        while True:
            await self._wake.wait()  # idle (no session has work) until audio or an end arrives
            # The rest of the period: every session's audio of it goes in this tick. Even at 0 (a tick
            # overran) the loop gets one turn, so sending and receiving go on between back-to-back ticks.
            await asyncio.sleep(clock.delay(loop.time()))
            self._wake.clear()
            work = self.engine.prepare()
            self.metrics.sessions.set(self.engine.active)
            if work:
                t0 = time.perf_counter()
                try:
                    # In the event loop's thread: at one tick per period the loop has nothing else to do
                    # meanwhile worth a second thread's GIL hand-overs and wake-ups (measured: ~15 % less
                    # server CPU per session than a step thread; benchmarks/README.md).
                    results, timing = self.engine.tick(work)
                except Exception:  # a bug must not kill the service silently: log it, drop these sessions
                    log.exception("serve: tick failed; closing the sessions in it")
                    for stream in work:
                        stream.closed = True
                        session = self._sessions.get(stream.slot)
                        if session is not None:  # in the background: a slow client must not hold up ticks
                            task = asyncio.create_task(self._refuse(session.ws, "internal error while stepping"))
                            self._background.add(task)
                            task.add_done_callback(self._background.discard)
                    continue
                self.metrics.step.observe(timing["step_s"])
                self.metrics.tick.observe(time.perf_counter() - t0)
                self.metrics.batch.observe(len(work))
                for stream in work:
                    session = self._sessions.get(stream.slot)
                    out = results.get(stream.slot)
                    if session is None or session.stream is not stream or stream.closed or out is None:
                        continue
                    if len(out.values):
                        self.metrics.wait.observe(out.wait_s)
                    self._deliver(session, out)
            async with self._ticked:
                self._ticked.notify_all()
            if self.engine.has_work():
                self._wake.set()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str | None, port: int | None, sock: socket.socket | None = None) -> Any:
        """Listen on host:port (port 0 = any free port) or on the bound socket `sock`; returns the
        websockets server."""
        from websockets.asyncio.server import serve

        self._wake = asyncio.Event()
        self._ticked = asyncio.Condition()
        self._ticker = asyncio.create_task(self._tick_loop())
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
        # No permessage-deflate: compressing every small frame message costs more CPU than it saves here.
        self.ws_server = await serve(self.handler, process_request=self.process_request, compression=None,
                                     max_size=self.cfg.serve.max_message_bytes, **where)
        return self.ws_server

    def adopt(self, conn: socket.socket) -> None:
        """Serve a connection another process accepted (the parent of the workers hands them out)."""
        factory = self.protocol_factory()
        if factory is None:
            raise RuntimeError("serve: cannot adopt connections (websockets' protocol factory not found)")
        conn.setblocking(False)
        if self.admission is not None:
            self.admission.adopted(self.worker)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(factory, conn))
        self._background.add(task)
        task.add_done_callback(self._adopted)

    def protocol_factory(self) -> Callable[[], Any] | None:
        """The factory websockets made for this server's connections (None if it cannot be found):
        adopting a connection with it runs the same code as for one the server accepts itself.

        Private on both sides: asyncio.Server keeps it as ``_protocol_factory`` (since Python 3.7);
        uvloop's server does not, so it is read from the closure of the websockets server's
        ``create_server`` (websockets 14-17), which hands it to the loop.
        """
        factory = getattr(self.ws_server.server, "_protocol_factory", None)
        create = getattr(self.ws_server, "create_server", None)
        if factory is None and create is not None and create.__closure__:
            cells = dict(zip(create.__code__.co_freevars, create.__closure__))
            factory = cells["protocol_factory"].cell_contents if "protocol_factory" in cells else None
        return factory

    def _adopted(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        failed = task.cancelled() or task.exception() is not None
        if failed and not task.cancelled():  # e.g. the client reset at once: its loss only
            log.info("serve: a handed-over connection failed: %s", task.exception())
        if self.admission is not None:  # the parent's count of this worker's connections
            # websockets' connection resolves this future when its socket closes (websockets 14-17).
            waiter = None if failed else getattr(task.result()[1], "connection_lost_waiter", None)
            if waiter is None:
                self.admission.closed(self.worker)
            else:
                waiter.add_done_callback(lambda _: self.admission.closed(self.worker))

    @property
    def port(self) -> int:
        """The bound port."""
        return self.ws_server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection, stop ticking."""
        if self.ws_server is not None:
            self.ws_server.close()
            await self.ws_server.wait_closed()
        if self._ticker is not None:
            self._ticker.cancel()


class BackgroundServer:
    """A :class:`Server` on its own event loop in a daemon thread (embedding, tests).

    ``with BackgroundServer(model, cfg) as srv: connect(srv.url)``; ``serve.port`` 0 picks a free port.
    """

    def __init__(self, model: LoadedModel, cfg: Config, token: str | None = None,
                 identity: str | None = None) -> None:
        self.server = Server(model, cfg, token, identity)
        self.host = cfg.serve.host
        self._port = cfg.serve.port
        self._loop = event_loop_factory(cfg)()
        self._thread = threading.Thread(target=self._loop.run_forever, name="a2bs-serve", daemon=True)

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/stream``."""
        return f"ws://{self.host}:{self.server.port}{STREAM_PATH}"

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` (for /healthz and /metrics)."""
        return f"http://{self.host}:{self.server.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.host, self._port), self._loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(60)


def run_server(model: LoadedModel, cfg: Config, ready_line: bool = True, identity: str | None = None) -> int:
    """Serve until interrupted (Ctrl-C / SIGTERM) with :func:`tune_process` applied; returns the exit code.

    `identity`: the face of sessions that name none (None = the average); an unknown one is a ConfigError.
    """
    import signal

    model.identity_row(identity)  # an unknown identity: say so before listening
    token = read_token(cfg)
    workers = resolve_workers(cfg)
    event_loop_factory(cfg)  # an unknown or missing event loop: say so before listening
    tune_process(cfg)
    if workers > 1:
        from a2bs.infer.batched import check_servable

        check_servable(model.net, cfg.serve.backend, cfg.serve.precision)  # a clear error before any fork
        from a2bs.infer.serve_workers import run_workers

        return run_workers(model, cfg, token, identity, workers, ready_line)

    async def main() -> None:
        server = Server(model, cfg, token, identity)
        await server.start(cfg.serve.host, cfg.serve.port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        if ready_line:
            print(listening_line(cfg, server.port, model, server.engine.backend, token, 1), flush=True)
        await stop.wait()
        await server.stop()
        print(f"serve: stopped after {server.sessions_served} sessions", flush=True)

    run_event_loop(main(), cfg)
    return 0
