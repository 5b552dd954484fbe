"""Python API: load a model file, predict curves from audio, stream live.

    import a2bs

    model = a2bs.load_model("model.safetensors")          # or "default" (InferConfig.model_path)
    curves = model.predict("speech.wav", fps=60)          # or numpy samples + sample_rate
    curves = model.predict("speech.wav", identity="anna") # whose face (model.identities; default: the average)
    curves.to_livelink_csv("take.csv"); curves.to_npz("take.npz"); data = curves.to_json()

    session = model.stream(fps=60)                         # causal models only
    for block in microphone_blocks:                        # any mono float blocks at model.sample_rate
        frames = session.push(block)                       # Curves with the new frames
    frames = session.close()                               # the last frames
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Any

import numpy as np

from a2bs.config import Config, load_config, user_overrides
from a2bs.infer.curves import Curves, load_npz
from a2bs.infer.live import StreamingSession
from a2bs.infer.offline import LoadedModel, predict_file, predict_samples
from a2bs.infer.offline import load_model as _load
from a2bs.infer.preview import plot_curves
from a2bs.manifests import ModelCard
from a2bs.runtime import storage

__all__ = ["Curves", "Model", "StreamingSession", "load_model", "load_npz", "plot_curves"]


class Model:
    """A loaded a2bs model with its inference settings.

    Attributes:
        config: the resolved config (``infer`` section: fps and post-processing).
        sample_rate: the audio rate the model expects (numpy input at another rate is resampled).
    """

    def __init__(self, loaded: LoadedModel, config: Config) -> None:
        self._loaded = loaded
        self.config = config

    @property
    def sample_rate(self) -> int:
        return self._loaded.audio_cfg.sample_rate

    @property
    def model_config(self) -> Any:
        """The stored :class:`a2bs.config.ModelConfig`."""
        return self._loaded.model_cfg

    @property
    def card(self) -> ModelCard:
        """The model card stored in the model file (front end, training data, metrics, config)."""
        return self._loaded.card

    @property
    def identities(self) -> tuple[str, ...]:
        """The faces the model can drive (``identity=`` of :meth:`predict` / :meth:`stream`); () = none."""
        return tuple(self._loaded.card.identities)

    @property
    def causal(self) -> bool:
        """True if the model can stream."""
        return bool(self._loaded.model_cfg.causal)

    def predict(self, audio: np.ndarray | str | os.PathLike, sample_rate: int | None = None,
                fps: float | None = None, identity: str | None = None) -> Curves:
        """Curves for `audio`: a file path (audio or video) or samples ((n,) or (n, channels)).

        Args:
            audio: path (local or ``s3://``), or float samples in [-1, 1].
            sample_rate: rate of numpy `audio` (default: the model's rate).
            fps: output frame rate (default ``config.infer.fps``).
            identity: whose face to drive, one of :attr:`identities` (default: their learned average).

        Raises:
            ConfigError: an unknown identity (the message lists the known ones), or one for a model
                without identities.
        """
        self._loaded.identity_row(identity)  # an unknown identity: before any decoding
        if isinstance(audio, (str, os.PathLike)):
            if storage.is_remote(audio):
                with tempfile.TemporaryDirectory(prefix="a2bs-") as tmp:
                    return predict_file(self._loaded, storage.local_copy(audio, tmp), self.config, fps, identity)
            return predict_file(self._loaded, audio, self.config, fps, identity)
        return predict_samples(self._loaded, np.asarray(audio), self.config, fps, sample_rate, identity=identity)

    def stream(self, fps: float | None = None, rest: np.ndarray | None = None,
               identity: str | None = None) -> StreamingSession:
        """A new :class:`StreamingSession` (push mono samples at :attr:`sample_rate`) driving `identity`'s
        face (default: the average)."""
        return StreamingSession(self._loaded, self.config, fps, rest, identity)


def load_model(path: str | os.PathLike = "default", config: Config | str | os.PathLike | None = None,
               **overrides: Any) -> Model:
    """Load a self-contained model file (``"default"`` = ``InferConfig.model_path``).

    The audio front end is the model card's; an ``audio.*`` setting that contradicts it is a ConfigError.

    Args:
        path: model file (local or ``s3://``) or ``"default"``.
        config: a Config (its ``audio`` values that differ from the defaults count as set), or a YAML
            file of overrides.
        overrides: dotted ``key=value`` overrides, e.g. ``**{"infer.smoothing": True}``.
    """
    items = [f"{k}={v}" for k, v in overrides.items()]
    if isinstance(config, Config):
        cfg, explicit = (load_config(None, items, base=config) if items else config), None
    else:
        cfg, explicit = load_config(config, items), user_overrides(config, items)
    loaded = _load(str(path), cfg, explicit)
    return Model(loaded, replace(cfg, audio=loaded.audio_cfg))
