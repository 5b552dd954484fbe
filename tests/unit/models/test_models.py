"""Model family: sizes, receptive fields, causality, output ranges, model files, overfitting sanity."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from support import REPO

from a2bs.config import (
    AudioConfig,
    ConfigError,
    LossConfig,
    ModelConfig,
    config_to_dict,
    load_config,
)
from a2bs.errors import ModelFileError
from a2bs.extract.audio import features_from_samples
from a2bs.manifests import ModelCard
from a2bs.models import (
    available_models,
    build_model,
    count_parameters,
    load_model_file,
    model_config_from_dict,
    model_from_dict,
    preset,
    read_model_card,
    save_model,
)
from a2bs.models.registry import preset_overrides
from a2bs.models.tcn import receptive_field_frames
from a2bs.schema import BLENDSHAPE_INDEX, MEL_DB_RANGE, N_BLENDSHAPES, N_TARGETS
from a2bs.train.losses import compute_loss

# Exact sizes of the canonical presets, computed from the code (see the module docstrings).
EXPECTED_PARAMS = {"tcn_poc": 480_442, "tcn_full": 2_035_514, "tcn_attn": 2_421_818}
# (past, future) input frames per output frame; total receptive field = past + future + 1.
EXPECTED_RF = {"tcn_poc": (30, 30), "tcn_full": (2044, 0), "tcn_attn": (1275, 0)}



def _mel(rng: np.random.Generator, b: int, t: int, n_mels: int = 80) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(-80.0, 0.0, size=(b, t, n_mels)).astype(np.float32))


def test_registry_lists_the_family() -> None:
    assert available_models() == ["tcn_attn", "tcn_full", "tcn_poc"]
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelConfig(name="nope"))


def test_presets() -> None:
    assert preset("tcn_poc") == ModelConfig()  # the PoC is the ModelConfig default
    full = preset("tcn_full")
    assert (full.channels, full.kernel_size, full.causal, full.separable) == (256, 3, True, True)
    assert full.dilations == (1, 2, 4, 8, 16, 32, 64, 128, 128, 128)
    assert preset("tcn_full", channels=64).channels == 64
    # The override mapping reproduces the preset through the normal config path.
    assert model_config_from_dict(preset_overrides("tcn_full")) == full


@pytest.mark.parametrize("yaml_name, name", [("poc.yaml", "tcn_poc"), ("full.yaml", "tcn_full")])
def test_job_configs_match_the_presets(yaml_name: str, name: str) -> None:
    path = REPO / "jobs" / "configs" / yaml_name
    assert path.is_file(), f"{path} is a shipped preset"
    assert load_config(path).model == preset(name)


@pytest.mark.parametrize("name", ["tcn_poc", "tcn_full", "tcn_attn"])
def test_parameter_count_and_receptive_field(name: str) -> None:
    model = build_model(preset(name))
    assert count_parameters(model) == EXPECTED_PARAMS[name]
    assert model.receptive_field() == EXPECTED_RF[name]


def test_full_receptive_field_covers_ten_seconds() -> None:
    past, future = receptive_field_frames(preset("tcn_full"))
    assert future == 0 and past + 1 == 2045 >= 1024  # 20.45 s at 100 Hz


@pytest.mark.parametrize("name", ["tcn_poc", "tcn_full", "tcn_attn"])
def test_output_shape_and_ranges(name: str) -> None:
    model = build_model(preset(name, channels=32, attn_max_len=16)).eval()
    mel = _mel(np.random.default_rng(0), 2, 37)
    with torch.no_grad():
        out = model(mel * 3.0)  # louder than real audio: pushes the heads towards saturation
    assert out.shape == (2, 37, N_TARGETS)
    shapes, pose = out[..., :N_BLENDSHAPES], out[..., N_BLENDSHAPES:]
    assert shapes.min() >= 0.0 and shapes.max() <= 1.0
    bounded = pose[..., [0, 1, 2, 4, 5, 6]]
    assert bounded.abs().max() <= 0.2 + 1e-6
    quat_norm = pose[..., 3:].pow(2).sum(-1).sqrt()  # (qw, qx, qy, qz) is a unit quaternion
    torch.testing.assert_close(quat_norm, torch.ones_like(quat_norm), atol=1e-6, rtol=0)
    assert (pose[..., 3] > 0).all()


def _input_support(model: torch.nn.Module, n_frames: int, t: int) -> tuple[int, int]:
    """First and last input frame with a non-zero gradient of output frame t (float64: no underflow)."""
    model = model.double().eval()
    mel = _mel(np.random.default_rng(5), 1, n_frames).double().requires_grad_(True)
    model(mel)[0, t].sum().backward()
    nonzero = np.flatnonzero(mel.grad[0].abs().sum(-1).numpy() > 0)
    return int(nonzero[0]), int(nonzero[-1])


@pytest.mark.parametrize("name", ["tcn_poc", "tcn_full"])
def test_receptive_field_is_exact(name: str) -> None:
    past, future = EXPECTED_RF[name]
    model = build_model(preset(name))
    t = 2060 if name == "tcn_full" else 100
    assert _input_support(model, t + 80, t) == (t - past, t + future)


def test_full_tcn_is_causal() -> None:
    model = build_model(preset("tcn_full")).eval()
    mel = _mel(np.random.default_rng(1), 1, 400)
    changed = mel.clone()
    changed[:, 300:] = -20.0  # change only frames >= 300
    with torch.no_grad():
        ref, out = model(mel), model(changed)
    assert torch.equal(out[:, :300], ref[:, :300])  # no earlier output moves
    assert (out[:, 300] - ref[:, 300]).abs().max() > 1e-4


def test_attention_model_is_causal() -> None:
    model = build_model(preset("tcn_attn", channels=32, attn_max_len=20)).eval()
    mel = _mel(np.random.default_rng(2), 1, 120)
    changed = mel.clone()
    changed[:, 80:] = -10.0
    with torch.no_grad():
        a, b = model(mel), model(changed)
    torch.testing.assert_close(a[:, :80], b[:, :80], atol=1e-6, rtol=0)
    assert (a[:, 80] - b[:, 80]).abs().max() > 1e-5


def test_poc_sees_the_future_within_its_receptive_field() -> None:
    model = build_model(preset("tcn_poc")).eval()
    mel = _mel(np.random.default_rng(3), 1, 300)
    changed = mel.clone()
    changed[:, 200] = -10.0
    with torch.no_grad():
        a, b = model(mel), model(changed)
    assert torch.equal(a[:, :170], b[:, :170])  # 30 future frames: output 169 cannot see frame 200
    assert (a[:, 170] - b[:, 170]).abs().max() > 1e-6  # ... but output 170 does (non-causal)
    assert torch.equal(a[:, 231:], b[:, 231:])  # 30 past frames


def test_model_from_dict_round_trip() -> None:
    cfg = preset("tcn_attn", channels=32)
    stored = config_to_dict(cfg)
    assert model_config_from_dict(stored) == cfg
    model = model_from_dict(stored)
    assert count_parameters(model) == count_parameters(build_model(cfg))
    with pytest.raises(ConfigError):
        model_config_from_dict({**stored, "bogus": 1})


def test_save_and_load_model_file(tmp_path) -> None:
    cfg = preset("tcn_full", channels=32, dilations=(1, 2, 4))
    model = build_model(cfg).eval()
    path = tmp_path / "model.safetensors"
    card = dataclasses.replace(ModelCard.for_untrained(cfg), epoch=3, metrics={"val": {"loss": 0.25}})
    save_model(path, model, card)
    loaded, loaded_card = load_model_file(path)
    assert loaded_card == card and loaded_card.model == cfg
    assert not loaded.training
    mel = _mel(np.random.default_rng(4), 1, 50)
    with torch.no_grad():
        assert torch.equal(model(mel), loaded(mel))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file
    # A file of the wrong kind is refused with a clear error, never unpickled.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError):
        load_model_file(bad)
    torch.save(model.state_dict(), tmp_path / "pickled.pt")
    with pytest.raises(ModelFileError):
        load_model_file(tmp_path / "pickled.pt")


def test_model_file_without_a_card_is_refused(tmp_path) -> None:
    """a2bs < 0.2 wrote weights + model config only: nothing says which audio front end the model expects."""
    cfg = preset("tcn_poc", channels=16)
    tensors = {k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}
    old = tmp_path / "old.safetensors"
    old.write_bytes(st_save(tensors, metadata={"format": "a2bs-model/1", "schema_version": "1",
                                               "model_config": json.dumps(config_to_dict(cfg)), "meta": "{}"}))
    for read in (load_model_file, read_model_card):
        with pytest.raises(ModelFileError, match=r"old.safetensors: model file has no model card \(written by a2bs < 0.2\)"):
            read(old)


def test_card_is_read_from_the_header_alone(tmp_path) -> None:
    cfg = preset("tcn_full", channels=16, dilations=(1, 2))
    card = ModelCard.for_untrained(cfg, AudioConfig(hop_length=320))
    save_model(tmp_path / "m.safetensors", build_model(cfg), card)
    assert read_model_card(tmp_path / "m.safetensors") == card
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:200])  # header cut short
    with pytest.raises(ModelFileError, match="cut.safetensors: not a safetensors model file"):
        read_model_card(tmp_path / "cut.safetensors")


def test_weights_not_matching_config_are_refused(tmp_path) -> None:
    cfg = preset("tcn_poc", channels=16)
    model = build_model(dataclasses.replace(cfg, channels=24))
    save_model(tmp_path / "m.safetensors", model, ModelCard.for_untrained(cfg))  # the card lies about the width
    with pytest.raises(ModelFileError, match="do not match"):
        load_model_file(tmp_path / "m.safetensors")


# ---- overfitting sanity on a synthetic but structured batch --------------------------------------------

def synthetic_batch(n_clips: int = 4, seconds: float = 2.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tones, noise bursts and pauses -> real log-mel/VAD features, with targets that are a function of them.

    Targets: jawOpen follows loudness, eight mouth channels follow mel band groups, smiles follow
    the spectral tilt, pose follows band energies (qw derived). Replace with demo-corpus features later.
    """
    rng = np.random.default_rng(seed)
    cfg = AudioConfig()
    sr = cfg.sample_rate
    mels, targets, vads = [], [], []
    for _ in range(n_clips):
        audio = np.zeros(int(seconds * sr), dtype=np.float32)
        start = 0
        while start < len(audio):
            seg = int(rng.uniform(0.08, 0.3) * sr)
            k = np.arange(min(seg, len(audio) - start))
            kind = rng.integers(3)
            amp = rng.uniform(0.05, 0.5)
            if kind == 1:
                audio[start : start + len(k)] = amp * np.sin(2 * np.pi * rng.uniform(150, 2500) * k / sr)
            elif kind == 2:
                audio[start : start + len(k)] = amp * rng.standard_normal(len(k))
            start += seg
        feats = features_from_samples(audio, cfg)
        lo, hi = MEL_DB_RANGE
        x = (np.clip(feats.mel_db, lo, hi) - lo) / (hi - lo)  # (T, 80) in [0, 1]
        bands = x.reshape(len(x), 8, 10).mean(-1)  # (T, 8)
        y = np.zeros((len(x), N_TARGETS), dtype=np.float32)
        y[:, BLENDSHAPE_INDEX["jawOpen"]] = x.mean(1) ** 1.5
        mouth = ["mouthFunnel", "mouthPucker", "mouthRollLower", "mouthRollUpper",
                 "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight"]
        for i, name in enumerate(mouth):
            y[:, BLENDSHAPE_INDEX[name]] = bands[:, i]
        tilt = np.clip(bands[:, 5:].mean(1) - bands[:, :3].mean(1) + 0.5, 0, 1)
        y[:, BLENDSHAPE_INDEX["mouthSmileLeft"]] = tilt
        y[:, BLENDSHAPE_INDEX["mouthSmileRight"]] = tilt * 0.8
        q = 0.1 * (bands[:, [1, 3, 6]] - 0.5)  # (T, 3) qx qy qz
        y[:, N_BLENDSHAPES : N_BLENDSHAPES + 3] = 0.05 * (bands[:, [0, 2, 4]] - 0.5)
        y[:, N_BLENDSHAPES + 3] = np.sqrt(1 - (q**2).sum(1))
        y[:, N_BLENDSHAPES + 4 :] = q
        mels.append(feats.mel_db)
        targets.append(y)
        vads.append(feats.vad)
    mask = np.ones((n_clips, len(mels[0])), dtype=np.float32)
    mask[0, 50:60] = 0.0  # a stretch without a face
    return {
        "mel": torch.from_numpy(np.stack(mels)),
        "target": torch.from_numpy(np.stack(targets)),
        "vad": torch.from_numpy(np.stack(vads)),
        "mask": torch.from_numpy(mask),
    }


@pytest.fixture(scope="module")
def small_batch() -> dict[str, torch.Tensor]:
    return synthetic_batch()


@pytest.mark.parametrize(
    "cfg",
    [
        preset("tcn_poc", channels=32, dilations=(1, 2, 4), dropout=0.0),
        preset("tcn_full", channels=32, dilations=(1, 2, 4, 8), dropout=0.0),
        preset("tcn_attn", channels=32, dilations=(1, 2, 4), dropout=0.0, attn_heads=2, attn_layers=1, attn_max_len=64),
    ],
    ids=lambda c: c.name,
)
def test_overfits_a_small_batch(cfg: ModelConfig, small_batch: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_cfg = LossConfig()
    losses = []
    for _ in range(120):
        terms = compute_loss(model(small_batch["mel"]), small_batch["target"], loss_cfg, epoch=10,
                             mask=small_batch["mask"], vad=small_batch["vad"])
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        losses.append(terms["total"].item())
    assert np.isfinite(losses).all()
    # Observed: about 0.42 -> 0.008 (ratio ~0.02) for each model.
    assert np.mean(losses[-10:]) < 0.1 * losses[0], (losses[0], losses[-10:])
