"""The causal per-clip log-mel mean normalisation (a2bs.extract.audio.MelNormaliser) and the card field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from a2bs.config import AudioConfig
from a2bs.extract.audio import MelNormaliser
from a2bs.infer.streaming import StreamingLogMel
from a2bs.manifests import MelNorm, ModelCard
from a2bs.models import preset
from a2bs.models.commands import format_card
from a2bs.schema import MEL_DB_RANGE

N_MELS = 8
NORM_ATOL_DB = 1e-6  # float64 running sums; chunked cumsums differ from one whole cumsum by ~1e-12 dB


SPEECH_FLOOR_DB = -55.0


def _norm(prior_frames: float = 50.0, n_mels: int = N_MELS, speech_floor_db: float | None = None) -> MelNorm:
    prior = tuple(float(v) for v in np.linspace(-50.0, -30.0, n_mels))
    return MelNorm(prior_frames, prior) if speech_floor_db is None else MelNorm(prior_frames, prior, speech_floor_db)


def _with_silence(n: int, seed: int = 0) -> np.ndarray:
    """Speech-like frames (band means ~-35 dB) with pauses of ~-75 dB: a leading one and every 7th frame."""
    mel = _mel(n, seed)
    rng = np.random.default_rng(seed + 100)
    quiet = np.zeros(n, bool)
    quiet[: n // 5] = True
    quiet[::7] = True
    mel[quiet] = rng.uniform(-80.0, -70.0, (int(quiet.sum()), N_MELS))
    return mel


def _mel(n: int, seed: int = 0, n_mels: int = N_MELS) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-75.0, 5.0, (n, n_mels)).astype(np.float32)


def test_each_frame_is_minus_the_running_mean_with_the_prior() -> None:
    norm, mel = _norm(prior_frames=3.0), _mel(20)
    out = MelNormaliser(norm)(mel)
    prior = np.array(norm.prior_db)
    for t in range(len(mel)):
        mean = (3.0 * prior + mel[: t + 1].astype(np.float64).sum(axis=0)) / (3.0 + t + 1)
        np.testing.assert_allclose(out[t], mel[t] - mean + prior, atol=NORM_ATOL_DB)


def test_causal_a_frame_does_not_change_when_later_audio_is_appended() -> None:
    mel = _mel(300)
    short = MelNormaliser(_norm())(mel[:120])
    long = MelNormaliser(_norm())(np.concatenate([mel, _mel(500, seed=1)]))
    np.testing.assert_array_equal(short, long[:120])


@pytest.mark.parametrize("floor_db", [None, SPEECH_FLOOR_DB])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 64], [299, 1], [0, 13]])
def test_chunks_of_any_size_give_the_whole_clip_values(sizes: list[int], floor_db: float | None) -> None:
    mel = _with_silence(300)
    whole = MelNormaliser(_norm(speech_floor_db=floor_db))(mel)
    norm, parts, i, k = MelNormaliser(_norm(speech_floor_db=floor_db)), [], 0, 0
    while i < len(mel):
        n = sizes[k % len(sizes)]
        parts.append(norm(mel[i : i + n]))
        i, k = i + n, k + 1
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=NORM_ATOL_DB, rtol=0)


def test_frames_below_the_speech_floor_do_not_move_the_running_mean() -> None:
    mel = _with_silence(200)
    speech = np.clip(mel, *MEL_DB_RANGE).mean(axis=1) >= SPEECH_FLOOR_DB
    assert 0 < speech.sum() < len(mel) and not speech[:40].any()  # the clip opens with a pause
    out = MelNormaliser(_norm(speech_floor_db=SPEECH_FLOOR_DB))(mel)
    # The speech frames get exactly what they would with the pauses cut out of the clip ...
    speech_only = MelNormaliser(_norm(speech_floor_db=SPEECH_FLOOR_DB))(mel[speech])
    np.testing.assert_allclose(out[speech], speech_only, atol=NORM_ATOL_DB, rtol=0)
    # ... and a pause is normalised by the mean so far (the prior alone during the opening one).
    prior = np.array(_norm().prior_db)
    np.testing.assert_allclose(out[:40], mel[:40] - prior + prior, atol=1e-4)
    last_speech = np.flatnonzero(speech[:-1] & ~speech[1:])[0]  # a pause right after speech
    mean = (50.0 * prior + mel[: last_speech + 1][speech[: last_speech + 1]].astype(np.float64).sum(axis=0)) / (
        50.0 + speech[: last_speech + 1].sum())
    np.testing.assert_allclose(out[last_speech + 1], mel[last_speech + 1] - mean + prior, atol=1e-4)
    # Counting every frame instead gives other values: the pauses drag the mean down.
    assert np.abs(MelNormaliser(_norm())(mel)[speech] - out[speech]).max() > 5.0


def test_a_norm_without_the_floor_counts_every_frame_as_before() -> None:
    mel = _with_silence(120)
    old = _norm(prior_frames=3.0)  # as a card or manifest written before speech_floor_db reads back
    assert old.speech_floor_db == MEL_DB_RANGE[0]
    out = MelNormaliser(old)(mel)
    prior = np.array(old.prior_db)
    for t in range(len(mel)):  # the all-frames running mean, silence included
        mean = (3.0 * prior + np.clip(mel[: t + 1], *MEL_DB_RANGE).astype(np.float64).sum(axis=0)) / (3.0 + t + 1)
        np.testing.assert_allclose(out[t], mel[t] - mean + prior, atol=NORM_ATOL_DB)


def test_a_constant_tilt_changes_features_only_through_the_priors_fading_weight() -> None:
    k, mel = 50.0, _mel(400) * 0.8  # -60..4 dB: the tilt stays inside MEL_DB_RANGE (no clipping)
    tilt = np.linspace(-6.0, 6.0, N_MELS).astype(np.float32)  # a voice's / channel's fixed spectral tilt
    base, tilted = MelNormaliser(_norm(k))(mel), MelNormaliser(_norm(k))(mel + tilt)
    t = np.arange(1, len(mel) + 1, dtype=np.float64)[:, None]
    # x + c - (k mu0 + S_t + t c) / (k + t) + mu0 = the untilted feature + c k / (k + t)
    np.testing.assert_allclose(tilted - base, tilt[None] * k / (k + t), atol=1e-4)
    assert np.abs(tilted[-1] - base[-1]).max() < 0.12 * np.abs(tilt).max()  # 400 frames on: k/(k+t) = 0.11


def test_values_are_clipped_to_the_training_range_before_the_mean() -> None:
    mel = _mel(50)
    floor = mel.copy()
    floor[:10] = -80.0
    below = mel.copy()
    below[:10] = -120.0  # digital silence below the dB floor counts as the floor, as in training
    np.testing.assert_array_equal(MelNormaliser(_norm())(below), MelNormaliser(_norm())(floor))


def test_no_normalisation_without_a_card_setting() -> None:
    assert MelNormaliser.of(None) is None
    front = StreamingLogMel(AudioConfig())
    mel = _mel(5, n_mels=80)
    assert front.normalise(mel) is mel


def test_the_card_records_it_and_an_older_card_reads_as_off() -> None:
    card = dataclasses.replace(ModelCard.for_untrained(preset("tcn_poc", channels=16)), mel_norm=_norm(100.0))
    again = ModelCard.from_json(card.to_json(), "m.safetensors")
    assert again.mel_norm == card.mel_norm and isinstance(again.mel_norm.prior_db, tuple)
    older = json.loads(card.to_json())
    assert older["mel_norm"]["speech_floor_db"] == MEL_DB_RANGE[0]
    floored = dataclasses.replace(card, mel_norm=_norm(100.0, speech_floor_db=SPEECH_FLOOR_DB))
    assert ModelCard.from_json(floored.to_json(), "m.safetensors").mel_norm.speech_floor_db == SPEECH_FLOOR_DB
    del older["mel_norm"]["speech_floor_db"]  # a card written before the speech floor: every frame counts
    assert ModelCard.from_json(json.dumps(older), "old.safetensors").mel_norm == card.mel_norm
    del older["mel_norm"]  # a card written before the field existed
    assert ModelCard.from_json(json.dumps(older), "old.safetensors").mel_norm is None
    # `a2bs info` says so
    assert "running-mean normalised per clip (prior 100 frames)" in format_card(again, "m.safetensors", 1)
    assert f"(prior 100 frames, frames from {SPEECH_FLOOR_DB:g} dB)" in format_card(floored, "m.safetensors", 1)
    assert "running-mean" not in format_card(ModelCard.from_json(json.dumps(older), "old"), "old", 1)
