"""Loss terms: zero on perfect predictions, positive on known errors, masking, silence gating, staging."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from a2bs.config import LossConfig
from a2bs.schema import BLENDSHAPE_INDEX, MOUTH_INDICES, N_BLENDSHAPES, N_TARGETS
from a2bs.train.losses import TERMS, channel_weights, compute_loss, stage_weights

JAW = BLENDSHAPE_INDEX["jawOpen"]
TONGUE = BLENDSHAPE_INDEX["tongueOut"]
CFG = LossConfig()
ALL_ON = 100  # an epoch after every stage has started


def _target(b: int = 2, t: int = 20) -> torch.Tensor:
    """Smoothly moving blendshapes and pose, with the mouth still and closed in frames 0..9 (silence)."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(b, t, N_TARGETS, generator=g).cumsum(1) / t * 0.5  # (B, T, 59) slowly rising
    y[:, :10, :N_BLENDSHAPES] = y[:, :1, :N_BLENDSHAPES]  # frames 0..9 held still
    y[:, :10, JAW] = 0.0  # ... and closed
    y[..., N_BLENDSHAPES:] = 0.0
    y[..., N_BLENDSHAPES + 3] = 1.0  # rest pose (qw = 1)
    return y


def _vad(b: int = 2, t: int = 20) -> torch.Tensor:
    vad = torch.ones(b, t)
    vad[:, :10] = 0.0  # silence first, then speech
    return vad


def test_all_terms_zero_on_perfect_prediction() -> None:
    y = _target()
    terms = compute_loss(y.clone(), y, CFG, epoch=ALL_ON, vad=_vad())
    assert set(terms) == {*TERMS, "total"}
    for name, value in terms.items():
        assert value.ndim == 0
        assert float(value) == pytest.approx(0.0, abs=1e-9), name


def test_base_term_known_value() -> None:
    y = _target()
    pred = y.clone()
    pred[..., BLENDSHAPE_INDEX["jawOpen"]] += 0.5  # |err| = 0.5 > beta: smooth L1 = 0.5 - beta/2
    terms = compute_loss(pred, y, CFG, epoch=0)
    n_weighted = 51 + 7 * CFG.pose_loss_scale  # observed blendshapes + pose channels
    expected = (0.5 - CFG.smooth_l1_beta / 2) / n_weighted
    assert float(terms["base"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(CFG.base_weight * expected, rel=1e-5)


def test_temporal_term_sees_derivatives_only() -> None:
    y = _target()
    offset = compute_loss(y + 0.1, y, CFG, epoch=ALL_ON)
    assert float(offset["temporal"]) == pytest.approx(0.0, abs=1e-7)  # a constant offset has equal derivatives
    assert float(offset["base"]) > 0
    pred = y.clone()
    pred[:, 15, JAW] += 0.2  # a spike: 1st and 2nd differences differ
    spike = compute_loss(pred, y, CFG, epoch=ALL_ON)
    assert float(spike["temporal"]) > 0


def test_unobserved_channel_and_masked_frames_are_ignored() -> None:
    y = _target()
    pred = y.clone()
    pred[..., TONGUE] = 1.0 - y[..., TONGUE]  # tongueOut is never observed
    assert float(compute_loss(pred, y, CFG, epoch=ALL_ON)["total"]) == pytest.approx(0.0, abs=1e-9)
    assert channel_weights(CFG)[TONGUE] == 0
    mask = torch.ones(2, 20)
    mask[:, 12:] = 0.0  # no face from frame 12
    pred = y.clone()
    pred[:, 13:, JAW] += 0.3
    pred[:, 13:, N_BLENDSHAPES] = 0.5  # even a pose far out of range
    terms = compute_loss(pred, y, CFG, epoch=ALL_ON, mask=mask, vad=_vad())
    for name in TERMS:
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-9), name
    # An all-masked batch is 0 (not NaN).
    empty = compute_loss(pred, y, CFG, epoch=ALL_ON, mask=torch.zeros(2, 20), vad=_vad())
    assert float(empty["total"]) == 0.0


def test_silence_term_acts_only_where_vad_is_zero() -> None:
    y, vad = _target(), _vad()
    jitter = torch.zeros_like(y)
    jitter[:, 1::2, BLENDSHAPE_INDEX["mouthFunnel"]] = 0.1  # alternating: the mouth moves
    jitter[:, :, JAW] = 0.3  # and opens more than the truth
    speech_only = y.clone()
    speech_only[:, 10:] += jitter[:, 10:]
    assert float(compute_loss(speech_only, y, CFG, epoch=ALL_ON, vad=vad)["silence"]) == 0.0
    silence_only = y.clone()
    silence_only[:, :10] += jitter[:, :10]
    assert float(compute_loss(silence_only, y, CFG, epoch=ALL_ON, vad=vad)["silence"]) > 0
    # The same errors with VAD above the threshold everywhere (or no VAD given): no silence term.
    assert float(compute_loss(silence_only, y, CFG, epoch=ALL_ON, vad=torch.ones(2, 20))["silence"]) == 0.0
    assert float(compute_loss(silence_only, y, CFG, epoch=ALL_ON)["silence"]) == 0.0


def test_silence_term_exact_values() -> None:
    y, vad = _target(), _vad()
    pred = y.clone()
    pred[:, 1:10:2, BLENDSHAPE_INDEX["mouthFunnel"]] += 0.1  # each of the 9 silent pairs moves by 0.1
    still = float(compute_loss(pred, y, CFG, epoch=ALL_ON, vad=vad)["silence"])
    assert still == pytest.approx(0.1 / len(MOUTH_INDICES), rel=1e-5)  # mean over pairs and mouth channels
    pred = y.clone()
    pred[:, :10, JAW] += 0.2  # jaw held 0.2 open in silence (no motion inside the silent stretch)
    closed = float(compute_loss(pred, y, CFG, epoch=ALL_ON, vad=vad)["silence"])
    assert closed == pytest.approx(0.2, rel=1e-5)  # the 9->10 pair straddles speech: not counted
    # Moving *less* than the truth is not penalised by the silence term (one-sided).
    moving_target = y.clone()
    moving_target[:, 1:10:2, BLENDSHAPE_INDEX["mouthFunnel"]] += 0.1
    assert float(compute_loss(y.clone(), moving_target, CFG, epoch=ALL_ON, vad=vad)["silence"]) == 0.0


def test_pose_term_penalises_beyond_limit() -> None:
    y = _target()
    pred = y.clone()
    pred[..., N_BLENDSHAPES] = 0.15  # inside +-0.2: no penalty
    assert float(compute_loss(pred, y, CFG, epoch=ALL_ON)["pose"]) == 0.0
    pred[..., N_BLENDSHAPES] = -0.5  # 0.3 beyond the limit on 1 of 6 bounded values
    assert float(compute_loss(pred, y, CFG, epoch=ALL_ON)["pose"]) == pytest.approx(0.3 / 6, rel=1e-5)
    pred = y.clone()
    pred[..., N_BLENDSHAPES + 3] = 0.5  # qw is derived, never clamped
    assert float(compute_loss(pred, y, CFG, epoch=ALL_ON)["pose"]) == 0.0


def test_stage_schedule() -> None:
    cfg = dataclasses.replace(LossConfig(), temporal_start_epoch=2, silence_start_epoch=3, pose_start_epoch=4)
    assert stage_weights(cfg, 0) == {"base": cfg.base_weight, "temporal": 0.0, "silence": 0.0, "pose": 0.0}
    assert stage_weights(cfg, 2)["temporal"] == cfg.temporal_weight and stage_weights(cfg, 2)["silence"] == 0.0
    assert stage_weights(cfg, 3)["silence"] == cfg.silence_weight and stage_weights(cfg, 3)["pose"] == 0.0
    assert stage_weights(cfg, 4) == {
        "base": cfg.base_weight, "temporal": cfg.temporal_weight, "silence": cfg.silence_weight, "pose": cfg.pose_weight,
    }
    # The total applies exactly those weights to the separately returned terms.
    y = _target()
    pred = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    pred[..., N_BLENDSHAPES] = 0.4
    for epoch in range(6):
        terms = compute_loss(pred, y, cfg, epoch=epoch, vad=_vad())
        w = stage_weights(cfg, epoch)
        expected = sum(w[k] * float(terms[k]) for k in TERMS)
        assert float(terms["total"]) == pytest.approx(expected, rel=1e-6)
        assert all(float(terms[k]) > 0 for k in TERMS)


def test_gradients_flow_and_shapes_checked() -> None:
    y = _target()
    pred = (y + 0.1).requires_grad_(True)
    compute_loss(pred, y, CFG, epoch=ALL_ON, vad=_vad())["total"].backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must both be"):
        compute_loss(y[..., :52], y[..., :52], CFG)
