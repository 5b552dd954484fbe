"""ONNX export of trained models, checked against PyTorch with ONNX Runtime.

Two graphs:

- offline: ``mel (B, T, n_mels) -> out (B, T, 59)`` with dynamic B and T (any model).
- streaming step (causal convolution models, e.g. ``tcn_full``): inputs ``mel (B, n, n_mels)`` and
  ``state_0 .. state_{k-1}`` (each convolution's left context, (B, C, L_i)); outputs ``out (B, n, 59)``
  and ``new_state_0 ..``. Start with zero states (:func:`initial_onnx_state`) and feed each step's new
  states to the next; B and n are dynamic.

A model with identities (``model.identities``, see :mod:`a2bs.models.identity`) takes one more input
in both graphs, right after ``mel``: ``identity (B,)`` int64, each stream's row in the card's
``identities`` (their count = the learned average). Models without identities export exactly as before.

Each file carries the model config JSON in its metadata (``a2bs_model_config``), and given the model
file's card also the card (``a2bs_model_card``: the audio front end the ``mel`` input must be computed
with, and its ``mel_norm``, the per-stream log-mel normalisation to apply before the graph when set:
:class:`a2bs.extract.audio.MelNormaliser`; see :class:`a2bs.manifests.ModelCard`); it is written
atomically. The TorchScript-based exporter (``dynamo=False``) is used because the dynamo exporter
needs the extra ``onnxscript`` package.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from a2bs.errors import ManifestError
from a2bs.infer.streaming import StreamingError, supports_streaming
from a2bs.manifests import ModelCard
from a2bs.models.registry import model_config_to_dict
from a2bs.runtime.storage import atomic_write_bytes

DEFAULT_OPSET = 17


def has_identities(model: nn.Module) -> bool:
    """True when `model` is conditioned on identities (its graphs take an ``identity`` input)."""
    return getattr(model, "identity", None) is not None


class _StepGraph(nn.Module):
    """Flat-argument view of ``model.step`` for export: (mel, [identity,] *state) -> (out, *new_state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.conditioned = has_identities(model)

    def forward(self, mel: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.conditioned:
            out, new_state = self.model.step(mel, list(inputs[1:]), inputs[0])
        else:
            out, new_state = self.model.step(mel, list(inputs))
        return (out, *new_state)


def _example_identity(model: nn.Module, batch: int) -> tuple[torch.Tensor, ...]:
    """The example ``identity`` input of the graphs of `model` (the average), or () without identities."""
    if not has_identities(model):
        return ()
    return (torch.full((batch,), model.identity.average_index, dtype=torch.long),)


def _export_bytes(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                  dynamic_axes: dict[str, dict[int, str]], opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation; it is still the one that needs no extras.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # Emitted for the reversed slices of F.pad; harmless (that slice just is not constant-folded).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return buf.getvalue()


def _with_metadata(onnx_bytes: bytes, model: nn.Module, kind: str, card: ModelCard | None) -> bytes:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    cfg = getattr(model, "cfg", None)
    entries = {"a2bs_graph": kind}
    if cfg is not None:
        entries["a2bs_model_config"] = json.dumps(model_config_to_dict(cfg))
    if card is not None:
        entries["a2bs_model_card"] = card.to_json()
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


def export_graph(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]], path: str | os.PathLike, kind: str,
                 model: nn.Module | None = None, opset: int = DEFAULT_OPSET, card: ModelCard | None = None) -> str:
    """Export `module` called on `args` to ONNX at `path` (atomically), with the a2bs metadata of `model`
    (and its model card, when given)."""
    data = _export_bytes(module, args, input_names, output_names, dynamic_axes, opset)
    atomic_write_bytes(path, _with_metadata(data, module if model is None else model, kind, card))
    return str(path)


def export_onnx_offline(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                        example_frames: int = 64, card: ModelCard | None = None) -> str:
    """Export the whole-sequence model ``mel (B, T, n_mels) -> out (B, T, 59)``; returns the path.

    With `card` (the model file's), the ONNX file carries it: consumers take the front end from it.
    """
    model = model.eval()
    n_mels = model.cfg.n_mels
    example = torch.zeros(1, example_frames, n_mels)
    ident = _example_identity(model, 1)
    dyn = {"mel": {0: "batch", 1: "frames"}, "out": {0: "batch", 1: "frames"}}
    if ident:
        dyn["identity"] = {0: "batch"}
    data = _export_bytes(model, (example, *ident), ["mel"] + ["identity"] * len(ident), ["out"], dyn, opset)
    atomic_write_bytes(path, _with_metadata(data, model, "offline", card))
    return str(path)


def _check_step_exportable(model: nn.Module) -> None:
    if not supports_streaming(model):
        raise StreamingError("ONNX step export needs a causal model (e.g. tcn_full)")
    if hasattr(model, "layers"):
        raise StreamingError(
            "ONNX step export supports causal convolution models (tcn_full / causal TCNs); "
            "tcn_attn's growing key/value cache streams in PyTorch (a2bs.infer.streaming) only"
        )


def export_onnx_step(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                     example_frames: int = 1, card: ModelCard | None = None) -> str:
    """Export one streaming step ``(mel, state_0..) -> (out, new_state_0..)``; returns the path.

    With `card` (the model file's), the ONNX file carries it: consumers take the front end from it.
    """
    _check_step_exportable(model)
    model = model.eval()
    state = model.init_state(1)
    ident = _example_identity(model, 1)
    names_in = ["mel"] + ["identity"] * len(ident) + [f"state_{i}" for i in range(len(state))]
    names_out = ["out"] + [f"new_state_{i}" for i in range(len(state))]
    dyn: dict[str, dict[int, str]] = {"mel": {0: "batch", 1: "frames"}, "out": {0: "batch", 1: "frames"}}
    for name in names_in[1:] + names_out[1:]:
        dyn[name] = {0: "batch"}
    example = torch.zeros(1, example_frames, model.cfg.n_mels)
    data = _export_bytes(_StepGraph(model), (example, *ident, *state), names_in, names_out, dyn, opset)
    atomic_write_bytes(path, _with_metadata(data, model, "step", card))
    return str(path)


def onnx_model_card(path: str | os.PathLike) -> ModelCard:
    """The model card an exported ONNX file carries (ManifestError if it has none)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "a2bs_model_card" not in meta:
        raise ManifestError(f"{path}: carries no a2bs model card (export it with the model file's card)")
    return ModelCard.from_json(meta["a2bs_model_card"], str(path))


def onnx_session(path: str | os.PathLike, threads: int = 1) -> Any:
    """ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


PRECISIONS = ("fp32", "int8")  # of the serving frame step (serve.precision)


def quantize_int8(path: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write `path`'s graph with int8 weights in its matrix products to `out` (ONNX Runtime's dynamic
    quantization: activations quantized per call, integer kernels); returns `out`.

    For the serving frame step (``serve.precision=int8``): ~1.8x less CPU per call for ``tcn_full`` at
    16 streams, its weights 8.1 -> 2.2 MB, outputs no longer equal to the float model's
    (benchmarks/README.md, "Serving", measures both).
    """
    import logging

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    # The tracer stores weights as Constant nodes; the quantizer looks for initializers.
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.ndim == 2:  # a weight matrix
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    plain = f"{out}.float.onnx"
    onnx.save(graph_model, plain)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises pre-processing on the root logger, every call
    try:
        quantize_dynamic(plain, str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["Gemm", "MatMul"],
                         per_channel=True)
    finally:
        root.setLevel(level)
        os.remove(plain)
    return str(out)


def initial_onnx_state(model: nn.Module, batch: int = 1) -> list[np.ndarray]:
    """Zero states for the step graph of `model` (numpy float32)."""
    return [s.cpu().numpy().astype(np.float32) for s in model.init_state(batch)]


class OnnxStreamer:
    """Runs an exported step graph chunk by chunk, carrying its states (one stream per object).

    `identity`: each stream's identity row (B,) for a graph with an ``identity`` input (required there).
    """

    def __init__(self, session: Any, initial_state: Sequence[np.ndarray],
                 identity: Sequence[int] | np.ndarray | None = None) -> None:
        self.session = session
        self._initial = [np.array(s) for s in initial_state]
        self.identity = None if identity is None else np.asarray(identity, np.int64).reshape(-1)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.state = [s.copy() for s in self._initial]

    def step(self, mel: np.ndarray) -> np.ndarray:
        """(B, n, n_mels) float32 -> (B, n, 59)."""
        feeds = {"mel": np.ascontiguousarray(mel, dtype=np.float32)}
        if self.identity is not None:
            feeds["identity"] = self.identity
        feeds.update({f"state_{i}": s for i, s in enumerate(self.state)})
        out, *self.state = self.session.run(None, feeds)
        return out


def _identity_feed(model: nn.Module, identity: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """The identity rows the graphs of `model` are fed (the average when none is given), or None."""
    if not has_identities(model):
        return None
    return identity if identity is not None else _example_identity(model, batch)[0]


def verify_onnx_offline(path: str | os.PathLike, model: nn.Module, mel: torch.Tensor,
                        identity: torch.Tensor | None = None) -> float:
    """Max |ONNX Runtime - PyTorch| of the offline graph on `mel` (B, T, n_mels) with `identity` (B,) rows."""
    ident = _identity_feed(model, identity, mel.shape[0])
    with torch.no_grad():
        ref = model.eval()(mel, ident).numpy()
    feeds = {"mel": mel.numpy().astype(np.float32)}
    if ident is not None:
        feeds["identity"] = ident.numpy().astype(np.int64)
    got = onnx_session(path).run(None, feeds)[0]
    return float(np.abs(got - ref).max())


def verify_onnx_step(path: str | os.PathLike, model: nn.Module, mel: torch.Tensor, chunk_frames: int,
                     identity: torch.Tensor | None = None) -> float:
    """Max |ONNX step graph run chunk by chunk - PyTorch offline forward| on `mel` (B, T, n_mels), with
    `identity` (B,) rows for a model with identities (None = the average)."""
    ident = _identity_feed(model, identity, mel.shape[0])
    with torch.no_grad():
        ref = model.eval()(mel, ident).numpy()
    streamer = OnnxStreamer(onnx_session(path), initial_onnx_state(model, mel.shape[0]),
                            None if ident is None else ident.numpy())
    x = mel.numpy().astype(np.float32)
    got = np.concatenate(
        [streamer.step(x[:, i : i + chunk_frames]) for i in range(0, x.shape[1], chunk_frames)], axis=1
    )
    return float(np.abs(got - ref).max())
