"""Channel order, pose layout and Arrow schemas shared by every stage.

The target vector per frame has 59 values: the 52 ARKit blendshapes in Apple's order
(the order Live Link Face records), then 7 head-pose values.

Head pose representation (what extraction writes and the model predicts):
    [tx, ty, tz, qw, qx, qy, qz]
    - tx, ty, tz: head translation in **metres**, relative to the clip's rest position (the median
      of MediaPipe's facial transformation translation over face frames; MediaPipe reports cm).
    - qw, qx, qy, qz: unit quaternion of the head rotation relative to the clip's rest rotation,
      sign chosen so qw >= 0.
    Typical speech head motion stays within a few cm and ~20 degrees, so tx..tz and qx..qz sit
    well inside the model's tanh x 0.2 output range; qw is derived from (qx, qy, qz) by the model
    head (qw = sqrt(1 - |q|^2)) rather than predicted, which keeps every predicted value bounded.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# Apple ARFaceAnchor.BlendShapeLocation names, in Live Link Face CSV order.
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawRight", "jawLeft", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthRight", "mouthLeft",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
N_BLENDSHAPES = len(ARKIT_BLENDSHAPES)
assert N_BLENDSHAPES == 52

POSE_NAMES: tuple[str, ...] = ("headX", "headY", "headZ", "headQw", "headQx", "headQy", "headQz")
N_POSE = len(POSE_NAMES)
TARGET_NAMES: tuple[str, ...] = ARKIT_BLENDSHAPES + POSE_NAMES
N_TARGETS = len(TARGET_NAMES)  # 59

BLENDSHAPE_INDEX = {name: i for i, name in enumerate(ARKIT_BLENDSHAPES)}
TARGET_INDEX = {name: i for i, name in enumerate(TARGET_NAMES)}

# MediaPipe reports 51 of the 52 ARKit shapes (no tongueOut): a model must not be trained on it.
UNOBSERVED_BLENDSHAPES: tuple[str, ...] = ("tongueOut",)

# Channel groups used by the loss (silence) and the metrics.
JAW_CHANNEL = "jawOpen"
SMILE_CHANNELS: tuple[str, ...] = ("mouthSmileLeft", "mouthSmileRight")
LIP_CHANNELS: tuple[str, ...] = (
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthRollLower", "mouthRollUpper",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthPressLeft", "mouthPressRight", "mouthStretchLeft", "mouthStretchRight",
)
MOUTH_CHANNELS: tuple[str, ...] = tuple(
    n for n in ARKIT_BLENDSHAPES if n.startswith("mouth") or n.startswith("jaw")
)

# Pose slots bounded by the model's tanh x pose_scale head (qw is derived, not bounded).
POSE_BOUNDED_SLOTS: tuple[int, ...] = (0, 1, 2, 4, 5, 6)
# Rest value of the pose vector (no motion relative to the rest pose).
POSE_REST: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

# The channel groups as indices into the 59-value target vector (used by the loss, metrics, inference).
OBSERVED_BLENDSHAPE_INDICES: tuple[int, ...] = tuple(
    i for i, n in enumerate(ARKIT_BLENDSHAPES) if n not in UNOBSERVED_BLENDSHAPES
)
MOUTH_INDICES: tuple[int, ...] = tuple(BLENDSHAPE_INDEX[n] for n in MOUTH_CHANNELS)  # all observed
JAW_INDEX = BLENDSHAPE_INDEX[JAW_CHANNEL]
POSE_BOUNDED_INDICES: tuple[int, ...] = tuple(N_BLENDSHAPES + s for s in POSE_BOUNDED_SLOTS)

# Valid ranges: values outside are clipped by validation and counted (never z-scored).
MEL_DB_RANGE = (-80.0, 10.0)
BLENDSHAPE_RANGE = (0.0, 1.0)
POSE_RANGE = (-1.0, 1.0)


def livelink_name(arkit_name: str) -> str:
    """Live Link Face column name for an ARKit blendshape (capitalised first letter)."""
    return arkit_name[0].upper() + arkit_name[1:]


# Layout version of the columnar clip store (a2bs.extract.store): one Parquet part per time segment.
CLIP_STORE_VERSION = 2


def segment_schema(n_mels: int) -> pa.Schema:
    """Arrow schema of one segment part of the clip store (one row per part).

    Per-frame values are lists of fixed-size lists, so a reader gets zero-copy (F, 59) and
    (A, n_mels) numpy views of a part (:func:`a2bs.extract.store.read_segment`).
    """
    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("segment", pa.int32()),  # index in the clip's segment plan
            ("start_s", pa.float64()),  # the part holds frames with start_s <= time < end_s
            ("end_s", pa.float64()),  # inf for the last segment (to the end of the file)
            # Face track at the FPS-limited video rate, on the file's global frame grid.
            ("frame_index", pa.list_(pa.int32())),
            ("frame_time_s", pa.list_(pa.float64())),
            ("targets", pa.list_(pa.list_(pa.float32(), N_TARGETS))),  # (F, 59)
            ("has_face", pa.list_(pa.bool_())),
            # Audio features at 100 Hz (frame centres in the segment's range).
            ("audio_time_s", pa.list_(pa.float64())),
            ("mel_db", pa.list_(pa.list_(pa.float32(), n_mels))),  # (A, n_mels)
            ("rms", pa.list_(pa.float32())),
            ("zcr", pa.list_(pa.float32())),
            ("vad", pa.list_(pa.float32())),
        ],
        metadata={b"n_mels": str(n_mels).encode(), b"clip_store_version": str(CLIP_STORE_VERSION).encode()},
    )


def sequence_schema(n_mels: int) -> pa.Schema:
    """Arrow schema of one sequence-window row.

    The window columns are variable-length lists (``pa.list_``), each holding one row's (T, C) values
    flattened; a shard's rows all have the same T (``n_frames``), so a reader reshapes a column's
    flattened values to (N, T, C) (:func:`a2bs.train.data.arrow_to_arrays`). The lengths are not
    part of the schema: only that reshape checks them.
    """
    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("speaker_id", pa.string()),
            ("split", pa.string()),
            ("identity", pa.string()),  # the clip's face (sequence.identity_from); "" = none
            ("start_s", pa.float64()),
            ("n_frames", pa.int32()),
            ("audio", pa.list_(pa.float32())),  # flattened (T, n_mels)
            ("targets", pa.list_(pa.float32())),  # flattened (T, 59)
            ("vad", pa.list_(pa.float32())),  # (T,)
            ("mask", pa.list_(pa.float32())),  # (T,) 1 where a face was seen
        ],
        metadata={b"n_mels": str(n_mels).encode(), b"schema_version": str(SCHEMA_VERSION).encode()},
    )
