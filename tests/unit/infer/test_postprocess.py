"""Post-processing: One-Euro smoothing (causal, chunked == whole), articulation gain, neutral calibration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from a2bs.config import AudioConfig, InferConfig
from a2bs.extract.audio import features_from_samples
from a2bs.infer.live import StreamingVAD
from a2bs.infer.postprocess import (
    UPPER_FACE_INDEX,
    OneEuroFilter,
    PostProcessor,
    apply_gain_and_clip,
    estimate_rest,
    postprocess_offline,
)
from a2bs.schema import (
    ARKIT_BLENDSHAPES,
    BLENDSHAPE_INDEX,
    MOUTH_INDICES,
    N_BLENDSHAPES,
    N_TARGETS,
)

RATE = 100.0


def frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.zeros((n, N_TARGETS))
    v[:, :N_BLENDSHAPES] = np.clip(0.4 + 0.2 * np.sin(np.arange(n)[:, None] / 7.0 + np.arange(52))
                                   + rng.normal(0, 0.05, (n, 52)), 0, 1)
    q = np.concatenate([np.ones((n, 1)), rng.normal(0, 0.05, (n, 3))], axis=1)
    v[:, N_BLENDSHAPES + 3 :] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return v.astype(np.float32)


def chunked(fn, x: np.ndarray, seed: int = 1, *extra: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 13))
        out.append(fn(x[i : i + n], *(e[i : i + n] for e in extra)))
        i += n
    return np.concatenate(out)


def test_one_euro_chunked_equals_whole_and_is_causal():
    x = frames(300)
    whole = OneEuroFilter(RATE, 3.0, 0.5, 1.0)(x)
    np.testing.assert_array_equal(chunked(OneEuroFilter(RATE, 3.0, 0.5, 1.0), x), whole)
    y = x.copy()
    y[200:] = 1.0 - y[200:]  # change the future only
    np.testing.assert_array_equal(OneEuroFilter(RATE, 3.0, 0.5, 1.0)(y)[:200], whole[:200])


def test_one_euro_smooths_jitter_and_follows_fast_moves():
    rng = np.random.default_rng(0)
    still = 0.5 + rng.normal(0, 0.05, (400, 1))
    smoothed = OneEuroFilter(RATE, 1.0, 0.5, 1.0)(still)
    assert smoothed[100:].std() < 0.4 * still[100:].std()
    step = np.concatenate([np.zeros((50, 1)), np.ones((50, 1))])
    slow = OneEuroFilter(RATE, 1.0, 0.0, 1.0)(step)
    fast = OneEuroFilter(RATE, 1.0, 5.0, 1.0)(step)
    assert fast[55, 0] > slow[55, 0] + 0.2  # beta raises the cutoff while the signal moves
    assert fast[99, 0] > 0.95


def test_gain_scales_mouth_and_upper_face_then_clips():
    x = np.full((4, N_TARGETS), 0.3)
    x[1, :N_BLENDSHAPES] = 0.8
    cfg = InferConfig(mouth_gain=2.0, upper_face_gain=0.5)
    y = apply_gain_and_clip(x, None, cfg)
    jaw, blink, cheek_puff = BLENDSHAPE_INDEX["jawOpen"], BLENDSHAPE_INDEX["eyeBlinkLeft"], BLENDSHAPE_INDEX["cheekPuff"]
    assert y[0, jaw] == pytest.approx(0.6) and y[1, jaw] == 1.0  # clipped at 1
    assert y[0, blink] == pytest.approx(0.15) and y[0, cheek_puff] == pytest.approx(0.15)
    assert y[0, BLENDSHAPE_INDEX["tongueOut"]] == pytest.approx(0.3)  # neither group
    np.testing.assert_array_equal(y[:, N_BLENDSHAPES:], x[:, N_BLENDSHAPES:])  # pose untouched
    assert {ARKIT_BLENDSHAPES[i][:3] for i in MOUTH_INDICES} == {"jaw", "mou"}
    assert {ARKIT_BLENDSHAPES[i][:3] for i in UPPER_FACE_INDEX} == {"eye", "bro", "che", "nos"}
    assert y.min() >= 0.0


def test_neutral_calibration_subtracts_the_silent_rest_face():
    n = 200
    x = frames(n)
    rest = np.linspace(0.05, 0.3, N_BLENDSHAPES)
    vad = np.ones(n, np.float32)
    vad[:60] = 0.0  # silence
    x[:60, :N_BLENDSHAPES] = rest
    cfg = InferConfig(neutral_calibration=True)
    np.testing.assert_allclose(estimate_rest(x[:, :N_BLENDSHAPES], vad, cfg), rest, atol=1e-6)
    y = postprocess_offline(x, vad, cfg, RATE)
    assert np.abs(y[:60, :N_BLENDSHAPES]).max() < 1e-6  # the rest face maps to zero
    expect = np.clip(x[60:, :N_BLENDSHAPES] - rest, 0, 1)
    np.testing.assert_allclose(y[60:, :N_BLENDSHAPES], expect, atol=1e-6)
    assert y[:, :N_BLENDSHAPES].min() >= 0.0
    # Too little silence: nothing to measure, curves pass through.
    short = vad.copy()
    short[: 60 - cfg.neutral_min_frames + 5] = 1.0
    assert estimate_rest(x[:, :N_BLENDSHAPES], short, cfg) is None
    np.testing.assert_allclose(postprocess_offline(x, short, cfg, RATE), x, atol=1e-6)


def test_streaming_postprocessor_equals_offline_with_a_fixed_rest():
    x, vad = frames(300, seed=4), np.zeros(300)
    cfg = InferConfig(smoothing=True, mouth_gain=1.4, upper_face_gain=0.8, neutral_calibration=True)
    rest = np.full(N_BLENDSHAPES, 0.1)
    whole = postprocess_offline(x, vad, cfg, RATE, rest=rest)
    np.testing.assert_allclose(chunked(PostProcessor(cfg, RATE, rest=rest), x, 2, vad), whole, atol=0, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(whole[:, N_BLENDSHAPES + 3 :], axis=1), 1.0, atol=1e-6)


def test_streaming_rest_is_measured_on_silence_seen_so_far():
    n = 300
    x = frames(n, seed=5)
    vad = np.ones(n)
    vad[:100] = 0.0
    x[:100, :N_BLENDSHAPES] = 0.2
    cfg = InferConfig(neutral_calibration=True)
    proc = PostProcessor(cfg, RATE)
    out = chunked(proc, x, 3, vad)
    np.testing.assert_allclose(out, PostProcessor(cfg, RATE)(x, vad), atol=1e-7)  # chunking does not matter
    np.testing.assert_allclose(proc.rest, 0.2, atol=1e-6)
    np.testing.assert_allclose(out[150:, :N_BLENDSHAPES], np.clip(x[150:, :N_BLENDSHAPES] - 0.2, 0, 1), atol=1e-6)
    early = cfg.neutral_min_frames - 1  # before enough silence: no calibration yet
    np.testing.assert_allclose(out[:early, :N_BLENDSHAPES], x[:early, :N_BLENDSHAPES], atol=1e-6)
    assert np.abs(out[early + 1 : 100, :N_BLENDSHAPES]).max() < 1e-6  # calibrated from then on


def test_streaming_vad_equals_offline_vad():
    cfg = AudioConfig()
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 0.1, 16000 + 123) * (np.arange(16123) % 8000 < 4000)).astype(np.float32)
    expect = features_from_samples(x, cfg).vad
    vad = StreamingVAD(cfg)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 700))
        parts.append(vad.push(x[i : i + n]))
        i += n
    parts.append(vad.flush())
    got = np.concatenate(parts)
    assert got.shape == expect.shape
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert 0.2 < (got < 0.5).mean() < 0.8


def test_disabled_postprocessing_only_clips():
    x = frames(50)
    cfg = dataclasses.replace(InferConfig(), smoothing=False, neutral_calibration=False)
    np.testing.assert_allclose(postprocess_offline(x, np.zeros(50), cfg, RATE), x, atol=1e-7)
