"""Checkpoint round trip: save -> load gives back the same weights, optimizer, scheduler and records."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from a2bs.config import ModelConfig
from a2bs.manifests import ModelCard
from a2bs.models.registry import build_model
from a2bs.train.checkpoint import (
    CHECKPOINT_FILES,
    checkpoint_dir_name,
    copy_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    state_digest,
)

MODEL_CFG = ModelConfig(n_mels=8, channels=16, dilations=(1, 2), dropout=0.1)


def _trained(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer, object, object]:
    """A small model after a few AdamW + OneCycleLR steps (so every state has tensors and counters)."""
    torch.manual_seed(0)
    model = build_model(MODEL_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(steps):
        loss = model(torch.randn(2, 12, MODEL_CFG.n_mels)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler, scaler


@pytest.fixture
def saved(tmp_path: Path) -> dict:
    model, optimizer, scheduler, scaler = _trained()
    folder = tmp_path / checkpoint_dir_name(4)
    metrics = {"val_loss": 0.25, "val_mae": 0.05, "per_channel_mae": {"jawOpen": 0.1}}
    history = [{"epoch": 3, "val_loss": 0.3}, {"epoch": 4, "val_loss": 0.25}]
    config = {"train": {"lr": 1e-3}, "model": {"channels": 16}}
    digests = save_checkpoint(folder, model, ModelCard.for_untrained(MODEL_CFG), optimizer, scheduler, scaler, 4, metrics, history, config, 2)
    return {"folder": folder, "model": model, "optimizer": optimizer, "scheduler": scheduler, "digests": digests,
            "metrics": metrics, "history": history, "config": config}


def test_save_then_load_gives_back_the_same_state(saved) -> None:
    assert saved["folder"].name == "epoch_0004"
    assert sorted(p.name for p in saved["folder"].iterdir()) == sorted(CHECKPOINT_FILES)
    state = load_checkpoint(saved["folder"])
    assert (state.epoch, state.starts, state.model_cfg) == (4, 2, MODEL_CFG)
    assert (state.metrics, state.history, state.config) == (saved["metrics"], saved["history"], saved["config"])
    assert state_digest(state.model_state) == state_digest(saved["model"].state_dict()) == saved["digests"]["model_digest"]
    assert state_digest(state.optimizer) == state_digest(saved["optimizer"].state_dict())
    assert state_digest(state.optimizer) == saved["digests"]["optimizer_digest"]
    assert state.scheduler == saved["scheduler"].state_dict()
    meta = read_meta(str(saved["folder"]))
    assert meta["epoch"] == 4 and meta["optimizer_digest"] == saved["digests"]["optimizer_digest"]


def test_a_restored_optimizer_and_model_continue_identically(saved) -> None:
    state = load_checkpoint(saved["folder"])
    model = build_model(state.model_cfg)
    model.load_state_dict(state.model_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(state.optimizer)
    assert state_digest(optimizer.state_dict()) == saved["digests"]["optimizer_digest"]
    batch = torch.randn(2, 12, MODEL_CFG.n_mels)
    for m, opt in ((saved["model"], saved["optimizer"]), (model, optimizer)):
        m.eval()  # no dropout: both take the same step
        opt.zero_grad()
        m(batch).pow(2).mean().backward()
        opt.step()
    assert state_digest(model.state_dict()) == state_digest(saved["model"].state_dict())
    assert state_digest(optimizer.state_dict()) == state_digest(saved["optimizer"].state_dict())


def test_state_digest_tells_states_apart() -> None:
    a = {"w": torch.arange(4.0), "step": 3, "nested": [torch.ones(2), {"k": "v"}]}
    same = {"nested": [torch.ones(2), {"k": "v"}], "step": 3, "w": torch.arange(4.0)}  # other key order
    assert state_digest(a) == state_digest(same)
    assert state_digest(a) != state_digest({**a, "step": 4})
    assert state_digest(a) != state_digest({**a, "w": torch.arange(4.0).double()})  # same values, other dtype
    assert state_digest(a) != state_digest({**a, "w": torch.arange(4.0).reshape(2, 2)})  # other shape
    w = torch.arange(4.0)
    w[1] = torch.nextafter(w[1], torch.tensor(2.0))  # one bit
    assert state_digest(a) != state_digest({**a, "w": w})


def test_copy_checkpoint_and_the_state_file_holds_no_pickled_objects(saved, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    copy_checkpoint(saved["folder"], str(dest))
    assert sorted(p.name for p in dest.iterdir()) == sorted(CHECKPOINT_FILES)  # no temp files left
    assert state_digest(load_checkpoint(dest).optimizer) == saved["digests"]["optimizer_digest"]
    json.loads((dest / "state.json").read_text())
    torch.save({"evil": object()}, dest / "train_state.pt")  # an arbitrary object needs pickle
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(dest)
