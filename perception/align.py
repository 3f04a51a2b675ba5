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
    # The mount goes into each bin's transform (ego@stamp_from_lidar@t_k), so the one pass over the points
    # is a bin lookup and the interpolation of two affine maps, in float64 as the reference.
    R_mount, t_mount = ego_from_lidar.rotation, ego_from_lidar.translation
    Rk = np.ascontiguousarray(Rs @ R_mount)
    tk = np.ascontiguousarray(Rs @ t_mount + ts)
    _deskew_kernel(np.ascontiguousarray(sweep.points, np.float32), np.ascontiguousarray(tau, np.float32),
                   lo, hi, Rk, tk, result)
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
    _deskew_kernel(np.zeros((1, 4), np.float32), np.zeros(1, np.float32), 0.0, 1.0, np.zeros((2, 3, 3)),
                   np.zeros((2, 3)), np.zeros((1, 4), np.float32))
    _move_sweep_kernel(np.zeros((1, 4), np.float32), np.eye(3, dtype=np.float32), np.zeros(3, np.float32),
                       np.float32(0.0), np.zeros((1, 5), np.float32), 0, True)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _deskew_kernel(points, tau, lo, hi, Rs, ts, out):  # pragma: no cover - compiled
    """:func:`deskew_sweep` per point, in float64: with the mount folded into the bins (Rs[k], ts[k]:
    ego@stamp_from_lidar@t_k), bin f = (tau - lo) * (K - 1) / (hi - lo), k = min(floor f, K - 2);
    out = lerp(Rs[k] p + ts[k], Rs[k+1] p + ts[k+1], f - k) for the sensor-frame point p; with one sample
    (K = 1) out = Rs[0] p + ts[0]. out[n, 3] = intensity.

    A spinning LiDAR's points come in time order, so they are taken in runs that share a bin: the two
    transforms are loaded once per run and the inner loop is pure arithmetic (any order is still right,
    only slower)."""
    n_pts = points.shape[0]
    k_bins = Rs.shape[0]
    scale = (k_bins - 1) / (hi - lo) if k_bins > 1 else 0.0
    i = 0
    while i < n_pts:
        k = 0
        j = n_pts
        if k_bins > 1:
            k = min(int((np.float64(tau[i]) - lo) * scale), k_bins - 2)
            j = i + 1
            while j < n_pts and min(int((np.float64(tau[j]) - lo) * scale), k_bins - 2) == k:
                j += 1
        k1 = min(k + 1, k_bins - 1)
        a00, a01, a02, a03 = Rs[k, 0, 0], Rs[k, 0, 1], Rs[k, 0, 2], ts[k, 0]
        a10, a11, a12, a13 = Rs[k, 1, 0], Rs[k, 1, 1], Rs[k, 1, 2], ts[k, 1]
        a20, a21, a22, a23 = Rs[k, 2, 0], Rs[k, 2, 1], Rs[k, 2, 2], ts[k, 2]
        b00, b01, b02, b03 = Rs[k1, 0, 0], Rs[k1, 0, 1], Rs[k1, 0, 2], ts[k1, 0]
        b10, b11, b12, b13 = Rs[k1, 1, 0], Rs[k1, 1, 1], Rs[k1, 1, 2], ts[k1, 1]
        b20, b21, b22, b23 = Rs[k1, 2, 0], Rs[k1, 2, 1], Rs[k1, 2, 2], ts[k1, 2]
        for n in range(i, j):
            px = np.float64(points[n, 0])
            py = np.float64(points[n, 1])
            pz = np.float64(points[n, 2])
            wb = (np.float64(tau[n]) - lo) * scale - k if k_bins > 1 else 0.0
            wa = 1.0 - wb
            out[n, 0] = (a00 * px + a01 * py + a02 * pz + a03) * wa + (b00 * px + b01 * py + b02 * pz + b03) * wb
            out[n, 1] = (a10 * px + a11 * py + a12 * pz + a13) * wa + (b10 * px + b11 * py + b12 * pz + b13) * wb
            out[n, 2] = (a20 * px + a21 * py + a22 * pz + a23) * wa + (b20 * px + b21 * py + b22 * pz + b23) * wb
            out[n, 3] = points[n, 3]
        i = j


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
                R, t = motion.relative(stamp_ns, s.stamp_ns)
                R, t = R.astype(np.float32), t.astype(np.float32)
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
    return _move_radar(_radar_in_ego(scan, ego_from_radar, motion), scan.stamp_ns, motion, stamp_ns)


@dataclass(frozen=True)
class _EgoScan:
    """A radar scan in the ego frame at its own stamp (what :func:`radar_to_instant` computes before moving
    it): xyz (N, 3) float64 [m]; v_ground, v_measured, rcs (N,) float32."""

    xyz: np.ndarray
    v_ground: np.ndarray
    v_measured: np.ndarray
    rcs: np.ndarray


def _radar_in_ego(scan: RadarScan, ego_from_radar: Transform, motion: EgoMotion) -> _EgoScan:
    xyz_s = scan.xyz.astype(np.float64)
    rng = np.maximum(scan.range_m.astype(np.float64), 1e-6)
    u_ego = ego_from_radar.apply_vectors(xyz_s / rng[:, None])
    pose = motion.pose_at(scan.stamp_ns)
    lever = ego_from_radar.translation
    v_radar = np.array([pose.speed, 0.0, 0.0]) + np.cross(pose.angular_velocity, lever)
    v_ground = scan.radial_velocity.astype(np.float64) + u_ego @ v_radar
    return _EgoScan(ego_from_radar.apply(xyz_s), v_ground.astype(np.float32),
                    scan.radial_velocity.astype(np.float32), scan.rcs.astype(np.float32))


def _move_radar(e: _EgoScan, scan_ns: int, motion: EgoMotion, stamp_ns: int) -> RadarPoints:
    xyz = e.xyz
    if scan_ns != stamp_ns:
        R, t = motion.relative(stamp_ns, scan_ns)
        xyz = xyz @ R.T + t
    return RadarPoints(xyz.astype(np.float32), e.v_ground, e.v_measured, e.rcs,
                       np.full(len(xyz), (stamp_ns - scan_ns) * 1e-9, np.float32))


class RadarAccumulator:
    """Recent radar scans (of one or more radars), returned together at one instant.

    Each scan is brought into the ego frame at its own stamp once (mount, Doppler correction), the first
    time the ego motion covers that stamp with IMU samples on both sides; every later query only moves it
    to the query instant. The result is the same as :func:`radar_to_instant` per scan.

    Args:
        max_age_s: scans older than this (relative to the query instant) are left out and forgotten.
    """

    def __init__(self, max_age_s: float = 0.3):
        if max_age_s < 0:
            raise ValueError(f"RadarAccumulator: max_age_s must be >= 0, got {max_age_s}")
        self.max_age_ns = int(max_age_s * 1e9)
        self._scans: list[_StoredScan] = []

    def add(self, scan: RadarScan, ego_from_radar: Transform) -> None:
        """Store a scan with its radar's rig transform (ego_from_<scan.sensor_id>). Scans may come in any
        order (several radars interleave); those more than ``max_age_s`` older than the newest are forgotten,
        so memory stays bounded even if :meth:`accumulate` is never called."""
        _check_mount(ego_from_radar, scan.sensor_id, "RadarAccumulator.add")
        self._scans.append(_StoredScan(scan, ego_from_radar))
        newest = max(s.scan.stamp_ns for s in self._scans)
        self._scans = [s for s in self._scans if newest - s.scan.stamp_ns <= self.max_age_ns]

    def accumulate(self, stamp_ns: int, motion: EgoMotion) -> RadarPoints:
        """Every stored scan taken in [stamp_ns - max_age_s, stamp_ns], moved to ``stamp_ns`` as
        :func:`radar_to_instant` moves it, and concatenated in stamp order; ``lag`` tells the scans apart.
        Scans older than the window are forgotten; newer ones are kept for a later instant."""
        self._scans = [s for s in self._scans if stamp_ns - s.scan.stamp_ns <= self.max_age_ns]
        use = sorted((s for s in self._scans if s.scan.stamp_ns <= stamp_ns), key=lambda s: s.scan.stamp_ns)
        parts = []
        for s in use:
            ego = s.in_ego
            if ego is None:
                ego = _radar_in_ego(s.scan, s.ego_from_radar, motion)
                latest = motion.latest
                if latest is not None and s.scan.stamp_ns <= latest.stamp_ns:  # interpolated: final
                    s.in_ego = ego
            parts.append(_move_radar(ego, s.scan.stamp_ns, motion, stamp_ns))
        if not parts:
            e = np.zeros(0, np.float32)
            return RadarPoints(np.zeros((0, 3), np.float32), e, e, e, e)
        return RadarPoints(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("xyz", "v_radial_ground", "v_radial_measured", "rcs", "lag")))


@dataclass
class _StoredScan:
    scan: RadarScan
    ego_from_radar: Transform
    in_ego: _EgoScan | None = None  # the scan in the ego frame at its stamp, once the motion is final there


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
