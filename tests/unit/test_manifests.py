"""Typed stage manifests and the model card: write -> load -> equal, and clear errors for anything else."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from a2bs.config import (
    AudioConfig,
    Config,
    ConfigError,
    SequenceConfig,
    load_config,
    user_overrides,
)
from a2bs.errors import ManifestError
from a2bs.manifests import (
    CLIPS_MANIFEST_VERSION,
    MANIFEST_NAME,
    ChannelStats,
    ClipEntry,
    ClipsManifest,
    DataSummary,
    ModelCard,
    ShardFile,
    ShardsManifest,
    SplitStats,
    front_end_differences,
    resolve_front_end,
)
from a2bs.models.registry import preset
from a2bs.schema import SCHEMA_VERSION, TARGET_NAMES
from a2bs.version import VERSION

AUDIO_320 = AudioConfig(hop_length=320, win_length=640, n_fft=1024)


def clips_manifest() -> ClipsManifest:
    return ClipsManifest(AUDIO_320, {
        "b1": ClipEntry("s3://bucket/footage/anna/take 2.mp4", "anna", 61.25, 59.94, 29.97, 50.0, 1836, 1800,
                        2, 60.0, 1, (0,)),
        "a0": ClipEntry("/data/ben/voice.wav", "ben", 3.5, 0.0, 0.0, 50.0, 0, 0, 1, 60.0, 1, (0,)),
    })


def split_stats(clips: tuple[str, ...], shards: tuple[str, ...], offset: float) -> SplitStats:
    channels = {name: ChannelStats(offset + i / 100, 0.5 + i / 1000, i % 3) for i, name in enumerate(TARGET_NAMES)}
    return SplitStats(speakers=("anna", "ben")[: len(clips)], clips=clips, hours=0.25 * len(clips),
                      rows=120 * len(shards), shards=tuple(ShardFile(n, 120, 1) for n in shards),
                      valid_frames=2880.5 * len(shards), channels=channels, mel_clipped=7)


def shards_manifest() -> ShardsManifest:
    splits = {"train": split_stats(("a0", "b1"), ("train/part-00000.parquet", "train/part-00001.parquet"), 0.0),
              "val": split_stats(("c2",), ("val/part-00000.parquet",), 0.1),
              "test": split_stats((), (), 0.0)}  # a third split needs no schema change
    return ShardsManifest("f" * 64, 50.0, 500, 100, AUDIO_320, SequenceConfig(sequence_ms=10000, overlap_ms=8000),
                          splits)


def trained_card() -> ModelCard:
    cfg = load_config(None, ["model.name=tcn_full", "model.channels=64", "train.epochs=3", "infer.fps=60"])
    card = ModelCard.for_run(cfg, shards_manifest())
    return dataclasses.replace(card, epoch=2, metrics={"train": {"loss": 0.125}, "val": {"mae": 0.031, "lip_corr": math.nan}})


def test_clips_manifest_round_trip(tmp_path: Path) -> None:
    manifest = clips_manifest()
    manifest.write(tmp_path)
    assert ClipsManifest.load(tmp_path) == manifest
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert (data["kind"], data["manifest_version"], data["schema_version"]) == ("clips_manifest", CLIPS_MANIFEST_VERSION, SCHEMA_VERSION)
    assert list(data["clips"]) == ["a0", "b1"]  # written sorted: reruns give the same file
    assert not list(tmp_path.glob(".*tmp"))  # written atomically


def test_shards_manifest_round_trip_and_what_it_answers(tmp_path: Path) -> None:
    manifest = shards_manifest()
    manifest.write(tmp_path)
    loaded = ShardsManifest.load(str(tmp_path))
    assert loaded == manifest
    assert loaded.rows == {"train": 240, "val": 120, "test": 0}
    assert (loaded.n_mels, loaded.overlap_frames) == (80, 400)
    assert loaded.files(str(tmp_path), "train") == [str(tmp_path / "train" / "part-00000.parquet"),
                                                    str(tmp_path / "train" / "part-00001.parquet")]
    assert loaded.files(str(tmp_path), "test") == [] and loaded.files(str(tmp_path), "holdout") == []
    assert loaded.splits["val"].channel_means() == [0.1 + i / 100 for i in range(len(TARGET_NAMES))]
    assert list(loaded.splits["train"].channels) == list(TARGET_NAMES)


def test_model_card_round_trip() -> None:
    card = trained_card()
    again = ModelCard.from_json(card.to_json(), "m.safetensors")
    # NaN never equals itself: compare the JSON forms, then everything else field by field.
    assert json.dumps(again.to_dict()) == json.dumps(card.to_dict())
    assert dataclasses.replace(again, metrics={}) == dataclasses.replace(card, metrics={})
    assert math.isnan(again.metrics["val"]["lip_corr"]) and again.metrics["train"] == {"loss": 0.125}
    assert card.audio == AUDIO_320 and (again.model.name, again.model.channels) == ("tcn_full", 64)
    assert isinstance(again.model.dilations, tuple) and isinstance(again.target_names, tuple)  # not lists
    assert (card.a2bs_version, card.schema_version, card.target_names) == (VERSION, SCHEMA_VERSION, TARGET_NAMES)
    assert card.output_fps == 60.0 and card.training_config["train"]["epochs"] == 3
    assert card.data == DataSummary.from_shards(shards_manifest())
    assert card.data.splits["train"].clips == 2 and card.data.splits["val"].speakers == ("anna",)
    json.dumps(card.to_dict(), allow_nan=True)  # plain JSON-able data


def test_untrained_card_round_trip() -> None:
    card = ModelCard.for_untrained(preset("tcn_poc", channels=16))
    assert ModelCard.from_json(card.to_json(), "x") == card
    assert (card.epoch, card.data, card.metrics, card.training_config) == (-1, None, {}, {})
    assert card.audio == AudioConfig() and card.output_fps == Config().infer.fps


def _rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("version, fix", [(3, "written by a newer a2bs: upgrade a2bs"), (1, "rerun a2bs extract")])
def test_clips_manifest_of_another_version_is_refused(tmp_path: Path, version: int, fix: str) -> None:
    clips_manifest().write(tmp_path)
    _rewrite(tmp_path / MANIFEST_NAME, lambda d: d.update(manifest_version=version))
    with pytest.raises(ManifestError) as err:
        ClipsManifest.load(tmp_path)
    assert str(err.value) == f"{tmp_path / MANIFEST_NAME}: clips manifest version {version}, this a2bs reads {CLIPS_MANIFEST_VERSION} ({fix})"


def test_untyped_shards_manifest_of_a2bs_0_1_is_refused(tmp_path: Path) -> None:
    old = {"schema_version": 1, "fingerprint": "{}", "config": {}, "rows": {"train": 3}, "shards": []}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(old))
    with pytest.raises(ManifestError, match=r"shards manifest version 0, this a2bs reads 1 \(rerun a2bs build\)$"):
        ShardsManifest.load(tmp_path)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["splits"]["train"].update(rows="many"), "splits.train.rows: Input should be a valid integer"),
    (lambda d: d["splits"]["val"].pop("channels"), "splits.val.channels: Field required"),
    (lambda d: d.update(windows=3), "windows: Unexpected keyword argument"),
    (lambda d: d["audio"].update(hop=160), "audio.hop: Unexpected keyword argument"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), f"data schema {SCHEMA_VERSION + 1}"),
], ids=["wrong-type", "missing-key", "unknown-key", "unknown-audio-key", "data-schema"])
def test_malformed_shards_manifest_is_a_one_line_error(tmp_path: Path, change, reason: str) -> None:
    shards_manifest().write(tmp_path)
    _rewrite(tmp_path / MANIFEST_NAME, change)
    with pytest.raises(ManifestError) as err:
        ShardsManifest.load(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / MANIFEST_NAME}: shards manifest ") and reason in message
    assert "\n" not in message and "rerun a2bs build" in message


def test_missing_broken_or_foreign_manifests_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"_manifest.json: no shards manifest \(rerun a2bs build\)"):
        ShardsManifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"kind": "shards_manifest", "manifest_version": 1, ')
    with pytest.raises(ManifestError, match="shards manifest is not valid JSON"):
        ShardsManifest.load(tmp_path)
    clips_manifest().write(tmp_path)
    with pytest.raises(ManifestError, match="a clips manifest, not a shards manifest"):
        ShardsManifest.load(tmp_path)
    with pytest.raises(ManifestError, match="x.safetensors: a clips manifest, not a model card"):
        ModelCard.from_json((tmp_path / MANIFEST_NAME).read_text(), "x.safetensors")


def test_a_contradicting_audio_setting_is_named() -> None:
    card = trained_card()  # hop 320
    with pytest.raises(ConfigError) as err:
        resolve_front_end(card.audio, load_config(None, ["audio.hop_length=160"]), {"audio": {"hop_length": 160}})
    assert str(err.value) == "audio.hop_length=160 contradicts the model (320)"
    # Set explicitly to the card's value: fine, and the card's front end is what comes back.
    same = load_config(None, ["audio.hop_length=320"])
    assert resolve_front_end(card.audio, same, {"audio": {"hop_length": 320}}) == AUDIO_320
    # Without the user's keys, an audio value that differs from a2bs's defaults counts as set.
    assert resolve_front_end(card.audio, Config()) == AUDIO_320
    with pytest.raises(ConfigError, match=r"audio.n_mels=64 contradicts the shards \(80\)"):
        resolve_front_end(card.audio, load_config(None, ["audio.n_mels=64"]), source="the shards")
    assert front_end_differences(AudioConfig(), AUDIO_320) == ["n_fft 512 vs 1024", "win_length 400 vs 640",
                                                               "hop_length 160 vs 320"]


def test_user_overrides_are_the_file_with_the_command_line_on_top(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"audio": {"hop_length": 160, "n_mels": 80}, "infer": {"fps": 60}}))
    got = user_overrides(path, ["audio.hop_length=320", "model.channels=16"])
    assert got == {"audio": {"hop_length": 320, "n_mels": 80}, "infer": {"fps": 60}, "model": {"channels": 16}}
    assert user_overrides(None, []) == {}
