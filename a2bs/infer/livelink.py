"""Live Link Face formats: the CSV the app records (and Unreal imports) and its UDP packet.

CSV (what Epic's Live Link Face app writes per take)::

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
    LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll

The 52 blendshape columns follow Apple's order as the app writes it (``a2bs.schema.ARKIT_BLENDSHAPES``:
... JawForward, JawRight, JawLeft ..., MouthRight, MouthLeft ...), capitalised. Timecode is
``HH:MM:SS:FF.mmm``: FF counts frames at the take's (integer) rate and ``.mmm`` is the sub-frame in
thousandths. BlendShapeCount is 61.

UDP packet (Unreal's ``AppleARKitLiveLinkSource.cpp`` reads it with ``FNboSerializeFromBuffer``, which
is big-endian and length-prefixes strings)::

    uint8    packet version (6)
    int32 BE device-id length, then the UTF-8 bytes
    int32 BE subject-name length, then the UTF-8 bytes
    int32 BE frame number, float32 BE sub-frame          (FQualifiedFrameTime.Time)
    int32 BE fps numerator, int32 BE fps denominator     (FQualifiedFrameTime.Rate)
    uint8    curve count (61)
    61 x float32 BE curve values, indexed by Unreal's EARFaceBlendShape enum

PyLiveLinkFace packs the first two fields as ``struct.pack('<I', 6)`` followed by ``'$' + uuid``: for a
36-character id those are the same bytes (uint8 6, then 00 00 00 24: the int32 BE length 36, whose
last byte is ``'$'``). The default device id here is a 36-character UUID so both readers agree.

Unreal indexes the values by ``EARFaceBlendShape``, whose order differs from the CSV's in two places
(JawLeft before JawRight, MouthLeft before MouthRight); the packet therefore carries the values in
that enum order, so each curve lands on its own name in Unreal.

Angles (HeadYaw/Pitch/Roll, eye angles) are radians, as Live Link Face sends them and public senders
built on PyLiveLinkFace write them (MeFaMo: ``transforms3d.euler.mat2euler`` of the head matrix, pitch
negated; PyLiveLinkFace's examples drive them with values in [-1, 1]).
"""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from a2bs.schema import (
    ARKIT_BLENDSHAPES,
    BLENDSHAPE_INDEX,
    N_BLENDSHAPES,
    livelink_name,
)

PACKET_VERSION = 6
HEAD_CURVES: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll")
EYE_CURVES: tuple[str, ...] = (
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)
# The 61 curves in the CSV's column order.
LIVELINK_CURVES: tuple[str, ...] = tuple(livelink_name(n) for n in ARKIT_BLENDSHAPES) + HEAD_CURVES + EYE_CURVES
N_LIVELINK_CURVES = len(LIVELINK_CURVES)
assert N_LIVELINK_CURVES == 61
LIVELINK_CSV_HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount") + LIVELINK_CURVES


def _wire_order() -> tuple[str, ...]:
    # Unreal's EARFaceBlendShape: the CSV order with the Left/Right pairs of jaw and mouth swapped.
    names = list(LIVELINK_CURVES)
    for a, b in (("JawRight", "JawLeft"), ("MouthRight", "MouthLeft")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
    return tuple(names)


# The 61 curves in the UDP packet's order (Unreal's EARFaceBlendShape enum).
WIRE_CURVES: tuple[str, ...] = _wire_order()
CSV_TO_WIRE = np.array([LIVELINK_CURVES.index(n) for n in WIRE_CURVES], dtype=np.int64)
_HEADER = struct.Struct(">ifiiB")  # frame number, sub-frame, fps num, fps den, curve count
_VALUES = struct.Struct(">61f")


def head_angles(quat_wxyz: np.ndarray) -> np.ndarray:
    """Head (yaw, pitch, roll) in radians from unit quaternions (..., 4) as (w, x, y, z).

    Axes are MediaPipe's / ARKit's face axes (x to the subject's left as seen by the camera, y up,
    z toward the camera). The rotation is split as ``R = Rz(roll) Ry(yaw) Rx(a)`` (static x-y-z Euler
    angles, ``transforms3d``'s ``sxyz``) and pitch is ``-a``, as MeFaMo feeds Live Link Face: yaw > 0
    turns toward +x, pitch > 0 looks up, roll > 0 tilts counter-clockwise on camera.
    """
    q = np.asarray(quat_wxyz, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r00 = 1 - 2 * (y * y + z * z)
    r10 = 2 * (x * y + w * z)
    r20 = 2 * (x * z - w * y)
    r21 = 2 * (y * z + w * x)
    r22 = 1 - 2 * (x * x + y * y)
    a = np.arctan2(r21, r22)
    yaw = np.arcsin(np.clip(-r20, -1.0, 1.0))
    roll = np.arctan2(r10, r00)
    return np.stack([yaw, -a, roll], axis=-1)


def eye_angles(blendshapes: np.ndarray, range_rad: float) -> np.ndarray:
    """(..., 6) eye (yaw, pitch, roll) left then right, in radians, from the eyeLook* shapes.

    Same signs as :func:`head_angles`: yaw > 0 looks toward the subject's left (left eye looking out,
    right eye looking in), pitch > 0 looks up; roll is 0. A shape at 1.0 maps to ``range_rad``.
    """
    b = np.asarray(blendshapes, dtype=np.float64)

    def s(name: str) -> np.ndarray:
        return b[..., BLENDSHAPE_INDEX[name]]

    zero = np.zeros(b.shape[:-1])
    left_yaw = (s("eyeLookOutLeft") - s("eyeLookInLeft")) * range_rad
    right_yaw = (s("eyeLookInRight") - s("eyeLookOutRight")) * range_rad
    left_pitch = (s("eyeLookUpLeft") - s("eyeLookDownLeft")) * range_rad
    right_pitch = (s("eyeLookUpRight") - s("eyeLookDownRight")) * range_rad
    return np.stack([left_yaw, left_pitch, zero, right_yaw, right_pitch, zero], axis=-1)


def livelink_values(targets: np.ndarray, eye_range_rad: float) -> np.ndarray:
    """(N, 59) a2bs targets -> (N, 61) Live Link curves in CSV order (eye angles 0 if range is 0)."""
    t = np.asarray(targets, dtype=np.float64).reshape(-1, targets.shape[-1])
    out = np.zeros((t.shape[0], N_LIVELINK_CURVES), dtype=np.float64)
    out[:, :N_BLENDSHAPES] = t[:, :N_BLENDSHAPES]
    out[:, N_BLENDSHAPES : N_BLENDSHAPES + 3] = head_angles(t[:, N_BLENDSHAPES + 3 : N_BLENDSHAPES + 7])
    if eye_range_rad:
        out[:, N_BLENDSHAPES + 3 :] = eye_angles(t[:, :N_BLENDSHAPES], eye_range_rad)
    return out


def timecode_rate(fps: float) -> int:
    """Integer frame rate the timecode counts FF in (29.97 -> 30, as non-drop timecode does)."""
    return max(1, int(round(fps)))


def format_timecode(time_s: float, fps: float) -> str:
    """``HH:MM:SS:FF.mmm`` of `time_s` at `fps` (FF frames at the integer rate, mmm sub-frame/1000)."""
    rate = timecode_rate(fps)
    pos = max(0.0, time_s) * rate
    frame = int(math.floor(pos + 1e-6))  # k/fps * fps can land a hair below k
    sub = min(999, max(0, int(round((pos - frame) * 1000))))
    secs, ff = divmod(frame, rate)
    mins, ss = divmod(secs, 60)
    hh, mm = divmod(mins, 60)
    return f"{hh % 24:02d}:{mm:02d}:{ss:02d}:{ff:02d}.{sub:03d}"


def parse_timecode(text: str, fps: float) -> float:
    """Seconds of a ``HH:MM:SS:FF[.mmm]`` timecode at `fps` (inverse of :func:`format_timecode`)."""
    hh, mm, ss, rest = text.split(":")
    ff, _, sub = rest.partition(".")
    frames = int(ff) + (int(sub) / 10 ** len(sub) if sub else 0.0)
    return int(hh) * 3600 + int(mm) * 60 + int(ss) + frames / timecode_rate(fps)


def csv_text(values61: np.ndarray, times_s: np.ndarray, fps: float) -> str:
    """Live Link Face CSV text for (N, 61) curves in CSV order at `times_s`."""
    lines = [",".join(LIVELINK_CSV_HEADER)]
    count = str(N_LIVELINK_CURVES)
    for t, row in zip(times_s, np.asarray(values61, dtype=np.float64)):
        lines.append(",".join([format_timecode(float(t), fps), count] + [f"{v:.6f}" for v in row]))
    return "\n".join(lines) + "\n"


def read_csv(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """Read a Live Link Face CSV -> (header, timecodes, (N, 61) values)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    values = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    return header, [r[0] for r in rows], values


def fps_fraction(fps: float) -> tuple[int, int]:
    """(numerator, denominator) of a frame rate (60 -> 60/1, 30000/1001 -> 30000/1001)."""
    frac = Fraction(fps).limit_denominator(1001)
    return frac.numerator, frac.denominator


def new_device_id() -> str:
    """A 36-character device id (a UUID), the length Live Link Face and PyLiveLinkFace use."""
    return str(uuid.uuid4())


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">i", len(data)) + data


def encode_packet(values61_csv: np.ndarray, subject: str, device_id: str, frame_number: int,
                  fps: float, sub_frame: float = 0.0) -> bytes:
    """One Live Link Face UDP packet from 61 curve values given in CSV order."""
    values = np.asarray(values61_csv, dtype=np.float64).reshape(-1)
    if values.size != N_LIVELINK_CURVES:
        raise ValueError(f"a Live Link Face packet carries {N_LIVELINK_CURVES} curves, got {values.size}")
    num, den = fps_fraction(fps)
    head = _HEADER.pack(int(frame_number), float(sub_frame), num, den, N_LIVELINK_CURVES)
    return (bytes([PACKET_VERSION]) + _string(device_id) + _string(subject) + head
            + _VALUES.pack(*values[CSV_TO_WIRE].tolist()))


@dataclass(frozen=True)
class LiveLinkPacket:
    """A decoded Live Link Face packet (values back in CSV order)."""

    version: int
    device_id: str
    subject: str
    frame_number: int
    sub_frame: float
    fps_numerator: int
    fps_denominator: int
    values: np.ndarray  # (61,) CSV order

    @property
    def time_s(self) -> float:
        """Frame time in seconds."""
        return (self.frame_number + self.sub_frame) * self.fps_denominator / self.fps_numerator


def decode_packet(data: bytes) -> LiveLinkPacket:
    """Parse a packet written by :func:`encode_packet` (or by the Live Link Face app)."""
    version = data[0]
    pos = 1
    strings = []
    for _ in range(2):
        (n,) = struct.unpack_from(">i", data, pos)
        strings.append(data[pos + 4 : pos + 4 + n].decode("utf-8"))
        pos += 4 + n
    frame, sub, num, den, count = _HEADER.unpack_from(data, pos)
    pos += _HEADER.size
    wire = np.array(struct.unpack_from(f">{count}f", data, pos), dtype=np.float64)
    values = np.zeros(N_LIVELINK_CURVES)
    values[CSV_TO_WIRE[:count]] = wire
    return LiveLinkPacket(version, strings[0], strings[1], frame, sub, num, den, values)
