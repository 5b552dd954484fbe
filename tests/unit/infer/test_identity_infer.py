"""The identity through inference: streaming == offline, the batched frame step, ONNX graphs, the API,
the serving start message and the CLI's errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import a2bs
from a2bs.cli import main
from a2bs.config import AudioConfig, ConfigError, load_config
from a2bs.infer.batched import make_batched_stepper
from a2bs.infer.engine import parse_spec
from a2bs.infer.export import (
    OnnxStreamer,
    export_onnx_offline,
    export_onnx_step,
    initial_onnx_state,
    onnx_session,
    verify_onnx_offline,
    verify_onnx_step,
)
from a2bs.infer.offline import LoadedModel, forward_long
from a2bs.infer.streaming import AudioStream, StreamingError, StreamingModel
from a2bs.infer.wire import StreamError
from a2bs.manifests import ModelCard
from a2bs.models import build_model, preset, save_model

STREAM_ATOL = 1e-5  # chunked vs one pass (float32); observed ~1e-7
NAMES = ("anna", "ben")


def _model(name: str = "tcn_full", identities: tuple[str, ...] = NAMES, film: bool = True) -> torch.nn.Module:
    extra = {"attn_max_len": 24, "attn_layers": 1} if name == "tcn_attn" else {}
    torch.manual_seed(0)
    net = build_model(preset(name, channels=16, dilations=(1, 2, 4), dropout=0.0, causal=True,
                             identities=identities, identity_film=film, **extra)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net.head.proj.weight.mul_(40.0)  # outputs that move with the audio
        if net.identity is not None:  # faces that differ (trained tables are not zero)
            for table in net.identity.tables():
                table.copy_(0.5 * torch.randn(table.shape, generator=g))
    return net


def _mel(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, 80, generator=g) * 15 - 40


def _chunked(stream: StreamingModel, mel: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, i, k = [], 0, 0
    while i < mel.shape[1]:
        n = sizes[k % len(sizes)]
        outs.append(stream.step(mel[:, i : i + n]))
        i, k = i + n, k + 1
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", ["tcn_full", "tcn_attn"])
def test_streaming_equals_offline_with_an_identity(name: str) -> None:
    net = _model(name)
    mel = _mel(90, 0)
    with torch.no_grad():
        offline = {row: net(mel, torch.tensor([row])) for row in (0, 1, 2)}
    assert (offline[0] - offline[1]).abs().max() > 1e-2  # the faces differ
    for row in (0, 1, 2):
        streamed = _chunked(StreamingModel(net, identity=row), mel, [1, 7, 3, 32])
        torch.testing.assert_close(streamed, offline[row], rtol=0, atol=STREAM_ATOL)
    # None = the average; two streams of different faces in one batch.
    torch.testing.assert_close(_chunked(StreamingModel(net), mel, [5]), offline[2], rtol=0, atol=STREAM_ATOL)
    both = _chunked(StreamingModel(net, batch_size=2, identity=[1, 0]), mel.expand(2, -1, -1), [4, 9])
    torch.testing.assert_close(both, torch.cat([offline[1], offline[0]]), rtol=0, atol=STREAM_ATOL)
    # forward_long (what `a2bs infer` runs on long files) carries the identity through its chunks.
    torch.testing.assert_close(forward_long(net, mel, 16, identity=1), offline[1], rtol=0, atol=STREAM_ATOL)


def test_streaming_refuses_an_identity_for_a_model_without_identities() -> None:
    with pytest.raises(StreamingError, match="no identities"):
        StreamingModel(_model(identities=()), identity=0)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_batched_step_holds_streams_of_different_faces_in_one_call(backend: str) -> None:
    net = _model()
    mels = [_mel(23, 1)[0].numpy(), _mel(17, 2)[0].numpy(), _mel(20, 3)[0].numpy()]
    rows = [0, 1, None]
    stepper = make_batched_stepper(net, 4, backend)
    for slot, row in enumerate(rows):
        stepper.reset(slot, row)
    outs = [[], [], []]
    for a, b in [(0, 5), (5, 6), (6, 23)]:  # uneven arrivals: calls mix the three faces
        for i, y in enumerate(stepper.step([0, 1, 2], [m[a:b] for m in mels])):
            outs[i].append(y)
    for mel, row, out in zip(mels, rows, outs):
        ident = torch.tensor([2 if row is None else row])
        with torch.no_grad():
            ref = net(torch.from_numpy(mel)[None], ident)[0].numpy()
        np.testing.assert_allclose(np.concatenate(out), ref, rtol=0, atol=STREAM_ATOL)
    plain = make_batched_stepper(_model(identities=()), 1, backend)
    with pytest.raises(StreamingError, match="no identities"):
        plain.reset(0, 1)


def test_onnx_graphs_with_an_identity_input_equal_pytorch(tmp_path) -> None:
    net = _model()
    card = ModelCard.for_untrained(net.cfg)
    mel = _mel(40, 4).expand(3, -1, -1).contiguous()
    ident = torch.tensor([1, 0, 2])
    step_path = export_onnx_step(net, tmp_path / "step.onnx", card=card)
    assert [i.name for i in onnx_session(step_path).get_inputs()][:2] == ["mel", "identity"]
    assert verify_onnx_step(step_path, net, mel, chunk_frames=7, identity=ident) < STREAM_ATOL
    assert verify_onnx_step(step_path, net, mel[:1], chunk_frames=40) < STREAM_ATOL  # the average
    offline_path = export_onnx_offline(net, tmp_path / "offline.onnx", card=card)
    assert verify_onnx_offline(offline_path, net, mel, ident) < STREAM_ATOL
    # The identity input matters: the same audio as anna and as ben differs.
    streamer = OnnxStreamer(onnx_session(step_path), initial_onnx_state(net, 2), identity=[0, 1])
    out = streamer.step(mel[:2].numpy())
    assert np.abs(out[0] - out[1]).max() > 1e-2
    # A model without identities exports exactly the inputs it had.
    plain_path = export_onnx_step(_model(identities=()), tmp_path / "plain.onnx")
    assert "identity" not in [i.name for i in onnx_session(plain_path).get_inputs()]
    # Identities as output biases only (model.identity_film=false) take the same input.
    bias_only = _model(film=False)
    bias_path = export_onnx_step(bias_only, tmp_path / "bias.onnx", card=ModelCard.for_untrained(bias_only.cfg))
    assert verify_onnx_step(bias_path, bias_only, mel, chunk_frames=7, identity=ident) < STREAM_ATOL


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("identity-models")
    paths = {}
    for key, names in (("faces", NAMES), ("plain", ())):
        net = _model(identities=names)
        paths[key] = str(folder / f"{key}.safetensors")
        save_model(paths[key], net, ModelCard.for_untrained(net.cfg, AudioConfig()))
    return paths


def test_api_predict_and_stream_choose_the_face(model_files) -> None:
    model = a2bs.load_model(model_files["faces"], **{"infer.neutral_calibration": False})
    assert model.identities == NAMES
    audio = _audio(1.0, 0)
    anna, ben, average = (model.predict(audio, fps=100, identity=i).values for i in ("anna", "ben", None))
    assert np.abs(anna - ben).max() > 1e-2 and np.abs(anna - average).max() > 1e-2
    session = model.stream(fps=100, identity="ben")
    streamed = np.concatenate([session.push(audio[i : i + 1234]).values for i in range(0, len(audio), 1234)]
                              + [session.close().values])
    np.testing.assert_allclose(streamed, ben, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"unknown identity 'carl' \(known: anna, ben; none = their average\)"):
        model.predict(audio, identity="carl")
    with pytest.raises(ConfigError, match="unknown identity 'carl'"):
        model.stream(identity="carl")
    plain = a2bs.load_model(model_files["plain"])
    assert plain.identities == ()
    with pytest.raises(ConfigError, match="'anna': this model has no identities"):
        plain.predict(audio, identity="anna")


def test_audio_stream_with_an_identity_equals_offline() -> None:
    net = _model()
    audio = _audio(0.5, 1)
    stream = AudioStream(net, AudioConfig(), identity=1)
    out = np.concatenate([stream.push(audio[:3000]), stream.push(audio[3000:]), stream.flush()])
    from a2bs.extract.audio import log_mel

    with torch.no_grad():
        ref = net(torch.from_numpy(log_mel(audio, AudioConfig()))[None], torch.tensor([1]))[0].numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=STREAM_ATOL)


def test_serve_start_message_picks_the_session_face(model_files) -> None:
    cfg = load_config()
    net = _model()
    loaded = LoadedModel(net, net.cfg, ModelCard.for_untrained(net.cfg), AudioConfig(), "faces")
    assert parse_spec({"sample_rate": 16000, "identity": "ben"}, cfg, loaded).identity == "ben"
    assert parse_spec({"sample_rate": 16000}, cfg, loaded).identity is None
    assert parse_spec({"sample_rate": 16000}, cfg, loaded, default_identity="anna").identity == "anna"
    for msg, reason in [({"sample_rate": 16000, "identity": "carl"}, "unknown identity 'carl' (known: anna, ben"),
                        ({"sample_rate": 16000, "identity": 1}, "identity must be a string")]:
        with pytest.raises(StreamError) as err:
            parse_spec(msg, cfg, loaded)
        assert reason in str(err.value)


def test_cli_identity_errors_are_one_line(model_files, tmp_path, capsys) -> None:
    wav = tmp_path / "speech.wav"
    sf.write(wav, _audio(0.5, 2), 16000)
    out = tmp_path / "out"
    code = main(["infer", model_files["faces"], str(wav), "--out", str(out), "--no-ray", "--identity", "carl"])
    err = capsys.readouterr().err
    assert code != 0
    assert "unknown identity 'carl' (known: anna, ben; none = their average)" in err
    code = main(["infer", model_files["plain"], str(wav), "--out", str(out), "--no-ray", "--identity", "anna"])
    assert code != 0 and "this model has no identities" in capsys.readouterr().err
    assert main(["infer", model_files["faces"], str(wav), "--out", str(out), "--no-ray", "--identity", "ben",
                 "--format", "npz"]) == 0
    assert (out / "speech.npz").exists()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_serve_engine_sessions_of_different_faces_equal_offline(backend: str) -> None:
    import time

    from a2bs.infer.engine import ServeEngine, StreamSpec
    from a2bs.infer.offline import predict_samples

    net = _model()
    loaded = LoadedModel(net, net.cfg, ModelCard.for_untrained(net.cfg), AudioConfig(), "faces")
    cfg = load_config(None, [f"serve.backend={backend}", "infer.neutral_calibration=false"])
    engine = ServeEngine(loaded, cfg, capacity=3)
    audio = _audio(0.6, 3)
    streams = {name: engine.open(StreamSpec(16000, fps=60, identity=name)) for name in ("anna", "ben", None)}
    chunks = [audio[i : i + 320] for i in range(0, len(audio), 320)]  # 20 ms per tick, in step
    out: dict = {s.slot: [] for s in streams.values()}
    done: set = set()
    for tick in range(10000):
        for s in streams.values():
            if tick < len(chunks):
                s.feed(chunks[tick], time.perf_counter())
            s.ending = tick >= len(chunks)
        results, _ = engine.tick(engine.prepare())
        for slot, r in results.items():
            out[slot].append(r.values)
            if r.done:
                done.add(slot)
        if len(done) == len(streams):
            break
    for name, s in streams.items():
        ref = predict_samples(loaded, audio, cfg, 60, identity=name).values
        np.testing.assert_allclose(np.concatenate(out[s.slot]), ref, atol=1e-5)
    anna, ben = (np.concatenate(out[streams[n].slot]) for n in ("anna", "ben"))
    assert np.abs(anna - ben).max() > 1e-2
