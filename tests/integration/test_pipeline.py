"""The Ray Data pipeline on the demo corpus: counts, split, idempotence, failures, S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import media_factory as mf
import numpy as np
import pyarrow.parquet as pq
import pytest
from support import demo_clips, read_split

from a2bs.build.pipeline import run_build
from a2bs.build.sequences import expected_windows
from a2bs.build.shards import shard_files
from a2bs.config import load_config
from a2bs.extract.pipeline import run_extract
from a2bs.runtime import storage

pytestmark = pytest.mark.ray


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_demo_corpus_windows_and_split(demo_features, demo_shards, demo_config) -> None:
    clips_dir, ex = demo_features
    shards_dir, build = demo_shards
    assert ex.ok == len(demo_clips()) and ex.failed == 0
    manifest = json.loads((shards_dir / "_manifest.json").read_text())
    predicted = 0
    for f in sorted((clips_dir / "clips").glob("*.parquet")):
        row = pq.read_table(f, columns=["audio_time_s", "has_face"]).to_pylist()[0]
        assert all(row["has_face"])  # every demo frame shows a face, so no window is filtered
        predicted += expected_windows(len(row["audio_time_s"]), demo_config.sequence, 100.0)
    assert sum(manifest["rows"].values()) == predicted == sum(build.rows.values())
    train, val = read_split(str(shards_dir), "train"), read_split(str(shards_dir), "val")
    assert len(train["audio"]) + len(val["audio"]) == predicted
    assert train["audio"].shape[1:] == (24, 80) and train["targets"].shape[1:] == (24, 59)
    assert set(train["clip_id"]).isdisjoint(val["clip_id"])
    assert set(manifest["speakers"]["train"]).isdisjoint(manifest["speakers"]["val"])
    assert manifest["schema_version"] == 1 and manifest["config"]["sequence"]["sequence_ms"] == 240
    assert manifest["channels"]["jawOpen"]["std"] > 0.02  # the driven mouth really moves


def test_rerun_is_a_noop_and_a_deleted_clip_is_restored(demo_features, demo_shards, demo_config) -> None:
    clips_dir, first = demo_features
    shards_dir, _ = demo_shards
    before_clips, before_shards = _tree(clips_dir / "clips"), _tree(shards_dir)
    again = run_extract([str(mf_root())], str(clips_dir), demo_config, use_ray=True, progress=False)
    assert (again.ok, again.skipped, again.failed) == (0, first.ok, 0)
    assert _tree(clips_dir / "clips") == before_clips
    rebuilt = run_build(str(clips_dir), str(shards_dir), demo_config, use_ray=True)
    assert rebuilt.up_to_date and _tree(shards_dir) == before_shards

    victim = sorted((clips_dir / "clips").glob("*.parquet"))[3]
    original = pq.read_table(victim)
    victim.unlink()
    restored = run_extract([str(mf_root())], str(clips_dir), demo_config, use_ray=True, progress=False)
    assert (restored.ok, restored.skipped) == (1, first.ok - 1)
    assert set(_tree(clips_dir / "clips")) == set(before_clips)
    again_row, first_row = pq.read_table(victim).to_pylist()[0], original.to_pylist()[0]
    assert again_row["clip_id"] == first_row["clip_id"] and again_row["frame_index"] == first_row["frame_index"]
    # A fresh landmarker per clip: the re-extracted labels are bit-identical, though this time the
    # clip ran alone rather than somewhere in an actor's queue.
    np.testing.assert_array_equal(again_row["targets"], first_row["targets"])
    np.testing.assert_array_equal(again_row["mel_db"], first_row["mel_db"])


def mf_root() -> Path:
    from support import DEMO_CORPUS

    return DEMO_CORPUS


def test_corrupt_clip_is_listed_and_the_rest_complete(tmp_path: Path, ray_cluster, demo_config) -> None:
    src = tmp_path / "in" / "spk"
    src.mkdir(parents=True)
    good = [shutil.copy(c, src / c.name) for c in demo_clips()[:2]]
    bad = mf.make_text_as_mp4(src)
    out = tmp_path / "clips"
    summary = run_extract([str(tmp_path / "in")], str(out), demo_config, use_ray=True, progress=False)
    assert (summary.ok, summary.failed) == (2, 1)
    failures = json.loads((out / "_failures.json").read_text())
    assert failures == [{"source": str(bad), "reason": "not a media file (no MP4/MOV structure in it)"}]
    shards = tmp_path / "shards"
    run_build(str(out), str(shards), load_config(None, ["sequence.split_by=clip"]), use_ray=True)
    got = {f for split in ("train", "val") for f in read_split(str(shards), split)["clip_id"]}
    assert len(got) == len(good) == 2


def test_s3_in_and_out(s3_server: str, ray_cluster, demo_config) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="a2bs-test")
    for clip in demo_clips()[:3]:
        s3.upload_file(str(clip), "a2bs-test", f"videos/{clip.parent.name}/{clip.name}")
    summary = run_extract(["s3://a2bs-test/videos"], "s3://a2bs-test/clips", demo_config, use_ray=True,
                          progress=False)
    assert (summary.ok, summary.failed) == (3, 0)
    build = run_build("s3://a2bs-test/clips", "s3://a2bs-test/shards", demo_config, use_ray=True)
    manifest = json.loads(storage.read_text("s3://a2bs-test/shards/_manifest.json"))
    assert sum(manifest["rows"].values()) == sum(build.rows.values()) > 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="a2bs-test", Prefix="shards/")["Contents"]}
    assert {f"shards/{s['name']}" for s in manifest["shards"]} <= keys
    train = read_split("s3://a2bs-test/shards", "train")
    assert train["audio"].dtype == np.float32 and train["audio"].shape[1:] == (24, 80)
    assert all(f.startswith("s3://") for f in shard_files("s3://a2bs-test/shards", "train"))
