"""Streaming inference: chunked audio -> log-mel frames -> model outputs, identical to offline.

Two stateful wrappers, each stream's state living in its own object (create one per stream):

- :class:`StreamingLogMel`: audio samples in chunks of any size -> the same mel frames as the offline
  :func:`a2bs.extract.audio.log_mel` (centred frames, zero padding ``n_fft // 2``). Frame ``t`` needs
  samples up to ``t * hop + n_fft // 2``; :meth:`~StreamingLogMel.flush` pads the end with zeros as the
  offline extractor does, so a stream of ``N`` samples yields ``1 + N // hop`` frames in total.
- :class:`StreamingModel`: mel frames in chunks of any size (down to 1) -> the same (n, 59) outputs as
  one offline forward pass, by carrying each layer's left context (convolution inputs, attention
  key/value caches) from chunk to chunk; nothing is recomputed. Only causal models stream
  (``tcn_full``, ``tcn_poc``/``tcn_attn`` configured causal); others raise :class:`StreamingError`.

:class:`AudioStream` chains both: audio chunks in, face-rig frames out (at the mel rate, 100 Hz).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from a2bs.config import AudioConfig
from a2bs.extract.audio import MelNormaliser, log_mel_frames
from a2bs.manifests import MelNorm
from a2bs.models.identity import identity_rows
from a2bs.schema import N_TARGETS


class StreamingError(ValueError):
    """The model cannot be streamed (it is not causal) or the stream was misused."""


class StreamingLogMel:
    """Chunked audio samples -> log-mel frames identical to the offline extractor.

    `mel_norm`: the model card's log-mel normalisation (None = raw log-mel), applied from the stream's
    first frame as :func:`a2bs.infer.offline.predict_100hz` applies it from the clip's first frame.
    """

    def __init__(self, cfg: AudioConfig, mel_norm: MelNorm | None = None) -> None:
        self.cfg = cfg
        self.mel_norm = mel_norm
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._norm = MelNormaliser.of(self.mel_norm)
        self._pad = self.cfg.n_fft // 2
        # Buffer of the zero-padded signal, starting at padded-sample index self._buf_start.
        self._buf = np.zeros(self._pad, dtype=np.float64)
        self._buf_start = 0
        self._next_frame = 0
        self._n_samples = 0
        self._flushed = False

    @property
    def frames_emitted(self) -> int:
        """Mel frames returned so far."""
        return self._next_frame

    def _windows(self, n_total_frames: int | None) -> np.ndarray:
        hop, n_fft = self.cfg.hop_length, self.cfg.n_fft
        buf_end = self._buf_start + len(self._buf)  # exclusive, padded coordinates
        ready = max(0, (buf_end - n_fft) // hop + 1)  # frames whose n_fft samples are all buffered
        if n_total_frames is not None:
            ready = min(ready, n_total_frames)
        count = ready - self._next_frame
        if count <= 0:
            return np.zeros((0, n_fft), dtype=np.float64)
        offset = self._next_frame * hop - self._buf_start
        # A strided view into the buffer, which is only ever replaced (never written), so it stays valid.
        # Built with the ndarray constructor (bounds-checked against the buffer): sliding_window_view
        # costs ~10 us a call in argument checks, ~5 % of a serving worker's CPU at 64 sessions.
        item = self._buf.itemsize
        windows = np.ndarray((count, n_fft), self._buf.dtype, self._buf, offset * item, (hop * item, item))
        self._next_frame = ready
        keep_from = self._next_frame * hop - self._buf_start  # the next frame starts here
        self._buf = self._buf[keep_from:]
        self._buf_start += keep_from
        return windows

    def _mel(self, windows: np.ndarray) -> np.ndarray:
        if not len(windows):
            return np.zeros((0, self.cfg.n_mels), dtype=np.float32)
        return self.normalise(log_mel_frames(windows, self.cfg))  # (n, n_mels)

    def normalise(self, mel_db: np.ndarray) -> np.ndarray:
        """The stream's next log-mel frames (from :meth:`push_windows`/:meth:`flush_windows`, in order) as
        the model takes them: through the card's normalisation, if any."""
        return mel_db if self._norm is None else self._norm(mel_db)

    def push_windows(self, samples: np.ndarray) -> np.ndarray:
        """Like :meth:`push`, but the analysis windows (n, n_fft) float64 of the new frames instead of
        their log-mel, so many streams' frames can go through one ``log_mel_frames`` call."""
        if self._flushed:
            raise StreamingError("audio stream already flushed; call reset() to start a new one")
        # Same float32 -> float64 path as features_from_samples + log_mel, so the values match.
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1).astype(np.float64)
        self._n_samples += chunk.size
        self._buf = np.concatenate([self._buf, chunk])
        return self._windows(None)

    def flush_windows(self) -> np.ndarray:
        """Like :meth:`flush`, but the analysis windows (n, n_fft) of the last frames."""
        if self._flushed:
            return np.zeros((0, self.cfg.n_fft), dtype=np.float64)
        self._flushed = True
        self._buf = np.concatenate([self._buf, np.zeros(self._pad, dtype=np.float64)])
        return self._windows(1 + self._n_samples // self.cfg.hop_length)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add mono samples at ``cfg.sample_rate``; returns the newly complete frames (n, n_mels) float32."""
        return self._mel(self.push_windows(samples))

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad like the offline extractor and return the remaining frames."""
        return self._mel(self.flush_windows())


def supports_streaming(model: nn.Module) -> bool:
    """True if `model` is causal and offers ``init_state``/``step``."""
    return bool(getattr(model, "causal", False)) and hasattr(model, "step") and hasattr(model, "init_state")


class StreamingModel:
    """Stateful wrapper that runs a trained causal model chunk by chunk.

    Args:
        model: a causal model from :mod:`a2bs.models` (put in eval mode here).
        batch_size: number of parallel streams advanced together (each row is independent).
        identity: the identity row of every stream (an int), of each stream (B ints), or None (the
            average, or no conditioning for a model without identities); see
            :func:`a2bs.models.identity.identity_index` for names -> rows.

    Raises:
        StreamingError: the model is not causal.
    """

    def __init__(self, model: nn.Module, batch_size: int = 1,
                 identity: int | Sequence[int] | torch.Tensor | None = None) -> None:
        if not supports_streaming(model):
            name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
            raise StreamingError(
                f"model '{name}' is not causal (it looks at future frames), so it cannot stream; "
                "use a causal model such as tcn_full, or run it offline"
            )
        self.model = model.eval()
        self.batch_size = batch_size
        self.identity = identity_rows(identity, batch_size)
        if self.identity is not None and getattr(model, "identity", None) is None:
            raise StreamingError("an identity was given, but this model has no identities")
        self.reset()

    def reset(self) -> None:
        """Start new streams (zero context, as at the start of an offline pass)."""
        self.state = self.model.init_state(self.batch_size)
        self.frames_seen = 0

    @torch.no_grad()
    def step(self, mel: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Advance by a chunk of mel frames: (n, n_mels) or (B, n, n_mels) -> (n, 59) or (B, n, 59).

        Numpy in -> numpy (float32) out; tensor in -> tensor out. ``n`` may be 0.
        """
        as_numpy = not isinstance(mel, torch.Tensor)
        x = torch.as_tensor(np.asarray(mel, dtype=np.float32)) if as_numpy else mel
        squeeze = x.dim() == 2
        if squeeze:
            x = x[None]  # (1, n, n_mels)
        if x.shape[0] != self.batch_size:
            raise StreamingError(f"chunk has batch {x.shape[0]}, stream was created for {self.batch_size}")
        param = next(self.model.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        if x.shape[1] == 0:
            y = x.new_zeros(x.shape[0], 0, N_TARGETS)
        elif self.identity is None:
            y, self.state = self.model.step(x, self.state)  # (B, n, 59)
        else:
            y, self.state = self.model.step(x, self.state, self.identity.to(param.device))
        self.frames_seen += x.shape[1]
        y = y[0] if squeeze else y
        return y.cpu().numpy() if as_numpy else y


class AudioStream:
    """Audio chunks -> model output frames, for one stream (a StreamingLogMel + a StreamingModel)."""

    def __init__(self, model: nn.Module, audio_cfg: AudioConfig, identity: int | None = None,
                 mel_norm: MelNorm | None = None) -> None:
        self.frontend = StreamingLogMel(audio_cfg, mel_norm)
        self.model = StreamingModel(model, batch_size=1, identity=identity)

    def reset(self) -> None:
        """Start a new stream."""
        self.frontend.reset()
        self.model.reset()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Mono samples -> (n, 59) outputs for the mel frames completed by them."""
        return self.model.step(self.frontend.push(samples))

    def flush(self) -> np.ndarray:
        """End of stream -> (n, 59) outputs of the last frames."""
        return self.model.step(self.frontend.flush())
