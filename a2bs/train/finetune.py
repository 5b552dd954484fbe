"""`a2bs finetune`: a trained model + a new actor's footage -> the same model with one more identity.

The new face gets its own identity rows (a2bs.models.identity: a FiLM per block and an output bias),
started at the learned average. ``finetune.train`` says what else learns: ``identity`` nothing (the
default), ``head`` the output head too (``--head``), ``all`` the head and the backbone too, the
backbone at its own smaller step ``finetune.backbone_lr`` (it starts from weights fitted to other
voices; the new voice itself is what a frozen backbone cannot fit). Adam without weight decay and a
gradient mask on the identity tables leave every other row exactly as it was, so with ``identity``
the model's other faces (and its average) give bit-identical outputs; with ``head`` or ``all`` they
change too, and the card then drops the base model's scores.

It runs in this process (no Ray Train): the trainable part is one table row (a few thousand
numbers), a few minutes of footage is a few hundred windows, and a CPU fits it in minutes (with
``train.torch_threads`` honoured as by `a2bs train`: with two threads on a busy 2-core machine 20
epochs of 2 minutes of footage took 545 s, with one 28 s; benchmarks/README.md, "Adaptation").
With a frozen backbone the layers before the first FiLM need no autograd graph and get none (their
weights and input do not require gradients); every block after it is conditioned, so the backward
pass has to go through all of them anyway, and ``all`` costs little more per epoch.

The epoch kept is the one with the lowest loss on held-out windows of the same actor
(``finetune.val_fraction`` of a clips folder's clips, or a shards folder's val split), never on
footage scored afterwards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from a2bs.build.pipeline import run_build
from a2bs.config import (
    FINETUNE_MODES,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
)
from a2bs.errors import ManifestError
from a2bs.manifests import FineTuning, MelNorm, ShardsManifest
from a2bs.models.identity import train_only_identity, with_added_identity
from a2bs.models.model_file import MODEL_FILE_NAME, load_model_file, save_model
from a2bs.runtime import storage
from a2bs.train.augment import make_augmenter
from a2bs.train.data import LocalBatches
from a2bs.train.loop import final_stage_epoch, resolve_device
from a2bs.train.losses import compute_loss
from a2bs.train.trainer import torch_threads

FINETUNE_RECORD = "finetune.json"  # RUN/finetune.json: what was fine-tuned on what, and the loss per epoch
SHARDS_SUBDIR = "shards"  # RUN/shards: the windows of a clips folder given to finetune


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run did."""

    model_path: str
    identity: str
    identities: tuple[str, ...]
    windows: int
    epochs: int
    losses: tuple[float, ...]  # mean train loss of each epoch
    wall_s: float
    val_windows: int = 0  # held-out windows that chose the epoch (0: the last epoch kept)
    val_losses: tuple[float, ...] = ()  # mean loss on them after each epoch
    best_epoch: int = 0  # 1-based epoch kept
    train: str = "identity"  # finetune.train: what learned

    def line(self) -> str:
        kept = (f"epoch {self.best_epoch} kept (val loss {self.val_losses[self.best_epoch - 1]:.4f} on "
                f"{self.val_windows} held-out windows)" if self.val_losses else "last epoch kept (no val windows)")
        return (f"finetune: identity {self.identity!r} ({self.train}) learned from {self.windows} windows in "
                f"{self.epochs} epochs (loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}), {kept}, "
                f"{self.wall_s:.1f} s; model identities {', '.join(self.identities)} -> {self.model_path}")


def finetune_shards(data_dir: str, out_dir: str, cfg: Config, progress: bool = False,
                    mel_norm: MelNorm | None = None) -> str:
    """The shards folder of `data_dir`: itself when it holds shards, else its clips built into OUT/shards.

    A clips folder is built with the model's windowing and log-mel normalisation (`mel_norm`, the
    card's), split by clip: ``finetune.val_fraction`` of the clips in the val split (they choose the
    epoch), the rest in train (fine-tuning scores nothing; evaluate the result on other footage).
    """
    try:
        ShardsManifest.load(data_dir)
        return data_dir
    except ManifestError:
        pass
    seq = replace(cfg.sequence, split_by="clip", val_fraction=cfg.finetune.val_fraction, test_fraction=0.0,
                  known_clip_fraction=0.0, test_speakers=(), identity_from="")
    shards_dir = storage.join(out_dir, SHARDS_SUBDIR)
    run_build(data_dir, shards_dir, replace(cfg, sequence=seq), use_ray=False, progress=progress, mel_norm=mel_norm)
    return shards_dir


def split_windows(manifest: ShardsManifest, shards_dir: str) -> tuple[list[str], list[str]]:
    """(files to learn from, files choosing the epoch) of a shards folder: its val split chooses, every other trains."""
    val = manifest.files(shards_dir, "val")
    learn = [f for split in sorted(manifest.splits) if split != "val" for f in manifest.files(shards_dir, split)]
    return learn, val


def finetune(model_path: str, data_dir: str, identity: str, out_dir: str, cfg: Config,
             progress: bool = False) -> FinetuneResult:
    """Fine-tune the model at `model_path` on the windows of `data_dir` (shards or clips) as the new
    identity `identity`; write OUT/model.safetensors (one more identity) and OUT/finetune.json.

    `cfg` supplies ``finetune`` (train, epochs, lr, backbone_lr, batch size, val_fraction, seed),
    ``loss``, ``augment`` and ``train.torch_threads`` / ``train.device``; the windowing of a clips
    folder is the base model's.
    The epoch with the lowest loss on the held-out windows (see :func:`split_windows`) is kept, the
    last one when there are none. ``finetune.train`` ``head`` / ``all`` also train the output head /
    the head and the backbone (the other faces then change).

    Raises:
        ConfigError: a bad ``finetune`` value, `identity` is empty or already one of the model's, the
            data's front end is not the model's, or the data has no windows to learn from.
        ModelFileError: `model_path` is not a model file.
    """
    with torch_threads(cfg.train.torch_threads):
        return _finetune(model_path, data_dir, identity, out_dir, cfg, progress)


def _finetune(model_path: str, data_dir: str, identity: str, out_dir: str, cfg: Config,
              progress: bool) -> FinetuneResult:
    t0 = time.perf_counter()
    fc = cfg.finetune
    if fc.train not in FINETUNE_MODES:
        raise ConfigError(f"finetune.train must be one of {', '.join(map(repr, FINETUNE_MODES))}, not {fc.train!r}")
    if (fc.epochs < 1 or fc.lr <= 0 or fc.backbone_lr <= 0 or fc.batch_size < 1
            or not 0 <= fc.val_fraction < 1):
        raise ConfigError("finetune: need finetune.epochs >= 1, finetune.lr > 0, finetune.backbone_lr > 0, "
                          "finetune.batch_size >= 1 and 0 <= finetune.val_fraction < 1")
    base, card = load_model_file(model_path)
    if not identity.strip():
        raise ConfigError("finetune: --identity must name the new face")
    if identity in card.identities:
        raise ConfigError(f"finetune: the model already has identity {identity!r} "
                          f"(identities: {', '.join(card.identities)}); choose a new name")
    # Only the base's windowing is needed: read that section alone, so a card written by another a2bs
    # version (whose other sections may hold keys this one does not know) still fine-tunes.
    sequence = (config_from_dict({"sequence": card.training_config["sequence"]}).sequence
                if "sequence" in card.training_config else cfg.sequence)
    shards_dir = finetune_shards(data_dir, out_dir, replace(cfg, sequence=sequence), progress, card.mel_norm)
    manifest = ShardsManifest.load(shards_dir)
    if manifest.audio != card.audio:
        raise ConfigError(f"finetune: {data_dir} was extracted with another audio front end than the model's "
                          "(extract it again with the model's audio settings)")
    if manifest.mel_norm != card.mel_norm:
        raise ConfigError(f"finetune: the shards {data_dir} were built with another log-mel normalisation "
                          "than the model's (give its clips folder instead)")
    files, val_files = split_windows(manifest, shards_dir)
    windows = sum(rows for split, rows in manifest.rows.items() if split != "val")
    val_windows = manifest.rows.get("val", 0) if val_files else 0
    if not files or not windows:
        raise ConfigError(f"finetune: {data_dir} holds no windows to learn from")

    torch.manual_seed(fc.seed)
    device = resolve_device(cfg.train)
    model = with_added_identity(base, identity).to(device).train()
    row = len(card.identities)  # the new identity's row (the average moved to the row after it)
    groups = trainable_groups(model, row, fc.train, fc.lr, fc.backbone_lr)
    # No weight decay: it would shrink the frozen rows of the identity tables as well.
    optimizer = torch.optim.Adam(groups, weight_decay=0.0)
    source = LocalBatches(files, manifest.n_mels, fc.batch_size, shuffle_rows=max(cfg.train.shuffle_buffer_rows, 1),
                          seed=fc.seed, augmenter=make_augmenter(cfg.augment, manifest.audio, fc.seed))
    held_out = LocalBatches(val_files, manifest.n_mels, cfg.train.val_batch_size)  # as stored, never augmented
    loss_epoch = final_stage_epoch(cfg)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.full((batch["audio"].shape[0],), row, dtype=torch.long, device=device)
        pred = model(batch["audio"], identity=ids)
        return compute_loss(pred.float(), batch["targets"], cfg.loss, loss_epoch, batch["mask"], batch["vad"])["total"]

    trained = [p for group in groups for p in group["params"]]
    losses: list[float] = []
    val_losses: list[float] = []
    best: list[torch.Tensor] = []
    for epoch in range(fc.epochs):
        model.train()
        total, batches = 0.0, 0
        for batch in source.torch_batches(epoch, device):
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
        if val_files:
            val_losses.append(_held_out_loss(model, held_out, device, batch_loss))
            if val_losses[-1] <= min(val_losses):
                best = [p.detach().clone() for p in trained]
    if best:  # back to the chosen epoch's weights: only these changed
        with torch.no_grad():
            for p, kept in zip(trained, best):
                p.copy_(kept)
    best_epoch = 1 + min(range(len(val_losses)), key=val_losses.__getitem__) if val_losses else fc.epochs

    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    names = tuple(model.cfg.identities)
    # The base's scores still describe its faces only if nothing but the new rows changed; the
    # training config records how the faces were fine-tuned (``a2bs info --json`` shows it).
    frozen = fc.train == "identity"
    training = {**card.training_config, "finetune": config_to_dict(cfg)["finetune"]} if card.training_config else {}
    new_card = replace(card, model=model.cfg, identities=names, metrics=card.metrics if frozen else {},
                       training_config=training,
                       finetuned=(*card.finetuned, FineTuning(identity, fc.train, best_epoch, fc.epochs, windows)))
    model_out = storage.join(out_dir, MODEL_FILE_NAME)
    storage.makedirs(out_dir)
    save_model(model_out, model, new_card)
    result = FinetuneResult(model_out, identity, names, windows, fc.epochs, tuple(losses), time.perf_counter() - t0,
                            val_windows, tuple(val_losses), best_epoch, fc.train)
    record: dict[str, Any] = {"base_model": model_path, "data": data_dir, "shards": shards_dir, "identity": identity,
                              "train": fc.train, "windows": windows, "val_windows": val_windows, "epochs": fc.epochs,
                              "lr": fc.lr, "backbone_lr": fc.backbone_lr, "seed": fc.seed, "losses": losses,
                              "val_losses": val_losses, "best_epoch": best_epoch, "identities": list(names),
                              "wall_s": result.wall_s}
    storage.atomic_write_text(storage.join(out_dir, FINETUNE_RECORD), json.dumps(record, indent=1))
    return result


def trainable_groups(model: torch.nn.Module, row: int, mode: str, lr: float,
                     backbone_lr: float) -> list[dict[str, Any]]:
    """Adam parameter groups of fine-tuning mode `mode` (FINETUNE_MODES); everything else is frozen.

    Identity row `row` (and in ``head`` / ``all`` the output head) learns at `lr`; in ``all`` the
    backbone (every other parameter but the identity tables) learns at `backbone_lr`.
    """
    groups: list[dict[str, Any]] = [{"params": train_only_identity(model, row), "lr": lr}]
    if mode in ("head", "all"):
        groups.append({"params": list(model.head.parameters()), "lr": lr})
    if mode == "all":
        learnt = {id(p) for group in groups for p in group["params"]}
        groups.append({"params": [p for p in model.parameters() if id(p) not in learnt], "lr": backbone_lr})
    for group in groups[1:]:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def _held_out_loss(model: torch.nn.Module, held_out: LocalBatches, device: torch.device,
                   batch_loss: Any) -> float:
    """Mean loss per window of `model` (eval mode, no dropout) on the held-out windows."""
    model.eval()
    total, rows = 0.0, 0
    with torch.no_grad():
        for batch in held_out.torch_batches(0, device):
            n = batch["audio"].shape[0]
            total, rows = total + float(batch_loss(batch)) * n, rows + n
    return total / max(rows, 1)
