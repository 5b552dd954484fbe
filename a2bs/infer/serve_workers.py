"""`a2bs serve` in several processes: the parent accepts connections, ``serve.workers`` servers serve them.

One server process tops out at one core: most of its CPU is per-message Python (WebSocket framing,
frame messages, each session's front end and post-processing), not the batched model step
(benchmarks/README.md). So the parent binds the port and forks the workers, each a whole
:class:`~a2bs.infer.serve.Server` (event loop with its step clock, batched stepper). The parent accepts each
connection and passes the socket (``SCM_RIGHTS``) to the worker holding the fewest connections (with
those still on their way to it), taking turns among equals: sessions spread evenly whatever their timing. (Letting every worker accept on the
shared socket sent all of them to the first worker whenever it was idle; ``SO_REUSEPORT`` spreads them
by a hash of the client's address, blind to load.) Shared between the workers:

- the admission limit (:class:`~a2bs.infer.serve_support.SharedAdmission`, counts in shared memory);
- the metrics: prometheus_client's multiprocess mode, files in a temporary directory, so the
  ``/metrics`` of any worker is the sum over all workers (counters and histograms summed, the session
  gauge over live workers): a scrape sees the whole server, not the worker that served the request.

On SIGINT or SIGTERM the parent stops accepting and stops every worker (SIGTERM, then waits; a worker
closes its connections and exits); a worker whose parent vanishes stops by itself (the parent's
sentinel), so no worker outlives the command. Forking shares the loaded model's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from a2bs.config import Config
from a2bs.infer.offline import LoadedModel
from a2bs.infer.serve_support import SharedAdmission, listening_line, run_event_loop, use_multiprocess_metrics

START_TIMEOUT_S = 300.0  # a worker builds its stepper (ONNX export) before it serves: minutes on a busy machine
STOP_TIMEOUT_S = 30.0  # after SIGTERM, a worker that has not exited by then is killed


def _worker(index: int, model: LoadedModel, cfg: Config, token: str | None, identity: str | None,
            run_dir: str, channel: socket.socket, inherited: list[socket.socket], admission: SharedAdmission,
            ready: multiprocessing.connection.Connection) -> None:
    """One worker: a Server for the connections arriving on `channel`, until SIGINT/SIGTERM or the
    parent's end."""
    from prometheus_client import multiprocess

    from a2bs.infer.serve import Server

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # until the event loop handles them
    for other in inherited:  # the parent's listener and ends of the channels (its own and earlier workers')
        other.close()
    metrics_dir = os.path.join(run_dir, "metrics")
    use_multiprocess_metrics(metrics_dir)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in stop_signals:
            loop.add_signal_handler(sig, stop.set)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        parent = multiprocessing.parent_process()
        if parent is not None:  # the parent gone (even killed): stop too
            loop.add_reader(parent.sentinel, stop.set)
        try:
            server = Server(model, cfg, token, identity, admission=admission, metrics_dir=metrics_dir,
                            worker=index)
            # The websockets server listens on a Unix socket in the parent's private directory that no
            # client uses: its connections are the TCP sockets the parent passes (Server.adopt).
            private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            private.bind(os.path.join(run_dir, f"worker-{index}.sock"))
            await server.start(None, None, sock=private)
            if server.protocol_factory() is None:  # what Server.adopt relies on
                raise RuntimeError("serve.workers > 1 needs websockets' protocol factory, which this websockets "
                                   "or event loop hides: use serve.workers=1 or serve.event_loop=asyncio")
        except Exception as exc:  # told to the parent, which raises it (one line from the CLI)
            ready.send(exc)
            return
        channel.setblocking(False)

        def on_connection() -> None:
            try:
                _, fds, _, _ = socket.recv_fds(channel, 1, 1)
            except BlockingIOError:
                return
            if not fds:  # end of file: the parent has gone
                stop.set()
                loop.remove_reader(channel.fileno())
                return
            server.adopt(socket.socket(fileno=fds[0]))

        loop.add_reader(channel.fileno(), on_connection)
        ready.send(server.engine.backend)
        await stop.wait()
        loop.remove_reader(channel.fileno())
        await server.stop()

    try:
        run_event_loop(main(), cfg)
    finally:
        with contextlib.suppress(FileNotFoundError):  # a sibling may be removing the directory
            multiprocess.mark_process_dead(os.getpid(), metrics_dir)
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():  # nobody else will remove the private directory
            shutil.rmtree(run_dir, ignore_errors=True)


def run_workers(model: LoadedModel, cfg: Config, token: str | None, identity: str | None, workers: int,
                ready_line: bool = True) -> int:
    """Serve with `workers` processes until SIGINT/SIGTERM; returns the exit code (1 if a worker died).

    Raises:
        Exception: what a worker raised while starting (e.g. a backend it cannot build).
    """
    s = cfg.serve
    ctx = multiprocessing.get_context("fork")
    listener = socket.create_server((s.host, s.port), backlog=max(128, 2 * s.max_sessions))
    run_dir = tempfile.mkdtemp(prefix="a2bs-serve-")  # private (0700): metrics files, the workers' sockets
    os.mkdir(os.path.join(run_dir, "metrics"))
    admission = SharedAdmission(ctx, s.max_sessions, workers)
    procs, pipes, channels = [], [], []
    woken = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal woken
        woken = True

    wake_r, wake_w = socket.socketpair()
    for end in (wake_r, wake_w):
        end.setblocking(False)
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
    code = 0
    try:
        for i in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            channels.append(ours)
            proc = ctx.Process(target=_worker, name=f"a2bs-serve-{i}", daemon=False,
                               args=(i, model, cfg, token, identity, run_dir, theirs, [listener, *channels],
                                     admission, send))
            proc.start()
            send.close()
            theirs.close()
            procs.append(proc)
            pipes.append(recv)
        backend = ""
        for proc, pipe in zip(procs, pipes):
            if not pipe.poll(START_TIMEOUT_S):
                raise RuntimeError(f"serve: worker {proc.name} did not start within {START_TIMEOUT_S:g} s")
            try:
                answer = pipe.recv()
            except EOFError:
                raise RuntimeError(f"serve: worker {proc.name} exited while starting (code {proc.exitcode})") \
                    from None
            if isinstance(answer, BaseException):
                raise answer
            backend = answer
        if ready_line:
            print(listening_line(cfg, listener.getsockname()[1], model, backend, token, workers), flush=True)
        listener.setblocking(False)
        turn, handed = 0, [0] * workers
        while not woken:
            ready = multiprocessing.connection.wait([wake_r, listener, *(p.sentinel for p in procs)])
            if wake_r in ready:  # a signal's wake-up byte: drained; `woken` says whether to stop
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
            died = [p for p in procs if p.sentinel in ready]
            if died:
                died[0].join()  # ended: reaps it, for its exit code
                print(f"serve: worker {died[0].name} exited (code {died[0].exitcode}); stopping",
                      file=sys.stderr, flush=True)
                code = 1
                break
            if listener in ready:
                turn = _dispatch(listener, channels, admission, turn, handed)
    finally:
        listener.close()  # refuse new connections while the workers finish
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker closes its connections and exits
        for proc in procs:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        for sock in (wake_r, wake_w, *channels):
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"serve: stopped after {admission.served} sessions", flush=True)
    return code


def _dispatch(listener: socket.socket, channels: list[socket.socket], admission: SharedAdmission,
              turn: int, handed: list[int]) -> int:
    """Hand every waiting connection to the worker holding the fewest connections (ties: the next in
    turn), counting those on their way to it (`handed`: per worker, updated here); returns the turn."""
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return turn
        with conn:  # closed here once the worker holds its own copy
            loads = admission.loads(handed)
            fewest = min(loads)
            n = len(channels)
            worker = next(w for w in ((turn + k) % n for k in range(n)) if loads[w] == fewest)
            turn = worker + 1
            handed[worker] += 1
            socket.send_fds(channels[worker], [b"c"], [conn.fileno()])
