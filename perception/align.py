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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from calibration.transform import Transform
from drivers.messages import LidarSweep, RadarScan
from perception.egomotion import EgoMotion

DESKEW_BINS = 64


def _motion_samples(motion: EgoMotion, stamp_ns: int, offsets_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (K, 3, 3) and translations (K, 3) of ego@stamp_from_ego@(stamp + offset) for K offsets."""
    Rs = np.empty((len(offsets_s), 3, 3))
    ts = np.empty((len(offsets_s), 3))
    for k, off in enumerate(offsets_s):
        T = motion.ego_from_ego(stamp_ns, stamp_ns + int(round(off * 1e9)))
        Rs[k], ts[k] = T.rotation, T.translation
    return Rs, ts


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
    """
    if len(sweep) == 0:
        return np.zeros((0, 4), np.float32)
    pts = ego_from_lidar.apply(sweep.points[:, :3].astype(np.float64))
    tau = sweep.time_offset.astype(np.float64)
    lo, hi = float(tau.min()), float(tau.max())
    if hi - lo < 1e-6:
        offsets = np.array([lo])
        idx = np.zeros(len(tau), np.int64)
        w = np.zeros(len(tau))
    else:
        offsets = np.linspace(lo, hi, bins)
        f = (tau - lo) / (hi - lo) * (bins - 1)
        idx = np.minimum(f.astype(np.int64), bins - 2)
        w = f - idx
    Rs, ts = _motion_samples(motion, sweep.stamp_ns, offsets)
    if len(offsets) == 1:
        out = pts @ Rs[0].T + ts[0]
    else:
        # Interpolate each point's transform between its two neighbouring bins.
        a = np.einsum("nij,nj->ni", Rs[idx], pts) + ts[idx]
        b = np.einsum("nij,nj->ni", Rs[idx + 1], pts) + ts[idx + 1]
        out = a * (1 - w)[:, None] + b * w[:, None]
    result = np.empty((len(pts), 4), np.float32)
    result[:, :3] = out
    result[:, 3] = sweep.points[:, 3]
    return result


def raw_sweep_in_ego(sweep: LidarSweep, ego_from_lidar: Transform) -> np.ndarray:
    """The sweep in the ego frame WITHOUT deskew (every point as if measured at the stamp): (N, 4) float32."""
    out = np.empty((len(sweep), 4), np.float32)
    out[:, :3] = ego_from_lidar.apply(sweep.points[:, :3].astype(np.float64))
    out[:, 3] = sweep.points[:, 3]
    return out


@dataclass(frozen=True)
class _StoredSweep:
    stamp_ns: int
    points: np.ndarray  # (N, 4) deskewed, ego frame at stamp_ns


class SweepAccumulator:
    """Keeps the last ``n_sweeps`` deskewed sweeps and returns them in the ego frame of the newest.

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
        """Store a deskewed sweep (N, 4) in the ego frame at stamp_ns."""
        self._sweeps.append(_StoredSweep(stamp_ns, deskewed))

    def accumulate(self, stamp_ns: int, motion: EgoMotion) -> np.ndarray:
        """(M, 5) float32: x y z [m] in the ego frame at ``stamp_ns``, intensity, time lag [s] (>= 0: how
        long before ``stamp_ns`` the sweep was taken)."""
        parts = []
        for s in self._sweeps:
            lag_ns = stamp_ns - s.stamp_ns
            if lag_ns < 0 or lag_ns > self.max_age_ns:
                continue
            if lag_ns == 0:
                xyz = s.points[:, :3]
            else:
                xyz = motion.ego_from_ego(stamp_ns, s.stamp_ns).apply(s.points[:, :3].astype(np.float64))
            part = np.empty((len(s.points), 5), np.float32)
            part[:, :3] = xyz
            part[:, 3] = s.points[:, 3]
            part[:, 4] = lag_ns * 1e-9
            parts.append(part)
        return np.concatenate(parts) if parts else np.zeros((0, 5), np.float32)


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
    leaves the over-ground radial velocity v_obj . u.
    """
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
    """Recent radar scans (per radar), returned together at one instant.

    Args:
        max_age_s: scans older than this (relative to the query instant) are dropped.
    """

    def __init__(self, max_age_s: float = 0.3):
        self.max_age_ns = int(max_age_s * 1e9)
        self._scans: deque[tuple[RadarScan, Transform]] = deque()

    def add(self, scan: RadarScan, ego_from_radar: Transform) -> None:
        self._scans.append((scan, ego_from_radar))

    def accumulate(self, stamp_ns: int, motion: EgoMotion) -> RadarPoints:
        while self._scans and stamp_ns - self._scans[0][0].stamp_ns > self.max_age_ns:
            self._scans.popleft()
        parts = [radar_to_instant(s, T, motion, stamp_ns) for s, T in self._scans if s.stamp_ns <= stamp_ns]
        if not parts:
            e = np.zeros(0, np.float32)
            return RadarPoints(np.zeros((0, 3), np.float32), e, e, e, e)
        return RadarPoints(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("xyz", "v_radial_ground", "v_radial_measured", "rcs", "lag")))


def camera_from_ego_at(ego_from_camera: Transform, motion: EgoMotion, frame_stamp_ns: int,
                       exposure_ns: int) -> Transform:
    """camera(at exposure)_from_ego(at frame stamp): use it to project points of the frame instant into an
    image exposed at ``exposure_ns`` (earlier or later), so the projection stays aligned at speed."""
    ego_exp_from_ego_frame = motion.ego_from_ego(exposure_ns, frame_stamp_ns)
    return ego_from_camera.inverse() @ ego_exp_from_ego_frame
