"""`a2bs tune` with the tiny space: single-worker trials under ASHA, ranked table, best-config YAML
that `a2bs train` accepts.

ASHA's decisions are made certain: trials run one at a time in the order they were sampled, and ASHA
compares them on ``weight_temporal``, which every epoch reports and which is the trial's sampled
``loss.temporal_weight`` (with the temporal term on from epoch 0). The test replays ASHA's rule on the
sampled values and expects exactly the trials it stops.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import s3fs
import yaml

from a2bs.cli import main
from a2bs.config import load_config
from a2bs.models.model_file import load_model_file
from a2bs.runtime import storage
from a2bs.train.metrics import seed_objective

pytestmark = pytest.mark.ray

N_TRIALS = 6
MAX_EPOCHS = 2
REDUCTION = 2


def asha_stops(metrics: list[float]) -> list[bool]:
    """ASHA's rule for one rung, trials arriving in order (mode min): a trial stops when its reward
    (-metric) is below the (1 - 1/reduction) quantile of the rewards recorded before it."""
    recorded: list[float] = []
    stops = []
    for m in metrics:
        stops.append(bool(recorded) and -m < np.nanpercentile(recorded, (1 - 1 / REDUCTION) * 100))
        recorded.append(-m)
    return stops


@pytest.fixture(scope="module")
def tuned(demo_shards, ray_cluster, tmp_path_factory):
    shards, _ = demo_shards
    out = tmp_path_factory.mktemp("tune") / "tune"
    rc = main(["tune", str(shards), "--out", str(out), "tune.space=tiny", f"tune.num_samples={N_TRIALS}",
               f"tune.max_epochs={MAX_EPOCHS}", "tune.grace_period=1", f"tune.reduction_factor={REDUCTION}",
               "tune.cpus_per_trial=1", "tune.max_concurrent=1", "tune.metric=weight_temporal",
               "loss.temporal_start_epoch=0", "train.batch_size=128", "--quiet"])
    return shards, out, rc


def test_tune_writes_a_ranked_table(tuned, capsys):
    _, out, rc = tuned
    assert rc == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == N_TRIALS
    assert [int(r["rank"]) for r in rows] == list(range(1, N_TRIALS + 1))
    objectives = [float(r["objective"]) for r in rows]
    assert objectives == sorted(objectives) and all(math.isfinite(o) for o in objectives)
    for r in rows:
        metrics = {k: float(r[k]) for k in ("val_mae", "val_jaw_corr", "val_lip_corr", "val_mouth_mae")}
        assert float(r["objective"]) == pytest.approx(seed_objective(metrics))
        assert int(r["targets_met"]) == sum(r[f"met_{n}"] == "True" for n in ("mae", "jaw_corr", "lip_corr", "mouth_mae"))
        assert 1 <= int(r["epochs"]) <= MAX_EPOCHS
        assert int(r["model.channels"]) in (16, 32)
    # ASHA (grace period 1) stops exactly the trials its rule picks, after their first epoch
    in_order = sorted(rows, key=lambda r: r["trial_id"])  # ids count up in sampling (= running) order
    expected = asha_stops([float(r["loss.temporal_weight"]) for r in in_order])
    assert [int(r["epochs"]) for r in in_order] == [1 if stop else MAX_EPOCHS for stop in expected]
    assert any(expected), "with these samples ASHA's rule stops at least one trial"


def test_best_yaml_is_accepted_by_train(tuned, s3_server):
    """The best config trains; the run folder is on S3 (Ray Train storage, history, exported model)."""
    shards, out, _ = tuned
    best_row = next(csv.DictReader((out / "results.csv").open()))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert set(best) <= {"model", "loss", "train", "audio", "sequence", "video", "infer"}
    cfg = load_config(out / "best.yaml")
    assert cfg.model.channels == int(best_row["model.channels"])
    assert cfg.train.lr == pytest.approx(float(best_row["train.lr"]))
    assert cfg.loss.temporal_weight == pytest.approx(float(best_row["loss.temporal_weight"]))
    assert cfg.train.batch_size == 128  # the base overrides of the search carry over
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir("a2bs-tune-test")
    run = "s3://a2bs-tune-test/runs/best"
    assert main(["train", str(shards), "--out", run, "--config", str(out / "best.yaml"), "train.epochs=1"]) == 0
    _, card = load_model_file(f"{run}/model.safetensors")
    assert card.model.channels == cfg.model.channels and card.model.dilations == cfg.model.dilations
    assert card.epoch == 0
    stored = set(storage.list_files(run))
    assert {f"{run}/config.yaml", f"{run}/history.json", f"{run}/metrics.json",
            f"{run}/ray_train/epoch_0000/train_state.pt"} <= stored
