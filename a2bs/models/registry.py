"""Model family registry: name -> builder, canonical presets, rebuilding from stored config dicts.

Builders take a :class:`~a2bs.config.ModelConfig` and use it exactly as given. ``ModelConfig``'s own
defaults are the proof-of-concept values; the canonical configuration of every family member (e.g.
``tcn_full``: 256 channels, 10 dilations, causal, separable) comes from :func:`preset`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from torch import nn

from a2bs.config import ConfigError, ModelConfig, config_from_dict, config_to_dict
from a2bs.models.attention import TCNAttention
from a2bs.models.tcn import TCN

Builder = Callable[[ModelConfig], nn.Module]

_BUILDERS: dict[str, Builder] = {}
# Each family member's canonical values, as overrides of the ModelConfig defaults.
_PRESETS: dict[str, dict[str, Any]] = {}


def register_model(name: str, preset_overrides: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register `builder` under `name`, with its canonical config overrides."""

    def deco(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is already registered")
        _BUILDERS[name] = builder
        _PRESETS[name] = dict(preset_overrides or {})
        return builder

    return deco


@register_model("tcn_poc")  # ModelConfig defaults: 4 blocks, 128 ch, kernel 3, centred, dense, no dropout
def build_tcn_poc(cfg: ModelConfig) -> nn.Module:
    """Proof-of-concept TCN (non-causal by its preset; any cfg is used as given)."""
    return TCN(cfg)


@register_model(
    "tcn_full",
    {
        "channels": 256,
        "kernel_size": 3,
        "dilations": (1, 2, 4, 8, 16, 32, 64, 128, 128, 128),
        "causal": True,
        "separable": True,
        "dropout": 0.1,
    },
)
def build_tcn_full(cfg: ModelConfig) -> nn.Module:
    """Full-scale causal depthwise-separable TCN (receptive field 2045 frames by its preset)."""
    return TCN(cfg)


@register_model(
    "tcn_attn",
    {
        "channels": 256,
        "kernel_size": 3,
        # The convolutions cover ~1.3 s of local context; attention covers the rest of the window.
        "dilations": (1, 2, 4, 8, 16, 32),
        "causal": True,
        "separable": True,
        "dropout": 0.1,
        "attn_heads": 4,
        "attn_layers": 2,
        "attn_causal": True,
        "attn_max_len": 1024,  # attention window: 10.24 s at 100 Hz
    },
)
def build_tcn_attn(cfg: ModelConfig) -> nn.Module:
    """TCN backbone + multi-head self-attention + fusion."""
    return TCNAttention(cfg)


def available_models() -> list[str]:
    """Registered model names."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(available_models())})")


def preset_overrides(name: str) -> dict[str, Any]:
    """The canonical values of `name` as a ``model:`` override mapping (for YAML configs)."""
    _check_name(name)
    return {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in _PRESETS[name].items()}}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Canonical ModelConfig of family member `name`, with optional field overrides on top."""
    _check_name(name)
    return dataclasses.replace(ModelConfig(name=name), **{**_PRESETS[name], **overrides})


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model `cfg.name` from `cfg` as given (fresh, initialised weights)."""
    _check_name(cfg.name)
    return _BUILDERS[cfg.name](cfg)


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig from a stored dict (``config_to_dict(model_cfg)``); unknown keys are an error."""
    return config_from_dict({"model": dict(data)}).model


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain JSON/YAML-able dict of a ModelConfig (tuples as lists)."""
    return config_to_dict(cfg)


def model_from_dict(data: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model (fresh weights) from a stored config dict."""
    return build_model(model_config_from_dict(data))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
