"""The columnar clip store: segment rule, round trip, zero-copy reads, cut-and-join."""

from __future__ import annotations

import math

import numpy as np
import pytest

from a2bs.extract.store import (
    SegmentPart,
    concat_parts,
    in_segment,
    plan_segments,
    read_segment,
    segments_on_disk,
    split_part,
    write_segment,
)
from a2bs.schema import N_TARGETS


def _whole(duration_s: float, n_mels: int = 8, seed: int = 0) -> SegmentPart:
    rng = np.random.default_rng(seed)
    frames = int(duration_s * 30)
    audio = 1 + int(duration_s * 100)
    return SegmentPart(
        "clip", -1, 0.0, math.inf,
        frame_index=np.arange(frames, dtype=np.int32) * 2,
        frame_time_s=np.arange(frames) * 2 / 60.0,
        targets=rng.random((frames, N_TARGETS), dtype=np.float32),
        has_face=rng.random(frames) > 0.1,
        audio_time_s=np.arange(audio) * 0.01,
        mel_db=rng.uniform(-80, 0, (audio, n_mels)).astype(np.float32),
        rms=rng.random(audio, dtype=np.float32),
        zcr=rng.random(audio, dtype=np.float32),
        vad=rng.random(audio, dtype=np.float32),
    )


@pytest.mark.parametrize("duration_s, segment_s, starts", [
    (150.0, 60.0, [0.0, 60.0, 120.0]),
    (130.0, 60.0, [0.0, 60.0]),  # a 10 s tail (< 25 % of a segment) joins the one before
    (150.0, 0.0, [0.0]),  # 0 = the whole file
    (None, 60.0, [0.0]),  # unknown duration: the whole file
    (20.0, 60.0, [0.0]),
])
def test_plan_segments(duration_s, segment_s, starts):
    plan = plan_segments(duration_s, segment_s)
    assert [s.start_s for s in plan] == starts
    assert [s.index for s in plan] == list(range(len(starts)))
    assert plan[-1].end_s == math.inf
    assert all(a.end_s == b.start_s for a, b in zip(plan, plan[1:]))


def test_every_frame_in_exactly_one_segment():
    times = np.arange(0, 20000) * 0.01  # 200 s of 100 Hz frames: borders land exactly on frame times
    plan = plan_segments(200.0, 60.0)
    owners = np.stack([in_segment(times, s) for s in plan])
    assert (owners.sum(axis=0) == 1).all()
    assert owners[1, 6000] and not owners[0, 6000]  # t = 60.0 s starts segment 1


def test_round_trip_is_exact_and_zero_copy(tmp_path):
    whole = _whole(130.0)
    parts = split_part(whole, plan_segments(150.0, 60.0))
    for p in parts:
        write_segment(str(tmp_path), p)
    assert segments_on_disk(str(tmp_path), "clip") == [0, 1, 2]
    back = [read_segment(str(tmp_path / "clips" / "clip" / f"seg-{i:05d}.parquet")) for i in range(3)]
    assert back[1].start_s == 60.0 and back[2].end_s == math.inf
    assert back[0].mel_db.shape[1] == 8 and back[0].targets.shape[1] == N_TARGETS
    assert not back[0].mel_db.flags.writeable and not back[0].targets.flags.writeable  # views into Arrow buffers
    joined = concat_parts(back)
    for name in ("frame_index", "frame_time_s", "targets", "has_face", "audio_time_s", "mel_db", "rms", "zcr", "vad"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
    assert joined.targets.dtype == np.float32 and joined.frame_index.dtype == np.int32


def test_footer_meta_pose_and_one_listing(tmp_path):
    from a2bs.extract.store import (
        all_segments_on_disk,
        read_pose,
        read_segment_meta,
        write_pose,
    )

    parts = split_part(_whole(130.0), plan_segments(130.0, 60.0))
    uri = write_segment(str(tmp_path), parts[1], {"original_fps": 29.97, "frames": 7})
    write_segment(str(tmp_path), parts[0])
    assert read_segment_meta(uri) == {"original_fps": 29.97, "frames": 7}
    assert read_segment(uri).start_s == 60.0  # the footer meta does not change what a reader gets
    rng = np.random.default_rng(1)
    rotation, translation, has_face = rng.random((5, 3, 3)), rng.random((5, 3)), rng.random(5) > 0.5
    write_pose(str(tmp_path), "clip", 1, rotation, translation, has_face)
    back = read_pose(str(tmp_path), "clip", 1)
    for want, got in zip((rotation, translation, has_face), back):
        np.testing.assert_array_equal(got, want)  # float64, exact
    (tmp_path / "clips" / "old-clip.parquet").write_bytes(b"PAR1")
    found, other = all_segments_on_disk(str(tmp_path))
    assert found == {"clip": [0, 1]}  # the pose file is not a part
    assert [o.rsplit("/", 1)[-1] for o in other] == ["old-clip.parquet"]


def test_tasks_longest_first_and_incremental_progress():
    from a2bs.extract.pipeline import Progress
    from a2bs.extract.plan import ProbedInput, longest_first, segment_tasks

    take = ProbedInput("take.mp4", "spk", ".", "t", 150.0, True)
    short = ProbedInput("short.mp4", "spk", ".", "s", 20.0, True)
    unknown = ProbedInput("odd.mp4", "spk", ".", "u", None, True)
    tasks = segment_tasks(take, 60.0, done={1}) + segment_tasks(short, 60.0, set()) + segment_tasks(unknown, 60, set())
    order = [(t["clip_id"], t["segment"]) for t in longest_first(tasks)]
    assert order == [("u", 0), ("t", 0), ("t", 2), ("s", 0)]  # unknown length first; segment 1 is done
    progress, rows = Progress(failed_before=1), []
    for frames in (300, 600):
        rows.append({"status": "ok", "frames": frames, "footage_s": 30.0})
        text = progress(rows, 10.0)
    rows.append({"status": "failed", "frames": 0, "footage_s": 0.0})
    assert text == "90 frames/s, 1.0 min of footage, 1 failed"
    assert progress(rows, 10.0).endswith("2 failed") and progress.seen == 3
