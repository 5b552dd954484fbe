"""`a2bs finetune`: a trained model + a new actor's footage -> the same model with one more identity.

The new face gets its own identity rows (a2bs.models.identity: a FiLM per block and an output bias),
started at the learned average and trained with everything else frozen (optionally the output head
too, ``--head``). Adam without weight decay and a gradient mask on the identity tables leave every
other row exactly as it was, so the model's other faces (and its average) give bit-identical outputs;
with ``--head`` they change too, and the card then drops the base model's scores.

It runs in this process (no Ray Train): the trainable part is one table row (a few thousand
numbers), a few minutes of footage is a few hundred windows, and a CPU fits it in minutes (with
``train.torch_threads`` honoured as by `a2bs train`: with two threads on a busy 2-core machine 20
epochs of 2 minutes of footage took 545 s, with one 28 s; benchmarks/README.md, "Adaptation").
The frozen layers before the first FiLM need no autograd graph and get none (their weights and
input do not require gradients); every block after it is conditioned, so the backward pass has to
go through all of them.

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
from a2bs.config import Config, ConfigError, config_from_dict
from a2bs.errors import ManifestError
from a2bs.manifests import MelNorm, ShardsManifest
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

    def line(self) -> str:
        kept = (f"epoch {self.best_epoch} kept (val loss {self.val_losses[self.best_epoch - 1]:.4f} on "
                f"{self.val_windows} held-out windows)" if self.val_losses else "last epoch kept (no val windows)")
        return (f"finetune: identity {self.identity!r} learned from {self.windows} windows in {self.epochs} epochs "
                f"(loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}), {kept}, {self.wall_s:.1f} s; model "
                f"identities {', '.join(self.identities)} -> {self.model_path}")


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


def finetune(model_path: str, data_dir: str, identity: str, out_dir: str, cfg: Config, head: bool = False,
             progress: bool = False) -> FinetuneResult:
    """Fine-tune the model at `model_path` on the windows of `data_dir` (shards or clips) as the new
    identity `identity`; write OUT/model.safetensors (one more identity) and OUT/finetune.json.

    `cfg` supplies ``finetune`` (epochs, lr, batch size, val_fraction, seed), ``loss``, ``augment`` and
    ``train.torch_threads`` / ``train.device``; the windowing of a clips folder is the base model's.
    The epoch with the lowest loss on the held-out windows (see :func:`split_windows`) is kept, the
    last one when there are none. `head` also trains the output head (the other faces then change).

    Raises:
        ConfigError: `identity` is empty or already one of the model's, the data's front end is not
            the model's, or the data has no windows to learn from.
        ModelFileError: `model_path` is not a model file.
    """
    with torch_threads(cfg.train.torch_threads):
        return _finetune(model_path, data_dir, identity, out_dir, cfg, head, progress)


def _finetune(model_path: str, data_dir: str, identity: str, out_dir: str, cfg: Config, head: bool,
              progress: bool) -> FinetuneResult:
    t0 = time.perf_counter()
    fc = cfg.finetune
    if fc.epochs < 1 or fc.lr <= 0 or fc.batch_size < 1 or not 0 <= fc.val_fraction < 1:
        raise ConfigError("finetune: need finetune.epochs >= 1, finetune.lr > 0, finetune.batch_size >= 1 and "
                          "0 <= finetune.val_fraction < 1")
    base, card = load_model_file(model_path)
    if not identity.strip():
        raise ConfigError("finetune: --identity must name the new face")
    if identity in card.identities:
        raise ConfigError(f"finetune: the model already has identity {identity!r} "
                          f"(identities: {', '.join(card.identities)}); choose a new name")
    run_cfg = config_from_dict(card.training_config) if card.training_config else cfg
    shards_dir = finetune_shards(data_dir, out_dir, replace(cfg, sequence=run_cfg.sequence), progress,
                                 card.mel_norm)
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
    params = train_only_identity(model, row)
    if head:
        for p in model.head.parameters():
            p.requires_grad_(True)
        params += list(model.head.parameters())
    # No weight decay: it would shrink the frozen rows of the identity tables as well.
    optimizer = torch.optim.Adam(params, lr=fc.lr, weight_decay=0.0)
    source = LocalBatches(files, manifest.n_mels, fc.batch_size, shuffle_rows=max(cfg.train.shuffle_buffer_rows, 1),
                          seed=fc.seed, augmenter=make_augmenter(cfg.augment, manifest.audio, fc.seed))
    held_out = LocalBatches(val_files, manifest.n_mels, cfg.train.val_batch_size)  # as stored, never augmented
    loss_epoch = final_stage_epoch(cfg)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.full((batch["audio"].shape[0],), row, dtype=torch.long, device=device)
        pred = model(batch["audio"], identity=ids)
        return compute_loss(pred.float(), batch["targets"], cfg.loss, loss_epoch, batch["mask"], batch["vad"])["total"]

    trained = list(model.identity.parameters()) + (list(model.head.parameters()) if head else [])
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
    if best:  # back to the chosen epoch's rows (and head): only these changed
        with torch.no_grad():
            for p, kept in zip(trained, best):
                p.copy_(kept)
    best_epoch = 1 + min(range(len(val_losses)), key=val_losses.__getitem__) if val_losses else fc.epochs

    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    names = tuple(model.cfg.identities)
    # The base's scores still describe its faces unless the head changed them.
    new_card = replace(card, model=model.cfg, identities=names, metrics={} if head else card.metrics)
    model_out = storage.join(out_dir, MODEL_FILE_NAME)
    storage.makedirs(out_dir)
    save_model(model_out, model, new_card)
    result = FinetuneResult(model_out, identity, names, windows, fc.epochs, tuple(losses), time.perf_counter() - t0,
                            val_windows, tuple(val_losses), best_epoch)
    record: dict[str, Any] = {"base_model": model_path, "data": data_dir, "shards": shards_dir, "identity": identity,
                              "head": head, "windows": windows, "val_windows": val_windows, "epochs": fc.epochs,
                              "lr": fc.lr, "seed": fc.seed, "losses": losses, "val_losses": val_losses,
                              "best_epoch": best_epoch, "identities": list(names), "wall_s": result.wall_s}
    storage.atomic_write_text(storage.join(out_dir, FINETUNE_RECORD), json.dumps(record, indent=1))
    return result


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
