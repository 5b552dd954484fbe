"""Streaming and offline inference speed on one CPU thread (issue 4).

Measures, for the ``tcn_full`` preset (random weights: speed does not depend on training):

- the stateful streaming step per 10 ms frame (:class:`a2bs.infer.streaming.StreamingModel`),
- naive streaming: recompute the whole receptive field (2045 frames) for every new frame,
- the exported ONNX step graph run by ONNX Runtime (one intra-op thread),
- the streaming log-mel front end per 10 ms hop,

and the offline real-time factor (compute time / audio time) of 60 s of audio for every model.
Prints a markdown table; ``--write-readme`` puts it in benchmarks/README.md under
"## Models and streaming (issue 4)", leaving the file's other sections alone.

    .venv/bin/python benchmarks/bench_streaming.py [--steps 300] [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from a2bs.config import AudioConfig
from a2bs.extract.audio import log_mel
from a2bs.infer.export import (
    OnnxStreamer,
    export_onnx_step,
    initial_onnx_state,
    onnx_session,
)
from a2bs.infer.streaming import StreamingLogMel, StreamingModel
from a2bs.models import available_models, build_model, count_parameters, preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_readme_section  # noqa: E402

SECTION = "## Models and streaming (issue 4)"
README = Path(__file__).with_name("README.md")
FRAME_MS = 10.0


def _timed(fn, repeats: int, rounds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and thread-CPU milliseconds of `repeats` calls, from the least disturbed of `rounds`.

    The development machine is shared, so wall time swings with other load; thread CPU time does not
    count time spent preempted, and the round with the lowest median wall time is kept.
    """
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(rounds):
        wall, cpu = np.empty(repeats), np.empty(repeats)
        for i in range(repeats):
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            wall[i], cpu[i] = (time.perf_counter() - w0) * 1000.0, (time.thread_time() - c0) * 1000.0
        if best is None or np.median(wall) < np.median(best[0]):
            best = (wall, cpu)
    return best


def _mel(frames: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-80, 0, size=(1, frames, 80)).astype(np.float32))


StreamRow = tuple[str, int, np.ndarray, np.ndarray]  # (what, frames per step, wall ms, cpu ms)


def bench_stream(steps: int, naive_steps: int, rounds: int) -> list[StreamRow]:
    """Rows for tcn_full streaming variants (per step: wall and CPU milliseconds)."""
    torch.manual_seed(0)
    model = build_model(preset("tcn_full")).eval()
    past, _ = model.receptive_field()
    rows: list[StreamRow] = []

    for chunk in (1, 10):
        mel = _mel((steps * rounds + 20) * chunk)
        stream = StreamingModel(model)
        starts = iter(range(0, mel.shape[1], chunk))

        def one_step() -> None:
            i = next(starts)
            stream.step(mel[:, i : i + chunk])

        with torch.no_grad():
            for _ in range(20):
                one_step()
            wall, cpu = _timed(one_step, steps, rounds)
        rows.append((f"PyTorch stateful step ({chunk * 10} ms chunks)", chunk, wall, cpu))

    window = _mel(past + 1, seed=1)  # the receptive field: 2045 frames for one output frame
    with torch.no_grad():
        model(window)
        wall, cpu = _timed(lambda: model(window)[:, -1], naive_steps, rounds)
    rows.append((f"PyTorch naive: recompute {past + 1} frames per frame", 1, wall, cpu))

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx_step(model, Path(tmp) / "step.onnx")
        streamer = OnnxStreamer(onnx_session(path, threads=1), initial_onnx_state(model))
        x = _mel(steps * rounds + 20).numpy()
        frames = iter(range(x.shape[1]))
        for _ in range(20):
            streamer.step(x[:, next(frames)][:, None])
        wall, cpu = _timed(lambda: streamer.step(x[:, next(frames)][:, None]), steps, rounds)
    rows.append(("ONNX Runtime stateful step (10 ms chunks)", 1, wall, cpu))

    cfg = AudioConfig()
    front = StreamingLogMel(cfg)
    audio = np.random.default_rng(2).standard_normal(cfg.hop_length * (steps * rounds + 30)).astype(np.float32)
    hops = iter(range(0, len(audio), cfg.hop_length))

    def push_hop() -> None:
        i = next(hops)
        front.push(audio[i : i + cfg.hop_length] * 0.1)

    for _ in range(20):
        push_hop()
    wall, cpu = _timed(push_hop, steps, rounds)
    rows.append(("streaming log-mel front end (160 samples)", 1, wall, cpu))
    return rows


def bench_offline(seconds: float = 60.0, repeats: int = 3) -> list[tuple[str, int, float, float]]:
    """Rows (model, parameters, best seconds for `seconds` of audio, real-time factor)."""
    cfg = AudioConfig()
    n_frames = 1 + int(seconds * cfg.sample_rate) // cfg.hop_length
    mel = _mel(n_frames, seed=3)
    rows = []
    for name in available_models():
        torch.manual_seed(0)
        model = build_model(preset(name)).eval()
        with torch.no_grad():
            model(mel[:, :500])
            t, _ = _timed(lambda: model(mel), repeats)
        rows.append((name, count_parameters(model), float(t.min()) / 1000.0, float(t.min()) / 1000.0 / seconds))
    audio = np.random.default_rng(4).standard_normal(int(seconds * cfg.sample_rate)).astype(np.float32) * 0.1
    t, _ = _timed(lambda: log_mel(audio, cfg), repeats)
    rows.append(("log-mel front end (offline)", 0, float(t.min()) / 1000.0, float(t.min()) / 1000.0 / seconds))
    return rows


def _machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    return f"{os.cpu_count()} cores, {model}; load average at the start {_load()}"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def render(stream_rows: list[StreamRow], offline_rows, date: str, machine: str, end_load: str) -> str:
    """The README section as markdown."""
    naive_ms = float(np.median(next(r[2] for r in stream_rows if "naive" in r[0])))
    lines = [
        SECTION,
        "",
        f"Date: {date}. Machine: {machine}; load average at the end {end_load} (the machine is shared: wall "
        f"times are the least disturbed of several rounds, CPU = thread CPU time). One torch/ORT thread "
        f"(`torch.set_num_threads(1)`), torch {torch.__version__}. Random weights (speed does not depend on "
        "training). Reproduce: `.venv/bin/python benchmarks/bench_streaming.py --write-readme`.",
        "",
        "Streaming `tcn_full` (2,035,514 parameters, receptive field 2045 frames); a 10 ms frame arrives every 10 ms:",
        "",
        "| path | median wall ms / step | p95 wall ms | median CPU ms / step | wall ms per 10 ms of audio "
        "| share of real time | naive / this |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, frames, wall, cpu in stream_rows:
        med = float(np.median(wall))
        per_frame = med / frames
        ratio = "-" if "front end" in what else f"{naive_ms / per_frame:.0f}x"
        lines.append(
            f"| {what} | {med:.3f} | {np.percentile(wall, 95):.3f} | {np.median(cpu):.3f} | {per_frame:.3f} "
            f"| {per_frame / FRAME_MS:.1%} | {ratio} |"
        )
    lines += [
        "",
        "Offline inference, 60 s of audio (6001 frames) in one forward pass (best of 3):",
        "",
        "| model | parameters | seconds | real-time factor |",
        "|---|---:|---:|---:|",
    ]
    for name, params, sec, rtf in offline_rows:
        lines.append(f"| {name} | {f'{params:,}' if params else '-'} | {sec:.3f} | {rtf:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="timed streaming steps")
    ap.add_argument("--naive-steps", type=int, default=10, help="timed naive recomputations")
    ap.add_argument("--rounds", type=int, default=3, help="measurement rounds (the least disturbed is kept)")
    ap.add_argument("--write-readme", action="store_true", help="write the table into benchmarks/README.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    machine = _machine()
    date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip() or str(datetime.now())
    stream_rows = bench_stream(args.steps, args.naive_steps, args.rounds)
    offline_rows = bench_offline()
    text = render(stream_rows, offline_rows, date, machine, _load())
    print(text)
    if args.write_readme:
        write_readme_section(SECTION, text)
        print(f"written to {README}")


if __name__ == "__main__":
    main()
