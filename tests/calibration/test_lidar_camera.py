"""LiDAR-camera extrinsic calibration on the simulated chessboard session: accuracy against the rig's
truth from a wrong prior, per-pose diagnostics, writing the rig, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.camera import CameraModel
from calibration.lidar_camera import (BoardNotFoundError, ChessboardTarget, LidarCameraError, calibrate_lidar_camera,
                                      detect_board, extract_board_points, rig_with_lidar_camera,
                                      write_lidar_camera_to_rig)
from calibration.rig import Rig
from calibration.transform import Transform
from drivers.sim import default_rig
from drivers.sim_calib import lidar_camera_scenario, render_board_image, scan_board


def _rotation_error_deg(a: Transform, b: Transform) -> float:
    E = a.rotation @ b.rotation.T
    return float(np.degrees(np.arccos(np.clip((np.trace(E) - 1) / 2, -1.0, 1.0))))


def _perturbed(T: Transform, rpy_deg, dt_m) -> Transform:
    """T moved by a small rotation and translation, as a tape-measured rig would be."""
    P = Transform.from_rpy(T.dst, T.dst, *np.radians(rpy_deg), dt_m)
    return P @ T


@pytest.fixture(scope="module")
def session():
    """12 board poses, 3-8 m, tilted up to 30 deg, in front of the default rig's front camera and roof LiDAR."""
    return lidar_camera_scenario(n_poses=12, seed=4)


@pytest.fixture(scope="module")
def prior(session) -> Transform:
    """The truth off by ~2.4 deg and ~16 cm."""
    return _perturbed(session.camera_from_lidar, (1.5, -1.0, 1.5), (0.08, -0.1, 0.09))


@pytest.fixture(scope="module")
def result(session, prior):
    camera = session.rig[session.camera_id].camera
    return calibrate_lidar_camera(session.images, session.lidar_points, camera, session.target, prior)


def test_extrinsic_is_within_2cm_and_0p2deg_of_the_truth_from_a_wrong_prior(session, prior, result):
    truth = session.camera_from_lidar
    assert _rotation_error_deg(prior, truth) > 2.0  # the prior really is off
    T = result.camera_from_lidar
    assert (T.dst, T.src) == ("cam_front", "lidar_top")
    assert np.linalg.norm(T.translation - truth.translation) < 0.02
    assert _rotation_error_deg(T, truth) < 0.2


def test_uncertainty_is_small_and_covers_the_error(session, result):
    truth = session.camera_from_lidar
    assert np.all(result.sigma_rotation_deg > 0) and np.all(result.sigma_rotation_deg < 0.2)
    assert np.all(result.sigma_translation_m > 0) and np.all(result.sigma_translation_m < 0.02)
    err_t = result.camera_from_lidar.translation - truth.translation
    assert np.all(np.abs(err_t) < 4 * result.sigma_translation_m + 1e-3)
    assert result.covariance.shape == (6, 6)


def test_every_pose_reports_its_fit(result):
    assert len(result.poses) == 12
    assert [p.pose for p in result.poses] == list(range(12))
    for p in result.poses:
        assert p.n_points >= 100
        assert p.reprojection_rms_px < 0.5
        assert 0.01 < p.lidar_plane_rms_m < 0.03  # the 2 cm range noise
        assert abs(p.residual_mean_m) < 0.02
        assert p.normal_angle_deg < 2.0
    assert 0.01 < result.residual_rms_m < 0.03
    assert "pose 11" in result.summary()


def test_a_board_moved_between_image_and_sweep_shows_in_its_pose_residual(session, prior):
    """The operator moved the board 6 cm back after the image of pose 5: that pose stands out."""
    camera = session.rig[session.camera_id].camera
    shot = session.shots[5]
    moved = shot.ego_from_board @ Transform("board", "board", np.eye(3), (0.0, 0.0, 0.06))
    points = list(session.lidar_points)
    points[5] = scan_board(session.rig.ego_from(session.lidar_id), moved, session.target, np.random.default_rng(9))
    res = calibrate_lidar_camera(session.images, points, camera, session.target, prior)
    offsets = np.array([abs(p.residual_mean_m) for p in res.poses])
    assert int(np.argmax(offsets)) == 5
    assert offsets[5] > 0.03


def test_detected_board_pose_matches_the_truth(session):
    camera = session.rig[session.camera_id].camera
    cam_from_ego = session.rig.ego_from(session.camera_id).inverse()
    for k in (0, 6):
        found = detect_board(session.images[k], camera, session.target, k, "cam_front")
        truth = cam_from_ego @ session.shots[k].ego_from_board
        n_true = truth.rotation[:, 2]
        n, d = found.plane
        assert found.reprojection_rms_px < 0.5
        assert np.degrees(np.arccos(min(1.0, float(n @ n_true)))) < 1.5
        assert abs(d - float(n_true @ truth.translation)) < 0.05
        assert np.linalg.norm(found.camera_from_board.translation - truth.translation) < 0.05


def test_board_points_exclude_ground_stand_and_clutter(session):
    lidar_from_ego = session.rig.ego_from(session.lidar_id).inverse()
    for k in (1, 7):
        lidar_from_board = lidar_from_ego @ session.shots[k].ego_from_board
        # A prior 20 cm off: the search region must still find the board and nothing else.
        rough = Transform(lidar_from_board.dst, "board", lidar_from_board.rotation,
                          lidar_from_board.translation + [0.1, 0.15, -0.05])
        board = extract_board_points(session.lidar_points[k], rough, session.target, k)
        local = lidar_from_board.inverse().apply(board.points)
        assert len(board.points) >= 100
        assert np.all(np.abs(local[:, 2]) < 0.08)  # on the board plane (2 cm noise)
        assert np.all(np.abs(local[:, 0]) < session.target.width_m / 2 + 0.1)
        assert np.all(np.abs(local[:, 1]) < session.target.height_m / 2 + 0.1)


def test_fisheye_camera_is_calibrated_too():
    """A fisheye front camera (Kannala-Brandt, 125 deg) on the same car, boards at 2.5-5 m."""
    base = default_rig(1)
    fisheye = CameraModel("fisheye", 640, 480, 260.0, 260.0, 319.5, 239.5, (0.02, -0.01, 0.003, -0.001))
    import dataclasses

    rig = base.replace_sensor(dataclasses.replace(base["cam_front"], camera=fisheye))
    s = lidar_camera_scenario(n_poses=10, seed=2, rig=rig, distance_range_m=(2.5, 5.0))
    prior = _perturbed(s.camera_from_lidar, (-1.0, 1.0, 0.5), (0.05, 0.05, -0.05))
    res = calibrate_lidar_camera(s.images, s.lidar_points, fisheye, s.target, prior)
    assert np.linalg.norm(res.camera_from_lidar.translation - s.camera_from_lidar.translation) < 0.03
    assert _rotation_error_deg(res.camera_from_lidar, s.camera_from_lidar) < 0.3


# ---------------------------------------------------------------------------------------------- the rig
def test_rig_is_updated_keeping_the_lidar_or_the_camera(session, result, tmp_path):
    rig = session.rig
    T = result.camera_from_lidar
    moved_camera = rig_with_lidar_camera(rig, result)
    assert moved_camera.ego_from("lidar_top").allclose(rig.ego_from("lidar_top"))
    assert moved_camera.transform("cam_front", "lidar_top").allclose(T, atol=1e-9)
    moved_lidar = rig_with_lidar_camera(rig, result, keep="camera")
    assert moved_lidar.ego_from("cam_front").allclose(rig.ego_from("cam_front"))
    assert moved_lidar.transform("cam_front", "lidar_top").allclose(T, atol=1e-9)
    path = tmp_path / "rig.yaml"
    rig.save(path)
    saved = write_lidar_camera_to_rig(path, result)
    assert Rig.load(path).transform("cam_front", "lidar_top").allclose(saved.transform("cam_front", "lidar_top"),
                                                                       atol=1e-6)


def test_rig_without_the_lidar_is_refused(session, result):
    rig = Rig("cams", (session.rig["cam_front"],))
    with pytest.raises(LidarCameraError, match="no sensor 'lidar_top'"):
        rig_with_lidar_camera(rig, result)


# ---------------------------------------------------------------------------------------------- bad input
def test_too_few_poses_raise_before_anything_is_written(session, prior, tmp_path):
    camera = session.rig[session.camera_id].camera
    with pytest.raises(LidarCameraError, match="at least 3 board poses, got 2"):
        calibrate_lidar_camera(session.images[:2], session.lidar_points[:2], camera, session.target, prior)


def test_image_and_lidar_counts_must_agree(session, prior):
    camera = session.rig[session.camera_id].camera
    with pytest.raises(LidarCameraError, match="4 images but 3 LiDAR frames"):
        calibrate_lidar_camera(session.images[:4], session.lidar_points[:3], camera, session.target, prior)


def test_lidar_frame_without_the_board_names_the_pose(session, prior):
    camera = session.rig[session.camera_id].camera
    points = list(session.lidar_points[:5])
    points[2] = scan_board(session.rig.ego_from(session.lidar_id), None, session.target, np.random.default_rng(1))
    with pytest.raises(BoardNotFoundError, match="pose 2: board not found in the lidar data") as info:
        calibrate_lidar_camera(session.images[:5], points, camera, session.target, prior)
    assert (info.value.pose, info.value.sensor) == (2, "lidar")


def test_image_without_the_board_names_the_pose_and_why(session, prior):
    camera = session.rig[session.camera_id].camera
    images = list(session.images[:5])
    images[4] = render_board_image(camera, None, session.target, np.random.default_rng(2))
    with pytest.raises(BoardNotFoundError, match="pose 4: board not found in the camera data: no complete 7x5") as info:
        calibrate_lidar_camera(images, session.lidar_points[:5], camera, session.target, prior)
    assert (info.value.pose, info.value.sensor) == (4, "camera")


def test_wrong_board_pattern_is_reported_per_pose(session, prior):
    camera = session.rig[session.camera_id].camera
    wrong = ChessboardTarget(cols=8, rows=5, square_m=0.12)
    with pytest.raises(BoardNotFoundError, match="pose 0: .*no complete 8x5"):
        calibrate_lidar_camera(session.images[:3], session.lidar_points[:3], camera, wrong, prior)


def test_blank_and_wrongly_sized_images_are_explained(session):
    camera = session.rig[session.camera_id].camera
    with pytest.raises(BoardNotFoundError, match="no contrast"):
        detect_board(np.full((360, 640, 3), 90, np.uint8), camera, session.target, 3)
    with pytest.raises(BoardNotFoundError, match="image is 320x180 but the camera is 640x360"):
        detect_board(np.zeros((180, 320, 3), np.uint8), camera, session.target, 3)


def test_a_prior_too_far_off_finds_no_board(session, prior):
    camera = session.rig[session.camera_id].camera
    far = _perturbed(session.camera_from_lidar, (0.0, 0.0, 0.0), (1.5, 0.0, 0.0))
    with pytest.raises(BoardNotFoundError, match="pose 0: .*prior camera_from_lidar within 0.5 m"):
        calibrate_lidar_camera(session.images[:3], session.lidar_points[:3], camera, session.target, far)
