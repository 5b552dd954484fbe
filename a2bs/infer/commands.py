"""`a2bs infer`, `a2bs stream` and `a2bs preview`: thin wrappers around a2bs.infer."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from a2bs.config import ConfigError, load_config, split_overrides, user_overrides
from a2bs.runtime import console


def _cfg_and_inputs(args: argparse.Namespace, items: list[str]):
    """(resolved config, what the user set explicitly, the positional inputs)."""
    inputs, overrides = split_overrides(items)
    return load_config(args.config, overrides), user_overrides(args.config, overrides), inputs


def cmd_infer(args: argparse.Namespace, rest: list[str]) -> int:
    """Offline inference over files, folders, globs or s3:// prefixes."""
    from a2bs.infer.offline import run_infer

    cfg, explicit, inputs = _cfg_and_inputs(args, args.inputs + rest)
    if not inputs:
        raise ConfigError("infer: give a model (or 'default') and at least one input file, folder or s3:// prefix")
    use_ray = False if args.no_ray else None
    summary = run_infer(args.model, inputs, args.out, cfg, fmt=args.format, fps=args.fps, use_ray=use_ray,
                        overrides=explicit, progress=not args.quiet, identity=args.identity)
    console.summary(summary.line())  # each failure was shown (and logged) as it happened
    return 0 if summary.ok and not summary.failed else 1


def cmd_stream(args: argparse.Namespace, rest: list[str]) -> int:
    """Real-time streaming from a file (played at real-time pace) or the microphone to live sinks."""
    import torch

    from a2bs.extract.audio import load_audio
    from a2bs.infer.live import (
        JsonLinesSink,
        StreamingSession,
        file_blocks,
        livelink_sink_for,
        microphone_blocks,
        run_stream,
    )
    from a2bs.infer.offline import load_model

    cfg, explicit, extra = _cfg_and_inputs(args, rest)
    if extra:
        raise ConfigError(f"stream: unexpected arguments {' '.join(extra)}")
    if args.server:
        return _stream_to_server(args, cfg)
    if args.audio is None:
        raise ConfigError("stream: give a model and an audio file (or 'mic'), or AUDIO --server ws://...")
    torch.set_num_threads(1)  # one frame at a time: intra-op threads only add overhead and jitter
    model = load_model(args.model, cfg, explicit)
    fps = float(cfg.infer.fps if args.fps is None else args.fps)
    session = StreamingSession(model, cfg, fps, identity=args.identity)  # StreamingError: a non-causal model
    sinks: list = []
    if args.livelink:
        sinks.append(livelink_sink_for(args.livelink, cfg, fps))
    if args.jsonl:
        sinks.append(JsonLinesSink(sys.stdout))
    sr, chunk_ms = model.audio_cfg.sample_rate, cfg.infer.stream_chunk_ms
    if args.audio == "mic":
        blocks = microphone_blocks(sr, chunk_ms, args.seconds)
        report = run_stream(session, blocks, sinks, realtime=True, paced_source=False)
    else:
        from a2bs.extract.media import probe

        probe(args.audio)  # one clear reason for a bad file before any streaming
        blocks = file_blocks(load_audio(args.audio, sr), sr, chunk_ms)
        report = run_stream(session, blocks, sinks, realtime=args.realtime)
    # With --jsonl, stdout carries the frames only; the summary goes to stderr.
    print(report.line(), file=sys.stderr if args.jsonl else sys.stdout)
    return 0


def _stream_to_server(args: argparse.Namespace, cfg) -> int:
    """`a2bs stream AUDIO --server ws://...`: the reference client, frames to the same sinks."""
    import asyncio

    import numpy as np

    from a2bs.extract.audio import load_audio
    from a2bs.infer.client import blocks_of, stream_async
    from a2bs.infer.live import JsonLinesSink, livelink_sink_for, microphone_blocks

    if args.audio is not None:
        raise ConfigError("stream --server: the model is the server's; give only AUDIO (a file or 'mic')")
    audio, sr, chunk_ms = args.model, cfg.audio.sample_rate, cfg.infer.stream_chunk_ms
    fps = float(cfg.infer.fps if args.fps is None else args.fps)
    token = None
    if args.token_file:
        from pathlib import Path

        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    sinks: list = []
    if args.livelink:
        sinks.append(livelink_sink_for(args.livelink, cfg, fps))
    if args.jsonl:
        sinks.append(JsonLinesSink(sys.stdout))
    if audio == "mic":
        blocks, realtime, blocking = microphone_blocks(sr, chunk_ms, args.seconds), True, True
    else:
        from a2bs.extract.media import probe

        probe(audio)  # one clear reason for a bad file before connecting
        blocks, realtime, blocking = blocks_of(load_audio(audio, sr), sr, chunk_ms), args.realtime, False
    try:
        start = {"identity": args.identity} if args.identity is not None else None
        result = asyncio.run(stream_async(args.server, blocks, sr, fps=fps, token=token, realtime=realtime,
                                          blocking_source=blocking, start=start,
                                          on_frames=lambda chunk, lat: [s.write(chunk, lat) for s in sinks]))
    finally:
        for sink in sinks:
            sink.close()
    lat = result.latency_ms[np.isfinite(result.latency_ms)]
    timing = (f"; latency mean {lat.mean():.1f} ms, p95 {np.percentile(lat, 95):.1f} ms (audio sent -> frame "
              "received)" if realtime and len(lat) else "")
    print(f"stream: {len(result.values)} frames from {result.audio_s:.2f} s of audio via {args.server}{timing}"
          f"{f'; the server dropped {result.dropped} frames (slow reading)' if result.dropped else ''}",
          file=sys.stderr if args.jsonl else sys.stdout)
    return 0


def cmd_serve(args: argparse.Namespace, rest: list[str]) -> int:
    """WebSocket service: live PCM in, face-rig frames out, every session in one batched step."""
    from a2bs.infer.offline import load_model
    from a2bs.infer.serve import run_server

    inputs, overrides = split_overrides(rest)
    if inputs:
        raise ConfigError(f"serve: unexpected arguments {' '.join(inputs)}")
    flags = {"host": args.host, "port": args.port, "max_sessions": args.max_sessions, "token_file": args.token_file}
    overrides += [f"serve.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(args.config, overrides)
    model = load_model(args.model, cfg)
    return run_server(model, cfg, identity=args.identity)


def cmd_preview(args: argparse.Namespace, rest: list[str]) -> int:
    """Render a preview MP4 (and optionally a PNG plot of the curves)."""
    from a2bs.infer.offline import load_model
    from a2bs.infer.preview import plot_curves, preview_file

    cfg, explicit, extra = _cfg_and_inputs(args, rest)
    if extra:
        raise ConfigError(f"preview: unexpected arguments {' '.join(extra)}")
    model = load_model(args.model, cfg, explicit)
    path, curves = preview_file(model, args.input, args.out, cfg, args.fps, args.identity)
    if args.plot:
        plot_curves(curves, args.plot)
    print(f"preview: {len(curves)} frames at {curves.fps:g} fps ({curves.duration_s:.2f} s) -> {path}")
    return 0


def _add_identity(p: argparse.ArgumentParser, default_help: str = "their learned average") -> None:
    p.add_argument("--identity", metavar="NAME", default=None,
                   help=f"whose face to drive: one of the model's identities (`a2bs info MODEL`); default "
                        f"{default_help}")


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add the infer, stream, serve and preview subcommands."""
    p = sub.add_parser("infer", help="audio/video -> Live Link Face CSV, face JSON, NumPy or Parquet curves")
    p.add_argument("model", help="model file (.safetensors, local or s3://) or 'default' (infer.model_path)")
    p.add_argument("inputs", nargs="*", help="files, folders, globs or s3:// prefixes (and key=value overrides)")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--format", default=None, help="livelink-csv, json, npz (the curves as an .npz archive; "
                   "npy is an alias) or parquet (default infer.format)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default infer.fps)")
    p.add_argument("--no-ray", action="store_true", help="run in this process even for many files")
    _add_identity(p)
    add_common(p)
    handlers["infer"] = cmd_infer

    p = sub.add_parser("stream", help="real-time streaming to Live Link (UDP) and/or JSON lines")
    p.add_argument("model", help="causal model file or 'default' (with --server: the AUDIO)")
    p.add_argument("audio", nargs="?", help="audio/video file played at real-time pace, or 'mic' (needs sounddevice)")
    p.add_argument("--server", metavar="URL", help="stream to `a2bs serve` at ws://HOST:PORT/v1/stream instead")
    p.add_argument("--token-file", help="with --server: file holding the server's access token")
    p.add_argument("--livelink", metavar="HOST:PORT", help="send Live Link Face UDP packets (Unreal: port 11111)")
    p.add_argument("--jsonl", action="store_true", help="write one JSON object per frame to stdout")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="pace a file at real time (default) or run as fast as possible")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default infer.fps)")
    p.add_argument("--seconds", type=float, default=None, help="microphone: stop after this many seconds")
    _add_identity(p, "their learned average (with --server: the server's default)")
    add_common(p)
    handlers["stream"] = cmd_stream

    p = sub.add_parser("serve", help="WebSocket service: live PCM in, frames out, sessions batched "
                                     "(docs/serving.md)")
    p.add_argument("model", help="causal model file or 'default'")
    p.add_argument("--host", help="address to bind (default serve.host, 127.0.0.1; others need --token-file)")
    p.add_argument("--port", type=int, help="TCP port (default serve.port, 8765; 0 = any free port)")
    p.add_argument("--max-sessions", type=int, help="admission limit (default serve.max_sessions)")
    p.add_argument("--token-file", help="file holding the access token clients must send")
    _add_identity(p, "their learned average; for the sessions that name no identity (each session may)")
    add_common(p)
    handlers["serve"] = cmd_serve

    p = sub.add_parser("preview", help="render an MP4 of a 2-D face driven by the curves, with the audio")
    p.add_argument("model", help="model file or 'default'")
    p.add_argument("input", help="audio or video file")
    p.add_argument("--out", required=True, help="MP4 to write")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default infer.fps)")
    p.add_argument("--plot", help="also write a PNG plot of key curves")
    _add_identity(p)
    add_common(p)
    handlers["preview"] = cmd_preview
