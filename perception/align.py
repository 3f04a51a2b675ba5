"""Alignment of every measurement to one instant, in the ego frame.

- :func:`deskew_sweep`: each LiDAR point was measured at its own time (``stamp_ns + time_offset``); it is
  moved into the ego frame at the sweep's stamp using the ego motion between the two instants. This
  removes the "rolling" distortion a spinning LiDAR shows at speed.
- :class:`SweepAccumulator`: the last N deskewed sweeps moved into the current ego frame, with a time-lag
  channel (as nuScenes' multi-sweep loading), so moving objects leave a visible trail and static ones
  stack up.
- :func:`radar_to_instant`: radar returns moved to the frame instant with ego-motion-compensated
  (over-ground) radial velocity; :class:`RadarAccumulator` keeps recent scans.
- :func:`camera_from_ego_at`: the transform from the ego frame at the frame instant into a camera at its
  exposure time, so LiDAR points projected into an image taken 30 ms earlier at 20 m/s stay aligned.

Only the ego motion is removed: a moving object's points stay where the object was when each point was
measured (its own motion needs its velocity, which comes later from tracking or radar). All times are
integer nanoseconds on the one clock the :class:`~perception.egomotion.EgoMotion` was fed with; a sensor
whose clock runs ``time_offset_ns`` ahead (rig calibration) is brought onto it by the caller, as the
synchronizer does with its per-sensor offsets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numba
import numpy as np

from calibration.transform import Transform
from drivers.messages import LidarSweep, RadarScan
from perception.egomotion import EgoMotion, warm_up_imu_step

DESKEW_BINS = 64


def _motion_samples(motion: EgoMotion, stamp_ns: int, offsets_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (K, 3, 3) and translations (K, 3) of ego@stamp_from_ego@(stamp + offset) for K offsets [s]."""
    # Vectorised over the K instants (one pose lookup for all of them): ego@stamp_from_odom @ odom_from_ego@t.
    t = stamp_ns + np.round(np.asarray(offsets_s) * 1e9).astype(np.int64)
    R_all, p_all = motion.poses_at(np.concatenate([[stamp_ns], t]))
    R0_inv = R_all[0].T
    Rs = R0_inv[None] @ R_all[1:]
    ts = (p_all[1:] - p_all[0]) @ R0_inv.T
    return Rs, ts


def _check_mount(ego_from_sensor: Transform, sensor_id: str, what: str) -> None:
    """ValueError unless ``ego_from_sensor`` maps the frame of ``sensor_id`` into 'ego'."""
    if ego_from_sensor.dst != "ego" or ego_from_sensor.src != sensor_id:
        raise ValueError(f"{what}: expected ego_from_{sensor_id} for sensor {sensor_id!r}, got {ego_from_sensor.name}")


def deskew_sweep(sweep: LidarSweep, ego_from_lidar: Transform, motion: EgoMotion,
                 bins: int = DESKEW_BINS) -> np.ndarray:
    """Points of ``sweep`` in the ego frame at ``sweep.stamp_ns``.

    Args:
        sweep: the raw sweep (points in the sensor frame at each point's own time).
        ego_from_lidar: rig transform of this LiDAR.
        motion: ego motion covering [stamp - sweep duration, stamp].
        bins: motion is evaluated at this many instants over the sweep and interpolated linearly per point
            (rotation error O(dtheta^2) between bins: negligible at 64 bins for any car's yaw rate).
    Returns:
        (N, 4) float32: x y z [m] in the ego frame at the stamp, intensity.
    Raises:
        ValueError: ``ego_from_lidar`` is not ego_from_<sweep.sensor_id>, or ``motion`` does not cover the
            sweep's time span.
    """
    _check_mount(ego_from_lidar, sweep.sensor_id, "deskew_sweep")
    n = len(sweep)
    result = np.empty((n, 4), np.float32)
    if n == 0:
        return result
    tau = sweep.time_offset
    lo, hi = float(tau.min()), float(tau.max())
    offsets = np.array([lo]) if hi - lo < 1e-6 else np.linspace(lo, hi, bins)
    Rs, ts = _motion_samples(motion, sweep.stamp_ns, offsets)
    # One pass over the points: mount, bin, interpolation (the reference's float64 arithmetic, no temporaries).
    # (Writeable C-contiguous copies of the small arrays: the kernel is compiled for that one signature.)
    f64 = np.float64
    _deskew_kernel(np.ascontiguousarray(sweep.points, np.float32), np.ascontiguousarray(tau, np.float32),
                   np.array(ego_from_lidar.rotation, f64), np.array(ego_from_lidar.translation, f64), lo, hi,
                   np.array(Rs, f64), np.array(ts, f64), result)
    return result


def _deskew_inputs(sweep: LidarSweep, ego_from_lidar: Transform, motion: EgoMotion, bins: int):
    """(points in ego (N, 3) float64, bin index (N,), weight (N,), bin rotations (K, 3, 3), bin translations
    (K, 3)) for deskewing, or None for an empty sweep."""
    _check_mount(ego_from_lidar, sweep.sensor_id, "deskew_sweep")
    if len(sweep) == 0:
        return None
    pts = ego_from_lidar.apply(sweep.points[:, :3].astype(np.float64))
    tau = sweep.time_offset.astype(np.float64)
    lo, hi = float(tau.min()), float(tau.max())
    if hi - lo < 1e-6:
        offsets, idx, w = np.array([lo]), np.zeros(len(tau), np.int64), np.zeros(len(tau))
    else:
        offsets = np.linspace(lo, hi, bins)
        f = (tau - lo) / (hi - lo) * (bins - 1)
        idx = np.minimum(f.astype(np.int64), bins - 2)
        w = f - idx
    Rs, ts = _motion_samples(motion, sweep.stamp_ns, offsets)
    return pts, idx, w, Rs, ts


def warm_up_kernels() -> None:
    """Compile (or load from the cache) the deskew and accumulation kernels with the argument types
    :func:`deskew_sweep` and :class:`SweepAccumulator` give them, and the ego-motion IMU step, so the first
    frame of a run does not pay."""
    warm_up_imu_step()
    _deskew_kernel(np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.eye(3), np.zeros(3), 0.0, 1.0,
                   np.zeros((2, 3, 3)), np.zeros((2, 3)), np.zeros((1, 4), np.float32))
    _move_sweep_kernel(np.zeros((1, 4), np.float32), np.eye(3, dtype=np.float32), np.zeros(3, np.float32),
                       np.float32(0.0), np.zeros((1, 5), np.float32), 0, True)


@numba.njit(cache=True, nogil=True)
def _deskew_kernel(points, tau, R_mount, t_mount, lo, hi, Rs, ts, out):  # pragma: no cover - compiled
    """:func:`deskew_sweep` per point, in float64 as the reference: p = mount(points[n, :3]); bin
    f = (tau - lo) / (hi - lo) * (K - 1), k = min(floor f, K - 2); out = lerp(Rs[k] p + ts[k],
    Rs[k+1] p + ts[k+1], f - k); with one sample (K = 1) out = Rs[0] p + ts[0]. out[n, 3] = intensity."""
    k_bins = Rs.shape[0]
    span = hi - lo
    for n in range(points.shape[0]):
        x = np.float64(points[n, 0])
        y = np.float64(points[n, 1])
        z = np.float64(points[n, 2])
        px = R_mount[0, 0] * x + R_mount[0, 1] * y + R_mount[0, 2] * z + t_mount[0]
        py = R_mount[1, 0] * x + R_mount[1, 1] * y + R_mount[1, 2] * z + t_mount[1]
        pz = R_mount[2, 0] * x + R_mount[2, 1] * y + R_mount[2, 2] * z + t_mount[2]
        if k_bins == 1:
            for r in range(3):
                out[n, r] = Rs[0, r, 0] * px + Rs[0, r, 1] * py + Rs[0, r, 2] * pz + ts[0, r]
        else:
            f = (np.float64(tau[n]) - lo) / span * (k_bins - 1)
            k = min(int(f), k_bins - 2)
            wb = f - k
            wa = 1.0 - wb
            for r in range(3):
                a = Rs[k, r, 0] * px + Rs[k, r, 1] * py + Rs[k, r, 2] * pz + ts[k, r]
                b = Rs[k + 1, r, 0] * px + Rs[k + 1, r, 1] * py + Rs[k + 1, r, 2] * pz + ts[k + 1, r]
                out[n, r] = a * wa + b * wb
        out[n, 3] = points[n, 3]


@numba.njit(cache=True, nogil=True)
def _move_sweep_kernel(points, R, t, lag, out, start, move):  # pragma: no cover - compiled
    """out[start + n] = (R @ points[n, :3] + t if move else points[n, :3], intensity, lag), float32 (one
    accumulated sweep)."""
    for n in range(points.shape[0]):
        x = points[n, 0]
        y = points[n, 1]
        z = points[n, 2]
        o = start + n
        if move:
            out[o, 0] = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
            out[o, 1] = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
            out[o, 2] = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
        else:
            out[o, 0] = x
            out[o, 1] = y
            out[o, 2] = z
        out[o, 3] = points[n, 3]
        out[o, 4] = lag


def deskew_sweep_reference(sweep: LidarSweep, ego_from_lidar: Transform, motion: EgoMotion,
                           bins: int = DESKEW_BINS) -> np.ndarray:
    """Plain numpy :func:`deskew_sweep` (the kernel's reference; same result to float32 rounding)."""
    prep = _deskew_inputs(sweep, ego_from_lidar, motion, bins)
    if prep is None:
        return np.zeros((0, 4), np.float32)
    pts, idx, w, Rs, ts = prep
    if len(Rs) == 1:
        out = pts @ Rs[0].T + ts[0]
    else:
        a = np.einsum("nij,nj->ni", Rs[idx], pts) + ts[idx]
        b = np.einsum("nij,nj->ni", Rs[idx + 1], pts) + ts[idx + 1]
        out = a * (1 - w)[:, None] + b * w[:, None]
    result = np.empty((len(pts), 4), np.float32)
    result[:, :3] = out
    result[:, 3] = sweep.points[:, 3]
    return result


def raw_sweep_in_ego(sweep: LidarSweep, ego_from_lidar: Transform) -> np.ndarray:
    """The sweep in the ego frame WITHOUT deskew (every point as if measured at the stamp): (N, 4) float32
    x y z [m], intensity. The reference that shows what :func:`deskew_sweep` removes."""
    _check_mount(ego_from_lidar, sweep.sensor_id, "raw_sweep_in_ego")
    out = np.empty((len(sweep), 4), np.float32)
    out[:, :3] = ego_from_lidar.apply(sweep.points[:, :3].astype(np.float64))
    out[:, 3] = sweep.points[:, 3]
    return out


@dataclass(frozen=True)
class _StoredSweep:
    stamp_ns: int
    points: np.ndarray  # (N, 4) deskewed, ego frame at stamp_ns


class SweepAccumulator:
    """Keeps the last ``n_sweeps`` deskewed sweeps added and returns them in the ego frame of one instant.

    Args:
        n_sweeps: sweeps to accumulate, the current one included (nuScenes uses 10 at 20 Hz).
        max_age_s: older sweeps are dropped even if fewer than n_sweeps remain.
    """

    def __init__(self, n_sweeps: int = 3, max_age_s: float = 0.5):
        if n_sweeps < 1:
            raise ValueError("n_sweeps must be >= 1")
        self.n_sweeps = n_sweeps
        self.max_age_ns = int(max_age_s * 1e9)
        self._sweeps: deque[_StoredSweep] = deque(maxlen=n_sweeps)

    def add(self, stamp_ns: int, deskewed: np.ndarray) -> None:
        """Store a deskewed sweep: (N, 4) float32 x y z [m] in the ego frame at ``stamp_ns``, intensity (the
        output of :func:`deskew_sweep`). The oldest sweep beyond ``n_sweeps`` is forgotten."""
        if deskewed.ndim != 2 or deskewed.shape[1] != 4:
            raise ValueError(f"SweepAccumulator.add: expected (N, 4) points, got shape {deskewed.shape}")
        self._sweeps.append(_StoredSweep(int(stamp_ns), np.ascontiguousarray(deskewed, dtype=np.float32)))

    def accumulate(self, stamp_ns: int, motion: EgoMotion) -> np.ndarray:
        """The stored sweeps taken at or before ``stamp_ns`` and at most ``max_age_s`` earlier, oldest first.

        Returns:
            (M, 5) float32: x y z [m] in the ego frame at ``stamp_ns``, intensity, time lag [s] (>= 0: how
            long before ``stamp_ns`` the sweep was taken). Static surfaces stack; a moving object leaves a
            trail of its past positions, ``velocity * lag`` behind it.
        Raises:
            ValueError: ``motion`` does not cover a stored sweep's stamp.
        """
        use = [s for s in sorted(self._sweeps, key=lambda s: s.stamp_ns)
               if 0 <= stamp_ns - s.stamp_ns <= self.max_age_ns]
        # Every transform first (a sweep the motion does not cover raises before anything is written), then
        # one kernel pass per sweep straight into the output: float32 is exact to well under a millimetre
        # at LiDAR ranges.
        moves = []
        for s in use:
            lag_ns = stamp_ns - s.stamp_ns
            if lag_ns == 0:
                R, t = np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
            else:
                T = motion.ego_from_ego(stamp_ns, s.stamp_ns)
                R, t = T.rotation.astype(np.float32), T.translation.astype(np.float32)
            moves.append((R, t, np.float32(lag_ns * 1e-9)))
        out = np.empty((sum(len(s.points) for s in use), 5), np.float32)
        start = 0
        for s, (R, t, lag) in zip(use, moves):
            _move_sweep_kernel(s.points, R, t, lag, out, start, lag > 0)
            start += len(s.points)
        return out


@dataclass(frozen=True)
class RadarPoints:
    """Radar returns aligned to one instant (struct of arrays).

    Args:
        xyz: (N, 3) float32 [m] ego frame at the frame instant.
        v_radial_ground: (N,) float32 [m/s] over-ground radial velocity (ego motion removed), + receding.
        v_radial_measured: (N,) float32 [m/s] raw Doppler.
        rcs: (N,) float32 [dBsm]; lag: (N,) float32 [s] how long before the instant the scan was taken.
    """

    xyz: np.ndarray
    v_radial_ground: np.ndarray
    v_radial_measured: np.ndarray
    rcs: np.ndarray
    lag: np.ndarray

    def __len__(self) -> int:
        return len(self.xyz)


def radar_to_instant(scan: RadarScan, ego_from_radar: Transform, motion: EgoMotion, stamp_ns: int) -> RadarPoints:
    """Move a radar scan into the ego frame at ``stamp_ns`` and remove the ego motion from its Doppler.

    The measured radial velocity of a return in direction u (unit, from the radar) is
    (v_obj - v_radar) . u; adding v_radar . u (the radar's own velocity, ego speed plus yaw-rate lever arm)
    leaves the over-ground radial velocity v_obj . u: about 0 for the static world.

    Args:
        scan: one radar scan (sensor frame, measured at ``scan.stamp_ns``).
        ego_from_radar: rig transform of this radar (ego_from_<scan.sensor_id>).
        motion: ego motion covering ``scan.stamp_ns`` and ``stamp_ns``.
        stamp_ns: the instant to move the returns to [ns] (earlier or later than the scan).
    Returns:
        :class:`RadarPoints` with N = len(scan) returns, in the scan's order.
    """
    _check_mount(ego_from_radar, scan.sensor_id, "radar_to_instant")
    xyz_s = scan.xyz.astype(np.float64)
    rng = np.maximum(scan.range_m.astype(np.float64), 1e-6)
    u_ego = ego_from_radar.apply_vectors(xyz_s / rng[:, None])
    pose = motion.pose_at(scan.stamp_ns)
    lever = ego_from_radar.translation
    v_radar = np.array([pose.speed, 0.0, 0.0]) + np.cross(pose.angular_velocity, lever)
    v_ground = scan.radial_velocity.astype(np.float64) + u_ego @ v_radar
    xyz_ego = ego_from_radar.apply(xyz_s)
    if scan.stamp_ns != stamp_ns:
        xyz_ego = motion.ego_from_ego(stamp_ns, scan.stamp_ns).apply(xyz_ego)
    n = len(scan)
    return RadarPoints(xyz_ego.astype(np.float32), v_ground.astype(np.float32),
                       scan.radial_velocity.astype(np.float32), scan.rcs.astype(np.float32),
                       np.full(n, (stamp_ns - scan.stamp_ns) * 1e-9, np.float32))


class RadarAccumulator:
    """Recent radar scans (of one or more radars), returned together at one instant.

    Args:
        max_age_s: scans older than this (relative to the query instant) are left out and forgotten.
    """

    def __init__(self, max_age_s: float = 0.3):
        if max_age_s < 0:
            raise ValueError(f"RadarAccumulator: max_age_s must be >= 0, got {max_age_s}")
        self.max_age_ns = int(max_age_s * 1e9)
        self._scans: list[tuple[RadarScan, Transform]] = []

    def add(self, scan: RadarScan, ego_from_radar: Transform) -> None:
        """Store a scan with its radar's rig transform (ego_from_<scan.sensor_id>). Scans may come in any
        order (several radars interleave); those more than ``max_age_s`` older than the newest are forgotten,
        so memory stays bounded even if :meth:`accumulate` is never called."""
        _check_mount(ego_from_radar, scan.sensor_id, "RadarAccumulator.add")
        self._scans.append((scan, ego_from_radar))
        newest = max(s.stamp_ns for s, _ in self._scans)
        self._scans = [(s, T) for s, T in self._scans if newest - s.stamp_ns <= self.max_age_ns]

    def accumulate(self, stamp_ns: int, motion: EgoMotion) -> RadarPoints:
        """Every stored scan taken in [stamp_ns - max_age_s, stamp_ns], moved to ``stamp_ns`` with
        :func:`radar_to_instant` and concatenated in stamp order; ``lag`` tells the scans apart. Scans older
        than the window are forgotten; newer ones are kept for a later instant."""
        self._scans = [(s, T) for s, T in self._scans if stamp_ns - s.stamp_ns <= self.max_age_ns]
        use = sorted((p for p in self._scans if p[0].stamp_ns <= stamp_ns), key=lambda p: p[0].stamp_ns)
        parts = [radar_to_instant(s, T, motion, stamp_ns) for s, T in use]
        if not parts:
            e = np.zeros(0, np.float32)
            return RadarPoints(np.zeros((0, 3), np.float32), e, e, e, e)
        return RadarPoints(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("xyz", "v_radial_ground", "v_radial_measured", "rcs", "lag")))


def camera_from_ego_at(ego_from_camera: Transform, motion: EgoMotion, frame_stamp_ns: int,
                       exposure_ns: int) -> Transform:
    """camera(at exposure)_from_ego(at frame stamp): use it to project points of the frame instant into an
    image exposed at ``exposure_ns`` (earlier or later), so the projection stays aligned at speed.

    Args:
        ego_from_camera: rig transform of the camera (optical frame).
        motion: ego motion covering both instants (up to 0.2 s past its newest IMU sample is extrapolated).
        frame_stamp_ns: the instant the points are expressed at (the frame stamp) [ns].
        exposure_ns: the image's mid-exposure time on the same clock [ns].
    Returns:
        Transform ``<camera>_from_ego``: apply it to (N, 3) ego-frame points of the frame instant to get
        them in the camera's optical frame at the exposure, ready for ``CameraModel.project``.
    """
    if ego_from_camera.dst != "ego":
        raise ValueError(f"camera_from_ego_at: expected ego_from_<camera>, got {ego_from_camera.name}")
    ego_exp_from_ego_frame = motion.ego_from_ego(exposure_ns, frame_stamp_ns)
    return ego_from_camera.inverse() @ ego_exp_from_ego_frame
