"""a2bs: learn to drive 52 ARKit blendshapes + head pose from speech audio, at Ray scale.

The inference API is imported lazily, so ``import a2bs`` stays light (no torch until it is used)::

    import a2bs
    curves = a2bs.load_model("model.safetensors").predict("speech.wav", fps=60)
"""

from __future__ import annotations

from typing import Any

from a2bs.version import VERSION

__version__ = VERSION

_LAZY = {"load_model", "Model", "Curves", "StreamingSession", "plot_curves", "load_npz"}
__all__ = sorted(_LAZY | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from a2bs import api

        return getattr(api, name)
    raise AttributeError(f"module 'a2bs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
