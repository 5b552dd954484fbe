"""Model files: safetensors weights with the model config (and free metadata) as JSON in the header.

Loading never unpickles anything: the header is JSON, the tensors are raw buffers, and the model is
rebuilt from its stored config alone.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from a2bs.config import MODEL_FILE_NAME, ConfigError, ModelConfig  # noqa: F401  (MODEL_FILE_NAME: re-exported)
from a2bs.errors import ModelFileError
from a2bs.models.registry import (
    build_model,
    model_config_from_dict,
    model_config_to_dict,
)
from a2bs.runtime.storage import atomic_write_bytes, read_bytes
from a2bs.schema import SCHEMA_VERSION

MODEL_FORMAT = "a2bs-model/1"


def save_model(
    path: str | os.PathLike, model: nn.Module, model_cfg: ModelConfig, extra_meta: Mapping[str, Any] | None = None
) -> None:
    """Write `model`'s weights + `model_cfg` (+ JSON-able `extra_meta`) to a safetensors file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": MODEL_FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "model_config": json.dumps(model_config_to_dict(model_cfg)),
        "meta": json.dumps(dict(extra_meta or {})),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def _header_metadata(data: bytes, path: str) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then a JSON header with "__metadata__".
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        return dict(header.get("__metadata__") or {})
    except (struct.error, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a safetensors model file ({exc.__class__.__name__})") from None


def load_model_file(path: str | os.PathLike) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Read a model file written by :func:`save_model` -> (model in eval mode, its config, extra meta).

    Raises:
        ModelFileError: missing file, wrong format, or weights that do not fit the stored config.
    """
    path = str(path)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc.__class__.__name__})") from None
    meta = _header_metadata(data, path)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not an a2bs model file (format {meta.get('format')!r})")
    try:
        cfg = model_config_from_dict(json.loads(meta["model_config"]))
        extra = json.loads(meta.get("meta", "{}"))
    except (KeyError, ValueError, ConfigError) as exc:
        raise ModelFileError(f"{path}: bad stored model config ({exc})") from None
    model = build_model(cfg)
    try:
        model.load_state_dict(st_load(data), strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelFileError(f"{path}: weights do not match the stored config ({first})") from None
    return model.eval(), cfg, extra
