"""The seed's targets: one pass rule for training, tune and evaluate, with or without the val_ prefix."""

from __future__ import annotations

import math

import pytest

from a2bs.train.metrics import (
    SEED_TARGETS,
    format_metrics,
    metric_value,
    seed_objective,
    target_table,
    targets_met,
    val_key,
)

# At the thresholds exactly: "<" and ">" targets are both missed there.
AT_THRESHOLD = {name: threshold for name, _, threshold in SEED_TARGETS}
PASSING = {"mae": 0.04, "jaw_corr": 0.8, "lip_corr": 0.7, "mouth_mae": 0.03}


def test_targets_met_and_table_agree_with_and_without_prefix() -> None:
    prefixed = {val_key(k): v for k, v in PASSING.items()}
    assert targets_met(PASSING) == targets_met(prefixed) == dict.fromkeys(PASSING, True)
    assert [r["passed"] for r in target_table(prefixed)] == [True] * 4
    assert targets_met(AT_THRESHOLD) == dict.fromkeys(AT_THRESHOLD, False)
    missing = targets_met({"mae": 0.01})
    assert missing == {"mae": True, "jaw_corr": False, "lip_corr": False, "mouth_mae": False}
    rows = target_table({**PASSING, "lip_corr": math.nan})
    assert {r["metric"]: r["passed"] for r in rows}["lip_corr"] is False


def test_val_prefix_wins_over_plain_key() -> None:
    assert metric_value({"mae": 0.5, "val_mae": 0.1}, "mae") == 0.1
    assert math.isnan(metric_value({}, "mae"))


def test_objective_is_below_one_exactly_when_each_term_is() -> None:
    assert seed_objective(AT_THRESHOLD) == pytest.approx(1.0)
    assert seed_objective(PASSING) < 1.0
    # 0.04/0.05, (1-0.8)/0.3, (1-0.7)/0.4, 0.03/0.04
    assert seed_objective({val_key(k): v for k, v in PASSING.items()}) == pytest.approx(
        (0.8 + 0.2 / 0.3 + 0.75 + 0.75) / 4)
    assert seed_objective({"jaw_corr": 0.9}) == math.inf  # a missing MAE can never rank first


def test_format_metrics() -> None:
    line = format_metrics({"val_mae": 0.012345, "mouth_mae": 0.5, "val_jaw_corr": 0.81234}, ("mae", "mouth_mae",
                                                                                              "jaw_corr", "lip_corr"))
    assert line == "mae 0.0123 mouth_mae 0.5000 jaw_corr 0.812 lip_corr nan"
