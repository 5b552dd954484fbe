"""Identity conditioning: one model, many faces; the caller picks whose face the speech drives.

A model configured with ``ModelConfig.identities = (name_0, .., name_{n-1})`` holds two lookup tables
with one row per identity plus a learned *average* identity at index ``n`` (used when none is given):

- ``film``: a FiLM (feature-wise scale and shift) per TCN block, applied after the block's first
  LayerNorm, ``LN(x) * (1 + scale) + shift`` (an adaptive LayerNorm, as in DiT). It lets a face change
  the dynamics (how far the lips open, how much the jaw moves), not only the rest shape, and stays
  exact in streaming: it is the same for every frame of a stream, so it carries no state.
- ``out_bias``: a bias on the head's 58 pre-activation outputs: the face's rest shape and pose, the
  largest difference between actors (the demo's two rest at mouthSmile ~0.9 and ~0.1).

``ModelConfig.identity_film = False`` keeps only ``out_bias``: every face shares the dynamics learned
from all voices, and an identity sets the rest shape and pose only.

Plain tables rather than a small embedding and a shared projection: a2bs trains on a handful of faces,
and a new face (``a2bs finetune``) is exactly one new row of each, trained with everything else frozen,
so the other faces' outputs stay bit-identical (:func:`with_added_identity`, :func:`train_only_identity`).
Both tables start at zero: a fresh conditioned model
computes what the unconditioned one does, and every face starts at the average.

The average row learns the mean face when training replaces a fraction of the windows' identities by
the average index (:func:`drop_identities`, the classifier-free-guidance trick). A model with
``identities = ()`` has no tables at all: same weights, same state-dict keys and outputs as before.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from a2bs.config import ConfigError


def check_identities(names: Sequence[str]) -> tuple[str, ...]:
    """The identity names as a tuple; ConfigError unless they are distinct non-empty strings."""
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ConfigError(f"model.identities: names must be non-empty strings, got {bad!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model.identities: names must be distinct, repeated: {', '.join(dupes)}")
    return names


def identity_index(names: Sequence[str], name: str | None) -> int | None:
    """Row of identity `name` in a model conditioned on `names`: ``None`` -> the average (``len(names)``).

    Returns None for a model without identities and no name (nothing to condition on).

    Raises:
        ConfigError: `name` is not one of `names` (listing them), or the model has no identities.
    """
    if name is None:
        return len(names) if names else None
    if not names:
        raise ConfigError(f"identity {name!r}: this model has no identities (it was trained without identity "
                          "conditioning); leave the identity out")
    if name not in names:
        raise ConfigError(f"unknown identity {name!r} (known: {', '.join(names)}; none = their average)")
    return list(names).index(name)


def drop_identities(identity: torch.Tensor, n_identities: int, probability: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Training: replace each row of `identity` (B,) by the average index with `probability`.

    This is what teaches the average identity the mean face (the model sees both in every batch).
    """
    drop = torch.rand(identity.shape, generator=generator, device=identity.device) < probability
    return torch.where(drop, torch.full_like(identity, n_identities), identity)


class IdentityConditioning(nn.Module):
    """Per-identity FiLM of every block (unless `film` is False) and output bias, plus the learned average (last row).

    Args:
        names: the identity names, in index order.
        n_blocks: TCN blocks (one FiLM each).
        channels: block channels.
        n_outputs: the head's pre-activation outputs (52 blendshapes + 6 pose values).
        film: False = no FiLM table (``film`` is None): an identity is its output bias only.
    """

    def __init__(self, names: Sequence[str], n_blocks: int, channels: int, n_outputs: int,
                 film: bool = True) -> None:
        super().__init__()
        self.names = check_identities(names)
        if not self.names:
            raise ConfigError("model.identities: IdentityConditioning needs at least one identity")
        rows = len(self.names) + 1
        self.n_blocks, self.channels = n_blocks, channels
        # Zero rows (no random draw): a fresh conditioned model equals the unconditioned one.
        self.film = (nn.Embedding(rows, n_blocks * 2 * channels, _weight=torch.zeros(rows, n_blocks * 2 * channels))
                     if film else None)
        self.out_bias = nn.Embedding(rows, n_outputs, _weight=torch.zeros(rows, n_outputs))

    @property
    def average_index(self) -> int:
        """The row of the learned average identity."""
        return len(self.names)

    def forward(self, identity: torch.Tensor | None, batch: int,
                device: torch.device | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """identity (B,) int64 rows, or None for the average -> (film (B, n_blocks, 2, C) or None, out_bias (B, 58))."""
        if identity is None:
            identity = torch.full((batch,), self.average_index, dtype=torch.long, device=device)
        film = None if self.film is None else self.film(identity).view(-1, self.n_blocks, 2, self.channels)
        return film, self.out_bias(identity)

    def tables(self) -> list[nn.Parameter]:
        """The per-identity weight tables this model has (FiLM, if any, and output bias)."""
        return [t.weight for t in (self.film, self.out_bias) if t is not None]


def film_norm(y: torch.Tensor, film: torch.Tensor | None) -> torch.Tensor:
    """FiLM of a normalised (B, C, T) tensor (or (B, C) for one frame) with film (B, 2, C): scale, shift."""
    if film is None:
        return y
    if y.dim() == 3:
        return y * (1 + film[:, 0, :, None]) + film[:, 1, :, None]
    return y * (1 + film[:, 0]) + film[:, 1]


def identity_rows(identity: int | Sequence[int] | torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """An identity row given as an int (every stream), a sequence or tensor of B rows, or None -> (B,) int64."""
    if identity is None:
        return None
    if isinstance(identity, int):
        return torch.full((batch,), identity, dtype=torch.long)
    rows = torch.as_tensor(identity, dtype=torch.long).reshape(-1)
    if rows.shape[0] != batch:
        raise ValueError(f"identity has {rows.shape[0]} rows for a batch of {batch}")
    return rows


def with_added_identity(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` conditioned on one more identity, `name`, appended last (for ``a2bs finetune``).

    Every weight is copied; the new identity's rows start as the average's; the average moves to the
    new last row. The other identities' rows are unchanged, so with the backbone frozen their outputs
    stay bit-identical. Train only row ``len(old identities)`` with :func:`train_only_identity`.
    """
    import dataclasses

    from a2bs.models.registry import build_model

    names = tuple(model.cfg.identities) + (name,)
    new = build_model(dataclasses.replace(model.cfg, identities=check_identities(names)))
    old_state, new_state = model.state_dict(), new.state_dict()
    state = {k: v for k, v in old_state.items() if not k.startswith("identity.")}
    n = len(names) - 1  # the old identities
    with torch.no_grad():
        for key in (k for k in new_state if k.startswith("identity.")):
            rows = new_state[key].clone()  # zeros for a model trained without identities
            if key in old_state:
                old = old_state[key]  # (n + 1, D): n identities and the average
                rows[:n] = old[:n]
                rows[n] = old[n]
                rows[n + 1] = old[n]
            state[key] = rows
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


def train_only_identity(model: nn.Module, row: int) -> list[nn.Parameter]:
    """Freeze `model` except identity row `row` of its tables (``a2bs finetune``); returns what to optimise.

    Every other parameter stops requiring gradients, and a gradient hook zeroes the tables' other rows,
    so an optimiser without weight decay (decay would shrink the frozen rows too) leaves every other
    identity bit-identical. Unfreeze the head on top of this to adapt it as well (the other faces then change).
    """
    if getattr(model, "identity", None) is None:
        raise ValueError("model: this model has no identities to fine-tune")
    keep = torch.zeros(model.identity.out_bias.num_embeddings, 1)
    keep[row] = 1.0
    for p in model.parameters():
        p.requires_grad_(False)
    tables = model.identity.tables()
    for table in tables:
        table.requires_grad_(True)
        table.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))
    return tables
