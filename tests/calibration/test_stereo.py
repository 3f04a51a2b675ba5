"""Stereo calibration on OpenCV's real left/right chessboard pairs (../shared/realdata/opencv_chessboard,
9x6 inner corners; SOURCE.md states no square size, so 25 mm is assumed: every length here, the
baseline included, is in that unit, and the baseline is also checked in squares)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.intrinsics import CalibrationError, IntrinsicsResult, calibrate_intrinsics, detect_chessboard
from calibration.rig import Rig
from calibration.stereo import (
    StereoResult,
    calibrate_stereo,
    pairing_key,
    rectify_image,
    save_stereo_pictures,
    stereo_rectification,
    write_stereo_to_rig,
)

PATTERN = (9, 6)
SQUARE_M = 0.025

RIG_YAML = """\
name: stereo_rig
sensors:
  - id: cam_left
    kind: camera
    translation: [1.5, 0.3, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 640, height: 480, fx: 500, fy: 500, cx: 319.5, cy: 239.5,
                 distortion: [0, 0, 0, 0, 0]}
  - id: cam_right
    kind: camera
    translation: [1.5, -0.3, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 640, height: 480, fx: 500, fy: 500, cx: 319.5, cy: 239.5,
                 distortion: [0, 0, 0, 0, 0]}
  - id: imu
    kind: imu
    translation: [0.0, 0.0, 0.3]
    rotation_wxyz: [1, 0, 0, 0]
"""


@pytest.fixture(scope="module")
def images(realdata) -> tuple[list[Path], list[Path]]:
    d = realdata / "opencv_chessboard"
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return sorted(d.glob("left*.jpg")), sorted(d.glob("right*.jpg"))


@pytest.fixture(scope="module")
def intrinsics(images) -> tuple[IntrinsicsResult, IntrinsicsResult]:
    left, right = images
    return (calibrate_intrinsics(left, PATTERN, SQUARE_M, "pinhole"),
            calibrate_intrinsics(right, PATTERN, SQUARE_M, "pinhole"))


@pytest.fixture(scope="module")
def stereo(images, intrinsics) -> StereoResult:
    return calibrate_stereo(images[0], images[1], PATTERN, SQUARE_M, intrinsics[0], intrinsics[1])


@pytest.fixture
def rig_file(tmp_path) -> Path:
    p = tmp_path / "rig.yaml"
    p.write_text(RIG_YAML)
    return p


def test_pairs_are_matched_by_the_number_in_the_file_name():
    assert pairing_key(Path("left01.jpg")) == pairing_key(Path("right01.jpg")) == "01"
    assert pairing_key(Path("cam_l/img_000123.png")) == "000123"


def test_baseline_is_along_x_and_agrees_with_per_pair_board_poses(stereo, intrinsics):
    t = stereo.right_from_left.translation
    print(f"\n{stereo.summary()}")
    assert stereo.right_from_left.name == "cam_right_from_cam_left"
    assert len(stereo.pair_paths) == 13
    # The right camera sits to the right of the left one: left-frame points have smaller x in it.
    assert t[0] < 0 and abs(t[0]) / np.linalg.norm(t) > 0.99
    # Independent of stereoCalibrate: where each camera sees the board from, pair by pair.
    left, right = intrinsics
    per_pair = []
    for obj, pl, pr in zip(stereo.object_points, stereo.left_points, stereo.right_points):
        centres = []
        for cam, pts in ((left.camera, pl), (right.camera, pr)):
            ok, rvec, tvec = cv2.solvePnP(obj, pts, cam.K, cam.dist_array)
            assert ok
            centres.append(-cv2.Rodrigues(rvec)[0].T @ tvec.ravel())
        per_pair.append(np.linalg.norm(centres[0] - centres[1]))
    print(f"baseline {stereo.baseline_m:.4f} m = {stereo.baseline_squares:.3f} squares; per-pair PnP "
          f"median {np.median(per_pair):.4f} m (spread {np.ptp(per_pair) * 1000:.1f} mm)")
    assert stereo.baseline_m == pytest.approx(np.median(per_pair), rel=0.02)
    assert stereo.baseline_squares == pytest.approx(stereo.baseline_m / SQUARE_M)
    assert stereo.rms_px < 0.5


def test_fixed_intrinsics_path_agrees_with_opencv_stereo_calibrate_on_raw_corners(stereo, intrinsics):
    left, right = intrinsics
    out = cv2.stereoCalibrate([o.reshape(-1, 1, 3) for o in stereo.object_points],
                              [p.reshape(-1, 1, 2) for p in stereo.left_points],
                              [p.reshape(-1, 1, 2) for p in stereo.right_points],
                              left.camera.K, left.camera.dist_array, right.camera.K, right.camera.dist_array,
                              (640, 480), flags=cv2.CALIB_FIX_INTRINSIC)
    rms_cv, R, T = out[0], out[5], out[6].ravel()
    print(f"\nours RMS {stereo.rms_px:.4f} px t {np.round(stereo.right_from_left.translation, 5)}; "
          f"cv2.stereoCalibrate RMS {rms_cv:.4f} px t {np.round(T, 5)}")
    assert np.linalg.norm(T - stereo.right_from_left.translation) < 0.01 * np.linalg.norm(T)
    dR = cv2.Rodrigues(R @ stereo.right_from_left.rotation.T)[0]
    assert np.degrees(np.linalg.norm(dR)) < 0.05
    assert stereo.rms_px == pytest.approx(rms_cv, rel=0.10)


def test_rectified_corners_lie_on_the_same_rows(stereo, intrinsics):
    """Checked with OpenCV's own rectification (real distortion, cv2.undistortPoints)."""
    left, right = intrinsics
    R, T = stereo.right_from_left.rotation.copy(), stereo.right_from_left.translation.reshape(3, 1).copy()
    R1, R2, P1, P2, *_ = cv2.stereoRectify(left.camera.K, left.camera.dist_array, right.camera.K,
                                           right.camera.dist_array, (640, 480), R, T,
                                           flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    dv = []
    for pl, pr in zip(stereo.left_points, stereo.right_points):
        ul = cv2.undistortPoints(pl.reshape(-1, 1, 2), left.camera.K, left.camera.dist_array, R=R1, P=P1)
        ur = cv2.undistortPoints(pr.reshape(-1, 1, 2), right.camera.K, right.camera.dist_array, R=R2, P=P2)
        dv.append((ul - ur).reshape(-1, 2)[:, 1])
    dv = np.concatenate(dv)
    print(f"\nrectified row error (OpenCV): RMS {np.sqrt(np.mean(dv**2)):.3f} px, max {np.abs(dv).max():.3f} px; "
          f"ours RMS {stereo.row_error_rms_px:.3f} px, max {stereo.row_error_max_px:.3f} px")
    assert np.abs(dv).max() < 1.0
    assert stereo.row_error_max_px < 1.0
    assert stereo.row_error_rms_px == pytest.approx(np.sqrt(np.mean(dv**2)), rel=0.2)


def test_rectification_preview_shows_the_pair_on_common_rows(stereo, images, tmp_path):
    png = save_stereo_pictures(stereo, tmp_path / "out")
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert img.shape == (480, 1280, 3)
    # Horizontal guide lines every 24 px, alternating green and red, across both halves.
    for k, y in enumerate(range(12, 480, 24)):
        colour = (0, 255, 0) if k % 2 == 0 else (0, 0, 255)
        assert (img[y, 700:1270] == colour).all(), y
    # The picture content: the first pair, rectified; the board's rows agree between the halves.
    rect = stereo_rectification(stereo)
    lp, rp = stereo.pair_paths[0]
    lr = rectify_image(stereo.left_camera, rect.R1, rect.P1, cv2.imread(str(lp), cv2.IMREAD_GRAYSCALE), rect.size)
    rr = rectify_image(stereo.right_camera, rect.R2, rect.P2, cv2.imread(str(rp), cv2.IMREAD_GRAYSCALE), rect.size)
    cl, cr = detect_chessboard(lr, PATTERN), detect_chessboard(rr, PATTERN)
    assert cl is not None and cr is not None
    assert np.abs(cl[:, 1] - cr[:, 1]).max() < 1.0
    assert np.median(cl[:, 0] - cr[:, 0]) > 10  # positive disparity: the board is in front
    plain = img[:, :640][np.arange(480) % 24 != 12][40:]
    assert np.abs(plain.astype(int) - cv2.cvtColor(lr, cv2.COLOR_GRAY2BGR)[np.arange(480) % 24 != 12][40:]
                  ).mean() < 1.0


def test_fisheye_intrinsics_give_the_same_extrinsic(images, stereo):
    left = calibrate_intrinsics(images[0], PATTERN, SQUARE_M, "fisheye")
    right = calibrate_intrinsics(images[1], PATTERN, SQUARE_M, "fisheye")
    fish = calibrate_stereo(images[0], images[1], PATTERN, SQUARE_M, left, right)
    print(f"\nfisheye: RMS left {left.rms_px:.3f} right {right.rms_px:.3f} stereo {fish.rms_px:.3f} px, "
          f"baseline {fish.baseline_m:.4f} m, row error max {fish.row_error_max_px:.3f} px")
    assert fish.baseline_m == pytest.approx(stereo.baseline_m, rel=0.01)
    assert fish.right_from_left.allclose(stereo.right_from_left, atol=2e-3)
    assert fish.row_error_max_px < 1.0


def test_unpaired_images_are_reported_and_intrinsics_are_calibrated_when_not_given(images):
    left, right = images
    result = calibrate_stereo([p for p in left if p.name != "left03.jpg"], right, PATTERN, SQUARE_M,
                              left_id="a", right_id="b")
    report = next(p for p in result.per_pair if p.key == "03")
    assert not report.accepted and report.reason == "unpaired: no left image with key '03'"
    assert report.left_path is None and report.right_path.name == "right03.jpg"
    assert len(result.pair_paths) == 12
    assert result.right_from_left.name == "b_from_a"
    assert 0.07 < result.baseline_m < 0.1


def test_too_few_pairs_raise_and_leave_the_rig_untouched(images, intrinsics, rig_file):
    before = rig_file.read_bytes()
    with pytest.raises(CalibrationError, match=r"only 2 usable stereo pair\(s\) of 2, need at least 3"):
        result = calibrate_stereo(images[0][:2], images[1][:2], PATTERN, SQUARE_M, *intrinsics)
        write_stereo_to_rig(rig_file, result)
    assert rig_file.read_bytes() == before


def test_no_common_names_raise(images, tmp_path):
    renamed = tmp_path / "rightA.jpg"
    renamed.write_bytes(images[1][0].read_bytes())
    with pytest.raises(CalibrationError, match="no left/right image pairs"):
        calibrate_stereo(images[0][:3], [renamed], PATTERN, SQUARE_M)


def test_write_stereo_places_the_right_camera_from_the_left_ones_pose(stereo, rig_file):
    old = Rig.load(rig_file)
    write_stereo_to_rig(rig_file, stereo)
    rig = Rig.load(rig_file)
    assert rig.ego_from("cam_left").allclose(old.ego_from("cam_left"))
    expected = old.ego_from("cam_left") @ stereo.right_from_left.inverse()
    assert rig.ego_from("cam_right").allclose(expected, atol=1e-6)
    assert rig.transform("cam_right", "cam_left").allclose(stereo.right_from_left, atol=1e-6)
    # Forward-looking cameras: the right camera is `baseline` further to ego -y.
    offset = rig.ego_from("cam_right").translation - rig.ego_from("cam_left").translation
    assert offset[1] == pytest.approx(-stereo.baseline_m, abs=0.003)
    assert rig["cam_right"].camera.fx == pytest.approx(stereo.right_camera.fx)
    assert rig.ego_from("imu").allclose(old.ego_from("imu"))


def test_write_stereo_refuses_a_rig_without_the_cameras_unless_asked(stereo, tmp_path):
    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text("name: empty\nsensors: []\n")
    before = rig_file.read_bytes()
    with pytest.raises(CalibrationError, match="no camera 'cam_left'"):
        write_stereo_to_rig(rig_file, stereo)
    assert rig_file.read_bytes() == before
    rig = write_stereo_to_rig(rig_file, stereo, create_missing=True)
    assert np.allclose(rig.ego_from("cam_left").matrix, np.eye(4))
    assert rig.transform("cam_right", "cam_left").allclose(stereo.right_from_left, atol=1e-6)
