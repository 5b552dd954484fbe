"""Build that streams: synchronisation and windowing part by part equal a whole-clip pass.

The reference is today's whole-clip algorithm (``synchronise`` + ``validate`` + ``make_windows`` on a
clip's joined arrays); the streamed side cuts the same clip at segment borders (``split_part``), which
is what a segment-parallel extraction writes. Synthetic clips cover the edges (faces lost at a border,
video shorter than the audio or starting late, no face, audio only); real features of demo clips go
through ``run_build`` from a whole-clip store and from segmented stores, with and without a gap.
"""

from __future__ import annotations

import math
from dataclasses import replace

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from a2bs.build.pipeline import run_build
from a2bs.build.sequences import (
    ClipCounts,
    SyncedClip,
    Windower,
    make_windows,
    synchronise,
    synchronise_parts,
    track_span,
    validate,
    window_params,
)
from a2bs.build.shards import ShardRows
from a2bs.config import Config, SequenceConfig
from a2bs.errors import InputError
from a2bs.extract.clip import extract_segment
from a2bs.extract.face import FaceTracker
from a2bs.extract.store import Segment, SegmentPart, plan_segments, split_part, write_segment
from a2bs.manifests import ClipEntry, ClipsManifest, ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import N_TARGETS, sequence_schema
from a2bs.train.data import arrow_to_arrays

RATE_HZ = 100.0
KEYS = ("start_s", "audio", "targets", "vad", "mask")


def synthetic_clip(duration_s: float, video_from_s: float = 0.0, video_to_s: float | None = None,
                   face_share: float = 0.9, n_mels: int = 8, seed: int = 0) -> SegmentPart:
    """A clip on the extraction grids (100 Hz audio, 30 Hz video from `video_from_s` to `video_to_s`),
    with runs of frames without a face and values outside the valid ranges."""
    rng = np.random.default_rng(seed)
    n_audio = int(duration_s * RATE_HZ) + 1
    index = np.arange(round(video_from_s * 30), round((duration_s if video_to_s is None else video_to_s) * 30))
    lost = np.repeat(rng.random(len(index) // 5 + 1) > face_share, 5)[: len(index)]  # faces lost 5 frames at a time
    return SegmentPart(
        "clip", -1, 0.0, math.inf,
        frame_index=index.astype(np.int32), frame_time_s=index / 30.0,
        targets=rng.uniform(-0.05, 1.05, (len(index), N_TARGETS)).astype(np.float32), has_face=~lost,
        audio_time_s=np.arange(n_audio) * (1 / RATE_HZ),
        mel_db=rng.uniform(-85, 12, (n_audio, n_mels)).astype(np.float32),
        rms=rng.random(n_audio, dtype=np.float32), zcr=rng.random(n_audio, dtype=np.float32),
        vad=rng.random(n_audio, dtype=np.float32),
    )


def whole_windows(whole: SegmentPart, cfg: SequenceConfig) -> tuple[dict[str, np.ndarray], ClipCounts]:
    """Today's build of one clip: synchronise, validate and window its joined arrays."""
    targets, mask = synchronise(whole.audio_time_s, whole.frame_time_s, whole.targets, whole.has_face)
    mel, targets, counts = validate(whole.mel_db, targets)
    return make_windows(SyncedClip(whole.audio_time_s, mel, targets, whole.vad, mask), cfg, RATE_HZ), counts


def streamed_windows(parts: list[SegmentPart], n_segments: int,
                     cfg: SequenceConfig) -> tuple[dict[str, np.ndarray], ClipCounts, int]:
    """The same clip part by part; also the most audio frames held between parts."""
    track = track_span((p.frame_time_s, p.has_face) for p in parts)
    windower = Windower(cfg, RATE_HZ)
    out, counts, held = [], ClipCounts(0, np.zeros(N_TARGETS, np.int64)), 0
    for run in synchronise_parts(iter(parts), n_segments, [p.segment for p in parts], track, RATE_HZ):
        out.append(windower.push(run))
        counts = counts.add(run.counts)
        held = max(held, len(windower.buffer.time_s))
    joined = {k: np.concatenate([w[k] for w in out]) if out else np.zeros(0) for k in KEYS}
    return joined, counts, held


def assert_windows_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert len(a["start_s"]) == len(b["start_s"])
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


CASES = {
    "faces lost at random": {},
    "video shorter than the audio": {"video_to_s": 5.1},
    "video starting late": {"video_from_s": 2.45},
    "no face at all": {"face_share": -1.0},
    "audio only": {"video_from_s": 0.0, "video_to_s": 0.0},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("segment_s", [0.37, 1.0, 2.5])
def test_streamed_windows_equal_whole_clip(case: str, segment_s: float) -> None:
    whole = synthetic_clip(9.03, **CASES[case])
    cfg = SequenceConfig(min_face_ratio=0.0 if case in ("no face at all", "audio only") else 0.5)
    plan = plan_segments(9.03, segment_s)
    expected, expected_counts = whole_windows(whole, cfg)
    got, counts, held = streamed_windows(split_part(whole, plan), len(plan), cfg)
    assert len(expected["start_s"]) > 10
    assert_windows_equal(got, expected)
    assert counts.mel_clipped == expected_counts.mel_clipped > 0
    np.testing.assert_array_equal(counts.target_clipped, expected_counts.target_clipped)
    assert held < window_params(cfg, RATE_HZ)[0]  # between parts only the start of the next window is kept


# Borders placed so that windows reach the audio frames between a border and the face frame next to it:
# 6.12 s is a window start just before a face frame, 9.96 s is just after the end of a window.
GAP_BORDERS_S = (0.0, 2.0, 4.0, 6.12, 8.0, 9.96, math.inf)


@pytest.mark.parametrize("missing", [(2,), (5,), (0, 3)])
def test_a_gap_is_never_bridged(missing: tuple[int, ...]) -> None:
    whole = synthetic_clip(12.0)
    cfg = SequenceConfig()
    length, _ = window_params(cfg, RATE_HZ)
    plan = [Segment(k, a, b) for k, (a, b) in enumerate(zip(GAP_BORDERS_S, GAP_BORDERS_S[1:]))]
    parts = [p for p in split_part(whole, plan) if p.segment not in missing]
    expected, _ = whole_windows(whole, cfg)
    got, _, _ = streamed_windows(parts, len(plan), cfg)
    window_s = length / RATE_HZ
    ends = got["start_s"] + window_s
    for seg in (plan[k] for k in missing):  # no window touches a missing segment
        assert not ((got["start_s"] < seg.end_s) & (ends > seg.start_s)).any()
    # Every kept window is the whole-clip window at the same start ...
    rows = np.searchsorted(expected["start_s"], got["start_s"])
    assert_windows_equal(got, {k: v[rows] for k, v in expected.items()})
    # ... and every whole-clip window a frame period clear of the missing segments is kept.
    clear = np.ones(len(expected["start_s"]), bool)
    for seg in (plan[k] for k in missing):
        clear &= (expected["start_s"] >= seg.end_s + 1 / 30) | (expected["start_s"] + window_s <= seg.start_s - 1 / 30)
    assert set(expected["start_s"][clear]) <= set(got["start_s"]) and clear.sum() > 0.5 * len(clear)


def test_shard_rows_do_not_depend_on_how_they_arrive(tmp_path) -> None:
    whole = synthetic_clip(6.0, n_mels=4)
    cfg = SequenceConfig()
    windows, _ = whole_windows(whole, cfg)
    n = len(windows["start_s"])
    window_bytes = sum(windows[k][0].nbytes for k in ("audio", "targets", "vad", "mask"))
    results = []
    for name, cuts in (("one", [0, n]), ("many", [0, 3, 4, 17, 40, n])):
        path = tmp_path / f"{name}.parquet"
        with storage.atomic_parquet_writer(str(path), sequence_schema(4)) as writer:
            rows = ShardRows(writer, "train", 4, row_group_bytes=16 * window_bytes + 1)
            for a, b in zip(cuts, cuts[1:]):
                rows.add("clip", "spk", {k: v[a:b] for k, v in windows.items()})
            rows.finish()
        results.append((pq.read_table(path), rows))
    (one, rows_one), (many, rows_many) = results
    assert one.equals(many) and one.num_rows == n == rows_one.rows
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == -(-n // 16)
    np.testing.assert_array_equal(rows_one.target_sum, rows_many.target_sum)
    assert rows_one.valid_frames == rows_many.valid_frames == windows["mask"].sum()
    arrays = arrow_to_arrays(one, 4)  # training reads the rows back as windows
    np.testing.assert_array_equal(arrays["targets"], windows["targets"])
    np.testing.assert_array_equal(arrays["audio"], windows["audio"])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def write_store(clips_dir: str, wholes: dict[str, tuple[str, SegmentPart, float]], segment_s: float,
                missing: tuple[int, ...] = ()) -> None:
    """A clip store of whole-clip features cut into parts of `segment_s` (0: one part), less `missing`."""
    entries = {}
    for clip_id, (speaker, whole, duration_s) in wholes.items():
        plan = plan_segments(duration_s, segment_s)
        kept = [p for p in split_part(replace(whole, clip_id=clip_id), plan) if p.segment not in missing]
        for part in kept:
            write_segment(clips_dir, part)
        entries[clip_id] = ClipEntry(f"{clip_id}.mp4", speaker, duration_s, 30.0, 30.0, RATE_HZ,
                                     len(whole.frame_index), int(whole.has_face.sum()), 1, segment_s, len(plan),
                                     tuple(p.segment for p in kept))
    ClipsManifest(Config().audio, entries).write(clips_dir)


@pytest.fixture(scope="module")
def demo_features(demo_clip) -> dict[str, tuple[str, SegmentPart, float]]:
    """Real extracted features (MediaPipe, log-mel) of two demo clips of two speakers."""
    others = [c for c in sorted(demo_clip.parent.parent.rglob("*.mp4")) if c.parent != demo_clip.parent]
    clips = [demo_clip, others[0]]
    cfg = Config()
    out = {}
    with FaceTracker(cfg.video) as tracker:
        for path in clips:
            features = extract_segment(path, cfg, tracker, path.stem, Segment(0, 0.0, math.inf), 1, has_video=True)
            out[path.stem] = (path.parent.name, replace(features.part, segment=-1), features.audio_end_s)
    return out


def read_shards(shards_dir: str) -> tuple[ShardsManifest, dict[str, pa.Table]]:
    manifest = ShardsManifest.load(shards_dir)
    tables = {f.name: pq.read_table(storage.join(shards_dir, f.name)) for s in manifest.splits.values()
              for f in s.shards}
    return manifest, tables


def test_build_from_a_segmented_store_equals_the_whole_clip_build(tmp_path, demo_features) -> None:
    cfg = Config()
    builds = {}
    for name, segment_s in (("whole", 0.0), ("segmented", 2.37)):
        write_store(str(tmp_path / f"clips_{name}"), demo_features, segment_s)
        run_build(str(tmp_path / f"clips_{name}"), str(tmp_path / f"shards_{name}"), cfg, use_ray=False,
                  progress=False)
        builds[name] = read_shards(str(tmp_path / f"shards_{name}"))
    (whole_manifest, whole), (seg_manifest, seg) = builds["whole"], builds["segmented"]
    assert set(whole) == set(seg) and sum(t.num_rows for t in whole.values()) > 100
    for name in whole:
        assert seg[name].equals(whole[name]), name  # row for row, every column
    assert seg_manifest.splits == whole_manifest.splits  # rows, clips, channel means and stds, clip counts
    # The whole-clip store gives today's windows: one clip through today's algorithm.
    clip_id, (_, part, _) = next(iter(demo_features.items()))
    expected, _ = whole_windows(part, cfg.sequence)
    table = next(t for t in whole.values() if t.column("clip_id")[0].as_py() == clip_id)
    rows = arrow_to_arrays(table.filter(pc.equal(table.column("clip_id"), clip_id)), cfg.audio.n_mels)
    np.testing.assert_array_equal(rows["targets"], expected["targets"])
    np.testing.assert_array_equal(rows["audio"], expected["audio"])
    np.testing.assert_array_equal(rows["start_s"], expected["start_s"])


def test_build_with_a_failed_segment_keeps_the_rest(tmp_path, demo_features) -> None:
    cfg = Config()
    write_store(str(tmp_path / "clips_whole"), demo_features, 0.0)
    write_store(str(tmp_path / "clips_gap"), demo_features, 2.37, missing=(2,))
    run_build(str(tmp_path / "clips_whole"), str(tmp_path / "shards_whole"), cfg, use_ray=False, progress=False)
    run_build(str(tmp_path / "clips_gap"), str(tmp_path / "shards_gap"), cfg, use_ray=False, progress=False)
    (_, whole), (manifest, gap) = read_shards(str(tmp_path / "shards_whole")), read_shards(str(tmp_path / "shards_gap"))
    gap_s = (2 * 2.37, 3 * 2.37)
    length, _ = window_params(cfg.sequence, RATE_HZ)
    for name, table in gap.items():
        rows = table.to_pydict()
        starts = np.array(rows["start_s"])
        assert not ((starts < gap_s[1]) & (starts + length / RATE_HZ > gap_s[0])).any()
        # Every row is the whole-clip build's row of the same clip and start.
        ref = whole[name].to_pydict()
        index = {(c, s): i for i, (c, s) in enumerate(zip(ref["clip_id"], ref["start_s"]))}
        for i, key in enumerate(zip(rows["clip_id"], rows["start_s"])):
            assert all(rows[col][i] == ref[col][index[key]] for col in rows), key
    total = {name: t.num_rows for name, t in gap.items()}
    whole_total = {name: t.num_rows for name, t in whole.items()}
    # Each clip loses about the windows of one segment (2.37 s at 0.12 s a window), no more.
    assert all(whole_total[n] - 2 * (2.37 / 0.12 + 3) <= total[n] < whole_total[n] for n in total)
    assert sum(manifest.rows.values()) == sum(total.values())


def test_shards_on_s3_equal_local_ones(tmp_path, s3_server) -> None:
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="a2bs-build")
    cfg = Config()
    wholes = {f"clip{i}": (f"spk{i}", synthetic_clip(7.0, n_mels=cfg.audio.n_mels, seed=i), 7.0) for i in range(2)}
    for clips, shards in ((str(tmp_path / "clips"), str(tmp_path / "shards")),
                          ("s3://a2bs-build/clips", "s3://a2bs-build/shards")):
        write_store(clips, wholes, 2.0)
        run_build(clips, shards, cfg, use_ray=False, progress=False)
    local_manifest, local = read_shards(str(tmp_path / "shards"))
    s3_manifest, s3 = read_shards("s3://a2bs-build/shards")
    assert local_manifest.splits == s3_manifest.splits and set(local) == set(s3) and len(local) == 2
    assert all(s3[name].equals(local[name]) and local[name].num_rows > 0 for name in local)


def test_a_failed_shard_write_leaves_no_file(tmp_path) -> None:
    target = tmp_path / "train" / "part-00000.parquet"
    with pytest.raises(RuntimeError, match="stop"):
        with storage.atomic_parquet_writer(str(target), sequence_schema(4)) as writer:
            rows = ShardRows(writer, "train", 4, row_group_bytes=1)
            rows.add("clip", "spk", whole_windows(synthetic_clip(2.0, n_mels=4), SequenceConfig())[0])
            raise RuntimeError("stop")
    assert list(tmp_path.rglob("*")) == [tmp_path / "train"]  # no shard, no temporary file


def test_a_part_listed_but_missing_is_named(tmp_path) -> None:
    clips = str(tmp_path / "clips")
    write_store(clips, {"clip0": ("spk", synthetic_clip(7.0, n_mels=80), 7.0)}, 2.0)
    (tmp_path / "clips" / "clips" / "clip0" / "seg-00001.parquet").unlink()
    with pytest.raises(InputError, match=r"clip0/seg-00001\.parquet: listed in the clips manifest but missing"):
        run_build(clips, str(tmp_path / "shards"), Config(), use_ray=False, progress=False)


def test_filling_a_gap_rebuilds(tmp_path) -> None:
    cfg = Config()
    wholes = {f"clip{i}": (f"spk{i}", synthetic_clip(7.0, n_mels=80, seed=i), 7.0) for i in range(2)}
    clips, shards = str(tmp_path / "clips"), str(tmp_path / "shards")
    write_store(clips, wholes, 2.0, missing=(1,))
    gap = run_build(clips, shards, cfg, use_ray=False, progress=False)
    write_store(clips, wholes, 2.0)  # the failed segment extracted on a rerun
    filled = run_build(clips, shards, cfg, use_ray=False, progress=False)
    assert not filled.up_to_date and sum(filled.rows.values()) > sum(gap.rows.values())
    assert run_build(clips, shards, cfg, use_ray=False, progress=False).up_to_date
    write_store(str(tmp_path / "clips_whole"), wholes, 0.0)
    run_build(str(tmp_path / "clips_whole"), str(tmp_path / "shards_whole"), cfg, use_ray=False, progress=False)
    (_, got), (_, expected) = read_shards(shards), read_shards(str(tmp_path / "shards_whole"))
    assert set(got) == set(expected) and all(got[name].equals(expected[name]) for name in got)
