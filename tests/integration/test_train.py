"""`a2bs train` on the demo shards with real Ray Train: DDP, checkpoints, worker failure, --resume.

One module fixture runs the scenario once (each TorchTrainer start costs ~15 s on 2 CPUs):

1. 2 CPU workers, 3 epochs, but at most 2 epochs in this invocation; the fault point
   ``train.epoch_start`` SIGKILLs rank 1 at the start of epoch 1 (once): FailureConfig restarts the
   worker group from the epoch-0 checkpoint.
2. ``a2bs train --resume`` continues with epoch 2.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from a2bs.cli import EXIT_CONFIG, main
from a2bs.models.model_file import load_model_file, read_model_card
from a2bs.runtime import faults
from a2bs.train.checkpoint import STATE_FILE, state_digest
from a2bs.train.trainer import RAY_RUN_NAME, read_history

pytestmark = pytest.mark.ray

SMALL = ["model.channels=32", "model.dilations=[1,2,4]", "train.batch_size=64", "train.checkpoints_to_keep=3"]


@pytest.fixture(scope="module")
def scenario(demo_shards, ray_cluster, tmp_path_factory):
    shards, _ = demo_shards
    run = tmp_path_factory.mktemp("train") / "run"
    out1, out2 = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out1), faults.armed("train.epoch_start", when={"epoch": 1, "rank": 1}):
        first = main(["train", str(shards), "--out", str(run), "train.epochs=3", "train.num_workers=2",
                      "train.max_epochs_per_run=2", *SMALL])
    crashes = faults.fired()
    history_first = read_history(str(run))
    with contextlib.redirect_stdout(out2):
        second = main(["train", str(shards), "--out", str(run), "--resume"])
    return {"run": run, "shards": shards, "rc": (first, second), "history_first": history_first,
            "history": read_history(str(run)), "lines": (out1.getvalue(), out2.getvalue()),
            "crashes": crashes}


def test_both_invocations_succeed_with_a_summary_line(scenario):
    assert scenario["rc"] == (0, 0)
    assert [r["epoch"] for r in scenario["history_first"]] == [0, 1]  # stopped by max_epochs_per_run
    first, second = scenario["lines"]
    assert "train: stopped at epoch 2/3 on 2 worker(s)" in first
    assert "train: finished at epoch 3/3 on 2 worker(s)" in second


def test_ddp_two_workers_keep_parameters_in_sync(scenario):
    history = scenario["history"]
    for row in history:
        assert row["world_size"] == 2
        assert len(row["param_digests"]) == 2
        assert row["param_digests"][0] == row["param_digests"][1], f"ranks diverged at epoch {row['epoch']}"
        assert row["params_in_sync"] == 1.0
        # each rank trained on its half of the split: the global row count is twice one worker's share
        assert row["train_rows"] % 2 == 0 and row["train_rows"] > 0
    digests = [r["param_digests"][0] for r in history]
    assert len(set(digests)) == len(digests), "parameters did not change between epochs"


def test_checkpoints_metrics_and_exported_model(scenario):
    run = scenario["run"]
    ckpts = sorted(p.name for p in (run / RAY_RUN_NAME).glob("epoch_*"))
    assert ckpts == ["epoch_0000", "epoch_0001", "epoch_0002"]
    for epoch, name in enumerate(ckpts):
        assert {p.name for p in (run / RAY_RUN_NAME / name).iterdir()} >= {"model.safetensors", STATE_FILE, "state.json"}
        card = read_model_card(run / RAY_RUN_NAME / name / "model.safetensors")  # every checkpoint carries a card
        assert card.epoch == epoch and card.metrics["val"]["loss"] == pytest.approx(scenario["history"][epoch]["val_loss"])
    assert (run / "config.yaml").is_file() and (run / "history.csv").is_file()
    assert len((run / "history.csv").read_text().strip().splitlines()) == 1 + 3
    metrics = json.loads((run / "metrics.json").read_text())
    history = scenario["history"]
    best = min(history, key=lambda r: r["val_loss"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best"]["val_loss"] == pytest.approx(best["val_loss"])
    assert {r["metric"] for r in metrics["targets"]} == {"mae", "jaw_corr", "lip_corr", "mouth_mae"}
    model, card = load_model_file(run / "model.safetensors")
    assert card.model.channels == 32 and tuple(card.model.dilations) == (1, 2, 4)
    assert card.epoch == best["epoch"] and card.training_config["train"]["num_workers"] == 2
    assert metrics["best"]["val_jaw_corr"] > 0.4  # it learned to open the jaw with speech (untrained: ~0)
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_worker_failure_restarts_from_last_checkpoint(scenario):
    history = scenario["history"]
    (crash,) = scenario["crashes"]  # rank 1 died once (the restarted group does not die again)
    assert crash["context"] == {"epoch": 1, "rank": 1} and crash["signal"] == "SIGKILL"
    row0, row1 = history[0], history[1]
    assert row0["start"] == 0 and row0["resumed_from_epoch"] == -1
    # epoch 1 ran in the restarted worker group, which loaded the epoch-0 checkpoint
    assert row1["start"] == 1 and row1["resumed_from_epoch"] == 0
    assert row1["loaded_optimizer_digest"] == row0["optimizer_digest"]


def test_resume_continues_with_the_saved_optimizer_state(scenario):
    run, history = scenario["run"], scenario["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    row1, row2 = history[1], history[2]
    assert row2["start"] == 2 and row2["resumed_from_epoch"] == 1
    saved = torch.load(run / RAY_RUN_NAME / "epoch_0001" / STATE_FILE, map_location="cpu", weights_only=True)
    assert state_digest(saved["optimizer"]) == row1["optimizer_digest"] == row2["loaded_optimizer_digest"]
    assert saved["epoch"] == 1


def test_existing_run_is_refused_without_resume(scenario, capsys):
    rc = main(["train", str(scenario["shards"]), "--out", str(scenario["run"]), "train.epochs=1"])
    assert rc == EXIT_CONFIG
    assert "--resume" in capsys.readouterr().err
