"""The serving engine: many live streams, their audio front ends and one batched model step per tick.

No sockets and no event loop here (:mod:`a2bs.infer.serve` owns those). A stream
(:class:`EngineStream`) is fed decoded PCM by :meth:`EngineStream.feed` from the server's event-loop
thread; :meth:`ServeEngine.tick` (run on the server's step clock, one tick at a time) takes every stream's new
audio and:

1. resamples it to the model's rate when the client sends another rate (``soxr`` streaming resampler,
   state per stream: its output equals ``librosa.resample`` of the whole signal, as ``a2bs infer`` uses);
2. cuts the analysis windows of the newly complete 100 Hz frames and computes the log-mel of all
   streams' windows in one call;
3. steps at most ``serve.max_step_frames`` pending frames of every stream through the batched model
   (:mod:`a2bs.infer.batched`), so a client far ahead of real time cannot stall the others;
4. post-processes and resamples each stream's frames to its fps exactly as
   :class:`~a2bs.infer.live.StreamingSession` does, so a stream's curves equal ``a2bs infer``'s.

Ownership instead of locks: the event loop only appends to a stream's inbox and flags; between ticks
:meth:`ServeEngine.prepare` hands the inboxes over to the next tick, which alone touches the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from a2bs.config import Config, ConfigError
from a2bs.extract.audio import log_mel_frames, mel_filterbank, stft_window
from a2bs.infer.batched import PerStreamStepper, make_batched_stepper
from a2bs.infer.curves import StreamResampler
from a2bs.infer.live import StreamingVAD
from a2bs.infer.offline import LoadedModel
from a2bs.infer.postprocess import PostProcessor
from a2bs.infer.streaming import StreamingLogMel
from a2bs.infer.wire import ENCODINGS, FRAME_ENCODINGS, StreamError
from a2bs.schema import N_TARGETS


@dataclass(frozen=True)
class StreamSpec:
    """What a client declared in its first message."""

    sample_rate: int
    encoding: str = "pcm_s16le"
    fps: float = 60.0
    livelink: str | None = None
    identity: str | None = None  # the face to drive (None = the model's learned average)
    frames: str = "json"  # how frames go back: "json" messages or "f32" binary (a2bs.infer.wire)


def parse_spec(msg: Any, cfg: Config, model: LoadedModel, default_identity: str | None = None) -> StreamSpec:
    """Check a client's first message (a decoded JSON object) -> StreamSpec.

    A session without an ``identity`` gets `default_identity` (``a2bs serve --identity``; None = the average).

    Raises:
        StreamError: not an object, unknown keys, or a value out of range.
    """
    if not isinstance(msg, dict):
        raise StreamError("the first message must be a JSON object such as "
                          '{"sample_rate": 16000, "encoding": "pcm_s16le", "fps": 60}')
    known = {"sample_rate", "encoding", "fps", "livelink", "identity", "frames"}
    unknown = sorted(set(msg) - known)
    if unknown:
        raise StreamError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    rate = msg.get("sample_rate")
    lo, hi = cfg.serve.min_sample_rate, cfg.serve.max_sample_rate
    if isinstance(rate, bool) or not isinstance(rate, int) or not lo <= rate <= hi:
        raise StreamError(f"sample_rate must be a whole number of Hz in [{lo}, {hi}], got {rate!r}")
    encoding = msg.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise StreamError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    fps = msg.get("fps", cfg.infer.fps)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= cfg.serve.max_fps:
        raise StreamError(f"fps must be a number in (0, {cfg.serve.max_fps:g}], got {fps!r}")
    livelink = msg.get("livelink")
    if livelink is not None and not isinstance(livelink, str):
        raise StreamError(f'livelink must be "host:port", got {livelink!r}')
    identity = msg.get("identity", default_identity)
    if identity is not None and not isinstance(identity, str):
        raise StreamError(f"identity must be a string (one of the model's identities), got {identity!r}")
    try:
        model.identity_row(identity)
    except ConfigError as exc:
        raise StreamError(str(exc)) from None
    frames = msg.get("frames", "json")
    if frames not in FRAME_ENCODINGS:
        raise StreamError(f"frames must be one of {', '.join(FRAME_ENCODINGS)}, got {frames!r}")
    return StreamSpec(int(rate), encoding, float(fps), livelink, identity, frames)


@dataclass
class TickOutput:
    """What one tick produced for one stream."""

    start_frame: int  # index of values[0] in the stream's output
    values: np.ndarray  # (m, 59) at the stream's fps
    done: bool = False  # the end was flushed: no more frames
    wait_s: float = 0.0  # longest time one of the stepped frames' audio waited for this tick


@dataclass(eq=False)  # identity semantics: a stream is itself, hashable
class EngineStream:
    """One live stream: its spec, slot, inbox (event-loop side) and pipeline state (tick side)."""

    spec: StreamSpec
    slot: int
    inbox: list = field(default_factory=list)  # (arrival time, float32 samples at spec.sample_rate)
    inbox_samples: int = 0
    ending: bool = False  # the client asked to flush
    closed: bool = False  # gone (vanished, error or done): results are dropped, the slot is freed
    # Tick side (only touched inside ticks after the first prepare).
    taken: list = field(default_factory=list)
    pipeline: Any = None

    def feed(self, samples: np.ndarray, arrival_s: float) -> None:
        """Queue decoded samples (event-loop thread)."""
        if len(samples):
            self.inbox.append((arrival_s, samples))
            self.inbox_samples += len(samples)

    @property
    def pending_input_s(self) -> float:
        """Seconds of audio queued and not yet taken by a tick (for back-pressure)."""
        return self.inbox_samples / self.spec.sample_rate


class _Pipeline:
    """Per-stream state touched only inside ticks."""

    def __init__(self, engine: "ServeEngine", spec: StreamSpec) -> None:
        audio = engine.model.audio_cfg
        self.frontend = StreamingLogMel(audio, engine.model.card.mel_norm)
        self.resample_in = None
        if spec.sample_rate != audio.sample_rate:
            import soxr

            # HQ = librosa.resample's default (soxr_hq): the same samples as `a2bs infer` on the whole file.
            self.resample_in = soxr.ResampleStream(spec.sample_rate, audio.sample_rate, 1, dtype="float32",
                                                   quality="HQ")
        infer = engine.cfg.infer
        self.vad = StreamingVAD(audio) if infer.neutral_calibration else None
        self.post = PostProcessor(infer, engine.rate_hz, rest=None)
        self.out = StreamResampler(engine.rate_hz, spec.fps)
        self.pending = np.zeros((0, audio.n_mels), np.float32)
        self.pending_arrival = np.zeros(0)
        self.pending_vad = np.zeros(0, np.float32)
        self.samples_in = 0  # at the model's rate
        self.flushed = False
        self.done = False


class ServeEngine:
    """Streams in slots, one tick at a time.

    Args:
        model: a loaded causal model.
        cfg: resolved config (``serve`` and ``infer`` sections).
        capacity: slots (the admission limit).
    """

    def __init__(self, model: LoadedModel, cfg: Config, capacity: int | None = None) -> None:
        self.model, self.cfg = model, cfg
        self.capacity = int(cfg.serve.max_sessions if capacity is None else capacity)
        if self.capacity < 1:
            raise ConfigError(f"serve.max_sessions must be >= 1, got {self.capacity}")
        if cfg.serve.max_step_frames < 1:
            raise ConfigError(f"serve.max_step_frames must be >= 1, got {cfg.serve.max_step_frames}")
        audio = model.audio_cfg
        self.rate_hz = audio.sample_rate / audio.hop_length
        self.stepper = make_batched_stepper(model.net, self.capacity, cfg.serve.backend,
                                            cfg.serve.max_batch_streams, cfg.serve.step_threads,
                                            cfg.serve.precision)
        self.backend = "torch" if isinstance(self.stepper, PerStreamStepper) else self.stepper.backend
        self._free = list(range(self.capacity - 1, -1, -1))
        self.streams: dict[int, EngineStream] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        # First calls import librosa's window/filterbank and initialise kernels: not inside a live tick.
        stft_window(self.model.audio_cfg)
        mel_filterbank(self.model.audio_cfg)
        self.stepper.reset(0)
        self.stepper.step([0], [np.zeros((1, self.model.audio_cfg.n_mels), np.float32)])
        self.stepper.reset(0)

    @property
    def active(self) -> int:
        """Streams holding a slot."""
        return len(self.streams)

    def open(self, spec: StreamSpec) -> EngineStream | None:
        """A new stream, or None when every slot is taken (event-loop thread)."""
        if not self._free:
            return None
        stream = EngineStream(spec, self._free.pop())
        self.streams[stream.slot] = stream
        return stream

    def prepare(self) -> list[EngineStream]:
        """Between ticks (event-loop thread): free closed streams' slots, hand inboxes to the tick.

        Returns the streams the next tick works on (those with audio, pending frames or an end to flush).
        """
        work = []
        cap = self.cfg.serve.max_step_frames
        for slot, s in list(self.streams.items()):
            if s.closed:
                del self.streams[slot]
                self._free.append(slot)
                continue
            p = s.pipeline
            # A stream with a full step's frames still pending keeps its new audio in the inbox, where
            # it counts towards the back-pressure limit.
            if p is None or len(p.pending) < cap:
                s.taken, s.inbox, s.inbox_samples = s.inbox, [], 0
            if s.taken or p is None or len(p.pending) or (s.ending and not p.done):
                work.append(s)
        return work

    def has_work(self) -> bool:
        """True when a tick would produce something (pending frames or queued audio or an end)."""
        for s in self.streams.values():
            p = s.pipeline
            if not s.closed and (s.inbox or p is None or len(p.pending) or (s.ending and not p.done)):
                return True
        return False

    # ---- the tick (on the step clock) ---------------------------------------------------------

    def tick(self, streams: list[EngineStream]) -> tuple[dict[int, TickOutput], dict[str, float]]:
        """Advance `streams` (from :meth:`prepare`): front end, one batched step, post-processing.

        Returns ({slot: TickOutput}, timings in seconds: ``front_s``, ``step_s``, ``post_s``).
        """
        t0 = time.perf_counter()
        for s in streams:
            if s.pipeline is None:
                s.pipeline = _Pipeline(self, s.spec)
                self.stepper.reset(s.slot, self.model.identity_row(s.spec.identity))
        self._front_end(streams)
        t1 = time.perf_counter()
        cap = self.cfg.serve.max_step_frames
        stepping = [s for s in streams if len(s.pipeline.pending)]
        mels = [s.pipeline.pending[:cap] for s in stepping]
        raws = self.stepper.step([s.slot for s in stepping], mels) if stepping else []
        t2 = time.perf_counter()
        results = self._finish(streams, dict(zip(stepping, raws)), time.perf_counter())
        t3 = time.perf_counter()
        return results, {"front_s": t1 - t0, "step_s": t2 - t1, "post_s": t3 - t2}

    def _front_end(self, streams: list[EngineStream]) -> None:
        windows, owners, arrivals = [], [], []
        for s in streams:
            p = s.pipeline
            for arrival, samples in s.taken:
                x = samples if p.resample_in is None else p.resample_in.resample_chunk(samples)
                p.samples_in += len(x)
                w = p.frontend.push_windows(x)
                if p.vad is not None:
                    p.pending_vad = np.concatenate([p.pending_vad, p.vad.push(x)])
                if len(w):
                    windows.append(w)
                    owners.append(s)
                    arrivals.append(np.full(len(w), arrival))
            s.taken = []
            if s.ending and not p.flushed and not s.inbox:  # all audio taken: flush the end
                if p.resample_in is not None:  # the resampler's delayed tail first
                    x = p.resample_in.resample_chunk(np.zeros(0, np.float32), last=True)
                    p.samples_in += len(x)
                    windows.append(p.frontend.push_windows(x))
                    owners.append(s)
                    arrivals.append(np.full(len(windows[-1]), time.perf_counter()))
                    if p.vad is not None:
                        p.pending_vad = np.concatenate([p.pending_vad, p.vad.push(x)])
                w = p.frontend.flush_windows()
                windows.append(w)
                owners.append(s)
                arrivals.append(np.full(len(w), time.perf_counter()))
                if p.vad is not None:
                    p.pending_vad = np.concatenate([p.pending_vad, p.vad.flush()])
                p.flushed = True
        if not windows:
            return
        mel = log_mel_frames(np.concatenate(windows), self.model.audio_cfg)  # every stream's frames at once
        i = 0
        for s, w, arr in zip(owners, windows, arrivals):
            p = s.pipeline
            rows = p.frontend.normalise(mel[i : i + len(w)])
            if len(p.pending):
                rows, arr = np.concatenate([p.pending, rows]), np.concatenate([p.pending_arrival, arr])
            # else the usual case at real-time pace (the last tick took every frame): no copy
            p.pending, p.pending_arrival = rows, arr
            i += len(w)

    def _finish(self, streams: list[EngineStream], raws: dict[EngineStream, np.ndarray],
                now: float) -> dict[int, TickOutput]:
        """Post-process and resample each stream's new frames to its fps -> {slot: TickOutput}.

        All streams at once where the arithmetic allows (stateless post-processing, the resampling of
        streams that are not ending): per-stream array calls cost more than the arithmetic on 1-3 rows.
        """
        posts: dict[EngineStream, np.ndarray] = {}
        waits: dict[EngineStream, float] = {}
        vads = {}
        for s, raw in raws.items():
            p, n = s.pipeline, len(raw)
            waits[s] = float(now - p.pending_arrival[:n].min())
            if p.vad is not None:
                vads[s], p.pending_vad = p.pending_vad[:n], p.pending_vad[n:]
            p.pending, p.pending_arrival = p.pending[n:], p.pending_arrival[n:]
        if raws and all(s.pipeline.post.stateless for s in raws):  # one call for every stream's rows
            rows = next(iter(raws)).pipeline.post(np.concatenate(list(raws.values())))
            lo = 0
            for s, raw in raws.items():
                posts[s], lo = rows[lo : lo + len(raw)], lo + len(raw)
        else:
            posts = {s: s.pipeline.post(raw, vads.get(s)) for s, raw in raws.items()}
        values: dict[EngineStream, np.ndarray] = {}
        pushing = []
        for s in streams:
            p = s.pipeline
            if p.flushed and not len(p.pending) and not p.done:
                # The end is known: the last source frames go through flush, which stops at the audio's end.
                values[s] = p.out.flush(p.samples_in / self.model.audio_cfg.sample_rate, posts.get(s))
                p.done = True
            elif s in posts:
                pushing.append(s)
        pushed = StreamResampler.push_many([s.pipeline.out for s in pushing], [posts[s] for s in pushing])
        values.update(zip(pushing, pushed))
        empty = np.zeros((0, N_TARGETS), np.float32)
        results = {}
        for s in streams:
            out = values.get(s, empty)
            start = s.pipeline.out.next_frame - len(out)
            results[s.slot] = TickOutput(start, out, s.pipeline.done, waits.get(s, 0.0))
        return results
