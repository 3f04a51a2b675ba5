"""Rigid transforms named ``dst_from_src``.

A :class:`Transform` maps points expressed in frame ``src`` into frame ``dst``:
``p_dst = R @ p_src + t``. Composition checks that the frames meet, so
``camera_from_ego @ ego_from_lidar`` is a ``camera_from_lidar`` and
``ego_from_lidar @ camera_from_ego`` raises :class:`FrameMismatchError`.

Quaternions are always named by their order: ``rotation_wxyz`` (w first, as nuScenes and
pyquaternion) or ``xyzw`` (SciPy); conversion happens here, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ORTHONORMAL_TOL = 1e-6


class FrameMismatchError(ValueError):
    """Raised when two transforms are composed whose frames do not meet."""


def quat_wxyz_to_matrix(q_wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> (3, 3) float64 rotation matrix. The quaternion is normalised."""
    q = np.asarray(q_wxyz, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has zero or non-finite norm")
    w, x, y, z = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def rotation_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Roll, pitch, yaw [rad] (intrinsic z-y'-x'', i.e. R = Rz(yaw) Ry(pitch) Rx(roll)) -> (3, 3)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    Ry = np.array([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    Rx = np.array([[1.0, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return Rz @ Ry @ Rx


def rotation_error(R: np.ndarray) -> str | None:
    """Why ``R`` is not a proper rotation (orthonormal, det +1), or None when it is."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        return f"rotation must be 3x3, got shape {R.shape}"
    if not np.all(np.isfinite(R)):
        return "rotation has non-finite entries"
    dev = np.abs(R.T @ R - np.eye(3)).max()
    if dev > ORTHONORMAL_TOL:
        return f"rotation is not orthonormal (max |R^T R - I| = {dev:.2e})"
    det = np.linalg.det(R)
    if det < 0:
        return f"rotation is a reflection (det = {det:.3f}), not right-handed"
    return None


@dataclass(frozen=True)
class Transform:
    """Rigid transform ``dst_from_src``: ``p_dst = rotation @ p_src + translation``.

    Args:
        dst: name of the frame points are mapped into (e.g. ``"ego"``).
        src: name of the frame points are given in (e.g. ``"lidar_top"``).
        rotation: (3, 3) float64, proper rotation (orthonormal, det +1).
        translation: (3,) float64 [m], origin of ``src`` expressed in ``dst``.
    """

    dst: str
    src: str
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        R = np.array(self.rotation, dtype=np.float64).reshape(3, 3)
        t = np.array(self.translation, dtype=np.float64).reshape(3)
        problem = rotation_error(R)
        if problem:
            raise ValueError(f"{self.name}: {problem}")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{self.name}: translation has non-finite entries")
        R.flags.writeable = False
        t.flags.writeable = False
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    @classmethod
    def from_proper_rotation(cls, dst: str, src: str, rotation: np.ndarray,
                             translation: np.ndarray) -> "Transform":
        """A transform from a rotation the caller knows to be proper (a product or transpose of checked
        rotations, re-orthonormalised; a matrix from a unit quaternion): skips the checks of
        ``__post_init__``, which cost more than the arithmetic in the per-frame ego-motion chains. Anything
        read from a file or a user goes through the checked constructor."""
        obj = object.__new__(cls)
        R = np.array(rotation, dtype=np.float64).reshape(3, 3)
        t = np.array(translation, dtype=np.float64).reshape(3)
        R.flags.writeable = False
        t.flags.writeable = False
        for k, v in (("dst", dst), ("src", src), ("rotation", R), ("translation", t)):
            object.__setattr__(obj, k, v)
        return obj

    @property
    def name(self) -> str:
        """``"dst_from_src"``."""
        return f"{self.dst}_from_{self.src}"

    @classmethod
    def identity(cls, dst: str, src: str) -> "Transform":
        return cls(dst, src)

    @classmethod
    def from_matrix(cls, dst: str, src: str, matrix) -> "Transform":
        """From a (4, 4) or (3, 4) homogeneous matrix."""
        M = np.asarray(matrix, dtype=np.float64)
        if M.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"{dst}_from_{src}: expected a 4x4 or 3x4 matrix, got shape {M.shape}")
        return cls(dst, src, M[:3, :3], M[:3, 3])

    @classmethod
    def from_quaternion_wxyz(cls, dst: str, src: str, rotation_wxyz, translation) -> "Transform":
        return cls(dst, src, quat_wxyz_to_matrix(rotation_wxyz), translation)

    @classmethod
    def from_rpy(cls, dst: str, src: str, roll: float, pitch: float, yaw: float, translation) -> "Transform":
        return cls(dst, src, rotation_from_rpy(roll, pitch, yaw), translation)

    @property
    def matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix."""
        M = np.eye(4)
        M[:3, :3] = self.rotation
        M[:3, 3] = self.translation
        return M

    @property
    def rotation_wxyz(self) -> np.ndarray:
        """(4,) unit quaternion, w first, w >= 0."""
        return matrix_to_quat_wxyz(self.rotation)

    def __matmul__(self, other: "Transform") -> "Transform":
        """``a_from_b @ b_from_c -> a_from_c``; raises FrameMismatchError when the frames do not meet."""
        if not isinstance(other, Transform):
            return NotImplemented
        if self.src != other.dst:
            raise FrameMismatchError(
                f"cannot compose {self.name} @ {other.name}: '{self.src}' != '{other.dst}'"
            )
        R = self.rotation @ other.rotation
        # Re-orthonormalise so long chains do not drift outside the tolerance.
        u, _, vt = np.linalg.svd(R)
        R = u @ vt
        t = self.rotation @ other.translation + self.translation
        return Transform.from_proper_rotation(self.dst, other.src, R, t)

    def inverse(self) -> "Transform":
        """``dst_from_src -> src_from_dst``."""
        Rt = self.rotation.T
        return Transform.from_proper_rotation(self.src, self.dst, Rt, -Rt @ self.translation)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points from ``src`` to ``dst``.

        Args:
            points: (N, 3) [m] in frame ``src``; any float dtype. Extra columns are not allowed.
        Returns:
            (N, 3) [m] in frame ``dst``, same float dtype as the input (float64 for ints).
        """
        P = np.asarray(points)
        if P.ndim != 2 or P.shape[1] != 3:
            raise ValueError(f"{self.name}.apply expects (N, 3) points, got shape {P.shape}")
        dtype = P.dtype if np.issubdtype(P.dtype, np.floating) else np.float64
        out = P.astype(np.float64, copy=False) @ self.rotation.T + self.translation
        return out.astype(dtype, copy=False)

    def apply_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate free vectors (velocities, directions) (N, 3) from ``src`` to ``dst``; no translation."""
        V = np.asarray(vectors)
        if V.ndim != 2 or V.shape[1] != 3:
            raise ValueError(f"{self.name}.apply_vectors expects (N, 3), got shape {V.shape}")
        dtype = V.dtype if np.issubdtype(V.dtype, np.floating) else np.float64
        return (V.astype(np.float64, copy=False) @ self.rotation.T).astype(dtype, copy=False)

    def allclose(self, other: "Transform", atol: float = 1e-9) -> bool:
        return (
            self.dst == other.dst
            and self.src == other.src
            and np.allclose(self.rotation, other.rotation, atol=atol)
            and np.allclose(self.translation, other.translation, atol=atol)
        )

    def report_line(self) -> str:
        """One line for calibration reports: name, translation [m] to 0.1 mm, wxyz quaternion to 1e-6."""
        return (f"{self.name}: t = {np.round(self.translation, 4).tolist()} m, "
                f"q_wxyz = {np.round(self.rotation_wxyz, 6).tolist()}")

    def __repr__(self) -> str:
        t = np.round(self.translation, 4).tolist()
        q = np.round(self.rotation_wxyz, 5).tolist()
        return f"Transform({self.name}, t={t}, q_wxyz={q})"
