"""Batched causal step for serving: many streams advance together, one 10 ms frame each per call.

The serving kernel of causal convolution models (``tcn_full``, causal ``tcn_poc``). A stream's state is
the past inputs of every temporal convolution, kept in one flat ring buffer per stream
(:class:`SlotRings`: ``(slots, ring_frames, C)``). A call reads only the taps the next frame needs (for
kernel 3 and dilation d, the inputs d and 2d frames back) and writes back each convolution's new input,
so the cost of a step does not grow with the receptive field (the cached-context step of
:mod:`a2bs.infer.streaming` copies every context, 2044 frames x 256 channels for ``tcn_full``, per call).

:class:`FrameStep` is the math of one frame, ``(mel (B, n_mels), taps (B, n_taps, C)) -> (out (B, 59),
writes (B, n_writes, C))``, built on the model's own modules; :class:`BatchedStepper` gathers the taps of
the streams in a call, runs the frame (PyTorch, or the same module exported to ONNX and run by ONNX
Runtime) and scatters the writes. Rows are independent, so a stream's outputs do not depend on which
other streams share its calls: they equal :class:`~a2bs.infer.streaming.StreamingModel`'s (to float
rounding, ~1e-7). Streams with several frames pending take one call per frame ("rounds"), each call
holding every stream that still has a frame.

A model with identities (:mod:`a2bs.models.identity`) takes each stream's identity row as one more
input of the frame step (``identity (B,)`` int64); the row is chosen when the slot is reset and kept
with the stream's rings, so one call can hold streams of different faces.

Models with attention (``tcn_attn``) keep a growing key/value cache per stream; they run through
:class:`PerStreamStepper` (one :class:`~a2bs.infer.streaming.StreamingModel` per stream, PyTorch only).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2bs.config import ConfigError
from a2bs.infer.streaming import StreamingError, StreamingModel, supports_streaming
from a2bs.models.identity import film_norm
from a2bs.schema import N_TARGETS


def _convs(model: nn.Module) -> list[nn.Module]:
    return [conv for block in model.backbone.blocks for conv in (block.conv1, block.conv2)]


def supports_frame_step(model: nn.Module) -> bool:
    """True for causal convolution-only models (the TCN family without attention)."""
    return supports_streaming(model) and hasattr(model, "backbone") and not hasattr(model, "layers")


class TapLayout:
    """Where each convolution's past inputs live in a stream's flat ring, and which ones a frame reads.

    Convolution ``c`` (kernel k, dilation d) owns ``L_c = (k-1) d`` ring frames from ``offset_c``; the
    input of frame ``t`` is stored at ``offset_c + t mod L_c``. Frame ``t`` reads taps ``j = 0 .. k-2``
    at ``t - (k-1-j) d`` (the weight order of ``Conv1d``: tap ``k-1`` is the frame itself). Before a
    stream has written a slot it holds zeros: the causal zero padding of the offline pass.
    """

    def __init__(self, model: nn.Module) -> None:
        tap_offset, tap_delay, tap_len, write_offset, write_len = [], [], [], [], []
        self.taps_per_conv: list[int] = []
        offset = 0
        for conv in _convs(model):
            length = conv.context_frames
            k = (conv.depthwise or conv.conv).kernel_size[0]
            d = (conv.depthwise or conv.conv).dilation[0]
            taps = k - 1 if length else 0
            for j in range(taps):
                tap_offset.append(offset)
                tap_delay.append((k - 1 - j) * d)
                tap_len.append(length)
            if length:
                write_offset.append(offset)
                write_len.append(length)
            self.taps_per_conv.append(taps)
            offset += length
        self.ring_frames = offset
        self.n_taps = len(tap_offset)
        self.n_writes = len(write_offset)
        self._tap_offset = np.asarray(tap_offset, np.int64)
        self._tap_delay = np.asarray(tap_delay, np.int64)
        self._tap_len = np.asarray(tap_len, np.int64)
        self._write_offset = np.asarray(write_offset, np.int64)
        self._write_len = np.asarray(write_len, np.int64)

    def read_index(self, t: np.ndarray) -> np.ndarray:
        """Ring frames of the taps of frame `t` (B,) -> (B, n_taps)."""
        return self._tap_offset + (t[:, None] - self._tap_delay) % self._tap_len

    def write_index(self, t: np.ndarray) -> np.ndarray:
        """Ring frames where the convolution inputs of frame `t` (B,) go -> (B, n_writes)."""
        return self._write_offset + t[:, None] % self._write_len


class FrameStep(nn.Module):
    """One frame of a causal TCN for B streams, past taps in and new convolution inputs out.

    ``forward(mel (B, n_mels), taps (B, n_taps, C)[, identity (B,)]) -> (out (B, 59), writes (B, n_writes,
    C))``, taps and writes in :class:`TapLayout` order, `identity` (rows) for a model with identities. The
    same arithmetic as ``TCN.step`` on one frame, written as per-frame matrix products (no time axis),
    so each call is a short chain of ops.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not supports_frame_step(model):
            raise StreamingError("the batched frame step needs a causal convolution model (tcn_full, causal tcn_poc)")
        self.model = model.eval()
        self.conditioned = getattr(model, "identity", None) is not None
        backbone = model.backbone
        self.mel_lo_db, self.mel_hi_db = backbone.mel_lo_db, backbone.mel_hi_db
        self.taps_per_conv = TapLayout(model).taps_per_conv
        # 1x1 convolutions as matrices; dense k-tap convolutions as one (C, k*C) matrix over the stacked
        # taps (frame order j = 0..k-1). Views or derived copies of the model's own weights.
        self.in_w = backbone.in_proj.weight.detach()[:, :, 0]
        self.convs = []
        for conv in _convs(model):
            if conv.depthwise is not None:
                self.convs.append(("separable", conv.depthwise.weight.detach()[:, 0].t().contiguous(),  # (k, C)
                                   conv.pointwise.weight.detach()[:, :, 0], conv.pointwise.bias))
            else:
                w = conv.conv.weight.detach()  # (C_out, C_in, k)
                self.convs.append(("dense", w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous(), None,
                                   conv.conv.bias))
        self.skip_w = [block.skip.weight.detach()[:, :, 0] for block in backbone.blocks]

    @staticmethod
    def _norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        return F.layer_norm(x, (norm.channels,), norm.weight, norm.bias, norm.eps)

    def _conv(self, i: int, u: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        kind, w, pw, bias = self.convs[i]
        # A static count (not taps.shape): the ONNX tracer keeps one graph with no branch on data.
        z = torch.cat([taps, u[:, None]], dim=1) if self.taps_per_conv[i] else u[:, None]  # (B, k, C)
        if kind == "separable":
            return F.linear((z * w).sum(dim=1), pw, bias)  # depthwise taps, then pointwise
        return F.linear(z.reshape(z.shape[0], -1), w, bias)

    def forward(self, mel: torch.Tensor, taps: torch.Tensor,
                identity: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.model.backbone
        film = bias = None
        if self.conditioned:
            film, bias = self.model.identity(identity, mel.shape[0], mel.device)  # (B, n_blocks, 2, C), (B, 58)
        mid, half = (self.mel_hi_db + self.mel_lo_db) / 2, (self.mel_hi_db - self.mel_lo_db) / 2
        x = F.linear((mel.clamp(self.mel_lo_db, self.mel_hi_db) - mid) / half, self.in_w,
                     backbone.in_proj.bias)  # (B, C)
        total = torch.zeros_like(x)
        writes, t0, ci = [], 0, 0
        for bi, block in enumerate(backbone.blocks):
            h = x
            for ni, norm in enumerate((block.norm1, block.norm2)):
                # The convolution's input (dropout is off in eval); the identity's FiLM follows the first norm.
                block_film = film[:, bi] if film is not None and ni == 0 else None
                u = F.gelu(film_norm(self._norm(h, norm), block_film))
                n = self.taps_per_conv[ci]
                if n:
                    writes.append(u)
                h = self._conv(ci, u, taps[:, t0 : t0 + n])
                t0, ci = t0 + n, ci + 1
            x = x + h
            total = total + F.linear(h, self.skip_w[bi], block.skip.bias)
        out = self.model.head(total[:, :, None], bias)[:, 0]  # (B, 59)
        return out, torch.stack(writes, dim=1)  # (B, n_writes, C)


class FrameRunner(Protocol):
    """Runs the frame step: ``(mel (B, n_mels), taps (B, n_taps, C))`` float32 and, for a model with
    identities, ``identity (B,)`` int64 rows -> ``(out, writes)``."""

    def __call__(self, mel: np.ndarray, taps: np.ndarray,
                 identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class TorchFrameRunner:
    """The frame step in PyTorch (inference mode: no autograd bookkeeping per op)."""

    def __init__(self, model: nn.Module) -> None:
        self.step = FrameStep(model)

    def __call__(self, mel: np.ndarray, taps: np.ndarray,
                 identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ident = None if identity is None else torch.from_numpy(identity)
        with torch.inference_mode():
            out, writes = self.step(torch.from_numpy(mel), torch.from_numpy(taps), ident)
        return out.numpy(), writes.numpy()


def export_frame_step(model: nn.Module, path: str | os.PathLike, opset: int = 17) -> str:
    """Export :class:`FrameStep` of `model` to ONNX (dynamic batch); returns the path."""
    from a2bs.infer.export import export_graph

    step = FrameStep(model)
    layout = TapLayout(model)
    mel = torch.zeros(2, model.cfg.n_mels)
    taps = torch.zeros(2, layout.n_taps, model.cfg.channels)
    names, args = ["mel", "taps"], [mel, taps]
    if step.conditioned:
        names.append("identity")
        args.append(torch.full((2,), model.identity.average_index, dtype=torch.long))
    dyn = {name: {0: "batch"} for name in (*names, "out", "writes")}
    return export_graph(step, tuple(args), names, ["out", "writes"], dyn, path, "frame_step", model, opset)


class OnnxFrameRunner:
    """The frame step exported to ONNX and run by ONNX Runtime (`threads` intra-op threads), with float
    weights or, `precision` ``"int8"``, int8 weights in its matrix products (:func:`quantize_int8`)."""

    def __init__(self, model: nn.Module, threads: int = 1, precision: str = "fp32") -> None:
        from a2bs.infer.export import onnx_session, quantize_int8

        with tempfile.TemporaryDirectory(prefix="a2bs-onnx-") as tmp:
            path = export_frame_step(model, os.path.join(tmp, "frame_step.onnx"))
            if precision == "int8":
                path = quantize_int8(path, os.path.join(tmp, "frame_step.int8.onnx"))
            self.session = onnx_session(path, threads=threads)

    def __call__(self, mel: np.ndarray, taps: np.ndarray,
                 identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"mel": mel, "taps": taps}
        if identity is not None:
            feeds["identity"] = identity
        out, writes = self.session.run(None, feeds)
        return out, writes


class SlotRings:
    """Per-stream state of the frame step: `capacity` slots of ring buffers, frame counters and
    identity rows (-1 = none chosen: the model's average, or no conditioning).

    The rings are one ``np.zeros`` array: its pages are mapped on first use, so unused slots cost no
    memory (``tcn_full``: 2.1 MB per stream in use). :meth:`reset` writes a slot's zeros at once, mapping
    all its pages in one go (~0.25 ms): left to the frame writes, the page faults of the rings' first
    pass cost ~4x more, spread over a new stream's first 2.5 s (benchmarks/README.md, "Serving").
    """

    def __init__(self, layout: TapLayout, capacity: int, channels: int) -> None:
        self.layout = layout
        self.rings = np.zeros((capacity, max(1, layout.ring_frames), channels), np.float32)
        self.frames = np.zeros(capacity, np.int64)
        self.identities = np.full(capacity, -1, np.int64)

    def reset(self, slot: int, identity: int | None = None) -> None:
        """Zero a slot for a new stream of identity row `identity` (None = the average / none)."""
        self.rings[slot] = 0.0
        self.frames[slot] = 0
        self.identities[slot] = -1 if identity is None else identity

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """Taps of the next frame of each stream in `slots` (B,) -> (B, n_taps, C) float32."""
        return self.rings[slots[:, None], self.layout.read_index(self.frames[slots])]

    def scatter(self, slots: np.ndarray, writes: np.ndarray) -> None:
        """Store the frame's convolution inputs (B, n_writes, C) and advance the streams by one frame."""
        if self.layout.n_writes:
            self.rings[slots[:, None], self.layout.write_index(self.frames[slots])] = writes
        self.frames[slots] += 1


class Stepper(Protocol):
    """Batched streaming step over slots (one stream per slot)."""

    capacity: int

    def reset(self, slot: int, identity: int | None = None) -> None: ...

    def step(self, slots: Sequence[int], mels: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class BatchedStepper:
    """Causal convolution models: all streams with pending frames stepped together, one frame per call.

    Args:
        model: a causal TCN (``tcn_full``, or ``tcn_poc`` with ``causal=True``).
        capacity: number of slots (concurrent streams).
        backend: ``"torch"`` or ``"onnx"``.
        max_batch: at most this many streams per call (0 = all).
        threads: ONNX Runtime intra-op threads (PyTorch follows ``torch.set_num_threads``).
        precision: ``"fp32"``, or ``"int8"`` weights (ONNX backend only; outputs then differ from the
            float model's, see :func:`a2bs.infer.export.quantize_int8`).
    """

    def __init__(self, model: nn.Module, capacity: int, backend: str = "torch", max_batch: int = 0,
                 threads: int = 1, precision: str = "fp32") -> None:
        self.layout = TapLayout(model)
        self.capacity = int(capacity)
        self.state = SlotRings(self.layout, self.capacity, model.cfg.channels)
        self.n_mels = model.cfg.n_mels
        self.max_batch = int(max_batch)
        self.backend = backend
        self.precision = check_precision(backend, precision)
        self.calls = 0  # model calls made (each holds one frame of up to max_batch streams)
        identity = getattr(model, "identity", None)
        self.average_identity = None if identity is None else identity.average_index
        if backend == "torch":
            self.runner: FrameRunner = TorchFrameRunner(model)
        elif backend == "onnx":
            self.runner = OnnxFrameRunner(model, threads, precision)
        else:
            raise ConfigError(f"stream backend must be 'torch' or 'onnx', not {backend!r}")

    def reset(self, slot: int, identity: int | None = None) -> None:
        """Start a new stream in `slot` (zero context, as at the start of an offline pass), of identity
        row `identity` (None = the average, or no conditioning for a model without identities)."""
        if identity is not None and self.average_identity is None:
            raise StreamingError("an identity was given, but this model has no identities")
        self.state.reset(slot, identity)

    def step_frame(self, slots: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """One frame for each stream in `slots` (B,) (distinct): mel (B, n_mels) -> (B, 59)."""
        taps = self.state.gather(slots)
        identity = None
        if self.average_identity is not None:
            rows = self.state.identities[slots]
            identity = np.where(rows < 0, self.average_identity, rows)
        out, writes = self.runner(np.ascontiguousarray(mel, np.float32), taps, identity)
        self.state.scatter(slots, writes)
        self.calls += 1
        return out

    def step(self, slots: Sequence[int], mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Advance each stream ``slots[i]`` by its frames ``mels[i]`` (n_i, n_mels) -> [(n_i, 59)].

        As few calls as the frames allow: call ``r`` holds frame ``r`` of every stream that has more
        than ``r`` frames (a stream's next frame reads what its previous frame wrote), so a tick makes
        as many calls as its deepest stream has frames, whatever the number of streams.
        """
        slots_arr = np.asarray(slots, np.int64)
        counts = np.array([len(m) for m in mels], np.int64)
        depth = int(counts.max()) if len(counts) else 0
        # Streams by frame depth, padded: one gather of frame r's mels per call, no per-stream loop.
        padded = np.zeros((len(mels), depth, self.n_mels), np.float32)
        for i, m in enumerate(mels):
            padded[i, : len(m)] = m
        outs = np.empty((len(mels), depth, N_TARGETS), np.float32)
        for r in range(depth):
            rows = np.flatnonzero(counts > r)
            limit = self.max_batch or len(rows)
            for lo in range(0, len(rows), limit):
                part = rows[lo : lo + limit]
                outs[part, r] = self.step_frame(slots_arr[part], padded[part, r])
        return [outs[i, :n] for i, n in enumerate(counts)]


class PerStreamStepper:
    """Models outside the frame step (``tcn_attn``): one cached-state StreamingModel per slot (PyTorch)."""

    def __init__(self, model: nn.Module, capacity: int) -> None:
        self.model = model
        self.capacity = int(capacity)
        self._streams: dict[int, StreamingModel] = {}
        self.calls = 0

    def reset(self, slot: int, identity: int | None = None) -> None:
        self._streams[slot] = StreamingModel(self.model, identity=identity)

    def step(self, slots: Sequence[int], mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs = []
        with torch.inference_mode():
            for slot, mel in zip(slots, mels):
                outs.append(self._streams[slot].step(np.asarray(mel, np.float32)))
                self.calls += 1
        return outs


class SingleStream:
    """One stream through a slot stepper, with :class:`~a2bs.infer.streaming.StreamingModel`'s interface
    (``reset()``, ``step(mel (n, n_mels)) -> (n, 59)``): what `a2bs stream` runs with the ONNX backend."""

    def __init__(self, stepper: Stepper, identity: int | None = None) -> None:
        self.stepper = stepper
        self.identity = identity
        self.reset()

    def reset(self) -> None:
        """Start a new stream (of the identity given at creation)."""
        self.stepper.reset(0, self.identity)

    def step(self, mel: np.ndarray) -> np.ndarray:
        """Advance by (n, n_mels) mel frames -> (n, 59) outputs."""
        return self.stepper.step([0], [np.asarray(mel, np.float32)])[0]


def make_batched_stepper(model: nn.Module, capacity: int, backend: str = "torch", max_batch: int = 0,
                         threads: int = 1, precision: str = "fp32") -> Any:
    """The serving stepper for `model`: :class:`BatchedStepper`, or :class:`PerStreamStepper` for attention.

    `backend` is ``"torch"``, ``"onnx"`` or ``"auto"`` (ONNX Runtime when the model has a frame step);
    `precision` ``"fp32"`` or ``"int8"`` (ONNX only).

    Raises:
        StreamingError: the model is not causal, or attention with the ONNX backend.
        ConfigError: an unknown precision, or int8 with PyTorch.
    """
    backend = check_servable(model, backend, precision)
    if supports_frame_step(model):
        return BatchedStepper(model, capacity, backend, max_batch, threads, precision)
    return PerStreamStepper(model, capacity)


def check_precision(backend: str, precision: str) -> str:
    """`precision` if the (resolved) `backend` runs it; ConfigError naming the setting otherwise."""
    from a2bs.infer.export import PRECISIONS

    if precision not in PRECISIONS:
        raise ConfigError(f"serve.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and backend != "onnx":
        raise ConfigError("serve.precision=int8 needs the ONNX Runtime backend (serve.backend=onnx or auto), "
                          f"not {backend!r}")
    return precision


def check_servable(model: nn.Module, backend: str = "auto", precision: str = "fp32") -> str:
    """The backend :func:`make_batched_stepper` would use for `model` (``"auto"`` resolved), without
    building anything: lets `a2bs serve` refuse a model before it starts worker processes.

    Raises:
        StreamingError: the model is not causal, or attention with the ONNX backend.
        ConfigError: an unknown precision, or int8 with PyTorch.
    """
    if not supports_streaming(model):
        StreamingModel(model)  # raises the clear "not causal" StreamingError
    if backend == "auto":
        backend = "onnx" if supports_frame_step(model) else "torch"
    if not supports_frame_step(model) and backend != "torch":
        raise StreamingError("tcn_attn streams in PyTorch only (backend torch): "
                             "its key/value cache is not part of the ONNX step graphs")
    check_precision(backend, precision)
    return backend
