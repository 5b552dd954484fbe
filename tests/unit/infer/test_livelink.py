"""Live Link Face CSV and UDP formats, head/eye angles, Curves resampling and files."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest

from a2bs.infer.curves import Curves, StreamResampler, frame_count, load_npz
from a2bs.infer.livelink import (
    LIVELINK_CSV_HEADER,
    WIRE_CURVES,
    decode_packet,
    encode_packet,
    eye_angles,
    format_timecode,
    fps_fraction,
    head_angles,
    livelink_values,
    new_device_id,
    parse_timecode,
    read_csv,
)
from a2bs.schema import N_BLENDSHAPES, N_TARGETS, TARGET_NAMES

# Written out by hand from the Live Link Face app's CSV export (not derived from a2bs.schema).
APP_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,"
    "MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,"
    "MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,"
    "MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,"
    "CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,"
    "LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
)
# Unreal's EARFaceBlendShape enum (the index Unreal files each UDP value under), by hand.
UE_ENUM = (
    "EyeBlinkLeft EyeLookDownLeft EyeLookInLeft EyeLookOutLeft EyeLookUpLeft EyeSquintLeft EyeWideLeft "
    "EyeBlinkRight EyeLookDownRight EyeLookInRight EyeLookOutRight EyeLookUpRight EyeSquintRight EyeWideRight "
    "JawForward JawLeft JawRight JawOpen MouthClose MouthFunnel MouthPucker MouthLeft MouthRight "
    "MouthSmileLeft MouthSmileRight MouthFrownLeft MouthFrownRight MouthDimpleLeft MouthDimpleRight "
    "MouthStretchLeft MouthStretchRight MouthRollLower MouthRollUpper MouthShrugLower MouthShrugUpper "
    "MouthPressLeft MouthPressRight MouthLowerDownLeft MouthLowerDownRight MouthUpperUpLeft MouthUpperUpRight "
    "BrowDownLeft BrowDownRight BrowInnerUp BrowOuterUpLeft BrowOuterUpRight CheekPuff CheekSquintLeft "
    "CheekSquintRight NoseSneerLeft NoseSneerRight TongueOut HeadYaw HeadPitch HeadRoll LeftEyeYaw "
    "LeftEyePitch LeftEyeRoll RightEyeYaw RightEyePitch RightEyeRoll"
).split()


def quat(axis: str, angle: float) -> np.ndarray:
    v = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[axis]
    return np.array([math.cos(angle / 2), *(math.sin(angle / 2) * np.array(v))])


def random_curves(n: int, fps: float, seed: int = 0, duration_s: float | None = None) -> Curves:
    rng = np.random.default_rng(seed)
    v = np.zeros((n, N_TARGETS), np.float32)
    v[:, :N_BLENDSHAPES] = rng.random((n, N_BLENDSHAPES))
    v[:, N_BLENDSHAPES : N_BLENDSHAPES + 3] = rng.normal(0, 0.01, (n, 3))
    q = np.concatenate([np.ones((n, 1)), rng.normal(0, 0.1, (n, 3))], axis=1)
    v[:, N_BLENDSHAPES + 3 :] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return Curves(v, fps, duration_s)


def test_csv_header_is_the_apps_header():
    assert ",".join(LIVELINK_CSV_HEADER) == APP_HEADER
    assert len(LIVELINK_CSV_HEADER) == 63


def test_wire_order_is_unreals_enum():
    assert list(WIRE_CURVES) == UE_ENUM
    assert len(WIRE_CURVES) == 61


def test_packet_layout_byte_by_byte():
    values = np.arange(61, dtype=np.float64) / 100.0  # CSV order: value i belongs to header column i + 2
    device = new_device_id()
    data = encode_packet(values, "Face", device, frame_number=42, fps=60.0, sub_frame=0.25)
    # PyLiveLinkFace writes struct.pack('<I', 6) + '$' + uuid: the same bytes for a 36-char id.
    assert len(device) == 36
    assert struct.unpack("<I", data[:4])[0] == 6 and data[4:5] == b"$"
    assert data[0] == 6 and struct.unpack(">i", data[1:5])[0] == 36 and data[5:41].decode() == device
    assert struct.unpack(">i", data[41:45])[0] == 4 and data[45:49] == b"Face"
    frame, sub, num, den, count = struct.unpack(">ifiiB", data[49:66])
    assert (frame, sub, num, den, count) == (42, 0.25, 60, 1, 61)
    wire = struct.unpack(">61f", data[66:])
    assert len(data) == 66 + 61 * 4
    csv_names = LIVELINK_CSV_HEADER[2:]
    for i, name in enumerate(UE_ENUM):
        assert wire[i] == pytest.approx(values[csv_names.index(name)], abs=1e-7), name
    assert wire[UE_ENUM.index("JawLeft")] == pytest.approx(values[csv_names.index("JawLeft")])


def test_packet_round_trip():
    values = np.random.default_rng(1).random(61)
    p = decode_packet(encode_packet(values, "Ünïcode subject", "$dev", 7, 30000 / 1001))
    assert p.subject == "Ünïcode subject" and p.device_id == "$dev" and p.version == 6
    assert (p.fps_numerator, p.fps_denominator) == (30000, 1001)
    assert p.time_s == pytest.approx(7 * 1001 / 30000)
    np.testing.assert_allclose(p.values, values, atol=1e-6)
    with pytest.raises(ValueError):
        encode_packet(values[:60], "s", "d", 0, 60.0)


def test_fps_fraction():
    assert fps_fraction(60.0) == (60, 1)
    assert fps_fraction(30000 / 1001) == (30000, 1001)
    assert fps_fraction(24.5) == (49, 2)


@pytest.mark.parametrize("t, fps, text", [
    (0.0, 60, "00:00:00:00.000"),
    (1.5, 60, "00:00:01:30.000"),
    (3661.25, 30, "01:01:01:07.500"),
    (59.99, 100, "00:00:59:99.000"),
])
def test_timecode(t, fps, text):
    assert format_timecode(t, fps) == text
    assert parse_timecode(text, fps) == pytest.approx(t, abs=1e-6)


def test_timecode_on_every_frame_of_a_minute():
    for k in range(0, 3600):
        text = format_timecode(k / 60, 60)
        assert text.endswith(f":{k % 60:02d}.000")
        assert parse_timecode(text, 60) == pytest.approx(k / 60, abs=1e-9)


def test_head_angles_axes_and_radians():
    np.testing.assert_allclose(head_angles(np.array([1.0, 0, 0, 0])), [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(head_angles(quat("y", 0.3)), [0.3, 0, 0], atol=1e-9)  # yaw
    np.testing.assert_allclose(head_angles(quat("x", 0.2)), [0, -0.2, 0], atol=1e-9)  # pitch (x-rotation negated)
    np.testing.assert_allclose(head_angles(quat("z", 0.1)), [0, 0, 0.1], atol=1e-9)  # roll
    np.testing.assert_allclose(head_angles(-quat("z", 0.1)), [0, 0, 0.1], atol=1e-9)  # q and -q agree


def test_eye_angles_from_look_shapes():
    b = np.zeros(N_BLENDSHAPES)
    names = LIVELINK_CSV_HEADER[2 : 2 + N_BLENDSHAPES]
    b[names.index("EyeLookOutLeft")] = 1.0
    b[names.index("EyeLookUpRight")] = 0.5
    b[names.index("EyeLookInRight")] = 0.2
    lyaw, lpitch, lroll, ryaw, rpitch, rroll = eye_angles(b, 0.5)
    assert (lyaw, lpitch, lroll) == pytest.approx((0.5, 0.0, 0.0))
    assert (ryaw, rpitch, rroll) == pytest.approx((0.1, 0.25, 0.0))


def test_livelink_values_layout():
    c = random_curves(5, 60)
    v = livelink_values(c.values, 0.0)
    assert v.shape == (5, 61)
    np.testing.assert_allclose(v[:, :52], c.blendshapes, atol=1e-7)
    np.testing.assert_allclose(v[:, 52:55], head_angles(c.pose[:, 3:]), atol=1e-6)
    assert np.all(v[:, 55:] == 0.0)
    assert np.any(livelink_values(c.values, 0.5)[:, 55:] != 0.0)


@pytest.mark.parametrize("duration_s, fps, rows", [
    (2.0, 60, 120), (2.013, 60, 121), (2.013, 30, 61), (1.0, 30, 30), (0.005, 60, 1), (2.0, 24.5, 49),
])
def test_row_count_rule(duration_s, fps, rows):
    assert frame_count(duration_s, fps) == rows  # ceil(duration x fps): one row per frame time inside the audio
    src = random_curves(int(duration_s * 100) + 1, 100.0, duration_s=duration_s)
    assert len(src.resample(fps)) == rows


def test_resample_is_linear_interpolation_with_unit_quaternions():
    n = 201
    c = random_curves(n, 100.0, duration_s=2.0)
    c.values[:, 17] = np.linspace(0, 1, n)  # jawOpen: a ramp is reproduced exactly
    out = c.resample(60.0)
    np.testing.assert_allclose(out.channel("jawOpen"), out.times_s / 2.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.pose[:, 3:], axis=1), 1.0, atol=1e-6)
    # 30 fps frames are every other 60 fps frame (same times, same interpolation).
    np.testing.assert_allclose(c.resample(30.0).values, out.values[::2], atol=1e-7)


@pytest.mark.parametrize("duration_s", [2.023, 2.0, 0.5])
def test_stream_resampler_equals_offline(duration_s):
    # As a stream delivers them: 1 + N // hop source frames, the last two only at the end (flush).
    n_src = 1 + int(round(duration_s * 16000)) // 160
    c = random_curves(n_src, 100.0, seed=3, duration_s=duration_s)
    rng = np.random.default_rng(0)
    for fps in (24.5, 30.0, 60.0, 100.0, 144.0):
        r = StreamResampler(100.0, fps)
        parts, i = [], 0
        while i < n_src - 2:
            n = min(int(rng.integers(0, 9)), n_src - 2 - i)
            parts.append(r.push(c.values[i : i + n]))
            i += n
        parts.append(r.flush(c.duration_s, c.values[i:]))
        got = np.concatenate(parts)
        assert len(got) == frame_count(duration_s, fps), fps
        np.testing.assert_allclose(got, c.resample(fps).values, atol=1e-7, err_msg=str(fps))


@pytest.mark.parametrize("fps", [24.5, 60.0, 144.0])
def test_stream_resampler_emits_each_frame_once_its_sources_arrived(fps):
    # Output frame k needs source frames up to ceil(k * 100 / fps): it comes out with that frame, not
    # before, not later, whatever the chunking (frame by frame here, all at once below: same values).
    c = random_curves(120, 100.0, seed=5)
    r = StreamResampler(100.0, fps)
    parts = []
    for j in range(len(c.values)):
        parts.append(r.push(c.values[j : j + 1]))
        complete = sum(1 for k in range(1000) if math.ceil(k * 100.0 / fps) <= j)
        assert r.next_frame == complete and sum(map(len, parts)) == complete, (j, fps)
        assert len(r.push(np.zeros((0, 59), np.float32))) == 0  # an empty push adds nothing
    whole = StreamResampler(100.0, fps).push(c.values)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_stream_resampler_push_many_equals_each_push():
    # A serving tick resamples all its streams at once: bit for bit what each stream's own push gives,
    # for any frame rates and chunk sizes (0-4 source frames a push), buffers included (the flush after).
    rng = np.random.default_rng(0)
    for _ in range(100):
        fps = [float(f) for f in rng.choice([24.5, 30.0, 59.94, 60.0, 144.0], size=int(rng.integers(1, 5)))]
        one, many = [StreamResampler(100.0, f) for f in fps], [StreamResampler(100.0, f) for f in fps]
        for _ in range(30):
            frames = [rng.standard_normal((int(rng.integers(0, 5)), 59)).astype(np.float32) for _ in fps]
            for a, b in zip([r.push(f) for r, f in zip(one, frames)], StreamResampler.push_many(many, frames)):
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        duration_s = max(r.next_frame / r.fps for r in one) + 0.05
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a.flush(duration_s), b.flush(duration_s))


def test_livelink_csv_file(tmp_path):
    c = random_curves(201, 100.0, duration_s=2.013).resample(60.0)
    path = c.to_livelink_csv(tmp_path / "take.csv", eye_range_rad=0.5)
    header, timecodes, values = read_csv(path)
    assert ",".join(header) == APP_HEADER
    assert len(timecodes) == 121 == values.shape[0] and values.shape[1] == 61
    rows = [line.split(",") for line in (tmp_path / "take.csv").read_text().splitlines()[1:]]
    assert all(len(r) == 63 and r[1] == "61" for r in rows)  # BlendShapeCount
    assert timecodes[0] == "00:00:00:00.000" and timecodes[61] == "00:00:01:01.000"
    shapes = values[:, :52]
    assert shapes.min() >= 0.0 and shapes.max() <= 1.0
    np.testing.assert_allclose(shapes, c.blendshapes, atol=5e-7)
    np.testing.assert_allclose(values[:, 52:55], head_angles(c.pose[:, 3:]), atol=5e-7)
    assert np.abs(values[:, 52:55]).max() < 1.0  # radians
    assert np.any(values[:, 55:] != 0.0)  # eye angles derived from the eyeLook* shapes


def test_json_npz_parquet_files(tmp_path):
    c = random_curves(31, 30.0, seed=5)
    data = c.to_json(tmp_path / "take.json", session_id="session_take_infer")
    assert json.loads((tmp_path / "take.json").read_text()) == data
    assert set(data) == {"sessionInfo", "frameCount", "frames"}
    assert set(data["sessionInfo"]) == {"sessionId", "targetFPS", "originalFPS", "frameInterval"}
    frame = data["frames"][3]
    assert set(frame) == {"frame_index", "timestamp", "sessionId", "blendshapes", "headPosition", "headRotation",
                          "has_face"}
    assert data["frameCount"] == 31 and frame["frame_index"] == 3 and frame["timestamp"] == pytest.approx(0.1)
    assert list(frame["blendshapes"]) == list(TARGET_NAMES[:N_BLENDSHAPES])
    assert frame["headRotation"]["w"] == pytest.approx(float(c.values[3, N_BLENDSHAPES + 3]))

    back = load_npz(c.to_npz(tmp_path / "take.npz"))
    np.testing.assert_array_equal(back.values, c.values)
    assert back.fps == 30.0 and back.names == list(TARGET_NAMES)

    table = pq.read_table(c.to_parquet(tmp_path / "take.parquet"))
    assert table.column_names == ["frame", "time_s", *TARGET_NAMES]
    np.testing.assert_array_equal(table.column("jawOpen").to_numpy(), c.channel("jawOpen"))
    assert table.schema.metadata[b"fps"] == b"30.0"
