"""Head pose relative to the clip's rest pose (`relative_pose`), on synthetic MediaPipe matrices.

The frames are built so the rest pose is known exactly: every rotation comes with its inverse about
the same rest rotation, plus enough frames at rest that the mean of the rotation matrices is the rest
rotation times a symmetric positive-definite matrix (whose nearest rotation is the rest rotation).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from a2bs.extract import face
from a2bs.extract.face import absolute_pose
from a2bs.schema import POSE_NAMES, POSE_REST

ANGLES_DEG = (5.0, 20.0, 60.0, 100.0, 150.0, 175.0)  # beyond 120 degrees the quaternion trace is negative


def relative_pose(matrices: list) -> np.ndarray:
    """The pose of a whole clip from its MediaPipe matrices (None = no face)."""
    rotation, translation = absolute_pose(matrices)
    return face.relative_pose(rotation, translation, np.array([m is not None for m in matrices], bool))


def _matrix(rotation: np.ndarray, translation_cm: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation_cm
    return m


def _wxyz(rotation: np.ndarray) -> np.ndarray:
    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


@pytest.fixture
def clip() -> dict:
    """Matrices (some frames without a face) with their expected relative rotations and translations."""
    rng = np.random.default_rng(7)
    rest = Rotation.random(random_state=3).as_matrix()
    rel = [np.eye(3)] * (4 * len(ANGLES_DEG) + 1)  # rest frames keep the mean positive definite
    for angle in ANGLES_DEG:
        turn = Rotation.from_rotvec(np.deg2rad(angle) * Rotation.random(random_state=int(angle)).apply([1, 0, 0]))
        rel = rel + [turn.as_matrix(), turn.inv().as_matrix()]
    order = rng.permutation(len(rel))
    rel = [rel[i] for i in order]
    translation_cm = rng.normal([0.0, 2.0, -45.0], [1.5, 1.0, 4.0], size=(len(rel), 3))
    matrices: list[np.ndarray | None] = [_matrix(rest @ r, t) for r, t in zip(rel, translation_cm)]
    for i in (0, 9, len(matrices)):  # faceless frames at the start, inside and at the end
        matrices.insert(i, None)
    return {"matrices": matrices, "rel": rel, "translation_cm": translation_cm}


def test_layout_and_faceless_frames(clip) -> None:
    pose = relative_pose(clip["matrices"])
    assert pose.shape == (len(clip["matrices"]), len(POSE_NAMES)) == (len(clip["matrices"]), 7)
    assert pose.dtype == np.float32
    missing = [i for i, m in enumerate(clip["matrices"]) if m is None]
    np.testing.assert_array_equal(pose[missing], np.tile(POSE_REST, (len(missing), 1)))
    assert relative_pose([None, None]).tolist() == [list(POSE_REST)] * 2
    assert relative_pose([]).shape == (0, 7)


def test_translation_is_metres_from_the_median_position(clip) -> None:
    pose = relative_pose(clip["matrices"])
    faces = [i for i, m in enumerate(clip["matrices"]) if m is not None]
    t = clip["translation_cm"]
    np.testing.assert_allclose(pose[faces, :3], (t - np.median(t, axis=0)) / 100.0, atol=1e-6)


def test_rotation_is_the_unit_quaternion_from_rest_with_nonnegative_w(clip) -> None:
    pose = relative_pose(clip["matrices"])
    q = pose[[i for i, m in enumerate(clip["matrices"]) if m is not None], 3:]
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(q, np.stack([_wxyz(r) for r in clip["rel"]]), atol=1e-5)
    angles = np.rad2deg(2 * np.arccos(np.clip(q[:, 0], -1, 1)))
    assert sorted(set(np.round(angles[angles > 1], 3))) == pytest.approx(ANGLES_DEG, abs=1e-3)


def test_scale_in_the_matrix_and_frame_order_do_not_change_the_pose(clip) -> None:
    pose = relative_pose(clip["matrices"])
    scaled = [None if m is None else np.vstack([np.hstack([1.04 * m[:3, :3], m[:3, 3:]]), m[3:]])
              for m in clip["matrices"]]
    np.testing.assert_allclose(relative_pose(scaled), pose, atol=1e-6)
    order = np.random.default_rng(0).permutation(len(clip["matrices"]))
    np.testing.assert_allclose(relative_pose([clip["matrices"][i] for i in order]), pose[order], atol=1e-6)


def test_a_still_head_is_at_rest() -> None:
    still = _matrix(Rotation.from_euler("xyz", [10, -25, 5], degrees=True).as_matrix(), np.array([1.0, 3.0, -40.0]))
    np.testing.assert_allclose(relative_pose([still] * 5), np.tile(POSE_REST, (5, 1)), atol=1e-6)
