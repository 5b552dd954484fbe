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
