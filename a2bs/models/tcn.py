"""Temporal convolutional networks: blocks, the backbone, the output head and the TCN model.

One block design serves the whole family (``tcn_poc``, ``tcn_full`` and the backbone of ``tcn_attn``);
the family members differ only in their :class:`~a2bs.config.ModelConfig` (see ``registry.preset``).

Block (pre-activation residual, WaveNet-style skip output)::

    h    = conv2(drop(GELU(LN(conv1(drop(GELU(LN(x))))))))    both convolutions: kernel k, dilation d
    x'   = x + h                                              residual stream, into the next block
    skip = conv1x1(h)                                         summed over blocks

The head reads the sum of all skips, so every time scale reaches it directly. Two convolutions per
block give a receptive field of ``1 + 2 (k-1) sum(d)`` frames: 2045 (20.45 s, causal) for ``tcn_full``
(one per block would stop at 1023, short of the 1024 asked for) and 61 (+-30, centred) for ``tcn_poc``.
Presets: ``tcn_poc`` 480,442 parameters, ``tcn_full`` 2,035,514 (the 1x1 skips are ~1/3 of it).
The input is mapped from dB with a fixed clamp-and-scale (``schema.MEL_DB_RANGE`` -> [-1, 1]), never
with data statistics.

Normalisation is a LayerNorm over the channels of each frame (no batch statistics). It is exact in
streaming in both train and eval mode, independent of batch size and of padded/masked frames in a
batch, and needs no running statistics synchronised across DDP workers.

Every temporal convolution is either causal (left pad ``(k-1)*d`` with ``F.pad``) or centred. A causal
model also offers a pure ``step(mel_chunk, state) -> (out, new_state)`` that the streaming wrapper
(``a2bs.infer.streaming``) drives; the state is each convolution's last ``(k-1)*d`` input frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from a2bs.config import ModelConfig
from a2bs.models.identity import IdentityConditioning, film_norm
from a2bs.schema import MEL_DB_RANGE, N_BLENDSHAPES, N_TARGETS

# Pose values the head predicts directly: tx, ty, tz, qx, qy, qz (qw is derived).
N_POSE_PREDICTED = 6
_QW_EPS = 1e-6


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, T) tensor, independently per frame."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels  # a plain int: the exporter traces x.shape[1] as a graph value
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused layer_norm on the (B, T, C) view; contiguous() so the next convolution reads fast.
        y = F.layer_norm(x.transpose(1, 2), (self.channels,), self.weight, self.bias, self.eps)  # (B, T, C)
        return y.transpose(1, 2).contiguous()  # (B, C, T)


class TemporalConv(nn.Module):
    """Dilated 1-D convolution, causal or centred, optionally depthwise-separable.

    Args:
        channels: input = output channels.
        kernel_size: taps.
        dilation: spacing between taps (frames).
        causal: pad only on the left so output t never sees input > t.
        separable: depthwise (per-channel, dilated) followed by pointwise (1x1) convolution.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool, separable: bool) -> None:
        super().__init__()
        self.context_frames = (kernel_size - 1) * dilation
        self.causal = causal
        left = self.context_frames if causal else self.context_frames // 2
        self.pad = (left, self.context_frames - left)
        if separable:
            # No depthwise bias: the pointwise bias absorbs it (pw(dw(x) + b) = pw(dw(x)) + W b).
            self.depthwise = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=channels, bias=False)
            self.pointwise = nn.Conv1d(channels, channels, 1)
            self.conv = None
        else:
            self.depthwise = self.pointwise = None
            self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x)
        return self.pointwise(self.depthwise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        return self._valid(F.pad(x, self.pad))

    def step(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal chunk step: `context` holds the previous ``context_frames`` inputs, (B, C, L)."""
        xc = torch.cat([context, x], dim=-1)  # (B, C, L + n)
        # Slice by explicit start: xc[..., -0:] would keep everything when context_frames == 0.
        new_context = xc[..., xc.shape[-1] - self.context_frames :]
        if self.depthwise is None:
            return self.conv(xc), new_context
        # Depthwise taps as k shifted multiply-adds: for the few frames of a step this is several times
        # faster than a dilated grouped convolution call (same sum, different order: ~1e-7 apart).
        n = x.shape[-1]
        w = self.depthwise.weight[:, 0]  # (C, k)
        d = self.depthwise.dilation[0]
        y = xc[..., :n] * w[:, :1]  # (B, C, n)
        for j in range(1, w.shape[1]):
            y = y + xc[..., j * d : j * d + n] * w[:, j : j + 1]
        return self.pointwise(y), new_context


class TCNBlock(nn.Module):
    """Pre-activation residual block of two dilated convolutions plus a 1x1 skip output."""

    def __init__(self, cfg: ModelConfig, dilation: int) -> None:
        super().__init__()
        c = cfg.channels
        self.norm1 = ChannelLayerNorm(c)
        self.conv1 = TemporalConv(c, cfg.kernel_size, dilation, cfg.causal, cfg.separable)
        self.norm2 = ChannelLayerNorm(c)
        self.conv2 = TemporalConv(c, cfg.kernel_size, dilation, cfg.causal, cfg.separable)
        self.skip = nn.Conv1d(c, c, 1)
        self.drop = nn.Dropout(cfg.dropout)

    def _pre(self, norm: nn.Module, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop(F.gelu(film_norm(norm(x), film)))

    def forward(self, x: torch.Tensor, film: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T) -> residual stream (B, C, T), skip (B, C, T); `film` (B, 2, C): the identity's."""
        h = self.conv1(self._pre(self.norm1, x, film))  # (B, C, T)
        h = self.conv2(self._pre(self.norm2, h))  # (B, C, T)
        return x + h, self.skip(h)

    def step(
        self, x: torch.Tensor, ctx1: torch.Tensor, ctx2: torch.Tensor, film: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal chunk step with each convolution's cached left context."""
        h, ctx1 = self.conv1.step(self._pre(self.norm1, x, film), ctx1)  # (B, C, n)
        h, ctx2 = self.conv2.step(self._pre(self.norm2, h), ctx2)  # (B, C, n)
        return x + h, self.skip(h), ctx1, ctx2


class TCNBackbone(nn.Module):
    """Mel (B, T, n_mels) -> features (B, C, T): fixed input scaling, 1x1 projection, blocks, skip sum."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.kernel_size < 1 or not cfg.dilations or min(cfg.dilations) < 1:
            raise ValueError("model: kernel_size and every dilation must be >= 1, with at least one block")
        self.cfg = cfg
        lo, hi = MEL_DB_RANGE
        # Fixed, data-independent scaling of dB to about [-1, 1] (per frame, so streaming-safe); the clamp
        # matches the data stage's clipping, so raw front-end output (e.g. -100 dB digital silence) is fine.
        self.mel_lo_db, self.mel_hi_db = float(lo), float(hi)
        self.in_proj = nn.Conv1d(cfg.n_mels, cfg.channels, 1)
        self.blocks = nn.ModuleList(TCNBlock(cfg, d) for d in cfg.dilations)

    def _project(self, mel: torch.Tensor) -> torch.Tensor:
        mid, half = (self.mel_hi_db + self.mel_lo_db) / 2, (self.mel_hi_db - self.mel_lo_db) / 2
        x = (mel.clamp(self.mel_lo_db, self.mel_hi_db) - mid) / half  # (B, T, n_mels)
        return self.in_proj(x.transpose(1, 2))  # (B, C, T)

    def forward(self, mel: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """`film` (B, n_blocks, 2, C): the identity's FiLM of each block (None = no conditioning)."""
        x = self._project(mel)  # (B, C, T)
        total = torch.zeros_like(x)
        for i, block in enumerate(self.blocks):
            x, skip = block(x, None if film is None else film[:, i])
            total = total + skip  # (B, C, T)
        return total

    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> list:
        """Zero left contexts, two per block: identical to the offline causal zero padding."""
        if not self.cfg.causal:
            raise ValueError("model: a non-causal TCN has no streaming state")
        dtype = dtype or self.in_proj.weight.dtype
        device = device or self.in_proj.weight.device
        state = []
        for block in self.blocks:
            for conv in (block.conv1, block.conv2):
                state.append(torch.zeros(batch, self.cfg.channels, conv.context_frames, device=device, dtype=dtype))
        return state

    def step(self, mel: torch.Tensor, state: list, film: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """(B, n, n_mels) chunk -> features (B, C, n) and the new state."""
        x = self._project(mel)  # (B, C, n)
        total = torch.zeros_like(x)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, skip, c1, c2 = block.step(x, state[2 * i], state[2 * i + 1], None if film is None else film[:, i])
            total = total + skip
            new_state += [c1, c2]
        return total, new_state


class OutputHead(nn.Module):
    """Features (B, C, T) -> targets (B, T, 59): sigmoid blendshapes, tanh x pose_scale pose, derived qw."""

    def __init__(self, channels: int, pose_scale: float) -> None:
        super().__init__()
        self.pose_scale = float(pose_scale)
        self.norm = ChannelLayerNorm(channels)
        self.proj = nn.Conv1d(channels, N_BLENDSHAPES + N_POSE_PREDICTED, 1)

    def forward(self, feats: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias` (B, 58): the identity's output bias, added before the activations (None = none)."""
        z = self.proj(F.gelu(self.norm(feats))).transpose(1, 2)  # (B, T, 58)
        if bias is not None:
            z = z + bias[:, None, :]
        shapes = torch.sigmoid(z[..., :N_BLENDSHAPES])  # (B, T, 52)
        pose = torch.tanh(z[..., N_BLENDSHAPES:]) * self.pose_scale  # (B, T, 6): tx ty tz qx qy qz
        qv = pose[..., 3:]  # (B, T, 3)
        # Clamp keeps sqrt finite even if someone configures pose_scale > 1/sqrt(3).
        qw = torch.sqrt(torch.clamp(1.0 - (qv * qv).sum(dim=-1, keepdim=True), min=_QW_EPS))  # (B, T, 1)
        return torch.cat([shapes, pose[..., :3], qw, qv], dim=-1)  # (B, T, 59)


def init_weights(model: nn.Module, n_blocks: int) -> None:
    """Kaiming (fan-in) init for convolutions and linears, zero biases; residual-branch outputs scaled.

    The second convolution of each block and every skip convolution are scaled by 1/sqrt(n_blocks)
    (as GPT-2 does for residual projections) so the residual stream and the skip sum keep unit-order
    variance at any depth; GELU is close enough to ReLU for the ReLU gain.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    scale = 1.0 / math.sqrt(max(1, n_blocks))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TCNBlock):
                last = module.conv2.conv if module.conv2.conv is not None else module.conv2.pointwise
                last.weight.mul_(scale)
                module.skip.weight.mul_(scale)
            if isinstance(module, OutputHead):
                # Small head: outputs start near sigmoid(0) / rest pose instead of saturating.
                nn.init.normal_(module.proj.weight, std=0.01)


def make_identity_conditioning(cfg: ModelConfig) -> IdentityConditioning | None:
    """The identity tables of a model configured with `cfg` (None for ``identities = ()``)."""
    if not cfg.identities:
        return None
    return IdentityConditioning(cfg.identities, len(cfg.dilations), cfg.channels, N_BLENDSHAPES + N_POSE_PREDICTED,
                                film=cfg.identity_film)


def identity_conditioning(model: nn.Module, identity: torch.Tensor | None,
                          batch: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(film, out_bias) of `identity` (B,) rows for `model` (None = the average); (None, None) without identities.

    Raises:
        ValueError: an identity was given to a model without identities.
    """
    if model.identity is None:
        if identity is not None:
            raise ValueError("model: this model has no identities (model.identities is empty)")
        return None, None
    return model.identity(identity, batch, device)


def receptive_field_frames(cfg: ModelConfig) -> tuple[int, int]:
    """(past, future) input frames that one output frame of the TCN backbone depends on.

    Each block has two convolutions of context ``(k-1)*d``; centred padding splits each one
    ``floor/ceil`` between past and future. The total receptive field is ``past + future + 1``.
    """
    past = future = 0
    for d in cfg.dilations:
        ctx = (cfg.kernel_size - 1) * d
        left = ctx if cfg.causal else ctx // 2
        past += 2 * left
        future += 2 * (ctx - left)
    return past, future


class TCN(nn.Module):
    """Mel (B, T, n_mels) -> targets (B, T, 59), same T (``tcn_poc`` and ``tcn_full``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = TCNBackbone(cfg)
        self.head = OutputHead(cfg.channels, cfg.pose_scale)
        init_weights(self, len(cfg.dilations))
        self.identity = make_identity_conditioning(cfg)

    @property
    def causal(self) -> bool:
        """True when no output frame depends on later input frames (streamable)."""
        return self.cfg.causal

    def receptive_field(self) -> tuple[int, int]:
        """(past, future) frames of input context per output frame."""
        return receptive_field_frames(self.cfg)

    def forward(self, mel: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """`identity` (B,) int64 rows of ``cfg.identities`` (or its length: the average); None = the average."""
        film, bias = identity_conditioning(self, identity, mel.shape[0], mel.device)
        return self.head(self.backbone(mel, film), bias)  # (B, T, 59)

    def init_state(self, batch: int = 1, device: torch.device | None = None, dtype: torch.dtype | None = None) -> list:
        """Initial streaming state (list of tensors) for `batch` independent streams."""
        return self.backbone.init_state(batch, device, dtype)

    def step(self, mel: torch.Tensor, state: list,
             identity: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """Pure causal step: (B, n, n_mels) chunk + state (+ identity rows) -> (B, n, 59) outputs + new state."""
        film, bias = identity_conditioning(self, identity, mel.shape[0], mel.device)
        feats, new_state = self.backbone.step(mel, state, film)  # (B, C, n)
        return self.head(feats, bias), new_state


assert N_TARGETS == N_BLENDSHAPES + N_POSE_PREDICTED + 1
