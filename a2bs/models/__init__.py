"""Model family (TCN PoC, full causal TCN, TCN + attention), registry and model files."""

from a2bs.models.model_file import load_model_file, read_model_card, save_model
from a2bs.models.registry import (
    available_models,
    build_model,
    count_parameters,
    model_config_from_dict,
    model_from_dict,
    preset,
)

__all__ = [
    "available_models",
    "build_model",
    "count_parameters",
    "load_model_file",
    "model_config_from_dict",
    "model_from_dict",
    "preset",
    "read_model_card",
    "save_model",
]
