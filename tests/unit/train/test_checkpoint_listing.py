"""train.checkpoint.list_checkpoints: the one listing of a run's checkpoint folders."""

from __future__ import annotations

from pathlib import Path

import torch

from a2bs.config import ModelConfig
from a2bs.manifests import ModelCard
from a2bs.models.model_file import MODEL_FILE_NAME
from a2bs.models.registry import build_model
from a2bs.train.checkpoint import (
    META_FILE,
    checkpoint_dir_name,
    copy_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _save(tmp: Path, epoch: int) -> Path:
    cfg = ModelConfig(channels=8, dilations=(1,))
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    folder = tmp / f"local-{epoch}"
    save_checkpoint(folder, model, ModelCard.for_untrained(cfg), opt, sched, scaler, epoch, {"val_loss": 1.0 / (epoch + 1)}, [], {}, 0)
    return folder


def test_lists_complete_folders_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for epoch in (1, 0, 10):  # saved out of order
        copy_checkpoint(_save(tmp_path, epoch), str(root / checkpoint_dir_name(epoch)))
    half = root / checkpoint_dir_name(11)  # a copy cut short: the model is there, state.json is not
    half.mkdir()
    (half / MODEL_FILE_NAME).write_bytes((root / checkpoint_dir_name(0) / MODEL_FILE_NAME).read_bytes())
    (root / "notes").mkdir()
    (root / "notes" / f"old_{META_FILE}").write_text("{}")  # ends like state.json, is not one
    saved = list_checkpoints(str(root))
    assert [Path(d).name for d in saved] == ["epoch_0000", "epoch_0001", "epoch_0010"]
    assert load_checkpoint(saved[-1]).epoch == 10


def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    assert list_checkpoints(str(tmp_path / "nope")) == []
