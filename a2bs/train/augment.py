"""On-the-fly augmentation of training batches in the log-mel domain (the ``augment`` config section).

Training reads windows of log-mel frames (dB, clipped to ``schema.MEL_DB_RANGE``) with their face
targets, never waveforms, so each transform is the log-mel image of an audio change:

- gain: a level change of ``g`` dB is a shift of every band by ``g``; frames at the dB floor carry
  no level to shift and stay there.
- noise: in the power domain, ``P + a N`` with ``a`` set by a random SNR of window mean powers. White
  and pink noise get their mel-band shape from the filterbank (flat or 1/f power per FFT bin summed
  by each filter) with the frame-to-frame scatter of a noise estimate (that of a Gamma with as many
  degrees of freedom as the band has FFT bins); babble is the summed mel power of other windows of the batch
  (the shuffle pool mixes clips, so mostly other utterances and speakers).
- speed: the time axis of the mel AND of targets, vad and mask is resampled about the window centre
  by one factor (audio and face stay aligned); the window keeps its length, frames whose source lies
  outside the window are masked out of the loss.
- vocal-tract length: the mel axis is warped by VTLP's piecewise-linear frequency warp (Jaitly &
  Hinton 2013): band ``m`` takes the source at the warped centre frequency of ``m``.
- SpecAugment time and frequency masks, filled with the window's mean level, not the floor: a floor
  mask looks like silence while the face keeps moving, which would teach the mouth to move in silence
  (against the silence loss); the mean carries no timing cue and keeps the level (SpecAugment's zero
  after mean normalisation).

Each transform is drawn per window with its own probability. Random draws come from one numpy
generator per batch, seeded by (seed, epoch, worker rank, batch index): a run is reproducible and a
resumed epoch sees the same augmentation. Only the train split's batches pass through
:func:`augment_batches`; validation and test readers have no augmenter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from a2bs.config import AudioConfig, AugmentConfig, ConfigError
from a2bs.extract.audio import mel_filterbank
from a2bs.schema import MEL_DB_RANGE

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "babble")
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Spectra:
    """What the transforms need from the front end (per mel band)."""

    white: np.ndarray  # (M,) mel power of white noise, mean 1
    pink: np.ndarray  # (M,) mel power of 1/f noise, mean 1
    dof: np.ndarray  # (M,) FFT bins per band: Gamma shape of a band's noise power estimate
    centres_hz: np.ndarray  # (M,) band centre frequencies
    fmax_hz: float


def _spectra(audio: AudioConfig) -> _Spectra:
    import librosa

    fb = mel_filterbank(audio)  # (M, F)
    freqs_hz = np.fft.rfftfreq(audio.n_fft, 1.0 / audio.sample_rate)
    white = fb.sum(axis=1)
    pink = fb @ (1.0 / np.maximum(freqs_hz, freqs_hz[1]))  # 1/f power; DC weighted like the first bin
    fmax_hz = audio.fmax_hz or audio.sample_rate / 2
    centres = librosa.mel_frequencies(audio.n_mels + 2, fmin=audio.fmin_hz, fmax=fmax_hz)[1:-1]
    return _Spectra(white / white.mean(), pink / pink.mean(), np.maximum((fb > 0).sum(axis=1), 1).astype(np.float64),
                    centres, float(fmax_hz))


def vtlp_warp_hz(freqs_hz: np.ndarray, alpha: np.ndarray, boundary_hz: float, fmax_hz: float) -> np.ndarray:
    """VTLP's piecewise-linear warp: ``f * alpha`` up to a knee, then a line to ``fmax_hz`` (fixed).

    Args:
        freqs_hz: (M,) frequencies.
        alpha: (N,) warp factors.
    Returns:
        (N, M) warped frequencies in [0, fmax_hz].
    """
    a = alpha[:, None]
    knee = boundary_hz * np.minimum(a, 1.0) / a
    f = freqs_hz[None, :]
    upper = fmax_hz - (fmax_hz - boundary_hz * np.minimum(a, 1.0)) / (fmax_hz - knee) * (fmax_hz - f)
    return np.clip(np.where(f <= knee, f * a, upper), 0.0, fmax_hz)


def _gather(x: torch.Tensor, pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear interpolation of `x` (N, T, C) at fractional positions `pos` along `dim`.

    `pos` is (N, T) for ``dim=1`` (time) and (N, C) for ``dim=2`` (mel bands).
    """
    size = x.shape[dim]
    pos = pos.clamp(0, size - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp_max(size - 1)
    other = 3 - dim  # the axis `pos` does not index
    w = (pos - i0).to(x.dtype).unsqueeze(other)
    i0, i1 = (i.unsqueeze(other).expand_as(x) for i in (i0, i1))
    return torch.gather(x, dim, i0) * (1 - w) + torch.gather(x, dim, i1) * w


def speed_positions(factors: np.ndarray, n_frames: int) -> np.ndarray:
    """(N, T) source frame of each output frame for speed `factors` (N,), about the window centre.

    A factor above 1 is faster speech: the window shows more of the source (positions spread out).
    """
    centre = (n_frames - 1) / 2
    return centre + (np.arange(n_frames)[None, :] - centre) * factors[:, None]


def resample_time(b: Batch, idx: torch.Tensor, factors: np.ndarray) -> None:
    """Speed windows `idx` of `b` (in place) up by `factors` (len(idx),): audio, targets, vad and mask alike.

    Linear interpolation between frames; a frame counts (mask 1) only if both source frames it mixes
    had a face and it lies inside the window.
    """
    n_frames = b["audio"].shape[1]
    pos = torch.from_numpy(speed_positions(factors, n_frames)).to(b["audio"].device)
    inside = ((pos >= -1e-6) & (pos <= n_frames - 1 + 1e-6)).float()
    pos = pos.float()
    # Mixing two floor values can round a hair below the floor: clamp so the floor stays exact.
    b["audio"][idx] = _gather(b["audio"][idx], pos, 1).clamp(*MEL_DB_RANGE)
    b["targets"][idx] = _gather(b["targets"][idx], pos, 1)
    b["vad"][idx] = _gather(b["vad"][idx].unsqueeze(2), pos, 1).squeeze(2)
    mask = b["mask"][idx].unsqueeze(2)
    lo = _gather(mask, pos.floor(), 1).squeeze(2)
    hi = _gather(mask, pos.ceil(), 1).squeeze(2)
    b["mask"][idx] = torch.minimum(lo, hi) * inside


class Augmenter:
    """The transforms of an :class:`AugmentConfig` for one front end; call it on a train batch.

    Args:
        cfg: the ``augment`` section.
        audio: the shards' front end (filterbank of the noise shapes and the VTLP band centres).
        seed: base seed (``train.seed``); see :meth:`rng`.
    """

    def __init__(self, cfg: AugmentConfig, audio: AudioConfig, seed: int = 0) -> None:
        unknown = set(cfg.noise_kinds) - set(NOISE_KINDS)
        if unknown:
            raise ConfigError(f"augment.noise_kinds: unknown {sorted(unknown)} (known: {', '.join(NOISE_KINDS)})")
        if not 0 <= cfg.speed_range < 1 or not 0 <= cfg.vtlp_range < 1:
            raise ConfigError("augment.speed_range and augment.vtlp_range must lie in [0, 1)")
        if not cfg.noise_kinds:
            raise ConfigError(f"augment.noise_kinds: give at least one of {', '.join(NOISE_KINDS)}")
        if cfg.noise_snr_min_db > cfg.noise_snr_max_db:
            raise ConfigError("augment.noise_snr_min_db must not exceed augment.noise_snr_max_db")
        self.cfg = cfg
        self.seed = seed
        self.spectra = _spectra(audio)

    def rng(self, epoch: int, rank: int, index: int) -> np.random.Generator:
        """The generator of batch `index` of worker `rank` in `epoch`."""
        return np.random.default_rng([self.seed, epoch, rank, index])

    def _chosen(self, rng: np.random.Generator, prob: float, n: int) -> np.ndarray:
        return np.flatnonzero(rng.random(n) < min(1.0, prob * self.cfg.strength))

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        """A new batch (audio (B, T, M) dB, targets (B, T, 59), vad/mask (B, T)); `batch` is not changed."""
        c = self.cfg
        out = {k: v.clone() for k, v in batch.items()}
        n = out["audio"].shape[0]
        steps = ((c.speed_prob, self._speed), (c.vtlp_prob, self._vtlp), (c.gain_prob, self._gain),
                 (c.noise_prob, self._noise), (c.time_mask_prob, self._time_masks),
                 (c.freq_mask_prob, self._freq_masks))
        for prob, step in steps:
            idx = self._chosen(rng, prob, n)  # drawn even when unused: each step's draws stay put
            if idx.size:
                step(out, torch.from_numpy(idx).to(out["audio"].device), rng)
        return out

    def _speed(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        r = self.cfg.speed_range
        resample_time(b, idx, rng.uniform(1 - r, 1 + r, len(idx)))

    def _vtlp(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        r = self.cfg.vtlp_range
        self.warp_mel(b, idx, rng.uniform(1 - r, 1 + r, len(idx)))

    def warp_mel(self, b: Batch, idx: torch.Tensor, alphas: np.ndarray) -> None:
        """Warp the mel axis of windows `idx` of `b` (in place) by VTLP factors `alphas` (len(idx),)."""
        sp = self.spectra
        warped = vtlp_warp_hz(sp.centres_hz, alphas, self.cfg.vtlp_boundary_hz, sp.fmax_hz)
        pos = np.stack([np.interp(w, sp.centres_hz, np.arange(len(sp.centres_hz))) for w in warped])
        warped_db = _gather(b["audio"][idx], torch.from_numpy(pos).float().to(b["audio"].device), 2)
        b["audio"][idx] = warped_db.clamp(*MEL_DB_RANGE)

    def _gain(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        lo, hi = MEL_DB_RANGE
        gain = torch.from_numpy(rng.uniform(-self.cfg.gain_db, self.cfg.gain_db, len(idx))).float()
        x = b["audio"][idx]
        shifted = (x + gain.to(x.device)[:, None, None]).clamp(lo, hi)
        b["audio"][idx] = torch.where(x <= lo, x, shifted)

    def _noise(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        c, sp = self.cfg, self.spectra
        lo, hi = MEL_DB_RANGE
        x = b["audio"]
        n_all, n_frames, n_mels = x.shape
        k = len(idx)
        snr_db = rng.uniform(c.noise_snr_min_db, c.noise_snr_max_db, k)
        kinds = rng.choice(np.array(c.noise_kinds), k)
        if n_all < 2:  # no other window to babble with
            kinds = np.where(kinds == "babble", "pink", kinds)
        # The scatter of a band's noise power estimate: Gamma(dof, 1/dof), drawn as the log-normal of the
        # same mean and variance (a third of the cost of numpy's Gamma sampler).
        sigma = np.sqrt(np.log1p(1.0 / sp.dof)).astype(np.float32)
        z = rng.standard_normal((k, n_frames, n_mels), dtype=np.float32)
        shape = np.where((kinds == "white")[:, None], sp.white[None, :], sp.pink[None, :]).astype(np.float32)
        noise = torch.from_numpy(np.exp(z * sigma - sigma**2 / 2) * shape[:, None, :]).to(x.device)
        babble = np.flatnonzero(kinds == "babble")
        if babble.size:
            # Offsets 1..B-1 never pick the window itself.
            others = (idx.cpu().numpy()[babble, None] + rng.integers(1, n_all, (babble.size, c.babble_windows))) % n_all
            others_db = x[torch.from_numpy(others).to(x.device)]  # (n_babble, babble_windows, T, M)
            noise[torch.from_numpy(babble).to(x.device)] = torch.pow(10.0, others_db / 10.0).sum(dim=1)
        signal = torch.pow(10.0, x[idx] / 10.0)
        target = signal.mean(dim=(1, 2)) * torch.from_numpy(10.0 ** (-snr_db / 10.0)).float().to(x.device)
        scale = target / noise.mean(dim=(1, 2)).clamp_min(1e-12)
        b["audio"][idx] = (10.0 * torch.log10(signal + scale[:, None, None] * noise)).clamp(lo, hi)

    def _masks(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator, dim: int, count: int, width: int) -> None:
        x = b["audio"][idx]
        size = x.shape[dim]
        widths = rng.integers(1, max(1, min(width, size)) + 1, (len(idx), count))
        starts = (rng.random((len(idx), count)) * (size - widths + 1)).astype(np.int64)
        axis = np.arange(size)[None, None, :]
        hit = ((axis >= starts[..., None]) & (axis < (starts + widths)[..., None])).any(axis=1)  # (k, size)
        hit_t = torch.from_numpy(hit).to(x.device)
        hit_t = hit_t[:, :, None] if dim == 1 else hit_t[:, None, :]
        mean = x.mean(dim=(1, 2), keepdim=True)
        b["audio"][idx] = torch.where(hit_t, mean, x)

    def _time_masks(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        self._masks(b, idx, rng, 1, self.cfg.time_masks, self.cfg.time_mask_frames)

    def _freq_masks(self, b: Batch, idx: torch.Tensor, rng: np.random.Generator) -> None:
        self._masks(b, idx, rng, 2, self.cfg.freq_masks, self.cfg.freq_mask_bins)


def make_augmenter(cfg: AugmentConfig, audio: AudioConfig, seed: int = 0) -> Augmenter | None:
    """The run's augmenter, or None when ``augment.enabled`` is false or ``augment.strength`` is 0."""
    if not cfg.enabled or cfg.strength <= 0:
        return None
    return Augmenter(cfg, audio, seed)


def augment_batches(batches: Iterable[Batch], augmenter: Augmenter | None, epoch: int,
                    rank: int = 0) -> Iterator[Batch]:
    """The train batches of one epoch of one worker, each through `augmenter` (unchanged when None)."""
    for i, batch in enumerate(batches):
        yield augmenter(batch, augmenter.rng(epoch, rank, i)) if augmenter is not None else batch
