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


def test_segment_ranges_equal_the_whole_file(tmp_path) -> None:
    # 44.1 kHz input: the resampler's phase only matches the whole file's because each range starts
    # on the 10 ms grid; the margin keeps the resampler's start-up and the window padding out.
    import subprocess
    import wave

    from a2bs.extract.audio import (
        extract_audio_features,
        ffmpeg_exe,
        range_audio_features,
    )
    from a2bs.extract.media import probe
    from a2bs.extract.store import plan_segments

    rate = 44100
    t = np.arange(rate * 12) / rate
    rng = np.random.default_rng(0)
    signal = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(t * 3) > 0) + 0.05 * rng.standard_normal(len(t)))
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    # The same sound in an MP4 whose audio starts 0.3 s after its video (ffmpeg seeks from the container's start).
    late = tmp_path / "late.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=32x32:r=30:d=12.5",
                    "-itsoffset", "0.3", "-i", str(path), "-c:v", "libx264", "-c:a", "aac", "-aac_pns", "0",
                    str(late)], check=True)
    offset_s = probe(late).audio_offset_s
    assert 0.2 < offset_s < 0.4
    cfg = AudioConfig()
    for media, offset in ((path, 0.0), (late, offset_s)):
        whole = extract_audio_features(media, cfg)
        parts = [range_audio_features(media, cfg, s.start_s, s.end_s, 1.0, offset) for s in plan_segments(12.0, 5.0)]
        assert len(parts) == 3  # 0-5 s, 5-10 s, then 10 s to the end
        np.testing.assert_array_equal(np.concatenate([p.time_s for p, _ in parts]), whole.time_s)
        np.testing.assert_allclose(np.concatenate([p.mel_db for p, _ in parts]), whole.mel_db, rtol=0, atol=1e-3)
        np.testing.assert_allclose(np.concatenate([p.vad for p, _ in parts]), whole.vad, rtol=0, atol=1e-6)
        assert parts[-1][1] == whole.duration_s  # where the last range's audio ends: the file's duration
