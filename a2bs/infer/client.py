"""Reference client of `a2bs serve` (what `a2bs stream AUDIO --server ws://...` runs).

    from a2bs.client import stream_file
    result = stream_file("ws://127.0.0.1:8765/v1/stream", "speech.wav", fps=60)
    result.values            # (N, 59) in the order of result.names; result.curves() -> Curves
    result.latency_ms        # per frame: frame received - the audio message holding its sample sent

It sends mono PCM in blocks (at real-time pace for a file unless ``realtime=False``), the end message,
and collects the frames while it sends. Needs numpy and ``websockets`` only (no torch).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from a2bs.infer.curves import Curves
from a2bs.infer.wire import decode_frames_f32, encode_pcm


class ServeError(RuntimeError):
    """The server refused the session or ended it with an error (``reason`` is its one-line message)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        self.reason, self.status = reason, status
        super().__init__(reason if status is None else f"HTTP {status}: {reason}")


@dataclass
class ClientResult:
    """What a session received."""

    names: list[str]
    fps: float
    values: np.ndarray  # (N, 59)
    frames: int  # the server's total in "done"
    dropped: int  # frames the server dropped because this client read too slowly
    audio_s: float  # audio sent
    latency_ms: np.ndarray  # (N,) receive time - send time of the message holding the frame's sample
    starts: list[int] = field(default_factory=list)  # "start" of each frames message, in order
    ready: dict[str, Any] = field(default_factory=dict)  # the server's "ready" message

    def curves(self) -> Curves:
        """The frames as :class:`~a2bs.infer.curves.Curves`."""
        return Curves(self.values, self.fps, duration_s=self.audio_s)


def blocks_of(samples: np.ndarray, sample_rate: int, chunk_ms: float) -> Iterator[np.ndarray]:
    """Blocks of `chunk_ms` of `samples` (a file sent as a device would deliver it)."""
    n = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
    for i in range(0, len(samples), n):
        yield samples[i : i + n]


async def stream_async(url: str, blocks: Iterable[np.ndarray], sample_rate: int, *, encoding: str = "pcm_s16le",
                       fps: float = 60.0, frames: str = "f32", token: str | None = None, realtime: bool = True,
                       blocking_source: bool = False, start: dict[str, Any] | None = None,
                       on_frames: Callable[[Curves, np.ndarray], None] | None = None,
                       open_timeout_s: float = 10.0) -> ClientResult:
    """Stream `blocks` of mono float samples to a server; returns everything it sent back.

    Args:
        url: ``ws://HOST:PORT/v1/stream``.
        blocks: mono float32 blocks at `sample_rate`.
        sample_rate: the rate declared to the server (it resamples to the model's).
        encoding: ``pcm_s16le`` or ``pcm_f32le``.
        fps: output frame rate asked for.
        frames: how the server sends frames: ``f32`` binary messages (less CPU on both sides; the
            float32 the server computed) or ``json`` ones (the protocol's default, rounded to 1e-6).
        token: sent as ``Authorization: Bearer TOKEN``.
        realtime: send each block when its last sample would have been captured (file sources).
        blocking_source: `blocks` blocks until audio arrives (a microphone): read it in a thread.
        start: extra start-message fields (``livelink``, ``identity``).
        on_frames: called with each chunk of frames and their latencies (ms).

    Raises:
        ServeError: the server refused the connection or the session, or sent an error.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    headers = {"Authorization": f"Bearer {token}"} if token else None
    sent_end: list[int] = []  # cumulative samples at the end of each message
    sent_at: list[float] = []  # its send time (perf_counter)
    try:
        ws = await connect(url, additional_headers=headers, compression=None, open_timeout=open_timeout_s,
                           max_size=None)
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip()
        raise ServeError(body or "refused", exc.response.status_code) from None
    async with ws:
        try:
            first = {"sample_rate": int(sample_rate), "encoding": encoding, "fps": fps}
            if frames != "json":  # JSON is what a server does unasked
                first["frames"] = frames
            await ws.send(json.dumps({**first, **(start or {})}))
            ready = json.loads(await ws.recv())
        except ConnectionClosed as exc:  # refused before the start message (e.g. the server is full)
            raise ServeError(_close_reason(exc)) from None
        if ready.get("event") != "ready":
            raise ServeError(ready.get("reason", f"unexpected reply {ready!r}"))
        names, out_fps = list(ready["names"]), float(ready["fps"])

        async def send_all() -> None:
            total, t0 = 0, time.perf_counter()
            it = iter(blocks)
            while True:
                block = await asyncio.to_thread(next, it, None) if blocking_source else next(it, None)
                if block is None:
                    break
                total += len(block)
                if realtime and not blocking_source:
                    delay = t0 + total / sample_rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing a file as a live source would deliver it
                await ws.send(encode_pcm(block, encoding))
                sent_end.append(total)
                sent_at.append(time.perf_counter())
            await ws.send(json.dumps({"event": "end"}))

        sender = asyncio.create_task(send_all())
        chunks: list[np.ndarray] = []
        latencies: list[np.ndarray] = []
        starts: list[int] = []
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    raise ServeError(f"connection closed before the end: {_close_reason(exc)}") from None
                now = time.perf_counter()
                if isinstance(raw, bytes):  # "f32" frames
                    first_frame, values = decode_frames_f32(raw, len(names))
                    msg = {"event": "frames"}
                else:
                    msg = json.loads(raw)
                    if msg.get("event") == "frames":
                        first_frame = int(msg["start"])
                        values = np.asarray(msg["values"], np.float32).reshape(-1, len(names))
                event = msg.get("event")
                if event == "frames":
                    # The message holding each frame's sample (none past the last one: NaN).
                    held = [bisect.bisect_right(sent_end, int((first_frame + i) / out_fps * sample_rate))
                            for i in range(len(values))]
                    lat = np.array([(now - sent_at[j]) * 1000.0 if j < len(sent_at) else np.nan for j in held])
                    chunks.append(values)
                    latencies.append(lat)
                    starts.append(first_frame)
                    if on_frames is not None:
                        on_frames(Curves(values, out_fps, start_frame=first_frame), lat)
                elif event == "done":
                    await sender
                    values = np.concatenate(chunks) if chunks else np.zeros((0, len(names)), np.float32)
                    return ClientResult(names, out_fps, values, int(msg["frames"]), int(msg.get("dropped", 0)),
                                        (sent_end[-1] if sent_end else 0) / sample_rate,
                                        np.concatenate(latencies) if latencies else np.zeros(0), starts, ready)
                elif event == "error":
                    raise ServeError(msg.get("reason", "error"))
        finally:
            sender.cancel()


def _close_reason(exc: Exception) -> str:
    rcvd = getattr(exc, "rcvd", None)
    return (rcvd.reason if rcvd is not None and rcvd.reason else "") or "connection closed"


def stream_samples(url: str, samples: np.ndarray, sample_rate: int, chunk_ms: float = 20.0,
                   **kwargs: Any) -> ClientResult:
    """Stream decoded mono samples in `chunk_ms` blocks (keyword arguments as :func:`stream_async`)."""
    return asyncio.run(stream_async(url, blocks_of(np.asarray(samples, np.float32), sample_rate, chunk_ms),
                                    sample_rate, **kwargs))


def stream_file(url: str, path: str, sample_rate: int = 16000, chunk_ms: float = 20.0,
                **kwargs: Any) -> ClientResult:
    """Stream an audio (or video) file, decoded to mono `sample_rate` by ffmpeg."""
    from a2bs.extract.audio import load_audio

    return stream_samples(url, load_audio(path, sample_rate), sample_rate, chunk_ms, **kwargs)
