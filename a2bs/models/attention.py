"""Hybrid TCN + multi-head self-attention (``tcn_attn``), the seed's suggested hybrid.

    mel ─> TCN backbone (local patterns) ─> h ─┬──────────────────────────────┐
                                                └─> [pre-LN MHSA + FFN] x L ─> LN ┴─ concat ─> Linear ─> head

Positional information is rotary (RoPE, applied to queries and keys): attention scores then depend
only on the frame distance ``i - j``, so a stream that started long ago behaves like a fresh one and
there is no position table to outgrow. Attention is limited to a window of ``cfg.attn_max_len`` frames
(``|i - j| < attn_max_len``; with ``attn_causal`` also ``j <= i``), which bounds the streaming
key/value cache and the cost per frame. With a causal backbone and causal attention the model
streams exactly: the state is the backbone's convolution contexts, the frame counter and per-layer
key/value caches of the last ``attn_max_len - 1`` frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from a2bs.config import ModelConfig
from a2bs.models.tcn import (
    OutputHead,
    TCNBackbone,
    identity_conditioning,
    init_weights,
    make_identity_conditioning,
    receptive_field_frames,
)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the last axis (half-split pairing)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (Dh/2,)
        # Not persistent: derived from the config, so never stored in model files.
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, Dh), positions (T,) integer frame indices -> rotated x."""
        angle = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # (T, Dh/2)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]  # (B, H, T, Dh/2)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window_frames: int, causal: bool) -> torch.Tensor:
    """Boolean (Tq, Tk) mask: True where query frame q_pos[i] may attend key frame k_pos[j]."""
    diff = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
    if causal:
        return (diff >= 0) & (diff < window_frames)
    return diff.abs() < window_frames


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an explicit boolean mask."""

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = channels // heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.drop = nn.Dropout(dropout)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> rotated q, rotated k, v, each (B, H, T, Dh)."""
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        return self.rotary(qkv[0], positions), self.rotary(qkv[1], positions), qkv[2]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh), allowed (Tq, Tk) -> (B, Tq, C)."""
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        scores = scores.masked_fill(~allowed, float("-inf"))  # every row keeps j == i, so never all -inf
        y = self.drop(torch.softmax(scores, dim=-1)) @ v  # (B, H, Tq, Dh)
        b, _, tq, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, tq, self.heads * self.head_dim))  # (B, Tq, C)

    def attend_windowed(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, window_frames: int,
        causal: bool,
    ) -> torch.Tensor:
        """Windowed attention over a whole sequence, (B, H, T, Dh) each -> (B, T, C).

        Long sequences go in query blocks of `window_frames`, each against only the keys its window
        can reach: memory O(T * window) instead of O(T^2), same result. Export keeps one dense graph.
        """
        t = q.shape[2]
        if torch.onnx.is_in_onnx_export() or t <= 2 * window_frames:
            return self.attend(q, k, v, attention_allowed(positions, positions, window_frames, causal))
        outs = []
        for s in range(0, t, window_frames):
            e = min(t, s + window_frames)
            ks, ke = max(0, s - window_frames + 1), (e if causal else min(t, e + window_frames - 1))
            allowed = attention_allowed(positions[s:e], positions[ks:ke], window_frames, causal)
            outs.append(self.attend(q[:, :, s:e], k[:, :, ks:ke], v[:, :, ks:ke], allowed))  # (B, e - s, C)
        return torch.cat(outs, dim=1)  # (B, T, C)


class AttentionLayer(nn.Module):
    """Pre-LN transformer layer: x + MHSA(LN(x)), then x + FFN(LN(x)) with a 2x GELU FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.norm1 = nn.LayerNorm(c)
        self.attn = SelfAttention(c, cfg.attn_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(c)
        self.ffn_in = nn.Linear(c, 2 * c)
        self.ffn_out = nn.Linear(2 * c, c)
        self.drop = nn.Dropout(cfg.dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.ffn_out(self.drop(F.gelu(self.ffn_in(self.norm2(x))))))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, window_frames: int, causal: bool) -> torch.Tensor:
        q, k, v = self.attn.project(self.norm1(x), positions)
        x = x + self.drop(self.attn.attend_windowed(q, k, v, positions, window_frames, causal))  # (B, T, C)
        return self._ffn(x)

    def step(
        self, x: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, window_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal chunk step: x (B, n, C) at `positions`; caches (B, H, L, Dh) of the L frames before."""
        q, k, v = self.attn.project(self.norm1(x), positions)
        k_all = torch.cat([k_cache, k], dim=2)  # (B, H, L + n, Dh)
        v_all = torch.cat([v_cache, v], dim=2)
        n_all = k_all.shape[2]
        k_pos = positions[-1] - (n_all - 1) + torch.arange(n_all, device=positions.device)  # (L + n,)
        allowed = attention_allowed(positions, k_pos, window_frames, causal=True)
        x = self._ffn(x + self.attn.attend(q, k_all, v_all, allowed))
        keep_from = max(0, n_all - (window_frames - 1))  # the next frame needs only the last W-1 keys
        return x, k_all[:, :, keep_from:], v_all[:, :, keep_from:]


class TCNAttention(nn.Module):
    """``tcn_attn``: TCN backbone + self-attention + concat fusion; mel (B, T, n_mels) -> (B, T, 59)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.attn_heads < 1 or cfg.channels % cfg.attn_heads or (cfg.channels // cfg.attn_heads) % 2:
            raise ValueError("model: channels must split into attn_heads heads of even size (rotary pairs)")
        if cfg.attn_layers < 1 or cfg.attn_max_len < 1:
            raise ValueError("model: attn_layers and attn_max_len must be >= 1")
        self.cfg = cfg
        self.backbone = TCNBackbone(cfg)
        self.layers = nn.ModuleList(AttentionLayer(cfg) for _ in range(cfg.attn_layers))
        self.norm_attn = nn.LayerNorm(cfg.channels)
        self.fusion = nn.Linear(2 * cfg.channels, cfg.channels)
        self.head = OutputHead(cfg.channels, cfg.pose_scale)
        init_weights(self, len(cfg.dilations))
        scale = 1.0 / math.sqrt(2 * cfg.attn_layers)
        with torch.no_grad():
            for layer in self.layers:
                # Xavier keeps initial attention logits O(1) (kaiming's ReLU gain makes them peaky).
                nn.init.xavier_uniform_(layer.attn.qkv.weight)
                nn.init.xavier_uniform_(layer.attn.out.weight)
                layer.attn.out.weight.mul_(scale)
                layer.ffn_out.weight.mul_(scale)
        self.identity = make_identity_conditioning(cfg)

    @property
    def causal(self) -> bool:
        """True when both the backbone and the attention are causal (streamable)."""
        return self.cfg.causal and self.cfg.attn_causal

    def receptive_field(self) -> tuple[int, int]:
        """(past, future) input frames per output frame: backbone context plus the attention window."""
        past, future = receptive_field_frames(self.cfg)
        window = self.cfg.attn_max_len - 1
        return past + window, future + (0 if self.cfg.attn_causal else window)

    def _fuse(self, h: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        fused = self.fusion(torch.cat([h, self.norm_attn(a)], dim=-1))  # (B, T, C)
        return self.head(fused.transpose(1, 2), bias)  # (B, T, 59)

    def forward(self, mel: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """`identity` (B,) int64 rows of ``cfg.identities`` (or its length: the average); None = the average."""
        film, bias = identity_conditioning(self, identity, mel.shape[0], mel.device)
        h = self.backbone(mel, film).transpose(1, 2)  # (B, T, C)
        positions = torch.arange(h.shape[1], device=h.device)  # (T,)
        a = h
        for layer in self.layers:
            a = layer(a, positions, self.cfg.attn_max_len, self.cfg.attn_causal)
        return self._fuse(h, a, bias)

    def init_state(self, batch: int = 1, device: torch.device | None = None, dtype: torch.dtype | None = None) -> list:
        """Backbone contexts + frame counter (0-dim int64) + empty (B, H, 0, Dh) key/value caches."""
        if not self.causal:
            raise ValueError("model: tcn_attn streams only with causal=True and attn_causal=True")
        dtype = dtype or self.fusion.weight.dtype
        device = device or self.fusion.weight.device
        state = self.backbone.init_state(batch, device, dtype)
        state.append(torch.zeros((), dtype=torch.int64, device=device))
        head_dim = self.cfg.channels // self.cfg.attn_heads
        for _ in self.layers:
            for _kv in range(2):
                state.append(torch.zeros(batch, self.cfg.attn_heads, 0, head_dim, device=device, dtype=dtype))
        return state

    def step(self, mel: torch.Tensor, state: list,
             identity: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """Pure causal step: (B, n, n_mels) chunk + state (+ identity rows) -> (B, n, 59) outputs + new state."""
        film, bias = identity_conditioning(self, identity, mel.shape[0], mel.device)
        n_conv = 2 * len(self.cfg.dilations)
        feats, new_state = self.backbone.step(mel, state[:n_conv], film)
        h = feats.transpose(1, 2)  # (B, n, C)
        start = state[n_conv]
        positions = start + torch.arange(h.shape[1], device=h.device)  # (n,)
        new_state.append(start + h.shape[1])
        a = h
        for i, layer in enumerate(self.layers):
            k_cache, v_cache = state[n_conv + 1 + 2 * i], state[n_conv + 2 + 2 * i]
            a, k_cache, v_cache = layer.step(a, positions, k_cache, v_cache, self.cfg.attn_max_len)
            new_state += [k_cache, v_cache]
        return self._fuse(h, a, bias), new_state
