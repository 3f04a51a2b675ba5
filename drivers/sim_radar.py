"""Simulated automotive radar (77 GHz class): a detection list per scan with Doppler and RCS.

Model, per scan (evaluated at the scan time; a radar cycle is short enough to treat as one instant):

- Candidate returns: each object in range gets a few candidate scattering points sampled on its side faces
  that face the sensor (weighted by their apparent width): about one per ``1.7 deg`` of apparent width,
  at most :data:`MAX_RETURNS` per class (car 4, truck 6, pedestrian 1, ...). Heights are drawn over the
  lower 3 m of the object.
- Occlusion: a ray is cast from the sensor to every candidate with the LiDAR ray-caster
  (:func:`drivers.sim_lidar.cast_rays`); the return is kept only when the first surface hit belongs to the
  same object, and lies at the hit point.
- Detection: radar-equation SNR ``rcs - 40 log10(r) + 95 dB - antenna loss - rain loss``; the antenna loss
  grows as ``12 dB (az / 60 deg)^2`` toward the edge of the field of view, and a return is detected with
  probability ``sigmoid((SNR - 13 dB) / 1.5 dB)``. A 10 dBsm car is detected to ~200 m on boresight,
  a -5 dBsm pedestrian to ~85 m. RCS per return is the class mean (:data:`CLASS_RCS_DBSM`) plus 2 dB noise.
- Measurement noise: range 0.15 m, azimuth 1 deg, elevation 2.5 deg, radial velocity 0.1 m/s (1 sigma).
- Radial velocity: ``(v_point - v_sensor) . u`` with ``u`` the unit line of sight, over-ground velocities,
  ``v_sensor = v_ego + omega x r_mount``; positive = receding. A static point ahead reads ``-v cos(az)``.
- Clutter: static returns from the road surface and roadside furniture, Poisson (3 per scan), 3-80 m,
  low RCS, Doppler of a static point. False alarms: Poisson (1 per scan), anywhere in the field of view,
  random Doppler and low RCS.
- Weather: rain adds 4 dB/km one-way attenuation (a few percent of range at 200 m); fog and night nothing.

The truth behind each return (object track id, or clutter / false alarm) is kept next to the scan for
tests and evaluation; the :class:`~drivers.messages.RadarScan` message carries only the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.transform import Transform
from drivers.messages import CLASS_NAMES, RadarScan
from drivers.sim_lidar import WEATHERS, SceneLike, cast_rays, objects_in_ego
from drivers.sim_scene import LABEL_BUILDING, LABEL_POLE, LABEL_WALL

SOURCE_CLUTTER = -1
SOURCE_FALSE_ALARM = -2

# Mean radar cross section [dBsm] per label (CLASS_NAMES index, or the static clutter labels).
CLASS_RCS_DBSM: dict[int, float] = {
    CLASS_NAMES.index("car"): 10.0,
    CLASS_NAMES.index("truck"): 20.0,
    CLASS_NAMES.index("pedestrian"): -5.0,
    CLASS_NAMES.index("bicycle"): 0.0,
    LABEL_POLE: 5.0,
    LABEL_WALL: 12.0,
    LABEL_BUILDING: 15.0,
}
# Most candidate returns per object and scan, per label.
MAX_RETURNS: dict[int, int] = {
    CLASS_NAMES.index("car"): 4,
    CLASS_NAMES.index("truck"): 6,
    CLASS_NAMES.index("pedestrian"): 1,
    CLASS_NAMES.index("bicycle"): 2,
    LABEL_POLE: 1,
    LABEL_WALL: 5,
    LABEL_BUILDING: 6,
}
RAIN_DB_PER_KM = 4.0  # one-way attenuation at 77 GHz in moderate-to-heavy rain


@dataclass(frozen=True)
class RadarParams:
    """Radar model parameters (defaults: a long-range front radar).

    Args:
        max_range_m: instrumented range [m]; fov_az_deg / fov_el_deg: half fields of view [deg].
        range_noise_m, azimuth_noise_deg, elevation_noise_deg, velocity_noise_mps: 1-sigma noise.
        snr_offset_db: radar-equation constant (SNR = rcs - 40 log10 r + offset) [dB].
        snr_threshold_db: 50 % detection SNR [dB]; edge_loss_db: antenna loss at the FOV edge [dB].
        rcs_noise_db: per-return RCS spread [dB].
        angular_cell_deg: apparent width per candidate return [deg].
        clutter_rate / false_alarm_rate: Poisson means per scan.
    """

    max_range_m: float = 200.0
    fov_az_deg: float = 60.0
    fov_el_deg: float = 10.0
    range_noise_m: float = 0.15
    azimuth_noise_deg: float = 1.0
    elevation_noise_deg: float = 2.5
    velocity_noise_mps: float = 0.1
    snr_offset_db: float = 95.0
    snr_threshold_db: float = 13.0
    edge_loss_db: float = 12.0
    rcs_noise_db: float = 2.0
    angular_cell_deg: float = 1.7
    clutter_rate: float = 3.0
    false_alarm_rate: float = 1.0


@dataclass(frozen=True, eq=False)
class RadarSimResult:
    """One simulated scan and the truth behind each return.

    Args:
        scan: the measurements (message payload; ``sensor_id``/``stamp_ns``/``seq`` as given).
        source_track_id: (N,) int32 track id of the object each return came from, SOURCE_CLUTTER for
            static clutter, SOURCE_FALSE_ALARM for noise.
        true_radial_velocity: (N,) float64 [m/s] noise-free radial velocity (NaN for false alarms).
    """

    scan: RadarScan
    source_track_id: np.ndarray
    true_radial_velocity: np.ndarray


def _sensor_velocity_ego(ego_speed: float, yaw_rate: float, mount: np.ndarray) -> np.ndarray:
    """(3,) over-ground velocity [m/s] of a point fixed at ``mount`` on the ego, in the ego frame."""
    return np.array([ego_speed - yaw_rate * mount[1], yaw_rate * mount[0], 0.0])


def _face_samples(boxes: np.ndarray, labels: np.ndarray, sensor_xy: np.ndarray, params: RadarParams,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Candidate scattering points on the sensor-facing side faces of each box (ego frame).

    Returns (points (K, 3) float64 [m], owner (K,) int64 box index)."""
    pts, owner = [], []
    cell = np.radians(params.angular_cell_deg)
    for i, (x, y, z, l, w, h, yaw) in enumerate(boxes):
        c, s = np.cos(yaw), np.sin(yaw)
        ax, ay = np.array([c, s]), np.array([-s, c])  # box length and width axes
        # Side faces: (centre, outward normal, tangent, length).
        faces = [
            (np.array([x, y]) + ax * l / 2, ax, ay, w), (np.array([x, y]) - ax * l / 2, -ax, ay, w),
            (np.array([x, y]) + ay * w / 2, ay, ax, l), (np.array([x, y]) - ay * w / 2, -ay, ax, l),
        ]
        vis, widths = [], []
        for fc, n, tg, length in faces:
            to_sensor = sensor_xy - fc
            d = np.linalg.norm(to_sensor)
            facing = float(n @ to_sensor) / max(d, 1e-9)
            if facing > 1e-3:
                vis.append((fc, tg, length))
                widths.append(length * facing)
        if not vis:
            continue
        dist = max(np.hypot(x - sensor_xy[0], y - sensor_xy[1]), 1.0)
        apparent = float(sum(widths)) / dist  # [rad]
        n_ret = int(np.clip(round(apparent / cell), 1, MAX_RETURNS.get(int(labels[i]), 2)))
        p = np.asarray(widths) / np.sum(widths)
        for f in rng.choice(len(vis), size=n_ret, p=p):
            fc, tg, length = vis[f]
            xy = fc + tg * length * rng.uniform(-0.45, 0.45)
            pts.append((xy[0], xy[1], rng.uniform(0.15, 0.85) * min(h, 3.0)))
            owner.append(i)
    if not pts:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    return np.asarray(pts, dtype=np.float64), np.asarray(owner, dtype=np.int64)


def simulate_scan(scene: SceneLike, t_s: float, ego_from_radar: Transform, weather: str,
                  rng: np.random.Generator, sensor_id: str, stamp_ns: int, seq: int,
                  params: RadarParams = RadarParams()) -> RadarSimResult:
    """Simulate one radar scan at time ``t_s``.

    Args:
        scene: the world; t_s: scan time [s].
        ego_from_radar: mounting of the radar (sensor x = boresight).
        weather: ``clear | rain | fog | night`` (only rain matters, slightly).
        rng: random stream of this sensor.
        sensor_id, stamp_ns, seq: written into the message as given.
    Returns:
        the scan (returns sorted by range) and the truth per return.
    """
    if weather not in WEATHERS:
        raise ValueError(f"unknown weather {weather!r} (allowed: {', '.join(WEATHERS)})")
    ego = scene.ego_state(t_s)
    objs = objects_in_ego(scene.objects_world(t_s), ego)
    mount = ego_from_radar.translation
    R = ego_from_radar.rotation
    v_sensor = _sensor_velocity_ego(ego.speed, ego.yaw_rate, mount)

    # Objects whose footprint reaches into range and whose centre direction is near the FOV.
    rel = objs.boxes[:, :3] - mount
    rel_s = rel @ R  # sensor frame: R^T rel
    dist = np.linalg.norm(rel_s[:, :2], axis=1)
    half_diag = 0.5 * np.hypot(objs.boxes[:, 3], objs.boxes[:, 4])
    az_c = np.arctan2(rel_s[:, 1], rel_s[:, 0])
    ang_half = np.arcsin(np.clip(half_diag / np.maximum(dist, 1e-6), 0.0, 1.0))
    near = (dist - half_diag < params.max_range_m) & (np.abs(az_c) - ang_half < np.radians(params.fov_az_deg))
    idx = np.flatnonzero(near)
    cand, owner_local = _face_samples(objs.boxes[idx], objs.labels[idx], mount[:2], params, rng)
    owner = idx[owner_local]

    # Static clutter at random positions in the FOV (road surface, kerbs, signs), 0.05-1 m high.
    n_cl = int(rng.poisson(params.clutter_rate))
    cl_r = rng.uniform(3.0, 80.0, n_cl)
    cl_az = rng.uniform(-1.0, 1.0, n_cl) * np.radians(params.fov_az_deg)
    cl_dir = np.column_stack([np.cos(cl_az), np.sin(cl_az), np.zeros(n_cl)]) @ R.T
    cl_pts = np.column_stack([mount[:2] + cl_dir[:, :2] * cl_r[:, None], rng.uniform(0.05, 1.0, n_cl)])

    all_pts = np.vstack([cand, cl_pts])
    to_pt = all_pts - mount
    d_true = np.linalg.norm(to_pt, axis=1)
    dirs = to_pt / np.maximum(d_true, 1e-9)[:, None]
    origins = np.repeat(mount[None, :], len(all_pts), axis=0)
    boxes_near = np.ascontiguousarray(objs.boxes[idx]) if len(idx) else np.zeros((0, 7))
    hit_r, hit_obj, _ = cast_rays(np.ascontiguousarray(origins), np.ascontiguousarray(dirs), boxes_near,
                                  params.max_range_m + 5.0)
    n_c = len(cand)
    # An object candidate survives when the first surface hit is that object (the return sits there);
    # clutter survives when nothing (object or ground) is hit in front of it.
    ok_obj = (hit_obj[:n_c] >= 0) & (idx[np.maximum(hit_obj[:n_c], 0)] == owner)
    ok_cl = hit_r[n_c:] >= d_true[n_c:] - 0.3
    rng_true = np.concatenate([np.where(ok_obj, hit_r[:n_c], np.inf), np.where(ok_cl, d_true[n_c:], np.inf)])
    keep = np.isfinite(rng_true)

    # Truth per candidate: source and velocity.
    src = np.concatenate([objs.track_ids[owner], np.full(n_cl, SOURCE_CLUTTER)]).astype(np.int32)
    v_pt = np.zeros((len(all_pts), 3))
    v_pt[:n_c, :2] = objs.velocities[owner]
    rv_true = np.einsum("ij,ij->i", v_pt - v_sensor, dirs)

    # Sensor-frame angles and detection.
    d_s = dirs @ R
    az = np.arctan2(d_s[:, 1], d_s[:, 0])
    el = np.arcsin(np.clip(d_s[:, 2], -1.0, 1.0))
    in_fov = (np.abs(az) <= np.radians(params.fov_az_deg)) & (np.abs(el) <= np.radians(params.fov_el_deg))
    keep &= in_fov & (rng_true <= params.max_range_m)
    rcs_mean = np.concatenate([[CLASS_RCS_DBSM.get(int(lb), -10.0) for lb in objs.labels[owner]],
                               rng.uniform(-15.0, 0.0, n_cl)])
    rcs = rcs_mean + rng.normal(0.0, params.rcs_noise_db, len(all_pts))
    r_safe = np.where(np.isfinite(rng_true), np.maximum(rng_true, 1.0), 1.0)
    rain_loss = 2.0 * RAIN_DB_PER_KM * r_safe / 1000.0 if weather == "rain" else 0.0
    snr = (rcs - 40.0 * np.log10(r_safe) + params.snr_offset_db
           - params.edge_loss_db * (az / np.radians(params.fov_az_deg)) ** 2 - rain_loss)
    p_det = 1.0 / (1.0 + np.exp(-(snr - params.snr_threshold_db) / 1.5))
    keep &= rng.random(len(all_pts)) < p_det

    # False alarms: noise peaks anywhere in the field of view.
    n_fa = int(rng.poisson(params.false_alarm_rate))
    fa_r = rng.uniform(1.0, params.max_range_m, n_fa)
    fa_az = rng.uniform(-1.0, 1.0, n_fa) * np.radians(params.fov_az_deg)
    fa_el = rng.uniform(-1.0, 1.0, n_fa) * np.radians(params.fov_el_deg)
    fa_rv = rng.uniform(-40.0, 40.0, n_fa)
    fa_rcs = rng.uniform(-20.0, -5.0, n_fa)

    k = np.flatnonzero(keep)
    r_meas = np.concatenate([rng_true[k] + rng.normal(0.0, params.range_noise_m, len(k)), fa_r])
    az_meas = np.concatenate([az[k] + rng.normal(0.0, np.radians(params.azimuth_noise_deg), len(k)), fa_az])
    el_meas = np.concatenate([el[k] + rng.normal(0.0, np.radians(params.elevation_noise_deg), len(k)), fa_el])
    rv_meas = np.concatenate([rv_true[k] + rng.normal(0.0, params.velocity_noise_mps, len(k)), fa_rv])
    rcs_out = np.concatenate([rcs[k], fa_rcs])
    source = np.concatenate([src[k], np.full(n_fa, SOURCE_FALSE_ALARM, dtype=np.int32)])
    rv_truth = np.concatenate([rv_true[k], np.full(n_fa, np.nan)])
    order = np.argsort(r_meas, kind="stable")
    r_meas = np.maximum(r_meas, 0.1)
    scan = RadarScan(
        sensor_id=sensor_id, stamp_ns=int(stamp_ns), seq=int(seq),
        range_m=r_meas[order].astype(np.float32), azimuth=az_meas[order].astype(np.float32),
        elevation=el_meas[order].astype(np.float32), radial_velocity=rv_meas[order].astype(np.float32),
        rcs=rcs_out[order].astype(np.float32),
    )
    return RadarSimResult(scan, source[order].astype(np.int32), rv_truth[order])
