"""Ego motion from the IMU gyro and the vehicle speed (or, when speed is missing, radar Doppler).

Orientation comes from integrating the bias-corrected gyro (rotated into the ego frame); position from
integrating the speed along ego +x (a car does not slide sideways at these rates). The result is the ego
pose at any instant within the last ``history_s`` seconds, used to deskew LiDAR sweeps, move radar points
and cameras to one instant.

Gyro bias is estimated while the vehicle stands still: speed ~0 when a speed source exists, and in any
case low gyro and accelerometer variation over a window (so it also works for an IMU log without speed,
such as the EuRoC recordings).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numba
import numpy as np

from calibration.transform import Transform
from drivers.messages import ImuSample, RadarScan, VehicleSpeed

GRAVITY = 9.80665


@numba.njit(cache=True, nogil=True)
def _imu_step(q, p, speed, omega, dt, integrate):  # pragma: no cover - compiled
    """One IMU sample of :meth:`EgoMotion.add_imu`: position advanced along ego +x at ``speed`` for ``dt``,
    orientation q * exp(omega dt) renormalised (compiled: small-array numpy costs more per sample than a
    200-400 Hz IMU allows). Returns (q, p, R): the new unit quaternion wxyz, position, rotation matrix of q."""
    if integrate:
        R = _matrix_of(q)
        p = p + R[:, 0] * (speed * dt)
        e = _quat_of_rotvec(omega * dt)
        aw, ax, ay, az = q[0], q[1], q[2], q[3]
        bw, bx, by, bz = e[0], e[1], e[2], e[3]
        q = np.array([aw * bw - ax * bx - ay * by - az * bz,
                      aw * bx + ax * bw + ay * bz - az * by,
                      aw * by - ax * bz + ay * bw + az * bx,
                      aw * bz + ax * by - ay * bx + az * bw])
        q = q / np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return q, p, _matrix_of(q)


@numba.njit(cache=True, nogil=True)
def _quat_of_rotvec(rv):  # pragma: no cover - compiled
    """Rotation vector [rad] -> unit quaternion wxyz."""
    angle = np.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
    e = np.empty(4)
    if angle < 1e-12:
        e[0] = 1.0
        e[1:] = 0.5 * rv
    else:
        e[0] = np.cos(angle / 2)
        e[1:] = np.sin(angle / 2) * (rv / angle)
    return e


@numba.njit(cache=True, nogil=True)
def _rotvec_matrix(rv):  # pragma: no cover - compiled
    """Rotation vector [rad] -> (3, 3) rotation matrix."""
    return _matrix_of(_quat_of_rotvec(rv))


@numba.njit(cache=True, nogil=True)
def _matrix_of(q):  # pragma: no cover - compiled
    """Quaternion wxyz (normalised here) -> (3, 3) rotation matrix."""
    n = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    w, x, y, z = q[0] / n, q[1] / n, q[2] / n, q[3] / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def warm_up_imu_step() -> None:
    """Compile (or load from the cache) the IMU integration step, so the first sample does not pay."""
    _imu_step(np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 0.0, np.zeros(3), 0.0, True)
    _rotvec_matrix(np.zeros(3))


def _rotvec_to_matrix_batch(rv: np.ndarray) -> np.ndarray:
    """(K, 3) rotation vectors [rad] -> (K, 3, 3) rotation matrices (the same rotation as _rotvec_matrix)."""
    q = np.empty((len(rv), 4))
    angle = np.linalg.norm(rv, axis=1)
    small = angle < 1e-12
    safe = np.where(small, 1.0, angle)
    q[:, 0] = np.where(small, 1.0, np.cos(angle / 2))
    q[:, 1:] = np.where(small[:, None], 0.5 * rv, np.sin(angle / 2)[:, None] * rv / safe[:, None])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    out = np.empty((len(rv), 3, 3))
    out[:, 0, 0] = 1 - 2 * (y * y + z * z)
    out[:, 0, 1] = 2 * (x * y - w * z)
    out[:, 0, 2] = 2 * (x * z + w * y)
    out[:, 1, 0] = 2 * (x * y + w * z)
    out[:, 1, 1] = 1 - 2 * (x * x + z * z)
    out[:, 1, 2] = 2 * (y * z - w * x)
    out[:, 2, 0] = 2 * (x * z - w * y)
    out[:, 2, 1] = 2 * (y * z + w * x)
    out[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return out


@dataclass(frozen=True)
class EgoPose:
    """Pose of the ego frame at ``stamp_ns`` in the odometry frame (the ego frame at the first IMU sample).

    Args:
        rotation: (3, 3) float64 odom_from_ego rotation; translation: (3,) float64 [m].
        speed: [m/s] along ego +x; angular_velocity: (3,) [rad/s] bias-corrected, ego frame.
    """

    stamp_ns: int
    rotation: np.ndarray
    translation: np.ndarray
    speed: float
    angular_velocity: np.ndarray

    def odom_from_ego(self) -> Transform:
        # The rotation comes from a unit quaternion (_matrix_of), proper by construction.
        return Transform.from_proper_rotation("odom", "ego", self.rotation, self.translation)

    @property
    def yaw(self) -> float:
        return float(np.arctan2(self.rotation[1, 0], self.rotation[0, 0]))


class EgoMotion:
    """Causal ego-motion estimator fed with IMU, speed and (optionally) radar messages in stamp order.

    Args:
        ego_from_imu: rig transform of the IMU.
        history_s: how far back poses are kept [s].
        still_window_s: window over which standstill is judged [s].
        still_gyro_std: largest std [rad/s] of the window's ten gyro block means for standstill.
        still_accel_std: largest std [m/s^2] of the ten accelerometer block means for standstill.
        still_speed: |speed| [m/s] below which a speed source says still.
    """

    def __init__(self, ego_from_imu: Transform, history_s: float = 10.0, still_window_s: float = 1.0,
                 still_gyro_std: float = 0.01, still_accel_std: float = 0.1, still_speed: float = 0.05):
        if ego_from_imu.dst != "ego":
            raise ValueError(f"ego_from_imu must map into 'ego', got {ego_from_imu.name}")
        self._R_ei = ego_from_imu.rotation
        self.history_ns = int(history_s * 1e9)
        self.still_window_ns = int(still_window_s * 1e9)
        self.still_gyro_std = still_gyro_std
        self.still_accel_std = still_accel_std
        self.still_speed = still_speed
        self.gyro_bias = np.zeros(3)  # IMU frame [rad/s]
        self._bias_n = 0
        self._window: deque[tuple[int, np.ndarray, np.ndarray]] = deque()  # (t, gyro, accel)
        # The pose history, one row per IMU sample (stamp, odom_from_ego rotation and translation, speed,
        # angular velocity): rows [_h0, _h1) of arrays that are compacted (and grown) when their end is
        # reached, so single and vectorised queries index the same arrays.
        self._h0 = self._h1 = 0
        self._hist_t = np.empty(256, np.int64)
        self._hist_R = np.empty((256, 3, 3))
        self._hist_p = np.empty((256, 3))
        self._hist_v = np.empty(256)
        self._hist_w = np.empty((256, 3))
        self._q = np.array([1.0, 0.0, 0.0, 0.0])
        self._p = np.zeros(3)
        self._speed = 0.0
        self._speed_stamp: int | None = None
        self._last_t: int | None = None
        self.still_samples = 0

    # ------------------------------------------------------------------ inputs
    def add_speed(self, msg: VehicleSpeed) -> None:
        self._speed = float(msg.speed_mps)
        self._speed_stamp = msg.stamp_ns

    def add_radar(self, scan: RadarScan, ego_from_radar: Transform, min_points: int = 6) -> float | None:
        """Use the radar's static returns as a speed source while no speed message arrived in the last
        0.5 s. Returns the speed used [m/s] or None when the fit failed."""
        if self._speed_stamp is not None and scan.stamp_ns - self._speed_stamp < 500_000_000:
            return None
        v = speed_from_doppler(scan, ego_from_radar, min_points=min_points)
        if v is not None:
            self._speed = v
        return v

    def add_imu(self, msg: ImuSample) -> None:
        """Integrate one IMU sample (stamps must increase; an older or equal stamp is ignored)."""
        t = msg.stamp_ns
        if self._last_t is not None and t <= self._last_t:
            return
        gyro = np.asarray(msg.angular_velocity, dtype=np.float64)
        self._update_bias(t, gyro, np.asarray(msg.linear_acceleration, dtype=np.float64))
        omega_ego = self._R_ei @ (gyro - self.gyro_bias)
        dt = 0.0
        if self._last_t is not None:
            dt = (t - self._last_t) * 1e-9
            if dt > 0.5:  # a gap: do not integrate across it blindly
                dt = 0.0
        self._q, self._p, R = _imu_step(self._q, self._p, float(self._speed), omega_ego, dt,
                                        self._last_t is not None)
        self._last_t = t
        self._append_history(t, R, self._p, self._speed, omega_ego)
        while self._h1 > self._h0 and t - self._hist_t[self._h0] > self.history_ns:
            self._h0 += 1

    def _append_history(self, t: int, R: np.ndarray, p: np.ndarray, speed: float, omega: np.ndarray) -> None:
        if self._h1 == len(self._hist_t):
            n = self._h1 - self._h0
            cap = len(self._hist_t) * (2 if n > len(self._hist_t) // 2 else 1)
            for name in ("_hist_t", "_hist_R", "_hist_p", "_hist_v", "_hist_w"):
                old = getattr(self, name)
                new = old if cap == len(old) else np.empty((cap,) + old.shape[1:], old.dtype)
                new[:n] = old[self._h0:self._h1]
                setattr(self, name, new)
            self._h0, self._h1 = 0, n
        k = self._h1
        self._hist_t[k] = t
        self._hist_R[k] = R
        self._hist_p[k] = p
        self._hist_v[k] = speed
        self._hist_w[k] = omega
        self._h1 = k + 1

    def _row(self, k: int) -> EgoPose:
        """The stored pose in row k (copied: the rows are reused)."""
        return EgoPose(int(self._hist_t[k]), self._hist_R[k].copy(), self._hist_p[k].copy(), float(self._hist_v[k]),
                       self._hist_w[k].copy())

    def _check_covered(self, t_min: int, t_max: int) -> None:
        if self._h1 == self._h0:
            raise ValueError("no IMU data yet")
        first, last = int(self._hist_t[self._h0]), int(self._hist_t[self._h1 - 1])
        if t_min < first or t_max > last + 200_000_000:
            what = f"t={t_min}" if t_min == t_max else f"t in [{t_min}, {t_max}]"
            raise ValueError(f"{what} outside pose history [{first}, {last}]")

    def _update_bias(self, t: int, gyro: np.ndarray, accel: np.ndarray) -> None:
        self._window.append((t, gyro, accel))
        while self._window and t - self._window[0][0] > self.still_window_ns:
            self._window.popleft()
        if len(self._window) < 20 or t - self._window[0][0] < 0.9 * self.still_window_ns:
            return
        if self._speed_stamp is not None and abs(self._speed) > self.still_speed:
            return
        # Standstill is judged on 10 block means, not raw samples: engine or rotor vibration makes raw
        # samples noisy while the low-frequency rotation is zero.
        g = np.array([w[1] for w in self._window])
        a = np.array([w[2] for w in self._window])
        blocks = len(g) // 10
        gm = g[: blocks * 10].reshape(10, blocks, 3).mean(axis=1)
        am = a[: blocks * 10].reshape(10, blocks, 3).mean(axis=1)
        if gm.std(axis=0).max() < self.still_gyro_std and am.std(axis=0).max() < self.still_accel_std:
            # Cumulative mean over all still samples: the bias drifts slowly, standstills are short.
            self._bias_n += 1
            self.gyro_bias = self.gyro_bias + (gyro - self.gyro_bias) / self._bias_n
            self.still_samples += 1

    # ------------------------------------------------------------------ queries
    def _pose_stamps(self) -> np.ndarray:
        return self._hist_t[self._h0:self._h1]

    @property
    def latest(self) -> EgoPose | None:
        return self._row(self._h1 - 1) if self._h1 > self._h0 else None

    def pose_at(self, t_ns: int) -> EgoPose:
        """Pose at t_ns, interpolated between IMU samples (extrapolated at constant rates up to 0.2 s past the
        newest sample). Raises ValueError outside the kept history."""
        self._check_covered(t_ns, t_ns)
        last = self._h1 - 1
        t_last = int(self._hist_t[last])
        if t_ns >= t_last:
            dt = (t_ns - t_last) * 1e-9
            R_l, w_l, v_l = self._hist_R[last], self._hist_w[last], float(self._hist_v[last])
            R = R_l @ _rotvec_matrix(w_l * dt)
            p = self._hist_p[last] + R_l @ np.array([v_l * dt, 0.0, 0.0])
            return EgoPose(t_ns, R, p, v_l, w_l.copy())
        a = self._h0 + int(np.searchsorted(self._pose_stamps(), t_ns, side="right")) - 1
        b = min(a + 1, last)
        t_a, t_b = int(self._hist_t[a]), int(self._hist_t[b])
        if t_b == t_a:
            return self._row(a)
        w = (t_ns - t_a) / (t_b - t_a)
        dt = (t_ns - t_a) * 1e-9
        R = self._hist_R[a] @ _rotvec_matrix(self._hist_w[b] * dt)
        p = self._hist_p[a] * (1 - w) + self._hist_p[b] * w
        speed = float(self._hist_v[a]) * (1 - w) + float(self._hist_v[b]) * w
        return EgoPose(t_ns, R, p, speed, self._hist_w[b].copy())

    def poses_at(self, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`pose_at` for many instants (same interpolation and extrapolation rules).

        Args:
            t_ns: (K,) int64 instants [ns].
        Returns:
            (K, 3, 3) odom_from_ego rotations and (K, 3) translations [m].
        Raises:
            ValueError: an instant outside the kept history (as :meth:`pose_at`).
        """
        t = np.asarray(t_ns, dtype=np.int64)
        if len(t):
            self._check_covered(int(t.min()), int(t.max()))
        elif self._h1 == self._h0:
            raise ValueError("no IMU data yet")
        last = self._row(self._h1 - 1)
        stamps = self._pose_stamps()
        i = np.clip(np.searchsorted(stamps, t, side="right") - 1, 0, len(stamps) - 1)
        j = np.minimum(i + 1, len(stamps) - 1)
        beyond = t >= last.stamp_ns
        a_R = self._hist_R[self._h0:self._h1][i]
        a_p = self._hist_p[self._h0:self._h1][i]
        b_p = self._hist_p[self._h0:self._h1][j]
        w_b = self._hist_w[self._h0:self._h1][j]
        dt = (t - stamps[i]) * 1e-9
        span = (stamps[j] - stamps[i]).astype(np.float64)
        w = np.where(span > 0, (t - stamps[i]) / np.where(span > 0, span, 1.0), 0.0)
        omega = w_b.copy()
        omega[beyond] = last.angular_velocity  # extrapolation at the newest sample's rates
        R = a_R @ _rotvec_to_matrix_batch(omega * dt[:, None])
        p = a_p * (1 - w[:, None]) + b_p * w[:, None]
        if beyond.any():
            fwd = np.zeros((int(beyond.sum()), 3))
            fwd[:, 0] = last.speed * dt[beyond]
            p[beyond] = last.translation + fwd @ last.rotation.T
        same = (span == 0) & ~beyond
        if same.any():
            R[same] = a_R[same]
            p[same] = a_p[same]
        return R, p

    def relative(self, t_dst_ns: int, t_src_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)) float64 of :meth:`ego_from_ego`, without building Transforms (the per-frame path).

        R = R_dst^T R_src and t = R_dst^T (p_src - p_dst) from the two odom_from_ego poses; both rotations
        come from unit quaternions, so the product is proper to rounding and is not re-orthonormalised.
        """
        a = self.pose_at(t_dst_ns)
        b = self.pose_at(t_src_ns)
        Ra_t = a.rotation.T
        return Ra_t @ b.rotation, Ra_t @ (b.translation - a.translation)

    def ego_from_ego(self, t_dst_ns: int, t_src_ns: int) -> Transform:
        """Transform that moves points expressed in the ego frame at t_src into the ego frame at t_dst."""
        R, t = self.relative(t_dst_ns, t_src_ns)
        return Transform.from_proper_rotation("ego", "ego", R, t)


def speed_from_doppler(scan: RadarScan, ego_from_radar: Transform, min_points: int = 6,
                       threshold: float = 0.3, iterations: int = 50) -> float | None:
    """Ego forward speed [m/s] from the Doppler of static radar returns (RANSAC on the static-world model).

    For a static point in direction u (unit, ego frame) the measured radial velocity is -(v_ego . u) with
    v_ego = (v, 0, 0) for a car that does not slip (the radar's lever arm is ignored: its yaw-rate term is
    far below the Doppler resolution). Returns None when fewer than ``min_points`` returns agree.
    """
    n = len(scan)
    if n < min_points:
        return None
    dirs_sensor = scan.xyz / np.maximum(scan.range_m, 1e-6)[:, None]
    u = ego_from_radar.apply_vectors(dirs_sensor.astype(np.float64))
    ux = u[:, 0]
    vr = scan.radial_velocity.astype(np.float64)
    usable = np.abs(ux) > 0.2
    if usable.sum() < min_points:
        return None
    candidates = -vr[usable] / ux[usable]
    # Deterministic RANSAC over candidate speeds (each return proposes one).
    best_v, best_inliers = None, 0
    for v in np.unique(np.round(candidates, 2))[:: max(1, len(candidates) // iterations)]:
        inliers = int(np.sum(np.abs(vr + v * ux) < threshold))
        if inliers > best_inliers:
            best_v, best_inliers = v, inliers
    if best_v is None or best_inliers < min_points:
        return None
    mask = np.abs(vr + best_v * ux) < threshold
    return float(-(vr[mask] @ ux[mask]) / (ux[mask] @ ux[mask]))
