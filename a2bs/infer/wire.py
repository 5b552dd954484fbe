"""The wire format of `a2bs serve` (docs/serving.md), shared by the server and the reference client.

Kept free of torch and the model code, so a client needs only numpy and ``websockets``.
"""

from __future__ import annotations

import struct

import numpy as np

STREAM_PATH = "/v1/stream"
# Binary audio messages: mono PCM, little-endian. name -> (numpy dtype, scale to [-1, 1]).
ENCODINGS = {"pcm_s16le": ("<i2", 1.0 / 32768.0), "pcm_f32le": ("<f4", 1.0)}
# How frames go back, chosen by the start message's "frames" field: "json" (the default) = text
# {"event": "frames", ...} messages; "f32" = binary messages of FRAMES_HEADER (start frame, frame count;
# little-endian uint32) then count x names float32 values, little-endian (no JSON to write or parse).
FRAME_ENCODINGS = ("json", "f32")
FRAMES_HEADER = struct.Struct("<II")
VALUE_DECIMALS = 6  # frame values are rounded to 1e-6 on the wire (short JSON, far below model error)
CLOSE_POLICY, CLOSE_TRY_LATER = 1008, 1013  # RFC 6455 close codes: policy violation, try again later


class StreamError(ValueError):
    """A client's request or data cannot be used (one-line reason sent back to that client only)."""


def encode_pcm(samples: np.ndarray, encoding: str = "pcm_s16le") -> bytes:
    """Float samples in [-1, 1] -> PCM bytes (s16: clipped and rounded to the nearest step)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    if encoding == "pcm_s16le":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


def decode_pcm(data: bytes, encoding: str) -> np.ndarray:
    """PCM bytes -> float32 samples in [-1, 1].

    Raises:
        StreamError: a partial sample, or non-finite float samples.
    """
    dtype, scale = ENCODINGS[encoding]
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise StreamError(f"{encoding}: a binary message of {len(data)} bytes is not a whole number of "
                          f"{width}-byte samples")
    x = np.frombuffer(data, dtype=dtype)
    if encoding == "pcm_f32le":
        if not np.isfinite(x).all():
            raise StreamError("pcm_f32le: samples must be finite numbers")
        return x.astype(np.float32)
    return x.astype(np.float32) * np.float32(scale)


def wire_samples(samples: np.ndarray, encoding: str = "pcm_s16le") -> np.ndarray:
    """The float32 samples a server decodes from ``encode_pcm(samples, encoding)`` (the audio it hears)."""
    return decode_pcm(encode_pcm(samples, encoding), encoding)


def encode_frames_f32(start: int, values: np.ndarray) -> bytes:
    """A binary frames message: header (start, count), then `values` (count, names) as float32."""
    values = np.ascontiguousarray(values, "<f4")
    return FRAMES_HEADER.pack(int(start), len(values)) + values.tobytes()


def decode_frames_f32(data: bytes, n_names: int) -> tuple[int, np.ndarray]:
    """A binary frames message -> (start frame, values (count, n_names) float32).

    Raises:
        StreamError: the length does not match the header.
    """
    if len(data) < FRAMES_HEADER.size:
        raise StreamError(f"f32 frames: a message of {len(data)} bytes is shorter than its header")
    start, count = FRAMES_HEADER.unpack_from(data)
    if len(data) != FRAMES_HEADER.size + 4 * count * n_names:
        raise StreamError(f"f32 frames: {len(data)} bytes do not hold {count} frames of {n_names} values")
    return start, np.frombuffer(data, "<f4", offset=FRAMES_HEADER.size).reshape(count, n_names)
