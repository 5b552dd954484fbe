"""Model family (TCN PoC, full causal TCN, TCN + attention), registry and model files.

The names below load on first use (PEP 562): importing a submodule such as ``a2bs.models.commands``
(every `a2bs` command line registers it) must not import torch, which costs seconds.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "load_model_file": "a2bs.models.model_file",
    "read_model_card": "a2bs.models.model_file",
    "save_model": "a2bs.models.model_file",
    "available_models": "a2bs.models.registry",
    "build_model": "a2bs.models.registry",
    "count_parameters": "a2bs.models.registry",
    "model_config_from_dict": "a2bs.models.registry",
    "model_from_dict": "a2bs.models.registry",
    "preset": "a2bs.models.registry",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'a2bs.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
