"""`a2bs evaluate` on the demo shards: report.json (headline test split, every held-out split, per
speaker), seed-target tables, PNG plots, and the same val numbers as the training run's validation."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from a2bs.build.pipeline import run_build
from a2bs.cli import main
from a2bs.config import config_to_dict, load_config
from a2bs.evaluate.report import evaluate
from a2bs.manifests import ShardsManifest
from a2bs.schema import N_POSE, TARGET_NAMES, UNOBSERVED_BLENDSHAPES

pytestmark = pytest.mark.ray

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    """A small model trained for two epochs in-process (the loop without Ray: fast and enough here)."""
    shards, _ = demo_shards
    run = tmp_path_factory.mktemp("eval") / "run"
    rc = main(["train", str(shards), "--out", str(run), "--no-ray", "train.epochs=2", "train.batch_size=64",
               "model.channels=32", "model.dilations=[1,2,4]"])
    assert rc == 0
    return shards, run


def test_evaluate_writes_report_and_plots(trained, tmp_path, capsys):
    shards, run = trained
    out = tmp_path / "report"
    assert main(["evaluate", str(run / "model.safetensors"), str(shards), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("evaluate: ")
    report = json.loads((out / "report.json").read_text())
    manifest = ShardsManifest.load(shards)
    m = report["metrics"]
    assert report["split"] == "test" and report["chosen_on"] == "val"  # the default headline: unseen voices
    assert m["n_clips"] == len(manifest.splits["test"].clips)
    assert list(report["splits"]) == ["test", "val"] and report["splits"]["test"]["metrics"] == m
    for name, entry in report["splits"].items():
        assert entry["speakers"] == list(manifest.splits[name].speakers) == list(entry["per_speaker"])
        assert entry["trained_on"] == []  # the model's own shards: no held-out voice was trained on
        assert sum(s["n_clips"] for s in entry["per_speaker"].values()) == len(manifest.splits[name].clips)
        assert [r["metric"] for r in entry["targets"]] == ["mae", "jaw_corr", "lip_corr", "mouth_mae"]
    assert 0 < m["mae"] < 0.5 and 0 < m["mouth_mae"] < 0.5
    assert -1 <= m["jaw_corr"] <= 1 and -1 <= m["lip_corr"] <= 1
    assert [r["metric"] for r in report["targets"]] == ["mae", "jaw_corr", "lip_corr", "mouth_mae"]
    assert report["all_targets_met"] == all(r["passed"] for r in report["targets"])
    expected = [n for n in TARGET_NAMES if n not in UNOBSERVED_BLENDSHAPES]
    assert list(report["per_channel_mae"]) == expected and len(expected) == 51 + N_POSE
    assert report["plot_clip"] in manifest.splits["test"].clips
    assert report["model_card"]["audio"] == config_to_dict(manifest.audio)
    md = (out / "targets.md").read_text()
    assert md.startswith("## test: unseen voices, never chosen on") and "## val: unseen voices, chose the epoch" in md
    for name in ("curves.png", "per_channel_mae.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600
        assert img.std() > 0.05  # not a blank canvas


def test_evaluate_matches_training_validation(trained, tmp_path):
    """Evaluation scores frames exactly as training validation does: same model, same numbers."""
    shards, run = trained
    out = tmp_path / "report"
    assert main(["evaluate", str(run / "model.safetensors"), str(shards), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())["splits"]["val"]["metrics"]
    best = json.loads((run / "metrics.json").read_text())["best"]
    for key in ("mae", "mouth_mae", "pose_mae", "jaw_corr", "lip_corr", "smile_corr"):
        assert report[key] == pytest.approx(best[f"val_{key}"], abs=1e-5), key
    assert report["n_frames"] == best["val_frames"]


def test_evaluate_train_split_and_missing_model(trained, tmp_path, capsys):
    shards, run = trained
    assert main(["evaluate", str(run / "model.safetensors"), str(shards), "--out", str(tmp_path / "tr"),
                 "--split", "train"]) == 0
    train_report = json.loads((tmp_path / "tr" / "report.json").read_text())
    assert train_report["metrics"]["n_clips"] == len(ShardsManifest.load(shards).splits["train"].clips)
    assert main(["evaluate", str(tmp_path / "nope.safetensors"), str(shards), "--out", str(tmp_path / "x")]) == 1
    assert "cannot read model file" in capsys.readouterr().err
    assert main(["evaluate", str(run / "model.safetensors"), str(shards), "--out", str(tmp_path / "k"),
                 "--split", "known"]) != 0
    assert "no 'known' split (it has: train, val, test)" in capsys.readouterr().err


def test_shards_split_otherwise_name_the_voices_the_model_trained_on(trained, demo_features, tmp_path, caplog):
    """Evaluated on shards whose test voice was one of the model's training voices, the report says so."""
    shards, run = trained
    trained_voices = ShardsManifest.load(shards).splits["train"].speakers
    other = tmp_path / "shards"
    run_build(str(demo_features[0]), str(other), load_config(None, [f"sequence.test_speakers=[{trained_voices[0]}]"]),
              use_ray=False, progress=False)
    with caplog.at_level("WARNING", logger="a2bs.evaluate"):
        report = evaluate(str(run / "model.safetensors"), str(other), str(tmp_path / "report"))
    assert report.splits["test"]["trained_on"] == [trained_voices[0]]
    assert f"the model was trained on test speaker(s) {trained_voices[0]} of {other}" in caplog.text
