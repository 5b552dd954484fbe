"""Audio features against librosa's reference computation."""

import librosa
import numpy as np

from a2bs.config import AudioConfig
from a2bs.extract.audio import features_from_samples, log_mel

CFG = AudioConfig()


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CFG.sample_rate)) / CFG.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_log_mel_equals_librosa_reference() -> None:
    y = _speechlike(1.37)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=y, sr=CFG.sample_rate, n_fft=CFG.n_fft, hop_length=CFG.hop_length, win_length=CFG.win_length,
            window="hann", center=True, pad_mode="constant", power=2.0, n_mels=CFG.n_mels,
            fmin=CFG.fmin_hz, fmax=CFG.fmax_hz,
        ),
        ref=1.0, amin=CFG.db_amin, top_db=None,
    ).T
    ours = log_mel(y, CFG)
    assert ours.shape == ref.shape == (1 + len(y) // CFG.hop_length, CFG.n_mels)
    # Tolerance: 1e-3 dB. librosa computes the STFT in float32; ours is float64.
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_frame_rate_and_count_match_duration() -> None:
    for seconds in (0.5, 2.0, 3.33):
        feats = features_from_samples(_speechlike(seconds), CFG)
        assert feats.frame_rate_hz == 100.0
        assert feats.mel_db.shape[0] == 1 + int(seconds * CFG.sample_rate) // CFG.hop_length
        assert abs(feats.time_s[-1] - seconds) < 0.01
        assert feats.rms.shape == feats.zcr.shape == feats.vad.shape == feats.time_s.shape


def test_vad_and_zcr_respond_to_signal() -> None:
    silence = np.zeros(CFG.sample_rate, np.float32)
    y = np.concatenate([silence, _speechlike(1.0)])
    feats = features_from_samples(y, CFG)
    assert feats.vad[:90].max() < 0.05 and feats.vad[110:190].min() > 0.95
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, CFG.sample_rate).astype(np.float32)
    hum = (0.5 * np.sin(2 * np.pi * 100 * np.arange(CFG.sample_rate) / CFG.sample_rate)).astype(np.float32)
    assert features_from_samples(noise, CFG).zcr.mean() > 5 * features_from_samples(hum, CFG).zcr.mean()
