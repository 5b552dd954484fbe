"""`serve.precision=int8`: the ONNX frame step on int8 weights, close to the float model but not equal,
and refused where it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from support import lively_model

from a2bs.config import AudioConfig, ConfigError, load_config
from a2bs.infer.batched import make_batched_stepper
from a2bs.infer.engine import ServeEngine, StreamSpec
from a2bs.infer.offline import LoadedModel, predict_samples
from a2bs.manifests import ModelCard


def _speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_int8_sessions_stay_close_to_the_float_model() -> None:
    net = lively_model("tcn_full", channels=32, dilations=(1, 2, 4, 8))
    model = LoadedModel(net, net.cfg, ModelCard.for_untrained(net.cfg), AudioConfig(), "test")
    cfg = load_config(None, ["serve.backend=onnx", "serve.precision=int8"])
    engine = ServeEngine(model, cfg, capacity=2)
    audio = [_speech(1.0, 1), _speech(0.7, 2)]
    streams = [engine.open(StreamSpec(16000, fps=60)) for _ in audio]
    out = [[] for _ in audio]
    for i in range(0, 16000, 320):  # 20 ms a tick, both sessions in every call
        for s, a in zip(streams, audio):
            s.feed(a[i : i + 320], 0.0)
            s.ending = i + 320 >= len(a)
        results, _ = engine.tick(engine.prepare())
        for k, s in enumerate(streams):
            if s.slot in results:
                out[k].append(results[s.slot].values)
    for k, a in enumerate(audio):
        got = np.concatenate(out[k])
        ref = predict_samples(model, a, cfg, 60).values  # the float model, offline
        assert got.shape == ref.shape
        err = np.abs(got - ref)
        # Measured on this random model: mean 0.004-0.005, max 0.04-0.05 (values' spread ~0.3); a float
        # step would be within ~1e-6, so the int8 weights are in use.
        assert 1e-4 < err.max() < 0.15 and err.mean() < 0.02, (k, err.max(), err.mean())


def test_int8_is_refused_where_it_cannot_run() -> None:
    net = lively_model("tcn_full", channels=8, dilations=(1, 2))
    with pytest.raises(ConfigError, match="needs the ONNX Runtime backend"):
        make_batched_stepper(net, 1, "torch", precision="int8")
    with pytest.raises(ConfigError, match="serve.precision must be one of fp32, int8"):
        make_batched_stepper(net, 1, "onnx", precision="int4")
    assert make_batched_stepper(net, 1, "auto", precision="int8").precision == "int8"  # auto = ONNX here
