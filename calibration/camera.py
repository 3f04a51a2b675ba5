"""Camera models: pinhole with OpenCV's radial-tangential distortion, and fisheye (Kannala-Brandt as
OpenCV's ``cv2.fisheye``).

All coordinates are in the camera optical frame (z forward, x right, y down); pixels are (u, v) with
(0, 0) the centre of the top-left pixel, as OpenCV.

The projection is written in numpy (vectorised, float64) rather than calling ``cv2.projectPoints`` so it
works on any (N, 3) array without per-call reshaping and gives an explicit validity mask; tests check it
against OpenCV to 1e-9 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

CameraModelName = Literal["pinhole", "fisheye"]
N_DIST = {"pinhole": 5, "fisheye": 4}
MIN_DEPTH_M = 1e-6


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of one camera.

    Args:
        model: ``"pinhole"`` (distortion k1 k2 p1 p2 k3, OpenCV order) or ``"fisheye"``
            (Kannala-Brandt k1 k2 k3 k4, as ``cv2.fisheye``).
        width, height: image size [px].
        fx, fy: focal lengths [px]; cx, cy: principal point [px].
        distortion: coefficients in the order above; all zeros means none.
    """

    model: CameraModelName
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.model not in N_DIST:
            raise ValueError(f"camera model must be 'pinhole' or 'fisheye', got {self.model!r}")
        n = N_DIST[self.model]
        d = tuple(float(x) for x in self.distortion) or (0.0,) * n
        if len(d) != n:
            raise ValueError(f"{self.model} distortion needs {n} coefficients, got {len(d)}: {list(d)}")
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        object.__setattr__(self, "distortion", d)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))

    # ------------------------------------------------------------------ matrices
    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_array(self) -> np.ndarray:
        """Distortion as the float64 array OpenCV expects."""
        return np.asarray(self.distortion, dtype=np.float64)

    def scaled(self, sx: float, sy: float | None = None) -> "CameraModel":
        """The same camera for an image resized by (sx, sy); distortion is unchanged."""
        sy = sx if sy is None else sy
        return CameraModel(
            self.model,
            round(self.width * sx),
            round(self.height * sy),
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            self.distortion,
        )

    # ------------------------------------------------------------------ forward
    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Undistorted normalised coordinates (x/z, y/z), (N, 2) -> distorted normalised (N, 2)."""
        x, y = xy[:, 0], xy[:, 1]
        if self.model == "pinhole":
            k1, k2, p1, p2, k3 = self.distortion
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            return np.stack([xd, yd], axis=1)
        k1, k2, k3, k4 = self.distortion
        r = np.sqrt(x * x + y * y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return xy * scale[:, None]

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project 3D points to pixels.

        Args:
            points_cam: (N, 3) [m] in the camera optical frame.
        Returns:
            uv: (N, 2) float64 pixels; rows with ``valid == False`` are NaN.
            valid: (N,) bool, the point is in front of the camera (z > 1e-6 m). Use
                :meth:`in_image` to also require it to land inside the image.
        """
        P = np.asarray(points_cam, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != 3:
            raise ValueError(f"project expects (N, 3) points, got shape {P.shape}")
        z = P[:, 2]
        valid = z > MIN_DEPTH_M
        xy = np.full((len(P), 2), np.nan)
        xy[valid] = P[valid, :2] / z[valid, None]
        d = self.distort_normalized(xy[valid])
        uv = np.full((len(P), 2), np.nan)
        uv[valid, 0] = self.fx * d[:, 0] + self.cx
        uv[valid, 1] = self.fy * d[:, 1] + self.cy
        return uv, valid

    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """(N, 2) pixels -> (N,) bool, inside [-0.5, size - 0.5] shrunk by ``margin`` px (NaN -> False)."""
        u, v = uv[:, 0], uv[:, 1]
        with np.errstate(invalid="ignore"):
            return (
                (u >= -0.5 + margin)
                & (u <= self.width - 0.5 - margin)
                & (v >= -0.5 + margin)
                & (v <= self.height - 0.5 - margin)
            )

    # ------------------------------------------------------------------ inverse
    def undistort_normalized(self, xy_d: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Distorted normalised coordinates (N, 2) -> undistorted (N, 2) (Newton iterations)."""
        xy_d = np.asarray(xy_d, dtype=np.float64)
        if self.model == "fisheye":
            k1, k2, k3, k4 = self.distortion
            theta_d = np.sqrt((xy_d**2).sum(axis=1))
            theta = theta_d.copy()
            for _ in range(iterations):
                t2 = theta * theta
                f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
                df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
                theta = theta - f / df
            theta = np.clip(theta, 0.0, np.pi / 2 - 1e-9)
            scale = np.where(theta_d > 1e-12, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
            return xy_d * scale[:, None]
        # Pinhole: Newton on the 2x2 system with a numerical Jacobian-free analytic form.
        k1, k2, p1, p2, k3 = self.distortion
        x = xy_d[:, 0].copy()
        y = xy_d[:, 1].copy()
        for _ in range(iterations):
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d(radial)/d(r2)
            fx_ = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xy_d[:, 0]
            fy_ = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - xy_d[:, 1]
            j11 = radial + x * dradial * 2 * x + 2 * p1 * y + 6 * p2 * x
            j12 = x * dradial * 2 * y + 2 * p1 * x + 2 * p2 * y
            j21 = y * dradial * 2 * x + 2 * p1 * x + 2 * p2 * y
            j22 = radial + y * dradial * 2 * y + 6 * p1 * y + 2 * p2 * x
            det = j11 * j22 - j12 * j21
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            x = x - (j22 * fx_ - j12 * fy_) / det
            y = y - (-j21 * fx_ + j11 * fy_) / det
        return np.stack([x, y], axis=1)

    def unproject(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) -> viewing rays (N, 3) in the camera optical frame, scaled so z = 1."""
        uv = np.asarray(uv, dtype=np.float64)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"unproject expects (N, 2) pixels, got shape {uv.shape}")
        xy_d = np.stack([(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy], axis=1)
        xy = self.undistort_normalized(xy_d)
        return np.concatenate([xy, np.ones((len(xy), 1))], axis=1)

    def undistort_maps(self, new_K: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps (float32, HxW each) that turn a distorted image into an undistorted one with
        intrinsics ``new_K`` (default: this camera's K)."""
        K_new = self.K if new_K is None else np.asarray(new_K, dtype=np.float64)
        size = (self.width, self.height)
        if self.model == "fisheye":
            return cv2.fisheye.initUndistortRectifyMap(
                self.K, self.dist_array, np.eye(3), K_new, size, cv2.CV_32FC1
            )
        return cv2.initUndistortRectifyMap(self.K, self.dist_array, np.eye(3), K_new, size, cv2.CV_32FC1)

    def undistort(self, image: np.ndarray, new_K: np.ndarray | None = None) -> np.ndarray:
        """Undistorted copy of ``image`` (H, W[, C]) as seen by an ideal pinhole with ``new_K``."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"image is {image.shape[1]}x{image.shape[0]} but the camera is {self.width}x{self.height}"
            )
        m1, m2 = self.undistort_maps(new_K)
        return cv2.remap(image, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
