"""Audio track -> 16 kHz mono -> 100 Hz log-mel, RMS, zero-crossing rate and voice activity.

All features share one timeline: frame ``t`` is centred on sample ``t * hop_length`` (librosa's
``center=True`` with zero padding), so its timestamp is ``t * hop_length / sample_rate`` seconds and
a clip of ``N`` samples gives ``1 + N // hop_length`` frames. The STFT here is our own numpy code
(checked against librosa in the tests) so that the streaming front end in ``a2bs.infer.streaming``
can reuse exactly the same window, filterbank and dB mapping frame by frame.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2bs.config import AudioConfig
from a2bs.errors import InputError
from a2bs.extract.store import Segment, in_segment
from a2bs.manifests import MelNorm
from a2bs.schema import MEL_DB_RANGE


@dataclass(frozen=True)
class AudioFeatures:
    """Per-frame audio features at ``sample_rate / hop_length`` Hz (100 Hz by default)."""

    sample_rate: int
    frame_rate_hz: float
    time_s: np.ndarray  # (A,) float64, frame centres
    mel_db: np.ndarray  # (A, n_mels) float32
    rms: np.ndarray  # (A,) float32
    zcr: np.ndarray  # (A,) float32
    vad: np.ndarray  # (A,) float32 in [0, 1]
    duration_s: float


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    import librosa

    win = librosa.filters.get_window("hann", win_length, fftbins=True)
    return librosa.util.pad_center(win, size=n_fft).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz, fmax=fmax_hz).astype(
        np.float64
    )


def stft_window(cfg: AudioConfig) -> np.ndarray:
    """Hann window of ``win_length`` centred in ``n_fft`` samples (float64)."""
    return _window(cfg.n_fft, cfg.win_length)


def mel_filterbank(cfg: AudioConfig) -> np.ndarray:
    """Slaney-normalised mel filterbank, shape (n_mels, n_fft // 2 + 1)."""
    return _mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz)


def power_to_db(power: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """10 log10(power / ref) with a fixed reference (no per-clip max), floored at ``db_amin``."""
    return 10.0 * np.log10(np.maximum(power, cfg.db_amin)) - 10.0 * np.log10(max(cfg.db_ref, cfg.db_amin))


def log_mel_frames(frames: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Log-mel (dB) of already-cut analysis frames, shape (A, n_fft) -> (A, n_mels) float32."""
    spectrum = np.fft.rfft(frames.astype(np.float64) * stft_window(cfg), n=cfg.n_fft, axis=-1)  # (A, n_fft//2+1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filterbank(cfg).T  # (A, n_mels)
    return power_to_db(mel, cfg).astype(np.float32)


def frame_signal(samples: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Centred analysis frames (zero padding of n_fft // 2 each side), shape (1 + N // hop, n_fft)."""
    pad = cfg.n_fft // 2
    padded = np.pad(samples, (pad, pad))  # float64 conversion happens per block, not here
    n_frames = 1 + len(samples) // cfg.hop_length
    return np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length][:n_frames]


# Frames per block: bounds the float64/complex temporaries (~4 MB a block) however long the clip.
BLOCK_FRAMES = 2048


def log_mel(samples: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """80-band log-mel in dB for a mono signal at ``cfg.sample_rate``: (1 + N // hop, n_mels) float32."""
    frames = frame_signal(samples, cfg)  # a strided view: no copy
    out = np.empty((frames.shape[0], cfg.n_mels), dtype=np.float32)
    for i in range(0, frames.shape[0], BLOCK_FRAMES):
        out[i : i + BLOCK_FRAMES] = log_mel_frames(frames[i : i + BLOCK_FRAMES], cfg)
    return out


def frame_rms_zcr(samples: np.ndarray, cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """RMS energy and zero-crossing rate over each ``win_length`` window on the same centred grid."""
    frames = frame_signal(samples, cfg)
    lo = (cfg.n_fft - cfg.win_length) // 2
    rms = np.empty(frames.shape[0], np.float32)
    zcr = np.empty(frames.shape[0], np.float32)
    for i in range(0, frames.shape[0], BLOCK_FRAMES):
        win = frames[i : i + BLOCK_FRAMES, lo : lo + cfg.win_length]  # the 25 ms the window weights
        rms[i : i + BLOCK_FRAMES] = np.sqrt(np.mean(win**2, axis=1))
        signs = np.signbit(win)
        zcr[i : i + BLOCK_FRAMES] = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
    return rms, zcr


def voice_activity(rms: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Soft VAD in [0, 1]: 0 well below ``vad_threshold_db`` dBFS, 1 well above (a logistic ramp)."""
    level_db = 20.0 * np.log10(np.maximum(rms, 1e-8))
    return (1.0 / (1.0 + np.exp(-(level_db - cfg.vad_threshold_db) / (cfg.vad_ramp_db / 4.0)))).astype(np.float32)


def features_from_samples(samples: np.ndarray, cfg: AudioConfig) -> AudioFeatures:
    """All 100 Hz features of a mono float signal at ``cfg.sample_rate``."""
    samples = np.asarray(samples, dtype=np.float32)
    rms, zcr = frame_rms_zcr(samples, cfg)
    mel = log_mel(samples, cfg)
    n = mel.shape[0]
    return AudioFeatures(
        sample_rate=cfg.sample_rate,
        frame_rate_hz=cfg.sample_rate / cfg.hop_length,
        time_s=np.arange(n, dtype=np.float64) * cfg.hop_length / cfg.sample_rate,
        mel_db=mel,
        rms=rms,
        zcr=zcr,
        vad=voice_activity(rms, cfg),
        duration_s=len(samples) / cfg.sample_rate,
    )


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def load_audio(path: str | Path, sample_rate: int, start_s: float = 0.0, duration_s: float | None = None) -> np.ndarray:
    """Decode any audio/video file's first audio stream to mono float32 at `sample_rate`.

    Args:
        start_s, duration_s: decode only this range (ffmpeg input seeking: it starts at the packet
            before `start_s` and trims to the sample; ``None`` = to the end).

    Raises:
        InputError: the file has no audio stream, or ffmpeg cannot decode it.
    """
    seek = ["-ss", f"{start_s:.6f}"] if start_s > 0 else []
    seek += ["-t", f"{duration_s:.6f}"] if duration_s is not None else []
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", *seek, "-i", str(path),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip()
    samples = np.frombuffer(proc.stdout, dtype=np.float32)
    if proc.returncode != 0 and samples.size == 0:
        if "matches no streams" in err or "Stream map" in err:
            raise InputError(path, "no audio track")
        last = err.splitlines()[-1] if err else f"ffmpeg exit {proc.returncode}"
        raise InputError(path, f"cannot decode audio ({last})")
    # A truncated file decodes up to the cut and then fails: keep what was decoded.
    if samples.size == 0:
        raise InputError(path, "audio track is empty (zero length)" if start_s <= 0 else
                         f"no audio from {start_s:.2f} s on (truncated or damaged file)")
    return samples  # read-only view of ffmpeg's output: no copy (115 MB for 30 minutes)


def extract_audio_features(path: str | Path, cfg: AudioConfig) -> AudioFeatures:
    """Decode `path` and compute its 100 Hz features."""
    return features_from_samples(load_audio(path, cfg.sample_rate), cfg)


def range_audio_features(path: str | Path, cfg: AudioConfig, start_s: float, end_s: float,
                         margin_s: float, offset_s: float = 0.0) -> tuple[AudioFeatures, float]:
    """The 100 Hz features of the frames centred in ``[start_s, end_s)`` (``end_s`` inf = to the end),
    equal to the whole-file values.

    The audio is decoded from `margin_s` before the range to `margin_s` after it, starting on the
    frame grid (a multiple of ``hop_length`` samples, 10 ms), so the resampler keeps the whole file's
    phase. The frames kept are at least `margin_s` from where decoding starts or stops, so neither the
    window's zero padding (``n_fft // 2`` samples) nor the resampler's start-up reaches them:
    `margin_s` must exceed both (16 ms and ~1 ms at the defaults; docs/scaling.md).
    `offset_s` is where the audio stream starts after the container's start (ffmpeg seeks from the
    latter; the timeline's t = 0 is the stream's first sample, as in a whole-file decode).
    Returns the features (timestamps on the file's timeline) and where the decoded audio ends in
    seconds (the file's audio duration when the range runs to the end).
    """
    hop_s = cfg.hop_length / cfg.sample_rate
    first = max(0, int(np.floor((start_s - margin_s) / hop_s)))  # frame index where decoding starts
    decode_s = first * cfg.hop_length / cfg.sample_rate
    # -t counts from where reading starts: the container's start when there is no seek (add the offset).
    length_s = None if not np.isfinite(end_s) else end_s + margin_s - decode_s + offset_s
    samples = load_audio(path, cfg.sample_rate, decode_s + offset_s if decode_s > 0 else 0.0, length_s)
    feats = features_from_samples(samples, cfg)
    times = (np.arange(feats.mel_db.shape[0], dtype=np.float64) + first) * cfg.hop_length / cfg.sample_rate
    keep = in_segment(times, Segment(-1, start_s, end_s))
    part = AudioFeatures(feats.sample_rate, feats.frame_rate_hz, times[keep], feats.mel_db[keep], feats.rms[keep],
                         feats.zcr[keep], feats.vad[keep], feats.duration_s)
    return part, decode_s + len(samples) / cfg.sample_rate


class MelNormaliser:
    """Causal per-clip log-mel mean normalisation: ``x_t - m_t + prior_db``; one object per clip or stream.

    ``m_t = (prior_frames * prior_db + sum_{i<=t, i speech} x_i) / (prior_frames + #speech frames <= t)``
    is the clip's running mean log-mel over its speech frames up to and including frame ``t``, starting
    from the training set's mean ``prior_db`` (values clipped to ``schema.MEL_DB_RANGE`` first, as the
    data stage and the model do). A speech frame is one whose mean over the bands is at least
    ``speech_floor_db`` (:meth:`speech`); the others are normalised by the mean so far but do not move
    it. A frame's output depends only on it and the frames before, so feeding a clip in chunks of any
    size gives the whole-clip values: training, offline and streaming see the same features.
    """

    def __init__(self, norm: MelNorm) -> None:
        self.prior_db = np.asarray(norm.prior_db, np.float64)
        self.sum_db = norm.prior_frames * self.prior_db  # running sum with the prior folded in
        self.frames = float(norm.prior_frames)
        self.speech_floor_db = norm.speech_floor_db

    @classmethod
    def of(cls, norm: MelNorm | None) -> MelNormaliser | None:
        """A fresh normaliser for a clip or stream (None when `norm` is None: the raw log-mel)."""
        return None if norm is None else cls(norm)

    @staticmethod
    def speech(mel_db: np.ndarray, speech_floor_db: float) -> np.ndarray:
        """(n,) bool: the frames of clipped ``(n, n_mels)`` log-mel that enter the running mean (their
        mean over the bands is at least `speech_floor_db`; every frame at ``MEL_DB_RANGE[0]``)."""
        return mel_db.mean(axis=1) >= speech_floor_db

    def __call__(self, mel_db: np.ndarray) -> np.ndarray:
        """Normalise the clip's next ``(n, n_mels)`` frames (float32 out)."""
        x = np.clip(np.asarray(mel_db, np.float64), *MEL_DB_RANGE)
        if not len(x):
            return x.astype(np.float32)
        counted = self.speech(x, self.speech_floor_db).astype(np.float64)
        sums = self.sum_db + np.cumsum(x * counted[:, None], axis=0)
        counts = self.frames + np.cumsum(counted)
        out = x - sums / counts[:, None] + self.prior_db
        self.sum_db, self.frames = sums[-1], counts[-1]
        return out.astype(np.float32)
