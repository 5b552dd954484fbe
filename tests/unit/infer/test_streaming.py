"""Streaming equals offline: the log-mel front end and the stateful model wrapper, for any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import pushed_in_chunks

from a2bs.config import AudioConfig
from a2bs.extract.audio import log_mel
from a2bs.infer.streaming import (
    AudioStream,
    StreamingError,
    StreamingLogMel,
    StreamingModel,
)
from a2bs.models import build_model, preset

MODEL_ATOL = 1e-5  # outputs: blendshapes in [0, 1], pose in [-0.2, 0.2] (float32)
MEL_ATOL_DB = 1e-4  # front end: same float64 frames through the same code; observed difference 0.0 dB



def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    return (tone + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _stream_mel(samples: np.ndarray, sizes: list[int], cfg: AudioConfig) -> np.ndarray:
    front = StreamingLogMel(cfg)
    out, i, k = [], 0, 0
    while i < len(samples):
        n = sizes[k % len(sizes)]
        out.append(front.push(samples[i : i + n]))
        i, k = i + n, k + 1
    out.append(front.flush())
    assert front.frames_emitted == 1 + len(samples) // cfg.hop_length
    return np.concatenate(out)


@pytest.mark.parametrize("n_samples", [0, 1, 159, 160, 161, 400, 16000 + 77])
def test_front_end_equals_offline_log_mel(n_samples: int) -> None:
    cfg = AudioConfig()
    samples = _audio(n_samples)
    offline = log_mel(samples, cfg)
    streamed = _stream_mel(samples, [1, 37, 159, 160, 161, 1001, 3], cfg)
    assert streamed.shape == offline.shape == (1 + n_samples // cfg.hop_length, cfg.n_mels)
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=MEL_ATOL_DB)


def test_front_end_emits_frames_as_soon_as_complete() -> None:
    cfg = AudioConfig()
    front = StreamingLogMel(cfg)
    # Frame t needs samples up to t * hop + n_fft // 2: frame 0 after 256 samples, frame 1 after 416.
    assert len(front.push(np.zeros(255, np.float32))) == 0
    assert len(front.push(np.zeros(1, np.float32))) == 1
    assert len(front.push(np.zeros(159, np.float32))) == 0
    assert len(front.push(np.zeros(1, np.float32))) == 1
    assert len(front.flush()) == 1 + 416 // 160 - 2
    with pytest.raises(StreamingError):
        front.push(np.zeros(10, np.float32))
    front.reset()
    assert front.frames_emitted == 0


def _mel(t: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-80, 0, size=(1, t, 80)).astype(np.float32))


@pytest.fixture(scope="module")
def full_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("tcn_full")).eval()


def _run_chunks(stream: StreamingModel, mel: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([stream.step(mel[:, i : i + chunk]) for i in range(0, mel.shape[1], chunk)], dim=1)


@pytest.mark.parametrize("chunk", [1, 7, 160])
def test_tcn_full_streaming_equals_offline(full_model: torch.nn.Module, chunk: int) -> None:
    mel = _mel(330)
    with torch.no_grad():
        offline = full_model(mel)
    streamed = _run_chunks(StreamingModel(full_model), mel, chunk)
    torch.testing.assert_close(streamed, offline, atol=MODEL_ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 160])
def test_tcn_attn_streaming_equals_offline(chunk: int) -> None:
    torch.manual_seed(0)
    # A short attention window so the key/value cache is trimmed many times within the test.
    model = build_model(preset("tcn_attn", channels=64, attn_max_len=24)).eval()
    mel = _mel(330, seed=2)
    with torch.no_grad():
        offline = model(mel)
    streamed = _run_chunks(StreamingModel(model), mel, chunk)
    torch.testing.assert_close(streamed, offline, atol=MODEL_ATOL, rtol=0)


def test_irregular_chunks_numpy_and_reset(full_model: torch.nn.Module) -> None:
    mel = _mel(120, seed=3)
    with torch.no_grad():
        offline = full_model(mel)[0].numpy()
    stream = StreamingModel(full_model)
    parts, i = [], 0
    for n in [0, 1, 2, 3, 5, 8, 13, 21, 34, 33]:
        parts.append(stream.step(mel[0, i : i + n].numpy()))  # (n, 80) numpy in -> (n, 59) numpy out
        i += n
    assert stream.frames_seen == 120
    np.testing.assert_allclose(np.concatenate(parts), offline, atol=MODEL_ATOL, rtol=0)
    stream.reset()
    np.testing.assert_allclose(stream.step(mel[0, :10].numpy()), offline[:10], atol=MODEL_ATOL, rtol=0)


def test_independent_streams(full_model: torch.nn.Module) -> None:
    a, b = _mel(60, seed=4), _mel(60, seed=5)
    with torch.no_grad():
        ref_a, ref_b = full_model(a), full_model(b)
    sa, sb = StreamingModel(full_model), StreamingModel(full_model)
    out_a, out_b = [], []
    for i in range(0, 60, 6):  # interleaved: state lives in each stream object
        out_a.append(sa.step(a[:, i : i + 6]))
        out_b.append(sb.step(b[:, i : i + 4]))
        out_b.append(sb.step(b[:, i + 4 : i + 6]))
    torch.testing.assert_close(torch.cat(out_a, 1), ref_a, atol=MODEL_ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(out_b, 1), ref_b, atol=MODEL_ATOL, rtol=0)
    # A batch of two streams advanced together gives the same.
    both = StreamingModel(full_model, batch_size=2)
    out = _run_chunks(both, torch.cat([a, b]), 9)
    torch.testing.assert_close(out, torch.cat([ref_a, ref_b]), atol=MODEL_ATOL, rtol=0)
    with pytest.raises(StreamingError, match="batch"):
        both.step(a[:, :3])


def test_non_causal_models_refuse_to_stream() -> None:
    with pytest.raises(StreamingError, match="not causal"):
        StreamingModel(build_model(preset("tcn_poc", channels=16)))
    with pytest.raises(StreamingError, match="not causal"):
        StreamingModel(build_model(preset("tcn_attn", channels=16, attn_causal=False)))
    # The PoC shape configured causal streams fine.
    model = build_model(preset("tcn_poc", channels=16, causal=True)).eval()
    mel = _mel(50, seed=6)
    with torch.no_grad():
        offline = model(mel)
    torch.testing.assert_close(_run_chunks(StreamingModel(model), mel, 7), offline, atol=MODEL_ATOL, rtol=0)


def test_audio_stream_end_to_end() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tcn_full", channels=32)).eval()
    cfg = AudioConfig()
    samples = _audio(8000 + 33, seed=7)
    with torch.no_grad():
        offline = model(torch.from_numpy(log_mel(samples, cfg))[None])[0].numpy()
    out = pushed_in_chunks(AudioStream(model, cfg), samples)
    assert out.shape == offline.shape == (1 + len(samples) // cfg.hop_length, 59)
    np.testing.assert_allclose(out, offline, atol=MODEL_ATOL, rtol=0)
