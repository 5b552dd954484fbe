"""The split protocol on the demo corpus: no speaker in two splits, and nothing chosen on test.

The same shards twice: once whole, once with every test and known shard file overwritten by bytes no
reader can parse. Training on both (in-process, deterministic for a seed and thread count) must give
the same history, the same chosen epoch and the same weights: the held-out splits never reach a choice,
because the trainer never reads them. Ray Train gets only the train and val datasets.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from a2bs.build.pipeline import run_build
from a2bs.build.shards import REPORTED_SPLITS
from a2bs.cli import main
from a2bs.config import load_config
from a2bs.manifests import ClipsManifest, ShardsManifest
from a2bs.models.model_file import load_model_file
from a2bs.train.data import shard_info
from a2bs.train.trainer import make_trainer, read_history

pytestmark = pytest.mark.ray

SPLIT = ["sequence.known_clip_fraction=0.2"]  # default val/test shares (4 voices: 2 train, 1 val, 1 test)
SMALL = ["train.epochs=3", "model.channels=32", "model.dilations=[1,2,4]", "train.batch_size=64",
         "train.torch_threads=1", "train.best_metric=val_objective"]


@pytest.fixture(scope="module")
def shards(demo_features, tmp_path_factory) -> tuple[Path, Path]:
    clips_dir, _ = demo_features
    root = tmp_path_factory.mktemp("splits")
    whole, blind = root / "whole", root / "blind"
    run_build(str(clips_dir), str(whole), load_config(None, SPLIT), use_ray=False, progress=False)
    shutil.copytree(whole, blind)
    manifest = ShardsManifest.load(blind)
    for split in REPORTED_SPLITS:
        files = manifest.files(str(blind), split)
        assert files, f"the build held out no {split!r} clips"
        for f in files:
            Path(f).write_bytes(b"not a parquet file")
    return whole, blind


def test_no_speaker_in_two_splits(shards, demo_features) -> None:
    whole, _ = shards
    clips_dir, _ = demo_features
    manifest = ShardsManifest.load(whole)
    assert list(manifest.splits) == ["train", "val", "test", "known"]
    speakers, clips = {}, {}
    for name in manifest.splits:
        rows = pq.read_table([f for f in manifest.files(str(whole), name)], columns=["speaker_id", "clip_id", "split"])
        assert set(rows.column("split").to_pylist()) == {name}
        speakers[name], clips[name] = set(rows.column("speaker_id").to_pylist()), set(rows.column("clip_id").to_pylist())
        assert speakers[name] == set(manifest.splits[name].speakers) and clips[name] == set(manifest.splits[name].clips)
    voices = [speakers["train"], speakers["val"], speakers["test"]]
    assert all(voices) and all(a.isdisjoint(b) for i, a in enumerate(voices) for b in voices[i + 1:])
    listed = ClipsManifest.load(clips_dir)
    assert set().union(*voices) == {e.speaker_id for e in listed.clips.values()}
    assert speakers["known"] == speakers["train"]  # known voices, unseen clips
    every = [c for name in clips for c in clips[name]]
    assert len(every) == len(set(every)) == len(listed.clips)  # each clip in exactly one split


def scores(row: dict) -> dict:
    """An epoch's metrics without its timings (``*_s``: seconds and samples per second)."""
    return {k: v for k, v in row.items() if not k.endswith("_s")}


def test_nothing_is_chosen_on_the_held_out_splits(shards, tmp_path, ray_cluster) -> None:
    runs = {}
    for name, folder in zip(("whole", "blind"), shards):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["train", str(folder), "--out", str(tmp_path / name), "--no-ray", *SMALL]) == 0
        runs[name] = {"line": out.getvalue(), "history": read_history(str(tmp_path / name)),
                      "metrics": json.loads((tmp_path / name / "metrics.json").read_text()),
                      "model": load_model_file(tmp_path / name / "model.safetensors")[0].state_dict()}
    whole, blind = runs["whole"], runs["blind"]
    val_speakers = ShardsManifest.load(shards[0]).splits["val"].speakers
    assert f"(chosen on val, {len(val_speakers)} speaker" in whole["line"], whole["line"]
    assert whole["metrics"]["chosen_on"] == "val" and whole["metrics"]["chosen_on_speakers"] == list(val_speakers)
    assert blind["metrics"]["best_epoch"] == whole["metrics"]["best_epoch"]
    assert scores(blind["metrics"]["best"]) == scores(whole["metrics"]["best"])
    assert [scores(r) for r in blind["history"]] == [scores(r) for r in whole["history"]]
    assert len({round(r["val_objective"], 6) for r in whole["history"]}) > 1  # the epochs really differ
    assert whole["model"].keys() == blind["model"].keys()
    assert all(torch.equal(whole["model"][k], blind["model"][k]) for k in whole["model"])
    # Ray Train is handed the train and val datasets only.
    cfg = load_config(None, [*SPLIT, *SMALL, "train.num_workers=1"])
    trainer = make_trainer(shard_info(str(shards[1])), str(tmp_path / "ray"), cfg)
    assert set(trainer.datasets) == {"train", "val"}
