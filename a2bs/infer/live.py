"""Live streaming: audio in real time -> causal model -> curves out to sinks, with latency accounting.

:class:`StreamingSession` is the Python API (``push(samples) -> new frames``, ``close() -> the rest``):
the streaming front end and model of :mod:`a2bs.infer.streaming` (or, with ``infer.stream_backend=onnx``,
the serving frame step of :mod:`a2bs.infer.batched` in ONNX Runtime), then the same post-processing and resampling as
offline inference, so a stream's curves equal ``a2bs infer``'s on the same audio.

:func:`run_stream` drives a session from an audio source (a file played at real-time pace, or a
microphone when the optional ``sounddevice`` package is installed) and hands each chunk of frames to
sinks: Live Link Face UDP packets, JSON lines, or a Python callback.

Latency: the front end needs ``n_fft / 2`` samples past a frame's centre (16 ms) and resampling to the
output rate needs the next 100 Hz frame (up to 10 ms), plus one audio block. End-to-end latency is
measured per frame as ``wall time the frame left - wall time its own audio sample arrived``.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, TextIO

import numpy as np

from a2bs.config import AudioConfig, Config, ConfigError
from a2bs.extract.audio import mel_filterbank, stft_window, voice_activity
from a2bs.infer.batched import SingleStream, make_batched_stepper
from a2bs.infer.curves import Curves, StreamResampler
from a2bs.infer.livelink import encode_packet, livelink_values, new_device_id
from a2bs.infer.offline import LoadedModel, eye_range
from a2bs.infer.postprocess import PostProcessor
from a2bs.infer.streaming import StreamingLogMel, StreamingModel
from a2bs.schema import TARGET_NAMES


class StreamingVAD:
    """Chunked samples -> per-frame voice activity, on the same centred grid as the mel frames."""

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg = cfg
        self._pad = cfg.n_fft // 2
        self._buf = np.zeros(self._pad, dtype=np.float64)
        self._buf_start = 0
        self._next = 0
        self._n = 0

    def _emit(self, total: int | None) -> np.ndarray:
        hop, n_fft, win = self.cfg.hop_length, self.cfg.n_fft, self.cfg.win_length
        ready = max(0, (self._buf_start + len(self._buf) - n_fft) // hop + 1)
        if total is not None:
            ready = min(ready, total)
        if ready <= self._next:
            return np.zeros(0, np.float32)
        lo = (n_fft - win) // 2
        starts = np.arange(self._next, ready) * hop - self._buf_start + lo
        frames = np.stack([self._buf[s : s + win] for s in starts])  # (n, win)
        rms = np.sqrt(np.mean(frames**2, axis=1)).astype(np.float32)
        self._next = ready
        keep = self._next * hop - self._buf_start
        self._buf, self._buf_start = self._buf[keep:], self._buf_start + keep
        return voice_activity(rms, self.cfg)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Voice activity (n,) of the frames completed by `samples`."""
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1).astype(np.float64)
        self._n += chunk.size
        self._buf = np.concatenate([self._buf, chunk])
        return self._emit(None)

    def flush(self) -> np.ndarray:
        """End of stream (zero padding as offline)."""
        self._buf = np.concatenate([self._buf, np.zeros(self._pad)])
        return self._emit(1 + self._n // self.cfg.hop_length)


def make_stepper(net, backend: str, identity: int | None = None):
    """The streaming model runner: ``"torch"`` (StreamingModel, the cached-context step: fastest per
    frame when blocks hold several frames) or ``"onnx"`` (the ring-buffer frame step of
    :mod:`a2bs.infer.batched` in ONNX Runtime: ~4x cheaper than the cached-context graph per 10 ms
    frame, benchmarks/README.md); `identity` is the identity row (None = the average)."""
    if backend == "torch":
        return StreamingModel(net, identity=identity)
    if backend == "onnx":
        return SingleStream(make_batched_stepper(net, 1, "onnx"), identity)
    raise ConfigError(f"infer.stream_backend must be 'torch' or 'onnx', not {backend!r}")


class StreamingSession:
    """One live stream: mono samples at the model's sample rate in, curves at `fps` out.

    Args:
        model: a loaded causal model (:func:`a2bs.infer.offline.load_model`).
        cfg: resolved config (``infer`` section: post-processing).
        fps: output frame rate (default ``cfg.infer.fps``).
        rest: fixed rest face (52,) for neutral calibration (default: measured on silence as it comes).
        identity: the face to drive, one of the card's identities (None = their learned average).

    Raises:
        StreamingError: the model is not causal, so it cannot stream.
        ConfigError: an unknown identity, or one for a model without identities.
    """

    def __init__(self, model: LoadedModel, cfg: Config, fps: float | None = None,
                 rest: np.ndarray | None = None, identity: str | None = None) -> None:
        self.model, self.cfg = model, cfg
        self.identity = identity
        row = model.identity_row(identity)
        self.fps = float(cfg.infer.fps if fps is None else fps)
        if self.fps <= 0:
            raise ConfigError(f"fps must be positive, got {self.fps}")
        self.sample_rate = model.audio_cfg.sample_rate
        self.rate_hz = model.audio_cfg.sample_rate / model.audio_cfg.hop_length
        self._frontend = StreamingLogMel(model.audio_cfg, model.card.mel_norm)
        self._stepper = make_stepper(model.net, cfg.infer.stream_backend, row)
        self._rest = rest
        self._warm_up()
        self.reset()

    def _warm_up(self) -> None:
        # The first call would otherwise import librosa (window, filterbank) and initialise torch
        # kernels mid-stream: seconds of stall on a live stream.
        stft_window(self.model.audio_cfg)
        mel_filterbank(self.model.audio_cfg)
        self._stepper.step(np.zeros((1, self.model.audio_cfg.n_mels), np.float32))
        self._stepper.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._frontend.reset()
        self._stepper.reset()
        need_vad = self.cfg.infer.neutral_calibration and self._rest is None
        self._vad = StreamingVAD(self.model.audio_cfg) if need_vad else None
        self._post = PostProcessor(self.cfg.infer, self.rate_hz, rest=self._rest)
        self._resampler = StreamResampler(self.rate_hz, self.fps)
        self.samples_in = 0
        self.closed = False

    def _chunk(self, values: np.ndarray, start: int) -> Curves:
        return Curves(values, self.fps, duration_s=self.samples_in / self.sample_rate, start_frame=start)

    def push(self, samples: np.ndarray) -> Curves:
        """Add mono samples; returns the new output frames (possibly none)."""
        if self.closed:
            raise ValueError("stream is closed; call reset() to start a new one")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += x.size
        raw = self._stepper.step(self._frontend.push(x))  # (n, 59) at 100 Hz
        vad = self._vad.push(x) if self._vad is not None else None
        start = self._resampler.next_frame
        return self._chunk(self._resampler.push(self._post(raw, vad)), start)

    def close(self) -> Curves:
        """End of stream: the last frames (the front end zero-pads the end as offline)."""
        if self.closed:
            return self._chunk(np.zeros((0, len(TARGET_NAMES)), np.float32), self._resampler.next_frame)
        self.closed = True
        raw = self._stepper.step(self._frontend.flush())
        vad = self._vad.flush() if self._vad is not None else None
        start = self._resampler.next_frame
        # The end is known now: the last source frames go through flush, which stops at the audio's end.
        tail = self._resampler.flush(self.samples_in / self.sample_rate, self._post(raw, vad))
        return self._chunk(tail, start)


# ---- sources -----------------------------------------------------------------------------------

def file_blocks(samples: np.ndarray, sample_rate: int, chunk_ms: float) -> Iterator[np.ndarray]:
    """Blocks of `chunk_ms` from decoded samples (a file played as if it came from a device)."""
    n = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
    for i in range(0, len(samples), n):
        yield samples[i : i + n]


def microphone_blocks(sample_rate: int, chunk_ms: float, duration_s: float | None = None) -> Iterator[np.ndarray]:
    """Blocks from the default microphone (needs the optional ``sounddevice`` package).

    Raises:
        ConfigError: ``sounddevice`` is not installed.
    """
    try:
        import sounddevice as sd
    except ImportError:
        raise ConfigError("microphone input needs the optional package 'sounddevice' "
                          "(pip install sounddevice); give an audio file instead") from None
    blocks: queue.Queue = queue.Queue()
    n = max(1, int(round(sample_rate * chunk_ms / 1000.0)))

    def on_audio(indata, frames, time_info, status) -> None:  # PortAudio's thread
        blocks.put(indata[:, 0].copy())

    total = 0
    with sd.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=n, callback=on_audio):
        while duration_s is None or total < duration_s * sample_rate:
            parts = [blocks.get()]
            while not blocks.empty():  # behind: hand over everything queued in one step
                parts.append(blocks.get_nowait())
            block = np.concatenate(parts)
            total += len(block)
            yield block


# ---- sinks -------------------------------------------------------------------------------------

class Sink(Protocol):
    """Receives each chunk of new frames."""

    def write(self, chunk: Curves, latency_ms: np.ndarray) -> None: ...

    def close(self) -> None: ...


class LiveLinkSink:
    """Sends each frame as a Live Link Face UDP packet to ``host:port`` (Unreal's default port 11111)."""

    def __init__(self, host: str, port: int, subject: str, fps: float, eye_range_rad: float,
                 device_id: str | None = None) -> None:
        self.address = (host, int(port))
        self.subject, self.fps, self.eye_range_rad = subject, fps, eye_range_rad
        self.device_id = device_id or new_device_id()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.packets = 0

    def write(self, chunk: Curves, latency_ms: np.ndarray) -> None:
        values = livelink_values(chunk.values, self.eye_range_rad)
        for k, row in enumerate(values):
            self.sock.sendto(encode_packet(row, self.subject, self.device_id, chunk.start_frame + k, self.fps),
                             self.address)
            self.packets += 1

    def close(self) -> None:
        self.sock.close()


class JsonLinesSink:
    """One JSON object per frame: ``frame``, ``time_s``, ``latency_ms`` and ``curves`` {name: value}."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, chunk: Curves, latency_ms: np.ndarray) -> None:
        for k, (t, row) in enumerate(zip(chunk.times_s, chunk.values.tolist())):
            obj = {"frame": chunk.start_frame + k, "time_s": round(float(t), 6),
                   "latency_ms": None if np.isnan(latency_ms[k]) else round(float(latency_ms[k]), 3),
                   "curves": dict(zip(TARGET_NAMES, row))}
            self.stream.write(json.dumps(obj) + "\n")
        if len(chunk):
            self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CallbackSink:
    """Calls ``fn(chunk)`` with each non-empty chunk of new frames."""

    def __init__(self, fn: Callable[[Curves], None]) -> None:
        self.fn = fn

    def write(self, chunk: Curves, latency_ms: np.ndarray) -> None:
        if len(chunk):
            self.fn(chunk)

    def close(self) -> None:
        pass


# ---- runtime -----------------------------------------------------------------------------------

@dataclass
class StreamReport:
    """What a stream run did, with its latency and real-time figures."""

    frames: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    compute_s: float = 0.0
    cpu_s: float = 0.0
    realtime: bool = True
    blocks: int = 0  # model steps taken
    catch_up_steps: int = 0  # steps that took several late blocks at once
    hop_compute_ms: list[float] = field(default_factory=list)  # per block: compute / hops in the block
    latency_ms: list[float] = field(default_factory=list)  # per frame (real-time pace only)
    end_lag_s: float = 0.0

    @property
    def cpu_fraction(self) -> float:
        """Process CPU time / wall time (1.0 = one core busy)."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def kept_up(self) -> bool:
        """Compute stayed below the audio's duration and (real-time pace) never fell >0.1 s behind."""
        return self.compute_s < self.audio_s and (not self.realtime or self.end_lag_s < 0.1)

    def stats(self) -> dict[str, float]:
        """Summary numbers (ms) for reports and benchmarks."""
        hop = np.asarray(self.hop_compute_ms or [0.0])
        lat = np.asarray(self.latency_ms or [np.nan])
        return {
            "hop_compute_mean_ms": float(hop.mean()), "hop_compute_p95_ms": float(np.percentile(hop, 95)),
            "latency_mean_ms": float(np.nanmean(lat)) if self.latency_ms else float("nan"),
            "latency_p95_ms": float(np.nanpercentile(lat, 95)) if self.latency_ms else float("nan"),
            "latency_max_ms": float(np.nanmax(lat)) if self.latency_ms else float("nan"),
            "cpu_percent": 100.0 * self.cpu_fraction,
            "rtf": self.compute_s / self.audio_s if self.audio_s else 0.0,
        }

    def line(self) -> str:
        s = self.stats()
        pace = "real-time pace" if self.realtime else "fast mode"
        lat = (f"latency mean {s['latency_mean_ms']:.1f} ms, p95 {s['latency_p95_ms']:.1f} ms; "
               if self.latency_ms else "")
        catch_up = f" ({self.catch_up_steps} of {self.blocks} steps caught up on late audio)" if self.catch_up_steps else ""
        return (f"stream: {self.frames} frames from {self.audio_s:.2f} s of audio ({pace}); {lat}"
                f"compute {s['hop_compute_mean_ms']:.2f} ms per 10 ms hop, CPU {s['cpu_percent']:.0f}%; "
                f"{'kept up with real time' if self.kept_up else 'did NOT keep up with real time'}{catch_up}")


def run_stream(session: StreamingSession, blocks: Iterable[np.ndarray], sinks: list, realtime: bool = True,
               paced_source: bool = True) -> StreamReport:
    """Feed `blocks` through `session` to `sinks`.

    Args:
        session: a fresh :class:`StreamingSession`.
        blocks: mono sample blocks at the session's sample rate (a device's queue; when the stream
            falls behind, every block already arrived is processed in one step).
        sinks: objects with ``write(chunk, latency_ms)`` and ``close()``.
        realtime: pace a file source at real time (a block is processed when its last sample would have
            arrived from a device); False = as fast as possible (no latency figures).
        paced_source: False for sources that already arrive in real time (a microphone): never sleep.
    """
    rep = StreamReport(realtime=realtime)
    sr = session.sample_rate
    hop_s = session.model.audio_cfg.hop_length / sr
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def deliver(chunk: Curves, done: float) -> None:
        if realtime:
            lat = (done - (wall0 + chunk.times_s)) * 1000.0
            rep.latency_ms.extend(lat.tolist())
        else:
            lat = np.full(len(chunk), np.nan)
        for sink in sinks:
            sink.write(chunk, lat)
        rep.frames += len(chunk)

    try:
        it = iter(blocks)
        block = next(it, None)
        paced = realtime and paced_source
        while block is not None:
            batch = [block]
            n = session.samples_in + len(block)
            # A live source blocks until its next block arrives: only look ahead in a paced file.
            nxt = next(it, None) if paced else None
            if paced:
                delay = wall0 + n / sr - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                # Behind schedule: take every block that has arrived by now in one step, as a device
                # queue would be drained; bigger steps cost less per hop, so the stream catches up.
                while nxt is not None and wall0 + (n + len(nxt)) / sr <= time.perf_counter():
                    batch.append(nxt)
                    n += len(nxt)
                    nxt = next(it, None)
            arrival = wall0 + n / sr if paced_source else time.perf_counter()
            samples = batch[0] if len(batch) == 1 else np.concatenate(batch)
            c0 = time.perf_counter()
            chunk = session.push(samples)
            c1 = time.perf_counter()
            deliver(chunk, c1)
            rep.compute_s += c1 - c0
            rep.hop_compute_ms.append((c1 - c0) * 1000.0 / max(len(samples) / sr / hop_s, 1e-9))
            rep.blocks += 1
            rep.catch_up_steps += len(batch) > 1
            rep.end_lag_s = c1 - arrival if realtime else 0.0
            block = nxt if paced else next(it, None)
        c0 = time.perf_counter()
        chunk = session.close()
        c1 = time.perf_counter()
        deliver(chunk, c1)
        rep.compute_s += c1 - c0
    finally:
        for sink in sinks:
            sink.close()
    rep.audio_s = session.samples_in / sr
    rep.wall_s = time.perf_counter() - wall0
    rep.cpu_s = time.process_time() - cpu0
    return rep


def livelink_sink_for(address: str, cfg: Config, fps: float) -> LiveLinkSink:
    """A Live Link sink from ``HOST[:PORT]`` (port default ``cfg.infer.livelink_port``)."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if not host:
        raise ConfigError(f"--livelink expects HOST:PORT, got {address!r}")
    try:
        port_n = int(port) if port else cfg.infer.livelink_port
    except ValueError:
        raise ConfigError(f"--livelink port must be a number, got {port!r}") from None
    return LiveLinkSink(host, port_n, cfg.infer.livelink_subject, fps, eye_range(cfg))
