"""Target-based LiDAR-camera extrinsic calibration with a planar chessboard.

Typical use (what ``perception calibrate lidar-camera`` does)::

    rig = Rig.load("rig.yaml")
    result = calibrate_lidar_camera(images, lidar_points, rig["cam_front"].camera, ChessboardTarget(),
                                    rig.transform("cam_front", "lidar_top"))   # raises on bad input
    rig_with_lidar_camera(rig, result).save("rig.yaml")                        # only reached on success
    print(result.summary())

Per pose ``k`` (the board held still while the camera takes an image and the LiDAR a sweep):

1. Camera: the chessboard's inner corners (:func:`calibration.intrinsics.detect_chessboard`, then
   ``cv2.cornerSubPix`` with a window of half the corner spacing), turned into viewing rays with the
   camera model (pinhole distortion or fisheye, exactly), give the board pose ``camera_from_board`` by
   ``cv2.solvePnP`` (IPPE for planar targets, then Levenberg-Marquardt).
2. LiDAR: the camera-estimated board, moved into the LiDAR frame with the current estimate of
   ``camera_from_lidar`` (first the prior from the rig), defines a region of interest (the board's
   outline grown by ``roi_margin_m`` in every direction). Open3D's RANSAC (``segment_plane``) finds the
   plane in it; a plane whose normal disagrees with the camera's by more than ``max_normal_angle_deg``
   (the ground, a wall) is removed and the next one tried. The inliers, refitted by least squares, are
   the board points.
3. Solve: one Levenberg-Marquardt problem refines ``camera_from_lidar`` together with every board pose:
   the corners' reprojection errors (on the z = 1 plane, weighted by the corner noise measured in
   step 1) and the LiDAR board points' distances to their board's plane (weighted by the LiDAR noise
   measured in step 2, soft-L1 loss so stray points on the board's stand barely pull). Plain
   point-to-plane fitting against fixed camera planes is not enough at this resolution: a board 7 m
   away spans ~60 px, its plane from the camera alone is tilted by ~0.3 deg and offset by ~2 cm, and
   those errors went straight into the extrinsic (0.5 deg, 2.5 cm on the simulated session). Letting
   the LiDAR's own view of each plane correct the board pose, weighted by what each sensor knows,
   brings the errors to ~0.1 deg and ~0.5 cm.
4. Steps 2-3 run twice: the second time the region of interest is drawn with the first solution and a
   tight margin (``refine_margin_m``), so clutter next to the board (its stand) is cut off.

The plane constraints fix all six degrees of freedom only if the board normals differ: tilt the board
left/right and up/down (+-30 deg) and spread it over the field of view; a poorly constrained solve
raises LidarCameraError.

Uncertainty: the covariance of the extrinsic is the (6, 6) block of the inverse Gauss-Newton normal
matrix of the joint problem (board poses marginalised), scaled by the reduced chi-square when above 1.
Parameters are a rotation vector (rad, applied on the left: ``R = exp(w) R_hat``) and the translation
(m), both in the camera frame. On 20 simulated sessions of 12 poses the per-axis errors had an RMS of
0.94 sigma (largest 2.9 sigma).

Frames: the board frame has its origin at the centre of the inner-corner grid, x along a row of
``cols`` corners, y across the rows, z = x cross y pointing away from the camera into the board.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.intrinsics import CalibrationError, detect_chessboard
from calibration.rig import EGO_FRAME, Rig, RigError
from calibration.transform import Transform

MIN_POSES = 3
BOARD_FRAME = "board"


class LidarCameraError(CalibrationError):
    """LiDAR-camera calibration failed; the message says why (and which pose when one is to blame)."""


class BoardNotFoundError(LidarCameraError):
    """The board was not found in one pose's image or LiDAR frame.

    Args:
        pose: index of the pose (0-based, in the order given).
        sensor: ``"camera"`` or ``"lidar"``.
        reason: what went wrong.
    """

    def __init__(self, pose: int, sensor: str, reason: str):
        super().__init__(f"pose {pose}: board not found in the {sensor} data: {reason}")
        self.pose = pose
        self.sensor = sensor
        self.reason = reason


@dataclass(frozen=True)
class ChessboardTarget:
    """A planar chessboard target.

    Args:
        cols, rows: inner corners per row and rows of inner corners (a board of (cols + 1) x (rows + 1)
            squares).
        square_m: side of one square [m].
        border_m: plain (white) margin around the squares [m]; the board's physical outline is the
            squares grown by this.
    """

    cols: int = 7
    rows: int = 5
    square_m: float = 0.12
    border_m: float = 0.08

    def __post_init__(self) -> None:
        if self.cols < 2 or self.rows < 2:
            raise ValueError(f"ChessboardTarget needs at least 2x2 inner corners, got {self.cols}x{self.rows}")
        if self.cols == self.rows:
            raise ValueError("ChessboardTarget: a square pattern is ambiguous under 90 degree turns; use cols != rows")
        if not (self.square_m > 0 and self.border_m >= 0):
            raise ValueError(f"ChessboardTarget: need square_m > 0 and border_m >= 0, got {self.square_m}, "
                             f"{self.border_m}")

    @property
    def pattern(self) -> tuple[int, int]:
        """(cols, rows) as OpenCV's patternSize."""
        return self.cols, self.rows

    @property
    def width_m(self) -> float:
        """Physical width of the board along its x axis [m] (squares plus border)."""
        return (self.cols + 1) * self.square_m + 2 * self.border_m

    @property
    def height_m(self) -> float:
        """Physical height of the board along its y axis [m]."""
        return (self.rows + 1) * self.square_m + 2 * self.border_m

    def corner_points(self) -> np.ndarray:
        """(cols * rows, 3) float64 inner corners [m] in the board frame, row by row (the order of
        :func:`calibration.intrinsics.detect_chessboard`), centred on the grid."""
        jj, ii = np.mgrid[0:self.rows, 0:self.cols]
        pts = np.zeros((self.rows * self.cols, 3))
        pts[:, 0] = (ii.ravel() - (self.cols - 1) / 2) * self.square_m
        pts[:, 1] = (jj.ravel() - (self.rows - 1) / 2) * self.square_m
        return pts

    def outline(self) -> np.ndarray:
        """(4, 3) float64 corners of the physical board [m], board frame, around the outline."""
        w, h = self.width_m / 2, self.height_m / 2
        return np.array([[-w, -h, 0.0], [w, -h, 0.0], [w, h, 0.0], [-w, h, 0.0]])


# ---------------------------------------------------------------------------------------------- camera
@dataclass(frozen=True, eq=False)
class BoardInImage:
    """The board found in one image.

    Args:
        corners_px: (cols * rows, 2) float32 detected inner corners [px], row by row.
        camera_from_board: Transform(dst=<camera id>, src="board").
        reprojection_rms_px: RMS distance [px] between the detected corners and the corners projected
            with the solved pose through the camera model.
    """

    corners_px: np.ndarray
    camera_from_board: Transform
    reprojection_rms_px: float

    @property
    def plane(self) -> tuple[np.ndarray, float]:
        """Board plane in the camera frame: (unit normal (3,), offset d [m]) with ``normal . x = d``."""
        n = self.camera_from_board.rotation[:, 2]
        return n, float(n @ self.camera_from_board.translation)


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")


def _refine_corners(gray: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> np.ndarray:
    """Sub-pixel corners with a window of half the corner spacing on each side.

    Far boards have squares of only 5-10 px; there the detector's small window leaves ~0.15 px of noise,
    and a window reaching to the middle of the neighbouring squares (not to the next corners) uses all
    the edge pixels: ~0.10 px on the simulated 640x360 camera."""
    cols, rows = pattern
    g = corners.reshape(rows, cols, 2)
    spacing = min(np.linalg.norm(np.diff(g, axis=1), axis=2).min(), np.linalg.norm(np.diff(g, axis=0), axis=2).min())
    win = int(np.clip(round(0.5 * spacing), 2, 11))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
    refined = cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2).astype(np.float32).copy(), (win, win), (-1, -1),
                               criteria).reshape(-1, 2)
    # A corner the refinement moved by more than a third of the spacing jumped to something else.
    moved = np.linalg.norm(refined - corners, axis=1) > spacing / 3
    refined[moved] = corners[moved]
    return refined


def detect_board(image: np.ndarray, camera: CameraModel, target: ChessboardTarget, pose: int = 0,
                 camera_id: str = "camera") -> BoardInImage:
    """Find the chessboard in one image and solve its pose.

    Args:
        image: (H, W, 3) uint8 RGB or (H, W) uint8 grey, as the camera delivers it (distorted).
        camera: the camera's intrinsics; the image must have its size.
        target: the board.
        pose: index of this pose, for error messages.
        camera_id: frame name of the camera (the result's ``camera_from_board.dst``).
    Returns:
        BoardInImage.
    Raises:
        BoardNotFoundError: wrong image size or dtype, no complete board in the image, or a pose
            that does not reproject (with the reason).
    """
    try:
        gray = _gray(image)
    except ValueError as e:
        raise BoardNotFoundError(pose, "camera", str(e)) from None
    if gray.shape != (camera.height, camera.width):
        raise BoardNotFoundError(pose, "camera", f"image is {gray.shape[1]}x{gray.shape[0]} but the camera "
                                                 f"is {camera.width}x{camera.height}")
    if int(gray.max()) - int(gray.min()) < 16:
        raise BoardNotFoundError(pose, "camera", "the image has no contrast (blank or dark frame)")
    corners = detect_chessboard(gray, target.pattern)
    if corners is None:
        raise BoardNotFoundError(pose, "camera", f"no complete {target.cols}x{target.rows} inner-corner "
                                                 "chessboard detected (out of view, occluded, too small or blurred?)")
    corners = _refine_corners(gray, corners, target.pattern)
    # Rays through the corners on the z = 1 plane: distortion (pinhole or fisheye) is removed exactly by
    # the model, so PnP works with an ideal pinhole K = I.
    rays = camera.unproject(corners.astype(np.float64))
    obj = target.corner_points()
    ok, rvec, tvec = cv2.solvePnP(obj, rays[:, :2].copy(), np.eye(3), None, flags=cv2.SOLVEPNP_IPPE)
    if ok:
        rvec, tvec = cv2.solvePnPRefineLM(obj, rays[:, :2].copy(), np.eye(3), None, rvec, tvec)
    if not ok or not np.all(np.isfinite(rvec)) or not np.all(np.isfinite(tvec)):
        raise BoardNotFoundError(pose, "camera", "solvePnP failed on the detected corners")
    R, _ = cv2.Rodrigues(rvec)
    T = Transform(camera_id, BOARD_FRAME, R, tvec.reshape(3))
    uv, valid = camera.project(T.apply(obj))
    if not valid.all():
        raise BoardNotFoundError(pose, "camera", "the solved board pose puts corners behind the camera")
    rms = float(np.sqrt(np.mean(np.sum((uv - corners) ** 2, axis=1))))
    if rms > 2.0:
        raise BoardNotFoundError(pose, "camera", f"corners reproject with {rms:.2f} px RMS (> 2 px): wrong "
                                                 "intrinsics or a bent board?")
    return BoardInImage(corners, T, rms)


# ---------------------------------------------------------------------------------------------- LiDAR
@dataclass(frozen=True, eq=False)
class BoardInLidar:
    """The board's points in one LiDAR frame.

    Args:
        points: (M, 3) float64 board points [m], LiDAR frame.
        normal: (3,) float64 unit normal of the fitted plane, LiDAR frame; offset: [m], ``normal . p = offset``.
        plane_rms_m: RMS distance of ``points`` to that plane [m] (about the range noise).
        roi_points: number of points in the region of interest the plane was searched in.
    """

    points: np.ndarray
    normal: np.ndarray
    offset: float
    plane_rms_m: float
    roi_points: int


def _fit_plane(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares plane through (M, 3) points -> (unit normal, offset, RMS distance)."""
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    n = vt[2]
    d = float(n @ c)
    return n, d, float(np.sqrt(np.mean((points @ n - d) ** 2)))


def extract_board_points(points: np.ndarray, lidar_from_board: Transform, target: ChessboardTarget,
                         pose: int = 0, roi_margin_m: float = 0.5, plane_threshold_m: float = 0.05,
                         max_normal_angle_deg: float = 25.0, min_points: int = 30,
                         max_planes: int = 4) -> BoardInLidar:
    """Segment the board from one LiDAR frame.

    Args:
        points: (N, 3+) float LiDAR points [m] in the LiDAR frame (extra columns such as intensity ignored).
        lidar_from_board: where the board is expected (camera pose of the board and the current
            ``lidar_from_camera``); Transform(dst=<lidar id>, src="board").
        target: the board.
        pose: index of this pose, for error messages.
        roi_margin_m: the region of interest is the board's outline grown by this in-plane, and a slab of
            +- this around its plane; it must exceed the error of ``lidar_from_board``.
        plane_threshold_m: RANSAC inlier distance [m] (about 2.5 x the range noise).
        max_normal_angle_deg: a plane whose normal is further than this from the expected one is not
            the board (ground, wall) and is skipped.
        min_points: fewest board points to accept.
        max_planes: planes tried before giving up.
    Returns:
        BoardInLidar.
    Raises:
        BoardNotFoundError: too few points in the region of interest, or no plane there that matches
            the board (the message gives the counts and angles seen).
    """
    import open3d as o3d  # lazy: open3d takes ~0.5 s to import

    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] < 3:
        raise BoardNotFoundError(pose, "lidar", f"points must be (N, 3+), got shape {P.shape}")
    P = P[np.all(np.isfinite(P[:, :3]), axis=1), :3]
    local = lidar_from_board.inverse().apply(P)
    w, h = target.width_m / 2 + roi_margin_m, target.height_m / 2 + roi_margin_m
    roi = (np.abs(local[:, 0]) <= w) & (np.abs(local[:, 1]) <= h) & (np.abs(local[:, 2]) <= roi_margin_m)
    n_roi = int(roi.sum())
    if n_roi < min_points:
        raise BoardNotFoundError(
            pose, "lidar", f"only {n_roi} of {len(P)} points lie within {roi_margin_m} m of where the board "
                           f"should be (need {min_points}); is the board in the LiDAR's view, and is the prior "
                           f"camera_from_lidar within {roi_margin_m} m of the truth?")
    cand = P[roi]
    expected = lidar_from_board.rotation[:, 2]
    seen: list[str] = []
    o3d.utility.random.seed(pose)  # RANSAC sampling: the same input gives the same board points
    for _ in range(max_planes):
        if len(cand) < min_points:
            break
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cand))
        _, inliers = cloud.segment_plane(plane_threshold_m, 3, 500)
        inliers = np.asarray(inliers, dtype=np.int64)
        if len(inliers) < min_points:
            seen.append(f"{len(inliers)} points")
            break
        n, d, _ = _fit_plane(cand[inliers])
        angle = float(np.degrees(np.arccos(min(1.0, abs(float(n @ expected))))))
        if angle <= max_normal_angle_deg:
            # Re-select with the refitted plane, so the inlier set does not depend on RANSAC's sample.
            sel = np.abs(cand @ n - d) <= plane_threshold_m
            n, d, rms = _fit_plane(cand[sel])
            if n @ expected < 0:  # orient like the board's z axis (away from the sensors)
                n, d = -n, -d
            return BoardInLidar(cand[sel], n, d, rms, n_roi)
        seen.append(f"{len(inliers)} points at {angle:.0f} deg")
        cand = np.delete(cand, inliers, axis=0)
    raise BoardNotFoundError(
        pose, "lidar", f"no plane within {max_normal_angle_deg:g} deg of the board's orientation among the "
                       f"{n_roi} points in the region of interest (planes found: {', '.join(seen) or 'none'})")


# ---------------------------------------------------------------------------------------------- solve
def _so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) [rad] -> (3, 3) rotation matrix (Rodrigues)."""
    theta = float(np.linalg.norm(w))
    K = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + K
    K /= theta
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


@dataclass(frozen=True)
class PoseResidual:
    """How one pose fits the calibration.

    Args:
        pose: index of the pose.
        n_points: LiDAR board points used.
        reprojection_rms_px: camera corner reprojection RMS [px].
        lidar_plane_rms_m: RMS of the LiDAR points about their own fitted plane [m] (sensor noise).
        residual_mean_m: mean signed distance of the LiDAR points to the camera plane after calibration
            [m] (this pose's disagreement; positive = LiDAR points behind the camera's board).
        residual_rms_m: RMS of those distances [m].
        normal_angle_deg: angle between the LiDAR plane (mapped into the camera) and the camera plane [deg].
    """

    pose: int
    n_points: int
    reprojection_rms_px: float
    lidar_plane_rms_m: float
    residual_mean_m: float
    residual_rms_m: float
    normal_angle_deg: float


@dataclass(frozen=True, eq=False)
class LidarCameraResult:
    """LiDAR-camera extrinsic calibration.

    Args:
        camera_from_lidar: Transform(dst=<camera id>, src=<lidar id>).
        covariance: (6, 6) float64 covariance of (rotation vector [rad], translation [m]), camera frame
            (module docstring).
        sigma_rotation_deg: (3,) 1-sigma rotation uncertainty about the camera's x, y, z axes [deg].
        sigma_translation_m: (3,) 1-sigma translation uncertainty along camera x, y, z [m].
        residual_rms_m: RMS point-to-plane distance over all poses [m].
        poses: per-pose details, in input order.
        iterations: solver iterations (both passes).
    """

    camera_from_lidar: Transform
    covariance: np.ndarray
    sigma_rotation_deg: np.ndarray
    sigma_translation_m: np.ndarray
    residual_rms_m: float
    poses: tuple[PoseResidual, ...]
    iterations: int

    def summary(self) -> str:
        """A few human-readable lines: the transform, its uncertainty, and each pose's residuals."""
        T = self.camera_from_lidar
        lines = [
            f"{T.name}: translation [m] {np.round(T.translation, 4).tolist()}, "
            f"rotation_wxyz {np.round(T.rotation_wxyz, 6).tolist()}",
            f"1-sigma: rotation [deg] {np.round(self.sigma_rotation_deg, 3).tolist()}, "
            f"translation [m] {np.round(self.sigma_translation_m, 4).tolist()}; "
            f"residual RMS {self.residual_rms_m * 100:.2f} cm over {len(self.poses)} poses",
        ]
        for p in self.poses:
            lines.append(f"  pose {p.pose}: {p.n_points} points, reprojection {p.reprojection_rms_px:.2f} px, "
                         f"plane offset {p.residual_mean_m * 100:+.2f} cm, RMS {p.residual_rms_m * 100:.2f} cm, "
                         f"normal angle {p.normal_angle_deg:.2f} deg")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Solution:
    R: np.ndarray
    t: np.ndarray
    boards: tuple[Transform, ...]
    covariance: np.ndarray
    corner_rms: np.ndarray
    iterations: int


def _solve_joint(boards: Sequence[BoardInImage], corner_xy: Sequence[np.ndarray], corners_3d: np.ndarray,
                 lidar: Sequence[np.ndarray], R0: np.ndarray, t0: np.ndarray, sigma_xy: float,
                 sigma_lidar_m: float, loss_scale_m: float, max_iterations: int = 50) -> _Solution:
    """Jointly refine camera_from_lidar (R, t) and every board pose by iteratively reweighted
    Levenberg-Marquardt.

    Residuals: each corner's position on the z = 1 plane (predicted minus measured) / ``sigma_xy``, and
    each LiDAR board point's distance to its board's plane / ``sigma_lidar_m`` under a soft-L1 loss of
    scale ``loss_scale_m``. Parameters: (w, dt) of camera_from_lidar, then (w_k, dt_k) per board, all as
    left perturbations in the camera frame: R' = exp(w) R, t' = t + dt."""
    K = len(boards)
    n_par = 6 + 6 * K
    n_c = len(corners_3d)
    Rb = [b.camera_from_board.rotation.copy() for b in boards]
    tb = [b.camera_from_board.translation.copy() for b in boards]
    R, t = R0.copy(), t0.copy()
    c2 = loss_scale_m ** 2

    def evaluate(R, t, Rb, tb, with_jacobian: bool):
        """Whitened residuals, robust weights (1 for corners) and, when asked, the Jacobian."""
        res, wts, jac = [], [], []
        for k in range(K):
            X = corners_3d @ Rb[k].T  # board corners rotated into the camera, before translation
            x = X + tb[k]
            z = x[:, 2]
            e = np.concatenate([x[:, 0] / z - corner_xy[k][:, 0], x[:, 1] / z - corner_xy[k][:, 1]]) / sigma_xy
            res.append(e)
            wts.append(np.ones(len(e)))
            if with_jacobian:
                # d(x/z)/dx = [1/z, 0, -x/z^2]; d(y/z)/dx = [0, 1/z, -y/z^2]; dx/dw_k = -[X]x, dx/dt_k = I.
                a = np.zeros((2 * n_c, 3))
                a[:n_c, 0] = 1 / z
                a[:n_c, 2] = -x[:, 0] / z ** 2
                a[n_c:, 1] = 1 / z
                a[n_c:, 2] = -x[:, 1] / z ** 2
                XX = np.concatenate([X, X])
                J = np.zeros((len(e), n_par))
                J[:, 6 + 6 * k:9 + 6 * k] = np.cross(XX, a) / sigma_xy
                J[:, 9 + 6 * k:12 + 6 * k] = a / sigma_xy
                jac.append(J)
        for k in range(K):
            n = Rb[k][:, 2]
            q0 = lidar[k] @ R.T
            q = q0 + t
            r = ((q - tb[k]) @ n) / sigma_lidar_m
            res.append(r)
            wts.append(1.0 / np.sqrt(1.0 + (r * sigma_lidar_m) ** 2 / c2))
            if with_jacobian:
                J = np.zeros((len(r), n_par))
                J[:, 0:3] = np.cross(q0, n) / sigma_lidar_m
                J[:, 3:6] = n / sigma_lidar_m
                J[:, 6 + 6 * k:9 + 6 * k] = np.cross(n, q - tb[k]) / sigma_lidar_m
                J[:, 9 + 6 * k:12 + 6 * k] = -n / sigma_lidar_m
                jac.append(J)
        r_all, w_all = np.concatenate(res), np.concatenate(wts)
        return r_all, w_all, (np.concatenate(jac) if with_jacobian else None)

    n_corner = 2 * n_c * K

    def cost(r: np.ndarray) -> float:
        rl = r[n_corner:] * sigma_lidar_m
        soft_l1 = c2 * (np.sqrt(1.0 + rl ** 2 / c2) - 1.0) / sigma_lidar_m ** 2
        return float(0.5 * np.sum(r[:n_corner] ** 2) + np.sum(soft_l1))

    r, w, J = evaluate(R, t, Rb, tb, True)
    lam = 1e-4
    it = 0
    for it in range(1, max_iterations + 1):
        A = J.T @ (J * w[:, None])
        g = J.T @ (w * r)
        improved = False
        step = np.zeros(n_par)
        for _ in range(12):
            step = -np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), g)
            R_n, t_n = _so3_exp(step[:3]) @ R, t + step[3:6]
            Rb_n = [_so3_exp(step[6 + 6 * k:9 + 6 * k]) @ Rb[k] for k in range(K)]
            tb_n = [tb[k] + step[9 + 6 * k:12 + 6 * k] for k in range(K)]
            r_n, _, _ = evaluate(R_n, t_n, Rb_n, tb_n, False)
            if cost(r_n) <= cost(r):
                R, t, Rb, tb = R_n, t_n, Rb_n, tb_n
                lam = max(lam / 3, 1e-12)
                improved = True
                break
            lam *= 10
        r, w, J = evaluate(R, t, Rb, tb, True)
        if not improved or np.abs(step).max() < 1e-10:
            break
    A = J.T @ (J * w[:, None])
    dof = max(len(r) - n_par, 1)
    chi2 = float(np.sum(w * r ** 2) / dof)  # reduced chi-square: about 1 when the noise levels are right
    cov = np.linalg.pinv(A)[:6, :6] * max(chi2, 1.0)
    corner_rms = np.array([np.sqrt(np.mean(r[2 * n_c * k:2 * n_c * (k + 1)] ** 2) * 2) for k in range(K)]) * sigma_xy

    def orthonormal(M: np.ndarray) -> np.ndarray:
        u, _, vt = np.linalg.svd(M)
        return u @ vt

    cam_id = boards[0].camera_from_board.dst
    refined = tuple(Transform(cam_id, BOARD_FRAME, orthonormal(Rb[k]), tb[k]) for k in range(K))
    return _Solution(orthonormal(R), t, refined, cov, corner_rms, it)


def calibrate_lidar_camera(
    images: Sequence[np.ndarray],
    lidar_points: Sequence[np.ndarray],
    camera: CameraModel,
    target: ChessboardTarget,
    camera_from_lidar_prior: Transform,
    roi_margin_m: float = 0.5,
    refine_margin_m: float = 0.08,
    plane_threshold_m: float = 0.05,
    loss_scale_m: float | None = None,
    min_points: int = 30,
) -> LidarCameraResult:
    """Calibrate ``camera_from_lidar`` from images and LiDAR frames of a chessboard at several poses.

    Args:
        images: K images, one per pose, (H, W, 3) uint8 RGB or (H, W) uint8, distorted as captured.
        lidar_points: K LiDAR frames, (N_k, 3+) float [m] in the LiDAR frame, taken while the board stood
            still at the same pose as the image.
        camera: the camera's intrinsics.
        target: the board.
        camera_from_lidar_prior: Transform(dst=<camera id>, src=<lidar id>), e.g. from the rig; it only
            places the LiDAR region of interest, so it must be right to within ``roi_margin_m`` (and a
            few degrees), and it names the frames of the result.
        roi_margin_m: LiDAR region of interest around the expected board in the first pass [m].
        refine_margin_m: the same in the second pass, drawn with the first pass's solution [m].
        plane_threshold_m: RANSAC inlier distance [m].
        loss_scale_m: soft-L1 loss scale of the point-to-plane residuals [m]; default 3 x the LiDAR
            noise measured on the boards.
        min_points: fewest LiDAR board points per pose.
    Returns:
        LidarCameraResult. Nothing is written anywhere.
    Raises:
        LidarCameraError: fewer than 3 poses, image and LiDAR counts that differ, or poses that leave
            the extrinsic poorly constrained.
        BoardNotFoundError: a pose's image or LiDAR frame without the board (names the pose and why).
    """
    K = len(images)
    if K != len(lidar_points):
        raise LidarCameraError(f"got {K} images but {len(lidar_points)} LiDAR frames; need one of each per pose")
    if K < MIN_POSES:
        raise LidarCameraError(f"need at least {MIN_POSES} board poses, got {K} (6 or more, tilted differently, "
                               "give a well-constrained result)")
    camera_id, lidar_id = camera_from_lidar_prior.dst, camera_from_lidar_prior.src
    boards = [detect_board(img, camera, target, k, camera_id) for k, img in enumerate(images)]
    corner_xy = [camera.unproject(b.corners_px.astype(np.float64))[:, :2] for b in boards]
    obj = target.corner_points()
    # Corner noise on the z = 1 plane, pooled over the poses (6 pose parameters each).
    ss = 0.0
    for b, xy in zip(boards, corner_xy):
        x = b.camera_from_board.apply(obj)
        ss += float(np.sum((x[:, :2] / x[:, 2:] - xy) ** 2))
    sigma_xy = max(float(np.sqrt(ss / max(2 * len(obj) * K - 6 * K, 1))), 1e-3 / camera.fx)
    R, t = camera_from_lidar_prior.rotation.copy(), camera_from_lidar_prior.translation.copy()
    iterations = 0
    refined = tuple(b.camera_from_board for b in boards)
    for margin in (roi_margin_m, refine_margin_m):
        lidar_from_camera = Transform(camera_id, lidar_id, R, t).inverse()
        lidar_boards = [
            extract_board_points(pts, lidar_from_camera @ Tb, target, k, margin, plane_threshold_m,
                                 min_points=min_points)
            for k, (pts, Tb) in enumerate(zip(lidar_points, refined))
        ]
        # LiDAR noise about the boards, pooled (3 plane parameters per pose).
        n_pts = sum(len(lb.points) for lb in lidar_boards)
        ss_l = sum(lb.plane_rms_m ** 2 * len(lb.points) for lb in lidar_boards)
        sigma_l = max(float(np.sqrt(ss_l / max(n_pts - 3 * K, 1))), 1e-3)
        sol = _solve_joint(boards, corner_xy, obj, [lb.points for lb in lidar_boards], R, t, sigma_xy, sigma_l,
                           3.0 * sigma_l if loss_scale_m is None else loss_scale_m)
        R, t, refined, iterations = sol.R, sol.t, sol.boards, iterations + sol.iterations
    cov = sol.covariance
    sig = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if not np.all(np.isfinite(sig)) or sig[:3].max() > np.radians(5.0) or sig[3:].max() > 0.5:
        raise LidarCameraError(
            f"the {K} poses leave the extrinsic poorly constrained (1-sigma rotation "
            f"{np.round(np.degrees(sig[:3]), 2).tolist()} deg, translation {np.round(sig[3:], 3).tolist()} m); "
            "tilt the board differently (left/right and up/down) between poses")
    T = Transform(camera_id, lidar_id, R, t)
    per_pose = []
    all_r = []
    for k, (b, lb) in enumerate(zip(boards, lidar_boards)):
        n, d = b.plane  # the camera's own plane: what this pose says on its own
        r = lb.points @ R.T @ n + t @ n - d
        all_r.append(r)
        angle = float(np.degrees(np.arccos(min(1.0, abs(float((R @ lb.normal) @ n))))))
        per_pose.append(PoseResidual(k, len(lb.points), float(sol.corner_rms[k] * camera.fx), lb.plane_rms_m,
                                     float(r.mean()), float(np.sqrt(np.mean(r ** 2))), angle))
    rr = np.concatenate(all_r)
    return LidarCameraResult(T, cov, np.degrees(sig[:3]), sig[3:], float(np.sqrt(np.mean(rr ** 2))),
                             tuple(per_pose), iterations)


# ---------------------------------------------------------------------------------------------- the rig
def rig_with_lidar_camera(rig: Rig, result: LidarCameraResult, keep: Literal["lidar", "camera"] = "lidar") -> Rig:
    """``rig`` with the calibrated LiDAR-camera extrinsic written in.

    Args:
        rig: the rig; must have the camera and LiDAR named by ``result.camera_from_lidar``.
        result: the calibration.
        keep: which sensor's ``ego_from_sensor`` stays as it is: ``"lidar"`` (default; the camera is
            moved to ``ego_from_lidar @ lidar_from_camera``) or ``"camera"`` (the LiDAR is moved).
    Returns:
        A new, validated Rig.
    Raises:
        LidarCameraError: sensors missing from the rig or of the wrong kind, or a bad ``keep``.
    """
    T = result.camera_from_lidar
    camera_id, lidar_id = T.dst, T.src
    for sid, kind in ((camera_id, "camera"), (lidar_id, "lidar")):
        if sid not in rig:
            raise LidarCameraError(f"rig '{rig.name}' has no sensor '{sid}' (has: {', '.join(rig.ids())})")
        if rig[sid].kind != kind:
            raise LidarCameraError(f"rig '{rig.name}': sensor '{sid}' is a {rig[sid].kind}, not a {kind}")
    if keep == "lidar":
        sensor = rig[camera_id]
        new = dataclasses.replace(sensor, ego_from_sensor=rig.ego_from(lidar_id) @ T.inverse())
    elif keep == "camera":
        sensor = rig[lidar_id]
        new = dataclasses.replace(sensor, ego_from_sensor=rig.ego_from(camera_id) @ T)
    else:
        raise LidarCameraError(f"keep must be 'lidar' or 'camera', got {keep!r}")
    assert new.ego_from_sensor.dst == EGO_FRAME
    try:
        return rig.replace_sensor(new)
    except RigError as e:
        raise LidarCameraError(f"cannot update rig: {e}") from e


def write_lidar_camera_to_rig(rig_path: str | Path, result: LidarCameraResult,
                              keep: Literal["lidar", "camera"] = "lidar") -> Rig:
    """Load the rig file, write the calibrated extrinsic in (:func:`rig_with_lidar_camera`) and save it
    atomically; returns the saved rig. Raises LidarCameraError (the file is left untouched)."""
    path = Path(rig_path)
    try:
        rig = Rig.load(path)
    except RigError as e:
        raise LidarCameraError(f"cannot update rig: {e}") from e
    new = rig_with_lidar_camera(rig, result, keep)
    new.save(path)
    return new
