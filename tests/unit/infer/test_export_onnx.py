"""ONNX export: offline graphs of every model and the streaming step of the causal TCN, vs PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from a2bs.config import AudioConfig
from a2bs.errors import ManifestError
from a2bs.infer.export import (
    export_onnx_offline,
    export_onnx_step,
    initial_onnx_state,
    onnx_model_card,
    onnx_session,
    verify_onnx_offline,
    verify_onnx_step,
)
from a2bs.infer.streaming import StreamingError
from a2bs.manifests import ModelCard
from a2bs.models import build_model, model_config_from_dict, preset

ATOL = 1e-5



def _mel(b: int, t: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-80, 0, size=(b, t, 80)).astype(np.float32))


@pytest.mark.parametrize(
    "cfg",
    [
        preset("tcn_poc", channels=32),
        preset("tcn_full", channels=32),
        preset("tcn_attn", channels=32, attn_max_len=40),
        preset("tcn_attn", channels=32, attn_max_len=40, attn_causal=False, causal=False),
    ],
    ids=["tcn_poc", "tcn_full", "tcn_attn", "tcn_attn_noncausal"],
)
def test_offline_graph_matches_pytorch(tmp_path, cfg) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = export_onnx_offline(model, tmp_path / "model.onnx")
    # Batch and length differ from the export example: both axes are dynamic.
    assert verify_onnx_offline(path, model, _mel(2, 173)) < ATOL
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["a2bs_graph"] == "offline"
    assert model_config_from_dict(json.loads(meta["a2bs_model_config"])) == cfg


def test_full_preset_offline_graph(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tcn_full")).eval()
    path = export_onnx_offline(model, tmp_path / "full.onnx")
    assert verify_onnx_offline(path, model, _mel(1, 300, seed=1)) < ATOL


@pytest.fixture(scope="module")
def full_step(tmp_path_factory) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = build_model(preset("tcn_full")).eval()
    path = export_onnx_step(model, tmp_path_factory.mktemp("onnx") / "step.onnx")
    return model, path


@pytest.mark.parametrize("chunk", [1, 7, 160])
def test_step_graph_streams_like_offline(full_step, chunk: int) -> None:
    model, path = full_step
    assert verify_onnx_step(path, model, _mel(1, 170, seed=2), chunk) < ATOL


def test_step_graph_interface(full_step) -> None:
    model, path = full_step
    session = onnx_session(path)
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    n_state = 2 * len(model.cfg.dilations)
    assert names_in == ["mel"] + [f"state_{i}" for i in range(n_state)]
    assert names_out == ["out"] + [f"new_state_{i}" for i in range(n_state)]
    state = initial_onnx_state(model, batch=2)
    assert [s.shape for s in state[:2]] == [(2, 256, 2), (2, 256, 2)]  # (B, C, (k-1)*d) for d = 1
    outs = session.run(None, {"mel": _mel(2, 3).numpy(), **{f"state_{i}": s for i, s in enumerate(state)}})
    assert outs[0].shape == (2, 3, 59)
    assert all(new.shape == old.shape for new, old in zip(outs[1:], state))


def test_step_export_refuses_unsupported_models(tmp_path) -> None:
    with pytest.raises(StreamingError, match="causal"):
        export_onnx_step(build_model(preset("tcn_poc", channels=16)), tmp_path / "x.onnx")
    with pytest.raises(StreamingError, match="tcn_attn"):
        export_onnx_step(build_model(preset("tcn_attn", channels=16)), tmp_path / "y.onnx")
    assert not list(tmp_path.iterdir())


def test_exported_files_carry_the_model_card(tmp_path) -> None:
    """The ONNX graph takes mel frames: its consumers read the front end they must compute from the card."""
    cfg = preset("tcn_full", channels=16, dilations=(1, 2))
    model = build_model(cfg).eval()
    card = ModelCard.for_untrained(cfg, AudioConfig(hop_length=320, win_length=640, n_fft=1024))
    offline = export_onnx_offline(model, tmp_path / "offline.onnx", card=card)
    step = export_onnx_step(model, tmp_path / "step.onnx", card=card)
    assert onnx_model_card(offline) == onnx_model_card(step) == card
    with pytest.raises(ManifestError, match="bare.onnx: carries no a2bs model card"):
        onnx_model_card(export_onnx_offline(model, tmp_path / "bare.onnx"))
