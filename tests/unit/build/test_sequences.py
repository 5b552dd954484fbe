"""Synchronisation, windowing, validation and splitting (no Ray, no media)."""

import numpy as np
import pytest

from a2bs.build.sequences import (
    SyncedClip,
    expected_windows,
    make_windows,
    synchronise,
    validate,
    window_params,
)
from a2bs.build.shards import assign_splits
from a2bs.config import SequenceConfig
from a2bs.extract.video import frame_interval_for
from a2bs.schema import N_BLENDSHAPES, N_TARGETS, POSE_REST, TARGET_INDEX


@pytest.mark.parametrize("fps, interval", [(60, 2), (120, 4), (24, 1), (30, 1), (59.94, 1), (90, 3)])
def test_frame_interval(fps: float, interval: int) -> None:
    assert frame_interval_for(fps, 30.0) == interval


def test_seed_jaw_ramp_interpolates_exactly() -> None:
    # The seed's example: jawOpen 0.2, 0.8, 0.4 at 0, 1/30, 2/30 s.
    frame_t = np.array([0.0, 1 / 30, 2 / 30])
    targets = np.zeros((3, N_TARGETS), np.float32)
    jaw = TARGET_INDEX["jawOpen"]
    targets[:, jaw] = [0.2, 0.8, 0.4]
    audio_t = np.arange(7) * 0.01
    out, mask = synchronise(audio_t, frame_t, targets, np.ones(3, bool))
    expected = np.interp(audio_t, frame_t, [0.2, 0.8, 0.4])
    np.testing.assert_allclose(out[:, jaw], expected, atol=1e-6)
    np.testing.assert_allclose(out[1:3, jaw], [0.2 + 0.6 * 0.3, 0.2 + 0.6 * 0.6], atol=1e-6)
    assert mask.tolist() == [1.0] * 7


def test_mask_follows_has_face_and_video_span() -> None:
    frame_t = np.arange(10) / 10.0  # 10 Hz for easy numbers, spans 0..0.9 s
    has_face = np.array([True] * 5 + [False] * 5)
    audio_t = np.arange(150) * 0.01  # 1.5 s of audio, longer than the video
    _, mask = synchronise(audio_t, frame_t, np.zeros((10, N_TARGETS), np.float32), has_face)
    assert mask[:40].all() and not mask[50:].any()
    no_face, m2 = synchronise(audio_t, frame_t, np.zeros((10, N_TARGETS), np.float32), np.zeros(10, bool))
    assert not m2.any() and np.allclose(no_face[:, N_BLENDSHAPES:], POSE_REST)


def test_windows_follow_the_seed_pattern() -> None:
    cfg = SequenceConfig()
    assert window_params(cfg, 100.0) == (24, 12)
    assert window_params(SequenceConfig(sequence_ms=10000, overlap_ms=8000), 100.0) == (1000, 200)
    n = 100
    clip = SyncedClip(np.arange(n) * 0.01, np.zeros((n, 80), np.float32), np.zeros((n, N_TARGETS), np.float32),
                      np.ones(n, np.float32), np.ones(n, np.float32))
    w = make_windows(clip, cfg, 100.0)
    assert len(w["start_s"]) == expected_windows(n, cfg, 100.0) == 7  # starts 0, 12, ..., 72
    np.testing.assert_allclose(w["start_s"][:3], [0.0, 0.12, 0.24])
    assert w["audio"].shape == (7, 24, 80) and w["targets"].shape == (7, 24, N_TARGETS)


def test_windows_without_enough_face_are_dropped() -> None:
    n = 48
    mask = np.zeros(n, np.float32)
    mask[:18] = 1.0  # window 0 (0-23): 75% face; window 1 (12-35): 25%; window 2 (24-47): 0%
    clip = SyncedClip(np.arange(n) * 0.01, np.zeros((n, 80), np.float32), np.zeros((n, N_TARGETS), np.float32),
                      np.zeros(n, np.float32), mask)
    w = make_windows(clip, SequenceConfig(), 100.0)
    np.testing.assert_allclose(w["start_s"], [0.0])


def test_validation_clips_and_counts_only_outliers() -> None:
    mel = np.full((5, 80), -20.0, np.float32)
    mel[0, 0], mel[1, 1] = -120.0, 30.0
    targets = np.full((5, N_TARGETS), 0.5, np.float32)
    targets[2, 0] = 1.3  # blendshape above 1
    targets[3, N_BLENDSHAPES] = -1.5  # pose below -1
    mel_v, tgt_v, counts = validate(mel, targets)
    assert counts.mel_clipped == 2 and counts.target_clipped[0] == 1 and counts.target_clipped[N_BLENDSHAPES] == 1
    assert counts.target_clipped.sum() == 2
    assert mel_v.min() == -80.0 and mel_v.max() == 10.0 and tgt_v[2, 0] == 1.0 and tgt_v[3, N_BLENDSHAPES] == -1.0
    np.testing.assert_array_equal(tgt_v[4], targets[4])  # in-range values untouched (no z-scoring)


def test_split_is_deterministic_and_disjoint() -> None:
    keys = [f"spk{i}" for i in range(10)]
    a = assign_splits(keys, 0.2, seed=0)
    assert a == assign_splits(list(reversed(keys)), 0.2, seed=0)
    assert sum(v == "val" for v in a.values()) == 2
    assert sum(v == "val" for v in assign_splits(["x", "y"], 0.2, 0).values()) == 1
    assert set(assign_splits(["only"], 0.2, 0).values()) == {"train"}
