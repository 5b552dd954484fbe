"""`a2bs serve` in several processes: one listening socket, ``serve.workers`` servers accepting on it.

One server process tops out at one core: most of its CPU is per-message Python (WebSocket framing,
frame messages, each session's front end and post-processing), not the batched model step
(benchmarks/README.md). So the parent binds the port once and forks the workers, each a whole
:class:`~a2bs.infer.serve.Server` (event loop, step thread, batched stepper) accepting connections on
the inherited socket, the pre-fork model: an idle worker wakes first and takes the next connection,
so sessions go to whichever worker has time (``SO_REUSEPORT`` would spread them by a hash of the
client's address instead, blind to load). Shared between the workers:

- the admission limit (:class:`~a2bs.infer.serve_support.SharedAdmission`, a count in shared memory);
- the metrics: prometheus_client's multiprocess mode, files in a temporary directory, so the
  ``/metrics`` of any worker is the sum over all workers (counters and histograms summed, the session
  gauge over live workers); a scrape sees the whole server, not the worker that happened to accept it.

The parent only supervises: on SIGINT or SIGTERM it stops every worker (SIGTERM, then waits; a worker
closes its connections and exits), and a worker whose parent vanishes stops by itself (the parent's
sentinel), so no worker outlives the command. Forking shares the loaded model's memory between workers.
"""

from __future__ import annotations

import asyncio
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
from a2bs.infer.serve_support import SharedAdmission, use_multiprocess_metrics

START_TIMEOUT_S = 300.0  # a worker builds its stepper (ONNX export) before it accepts: minutes on a busy machine
STOP_TIMEOUT_S = 30.0  # after SIGTERM, a worker that has not exited by then is killed


def _worker(index: int, model: LoadedModel, cfg: Config, token: str | None, identity: str | None,
            sock: socket.socket, metrics_dir: str, admission: SharedAdmission,
            ready: multiprocessing.connection.Connection) -> None:
    """One worker process: a Server accepting on `sock` until SIGINT/SIGTERM or the parent's end."""
    from prometheus_client import multiprocess

    from a2bs.infer.serve import Server

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # until the event loop handles them
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
            server = Server(model, cfg, token, identity, admission=admission, metrics_dir=metrics_dir)
            await server.start(None, None, sock=sock)
        except Exception as exc:  # told to the parent, which raises it (one line from the CLI)
            ready.send(exc)
            return
        ready.send(server.engine.backend)
        await stop.wait()
        await server.stop()

    try:
        asyncio.run(main())
    finally:
        multiprocess.mark_process_dead(os.getpid(), metrics_dir)


def run_workers(model: LoadedModel, cfg: Config, token: str | None, identity: str | None, workers: int,
                ready_line: bool = True) -> int:
    """Serve with `workers` processes until SIGINT/SIGTERM; returns the exit code (1 if a worker died).

    Raises:
        Exception: what a worker raised while starting (e.g. a model that cannot stream).
    """
    from a2bs.infer.serve import listening_line

    s = cfg.serve
    ctx = multiprocessing.get_context("fork")
    sock = socket.create_server((s.host, s.port), backlog=max(128, 2 * s.max_sessions))
    metrics_dir = tempfile.mkdtemp(prefix="a2bs-serve-metrics-")
    admission = SharedAdmission(ctx, s.max_sessions)
    procs, pipes = [], []
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
            proc = ctx.Process(target=_worker, name=f"a2bs-serve-{i}", daemon=False,
                               args=(i, model, cfg, token, identity, sock, metrics_dir, admission, send))
            proc.start()
            send.close()
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
            print(listening_line(cfg, sock.getsockname()[1], model, backend, token, workers), flush=True)
        while not woken:
            gone = multiprocessing.connection.wait([wake_r, *(p.sentinel for p in procs)])
            if wake_r in gone:  # a signal's wake-up byte: drained, then `woken` says whether it was ours
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
            if any(p.sentinel in gone for p in procs):
                died = [p for p in procs if p.exitcode is not None]
                print(f"serve: worker {died[0].name} exited (code {died[0].exitcode}); stopping", file=sys.stderr,
                      flush=True)
                code = 1
                break
    finally:
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
        wake_r.close()
        wake_w.close()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    print(f"serve: stopped after {admission.served} sessions", flush=True)
    return code
