"""Transform: inverse, composition, frame checks, quaternions and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from calibration.transform import (
    FrameMismatchError,
    Transform,
    matrix_to_quat_wxyz,
    quat_wxyz_to_matrix,
)

SETTINGS = settings(max_examples=200, deadline=None)

finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
quaternions = st.tuples(finite, finite, finite, finite).filter(lambda q: np.linalg.norm(q) > 0.1)
translations = hnp.arrays(np.float64, 3, elements=st.floats(-100.0, 100.0, allow_nan=False))
point_sets = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 20), st.just(3)), elements=st.floats(-200.0, 200.0, allow_nan=False)
)


@st.composite
def transforms(draw, dst: str = "a", src: str = "b") -> Transform:
    return Transform.from_quaternion_wxyz(dst, src, draw(quaternions), draw(translations))


@SETTINGS
@given(transforms())
def test_inverse_composed_with_transform_is_identity(T):
    both = T.inverse() @ T
    assert both.dst == "b" and both.src == "b"
    np.testing.assert_allclose(both.matrix, np.eye(4), atol=1e-9)
    np.testing.assert_allclose((T @ T.inverse()).matrix, np.eye(4), atol=1e-9)


@SETTINGS
@given(transforms(), point_sets)
def test_apply_then_inverse_apply_returns_the_points(T, points):
    back = T.inverse().apply(T.apply(points))
    np.testing.assert_allclose(back, points, atol=1e-9)


@SETTINGS
@given(transforms("a", "b"), transforms("b", "c"), transforms("c", "d"))
def test_composition_is_associative(ab, bc, cd):
    left = (ab @ bc) @ cd
    right = ab @ (bc @ cd)
    assert left.name == right.name == "a_from_d"
    np.testing.assert_allclose(left.matrix, right.matrix, atol=1e-9)


@SETTINGS
@given(transforms("a", "b"), transforms("b", "c"), point_sets)
def test_composition_equals_matrix_product_and_chained_apply(ab, bc, points):
    ac = ab @ bc
    np.testing.assert_allclose(ac.matrix, ab.matrix @ bc.matrix, atol=1e-9)
    np.testing.assert_allclose(ac.apply(points), ab.apply(bc.apply(points)), atol=1e-9)


def test_composing_frames_that_do_not_meet_raises_with_both_names():
    ego_from_lidar = Transform.identity("ego", "lidar_top")
    camera_from_ego = Transform.identity("cam_front", "ego")
    assert (camera_from_ego @ ego_from_lidar).name == "cam_front_from_lidar_top"
    with pytest.raises(FrameMismatchError) as err:
        ego_from_lidar @ camera_from_ego
    msg = str(err.value)
    assert "ego_from_lidar_top" in msg and "cam_front_from_ego" in msg
    assert "'lidar_top' != 'cam_front'" in msg


@SETTINGS
@given(quaternions)
def test_quaternion_matrix_round_trip_is_sign_normalised(q):
    q = np.asarray(q) / np.linalg.norm(q)
    R = quat_wxyz_to_matrix(q)
    # q and -q are the same rotation.
    np.testing.assert_allclose(quat_wxyz_to_matrix(-q), R, atol=1e-12)
    back = matrix_to_quat_wxyz(R)
    assert back[0] >= 0
    assert np.isclose(np.linalg.norm(back), 1.0)
    expected = q if q[0] >= 0 else -q
    if abs(q[0]) > 1e-6:  # with w == 0 both signs are valid
        np.testing.assert_allclose(back, expected, atol=1e-9)
    np.testing.assert_allclose(quat_wxyz_to_matrix(back), R, atol=1e-9)


def test_quaternion_order_is_w_first():
    # 90 degrees about +z, written w first: x axis goes to y.
    T = Transform.from_quaternion_wxyz("a", "b", [np.sqrt(0.5), 0, 0, np.sqrt(0.5)], [0, 0, 0])
    np.testing.assert_allclose(T.apply(np.array([[1.0, 0, 0]])), [[0, 1, 0]], atol=1e-12)
    np.testing.assert_allclose(T.rotation_wxyz, [np.sqrt(0.5), 0, 0, np.sqrt(0.5)], atol=1e-12)


def test_rpy_yaw_turns_x_into_y():
    T = Transform.from_rpy("a", "b", 0.0, 0.0, np.pi / 2, [1, 2, 3])
    np.testing.assert_allclose(T.apply(np.array([[1.0, 0, 0]])), [[1, 3, 3]], atol=1e-12)


def test_zero_quaternion_is_rejected():
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        quat_wxyz_to_matrix([0, 0, 0, 0])


@pytest.mark.parametrize(
    "matrix, problem",
    [
        (np.diag([1.0, 1.0, 1.01]), "not orthonormal"),
        (np.array([[1.0, 0.1, 0], [0, 1, 0], [0, 0, 1]]), "not orthonormal"),
        (np.diag([1.0, 1.0, -1.0]), "reflection"),
        (np.diag([-1.0, 1.0, 1.0]), "reflection"),
    ],
    ids=["scaled", "sheared", "mirror_z", "mirror_x"],
)
def test_from_matrix_rejects_improper_rotation(matrix, problem):
    M = np.eye(4)
    M[:3, :3] = matrix
    with pytest.raises(ValueError, match=problem) as err:
        Transform.from_matrix("ego", "cam_front", M)
    assert "ego_from_cam_front" in str(err.value)


def test_from_matrix_rejects_wrong_shape_and_non_finite_translation():
    with pytest.raises(ValueError, match=r"4x4 or 3x4.*\(3, 3\)"):
        Transform.from_matrix("a", "b", np.eye(3))
    M = np.eye(4)
    M[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Transform.from_matrix("a", "b", M)


def test_from_matrix_accepts_3x4():
    M = np.hstack([np.eye(3), [[1.0], [2.0], [3.0]]])
    T = Transform.from_matrix("a", "b", M)
    np.testing.assert_allclose(T.apply(np.zeros((1, 3))), [[1, 2, 3]])


@pytest.mark.parametrize("shape", [(3,), (5, 4), (5, 2), (2, 3, 3)])
def test_apply_rejects_wrong_shapes(shape):
    T = Transform.identity("a", "b")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        T.apply(np.zeros(shape))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        T.apply_vectors(np.zeros(shape))


def test_apply_keeps_float32_and_promotes_ints():
    T = Transform.from_rpy("a", "b", 0.1, 0.2, 0.3, [1, 2, 3])
    assert T.apply(np.zeros((4, 3), np.float32)).dtype == np.float32
    assert T.apply(np.zeros((4, 3), np.int32)).dtype == np.float64


def test_apply_vectors_ignores_translation():
    T = Transform.from_rpy("a", "b", 0.0, 0.0, np.pi / 2, [10, 20, 30])
    np.testing.assert_allclose(T.apply_vectors(np.array([[1.0, 0, 0]])), [[0, 1, 0]], atol=1e-12)


def test_transform_arrays_are_read_only():
    T = Transform.from_rpy("a", "b", 0.1, 0.2, 0.3, [1, 2, 3])
    with pytest.raises(ValueError):
        T.rotation[0, 0] = 2.0
    with pytest.raises(ValueError):
        T.translation[0] = 2.0
