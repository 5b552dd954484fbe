"""Every inference front end applies the model card's log-mel normalisation: offline (`a2bs infer`),
`a2bs stream` (cached-context torch step and ONNX frame step) and `a2bs serve` (per-session state),
all equal to offline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from support import lively_model, pushed_in_chunks

from a2bs.config import AudioConfig, load_config
from a2bs.extract.audio import MelNormaliser, log_mel
from a2bs.infer.engine import ServeEngine, StreamSpec
from a2bs.infer.live import StreamingSession
from a2bs.infer.offline import LoadedModel, predict_100hz, predict_samples
from a2bs.infer.streaming import AudioStream, StreamingLogMel
from a2bs.manifests import MelNorm, ModelCard
from a2bs.models import build_model, preset
from a2bs.schema import MEL_DB_RANGE

NORM_ATOL_DB = 1e-6  # float64 running sums; chunked cumsums differ from one whole cumsum by ~1e-12 dB


def _norm(prior_frames: float, speech_floor_db: float = MEL_DB_RANGE[0]) -> MelNorm:
    return MelNorm(prior_frames, tuple(float(v) for v in np.linspace(-50.0, -30.0, 80)), speech_floor_db)


def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
            + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("speech_floor_db", [MEL_DB_RANGE[0], -55.0])
def test_streaming_front_end_with_normalisation_equals_offline(speech_floor_db: float) -> None:
    cfg, norm = AudioConfig(), _norm(100.0, speech_floor_db)
    samples = np.concatenate([np.zeros(1600, np.float32), _audio(4000 + 77)])  # opens with 0.1 s of silence
    mel = log_mel(samples, cfg)
    assert (mel.mean(axis=1) < -55.0).sum() >= 5 and (mel.mean(axis=1) >= -55.0).sum() >= 20
    offline = MelNormaliser(norm)(mel)
    front, out, i = StreamingLogMel(cfg, norm), [], 0
    for n in [1, 37, 159, 160, 161, 1001, 3] * 40:
        if i >= len(samples):
            break
        out.append(front.push(samples[i : i + n]))
        i += n
    out.append(front.flush())
    np.testing.assert_allclose(np.concatenate(out), offline, atol=NORM_ATOL_DB, rtol=0)
    front.reset()  # a new stream starts from the prior again
    np.testing.assert_allclose(np.concatenate([front.push(samples), front.flush()]), offline, atol=NORM_ATOL_DB)


def test_audio_stream_with_normalisation_equals_offline_model() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tcn_full", channels=32)).eval()
    cfg, norm = AudioConfig(), _norm(100.0)
    samples = _audio(8000 + 33, seed=7)
    with torch.no_grad():
        offline = model(torch.from_numpy(MelNormaliser(norm)(log_mel(samples, cfg)))[None])[0].numpy()
        raw = model(torch.from_numpy(log_mel(samples, cfg))[None])[0].numpy()
    out = pushed_in_chunks(AudioStream(model, cfg, mel_norm=norm), samples)
    np.testing.assert_allclose(out, offline, atol=1e-5, rtol=0)
    assert np.abs(out - raw).max() > 1e-3  # the normalisation reached the model


@pytest.fixture(scope="module")
def norm_model() -> LoadedModel:
    """A causal model whose card carries a normalisation (outputs scaled up so differences show)."""
    net = lively_model("tcn_full", channels=16, dilations=(1, 2, 4))
    card = dataclasses.replace(ModelCard.for_untrained(net.cfg), mel_norm=_norm(100.0))
    return LoadedModel(net, net.cfg, card, AudioConfig(), "norm")


def test_offline_applies_the_cards_normalisation(norm_model: LoadedModel) -> None:
    cfg, samples = load_config(), _audio(12000, seed=3)
    plain = LoadedModel(norm_model.net, norm_model.model_cfg, dataclasses.replace(norm_model.card, mel_norm=None),
                        norm_model.audio_cfg, "plain")
    with torch.no_grad():
        raw = norm_model.net(torch.from_numpy(MelNormaliser(norm_model.card.mel_norm)(log_mel(samples,
                                                                                              AudioConfig())))[None])
    np.testing.assert_allclose(predict_100hz(norm_model, samples, cfg).values, raw[0].numpy(), atol=1e-5)
    assert np.abs(predict_100hz(norm_model, samples, cfg).values - predict_100hz(plain, samples, cfg).values).max() > 1e-3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_stream_and_serve_with_normalisation_equal_offline(norm_model: LoadedModel, backend: str) -> None:
    cfg = load_config(None, [f"infer.stream_backend={backend}", f"serve.backend={backend}", "serve.max_step_frames=4"])
    samples = _audio(12000 + 41, seed=5)
    offline = predict_samples(norm_model, samples, cfg, 60)
    session = StreamingSession(norm_model, cfg, fps=60.0)  # a2bs stream
    sizes = [320, 7, 1601, 160]
    chunks = [samples[i : i + sizes[k % 4]] for k, i in enumerate(np.cumsum([0] + sizes * 40)) if i < len(samples)]
    streamed = [session.push(c) for c in chunks] + [session.close()]
    np.testing.assert_allclose(np.concatenate([c.values for c in streamed]), offline.values, atol=1e-5)
    engine = ServeEngine(norm_model, cfg, capacity=2)  # a2bs serve: every session its own running mean
    first, second = engine.open(StreamSpec(16000, fps=60)), engine.open(StreamSpec(16000, fps=60))
    other = _audio(8000, seed=9)
    out: dict = {first: [], second: []}
    feeds = {first: chunks, second: [other]}
    tick, done = 0, {first: False, second: False}
    while not all(done.values()):
        for s, c in feeds.items():
            if tick < len(c):
                s.feed(c[tick], 0.0)
            s.ending = tick >= len(c) - 1
        results, _ = engine.tick(engine.prepare())
        for s in feeds:
            if s.slot in results:
                out[s].append(results[s.slot].values)
                done[s] = done[s] or results[s.slot].done
        tick += 1
        assert tick < 5000
    np.testing.assert_allclose(np.concatenate(out[first]), offline.values, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(out[second]), predict_samples(norm_model, other, cfg, 60).values,
                               atol=1e-5)
