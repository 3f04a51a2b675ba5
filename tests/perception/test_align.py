"""Alignment to one instant on a simulated drive at 19 m/s through a curve (yaw rate 0.077 rad/s).

Every ego motion used here comes from :class:`EgoMotion` fed with the simulated IMU (200 Hz, with bias and
noise) and wheel-speed (50 Hz, with scale error) messages, causally: only messages stamped up to the
frame instant. The scene's truth is used only to judge the result:

- deskew: a flat wall across the road behind the ego straddles the LiDAR's seam (the first and the last
  columns of a sweep look backwards, 0.1 s apart), the case where rolling distortion is largest; plus the
  per-point error of every static point of the sweep against its true position at the stamp;
- accumulation of 5 sweeps: the wall still stacks flat, a time-lag channel is present, and moving cars
  leave a trail whose length gives back their ground-truth speed;
- camera projection at the exposure time (cameras at 15 Hz, LiDAR at 10 Hz: offsets 0 and +-33 ms): pixel
  error of each LiDAR point on an object against where that surface point truly is in the image;
- radar: over-ground radial velocity of static returns ~0 and of moving cars equal to the truth; older
  scans moved to the instant land where the true ego motion puts them.

Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from calibration.transform import Transform
from drivers.messages import ImuSample, LidarSweep
from drivers.sim import SimConfig, default_rig
from drivers.sim_imu import ImuSimulator, WheelSpeedSimulator
from drivers.sim_lidar import LidarSimResult, objects_in_ego, simulate_sweep
from drivers.sim_radar import SOURCE_CLUTTER, SOURCE_FALSE_ALARM, simulate_scan
from drivers.sim_scene import LABEL_WALL, EgoState, Scene, SceneObjects
from perception.align import (RadarAccumulator, SweepAccumulator, camera_from_ego_at, deskew_sweep,
                              deskew_sweep_reference, radar_to_instant, raw_sweep_in_ego)
from perception.egomotion import EgoMotion

# Seed 31 (4 s drive, top speed 20 m/s): from 1.7 s to 3.5 s the ego drives 19.0 m/s through a left-hand
# curve of ~250 m radius.
SEED, DURATION_S, MAX_SPEED = 31, 4.0, 20.0
FRAMES_S = (2.1, 2.2, 2.3, 2.4, 2.5)  # LiDAR sweep end times [s]
MOTION_FROM_S = 1.0  # IMU and wheel-speed messages start here
RIG = default_rig(2)
LIDAR = RIG.ego_from("lidar_top")
RADAR = RIG.ego_from("radar_front")
T0_NS = SimConfig().start_stamp_ns
CAMERA_RATE_HZ = 15.0
RADAR_RATE_HZ = 13.0


def _ns(t_s: float) -> int:
    return T0_NS + int(round(t_s * 1e9))


class _CrossWallScene:
    """The scene plus one flat wall (0.4 m thick, 30 m wide, 3 m high) standing across the road ``behind_m``
    metres behind where the ego is at ``t_s``: seen by the LiDAR's first and last columns."""

    def __init__(self, scene: Scene, t_s: float, behind_m: float):
        self.scene = scene
        x, y, heading, _ = scene.road.to_world(scene.ego_s(t_s) - behind_m, 0.0)
        self.wall = np.array([float(x), float(y), 1.5, 0.4, 30.0, 3.0, float(heading)])
        self.wall_track = len(scene.objects_world(0.0))

    def ego_state(self, t_s: float) -> EgoState:
        return self.scene.ego_state(t_s)

    def objects_world(self, t_s: float) -> SceneObjects:
        o = self.scene.objects_world(t_s)
        return SceneObjects(
            np.vstack([o.boxes, self.wall]), np.vstack([o.velocities, np.zeros((1, 2))]),
            np.append(o.labels, LABEL_WALL).astype(np.int32),
            np.append(o.track_ids, self.wall_track).astype(np.int32),
            np.append(o.reflectivity, 0.6).astype(np.float32),
            np.vstack([o.color, [[170, 150, 130]]]).astype(np.uint8), np.append(o.siren, 0).astype(np.int8))


@dataclass
class Drive:
    scene: Scene
    walled: _CrossWallScene
    motion_messages: list  # ImuSample and VehicleSpeed in stamp order
    sweeps: list[tuple[LidarSimResult, LidarSweep]]  # the walled scene, one per FRAMES_S

    def motion_until(self, t_s: float) -> EgoMotion:
        """EgoMotion fed with every IMU and speed message stamped at or before ``t_s``."""
        em = EgoMotion(RIG.ego_from("imu"))
        for m in self.motion_messages:
            if m.stamp_ns > _ns(t_s):
                break
            if isinstance(m, ImuSample):
                em.add_imu(m)
            else:
                em.add_speed(m)
        return em


def _sweep(scene, t_s: float, seed: int) -> tuple[LidarSimResult, LidarSweep]:
    res = simulate_sweep(scene, t_s, 0.1, LIDAR, "clear", np.random.default_rng(seed))
    return res, LidarSweep("lidar_top", _ns(t_s), int(round(t_s * 10)), res.points, res.time_offset, res.ring)


@pytest.fixture(scope="module")
def drive() -> Drive:
    scene = Scene(SEED, DURATION_S, max_speed=MAX_SPEED)
    imu = ImuSimulator(scene, RIG.ego_from("imu"), 200.0, np.random.default_rng(1))
    wheel = WheelSpeedSimulator(scene, np.random.default_rng(2))
    t_imu = np.arange(int(MOTION_FROM_S * 200), int(2.7 * 200)) / 200.0
    msgs: list = imu.samples(t_imu, [_ns(t) for t in t_imu], "imu", 0)
    t_speed = np.arange(int(MOTION_FROM_S * 50), int(2.7 * 50)) / 50.0
    msgs += [wheel.message(float(t), _ns(t), "vehicle_speed", k) for k, t in enumerate(t_speed)]
    msgs.sort(key=lambda m: m.stamp_ns)
    walled = _CrossWallScene(scene, FRAMES_S[0] - 0.1, behind_m=12.0)
    return Drive(scene, walled, msgs, [_sweep(walled, t, 10 + k) for k, t in enumerate(FRAMES_S)])


# ---------------------------------------------------------------------------------------------- truth helpers
def _plane_rms(p: np.ndarray) -> float:
    """RMS distance [m] of (N, 3) points to their least-squares plane."""
    c = p - p.mean(axis=0)
    return float(np.linalg.svd(c, full_matrices=False)[1][-1] / np.sqrt(len(p)))


def _track_of_points(res: LidarSimResult) -> np.ndarray:
    """(N,) track id of the object each point lies on, -1 for the ground."""
    return np.where(res.hit_object >= 0, res.objects.track_ids[np.maximum(res.hit_object, 0)], -1)


def _true_points_at(scene, res: LidarSimResult, t_target_s: float) -> np.ndarray:
    """(N, 3) [m] where each point's surface spot truly is at ``t_target_s``, in the ego frame then.

    A point was measured at its own firing time from the true ego pose then; static surfaces (and the
    ground) stay put, a point on a moving object is carried rigidly with that object's box. Object poses
    during the sweep are interpolated between its first and last column, as the simulator does."""
    pe = LIDAR.apply(res.points[:, :3].astype(np.float64))
    tau = res.time_offset.astype(np.float64)
    offsets, column = np.unique(res.time_offset, return_inverse=True)
    poses = np.array([(e.x, e.y, e.yaw) for e in (scene.ego_state(res.t_end_s + float(o)) for o in offsets)])
    ex, ey, eyaw = poses[column].T
    c, s = np.cos(eyaw), np.sin(eyaw)
    world = np.column_stack([ex + c * pe[:, 0] - s * pe[:, 1], ey + s * pe[:, 0] + c * pe[:, 1], pe[:, 2]])
    track = _track_of_points(res)
    on = track >= 0
    if on.any():
        first = res.t_end_s - 0.1 * (1 - 1 / 1800)  # time of the sweep's first column
        objs0, objs1, objs_t = (scene.objects_world(t) for t in (first, res.t_end_s, t_target_s))
        for o in (objs0, objs1, objs_t):
            assert np.array_equal(o.track_ids, np.arange(len(o)))  # rows are indexed by track id
        k = track[on]
        w = ((res.t_end_s + tau[on]) - first) / (res.t_end_s - first)
        b0, b1, bt = objs0.boxes[k], objs1.boxes[k], objs_t.boxes[k]
        cx = b0[:, 0] + w * (b1[:, 0] - b0[:, 0])
        cy = b0[:, 1] + w * (b1[:, 1] - b0[:, 1])
        yaw = b0[:, 6] + w * ((b1[:, 6] - b0[:, 6] + np.pi) % (2 * np.pi) - np.pi)
        dx, dy = world[on, 0] - cx, world[on, 1] - cy
        lx, ly = np.cos(yaw) * dx + np.sin(yaw) * dy, -np.sin(yaw) * dx + np.cos(yaw) * dy
        c1, s1 = np.cos(bt[:, 6]), np.sin(bt[:, 6])
        world[on, 0] = bt[:, 0] + c1 * lx - s1 * ly
        world[on, 1] = bt[:, 1] + s1 * lx + c1 * ly
    es = scene.ego_state(t_target_s)
    c, s = np.cos(es.yaw), np.sin(es.yaw)
    dx, dy = world[:, 0] - es.x, world[:, 1] - es.y
    return np.column_stack([c * dx + s * dy, -s * dx + c * dy, world[:, 2]])


def _static_tracks(scene, t_s: float) -> np.ndarray:
    """Track ids of objects that do not move (walls, buildings, poles, parked cars, standing people)."""
    objs = scene.objects_world(t_s)
    return objs.track_ids[np.hypot(objs.velocities[:, 0], objs.velocities[:, 1]) < 0.05]


# ---------------------------------------------------------------------------------------------- deskew
def test_simulated_drive_is_fast_and_turning_and_ego_motion_sees_it(drive):
    for t in FRAMES_S:
        truth = drive.scene.ego_state(t)
        assert truth.speed > 18.0 and abs(truth.yaw_rate) > 0.05, t
        pose = drive.motion_until(t).pose_at(_ns(t))
        assert pose.speed == pytest.approx(truth.speed, abs=0.15)
        assert pose.angular_velocity[2] == pytest.approx(truth.yaw_rate, abs=0.01)


def test_deskew_flattens_a_wall_seen_across_the_seam_at_19_mps_in_a_curve(drive):
    ratios = []
    for t, (res, sweep) in zip(FRAMES_S, drive.sweeps):
        wall = _track_of_points(res) == drive.walled.wall_track
        assert wall.sum() > 2000
        # The wall is seen by both ends of the sweep, 0.1 s apart.
        tau = res.time_offset[wall]
        assert tau.min() < -0.09 and tau.max() > -0.01
        before = _plane_rms(raw_sweep_in_ego(sweep, LIDAR)[wall, :3])
        after = _plane_rms(deskew_sweep(sweep, LIDAR, drive.motion_until(t))[wall, :3])
        ratios.append(before / after)
        print(f"wall plane RMS at t={t:.1f} s ({wall.sum()} points): raw {before * 100:.1f} cm, "
              f"deskewed {after * 100:.2f} cm, ratio {before / after:.0f}x")
        assert after < 0.025  # the 2 cm range noise of the sensor
        assert before > 10 * after


def test_deskewed_static_points_sit_where_they_truly_are_at_the_stamp(drive):
    t = FRAMES_S[2]
    res, sweep = drive.sweeps[2]
    static = np.isin(_track_of_points(res), np.append(_static_tracks(drive.walled, t), -1))  # ground too
    truth = _true_points_at(drive.walled, res, t)[static]
    err_after = np.linalg.norm(deskew_sweep(sweep, LIDAR, drive.motion_until(t))[static, :3] - truth, axis=1)
    err_before = np.linalg.norm(raw_sweep_in_ego(sweep, LIDAR)[static, :3] - truth, axis=1)
    print(f"static points ({static.sum()}) vs truth at the stamp: raw median {np.median(err_before) * 100:.1f} cm "
          f"p99 {np.percentile(err_before, 99) * 100:.1f} cm; deskewed median {np.median(err_after) * 1000:.1f} mm "
          f"p99 {np.percentile(err_after, 99) * 1000:.1f} mm")
    assert np.median(err_before) > 0.5
    assert np.median(err_after) < 0.01 and np.percentile(err_after, 99) < 0.03


def test_deskew_kernel_equals_its_numpy_reference(drive):
    t = FRAMES_S[2]
    _, sweep = drive.sweeps[2]
    motion = drive.motion_until(t)
    fast = deskew_sweep(sweep, LIDAR, motion)
    ref = deskew_sweep_reference(sweep, LIDAR, motion)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


def test_vectorised_poses_equal_one_at_a_time_poses(drive):
    t = FRAMES_S[2]
    motion = drive.motion_until(t)
    ts = np.array([_ns(t) - 100_000_000, _ns(t) - 33_333_333, _ns(t), _ns(t) + 50_000_000], np.int64)
    R, p = motion.poses_at(ts)
    for k, tk in enumerate(ts):
        pose = motion.pose_at(int(tk))
        np.testing.assert_allclose(R[k], pose.rotation, atol=1e-12)
        np.testing.assert_allclose(p[k], pose.translation, atol=1e-9)


def test_deskew_refuses_the_transform_of_another_sensor(drive):
    res, sweep = drive.sweeps[0]
    with pytest.raises(ValueError, match="ego_from_lidar_top.*ego_from_radar_front"):
        deskew_sweep(sweep, RADAR, drive.motion_until(FRAMES_S[0]))


def test_deskew_outside_the_ego_motion_history_is_a_clear_error(drive):
    res, sweep = drive.sweeps[0]
    em = EgoMotion(RIG.ego_from("imu"))
    for m in drive.motion_messages:
        if isinstance(m, ImuSample) and m.stamp_ns >= _ns(FRAMES_S[0] - 0.05):  # starts mid-sweep
            em.add_imu(m)
    with pytest.raises(ValueError, match="outside pose history"):
        deskew_sweep(sweep, LIDAR, em)


# ---------------------------------------------------------------------------------------------- accumulation
@pytest.fixture(scope="module")
def accumulated(drive):
    """5 deskewed sweeps (each with the motion known at its own stamp) in the ego frame of the last one."""
    acc = SweepAccumulator(n_sweeps=5, max_age_s=0.45)
    for t, (res, sweep) in zip(FRAMES_S, drive.sweeps):
        acc.add(sweep.stamp_ns, deskew_sweep(sweep, LIDAR, drive.motion_until(t)))
    motion = drive.motion_until(FRAMES_S[-1])
    return acc.accumulate(_ns(FRAMES_S[-1]), motion), motion


def test_accumulated_sweeps_carry_a_time_lag_channel(drive, accumulated):
    points, _ = accumulated
    assert points.shape[1] == 5 and points.dtype == np.float32
    lags, counts = np.unique(np.round(points[:, 4], 4), return_counts=True)
    assert lags.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert counts.tolist() == [len(s) for _, s in reversed(drive.sweeps)]


def test_sweep_accumulator_keeps_only_the_last_sweeps_within_their_age(drive):
    motion = drive.motion_until(FRAMES_S[-1])
    acc = SweepAccumulator(n_sweeps=3, max_age_s=0.25)
    for t, (_, sweep) in zip(FRAMES_S, drive.sweeps):
        acc.add(sweep.stamp_ns, raw_sweep_in_ego(sweep, LIDAR))
    lags = np.unique(np.round(acc.accumulate(_ns(FRAMES_S[-1]), motion)[:, 4], 4)).tolist()
    assert lags == pytest.approx([0.0, 0.1, 0.2])  # n_sweeps = 3 of the 5 added
    # 0.06 s later the oldest of them is 0.26 s old, past max_age.
    assert np.unique(np.round(acc.accumulate(_ns(FRAMES_S[-1] + 0.06), motion)[:, 4], 4)).tolist() == \
        pytest.approx([0.06, 0.16])
    assert len(acc.accumulate(_ns(FRAMES_S[0]), motion)) == 0
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        acc.add(_ns(FRAMES_S[-1]), np.zeros((10, 3), np.float32))


def test_static_wall_stacks_flat_over_five_sweeps(drive, accumulated):
    points, _ = accumulated
    track = np.concatenate([_track_of_points(r) for r, _ in drive.sweeps])
    wall = track == drive.walled.wall_track
    stacked = _plane_rms(points[wall, :3])
    # Without moving old sweeps to the current instant, the wall would be smeared over the 7.6 m driven.
    no_motion = np.concatenate([deskew_sweep(s, LIDAR, drive.motion_until(t)) for t, (_, s) in
                                zip(FRAMES_S, drive.sweeps)])
    smeared = _plane_rms(no_motion[wall, :3])
    single = _plane_rms(points[wall & (points[:, 4] == 0), :3])
    print(f"wall over 5 sweeps ({wall.sum()} points): plane RMS {stacked * 100:.2f} cm (last sweep alone "
          f"{single * 100:.2f} cm); without ego-motion compensation {smeared * 100:.1f} cm")
    assert stacked < 0.025 and stacked < 1.2 * single
    assert smeared > 10 * stacked


def _trail_speed(points: np.ndarray, box: np.ndarray, direction: np.ndarray) -> tuple[float, list[float]]:
    """Speed [m/s] along ``direction`` from a trail: for each lag, the shift along ``direction`` that puts
    most of that lag's points inside the object's current ``box`` (centre of the best plateau), then the
    slope of shift over lag. Also returns the best inside fractions per lag."""
    x, y, _, length, width, _, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    shifts = np.arange(-12.0, 12.0, 0.02)
    lags, best, fractions = [], [], []
    for lag in np.unique(points[:, 4]):
        q = points[points[:, 4] == lag, :2].astype(np.float64)
        q = q[:: max(1, len(q) // 400)]  # a few hundred points per lag are plenty (and keep memory small)
        moved = q[None, :, :] + shifts[:, None, None] * direction - [x, y]
        lx = c * moved[..., 0] + s * moved[..., 1]
        ly = -s * moved[..., 0] + c * moved[..., 1]
        inside = ((np.abs(lx) <= length / 2 + 0.1) & (np.abs(ly) <= width / 2 + 0.1)).mean(axis=1)
        lags.append(float(lag))
        best.append(float(shifts[inside >= inside.max() - 1e-9].mean()))
        fractions.append(float(inside.max()))
    return float(np.polyfit(lags, best, 1)[0]), fractions


def test_static_points_of_all_sweeps_sit_where_they_truly_are_now(drive, accumulated):
    points, _ = accumulated
    t = FRAMES_S[-1]
    track = np.concatenate([_track_of_points(r) for r, _ in drive.sweeps])
    truth = np.concatenate([_true_points_at(drive.walled, r, t) for r, _ in drive.sweeps])
    static = np.isin(track, np.append(_static_tracks(drive.walled, t), -1))
    err = np.linalg.norm(points[:, :3] - truth, axis=1)
    for lag in np.unique(points[:, 4]):
        e = err[static & (points[:, 4] == lag)]
        print(f"static points {lag:.1f} s old ({len(e)}): error vs truth now median {np.median(e) * 1000:.1f} mm, "
              f"p99 {np.percentile(e, 99) * 1000:.1f} mm")
        assert np.median(e) < 0.02 and np.percentile(e, 99) < 0.06


def test_moving_cars_leave_a_trail_at_their_true_speed(drive, accumulated):
    points, _ = accumulated
    t = FRAMES_S[-1]
    track = np.concatenate([_track_of_points(r) for r, _ in drive.sweeps])
    # Age of each point: its sweep's lag plus how early in the sweep it was measured.
    age = points[:, 4].astype(np.float64) - np.concatenate([r.time_offset for r, _ in drive.sweeps])
    truth_now = np.concatenate([_true_points_at(drive.walled, r, t) for r, _ in drive.sweeps])
    objs = objects_in_ego(drive.walled.objects_world(t), drive.walled.ego_state(t))
    checked = 0
    for k in np.unique(track[track >= 0]):
        j = int(np.flatnonzero(objs.track_ids == k)[0])
        v = objs.velocities[j]
        speed = float(np.hypot(*v))
        sel = track == k
        lag_counts = np.unique(points[sel, 4], return_counts=True)[1]
        if speed < 3.0 or len(lag_counts) < 5 or lag_counts.min() < 30:
            continue
        # 1. The trail's length over its lags gives back the speed.
        est, inside = _trail_speed(points[sel], objs.boxes[j], v / speed)
        # 2. Each trail point, moved on by the object's velocity for its age, lands on that surface spot now.
        ahead = np.linalg.norm(points[sel, :2] + np.outer(age[sel], v) - truth_now[sel, :2], axis=1)
        left = np.linalg.norm(points[sel, :2] - truth_now[sel, :2], axis=1)
        print(f"track {k} (label {objs.labels[j]}): true speed {speed:.2f} m/s, from its trail {est:.2f} m/s; "
              f"trail points moved on by velocity * age: median {np.median(ahead):.2f} m from the object now "
              f"(left where they are: {np.median(left):.2f} m); {sel.sum()} points")
        assert est == pytest.approx(speed, rel=0.12)
        assert np.median(ahead) < 0.15 and np.median(left) > 10 * np.median(ahead)
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------------------------- cameras
def _exposures_near(t_s: float) -> list[float]:
    """Camera exposure times [s] (15 Hz grid from 0) within 40 ms of ``t_s``."""
    k = np.arange(int((t_s - 0.1) * CAMERA_RATE_HZ), int((t_s + 0.1) * CAMERA_RATE_HZ) + 2)
    return [float(x) for x in k / CAMERA_RATE_HZ if abs(x - t_s) <= 0.04]


def test_lidar_projected_at_the_camera_exposure_stays_aligned(drive):
    """Pixel error of LiDAR points on objects against where those surface points truly are in the image.

    naive: raw sweep, static rig (as if camera and LiDAR saw the same instant);
    deskew only: deskewed points, static rig; aligned: deskewed points and camera_from_ego_at."""
    scene = drive.scene  # without the test wall: only the scene's own objects
    names = ("naive", "deskew only", "aligned")
    errors: dict[tuple[str, int, bool], list[np.ndarray]] = {}  # (method, exposure - frame [ms], static)
    inside_aligned, inside_naive = [], []
    cases = 0
    for t_frame in (2.2, 2.3, 2.4):
        res, sweep = _sweep(scene, t_frame, 20)
        motion = drive.motion_until(t_frame)  # causal: a later exposure is extrapolated
        deskewed = deskew_sweep(sweep, LIDAR, motion)
        raw = raw_sweep_in_ego(sweep, LIDAR)
        track = _track_of_points(res)
        on_obj = track >= 0
        static = np.isin(track, _static_tracks(scene, t_frame))
        for t_cam in _exposures_near(t_frame):
            dt_ms = int(round((t_cam - t_frame) * 1000))
            truth = _true_points_at(scene, res, t_cam)
            for cam_id in ("cam_front", "cam_rear"):
                cam = RIG[cam_id]
                model, camera_from_ego = cam.camera, cam.ego_from_sensor.inverse()
                uv_true, front = model.project(camera_from_ego.apply(truth))
                seen = on_obj & front & model.in_image(uv_true)
                aligned_T = camera_from_ego_at(cam.ego_from_sensor, motion, _ns(t_frame), _ns(t_cam))
                for name, pts, T in (("naive", raw, camera_from_ego), ("deskew only", deskewed, camera_from_ego),
                                     ("aligned", deskewed, aligned_T)):
                    uv, ok = model.project(T.apply(pts[:, :3].astype(np.float64)))
                    err = np.where(ok, np.linalg.norm(uv - uv_true, axis=1), np.inf)
                    for is_static in (True, False):
                        errors.setdefault((name, dt_ms, is_static), []).append(err[seen & (static == is_static)])
                # Secondary measure: the point lands inside its object's projected box silhouette.
                gt = objects_in_ego(scene.objects_world(t_cam), scene.ego_state(t_cam))
                for name, pts, T, out in (("naive", raw, camera_from_ego, inside_naive),
                                          ("aligned", deskewed, aligned_T, inside_aligned)):
                    out.append(_inside_silhouette(model, camera_from_ego, T, pts, track, seen & static, gt))
                cases += 1
    assert cases == 8  # exposures 0 ms (2.2 s, 2.4 s), -33 and +33 ms (2.3 s) from the frame; 2 cameras
    def median(name: str, static: bool, dts=(-33, 0, 33)) -> float:
        return float(np.median(np.concatenate([e for dt in dts for e in errors[(name, dt, static)]])))

    print("median pixel error [px] of LiDAR points on objects (front and rear camera together):")
    for dt in (-33, 0, 33):
        print(f"  exposure {dt:+d} ms: " + "; ".join(
            f"{n} static {median(n, True, (dt,)):.2f} moving {median(n, False, (dt,)):.1f}" for n in names))
    print("  all exposures: " + "; ".join(f"{n} static {median(n, True):.2f} moving {median(n, False):.1f}"
                                          for n in names))
    fin, fan = np.concatenate(inside_naive).mean(), np.concatenate(inside_aligned).mean()
    print(f"static object points inside their projected box: naive {fin:.3f}, aligned {fan:.3f}")
    for dt in (-33, 0, 33):
        assert median("naive", True, (dt,)) > 1.0
        assert median("aligned", True, (dt,)) < 0.3
    for dt in (-33, 33):  # the exposure offset is what camera_from_ego_at adds on top of the deskew
        assert median("aligned", True, (dt,)) < 0.5 * median("deskew only", True, (dt,))
    assert median("aligned", True) < 0.05 * median("naive", True)
    # Moving objects keep their own motion between measurement and exposure (no object velocity here), yet
    # removing the ego motion still helps.
    assert median("aligned", False) < median("naive", False)
    assert fan > 0.99 and fan > fin


def _inside_silhouette(model, camera_from_ego: Transform, T: Transform, pts: np.ndarray, track: np.ndarray,
                       use: np.ndarray, gt: SceneObjects) -> np.ndarray:
    """(K,) bool for the K points in ``use``: projected with ``T``, inside the convex hull of their object's
    ground-truth box projected with the rig (``gt`` in the ego frame at the exposure)."""
    out = []
    for k in np.unique(track[use]):
        sel = use & (track == k)
        edges = camera_from_ego.apply(_box_edge_points(gt.boxes[int(np.flatnonzero(gt.track_ids == k)[0])]))
        if edges[:, 2].min() < 0.5:  # box reaches behind the camera: its silhouette is unbounded
            continue
        hull = cv2.convexHull(model.project(edges)[0].astype(np.float32))
        uv, ok = model.project(T.apply(pts[sel, :3].astype(np.float64)))
        out.append(np.array([ok_i and cv2.pointPolygonTest(hull, (float(u), float(v)), False) >= 0
                             for (u, v), ok_i in zip(uv, ok)], dtype=bool))
    return np.concatenate(out) if out else np.zeros(0, bool)


def _box_edge_points(box: np.ndarray, per_edge: int = 16) -> np.ndarray:
    """(12 * per_edge, 3) points along the 12 edges of an upright box (x y z l w h yaw), so the projected
    silhouette follows the lens distortion."""
    x, y, z, length, width, height, yaw = box
    half = np.array([length, width, height]) / 2
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    f = np.linspace(0.0, 1.0, per_edge)[:, None]
    pts = [corners[i] * (1 - f) + corners[j] * f for i in range(8) for j in range(i + 1, 8)
           if np.count_nonzero(corners[i] != corners[j]) == 1]
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return np.vstack(pts) @ R.T + [x, y, z]


# ---------------------------------------------------------------------------------------------- radar
@pytest.fixture(scope="module")
def radar_scans(drive):
    """Radar scans (13 Hz grid) from 1.9 s to 2.5 s of the drive, with the truth behind each return."""
    rng = np.random.default_rng(7)
    ks = range(int(np.ceil(1.9 * RADAR_RATE_HZ)), int(2.5 * RADAR_RATE_HZ) + 1)
    return [(k / RADAR_RATE_HZ, simulate_scan(drive.scene, k / RADAR_RATE_HZ, RADAR, "clear", rng, "radar_front",
                                              _ns(k / RADAR_RATE_HZ), k)) for k in ks]


def test_radar_over_ground_velocity_is_zero_for_static_returns_and_true_for_cars(drive, radar_scans):
    motion = drive.motion_until(FRAMES_S[-1])
    static_v, static_raw, moving_err = [], [], []
    for t, sim in radar_scans:
        aligned = radar_to_instant(sim.scan, RADAR, motion, sim.scan.stamp_ns)
        objs = objects_in_ego(drive.scene.objects_world(t), drive.scene.ego_state(t))
        u = RADAR.apply_vectors(sim.scan.xyz / sim.scan.range_m[:, None])  # measured line of sight, ego
        for i, src in enumerate(sim.source_track_id):
            if src == SOURCE_FALSE_ALARM:
                continue
            v = np.zeros(2) if src == SOURCE_CLUTTER else objs.velocities[objs.track_ids == src][0]
            if np.hypot(*v) < 0.05:
                static_v.append(aligned.v_radial_ground[i])
                static_raw.append(aligned.v_radial_measured[i])
            else:
                moving_err.append(aligned.v_radial_ground[i] - float(v @ u[i, :2]))
    static_v, static_raw, moving_err = map(np.abs, map(np.asarray, (static_v, static_raw, moving_err)))
    print(f"radar static returns ({len(static_v)}): |measured Doppler| median {np.median(static_raw):.1f} m/s; "
          f"|over-ground radial velocity| median {np.median(static_v):.3f} p95 {np.percentile(static_v, 95):.3f} "
          f"max {static_v.max():.3f} m/s")
    print(f"radar moving returns ({len(moving_err)}): |error vs true radial velocity| median "
          f"{np.median(moving_err):.3f} p95 {np.percentile(moving_err, 95):.3f} max {moving_err.max():.3f} m/s")
    assert len(static_v) > 50 and len(moving_err) > 30
    assert np.median(static_raw) > 10.0  # the raw Doppler of the static world is the ego speed
    # Noise: Doppler 0.1 m/s, azimuth 1 deg (19 m/s * sin(az) * 0.017), wheel-speed scale 0.3 %.
    assert np.median(static_v) < 0.15 and np.percentile(static_v, 95) < 0.4
    assert np.median(moving_err) < 0.15 and np.percentile(moving_err, 95) < 0.4


def test_radar_accumulator_moves_older_scans_onto_their_static_objects(drive, radar_scans):
    t_inst = FRAMES_S[-1]
    motion = drive.motion_until(t_inst)
    acc = RadarAccumulator(max_age_s=0.3)
    for _, sim in reversed(radar_scans):  # any order: several radars interleave
        acc.add(sim.scan, RADAR)
    points = acc.accumulate(_ns(t_inst), motion)
    kept = sorted((sim for _, sim in radar_scans if 0 <= _ns(t_inst) - sim.scan.stamp_ns <= 300_000_000),
                  key=lambda sim: sim.scan.stamp_ns)
    assert len(kept) == 4 and len(points) == sum(len(sim.scan) for sim in kept)
    expected_lag = np.concatenate([np.full(len(sim.scan), (_ns(t_inst) - sim.scan.stamp_ns) * 1e-9) for sim in kept])
    assert np.allclose(points.lag, expected_lag, atol=1e-6)
    # Judge against the true ego motion: each return as measured, moved from the true ego pose at its scan
    # to the true ego pose at the instant (the measurement noise is the same on both sides).
    truth, unaligned = [], []
    for sim in kept:
        in_ego = RADAR.apply(sim.scan.xyz.astype(np.float64))
        M = drive.scene.ego_from_ego(t_inst, (sim.scan.stamp_ns - T0_NS) * 1e-9)
        truth.append(np.column_stack([in_ego[:, :2] @ M[:2, :2].T + M[:2, 2], in_ego[:, 2]]))
        unaligned.append(in_ego)
    truth, unaligned = np.concatenate(truth), np.concatenate(unaligned)
    older = points.lag > 0.1
    err = np.linalg.norm(points.xyz - truth, axis=1)[older]
    err_unaligned = np.linalg.norm(unaligned - truth, axis=1)[older]
    print(f"radar returns from scans 0.1-0.3 s old ({older.sum()}): position error at the instant, aligned "
          f"median {np.median(err) * 1000:.1f} mm max {err.max() * 1000:.1f} mm; unaligned median "
          f"{np.median(err_unaligned):.2f} m")
    assert older.sum() >= 30
    # What remains is odometry drift: wheel-speed scale error (0.3 %) and gyro bias over 0.1-0.3 s.
    assert np.median(err) < 0.03 and err.max() < 0.15 and np.median(err_unaligned) > 2.0
    # Scans older than max_age are forgotten (0.15 s later: the motion extrapolates that far).
    t_later = _ns(t_inst + 0.15)
    later = acc.accumulate(t_later, motion)
    still = [sim for sim in kept if t_later - sim.scan.stamp_ns <= 300_000_000]
    assert 0 < len(still) < len(kept) and len(later) == sum(len(sim.scan) for sim in still)
    assert later.lag.max() <= 0.3
    # Adding scans forgets those more than max_age older than the newest, even without a query.
    assert len(acc.accumulate(_ns(radar_scans[0][0]), motion)) == 0


def test_radar_accumulator_gives_what_radar_to_instant_gives_frame_after_frame(drive, radar_scans):
    # Frame after frame, as the frontend calls it: a scan is brought into the ego frame once and only moved
    # afterwards; every query must still equal radar_to_instant on each scan with the motion of that moment.
    acc = RadarAccumulator(max_age_s=0.3)
    pending = list(radar_scans)
    for t in np.arange(2.1, 2.55, 0.1):
        motion = drive.motion_until(t)
        while pending and pending[0][0] <= t:
            acc.add(pending.pop(0)[1].scan, RADAR)
        got = acc.accumulate(_ns(t), motion)
        scans = [sim.scan for t_s, sim in radar_scans if 0 <= _ns(t) - _ns(t_s) <= 300_000_000]
        want = [radar_to_instant(sc, RADAR, motion, _ns(t)) for sc in scans]
        assert len(want) >= 3
        for f in ("xyz", "v_radial_ground", "v_radial_measured", "rcs", "lag"):
            np.testing.assert_allclose(getattr(got, f), np.concatenate([getattr(w, f) for w in want]), rtol=0,
                                       atol=1e-6, err_msg=f)
