"""`a2bs serve` under load, and the cost of one streaming step (issue 16).

Three parts, each writing its own table (``--write-readme`` puts them in benchmarks/README.md under
"## Serving (issue 16)", leaving the other sections alone):

- ``step``: one thread, ``tcn_full`` (random weights: speed does not depend on training), CPU ms per 10 ms
  frame of the step variants side by side: the cached-context step (``StreamingModel``, 1 and 10
  frames a call), its ONNX graph (``OnnxStreamer``), and the serving frame step (ring-buffer taps,
  :mod:`a2bs.infer.batched`) in PyTorch and ONNX Runtime, alone and batched over 8 and 64 streams.
- ``clock``: one worker's ``ServeEngine`` (``tcn_full``, ONNX Runtime) on a simulated step clock, no
  sockets: thread CPU of the ticks per session-second, model calls and each chunk's wait for its tick,
  for each ``--periods`` (``serve.step_period_ms``; 0 = a tick per message) and ``--clock-sessions``.
- ``load``: for each model and backend, ``a2bs serve`` runs in its own process on 127.0.0.1 and this
  process opens N concurrent sessions, each sending ``--seconds`` of speech in 20 ms chunks at real-time
  pace. A run passes when every session got all its frames (none dropped) and the p95 end-to-end
  latency (the audio message holding a frame's sample sent -> the frame received) is <= ``--p95-ms``.
  N doubles from ``--start`` until a run fails, then bisects; at most ``--max-runs`` runs per model
  and backend, ``--max-sessions`` sessions, and ``--budget-s`` seconds in all. The server runs
  ``--workers`` processes (``serve.workers``, default auto: one per core) and sends the frames as
  ``--frames`` (default ``f32``, the binary encoding; ``json`` is the protocol's default).

    .venv/bin/python benchmarks/bench_serve.py all --write-readme              # the full run (~30 min)
    .venv/bin/python benchmarks/bench_serve.py load --seconds 5 --max-runs 3   # a short check

``tcn_poc`` as trained by its preset is centred (0.3 s of lookahead), so ``a2bs serve`` refuses it; the
load table runs ``tcn_poc`` configured causal (``model.causal=true``) as the small-model line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_readme_section  # noqa: E402

SECTION = "## Serving (issue 16)"
README = Path(__file__).with_name("README.md")
MODELS = {"tcn_full": {}, "tcn_poc_causal": {"causal": True}}


# ---- step ----------------------------------------------------------------------------------------

def _cpu_ms(fn, calls: int, rounds: int = 3) -> float:
    """Thread CPU ms per call, the least disturbed of `rounds` (the machine is shared)."""
    best = float("inf")
    for _ in range(rounds):
        for _ in range(5):
            fn()
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - t0) * 1000.0 / calls)
    return best


def bench_step(calls: int) -> list[tuple[str, int, float]]:
    """Rows (variant, streams x frames per call, CPU ms per stream-frame)."""
    from a2bs.infer.batched import BatchedStepper
    from a2bs.infer.export import OnnxStreamer, export_onnx_step, initial_onnx_state, onnx_session
    from a2bs.infer.streaming import StreamingModel
    from a2bs.models import build_model, preset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(preset("tcn_full")).eval()
    rng = np.random.default_rng(0)
    mel = rng.uniform(-80, 0, size=(64, 10, 80)).astype(np.float32)
    rows = []
    for frames in (1, 10):
        stream = StreamingModel(model)
        ms = _cpu_ms(lambda: stream.step(mel[0, :frames]), max(10, calls // frames))
        rows.append((f"cached-context step, PyTorch (`a2bs stream` torch), {frames * 10} ms a call", frames,
                     ms / frames))
    with tempfile.TemporaryDirectory() as tmp:
        streamer = OnnxStreamer(onnx_session(export_onnx_step(model, Path(tmp) / "s.onnx")), initial_onnx_state(model))
        rows.append(("cached-context step, ONNX Runtime (the exported step graph)", 1,
                     _cpu_ms(lambda: streamer.step(mel[:1, :1]), calls)))
    for backend in ("torch", "onnx"):
        stepper = BatchedStepper(model, 64, backend)
        for streams in (1, 8, 64):
            slots = list(range(streams))
            chunks = [mel[i, :1] for i in slots]
            ms = _cpu_ms(lambda: stepper.step(slots, chunks), max(5, calls // streams))
            label = "PyTorch" if backend == "torch" else "ONNX Runtime"
            alone = " (`a2bs stream` onnx)" if streams == 1 and backend == "onnx" else ""
            rows.append((f"serving frame step, {label}, {streams} stream{'s' if streams > 1 else ''} a call{alone}",
                         streams, ms / streams))
    return rows


def render_step(rows, date: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"{date}; {machine()}; load average {load} at the end (CPU = thread time, the least disturbed of "
             f"3 rounds: other jobs on a shared machine inflate it less than wall time). One thread, "
             f"`tcn_full` (2,035,514 parameters, random weights), torch {torch.__version__}. Per stream per "
             "10 ms frame; goal <= 1 ms.", "",
             "| step | frames per call | CPU ms per stream-frame | share of real time |", "|---|---:|---:|---:|"]
    lines += [f"| {what} | {n} | {ms:.3f} | {ms / 10:.1%} |" for what, n, ms in rows]
    lines += ["", "Tried on the frame step and not used (2026-12-06, same shared machine, CPU ms at 1 / 64 "
              "streams): `torch.compile` (inductor, dynamic shapes) 1.47 / 6.8 vs 2.08 / 9.1 eager, but 310 s "
              "to compile and 85-220 s to recompile for each new batch size; `torch.jit.trace` + `freeze` + "
              "`optimize_for_inference` 1.02 / 5.7 vs 2.01 / 6.8 eager, but deprecated in torch 2.13; ONNX "
              "Runtime I/O binding and no thread spinning: within noise at one thread (0.30 and 0.27 vs "
              "0.35). `torch.inference_mode` instead of `no_grad`: ~3 %, kept."]
    return "\n".join(lines)


# ---- clock ---------------------------------------------------------------------------------------

def bench_clock(args) -> list[dict]:
    """One worker's engine on a simulated clock (no sockets, so the machine's load bends it little):
    N sessions send `--chunk-ms` chunks at real-time pace, each at its own phase; with a step period P
    the ticks fall every P and take every chunk that arrived since, with P = 0 every chunk is a tick
    (the per-message stepping of light load). Thread CPU of the ticks (front end, step,
    post-processing, binary frames encoding) per session-second, model calls per second, and the
    simulated wait of a chunk for its tick."""
    from a2bs.config import load_config
    from a2bs.infer.engine import ServeEngine, StreamSpec
    from a2bs.infer.offline import load_model
    from a2bs.infer.serve import tune_process
    from a2bs.infer.wire import encode_frames_f32
    from a2bs.manifests import ModelCard
    from a2bs.models import build_model, preset
    from a2bs.models.model_file import save_model

    torch.set_num_threads(1)
    audio = _speech(args.seconds)
    chunk = int(16000 * args.chunk_ms / 1000)
    chunk_s = chunk / 16000
    blocks = [audio[k * chunk : (k + 1) * chunk] for k in range(len(audio) // chunk)]
    with tempfile.TemporaryDirectory(prefix="a2bs-bench-clock-") as tmp:
        torch.manual_seed(0)
        cfg = preset("tcn_full")
        path = Path(tmp) / "tcn_full.safetensors"
        save_model(path, build_model(cfg), ModelCard.for_untrained(cfg))
        serve_cfg = load_config(None, ["serve.backend=onnx", f"serve.max_sessions={max(args.clock_sessions)}"])
        tune_process(serve_cfg)  # as `a2bs serve` runs: numpy's BLAS on one thread
        engine = ServeEngine(load_model(str(path), serve_cfg), serve_cfg)
        best: dict[tuple[int, float], dict] = {}
        # Rounds interleaved, the least CPU of each kept: other jobs on a shared machine inflate it.
        for n, period_ms in [(n, p) for _ in range(args.rounds) for n in args.clock_sessions for p in args.periods]:
            rng = np.random.default_rng(n)
            phases = rng.uniform(0, chunk_s, n)
            streams = [engine.open(StreamSpec(16000, "pcm_f32le", args.fps, frames="f32")) for _ in range(n)]
            events = sorted((phases[i] + (k + 1) * chunk_s, i, k) for i in range(n) for k in range(len(blocks)))
            if period_ms > 0:
                end_s = events[-1][0] + period_ms / 1000
                tick_times = np.arange(period_ms / 1000, end_s + period_ms / 1000, period_ms / 1000)
            else:
                tick_times = np.array([e[0] for e in events])
            calls0, cpu_s, ticks, waits, e = engine.stepper.calls, 0.0, 0, [], 0
            for t in tick_times:
                while e < len(events) and events[e][0] <= t + 1e-12:
                    arrival_s, i, k = events[e]
                    streams[i].feed(blocks[k], arrival_s)
                    waits.append(t - arrival_s)
                    e += 1
                c0 = time.thread_time()
                work = engine.prepare()
                if work:
                    results, _ = engine.tick(work)
                    for out in results.values():
                        if len(out.values):
                            encode_frames_f32(out.start_frame, out.values)
                    ticks += 1
                cpu_s += time.thread_time() - c0
            calls = engine.stepper.calls - calls0
            for s_ in streams:
                s_.closed = True
            engine.prepare()  # frees the slots
            row = {"sessions": n, "period_ms": period_ms, "ms_per_session_s": 1000 * cpu_s / (n * args.seconds),
                   "ticks_per_s": ticks / args.seconds, "calls_per_s": calls / args.seconds,
                   "wait_mean_ms": 1000 * float(np.mean(waits)), "wait_max_ms": 1000 * float(np.max(waits))}
            print(json.dumps(row), flush=True)
            if (n, period_ms) not in best or row["ms_per_session_s"] < best[(n, period_ms)]["ms_per_session_s"]:
                best[(n, period_ms)] = row
    return [best[(n, p)] for n in args.clock_sessions for p in args.periods]


def render_clock(rows: list[dict], args, date: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"{date}; {machine()}; load average {load} at the end. One worker's `ServeEngine` "
             f"(`tcn_full`, ONNX Runtime, one thread, random weights) on a simulated clock: {args.seconds:g} s of "
             f"speech per session in {args.chunk_ms:g} ms chunks at real-time pace, phases spread over a chunk; "
             "ticks every period (0 = one tick per chunk). Thread CPU of the ticks (front end, step, "
             "post-processing, frames encoding; not the WebSocket I/O) per session and second of speech, the "
             f"least of {args.rounds} interleaved rounds.", "",
             "| sessions (one worker) | step period ms | tick CPU ms per session-second | ticks per s "
             "| model calls per s | chunk wait for its tick, mean / max ms |",
             "|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['sessions']} | {r['period_ms']:g} | {r['ms_per_session_s']:.1f} | {r['ticks_per_s']:.0f} "
              f"| {r['calls_per_s']:.0f} | {r['wait_mean_ms']:.1f} / {r['wait_max_ms']:.1f} |" for r in rows]
    return "\n".join(lines)


# ---- load ----------------------------------------------------------------------------------------

def _speech(seconds: float) -> np.ndarray:
    """Demo-corpus speech looped to `seconds` (16 kHz mono)."""
    from a2bs.extract.audio import load_audio
    from common import demo_clips

    parts, total = [], 0
    for clip in demo_clips():
        x = load_audio(clip, 16000)
        parts.append(x)
        total += len(x)
        if total >= seconds * 16000:
            break
    return np.concatenate(parts)[: int(seconds * 16000)]


def _start_server(model_path: Path, backend: str, max_sessions: int, workers: str,
                  overrides: list[str]) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "a2bs.cli", "serve", str(model_path), "--port", "0", "--max-sessions",
           str(max_sessions), f"serve.backend={backend}", f"serve.workers={workers}", "serve.idle_timeout_s=120",
           *overrides]
    # The server logs a line per connection on stderr: into a file, not a pipe nobody reads (a full pipe
    # would block the server after a few hundred sessions).
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on (ws://[^ ]+)", line)
    if not m:
        proc.kill()
        proc.wait(60)
        log.seek(0)
        raise SystemExit(f"server did not start: {line}{log.read()}")
    url = m.group(1)
    return proc, url, url.replace("ws://", "http://").replace("/v1/stream", "")


async def _load_run(url: str, audio: np.ndarray, n: int, fps: float, chunk_ms: float, frames: str) -> dict:
    from a2bs.infer.client import blocks_of, stream_async

    rng = np.random.default_rng(n)

    async def one(i: int):
        await asyncio.sleep(float(rng.uniform(0, 1.0)))  # sessions start spread over a second, at any phase
        return await stream_async(url, blocks_of(audio, 16000, chunk_ms), 16000, fps=fps, realtime=True,
                                  frames=frames, open_timeout_s=60)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    expected = int(np.ceil(len(audio) / 16000 * fps - 1e-9))
    errors = [str(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    complete = sum(len(r.values) == expected and r.dropped == 0 for r in ok)
    lat = np.concatenate([r.latency_ms[np.isfinite(r.latency_ms)] for r in ok]) if ok else np.zeros(1)
    return {"sessions": n, "complete": complete, "errors": errors[:3], "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "max_ms": float(lat.max())}


def _server_stats(http: str) -> dict:
    text = urllib.request.urlopen(http + "/metrics", timeout=30).read().decode()

    def value(name: str) -> float:
        m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return {k: value(f"a2bs_serve_{k}") for k in ("step_seconds_sum", "step_seconds_count", "tick_streams_sum",
                                                     "late_frames_total", "frames_total")}


def _cpu_s(procs) -> float:
    """User + system CPU seconds of `procs` so far."""
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def bench_load(args) -> list[dict]:
    import psutil

    from a2bs.config import load_config
    from a2bs.infer.serve_support import event_loop_factory
    from a2bs.models import build_model, preset
    from a2bs.manifests import ModelCard
    from a2bs.models.model_file import save_model

    audio = _speech(args.seconds)
    # The load generator's own event loop: uvloop by default, so that it takes less of the CPU the
    # server under test shares with it.
    client_loop = event_loop_factory(load_config(None, [f"serve.event_loop={args.client_loop}"]))
    rows, t_start = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="a2bs-bench-serve-") as tmp:
        for name in args.models:
            torch.manual_seed(0)
            family = "tcn_poc" if name.startswith("tcn_poc") else name
            cfg = preset(family, **MODELS[name])
            path = Path(tmp) / f"{name}.safetensors"
            save_model(path, build_model(cfg), ModelCard.for_untrained(cfg))
            for backend in args.backends:
                proc, url, http = _start_server(path, backend, args.max_sessions, args.workers, args.server_arg)
                server = psutil.Process(proc.pid)
                procs = [server, *server.children(recursive=True)]  # the parent and its worker processes
                try:
                    tried: dict[int, bool] = {}
                    n, lo, hi = args.start, 0, None  # lo passes, hi fails
                    while len(tried) < args.max_runs and time.monotonic() - t_start < args.budget_s:
                        before, cpu0, w0 = _server_stats(http), _cpu_s(procs), time.perf_counter()
                        me0 = time.process_time()
                        with asyncio.Runner(loop_factory=client_loop) as runner:
                            res = runner.run(_load_run(url, audio, n, args.fps, args.chunk_ms, args.frames))
                        wall = time.perf_counter() - w0
                        res["client_cpu"] = (time.process_time() - me0) / wall
                        cpu1, after = _cpu_s(procs), _server_stats(http)
                        steps = after["step_seconds_count"] - before["step_seconds_count"]
                        res.update(model=name, backend=backend, workers=len(procs) - 1 or 1, client_loop=args.client_loop,
                                   server_args=" ".join(args.server_arg),
                                   passed=res["complete"] == n and res["p95_ms"] <= args.p95_ms,
                                   server_cpu=(cpu1 - cpu0) / wall,
                                   # CPU per session per second of speech: the cost, less bent by other
                                   # jobs on the machine than latency is
                                   server_ms_per_session_s=1000 * (cpu1 - cpu0) / (n * args.seconds),
                                   step_ms=1000 * (after["step_seconds_sum"] - before["step_seconds_sum"])
                                   / max(1, steps),
                                   streams_per_tick=(after["tick_streams_sum"] - before["tick_streams_sum"])
                                   / max(1, steps), load=os.getloadavg()[0])
                        rows.append(res)
                        print(json.dumps(res), flush=True)
                        tried[n] = res["passed"]
                        if res["passed"]:
                            lo = n
                        else:
                            hi = n
                        nxt = min(2 * n, args.max_sessions) if hi is None else (lo + hi) // 2
                        if nxt in tried or nxt <= lo or (hi is not None and hi - lo <= max(1, lo // 8)):
                            break
                        n = nxt
                finally:
                    proc.terminate()
                    proc.wait(60)
    return rows


def render_load(rows: list[dict], args, date: str) -> str:
    shared = os.getloadavg()[0] > (os.cpu_count() or 1)
    caveat = " (**machine shared with other jobs**: an upper bound on latency, a lower bound on N)" if shared else ""
    lines = [f"{date}; {machine()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
             f"{caveat}. "
             f"Server (`a2bs serve serve.workers={args.workers} {' '.join(args.server_arg)}`, frames sent as "
             f"`{args.frames}`) and the load generator (this script, one asyncio "
             f"process) share the machine. {args.seconds:g} s of demo speech per session, {args.chunk_ms:g} ms "
             f"chunks at real-time pace, {args.fps:g} fps, sessions starting spread over 1 s. Pass = every "
             f"session got all its frames and p95 latency <= {args.p95_ms:g} ms.", "",
             "| model | backend | workers | sessions | complete | p50 ms | p95 ms | max ms | server CPU (cores) "
             "| server CPU ms per session-second | client CPU (cores) | streams per tick | step ms per tick | pass |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['workers']} | {r['sessions']} | {r['complete']} "
                     f"| {r['p50_ms']:.1f} "
                     f"| {r['p95_ms']:.1f} | {r['max_ms']:.0f} | {r['server_cpu']:.2f} "
                     f"| {r['server_ms_per_session_s']:.0f} | {r['client_cpu']:.2f} "
                     f"| {r['streams_per_tick']:.1f} "
                     f"| {r['step_ms']:.2f} | {'yes' if r['passed'] else 'no'} |")
    best = {}
    for r in rows:
        key = (r["model"], r["backend"])
        if r["passed"]:
            best[key] = max(best.get(key, 0), r["sessions"])
        else:
            best.setdefault(key, 0)
    lines += ["", "Largest passing N: " + "; ".join(f"{m} {b}: **{n}**" for (m, b), n in best.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["step", "clock", "load", "all"])
    ap.add_argument("--calls", type=int, default=300, help="step: timed calls per variant")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--seconds", type=float, default=20.0, help="speech per session")
    ap.add_argument("--chunk-ms", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=60.0)
    ap.add_argument("--p95-ms", type=float, default=50.0)
    ap.add_argument("--start", type=int, default=8, help="first N")
    ap.add_argument("--max-sessions", type=int, default=256)
    ap.add_argument("--max-runs", type=int, default=7, help="runs per model and backend")
    ap.add_argument("--budget-s", type=float, default=3600.0, help="stop starting new runs after this")
    ap.add_argument("--workers", default="auto", help="serve.workers of the server (auto = one per core)")
    ap.add_argument("--frames", default="f32", choices=["f32", "json"],
                    help="how the server sends frames to the load generator (f32: binary)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `a2bs serve` override, e.g. "
                    "serve.step_threads=2 (repeatable)")
    ap.add_argument("--client-loop", default="uvloop", choices=["asyncio", "uvloop"],
                    help="load: the load generator's event loop")
    ap.add_argument("--periods", nargs="+", type=float, default=[0, 5, 10, 20], help="clock: step periods (ms)")
    ap.add_argument("--rounds", type=int, default=3, help="clock: rounds (the least CPU of each is kept)")
    ap.add_argument("--clock-sessions", nargs="+", type=int, default=[8, 32], help="clock: sessions of one worker")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    date = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip()
    parts = [SECTION, "", "`.venv/bin/python benchmarks/bench_serve.py all --write-readme` (tables below are "
             "from the command shown with each).", ""]
    if args.part in ("step", "all"):
        text = render_step(bench_step(args.calls), date)
        print(text)
        parts += ["### One streaming step", "", text, ""]
    if args.part in ("clock", "all"):
        text = render_clock(bench_clock(args), args, date)
        print(text)
        parts += ["### The step clock", "", f"`{' '.join(sys.argv[1:])}`", "", text, ""]
    if args.part in ("load", "all"):
        text = render_load(bench_load(args), args, date)
        print(text)
        parts += ["### Concurrent real-time sessions", "", f"`{' '.join(sys.argv[1:])}`", "", text, ""]
    if args.write_readme:
        write_readme_section(SECTION, "\n".join(parts))
        print(f"written to {README}")


if __name__ == "__main__":
    main()
