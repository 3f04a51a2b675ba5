"""Intrinsic calibration on OpenCV's real chessboard samples (../shared/realdata/opencv_chessboard:
13 left + 13 right 640x480 grey images, 9x6 inner corners; SOURCE.md states no square size, so 25 mm is
assumed and every length below is in that unit), bad-input errors, rig writing and the pictures."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.camera import CameraModel
from calibration.intrinsics import (
    BoardView,
    CalibrationError,
    IntrinsicsResult,
    board_object_points,
    calibrate_from_views,
    calibrate_intrinsics,
    detect_chessboard,
    expand_image_glob,
    parse_pattern,
    write_intrinsics_to_rig,
)
from calibration.pictures import HEAT_MAX, coverage_counts, draw_undistortion_preview, save_intrinsics_pictures
from calibration.rig import Rig

PATTERN = (9, 6)
SQUARE_M = 0.025  # not stated in SOURCE.md

RIG_YAML = """\
name: test_rig
sensors:
  - id: lidar_top
    kind: lidar
    translation: [1.2, 0.0, 1.9]
    rotation_wxyz: [1, 0, 0, 0]
  - id: cam_front
    kind: camera
    translation: [1.5, 0.1, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 640, height: 480, fx: 400, fy: 400, cx: 319.5, cy: 239.5,
                 distortion: [0, 0, 0, 0, 0]}
"""


@pytest.fixture(scope="module")
def board_dir(realdata) -> Path:
    d = realdata / "opencv_chessboard"
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return d


@pytest.fixture(scope="module")
def left_images(board_dir) -> list[Path]:
    return sorted(board_dir.glob("left*.jpg"))


@pytest.fixture(scope="module")
def left_pinhole(left_images) -> IntrinsicsResult:
    return calibrate_intrinsics(left_images, PATTERN, SQUARE_M, "pinhole")


@pytest.fixture
def rig_file(tmp_path) -> Path:
    p = tmp_path / "rig.yaml"
    p.write_text(RIG_YAML)
    return p


def _copy(paths: list[Path], dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dst / p.name)) for p in paths]


def _calibrate_then_write(paths, rig_file: Path, pattern=PATTERN) -> None:
    """What the command line does: the rig is only written after calibrate_intrinsics returned."""
    result = calibrate_intrinsics(paths, pattern, SQUARE_M, "pinhole")
    write_intrinsics_to_rig(rig_file, "cam_front", result.camera)


# ------------------------------------------------------------------------------------ accuracy
def test_pinhole_agrees_with_opencv_calibrate_camera_on_the_same_corners(left_pinhole):
    r = left_pinhole
    assert len(r.view_paths) == 13 and all(v.accepted for v in r.per_view)
    rms_cv, K, dist, _, _ = cv2.calibrateCamera(
        [o for o in r.object_points], [p.reshape(-1, 1, 2) for p in r.image_points], (640, 480), None, None)
    print(f"\nours: RMS {r.rms_px:.4f} px fx {r.camera.fx:.2f} fy {r.camera.fy:.2f}; "
          f"cv2.calibrateCamera: RMS {rms_cv:.4f} px fx {K[0, 0]:.2f} fy {K[1, 1]:.2f}")
    assert r.camera.fx == pytest.approx(K[0, 0], rel=0.005)
    assert r.camera.fy == pytest.approx(K[1, 1], rel=0.005)
    assert r.rms_px == pytest.approx(rms_cv, rel=0.10)
    assert r.rms_px < 0.5


def test_pinhole_agrees_with_opencv_sample_style_detection(left_images, left_pinhole):
    """Independent corners: OpenCV's stereo_calib sample recipe (findChessboardCorners + an 11 px
    cornerSubPix window). Same camera within 1.5 %; our adaptive window must not be less accurate."""
    obj, img = [], []
    for path in left_images:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        ok, c = cv2.findChessboardCorners(gray, PATTERN, flags=cv2.CALIB_CB_ADAPTIVE_THRESH
                                          | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if ok:
            c = cv2.cornerSubPix(gray, c, (11, 11), (-1, -1),
                                 (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.01))
            obj.append(left_pinhole.object_points[0])
            img.append(c)
    rms_cv, K, _, _, _ = cv2.calibrateCamera(obj, img, (640, 480), None, None)
    print(f"\nsample recipe on {len(img)} views: RMS {rms_cv:.3f} px fx {K[0, 0]:.2f} fy {K[1, 1]:.2f}")
    assert left_pinhole.camera.fx == pytest.approx(K[0, 0], rel=0.015)
    assert left_pinhole.camera.fy == pytest.approx(K[1, 1], rel=0.015)
    assert left_pinhole.rms_px <= rms_cv


def test_corner_numbering_follows_the_board_when_the_image_is_turned_upside_down(left_images):
    """The detector's numbering depends on the image; ours must name the same physical corner."""
    for path in left_images[:5]:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        h, w = gray.shape
        upright = detect_chessboard(gray, PATTERN)
        turned = detect_chessboard(cv2.rotate(gray, cv2.ROTATE_180), PATTERN)
        assert upright is not None and turned is not None
        back = np.stack([w - 1 - turned[:, 0], h - 1 - turned[:, 1]], axis=1)
        assert np.abs(back - upright).max() < 0.5, path.name


def test_fisheye_model_calibrates_the_same_images_below_one_pixel(left_images, left_pinhole):
    r = calibrate_intrinsics(left_images, PATTERN, SQUARE_M, "fisheye")
    print(f"\nfisheye: RMS {r.rms_px:.4f} px fx {r.camera.fx:.2f} fy {r.camera.fy:.2f} "
          f"k {np.round(r.camera.distortion, 4).tolist()}")
    assert r.camera.model == "fisheye" and len(r.camera.distortion) == 4
    assert len(r.view_paths) >= 12
    assert r.rms_px < 1.0
    # Narrow field of view: both models must see the same focal length.
    assert r.camera.fx == pytest.approx(left_pinhole.camera.fx, rel=0.01)


def test_stretched_view_is_rejected_as_outlier_and_the_camera_solved_again(left_images, left_pinhole, tmp_path):
    paths = _copy(left_images, tmp_path / "imgs")
    victim = tmp_path / "imgs" / "left08.jpg"
    gray = cv2.imread(str(victim), cv2.IMREAD_GRAYSCALE)
    wide = cv2.resize(gray, (int(640 * 1.1), 480))  # 10 % wider: inconsistent with one focal length
    x0 = (wide.shape[1] - 640) // 2
    cv2.imwrite(str(victim), wide[:, x0:x0 + 640])
    r = calibrate_intrinsics(paths, PATTERN, SQUARE_M, "pinhole")
    report = next(v for v in r.per_view if v.path == victim)
    assert not report.accepted and report.reason.startswith("outlier")
    assert report.error_px is not None and report.error_px > 1.0
    assert len(r.view_paths) == 12
    assert r.camera.fx == pytest.approx(left_pinhole.camera.fx, rel=0.005)


def test_fisheye_drops_the_view_that_makes_it_ill_conditioned_not_the_one_opencv_names():
    """Corners of a known fisheye camera (10 boards in general poses) plus one view whose corners
    all collapse onto one pixel. cv2.fisheye.calibrate then fails with CALIB_CHECK_COND naming a
    *good* view (the bad one spoiled the intrinsics first); the bad view must be the one dropped."""
    truth = CameraModel("fisheye", 640, 480, 300, 300, 320, 240, (0.05, -0.01, 0.002, 0.0))
    board = board_object_points(PATTERN, SQUARE_M).astype(np.float64)
    rng = np.random.default_rng(0)
    views = []
    for k in range(10):
        R, _ = cv2.Rodrigues(rng.normal(0, 0.3, 3))
        t = np.array([rng.uniform(-0.1, 0.0), rng.uniform(-0.08, 0.0), rng.uniform(0.25, 0.4)])
        uv, _ = truth.project(board @ R.T + t)
        views.append(BoardView(Path(f"good{k}.png"), (uv + rng.normal(0, 0.1, uv.shape)).astype(np.float32),
                               (640, 480)))
    collapsed = np.full((len(board), 2), [100.0, 200.0]) + rng.normal(0, 1e-3, (len(board), 2))
    views.insert(5, BoardView(Path("collapsed.png"), collapsed.astype(np.float32), (640, 480)))
    r = calibrate_from_views(views, PATTERN, SQUARE_M, "fisheye")
    rejected = {v.path.name: v.reason for v in r.per_view if not v.accepted}
    assert list(rejected) == ["collapsed.png"]
    assert rejected["collapsed.png"].startswith("ill-conditioned: cv2.fisheye.calibrate fails with this view")
    assert r.camera.fx == pytest.approx(300, rel=0.01) and r.rms_px < 0.2


def test_image_of_another_size_is_rejected_naming_both_sizes(left_images, tmp_path):
    paths = _copy(left_images[:6], tmp_path / "imgs")
    big = tmp_path / "imgs" / "left99.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(left_images[0])), (800, 600)))
    r = calibrate_intrinsics(paths + [big], PATTERN, SQUARE_M, "pinhole")
    report = next(v for v in r.per_view if v.path == big)
    assert not report.accepted and report.reason == "size: image is 800x600, the others 640x480"


# ------------------------------------------------------------------------------------ bad input
def test_two_boards_are_too_few_and_the_rig_is_untouched(left_images, rig_file):
    before = rig_file.read_bytes()
    with pytest.raises(CalibrationError, match=r"only 2 usable view\(s\) of 2 images, need at least 5"):
        _calibrate_then_write(left_images[:2], rig_file)
    assert rig_file.read_bytes() == before


def test_wrong_pattern_size_says_inner_corners_and_names_the_size_that_works(left_images, rig_file):
    before = rig_file.read_bytes()
    with pytest.raises(CalibrationError) as err:
        _calibrate_then_write(left_images[:4], rig_file, pattern=(7, 5))
    msg = str(err.value)
    assert "no 7x5 chessboard found in any of 4 images" in msg
    assert "inner corners" in msg and "found with pattern 9x6" in msg
    assert rig_file.read_bytes() == before


def test_partial_board_is_not_taken_for_a_smaller_pattern(left_images):
    # The classic detector alone finds a 7x6 grid inside this 9x6 board.
    gray = cv2.imread(str(left_images[0]), cv2.IMREAD_GRAYSCALE)
    found, _ = cv2.findChessboardCorners(gray, (7, 6), flags=cv2.CALIB_CB_ADAPTIVE_THRESH
                                         | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK)
    assert found
    assert detect_chessboard(gray, (7, 6)) is None
    assert detect_chessboard(gray, PATTERN) is not None


def test_strongly_blurred_images_are_rejected_as_blurry(left_images, tmp_path, rig_file):
    before = rig_file.read_bytes()
    blurred = []
    for p in left_images[:6]:
        out = tmp_path / p.name
        cv2.imwrite(str(out), cv2.GaussianBlur(cv2.imread(str(p)), (0, 0), 8))
        blurred.append(out)
    with pytest.raises(CalibrationError) as err:
        _calibrate_then_write(blurred, rig_file)
    assert "only 0 usable view(s) of 6 images" in str(err.value)
    assert "6 blurry (" in str(err.value)
    assert rig_file.read_bytes() == before


def test_all_black_images_are_rejected_as_empty(tmp_path, rig_file):
    before = rig_file.read_bytes()
    paths = []
    for i in range(6):
        p = tmp_path / f"black{i:02d}.png"
        cv2.imwrite(str(p), np.zeros((480, 640), np.uint8))
        paths.append(p)
    with pytest.raises(CalibrationError, match=r"6 empty \(black00.png"):
        _calibrate_then_write(paths, rig_file)
    assert rig_file.read_bytes() == before


def test_unreadable_file_is_rejected_with_its_reason(left_images, tmp_path):
    paths = _copy(left_images[:6], tmp_path / "imgs")
    junk = tmp_path / "imgs" / "left50.jpg"
    junk.write_bytes(b"not a jpeg")
    r = calibrate_intrinsics(paths + [junk], PATTERN, SQUARE_M)
    report = next(v for v in r.per_view if v.path == junk)
    assert not report.accepted and report.reason.startswith("unreadable")


def test_glob_that_matches_nothing_raises(tmp_path):
    with pytest.raises(CalibrationError, match="no image files match"):
        expand_image_glob(str(tmp_path / "*.jpg"))


def test_pattern_text_is_parsed_or_refused():
    assert parse_pattern("9x6") == (9, 6)
    with pytest.raises(CalibrationError, match="inner corners"):
        parse_pattern("nine by six")


# ------------------------------------------------------------------------------------ rig
def test_write_intrinsics_replaces_only_that_cameras_intrinsics(left_pinhole, rig_file):
    old = Rig.load(rig_file)
    write_intrinsics_to_rig(rig_file, "cam_front", left_pinhole.camera)
    new = Rig.load(rig_file)
    cam = new["cam_front"].camera
    assert cam.fx == pytest.approx(left_pinhole.camera.fx) and cam.cy == pytest.approx(left_pinhole.camera.cy)
    assert cam.distortion == pytest.approx(left_pinhole.camera.distortion)
    assert new["cam_front"].ego_from_sensor.allclose(old["cam_front"].ego_from_sensor)
    assert new["lidar_top"].ego_from_sensor.allclose(old["lidar_top"].ego_from_sensor)
    assert not rig_file.with_suffix(".yaml.tmp").exists()


def test_write_intrinsics_creates_an_unknown_camera_only_when_asked(left_pinhole, rig_file):
    before = rig_file.read_bytes()
    with pytest.raises(CalibrationError, match=r"no camera 'cam_left' \(cameras: cam_front\)"):
        write_intrinsics_to_rig(rig_file, "cam_left", left_pinhole.camera)
    with pytest.raises(CalibrationError, match="'lidar_top' is a lidar"):
        write_intrinsics_to_rig(rig_file, "lidar_top", left_pinhole.camera)
    assert rig_file.read_bytes() == before
    write_intrinsics_to_rig(rig_file, "cam_left", left_pinhole.camera, create_missing=True)
    rig = Rig.load(rig_file)
    assert rig["cam_left"].camera.fx == pytest.approx(left_pinhole.camera.fx)
    assert np.allclose(rig["cam_left"].ego_from_sensor.matrix, np.eye(4))


# ------------------------------------------------------------------------------------ pictures
def test_coverage_picture_marks_every_accepted_corner_and_shows_gaps(left_pinhole, tmp_path):
    pics = save_intrinsics_pictures(left_pinhole, tmp_path / "out", "cam_front")
    img = cv2.imread(str(pics.coverage), cv2.IMREAD_COLOR)
    assert img.shape == (480, 640, 3)
    corners = np.rint(np.concatenate(left_pinhole.image_points)).astype(int)
    in_text = (corners[:, 1] < 30) | (corners[:, 1] > 480 - 30)  # the two text lines
    marks = img[corners[~in_text, 1], corners[~in_text, 0]]
    assert (marks.max(axis=1) == 255).all()  # every corner carries a full-brightness view colour
    # The heat map: cells the board never reached are black, the busiest cell is lit but dimmer
    # than the marks.
    counts = coverage_counts(list(left_pinhole.image_points), (640, 480), (8, 6))
    assert (counts == 0).any() and (counts > 0).any()
    cy, cx = np.unravel_index(np.argmax(counts == 0), counts.shape)
    cell = img[cy * 80 + 3:(cy + 1) * 80 - 3, cx * 80 + 3:(cx + 1) * 80 - 3]
    assert np.median(cell) == 0
    by, bx = np.unravel_index(np.argmax(counts), counts.shape)
    busy = img[by * 80 + 3:(by + 1) * 80 - 3, bx * 80 + 3:(bx + 1) * 80 - 3].reshape(-1, 3)
    background = busy[busy.max(axis=1) < 255]
    assert 0 < np.median(background.max(axis=1)) <= HEAT_MAX


def test_undistortion_preview_is_original_beside_undistorted_with_straightened_board(left_pinhole, left_images,
                                                                                    tmp_path):
    pics = save_intrinsics_pictures(left_pinhole, tmp_path, "cam_front")
    preview = cv2.imread(str(pics.undistortion), cv2.IMREAD_COLOR)
    original = cv2.imread(str(left_pinhole.view_paths[0]), cv2.IMREAD_COLOR)
    assert preview.shape == (480, 1280, 3)
    # Left half is the original except on the reference lines and the title.
    rows = [y for y in range(40, 480) if y % 40]
    cols = [x for x in range(0, 640) if x % 40]
    assert np.array_equal(preview[np.ix_(rows, cols)], original[np.ix_(rows, cols)])
    assert np.abs(preview[:, 640:].astype(int) - preview[:, :640].astype(int)).mean() > 5
    assert np.array_equal(draw_undistortion_preview(left_pinhole.camera, original), preview)

    # Undistortion must straighten the board: rows of corners lie on lines.
    def crookedness(gray: np.ndarray) -> float:
        c = detect_chessboard(gray, PATTERN).reshape(6, 9, 2)
        worst = 0.0
        for row in c:
            centred = row - row.mean(axis=0)
            worst = max(worst, np.linalg.svd(centred, compute_uv=False)[1] / np.sqrt(len(row)))
        return worst

    gray = cv2.imread(str(left_images[0]), cv2.IMREAD_GRAYSCALE)
    before, after = crookedness(gray), crookedness(left_pinhole.camera.undistort(gray))
    print(f"\nrow crookedness before {before:.2f} px, after undistortion {after:.2f} px")
    assert after < 0.5 * before and after < 0.5
