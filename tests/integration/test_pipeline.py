"""The Ray Data pipeline on the demo corpus: counts, split, idempotence, failures, S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import media_factory as mf
import numpy as np
import pytest
from support import demo_clips, fixture_clips, read_split

from a2bs.build.pipeline import run_build
from a2bs.build.sequences import expected_windows
from a2bs.build.shards import shard_files
from a2bs.config import load_config
from a2bs.errors import InputError
from a2bs.extract.pipeline import run_extract
from a2bs.extract.store import read_segment, segment_uri
from a2bs.manifests import ClipsManifest, ShardsManifest

pytestmark = pytest.mark.ray


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_demo_corpus_windows_and_split(demo_features, demo_shards, demo_config) -> None:
    clips_dir, ex = demo_features
    shards_dir, build = demo_shards
    assert ex.ok == len(fixture_clips()) and ex.failed == 0
    manifest = ShardsManifest.load(shards_dir)
    clips = ClipsManifest.load(clips_dir)
    assert sorted(clips.clips) == sorted(p.name for p in (clips_dir / "clips").iterdir() if p.is_dir())
    assert sorted(e.source_uri for e in clips.clips.values()) == [str(c) for c in fixture_clips()]
    predicted = 0
    for clip_id, entry in sorted(clips.clips.items()):
        assert entry.n_segments == 1 and entry.segments == (0,)  # every demo clip is shorter than a segment
        part = read_segment(segment_uri(str(clips_dir), clip_id, 0))
        assert all(part.has_face)  # every demo frame shows a face, so no window is filtered
        assert entry.frames == entry.face_frames == len(part.has_face) and entry.mel_frame_rate == 100.0
        assert entry.face_fps == pytest.approx(30.0, abs=0.1) and Path(entry.source_uri).parent.name == entry.speaker_id
        predicted += expected_windows(len(part.audio_time_s), demo_config.sequence, 100.0)
    assert sum(manifest.rows.values()) == predicted == sum(build.rows.values())
    # The default split by speaker into train, val and test (a2bs.build.shards.assign_splits).
    assert list(manifest.splits) == ["train", "val", "test"]
    train, val, test = (read_split(str(shards_dir), s) for s in ("train", "val", "test"))
    assert len(train["audio"]) + len(val["audio"]) + len(test["audio"]) == predicted
    assert train["audio"].shape[1:] == (24, 80) and train["targets"].shape[1:] == (24, 59)
    assert set(train["clip_id"]).isdisjoint(val["clip_id"]) and set(test["clip_id"]).isdisjoint(
        set(train["clip_id"]) | set(val["clip_id"]))
    train_split, val_split, test_split = (manifest.splits[s] for s in ("train", "val", "test"))
    voices = [set(train_split.speakers), set(val_split.speakers), set(test_split.speakers)]
    assert all(voices) and sum(map(len, voices)) == len(set().union(*voices)) == len({p.parent.name for p in fixture_clips()})
    assert set(train_split.clips) == set(train["clip_id"]) and set(val_split.clips) == set(val["clip_id"])
    assert sorted(train_split.clips + val_split.clips + test_split.clips) == sorted(clips.clips)
    assert (manifest.window_frames, manifest.step_frames, manifest.frame_rate_hz) == (24, 12, 100.0)
    assert manifest.audio == clips.audio == demo_config.audio and manifest.sequence.sequence_ms == 240
    assert train_split.channels["jawOpen"].std > 0.02  # the driven mouth really moves
    # The channel means are those of the rows written (what training initialises its output with).
    mask = train["mask"].astype(np.float64)[..., None]
    expected = (train["targets"] * mask).sum(axis=(0, 1)) / mask.sum()
    np.testing.assert_allclose(train_split.channel_means(), expected, rtol=1e-12, atol=1e-15)
    assert train_split.hours == pytest.approx(sum(clips.clips[c].duration_s for c in train_split.clips) / 3600)


def test_rerun_is_a_noop_and_a_deleted_clip_is_restored(demo_features, demo_shards, demo_config) -> None:
    clips_dir, first = demo_features
    shards_dir, _ = demo_shards
    before_clips, before_shards = _tree(clips_dir / "clips"), _tree(shards_dir)
    listed = ClipsManifest.load(clips_dir)
    inputs = [str(c) for c in fixture_clips()]
    again = run_extract(inputs, str(clips_dir), demo_config, use_ray=True, progress=False)
    assert (again.ok, again.skipped, again.failed) == (0, first.ok, 0)
    assert _tree(clips_dir / "clips") == before_clips and ClipsManifest.load(clips_dir) == listed
    # A rerun on one input keeps every earlier clip in the manifest.
    one = run_extract(inputs[:1], str(clips_dir), demo_config, use_ray=False, progress=False)
    assert one.skipped == 1 and ClipsManifest.load(clips_dir) == listed
    rebuilt = run_build(str(clips_dir), str(shards_dir), demo_config, use_ray=True)
    assert rebuilt.up_to_date and _tree(shards_dir) == before_shards

    victim = sorted((clips_dir / "clips").glob("*/seg-*.parquet"))[3]
    original = read_segment(str(victim))
    victim.unlink()
    with pytest.raises(InputError, match=f"{victim}: listed in the clips manifest but missing"):
        run_build(str(clips_dir), str(shards_dir), demo_config, use_ray=False)
    restored = run_extract(inputs, str(clips_dir), demo_config, use_ray=True, progress=False)
    assert (restored.ok, restored.skipped) == (1, first.ok - 1)
    assert set(_tree(clips_dir / "clips")) == set(before_clips) and ClipsManifest.load(clips_dir) == listed
    again = read_segment(str(victim))
    assert again.clip_id == original.clip_id
    np.testing.assert_array_equal(again.frame_index, original.frame_index)
    # A fresh landmarker per segment: the re-extracted labels are bit-identical, though this time the
    # clip ran alone rather than somewhere in an actor's queue.
    np.testing.assert_array_equal(again.targets, original.targets)
    np.testing.assert_array_equal(again.mel_db, original.mel_db)


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
    # Clip parts the manifest does not list (e.g. left by a crashed run) are not used.
    shutil.copytree(next(p for p in (out / "clips").iterdir() if p.is_dir()), out / "clips" / "0000000000000000")
    shards = tmp_path / "shards"
    build = run_build(str(out), str(shards), load_config(None, ["sequence.split_by=clip"]), use_ray=True)
    got = {f for split in ("train", "val") for f in read_split(str(shards), split)["clip_id"]}
    assert build.clips == len(got) == len(good) == 2 and got == set(ClipsManifest.load(out).clips)


def test_s3_in_and_out(s3_server: str, ray_cluster, demo_config) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="a2bs-test")
    for clip in demo_clips()[:3]:
        s3.upload_file(str(clip), "a2bs-test", f"videos/{clip.parent.name}/{clip.name}")
    summary = run_extract(["s3://a2bs-test/videos"], "s3://a2bs-test/clips", demo_config, use_ray=True,
                          progress=False)
    assert (summary.ok, summary.failed) == (3, 0)
    build = run_build("s3://a2bs-test/clips", "s3://a2bs-test/shards", demo_config, use_ray=True)
    manifest = ShardsManifest.load("s3://a2bs-test/shards")
    assert sum(manifest.rows.values()) == sum(build.rows.values()) > 0
    assert len(ClipsManifest.load("s3://a2bs-test/clips").clips) == 3
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="a2bs-test", Prefix="shards/")["Contents"]}
    assert {f"shards/{f.name}" for s in manifest.splits.values() for f in s.shards} <= keys
    train = read_split("s3://a2bs-test/shards", "train")
    assert train["audio"].dtype == np.float32 and train["audio"].shape[1:] == (24, 80)
    assert all(f.startswith("s3://") for f in shard_files("s3://a2bs-test/shards", "train"))
