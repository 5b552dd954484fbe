"""Helpers for the inference tests: small seeded models and speech-like audio (no demo corpus needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from a2bs.manifests import ModelCard
from a2bs.models.model_file import save_model
from a2bs.models.registry import build_model, preset

SAMPLE_RATE = 16000


def speech_like(duration_s: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a 110-160 Hz harmonic source through moving formants) with pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formant = 500 + 400 * np.sin(2 * np.pi * 2.3 * t) ** 2
    source = sum(np.sin(k * phase) * np.exp(-((k * f0 - formant) / 350.0) ** 2) / k for k in range(1, 30))
    syllables = (np.sin(2 * np.pi * 2.0 * t - 0.5) > -0.2).astype(float)  # ~4 syllables/s
    syllables *= (t % 1.6) < 1.2  # a pause every 1.6 s
    envelope = np.convolve(syllables, np.hanning(400) / np.hanning(400).sum(), mode="same")
    x = 0.4 * source / np.abs(source).max() * envelope + 0.002 * rng.standard_normal(n)
    return x.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")
    return path


def make_model(path: Path, causal: bool = True, seed: int = 0, identities: tuple[str, ...] = ()) -> Path:
    """A tiny seeded model saved with save_model; the head is scaled so the curves move with the audio.

    With `identities`, their tables are random too, so the faces differ (fresh tables are all zero).
    """
    torch.manual_seed(seed)
    if causal:
        cfg = preset("tcn_full", channels=16, dilations=(1, 2, 4), dropout=0.0, identities=identities)
    else:
        cfg = preset("tcn_poc", channels=16, dilations=(1, 2), dropout=0.0, identities=identities)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.proj.weight.mul_(40.0)  # init std 0.01 would give nearly constant 0.5 curves
        if identities:
            for table in (model.identity.film.weight, model.identity.out_bias.weight):
                table.normal_(0.0, 0.5)
    save_model(path, model, ModelCard.for_untrained(cfg))
    return path


@pytest.fixture(scope="session")
def causal_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "causal.safetensors")


@pytest.fixture(scope="session")
def noncausal_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "centred.safetensors", causal=False)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """2.013 s of speech-like audio (not a whole number of 10 ms hops, to exercise the row-count rule)."""
    return write_wav(tmp_path_factory.mktemp("audio") / "speech.wav", speech_like(2.013))
