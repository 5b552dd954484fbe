"""Segment-parallel extraction of a long take equals a whole-file pass; reruns and damaged takes.

The take (about 72 s) is made here from demo clips; ``extract.segment_s=20`` cuts it into
four segments (20 s x 3 + a 12 s tail), so every border, the open-ended last segment and the
warm-up are exercised while the test stays small.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from support import DEMO_CORPUS

from a2bs.config import ConfigError, load_config
from a2bs.extract.pipeline import run_extract
from a2bs.extract.store import (
    concat_parts,
    iter_segments,
    plan_segments,
    read_segment,
    segment_uri,
    segments_on_disk,
    split_part,
)
from a2bs.manifests import ClipsManifest
from a2bs.schema import N_BLENDSHAPES

SEGMENT_S = 20.0
TAKE_CLIPS = 9  # the first one and a half voices' clips: 71.7 s
# A tracker restarted at a segment border (after its warm-up) never returns to bit-identical values:
# MediaPipe carries each frame's landmarks into the next frame's crop. Measured (docs/scaling.md,
# "Warm-up"; benchmarks/measure_warmup.py): up to ~0.05 in a blendshape score, ~0.003 per frame on
# average; the relative pose moves by ~2e-3 (quaternion) and ~2e-4 m. The first segment is exact.
BLENDSHAPE_MAX, BLENDSHAPE_MEAN = 0.1, 0.01  # scores in [0, 1]: largest and mean per-frame difference
POSE_MAX = 0.01


@pytest.fixture(scope="module")
def take(tmp_path_factory) -> Path:
    """One continuous take: demo clips joined, audio resampled onto one timeline (no PNS noise bands,
    which the AAC decoder fills from a random generator: see docs/scaling.md)."""
    folder = tmp_path_factory.mktemp("take")
    clips = sorted(DEMO_CORPUS.rglob("*.mp4"))[:TAKE_CLIPS]
    listing = folder / "list.txt"
    listing.write_text("".join(f"file '{c}'\n" for c in clips))
    out = folder / "in" / "actor" / "take.mp4"
    out.parent.mkdir(parents=True)
    mf.run_ffmpeg("-f", "concat", "-safe", "0", "-i", listing, "-af", "aresample=async=1:first_pts=0",
                  "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-c:a", "aac", "-aac_pns", "0",
                  "-movflags", "+faststart", out)
    return out


def _cfg(segment_s: float, *more: str):
    return load_config(None, [f"extract.segment_s={segment_s}", "ray.extract_actors=2", *more])


@pytest.fixture(scope="module")
def whole(take, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "clips"
    summary = run_extract([str(take)], str(out), _cfg(0), use_ray=False, progress=False)
    assert (summary.ok, summary.failed, summary.segments) == (1, 0, 1)
    (entry,) = ClipsManifest.load(out).clips.values()
    return out, entry


@pytest.fixture(scope="module")
def segmented(take, whole, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("segmented") / "clips"
    summary = run_extract([str(take)], str(out), _cfg(SEGMENT_S), write_json=True, use_ray=True, progress=False)
    assert (summary.ok, summary.failed, summary.segments) == (1, 0, 4)
    return out


def _parts(clips_dir: Path, clip_id: str, indices) -> list:
    return list(iter_segments(str(clips_dir), clip_id, indices))


def test_segments_equal_a_whole_file_pass(whole, segmented) -> None:
    whole_dir, entry = whole
    cid = next(iter(ClipsManifest.load(whole_dir).clips))
    seg_entry = ClipsManifest.load(segmented).clips[cid]
    plan = plan_segments(entry.duration_s, SEGMENT_S)
    assert (seg_entry.n_segments, seg_entry.segments, seg_entry.segment_s) == (4, (0, 1, 2, 3), SEGMENT_S)
    for name in ("duration_s", "video_fps", "face_fps", "frames", "face_frames", "frame_interval"):
        assert getattr(seg_entry, name) == getattr(entry, name), name
    expected = split_part(concat_parts(_parts(whole_dir, cid, entry.segments)), plan)
    got = _parts(segmented, cid, seg_entry.segments)
    face_diffs = []
    for want, part in zip(expected, got):
        assert (part.start_s, part.end_s) == (want.start_s, want.end_s)
        np.testing.assert_array_equal(part.frame_index, want.frame_index)
        np.testing.assert_array_equal(part.frame_time_s, want.frame_time_s)
        np.testing.assert_array_equal(part.audio_time_s, want.audio_time_s)
        np.testing.assert_allclose(part.mel_db, want.mel_db, rtol=0, atol=1e-3)
        for name in ("rms", "zcr", "vad"):
            np.testing.assert_allclose(getattr(part, name), getattr(want, name), rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(part.has_face, want.has_face)
        shapes = np.abs(part.targets[:, :N_BLENDSHAPES] - want.targets[:, :N_BLENDSHAPES]).max(axis=1)
        pose = np.abs(part.targets[:, N_BLENDSHAPES:] - want.targets[:, N_BLENDSHAPES:]).max(axis=1)
        face_diffs.append((part.segment, float(shapes.max()), float(shapes.mean()), float(pose.max())))
        if part.segment == 0:  # a fresh tracker from the file's start: the whole-file pass's values
            np.testing.assert_array_equal(part.targets[:, :N_BLENDSHAPES], want.targets[:, :N_BLENDSHAPES])
    assert all(m <= BLENDSHAPE_MAX and mean <= BLENDSHAPE_MEAN and p <= POSE_MAX for _, m, mean, p in face_diffs), \
        face_diffs


def test_json_of_the_whole_clip(segmented) -> None:
    (entry,) = ClipsManifest.load(segmented).clips.items()
    cid, e = entry
    face = json.loads((segmented / "json" / f"{cid}.face.json").read_text())
    audio = json.loads((segmented / "json" / f"{cid}.audio.json").read_text())
    whole = concat_parts(_parts(segmented, cid, e.segments))
    assert face["frameCount"] == e.frames == len(whole.frame_index)
    assert [f["frame_index"] for f in face["frames"]] == whole.frame_index.tolist()
    assert [f["headRotation"]["w"] for f in face["frames"]] == whole.targets[:, N_BLENDSHAPES + 3].tolist()
    assert audio["n_frames"] == len(whole.audio_time_s) and len(audio["mel_features"][0]) == 80


def test_rerun_extracts_only_the_missing_segment(segmented, tmp_path: Path, take) -> None:
    out = tmp_path / "clips"
    shutil.copytree(segmented, out)
    (cid,) = ClipsManifest.load(out).clips
    before = {i: read_segment(segment_uri(str(out), cid, i)) for i in range(4)}
    Path(segment_uri(str(out), cid, 2)).unlink()
    assert segments_on_disk(str(out), cid) == [0, 1, 3]
    summary = run_extract([str(take)], str(out), _cfg(SEGMENT_S), use_ray=False, progress=False)
    records = json.loads((out / "_summary.json").read_text())
    assert [(r["segment"], r["status"]) for r in records["segments"]] == [(2, "ok")]
    assert (summary.ok, summary.skipped, summary.segments) == (1, 0, 1)
    for i, was in before.items():
        now = read_segment(segment_uri(str(out), cid, i))
        for name in ("frame_index", "frame_time_s", "targets", "has_face", "audio_time_s", "mel_db", "vad"):
            np.testing.assert_array_equal(getattr(now, name), getattr(was, name), err_msg=f"{i} {name}")
    assert ClipsManifest.load(out) == ClipsManifest.load(segmented)
    again = run_extract([str(take)], str(out), _cfg(SEGMENT_S), use_ray=False, progress=False)
    assert (again.skipped, again.segments) == (1, 0)  # complete: nothing to do
    other = tmp_path / "other"  # the parts without a manifest, as an interrupted run leaves them
    shutil.copytree(out / "clips", other / "clips")
    with pytest.raises(ConfigError, match="cut with extract.segment_s=20.0"):  # never mixed with another cut
        run_extract([str(take)], str(other), _cfg(30), use_ray=False, progress=False)


def test_truncated_take_keeps_the_segments_before_the_damage(take, whole, tmp_path: Path) -> None:
    cut = tmp_path / "in" / "actor" / "cut.mp4"
    cut.parent.mkdir(parents=True)
    data = take.read_bytes()  # faststart: the header survives the cut and claims the full duration
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "clips"
    summary = run_extract([str(cut)], str(out), _cfg(SEGMENT_S), use_ray=False, progress=False)
    (cid, entry), = ClipsManifest.load(out).clips.items()
    assert entry.segments == (0, 1) and entry.n_segments == 4  # listed and usable: the parts before the cut
    assert summary.failed == 1 and summary.ok == 0
    failures = json.loads((out / "_failures.json").read_text())
    assert [(f["clip_id"], f["source"], f["start_s"]) for f in failures] == [(cid, str(cut), 40.0), (cid, str(cut), 60.0)]
    _, full = whole  # the header still claims the whole take
    assert failures[0]["end_s"] == 60.0 and failures[1]["end_s"] == pytest.approx(full.duration_s, abs=0.5)
    assert "truncated or damaged" in failures[0]["reason"]
    assert len(concat_parts(_parts(out, cid, entry.segments)).frame_index) == entry.frames > 1100


def test_clips_folder_of_the_old_layout_is_refused(tmp_path: Path, take) -> None:
    old = tmp_path / "clips"
    (old / "clips").mkdir(parents=True)
    (old / "clips" / "0123456789abcdef.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="layout before the clip store.*new --out"):
        run_extract([str(take)], str(old), _cfg(SEGMENT_S), use_ray=False, progress=False)
    v1 = tmp_path / "v1"  # a clips manifest of that layout
    ClipsManifest(load_config().audio, {}).write(v1)
    manifest = json.loads((v1 / "_manifest.json").read_text())
    (v1 / "_manifest.json").write_text(json.dumps({**manifest, "manifest_version": 1}))
    with pytest.raises(ConfigError, match="clips manifest version 1, this a2bs reads 2.*new --out"):
        run_extract([str(take)], str(v1), _cfg(SEGMENT_S), use_ray=False, progress=False)


def test_remote_take_is_cut_into_segments(s3_server: str, tmp_path: Path, demo_clip: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="a2bs-segments")
    s3.upload_file(str(demo_clip), "a2bs-segments", "footage/spk/clip.mp4")
    local = run_extract([str(demo_clip)], str(tmp_path / "clips"), _cfg(3), use_ray=False, progress=False)
    remote = run_extract(["s3://a2bs-segments/footage"], "s3://a2bs-segments/clips", _cfg(3), use_ray=False,
                         progress=False)
    assert local.segments == remote.segments == 3  # 8.1 s in 3 s segments: 0-3, 3-6, 6 s to the end
    (cid, entry), = ClipsManifest.load("s3://a2bs-segments/clips").clips.items()
    assert entry.source_uri == "s3://a2bs-segments/footage/spk/clip.mp4" and entry.segments == (0, 1, 2)
    here = concat_parts(_parts(tmp_path / "clips", cid, entry.segments))
    there = concat_parts(list(iter_segments("s3://a2bs-segments/clips", cid, entry.segments)))
    np.testing.assert_array_equal(there.targets, here.targets)
    np.testing.assert_array_equal(there.mel_db, here.mel_db)
