"""Metrics on hand-made arrays against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2bs.schema import BLENDSHAPE_INDEX, MOUTH_INDICES, N_BLENDSHAPES, N_TARGETS
from a2bs.train.metrics import (
    MetricAccumulator,
    format_target_table,
    pearson,
    quaternion_angle_deg,
    target_table,
)

JAW = BLENDSHAPE_INDEX["jawOpen"]
QW = N_BLENDSHAPES + 3


def _zeros(t: int) -> np.ndarray:
    y = np.zeros((t, N_TARGETS))
    y[:, QW] = 1.0  # rest pose
    return y


def test_pearson_edge_cases() -> None:
    assert pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 6])) == pytest.approx(1.0)
    assert math.isnan(pearson(np.array([1.0, 2, 3]), np.ones(3)))  # target does not move: undefined
    assert pearson(np.ones(3), np.array([1.0, 2, 3])) == 0.0  # constant prediction of a moving target
    assert math.isnan(pearson(np.array([1.0]), np.array([1.0])))


def test_mae_groups_exclude_tongue_and_masked_frames() -> None:
    assert len(MOUTH_INDICES) == 27  # jawForward..jawOpen (4) + 23 mouth* channels
    acc = MetricAccumulator()
    for clip, t in (("a", 4), ("b", 3)):
        target, pred = _zeros(t + 1), _zeros(t + 1)
        pred[:, JAW] = 0.51
        pred[:, BLENDSHAPE_INDEX["tongueOut"]] = 1.0  # unobserved: never counts
        pred[-1, :N_BLENDSHAPES] = 1.0  # the last frame has no face: masked out
        mask = np.ones(t + 1)
        mask[-1] = 0.0
        acc.update(pred[None], target[None], mask[None], [clip])
    m = acc.compute()
    assert (m["n_clips"], m["n_frames"]) == (2, 7)
    assert m["mae"] == pytest.approx(0.51 / 51)
    assert m["mouth_mae"] == pytest.approx(0.51 / 27)
    assert m["pose_mae"] == 0.0
    assert m["per_channel_mae"]["jawOpen"] == pytest.approx(0.51)
    assert m["per_channel_mae"]["mouthClose"] == 0.0
    assert "tongueOut" not in m["per_channel_mae"] and "headQw" in m["per_channel_mae"]
    assert len(m["per_channel_mae"]) == 51 + 7
    assert math.isnan(m["jaw_corr"])  # no target moves: correlations not available


def test_pose_metrics() -> None:
    target, pred = _zeros(5), _zeros(5)
    pred[:, N_BLENDSHAPES] = 0.03  # tx off by 3 cm
    pred[:, N_BLENDSHAPES + 4] = 0.06  # qx
    pred[:, QW] = math.sqrt(1 - 0.06**2)
    acc = MetricAccumulator()
    acc.update(torch.from_numpy(pred), torch.from_numpy(target))  # torch, unbatched (T, 59)
    m = acc.compute()
    assert m["pose_mae"] == pytest.approx((0.03 + 0.06) / 6)  # six independent slots (qw derived)
    assert m["pose_translation_mae_m"] == pytest.approx(0.01)
    assert m["pose_rotation_deg_mae"] == pytest.approx(math.degrees(2 * math.asin(0.06)))
    assert quaternion_angle_deg(np.array([0.0, 1, 0, 0]), np.array([0.0, -1, 0, 0])) == pytest.approx(0.0)


def test_correlations_are_per_clip_and_frame_weighted() -> None:
    acc = MetricAccumulator()
    # Clip a (4 frames): jaw prediction is an affine copy of the truth -> r = +1.
    ta, pa = _zeros(4), _zeros(4)
    ta[:, JAW] = [0.0, 0.1, 0.2, 0.3]
    pa[:, JAW] = 2 * ta[:, JAW] + 0.1
    # Lip channels in clip a: mouthClose r = 1, mouthFunnel r = 1/sqrt(3), mouthPucker constant pred -> r = 0.
    ta[:, BLENDSHAPE_INDEX["mouthClose"]] = pa[:, BLENDSHAPE_INDEX["mouthClose"]] = [0, 1, 0, 1]
    ta[:, BLENDSHAPE_INDEX["mouthFunnel"]] = [0, 1, 0, 1]
    pa[:, BLENDSHAPE_INDEX["mouthFunnel"]] = [0, 1, 1, 1]
    ta[:, BLENDSHAPE_INDEX["mouthPucker"]] = [0, 1, 0, 1]
    pa[:, BLENDSHAPE_INDEX["mouthPucker"]] = 0.5
    # Clip b (3 frames): jaw prediction anti-correlated -> r = -1; lips do not move (skipped).
    tb, pb = _zeros(3), _zeros(3)
    tb[:, JAW] = [0.3, 0.1, 0.2]
    pb[:, JAW] = [0.1, 0.3, 0.2]
    # Clip a arrives in two batches (whole-clip concatenation, not per-window correlation).
    acc.update(pa[None, :2], ta[None, :2], None, ["a"])
    acc.update(np.stack([pa[2:], pb[:2]]), np.stack([ta[2:], tb[:2]]), None, ["a", "b"])
    acc.update(pb[None, 2:], tb[None, 2:], None, ["b"])
    m = acc.compute()
    assert m["jaw_corr"] == pytest.approx((4 * 1.0 + 3 * -1.0) / 7)
    assert m["lip_corr"] == pytest.approx((1.0 + 1 / math.sqrt(3) + 0.0) / 3)
    assert math.isnan(m["smile_corr"])  # smiles never move


def test_overlapping_windows_count_each_frame_once() -> None:
    truth = _zeros(6)
    truth[:, JAW] = [0.0, 0.5, 0.1, 0.4, 0.2, 0.3]
    pred = truth.copy()
    pred[:, JAW] += [0.0, 0.1, 0.0, 0.1, 0.0, 0.1]
    acc = MetricAccumulator()
    acc.update(np.stack([pred[2:6], pred[0:4]]), np.stack([truth[2:6], truth[0:4]]), None, ["c", "c"], [2, 0])
    m = acc.compute()
    assert m["n_frames"] == 6
    assert m["per_channel_mae"]["jawOpen"] == pytest.approx(0.3 / 6)
    assert m["jaw_corr"] == pytest.approx(pearson(pred[:, JAW], truth[:, JAW]))


def test_empty_accumulator_and_bad_input() -> None:
    acc = MetricAccumulator()
    m = acc.compute()
    assert m["n_frames"] == 0 and math.isnan(m["mae"])
    with pytest.raises(ValueError):
        acc.update(np.zeros((1, 3, 52)), np.zeros((1, 3, 52)))
    with pytest.raises(ValueError, match="clip ids"):
        acc.update(np.zeros((2, 3, 59)), np.zeros((2, 3, 59)), None, ["only-one"])


def test_target_table() -> None:
    metrics = {"mae": 0.04, "jaw_corr": 0.75, "lip_corr": 0.5, "mouth_mae": 0.05}
    rows = {r["metric"]: r["passed"] for r in target_table(metrics)}
    assert rows == {"mae": True, "jaw_corr": True, "lip_corr": False, "mouth_mae": False}
    assert not {r["metric"]: r["passed"] for r in target_table({**metrics, "jaw_corr": math.nan})}["jaw_corr"]
    md = format_target_table({**metrics, "lip_corr": math.nan})
    assert md.splitlines()[0] == "| metric | value | target | result |"
    assert "| mae | 0.0400 | < 0.05 | PASS |" in md and "| lip_corr | n/a | > 0.6 | FAIL |" in md
