"""The model card: a trained model file rebuilds its network and audio front end alone, every consumer
takes the front end from it, and a contradicting setting or a file without a card is refused."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from infer_support import make_model, speech_wav  # noqa: F401  (fixture)
from safetensors.torch import load_file
from safetensors.torch import save as st_save

import a2bs
from a2bs.cli import EXIT_CONFIG, EXIT_FAILED, main
from a2bs.config import AudioConfig, Config, config_to_dict, load_config
from a2bs.extract.audio import features_from_samples, load_audio
from a2bs.infer.live import StreamingSession
from a2bs.infer.offline import load_model, predict_100hz
from a2bs.manifests import DataSummary, ModelCard, ShardsManifest
from a2bs.models.model_file import read_model_card, save_model
from a2bs.models.registry import build_model, preset
from a2bs.schema import TARGET_NAMES
from a2bs.train.trainer import train

TRAIN = ["train.epochs=1", "train.batch_size=64", "model.channels=16", "model.dilations=[1,2]", "infer.fps=60"]
AUDIO_320 = AudioConfig(hop_length=320, win_length=640, n_fft=1024)


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    """One epoch of a small model on the demo shards, in this process (the loop without Ray)."""
    shards, _ = demo_shards
    cfg = load_config(None, TRAIN)
    result = train(str(shards), str(tmp_path_factory.mktemp("card") / "run"), cfg, use_ray=False)
    return shards, result, cfg


@pytest.mark.ray
def test_the_card_records_the_run_and_rebuilds_model_and_front_end_alone(trained, speech_wav):
    shards, result, cfg = trained
    card = read_model_card(result.model_path)
    manifest = ShardsManifest.load(shards)
    assert (card.epoch, card.a2bs_version, card.target_names) == (result.best_epoch, a2bs.__version__, TARGET_NAMES)
    assert card.audio == manifest.audio and card.model == cfg.model and card.output_fps == 60.0
    assert card.training_config == config_to_dict(cfg)
    assert card.data == DataSummary.from_shards(manifest) and card.data.fingerprint == manifest.fingerprint
    assert card.data.splits["train"].hours > 0 and card.data.splits["val"].clips == len(manifest.splits["val"].clips)
    for key in ("loss", "mae", "mouth_mae", "jaw_corr", "lip_corr"):
        assert card.metrics["val"][key] == pytest.approx(result.best_metrics[f"val_{key}"]), key
    assert card.metrics["train"]["loss"] == pytest.approx(result.best_metrics["train_loss"])

    # Everything from the card and the weights: no Config, no run folder, no shards.
    net = build_model(card.model).eval()
    net.load_state_dict(load_file(result.model_path))
    samples = load_audio(speech_wav, card.audio.sample_rate)
    with torch.no_grad():
        alone = net(torch.from_numpy(features_from_samples(samples, card.audio).mel_db)[None])[0].numpy()
    loaded = load_model(result.model_path, Config())
    assert loaded.audio_cfg == card.audio and loaded.card == card
    curves = predict_100hz(loaded, samples, Config())
    assert curves.values.shape == alone.shape == (1 + len(samples) // card.audio.hop_length, len(TARGET_NAMES))
    np.testing.assert_allclose(curves.values, alone, atol=1e-6)


@pytest.fixture(scope="module")
def hop_320_model(tmp_path_factory):
    """A causal model whose card records a 320-sample hop (50 frames/s), not a2bs's default 160."""
    path = make_model(tmp_path_factory.mktemp("card320") / "m.safetensors")
    cfg = read_model_card(path).model
    weights = build_model(cfg)
    weights.load_state_dict(load_file(path))
    save_model(path, weights, ModelCard.for_untrained(cfg, AUDIO_320))
    return path


def test_every_consumer_takes_the_front_end_from_the_card(hop_320_model, speech_wav, tmp_path, capsys):
    """With a default config, infer, stream and the Python API all run the card's 320-sample hop."""
    loaded = load_model(str(hop_320_model), Config())
    samples = load_audio(speech_wav, 16000)
    offline = predict_100hz(loaded, samples, Config())
    assert loaded.audio_cfg == AUDIO_320 and offline.fps == 50.0 and len(offline) == 1 + len(samples) // 320
    session = StreamingSession(loaded, Config(), fps=50.0)
    streamed = [session.push(samples[i : i + 320]) for i in range(0, len(samples), 320)] + [session.close()]
    assert session.rate_hz == 50.0
    np.testing.assert_allclose(np.concatenate([c.values for c in streamed]), offline.values, atol=1e-5)
    api = a2bs.load_model(str(hop_320_model))
    assert api.card.audio == api.config.audio == AUDIO_320
    np.testing.assert_allclose(api.predict(samples, fps=50).values, offline.values, atol=1e-6)
    assert main(["infer", str(hop_320_model), str(speech_wav), "--out", str(tmp_path / "o"), "--format", "npy",
                 "audio.hop_length=320"]) == 0  # a setting equal to the card's is fine
    assert "infer: 1 ok" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "o" / "_config.yaml").read_text())["audio"] == config_to_dict(AUDIO_320)


@pytest.mark.parametrize("command", ["infer", "stream", "preview", "infer-config-file"])
def test_a_contradicting_setting_is_refused_before_any_work(command, hop_320_model, speech_wav, tmp_path, capsys):
    out = tmp_path / "out"
    args = {"infer": ["infer", str(hop_320_model), str(speech_wav), "--out", str(out), "audio.hop_length=160"],
            "stream": ["stream", str(hop_320_model), str(speech_wav), "--no-realtime", "audio.hop_length=160"],
            "preview": ["preview", str(hop_320_model), str(speech_wav), "--out", str(out / "p.mp4"),
                        "audio.hop_length=160"],
            "infer-config-file": ["infer", str(hop_320_model), str(speech_wav), "--out", str(out),
                                  "--config", str(tmp_path / "c.yaml")]}[command]
    # Set explicitly in a file, even to a2bs's default value: still the user's setting, still refused.
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"audio": {"hop_length": 160}}))
    assert main(args) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"a2bs {args[0]}: configuration error: audio.hop_length=160 contradicts the model (320)"
    assert not out.exists()  # not even a log folder


@pytest.mark.ray
def test_evaluate_refuses_a_contradicting_setting_and_other_shards(trained, tmp_path, capsys):
    shards, result, _ = trained
    assert main(["evaluate", result.model_path, str(shards), "--out", str(tmp_path / "r"),
                 "audio.n_mels=64"]) == EXIT_CONFIG
    assert "audio.n_mels=64 contradicts the model (80)" in capsys.readouterr().err
    other = tmp_path / "other_shards"
    other.mkdir()
    manifest = ShardsManifest.load(shards)
    dataclasses.replace(manifest, audio=AUDIO_320).write(other)
    assert main(["evaluate", result.model_path, str(other), "--out", str(tmp_path / "r")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "built with another audio front end than the model" in err and "hop_length 160 vs 320" in err
    assert not (tmp_path / "r").exists()


def test_a_model_file_without_a_card_is_refused(tmp_path, speech_wav, capsys):
    cfg = preset("tcn_full", channels=16, dilations=(1, 2))
    tensors = {k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}
    old = tmp_path / "old.safetensors"  # what a2bs 0.1 wrote
    old.write_bytes(st_save(tensors, metadata={"format": "a2bs-model/1", "schema_version": "1",
                                               "model_config": json.dumps(config_to_dict(cfg)),
                                               "meta": json.dumps({"epoch": 3})}))
    for args in (["infer", str(old), str(speech_wav), "--out", str(tmp_path / "o")], ["info", str(old)]):
        assert main(args) == EXIT_FAILED
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"a2bs {args[0]}: {old}: model file has no model card (written by a2bs < 0.2); retrain it with "
            "`a2bs train` to record its audio front end")


@pytest.mark.ray
def test_info_prints_the_card(trained, tmp_path, capsys):
    _, result, _ = trained
    assert main(["info", result.model_path]) == 0
    text = capsys.readouterr().out
    card = read_model_card(result.model_path)
    assert text.startswith(f"{result.model_path}: a2bs model (epoch {card.epoch}), written by a2bs {a2bs.__version__}")
    assert "audio front end: 16000 Hz, n_fft 512, window 400, hop 160 (100 frames/s), 80 mel bands 0-8000 Hz" in text
    assert "outputs: 59 channels" in text and "60 fps by default" in text
    for name, split in card.data.splits.items():
        assert f"    {name}: {len(split.speakers)} speakers, {split.clips} clips" in text
    assert "  val metrics: " in text and f" loss {card.metrics['val']['loss']:.4g} " in text
    assert main(["info", result.model_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(card.to_dict()))
    # The card travels with the file: a copy elsewhere says the same.
    shutil.copy(result.model_path, tmp_path / "copy.safetensors")
    assert read_model_card(tmp_path / "copy.safetensors") == card
