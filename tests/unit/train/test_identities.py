"""Identities on the data side: the rule, the shards' identity column, training with identities, finetune."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from a2bs.build.shards import clip_identity
from a2bs.config import ConfigError, load_config
from a2bs.manifests import ShardsManifest
from a2bs.models.commands import format_card
from a2bs.models.model_file import load_model_file
from a2bs.train.data import (
    VAL_COLUMNS,
    LocalBatches,
    WindowCollate,
    identity_columns,
    read_shard,
    shard_info,
)
from a2bs.train.finetune import finetune
from a2bs.train.trainer import train, with_data_identities
from tests.unit.train.identity_data import N_MELS, REST, SMILE, T, write_shards

TRAIN = {"train": ["astronaut_slt", "astronaut_awb", "hopper_rms", "hopper_kal"], "val": ["astronaut_ked", "hopper_fi"]}
TINY = ["model.n_mels=8", "model.channels=16", "model.dilations=[1,2]", "train.epochs=15", "train.batch_size=16",
        "train.lr=0.03", "train.init_output_bias=false", "augment.enabled=false", "train.device=cpu",
        "train.torch_threads=1", "train.checkpoints_to_keep=1"]


def test_identity_rules() -> None:
    assert clip_identity("astronaut_slt", "prefix") == "astronaut"
    assert clip_identity("astronaut", "prefix") == "astronaut"  # no "_": the whole id
    assert clip_identity("astronaut_slt", "speaker") == "astronaut_slt"
    assert clip_identity("astronaut_slt", "") == ""
    with pytest.raises(ConfigError, match="sequence.identity_from"):
        clip_identity("astronaut_slt", "face")


def test_reader_maps_faces_to_rows_and_old_shards_read_as_no_identity(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "new", {"train": ["astronaut_a", "hopper_b"], "val": ["newface_c"]}, per_speaker=4)
    manifest = ShardsManifest.load(shards)
    assert manifest.splits["train"].identities == ("astronaut", "hopper")
    assert manifest.identities == ("astronaut", "hopper", "newface")
    info = shard_info(str(shards))
    names = ("astronaut", "hopper")
    rows = np.concatenate([b["identity"] for b in LocalBatches(info.train_files, N_MELS, 3, identities=names).arrays()])
    assert rows.tolist() == [0] * 4 + [1] * 4
    val = list(LocalBatches(info.val_files, N_MELS, 8, columns=VAL_COLUMNS, identities=names).torch_batches())
    assert val[0]["identity"].tolist() == [2] * 4  # a face the model does not know: the average row
    assert "identity" not in next(LocalBatches(info.train_files, N_MELS, 3).arrays())  # no identities asked

    table = read_shard(info.train_files[1], list(identity_columns(("audio", "targets", "vad", "mask"), names)))
    collated = WindowCollate(N_MELS, names)(table)  # Ray Train's collate: the same rows
    assert collated["identity"].dtype == torch.long and collated["identity"].tolist() == [1] * 4

    old = write_shards(tmp_path / "old", {"train": ["astronaut_a"], "val": ["hopper_b"]}, per_speaker=4,
                       with_identity_column=False)
    old_info = shard_info(str(old))
    assert old_info.manifest.identities == ()
    got = list(LocalBatches(old_info.train_files, N_MELS, 4).torch_batches())
    assert len(got) == 1 and "identity" not in got[0] and got[0]["audio"].shape == (4, T, N_MELS)


def test_identities_are_on_when_the_train_split_has_several_faces(tmp_path: Path) -> None:
    cfg = load_config()
    two = write_shards(tmp_path / "two", {"train": ["astronaut_a", "hopper_b"], "val": ["astronaut_c"]}, 2)
    one = write_shards(tmp_path / "one", {"train": ["astronaut_a", "astronaut_b"], "val": ["hopper_c"]}, 2)
    none = write_shards(tmp_path / "none", {"train": ["astronaut_a", "hopper_b"], "val": ["astronaut_c"]}, 2,
                        identity_from="")
    assert with_data_identities(cfg, ShardsManifest.load(two)).model.identities == ("astronaut", "hopper")
    assert with_data_identities(cfg, ShardsManifest.load(one)).model.identities == ()
    assert with_data_identities(cfg, ShardsManifest.load(none)).model.identities == ()
    chosen = replace(cfg, model=replace(cfg.model, identities=("hopper", "astronaut")))
    assert with_data_identities(chosen, ShardsManifest.load(two)).model.identities == ("hopper", "astronaut")
    with pytest.raises(ConfigError, match="the shards know no faces"):
        with_data_identities(chosen, ShardsManifest.load(none))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained in this process on two faces (4 training voices), and a held-out speaker's shards."""
    root = tmp_path_factory.mktemp("identities")
    shards = write_shards(root / "shards", TRAIN)
    result = train(str(shards), str(root / "run"), load_config(None, TINY), use_ray=False)
    held_out = write_shards(root / "held_out", {"train": ["newface_x"], "val": []}, per_speaker=64)
    return Path(result.model_path), held_out


def _smile(model: torch.nn.Module, mel: torch.Tensor, row: int | None) -> float:
    ids = None if row is None else torch.full((mel.shape[0],), row, dtype=torch.long)
    with torch.no_grad():
        return float(model(mel, identity=ids)[..., SMILE].mean())


def test_training_learns_each_face_and_their_average(trained) -> None:
    model_path, _ = trained
    model, card = load_model_file(model_path)
    assert card.identities == model.cfg.identities == ("astronaut", "hopper")
    mel = torch.from_numpy(np.random.default_rng(5).uniform(-60, 0, (4, 48, N_MELS)).astype(np.float32))
    astronaut, hopper, average = _smile(model, mel, 0), _smile(model, mel, 1), _smile(model, mel, None)
    assert abs(astronaut - REST["astronaut"]) < 0.15 and abs(hopper - REST["hopper"]) < 0.15
    assert hopper + 0.1 < average < astronaut - 0.1  # identity dropout taught the average the mean face


def test_finetune_adds_one_identity_and_leaves_the_others_bit_identical(trained, tmp_path: Path) -> None:
    model_path, held_out = trained
    base, card = load_model_file(model_path)
    cfg = load_config(None, ["finetune.epochs=15", "finetune.lr=0.05", "augment.enabled=false", "train.device=cpu"])
    result = finetune(str(model_path), str(held_out), "newface", str(tmp_path / "ft"), cfg)
    tuned, new_card = load_model_file(result.model_path)
    assert new_card.identities == tuned.cfg.identities == card.identities + ("newface",)
    assert (tmp_path / "ft" / "finetune.json").exists() and result.losses[-1] < result.losses[0]
    mel = torch.from_numpy(np.random.default_rng(6).uniform(-60, 0, (3, 40, N_MELS)).astype(np.float32))
    with torch.no_grad():
        for row in range(len(card.identities)):  # each old face: same row, same output, bit for bit
            ids = torch.full((3,), row, dtype=torch.long)
            assert torch.equal(tuned(mel, identity=ids), base(mel, identity=ids))
        assert torch.equal(tuned(mel), base(mel))  # the average too
    new = _smile(tuned, mel, len(card.identities))
    assert abs(new - REST["newface"]) < abs(_smile(tuned, mel, None) - REST["newface"])  # it learned the new face
    with pytest.raises(ConfigError, match="already has identity 'astronaut'"):
        finetune(str(model_path), str(held_out), "astronaut", str(tmp_path / "again"), cfg)


def test_evaluate_scores_unseen_voices_with_the_average_and_with_their_face(trained, tmp_path: Path) -> None:
    from a2bs.evaluate.report import evaluate
    from a2bs.train.metrics import MAE

    model_path, _ = trained
    shards = write_shards(tmp_path / "shards", {**TRAIN, "test": ["astronaut_t", "hopper_t", "newface_t"]}, 16)
    report = evaluate(str(model_path), str(shards), str(tmp_path / "report"))
    test = report.splits["test"]
    assert test["speakers"] == ["astronaut_t", "hopper_t", "newface_t"]  # the headline: every clip, average face
    known = test["with_identity"]
    assert known["identities"] == ["astronaut", "hopper"]  # newface is not one of the model's
    assert sorted(known["per_speaker"]) == ["astronaut_t", "hopper_t"]
    for speaker in ("astronaut_t", "hopper_t"):  # the true face beats the average on the same clips
        assert known["per_speaker"][speaker][MAE] < test["per_speaker"][speaker][MAE]
    assert "with their face (astronaut, hopper)" in report.line()


def test_finetune_command(trained, tmp_path: Path) -> None:
    from a2bs.cli import main

    model_path, held_out = trained
    out = tmp_path / "ft"
    rc = main(["finetune", str(model_path), str(held_out), "--identity", "newface", "--out", str(out), "--quiet",
               "finetune.epochs=2", "augment.enabled=false", "train.device=cpu"])
    assert rc == 0
    card = load_model_file(out / "model.safetensors")[1]
    assert card.identities == ("astronaut", "hopper", "newface")
    assert card.metrics == load_model_file(model_path)[1].metrics  # a frozen backbone: the base's scores hold
    (ft,) = card.finetuned  # the card says which face was fine-tuned, and how; `a2bs info` shows it
    assert (ft.identity, ft.train, ft.epochs) == ("newface", "identity", 2) and 1 <= ft.epoch <= 2 and ft.windows > 0
    assert "fine-tuned: identity 'newface' added (finetune.train=identity: its rows only" in format_card(
        card, "m", 1)
    assert not load_model_file(model_path)[1].finetuned  # a trained model: none
    assert main(["finetune", str(model_path), str(held_out), "--identity", "newface", "--out", str(tmp_path / "h"),
                 "--head", "--quiet", "finetune.epochs=1", "augment.enabled=false", "train.device=cpu"]) == 0
    assert json.loads((tmp_path / "h" / "finetune.json").read_text())["train"] == "head"  # --head = --train head
    assert main(["finetune", str(model_path), str(held_out), "--identity", "newface", "--out", str(tmp_path / "y"),
                 "--head", "--train", "all", "--quiet"]) != 0  # contradicting flags: a one-line error
    assert main(["finetune", str(model_path), str(held_out), "--identity", "hopper", "--out", str(tmp_path / "x"),
                 "--quiet"]) != 0  # a face the model has: a one-line error
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_finetune_all_adapts_the_backbone_adds_one_face_and_the_card_says_so(trained, tmp_path: Path) -> None:
    model_path, held_out = trained
    base, card = load_model_file(model_path)
    assert card.metrics  # the base model's scores, which no longer describe its faces after this
    cfg = load_config(None, ["finetune.train=all", "finetune.epochs=3", "augment.enabled=false", "train.device=cpu"])
    result = finetune(str(model_path), str(held_out), "newface", str(tmp_path / "ft"), cfg)
    tuned, new_card = load_model_file(result.model_path)
    assert new_card.identities == tuned.cfg.identities == card.identities + ("newface",)
    old, new = dict(base.named_parameters()), dict(tuned.named_parameters())
    backbone = [k for k in old if not k.startswith(("identity.", "head."))]
    assert backbone and all(not torch.equal(new[k], old[k]) for k in backbone)  # every backbone weight learned
    assert all(not torch.equal(new[k], old[k]) for k in old if k.startswith("head."))
    n = len(card.identities)
    for table in ("film", "out_bias"):  # the other faces' rows and the average's are still the base's
        rows = getattr(base.identity, table).weight
        assert torch.equal(getattr(tuned.identity, table).weight[[*range(n), n + 1]], rows)
    mel = torch.from_numpy(np.random.default_rng(8).uniform(-60, 0, (2, 30, N_MELS)).astype(np.float32))
    with torch.no_grad():  # ... but their outputs changed with the backbone
        assert not torch.equal(tuned(mel, identity=torch.zeros(2, dtype=torch.long)),
                               base(mel, identity=torch.zeros(2, dtype=torch.long)))
    assert new_card.metrics == {} and new_card.training_config["finetune"]["train"] == "all"
    assert [(f.identity, f.train) for f in new_card.finetuned] == [("newface", "all")]
    assert "finetune.train=all: every face's outputs changed" in format_card(new_card, "m", 1)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["train"] == "all"
    assert "'newface' (all)" in result.line()
    bad = load_config(None, ["finetune.train=everything"])
    with pytest.raises(ConfigError, match="finetune.train must be one of 'identity', 'head', 'all', not 'everything'"):
        finetune(str(model_path), str(held_out), "other", str(tmp_path / "bad"), bad)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_finetune_gives_a_model_without_identities_its_first_face(trained, tmp_path: Path) -> None:
    from a2bs.config import AudioConfig, ModelConfig
    from a2bs.manifests import ModelCard
    from a2bs.models.model_file import save_model
    from a2bs.models.registry import build_model

    _, held_out = trained
    torch.manual_seed(0)
    model_cfg = ModelConfig(n_mels=N_MELS, channels=16, dilations=(1, 2))
    base = build_model(model_cfg).eval()
    save_model(tmp_path / "base.safetensors", base, ModelCard.for_untrained(model_cfg, AudioConfig(n_mels=N_MELS)))
    cfg = load_config(None, ["finetune.epochs=3", "augment.enabled=false", "train.device=cpu"])
    result = finetune(str(tmp_path / "base.safetensors"), str(held_out), "newface", str(tmp_path / "ft"), cfg)
    tuned, card = load_model_file(result.model_path)
    assert card.identities == ("newface",)
    mel = torch.from_numpy(np.random.default_rng(7).uniform(-60, 0, (2, 30, N_MELS)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(tuned(mel), base(mel))  # the average is the base model
        assert not torch.equal(tuned(mel, identity=torch.zeros(2, dtype=torch.long)), base(mel))


def test_finetune_keeps_the_epoch_best_on_held_out_windows_and_restores_threads(trained, tmp_path: Path) -> None:
    from a2bs.train.finetune import split_windows

    model_path, _ = trained
    shards = write_shards(tmp_path / "shards", {"train": ["newface_a"], "val": ["newface_b"]}, per_speaker=48)
    learn, choose = split_windows(ShardsManifest.load(shards), str(shards))
    assert [Path(f).parent.name for f in learn] == ["train"] and [Path(f).parent.name for f in choose] == ["val"]
    # a large step: the held-out loss is not monotone (here the 9th of 10 epochs is the best)
    cfg = load_config(None, ["finetune.epochs=10", "finetune.lr=0.3", "augment.enabled=false", "train.device=cpu",
                             "train.torch_threads=1"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = finetune(str(model_path), str(shards), "newface", str(tmp_path / "ft"), cfg)
        assert torch.get_num_threads() == 2  # train.torch_threads was for the run only
    finally:
        torch.set_num_threads(threads)
    assert result.windows == 48 and result.val_windows == 48 and len(result.val_losses) == 10
    assert result.val_losses[result.best_epoch - 1] == min(result.val_losses) and result.best_epoch < 10
    assert f"epoch {result.best_epoch} kept" in result.line()
    # the saved model is the chosen epoch's: its held-out loss is the recorded minimum
    from a2bs.train.loop import final_stage_epoch
    from a2bs.train.losses import compute_loss

    tuned, card = load_model_file(result.model_path)
    batch = {k: torch.as_tensor(v) for k, v in next(LocalBatches(choose, N_MELS, 48).arrays()).items()
             if k in ("audio", "targets", "mask", "vad")}
    with torch.no_grad():
        pred = tuned(batch["audio"], identity=torch.full((48,), card.identities.index("newface")))
        loss = compute_loss(pred, batch["targets"], cfg.loss, final_stage_epoch(cfg), batch["mask"], batch["vad"])["total"]
    assert float(loss) == pytest.approx(min(result.val_losses), rel=1e-5)


def test_evaluate_scores_a_folder_with_only_the_asked_split(trained, tmp_path: Path) -> None:
    from a2bs.evaluate.report import evaluate

    model_path, _ = trained
    shards = write_shards(tmp_path / "shards", {"test": ["astronaut_t", "newface_t"]}, 16)  # no train, no val
    report = evaluate(str(model_path), str(shards), str(tmp_path / "report"), split="test")
    assert report.split == "test" and list(report.splits) == ["test"]
    assert report.splits["test"]["speakers"] == ["astronaut_t", "newface_t"]
    assert report.splits["test"]["with_identity"]["identities"] == ["astronaut"]
    with pytest.raises(ValueError, match=rf"{tmp_path / 'shards'}: no 'val' split \(it has: test\)"):
        evaluate(str(model_path), str(shards), str(tmp_path / "report_val"), split="val")
    assert not (tmp_path / "report_val").exists()
