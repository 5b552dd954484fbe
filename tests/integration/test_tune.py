"""`a2bs tune` with the tiny space: single-worker trials under ASHA, ranked table, best-config YAML
that `a2bs train` accepts."""

from __future__ import annotations

import csv
import math

import pytest
import s3fs
import yaml

from a2bs.cli import main
from a2bs.config import load_config
from a2bs.models.model_file import load_model_file
from a2bs.runtime import storage
from a2bs.tune.search import objective

pytestmark = pytest.mark.ray

N_TRIALS = 6
MAX_EPOCHS = 2


@pytest.fixture(scope="module")
def tuned(demo_shards, ray_cluster, tmp_path_factory):
    shards, _ = demo_shards
    out = tmp_path_factory.mktemp("tune") / "tune"
    rc = main(["tune", str(shards), "--out", str(out), "tune.space=tiny", f"tune.num_samples={N_TRIALS}",
               f"tune.max_epochs={MAX_EPOCHS}", "tune.grace_period=1", "tune.cpus_per_trial=1",
               "train.batch_size=128", "--quiet"])
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
        assert float(r["objective"]) == pytest.approx(objective(metrics))
        assert int(r["targets_met"]) == sum(r[f"met_{n}"] == "True" for n in ("mae", "jaw_corr", "lip_corr", "mouth_mae"))
        assert 1 <= int(r["epochs"]) <= MAX_EPOCHS
        assert int(r["model.channels"]) in (16, 32)
    # ASHA (grace period 1, reduction factor 2) stops the weaker trials after their first epoch
    assert any(int(r["epochs"]) < MAX_EPOCHS for r in rows), "ASHA stopped no trial"
    assert any(int(r["epochs"]) == MAX_EPOCHS for r in rows)


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
