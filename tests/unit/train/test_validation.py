"""Validation scoring (shared by training and `a2bs evaluate`) on hand-made windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from a2bs.config import LossConfig
from a2bs.schema import N_BLENDSHAPES, N_TARGETS
from a2bs.train.losses import TERMS, compute_loss
from a2bs.train.metrics import SCALAR_METRICS
from a2bs.train.validation import merge_metrics, score_batches

T = 8  # frames per window
OVERLAP = 4  # frames shared by consecutive windows (step 4)
RATE_HZ = 100.0
QW = N_BLENDSHAPES + 3


def _window(clip_id: str, start_frame: int, error: float) -> dict[str, np.ndarray]:
    """One window whose prediction (= its audio, through an identity model) misses every blendshape by `error`."""
    targets = np.zeros((1, T, N_TARGETS), np.float32)
    targets[..., QW] = 1.0  # rest pose
    pred = targets.copy()
    pred[..., :N_BLENDSHAPES] += error
    return {"audio": pred, "targets": targets, "vad": np.ones((1, T), np.float32),
            "mask": np.ones((1, T), np.float32), "clip_id": np.array([clip_id], dtype=object),
            "start_s": np.array([start_frame / RATE_HZ])}


def _batch(*windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([w[k] for w in windows]) for k in windows[0]}


def test_each_frame_scored_once_from_its_most_central_window() -> None:
    # Window 0 scores clip frames 2..5, window 1 frames 6..9: a frame in both counts from window 0 only
    # up to frame 5, so the MAE is the mean of the two windows' errors, not window 0's.
    batches = [_batch(_window("a", 0, 0.1), _window("a", 4, 0.3))]
    scored = score_batches(nn.Identity(), batches, RATE_HZ, OVERLAP, torch.device("cpu"))
    m = scored.metrics
    assert m["n_clips"] == 1 and m["n_frames"] == 8
    assert m["mae"] == pytest.approx(0.2, abs=1e-6)
    assert m["pose_mae"] == pytest.approx(0.0, abs=1e-7)
    assert scored.clip_frames == {"a": 8}
    assert not scored.loss_sums.any()  # no loss config: metrics only


def test_keep_clip_and_loss_sums() -> None:
    rows = [_window("a", 0, 0.1), _window("b", 0, 0.5), _window("a", 4, 0.3)]
    cfg = LossConfig()
    scored = score_batches(nn.Identity(), [_batch(*rows[:2]), _batch(rows[2])], RATE_HZ, OVERLAP,
                           torch.device("cpu"), loss_cfg=cfg, loss_epoch=5, keep_clip=lambda c: c == "a")
    assert scored.metrics["n_clips"] == 1 and set(scored.clip_frames) == {"a"}
    assert scored.metrics["mae"] == pytest.approx(0.2, abs=1e-6)
    assert scored.loss_sums[-1] == 2 * T  # valid frames of the kept rows
    # Both kept rows come in separate batches of one row each: the sums are frame-weighted per batch.
    expected = np.zeros(len(TERMS) + 1)
    for w in (rows[0], rows[2]):
        terms = compute_loss(torch.from_numpy(w["audio"]), torch.from_numpy(w["targets"]), cfg, 5,
                             torch.from_numpy(w["mask"]), torch.from_numpy(w["vad"]))
        expected += np.array([float(terms[k]) for k in (*TERMS, "total")]) * T
    np.testing.assert_allclose(scored.loss_sums[:-1], expected, rtol=1e-6)


def test_no_rows_kept_gives_empty_metrics() -> None:
    scored = score_batches(nn.Identity(), [_window("a", 0, 0.1)], RATE_HZ, OVERLAP, torch.device("cpu"),
                           keep_clip=lambda _clip_id: False)
    assert scored.metrics["n_frames"] == 0 and math.isnan(scored.metrics["mae"])


def test_merge_metrics_weights_by_frames() -> None:
    a = {"n_frames": 30, "n_clips": 1, **dict.fromkeys(SCALAR_METRICS, 0.1), "jaw_corr": math.nan,
         "per_channel_mae": {"jawOpen": 0.2}}
    b = {"n_frames": 10, "n_clips": 2, **dict.fromkeys(SCALAR_METRICS, 0.5), "jaw_corr": 0.8,
         "per_channel_mae": {"jawOpen": 0.6}}
    merged = merge_metrics([a, b, {"n_frames": 0}])
    assert merged["n_frames"] == 40 and merged["n_clips"] == 3
    assert merged["mae"] == merged["lip_corr"] == pytest.approx(0.2)
    assert merged["jaw_corr"] == pytest.approx(0.8)  # NaN parts are left out
    assert merged["per_channel_mae"]["jawOpen"] == pytest.approx(0.3)
    assert merge_metrics([a]) is a
    empty = merge_metrics([])
    assert empty["n_frames"] == 0 and math.isnan(empty["mae"])


def test_group_of_scores_each_speaker_on_its_own() -> None:
    """Per-speaker metrics (a2bs evaluate): each group's clips alone, and the whole pass unchanged."""
    rows = [_window("a1", 0, 0.1), _window("b1", 0, 0.5), _window("a2", 0, 0.3), _window("a1", 4, 0.1)]
    speakers = {"a1": "anna", "a2": "anna", "b1": "ben"}
    plain = score_batches(nn.Identity(), [_batch(*rows)], RATE_HZ, OVERLAP, torch.device("cpu"))
    grouped = score_batches(nn.Identity(), [_batch(*rows[:3]), _batch(rows[3])], RATE_HZ, OVERLAP,
                            torch.device("cpu"), group_of=speakers)
    assert grouped.metrics["mae"] == pytest.approx(plain.metrics["mae"], abs=1e-7) and not plain.groups
    assert list(grouped.groups) == ["anna", "ben"]
    anna, ben = grouped.groups["anna"], grouped.groups["ben"]
    assert (anna["n_clips"], ben["n_clips"]) == (2, 1)
    assert anna["n_frames"] + ben["n_frames"] == grouped.metrics["n_frames"]
    # anna: a1 has 8 frames off by 0.1, a2 4 frames off by 0.3 (a lone window keeps its central frames).
    assert anna["mae"] == pytest.approx((8 * 0.1 + 4 * 0.3) / 12, abs=1e-6)
    assert ben["mae"] == pytest.approx(0.5, abs=1e-6)
