"""Training checkpoints: one folder per epoch, loadable without unpickling anything.

A checkpoint folder holds::

    model.safetensors   weights + model card (a2bs.models.model_file: rebuilds the model and its front end alone)
    train_state.pt      optimizer / LR scheduler / grad-scaler state dicts (tensors, numbers, strings),
                        read back with ``torch.load(weights_only=True)``
    state.json          epoch, that epoch's metrics, the run history so far, the resolved config,
                        how many times the loop has (re)started, digests of the saved states

Ray Train persists the folder (``ray.train.report``) and hands the latest one back to restarted
workers (``ray.train.get_checkpoint``); the exported best model is a copy of one ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from a2bs.config import ModelConfig
from a2bs.manifests import ModelCard
from a2bs.models.model_file import MODEL_FILE_NAME, load_model_file, save_model
from a2bs.runtime import storage

STATE_FILE = "train_state.pt"
META_FILE = "state.json"
CHECKPOINT_FILES = (MODEL_FILE_NAME, STATE_FILE, META_FILE)


def checkpoint_dir_name(epoch: int) -> str:
    """Folder name of an epoch's checkpoint (unique per run: an epoch is checkpointed once)."""
    return f"epoch_{epoch:04d}"


def list_checkpoints(root: str) -> list[str]:
    """The checkpoint folders directly under `root` (local or URI), oldest epoch first.

    A folder counts once its ``state.json`` exists: :func:`save_checkpoint` writes it last and
    :func:`copy_checkpoint` copies it last, so a half-copied folder is never listed.
    """
    metas = (PurePosixPath(f.replace("\\", "/")) for f in storage.list_files(root, suffix=META_FILE))
    return [storage.join(root, name) for name in sorted({m.parent.name for m in metas if m.name == META_FILE})]


def state_digest(obj: Any) -> str:
    """SHA-256 over a nested state dict (tensors by dtype, shape and bytes; other values by repr).

    Two states with equal digests are bit-identical, which is how tests prove that a resumed run
    loaded exactly the optimizer state that was saved.
    """
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                visit(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                visit(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    visit(obj)
    return h.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


@dataclass
class TrainState:
    """Everything a checkpoint restores."""

    epoch: int
    model_cfg: ModelConfig
    model_state: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    starts: int = 0


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    card: ModelCard,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    config: dict[str, Any],
    starts: int,
) -> dict[str, str]:
    """Write an epoch's checkpoint into a local `directory`; returns the digests of what was saved.

    `card` describes the weights (their config, this epoch and its metrics): the exported model is a copy.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    bare = unwrap(model)
    save_model(d / MODEL_FILE_NAME, bare, card)
    train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "epoch": epoch}
    torch.save(train_state, d / STATE_FILE)
    digests = {"optimizer_digest": state_digest(train_state["optimizer"]),
               "model_digest": state_digest(bare.state_dict())}
    meta = {"epoch": epoch, "metrics": metrics, "history": history, "config": config, "starts": starts, **digests}
    (d / META_FILE).write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    return digests


def load_checkpoint(directory: str | os.PathLike) -> TrainState:
    """Read a checkpoint folder written by :func:`save_checkpoint` (no pickle: safetensors,
    ``torch.load(weights_only=True)`` and JSON)."""
    d = Path(directory)
    model, card = load_model_file(d / MODEL_FILE_NAME)
    train_state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    return TrainState(
        epoch=int(meta["epoch"]),
        model_cfg=card.model,
        model_state=model.state_dict(),
        optimizer=train_state["optimizer"],
        scheduler=train_state["scheduler"],
        scaler=train_state["scaler"],
        metrics=meta.get("metrics", {}),
        history=meta.get("history", []),
        config=meta.get("config", {}),
        starts=int(meta.get("starts", 0)),
    )


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder (local path or URI)."""
    return json.loads(storage.read_text(storage.join(str(directory), META_FILE)))


def copy_checkpoint(src_dir: str | os.PathLike, dest_uri: str) -> None:
    """Copy a local checkpoint folder to `dest_uri` (local or s3://), each file atomically."""
    for name in CHECKPOINT_FILES:
        src = Path(src_dir, name)
        if storage.is_remote(dest_uri):
            storage.atomic_write_bytes(storage.join(dest_uri, name), src.read_bytes())
        else:
            Path(dest_uri).mkdir(parents=True, exist_ok=True)
            tmp = Path(dest_uri, f".{name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, Path(dest_uri, name))

