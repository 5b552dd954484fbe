"""MediaPipe FaceLandmarker -> 52 ARKit blendshapes + head pose per frame.

Each clip gets a fresh landmarker (~0.02 s per clip: the model bytes are read and checked once per
tracker; ``benchmarks/bench_extract.py``). VIDEO mode carries tracking and filter state from frame
to frame, and a reused instance carries a trace of the previous clip into the next one (~1e-4, even
after a blank frame): a clip's labels would then depend on which clips an actor happened to process
before it. With a fresh instance the same video gives bit-identical labels in any batch, order or
number of actors.
The pose representation is documented in ``a2bs.schema``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from a2bs.config import VideoConfig
from a2bs.errors import ModelFileError
from a2bs.runtime.logs import without_lines
from a2bs.schema import BLENDSHAPE_INDEX, N_BLENDSHAPES, N_POSE, POSE_REST

VENDORED_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "face_landmarker.task"
CM_PER_M = 100.0
# What MediaPipe (absl logging) and TensorFlow Lite print each time a landmarker starts. Nothing turns
# them off in mediapipe 1.2 (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL and GOOGLE_STDERRTHRESHOLD were
# tried), so they are dropped where a landmarker is created: in every process, Ray workers included.
STARTUP_NOTICES = tuple(re.compile(p) for p in (
    rb"Logging before InitGoogle\(\) is written to STDERR",
    rb"face_landmarker_graph\.cc:\d+\] Sets FaceBlendshapesGraph acceleration to xnnpack by default",
    rb"Created TensorFlow Lite XNNPACK delegate for CPU",
    rb"inference_feedback_manager\.cc:\d+\] Feedback manager requires a model with a single signature",
))


def load_model_bytes(cfg: VideoConfig) -> bytes:
    """Read the FaceLandmarker bundle and check its sha256 against ``cfg.model_sha256``.

    Raises:
        ModelFileError: the file is missing or its hash does not match.
    """
    path = Path(cfg.model_path) if cfg.model_path else VENDORED_MODEL_PATH
    if not path.is_file():
        raise ModelFileError(f"face model {path}: not found")
    data = path.read_bytes()
    if cfg.model_sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != cfg.model_sha256.lower():
            raise ModelFileError(
                f"face model {path}: sha256 {digest[:16]}... does not match the expected "
                f"{cfg.model_sha256[:16]}... (damaged or replaced file; for your own model set video.model_sha256)"
            )
    return data


@dataclass
class FaceTrack:
    """Per-frame face targets of one clip at the FPS-limited rate."""

    frame_index: np.ndarray  # (F,) int32
    time_s: np.ndarray  # (F,) float64
    blendshapes: np.ndarray  # (F, 52) float32, ARKit order
    pose: np.ndarray  # (F, 7) float32, relative pose (see a2bs.schema)
    has_face: np.ndarray  # (F,) bool


@dataclass
class RawTrack:
    """Per-frame face values with the absolute head pose (before the clip's rest pose is known)."""

    frame_index: np.ndarray  # (F,) int32
    time_s: np.ndarray  # (F,) float64
    blendshapes: np.ndarray  # (F, 52) float32, ARKit order
    rotation: np.ndarray  # (F, 3, 3) float64, identity without a face
    translation_cm: np.ndarray  # (F, 3) float64, zero without a face
    has_face: np.ndarray  # (F,) bool

    def select(self, mask: np.ndarray) -> "RawTrack":
        """The frames where `mask` is true."""
        return RawTrack(self.frame_index[mask], self.time_s[mask], self.blendshapes[mask], self.rotation[mask],
                        self.translation_cm[mask], self.has_face[mask])


class FaceTracker:
    """FaceLandmarker in VIDEO mode, started afresh for every clip it tracks."""

    def __init__(self, cfg: VideoConfig) -> None:
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import (
            FaceLandmarker,
            FaceLandmarkerOptions,
            RunningMode,
        )

        self._create = FaceLandmarker.create_from_options
        self._options = FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=load_model_bytes(cfg)),
            running_mode=RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=cfg.min_face_detection_confidence,
            min_face_presence_confidence=cfg.min_face_presence_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self._landmarker = self._start()
        self._used = False  # True once the current instance has seen a frame
        # MediaPipe's own __del__ fails noisily at interpreter shutdown (e.g. in Ray actors): its
        # dispatcher's thread pool is already shut down by then. threading's exit hooks run in
        # reverse order of registration, so this close runs while that pool is still alive.
        threading._register_atexit(self.close)

    def _start(self) -> Any:
        """A new FaceLandmarker, without its start-up notices."""
        with without_lines(STARTUP_NOTICES):
            return self._create(self._options)

    def close(self) -> None:
        """Release the landmarker (safe to call twice)."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, rgb: np.ndarray, time_ms: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Blendshapes (52,) and the 4x4 transformation matrix (or None) for one RGB frame."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        self._used = True
        result = self._landmarker.detect_for_video(image, time_ms)
        shapes = np.zeros(N_BLENDSHAPES, dtype=np.float32)
        if not result.face_blendshapes:
            return shapes, None
        for category in result.face_blendshapes[0]:
            idx = BLENDSHAPE_INDEX.get(category.category_name)
            if idx is not None:  # drops MediaPipe's "_neutral"
                shapes[idx] = category.score
        matrix = (
            np.asarray(result.facial_transformation_matrixes[0], dtype=np.float64)
            if result.facial_transformation_matrixes
            else None
        )
        return shapes, matrix

    def track(self, frames: Iterable[tuple[int, float, np.ndarray]]) -> FaceTrack:
        """Run over a clip's selected frames; pose relative to the rest pose of these frames."""
        raw = self.track_raw(frames)
        return FaceTrack(raw.frame_index, raw.time_s, raw.blendshapes,
                         relative_pose(raw.rotation, raw.translation_cm, raw.has_face), raw.has_face)

    def track_raw(self, frames: Iterable[tuple[int, float, np.ndarray]]) -> RawTrack:
        """Run a fresh landmarker over frames; absolute head pose (frames without a face get placeholders)."""
        if self._used:  # a fresh instance per clip or segment: see the module docstring
            self.close()
            self._landmarker = self._start()
            self._used = False
        indices: list[int] = []
        times: list[float] = []
        shapes: list[np.ndarray] = []
        matrices: list[np.ndarray | None] = []
        last_ms = -1
        for frame_index, time_s, rgb in frames:
            t_ms = max(int(round(time_s * 1000.0)), last_ms + 1)  # strictly increasing
            last_ms = t_ms
            s, m = self.detect(rgb, t_ms)
            indices.append(frame_index)
            times.append(time_s)
            shapes.append(s)
            matrices.append(m)
        rotation, translation = absolute_pose(matrices)
        return RawTrack(
            frame_index=np.asarray(indices, dtype=np.int32),
            time_s=np.asarray(times, dtype=np.float64),
            blendshapes=np.stack(shapes).astype(np.float32) if shapes else np.zeros((0, N_BLENDSHAPES), np.float32),
            rotation=rotation,
            translation_cm=translation,
            has_face=np.array([m is not None for m in matrices], dtype=bool),
        )


def _quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 from a 3x3 rotation matrix."""
    m = r
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = np.empty(4)
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def absolute_pose(matrices: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Head rotations (F, 3, 3) (nearest rotation of each matrix) and translations (F, 3) in cm, float64;
    frames without a face get the identity and zero."""
    rotation = np.tile(np.eye(3), (len(matrices), 1, 1))
    translation = np.zeros((len(matrices), 3))
    for i, m in enumerate(matrices):
        if m is not None:
            rotation[i] = _nearest_rotation(m[:3, :3])
            translation[i] = m[:3, 3]
    return rotation, translation


def relative_pose(rotation: np.ndarray, translation_cm: np.ndarray, has_face: np.ndarray) -> np.ndarray:
    """(F, 7) pose relative to the rest pose of all face frames given; frames without a face get ``POSE_REST``.

    Rest position is the median translation; rest rotation is the rotation nearest to the mean of
    the face frames' rotation matrices (a robust, order-free average). Translation goes cm -> m.
    The rest pose needs every face frame of the clip: a segmented extraction stores absolute pose
    per segment and calls this once the clip is complete (a2bs.extract.finish).
    """
    out = np.tile(np.asarray(POSE_REST, dtype=np.float32), (len(has_face), 1))
    valid = np.flatnonzero(has_face)
    if not valid.size:
        return out
    rots, trans = rotation[valid], translation_cm[valid]
    rest_rot = _nearest_rotation(rots.mean(axis=0))
    rest_t = np.median(trans, axis=0)
    for row, i in enumerate(valid):
        out[i, :3] = (trans[row] - rest_t) / CM_PER_M
        out[i, 3:] = _quat_from_matrix(rest_rot.T @ rots[row])
    assert out.shape[1] == N_POSE
    return out
