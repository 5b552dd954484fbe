"""Model files: safetensors weights with the model card (a2bs.manifests.ModelCard) as JSON in the header.

Loading never unpickles anything: the header is JSON, the tensors are raw buffers, and the model and
its audio front end are rebuilt from the card alone. Files of a2bs < 0.2 (format ``a2bs-model/1``)
carry no card and are refused: nothing in them says which audio front end the model expects.
"""

from __future__ import annotations

import json
import os
import struct

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from a2bs.config import MODEL_FILE_NAME, ConfigError  # noqa: F401  (MODEL_FILE_NAME: re-exported)
from a2bs.errors import ManifestError, ModelFileError
from a2bs.manifests import ModelCard
from a2bs.models.registry import build_model
from a2bs.runtime import storage

MODEL_FORMAT = "a2bs-model/2"
CARDLESS_FORMAT = "a2bs-model/1"  # written by a2bs < 0.2: weights + model config, no card
_HEADER_LENGTH_BYTES = 8


def save_model(path: str | os.PathLike, model: nn.Module, card: ModelCard) -> None:
    """Write `model`'s weights and its `card` to a safetensors file, atomically.

    Use ``ModelCard.for_untrained(model_cfg, audio_cfg)`` for a model a2bs did not train.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": MODEL_FORMAT, "model_card": card.to_json()}
    storage.atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def _header(data: bytes, path: str) -> dict:
    # safetensors layout: u64 little-endian header length, then a JSON header with "__metadata__".
    try:
        (n,) = struct.unpack("<Q", data[:_HEADER_LENGTH_BYTES])
        header = json.loads(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + n])
        if not isinstance(header, dict):
            raise TypeError
        return header
    except (struct.error, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a safetensors model file ({exc.__class__.__name__})") from None


def _card(header: dict, path: str) -> ModelCard:
    meta = dict(header.get("__metadata__") or {})
    fmt = meta.get("format")
    if fmt == CARDLESS_FORMAT:
        raise ModelFileError(f"{path}: model file has no model card (written by a2bs < 0.2); retrain it with "
                             "`a2bs train` to record its audio front end")
    if fmt != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not an a2bs model file (format {fmt!r})")
    try:
        return ModelCard.from_json(meta.get("model_card", ""), path)
    except ManifestError as exc:
        raise ModelFileError(str(exc)) from None


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (tensor names, shapes, metadata), without reading the weights."""
    path = str(path)
    try:
        fs, inner = storage.filesystem(path)
        with fs.open_input_file(inner) as f:
            head = f.read(_HEADER_LENGTH_BYTES)
            n = struct.unpack("<Q", head)[0] if len(head) == _HEADER_LENGTH_BYTES else 0
            head += f.read(min(n, max(f.size() - _HEADER_LENGTH_BYTES, 0)))
    except (FileNotFoundError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc.__class__.__name__})") from None
    return _header(head, path)


def read_model_card(path: str | os.PathLike) -> ModelCard:
    """The model card of a model file (reads only the header).

    Raises:
        ModelFileError: missing file, not an a2bs model file, or a file without a (readable) card.
    """
    return _card(read_header(path), str(path))


def load_model_file(path: str | os.PathLike) -> tuple[nn.Module, ModelCard]:
    """Read a model file written by :func:`save_model` -> (model in eval mode, its card).

    Raises:
        ModelFileError: missing file, wrong format, no card, or weights that do not fit the card's config.
    """
    path = str(path)
    try:
        data = storage.read_bytes(path)
    except (FileNotFoundError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc.__class__.__name__})") from None
    card = _card(_header(data, path), path)
    try:
        model = build_model(card.model)
    except ConfigError as exc:
        raise ModelFileError(f"{path}: bad stored model config ({exc})") from None
    try:
        model.load_state_dict(st_load(data), strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelFileError(f"{path}: weights do not match the stored config ({first})") from None
    return model.eval(), card
