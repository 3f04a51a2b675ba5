"""Stereo extrinsic calibration of two cameras from chessboard image pairs (OpenCV).

Typical use (what ``perception calibrate stereo`` does)::

    result = calibrate_stereo(expand_image_glob("shots/left*.jpg"), expand_image_glob("shots/right*.jpg"),
                              (9, 6), 0.025, left_id="cam_left", right_id="cam_right")  # raises on failure
    write_stereo_to_rig("rig.yaml", result)                                             # only on success
    save_stereo_pictures(result, "out/")

Pairing: a left and a right image belong together when their pairing keys are equal; the key is the
last run of digits in the file name's stem (``left01.jpg`` <-> ``right01.jpg``, ``cam_l/000123.png`` <->
``cam_r/000123.png``), or the whole stem when it has no digits. Unmatched images are reported, not used.

Method: the intrinsics of both cameras are fixed (given, or calibrated here first from all the images
of that side). Each camera's corners are undistorted with its own model into ideal pinhole pixels
(same K, no distortion) and ``cv2.stereoCalibrate`` with ``CALIB_FIX_INTRINSIC`` estimates
right_from_left. Going through ideal pixels lets pinhole, fisheye and mixed pairs share one path;
the reported errors are then recomputed by projecting with the real camera models.

Output frames are named by the camera ids: ``right_from_left`` is Transform(dst=right_id,
src=left_id), optical frames (z forward, x right, y down), translation in the unit of ``square_m``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.intrinsics import (
    DEFAULT_MIN_SHARPNESS,
    CalibrationError,
    IntrinsicsResult,
    ModelName,
    board_object_points,
    calibrate_intrinsics,
    describe_rejections,
    find_board_views,
    load_rig_for_update,
    rig_with_camera,
)
from calibration.pictures import draw_horizontal_lines, side_by_side, write_png
from calibration.rig import Rig, RigError, Sensor
from calibration.transform import Transform

_STEREO_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-10)
_MAX_OUTLIER_ROUNDS = 3


def pairing_key(path: Path) -> str:
    """The key that pairs a left image with a right one: the stem's last run of digits, else the stem."""
    digits = re.findall(r"\d+", Path(path).stem)
    return digits[-1] if digits else Path(path).stem


@dataclass(frozen=True)
class PairReport:
    """One pairing key's fate.

    Args:
        key: the pairing key (see :func:`pairing_key`).
        left_path, right_path: the images, None for the side that has no image with this key.
        error_px: RMS reprojection error [px] over both images' corners, None when never solved.
        accepted: used in the final solve.
        reason: why it was rejected ("category: detail"), "" when accepted.
    """

    key: str
    left_path: Path | None
    right_path: Path | None
    error_px: float | None
    accepted: bool
    reason: str = ""

    @property
    def path(self) -> Path:
        """The image that names this pair in messages (left when present)."""
        return self.left_path or self.right_path  # type: ignore[return-value]


@dataclass(frozen=True)
class StereoResult:
    """A successful stereo calibration.

    Args:
        left_id, right_id: camera ids, also the frame names of ``right_from_left``.
        left_camera, right_camera: the (fixed) intrinsics used.
        right_from_left: Transform(dst=right_id, src=left_id), optical frames, translation [m].
        baseline_m: |translation| [m] (in the unit of ``square_m``).
        rms_px: RMS reprojection error [px] over all corners of both images of the accepted pairs.
        row_error_rms_px, row_error_max_px: after epipolar rectification, RMS and largest
            |v_left - v_right| [px] of matching corners (0 for a perfect calibration).
        per_pair: one PairReport per pairing key, sorted by key.
        pattern, square_m: the board.
        pair_paths: accepted (left, right) images, aligned with the arrays below.
        object_points: per accepted pair, (N, 3) float32 [m] board corners.
        left_points, right_points: per accepted pair, (N, 2) float32 [px] detected corners.
    """

    left_id: str
    right_id: str
    left_camera: CameraModel
    right_camera: CameraModel
    right_from_left: Transform
    baseline_m: float
    rms_px: float
    row_error_rms_px: float
    row_error_max_px: float
    per_pair: tuple[PairReport, ...]
    pattern: tuple[int, int]
    square_m: float
    pair_paths: tuple[tuple[Path, Path], ...]
    object_points: tuple[np.ndarray, ...]
    left_points: tuple[np.ndarray, ...]
    right_points: tuple[np.ndarray, ...]

    @property
    def baseline_squares(self) -> float:
        """Baseline in board squares (useful when the square size is unknown)."""
        return self.baseline_m / self.square_m

    def summary(self) -> str:
        """A few human-readable lines: transform, baseline, errors, pairs used and rejection reasons."""
        t = self.right_from_left.translation
        rvec, _ = cv2.Rodrigues(self.right_from_left.rotation)
        lines = [
            f"{self.right_from_left.name}: t = [{t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}] m, "
            f"rotation {np.degrees(np.linalg.norm(rvec)):.2f} deg",
            f"baseline {self.baseline_m:.4f} m ({self.baseline_squares:.2f} squares); RMS {self.rms_px:.3f} px "
            f"over {len(self.pair_paths)} of {len(self.per_pair)} pairs; rectified row error RMS "
            f"{self.row_error_rms_px:.3f} px, max {self.row_error_max_px:.3f} px",
        ]
        lines += [f"  rejected pair {p.key}: {p.reason}" for p in self.per_pair if not p.accepted]
        return "\n".join(lines)


@dataclass(frozen=True)
class Rectification:
    """Epipolar rectification of a stereo pair (cv2.stereoRectify, CALIB_ZERO_DISPARITY, alpha 0).

    Args:
        R1, R2: (3, 3) rotations rectified_from_left / rectified_from_right optical frames.
        P1, P2: (3, 4) projection matrices of the rectified images [px].
        Q: (4, 4) disparity-to-depth matrix.
        size: (width, height) [px] of the rectified images.
    """

    R1: np.ndarray
    R2: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    Q: np.ndarray
    size: tuple[int, int]


# ----------------------------------------------------------------------------------------------- pairs
def pair_by_name(left_paths: Sequence[Path], right_paths: Sequence[Path]
                 ) -> tuple[list[tuple[str, Path, Path]], list[PairReport]]:
    """Pair images by :func:`pairing_key`.

    Returns:
        (pairs as (key, left, right) sorted by key, reports for images without a partner).
    Raises:
        CalibrationError: two images of one side share a key (the pairing would be ambiguous)."""
    def index(paths: Sequence[Path], side: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in map(Path, paths):
            k = pairing_key(p)
            if k in out:
                raise CalibrationError(f"{side} images {out[k].name} and {p.name} have the same pairing key "
                                       f"{k!r} (the last number in the file name)")
            out[k] = p
        return out

    left, right = index(left_paths, "left"), index(right_paths, "right")
    pairs = [(k, left[k], right[k]) for k in sorted(left.keys() & right.keys())]
    lonely = [PairReport(k, left[k], None, None, False, f"unpaired: no right image with key {k!r}")
              for k in sorted(left.keys() - right.keys())]
    lonely += [PairReport(k, None, right[k], None, False, f"unpaired: no left image with key {k!r}")
               for k in sorted(right.keys() - left.keys())]
    return pairs, lonely


def _side_corners(paths: list[Path], result: IntrinsicsResult, pattern: tuple[int, int], min_sharpness: float
                  ) -> list[tuple[np.ndarray | None, str]]:
    """Per path, (corners (N, 2) float32 or None, reason): reused from the intrinsic calibration where it
    used that image with the same board, detected here otherwise."""
    same_board = result.pattern == pattern
    out: list[tuple[np.ndarray | None, str] | None] = [None] * len(paths)
    to_detect = []
    for i, p in enumerate(paths):
        known = result.corners_for(p) if same_board else None
        report = next((v for v in result.per_view if v.path == p), None) if same_board else None
        if known is not None:
            out[i] = (known, "")
        elif report is not None:
            out[i] = (None, report.reason)
        else:
            to_detect.append(i)
    views = find_board_views([paths[i] for i in to_detect], pattern, min_sharpness)
    cam = result.camera
    for i, v in zip(to_detect, views):
        if v.corners is not None and v.image_size != (cam.width, cam.height):
            out[i] = (None, f"size: image is {v.image_size[0]}x{v.image_size[1]}, the camera "
                            f"{cam.width}x{cam.height}")
        else:
            out[i] = (v.corners, v.reason)
    return out  # type: ignore[return-value]


def _ideal_pixels(camera: CameraModel, uv: np.ndarray) -> np.ndarray:
    """Distorted pixels (N, 2) -> pixels of the same camera without distortion (N, 1, 2) float64."""
    rays = camera.unproject(np.asarray(uv, np.float64))
    return (rays[:, :2] * [camera.fx, camera.fy] + [camera.cx, camera.cy]).reshape(-1, 1, 2)


def _pair_errors(left: CameraModel, right: CameraModel, R: np.ndarray, T: np.ndarray, obj: np.ndarray,
                 uv_left: np.ndarray, uv_right: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(2N,) reprojection errors [px] of one pair: board pose in the left camera, right = R left + T."""
    Rb, _ = cv2.Rodrigues(np.asarray(rvec, np.float64))
    p_left = obj.astype(np.float64) @ Rb.T + np.asarray(tvec, np.float64).reshape(3)
    p_right = p_left @ R.T + T
    e_left = np.linalg.norm(left.project(p_left)[0] - uv_left, axis=1)
    e_right = np.linalg.norm(right.project(p_right)[0] - uv_right, axis=1)
    return np.concatenate([e_left, e_right])


def calibrate_stereo(
    left_paths: Sequence[Path],
    right_paths: Sequence[Path],
    pattern: tuple[int, int],
    square_m: float,
    left: IntrinsicsResult | None = None,
    right: IntrinsicsResult | None = None,
    left_id: str = "cam_left",
    right_id: str = "cam_right",
    model: ModelName = "pinhole",
    min_pairs: int = 3,
    min_sharpness: float = DEFAULT_MIN_SHARPNESS,
    outlier_factor: float = 3.0,
    outlier_floor_px: float = 1.0,
) -> StereoResult:
    """Calibrate right_from_left of a stereo pair from chessboard image pairs.

    Args:
        left_paths, right_paths: images of each camera, paired by name (module doc).
        pattern: inner corners (per row, rows); square_m: square side [m].
        left, right: intrinsic calibrations to keep fixed; None calibrates that camera here first
            (model ``model``) from all its images.
        left_id, right_id: camera ids, used as frame names.
        min_pairs: fewest accepted pairs to trust a result.
        min_sharpness, outlier_factor, outlier_floor_px: as in calibrate_intrinsics, per pair.
    Returns:
        StereoResult (nothing is written anywhere).
    Raises:
        CalibrationError: no pairs, a failed intrinsic calibration, different image sizes, fewer than
            ``min_pairs`` usable pairs (with reasons), or a failed solve."""
    if not left_paths or not right_paths:
        raise CalibrationError(f"stereo calibration needs images of both cameras, got {len(left_paths)} left "
                               f"and {len(right_paths)} right")
    if left_id == right_id:
        raise CalibrationError(f"left and right camera ids must differ, both are {left_id!r}")
    pattern = (int(pattern[0]), int(pattern[1]))
    pairs, reports = pair_by_name(left_paths, right_paths)
    if not pairs:
        raise CalibrationError(
            f"no left/right image pairs: no pairing key (last number in the file name) is shared; left keys "
            f"{sorted(pairing_key(Path(p)) for p in left_paths)[:6]}, right keys "
            f"{sorted(pairing_key(Path(p)) for p in right_paths)[:6]}")
    if left is None:
        left = calibrate_intrinsics(list(left_paths), pattern, square_m, model, min_sharpness=min_sharpness)
    if right is None:
        right = calibrate_intrinsics(list(right_paths), pattern, square_m, model, min_sharpness=min_sharpness)
    cam_l, cam_r = left.camera, right.camera
    if (cam_l.width, cam_l.height) != (cam_r.width, cam_r.height):
        raise CalibrationError(f"left camera is {cam_l.width}x{cam_l.height} but right is "
                               f"{cam_r.width}x{cam_r.height}; rectification needs one image size")
    size = (cam_l.width, cam_l.height)

    lc = _side_corners([p[1] for p in pairs], left, pattern, min_sharpness)
    rc = _side_corners([p[2] for p in pairs], right, pattern, min_sharpness)
    active = []  # (key, left path, right path, left corners, right corners)
    for (key, lp, rp), (cl, why_l), (cr, why_r) in zip(pairs, lc, rc):
        if cl is None or cr is None:
            reports.append(PairReport(key, lp, rp, None, False, _pair_reason(lp, rp, cl, why_l, why_r)))
        else:
            active.append((key, lp, rp, cl, cr))

    board = board_object_points(pattern, square_m)
    K1 = cam_l.K
    K2 = cam_r.K
    zero = np.zeros(5)
    rounds = 0
    while True:
        if len(active) < min_pairs:
            raise CalibrationError(
                f"only {len(active)} usable stereo pair(s) of {len(pairs)}, need at least {min_pairs}; "
                f"rejected: {describe_rejections([r for r in reports if not r.accepted])}")
        obj = [board.reshape(-1, 1, 3)] * len(active)
        il = [_ideal_pixels(cam_l, a[3]).astype(np.float32) for a in active]
        ir = [_ideal_pixels(cam_r, a[4]).astype(np.float32) for a in active]
        try:
            out = cv2.stereoCalibrateExtended(obj, il, ir, K1.copy(), zero.copy(), K2.copy(), zero.copy(), size,
                                              None, None, flags=cv2.CALIB_FIX_INTRINSIC,
                                              criteria=_STEREO_CRITERIA)
        except cv2.error as e:
            raise CalibrationError(f"stereo calibration failed on {len(active)} pairs: "
                                   f"{str(e).strip().splitlines()[-1]}") from e
        R, T, rvecs, tvecs = out[5], np.asarray(out[6], np.float64).reshape(3), out[9], out[10]
        errs = [_pair_errors(cam_l, cam_r, R, T, board, a[3], a[4], rv, tv)
                for a, rv, tv in zip(active, rvecs, tvecs)]
        per_pair = np.array([np.sqrt(np.mean(e**2)) for e in errs])
        med = float(np.median(per_pair))
        limit = max(outlier_factor * med, outlier_floor_px)
        outliers = {i for i, e in enumerate(per_pair) if e > limit}
        if not outliers or rounds >= _MAX_OUTLIER_ROUNDS:
            break
        rounds += 1
        for i in sorted(outliers):
            key, lp, rp = active[i][:3]
            reports.append(PairReport(key, lp, rp, float(per_pair[i]), False,
                                      f"outlier: reprojection error {per_pair[i]:.2f} px > {limit:.2f} px "
                                      f"({outlier_factor:g} x median {med:.2f} px)"))
        active = [a for i, a in enumerate(active) if i not in outliers]

    for a, e in zip(active, per_pair):
        reports.append(PairReport(a[0], a[1], a[2], float(e), True, ""))
    try:
        right_from_left = Transform(right_id, left_id, R, T)
    except ValueError as e:
        raise CalibrationError(f"stereo calibration gave an invalid transform: {e}") from e
    rect = _rectify(cam_l, cam_r, right_from_left)
    dv = np.concatenate([rectify_points(cam_l, rect.R1, rect.P1, a[3])[:, 1]
                         - rectify_points(cam_r, rect.R2, rect.P2, a[4])[:, 1] for a in active])

    def frozen(x: np.ndarray) -> np.ndarray:
        x = np.array(x)
        x.flags.writeable = False
        return x

    all_err = np.concatenate(errs)
    return StereoResult(
        left_id=left_id,
        right_id=right_id,
        left_camera=cam_l,
        right_camera=cam_r,
        right_from_left=right_from_left,
        baseline_m=float(np.linalg.norm(T)),
        rms_px=float(np.sqrt(np.mean(all_err**2))),
        row_error_rms_px=float(np.sqrt(np.mean(dv**2))),
        row_error_max_px=float(np.abs(dv).max()),
        per_pair=tuple(sorted(reports, key=lambda r: r.key)),
        pattern=pattern,
        square_m=float(square_m),
        pair_paths=tuple((a[1], a[2]) for a in active),
        object_points=tuple(frozen(board) for _ in active),
        left_points=tuple(frozen(a[3]) for a in active),
        right_points=tuple(frozen(a[4]) for a in active),
    )


def _pair_reason(lp: Path, rp: Path, cl: np.ndarray | None, why_l: str, why_r: str) -> str:
    """'category: left left03.jpg: detail' for the first side whose board is unusable."""
    side, path, why = ("left", lp, why_l) if cl is None else ("right", rp, why_r)
    category, _, detail = why.partition(": ")
    return f"{category}: {side} {path.name}: {detail}"


# ------------------------------------------------------------------------------------ rectification
def _rectify(left: CameraModel, right: CameraModel, right_from_left: Transform) -> Rectification:
    """cv2.stereoRectify on the ideal (undistorted) cameras: the rectifying rotations do not depend
    on distortion, and ignoring it keeps pinhole and fisheye on one path (alpha 0 then crops to the
    undistorted image area, so strongly distorted corners of the originals fall outside)."""
    size = (left.width, left.height)
    R1, R2, P1, P2, Q, _, _ = cv2.stereoRectify(
        left.K, np.zeros(5), right.K, np.zeros(5), size, right_from_left.rotation,
        right_from_left.translation.reshape(3, 1), flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    return Rectification(R1, R2, P1, P2, Q, size)


def stereo_rectification(result: StereoResult) -> Rectification:
    """The epipolar rectification of a calibrated pair (see :class:`Rectification`)."""
    return _rectify(result.left_camera, result.right_camera, result.right_from_left)


def rectify_points(camera: CameraModel, R: np.ndarray, P: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of the original image -> (N, 2) float64 pixels in the rectified image (R: (3, 3)
    rectifying rotation, P: (3, 4) rectified projection)."""
    rays = camera.unproject(np.asarray(uv, np.float64)) @ np.asarray(R).T
    p = rays @ np.asarray(P)[:, :3].T
    return p[:, :2] / p[:, 2:3]


def rectify_image(camera: CameraModel, R: np.ndarray, P: np.ndarray, image: np.ndarray,
                  size: tuple[int, int]) -> np.ndarray:
    """Remap an image (H, W[, C]) of ``camera`` into the rectified view (R, P as above) of ``size``."""
    K, d = camera.K, camera.dist_array
    if camera.model == "fisheye":
        m1, m2 = cv2.fisheye.initUndistortRectifyMap(K, d, R, P, size, cv2.CV_32FC1)
    else:
        m1, m2 = cv2.initUndistortRectifyMap(K, d, R, P, size, cv2.CV_32FC1)
    return cv2.remap(image, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def draw_rectified_pair(result: StereoResult, left_image: np.ndarray, right_image: np.ndarray,
                        line_step_px: int = 24) -> np.ndarray:
    """Rectified left | rectified right with horizontal lines: matching points lie on the same line.

    Args:
        result: the stereo calibration.
        left_image, right_image: (H, W) grey or (H, W, 3) BGR uint8 images of one pair.
    Returns:
        (H, 2 W, 3) uint8 BGR."""
    rect = stereo_rectification(result)
    lr = rectify_image(result.left_camera, rect.R1, rect.P1, left_image, rect.size)
    rr = rectify_image(result.right_camera, rect.R2, rect.P2, right_image, rect.size)
    both = side_by_side(lr, rr, f"{result.left_id} rectified", f"{result.right_id} rectified")
    return draw_horizontal_lines(both, line_step_px)


def save_stereo_pictures(result: StereoResult, out_dir: str | Path, name: str = "stereo") -> Path:
    """Write ``<name>_rectified.png`` (the first accepted pair, rectified) into ``out_dir``; returns it."""
    lp, rp = result.pair_paths[0]
    li, ri = cv2.imread(str(lp), cv2.IMREAD_COLOR), cv2.imread(str(rp), cv2.IMREAD_COLOR)
    if li is None or ri is None:
        raise CalibrationError(f"cannot re-read {lp} / {rp} for the rectification preview")
    return write_png(Path(out_dir) / f"{name}_rectified.png", draw_rectified_pair(result, li, ri))


# ------------------------------------------------------------------------------------------- the rig
def write_stereo_to_rig(rig_path: str | Path, result: StereoResult, write_intrinsics: bool = True,
                        create_missing: bool = False) -> Rig:
    """Place the right camera in a rig file from the stereo extrinsic; atomic write.

    ``ego_from_right = ego_from_left @ left_from_right``: the left camera's pose in the rig is kept and
    the right camera's pose is replaced.

    Args:
        rig_path: the rig file.
        result: the stereo calibration (camera ids ``left_id`` / ``right_id``).
        write_intrinsics: also store both cameras' intrinsics (the extrinsic was estimated with them).
        create_missing: create missing cameras (the left one with identity pose) or a missing file
            instead of raising.
    Returns:
        The rig as written.
    Raises:
        CalibrationError: invalid rig, unknown camera (without ``create_missing``), a sensor id that
            is not a camera. The file is untouched in every error case."""
    rig_path = Path(rig_path)
    rig = load_rig_for_update(rig_path, create_missing)
    try:
        if result.left_id not in rig or write_intrinsics:
            rig = rig_with_camera(rig, rig_path, result.left_id, result.left_camera, create_missing)
        if rig[result.left_id].kind != "camera":
            raise CalibrationError(f"rig {rig_path}: sensor '{result.left_id}' is not a camera")
        ego_from_right = rig.ego_from(result.left_id) @ result.right_from_left.inverse()
        if result.right_id in rig:
            sensor = rig[result.right_id]
            if sensor.kind != "camera":
                raise CalibrationError(f"rig {rig_path}: sensor '{result.right_id}' is a {sensor.kind}, "
                                       f"not a camera")
            camera = result.right_camera if write_intrinsics else sensor.camera
            rig = rig.replace_sensor(dataclasses.replace(sensor, ego_from_sensor=ego_from_right, camera=camera))
        elif create_missing:
            rig = rig.replace_sensor(Sensor(result.right_id, "camera", ego_from_right, result.right_camera))
        else:
            cams = ", ".join(rig.ids("camera")) or "none"
            raise CalibrationError(f"rig {rig_path} has no camera '{result.right_id}' (cameras: {cams}); "
                                   f"ask to create it explicitly")
    except RigError as e:
        raise CalibrationError(f"cannot update rig {rig_path}: {e}") from e
    rig.save(rig_path)
    return rig
