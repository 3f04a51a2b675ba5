"""The simulated rig: LiDAR geometry/timing/weather, radar Doppler and clutter, IMU physics and noise,
ground truth, and the orchestrated message stream (determinism, rates, ordering, clock offsets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from calibration.rig import Rig
from calibration.transform import Transform
from calibration.yamlconf import ConfigError, load_yaml_file
from drivers.messages import (AudioChunk, CameraImage, GroundTruthBoxes, ImuSample, LidarSweep, RadarScan,
                              VehicleSpeed)
from drivers.sim_imu import ImuParams, ImuSimulator, WheelSpeedParams, WheelSpeedSimulator
from drivers.sim_lidar import (GT_RANGE_M, HIT_GROUND, HIT_SPURIOUS, LidarParams, ground_truth_boxes,
                               objects_in_ego, simulate_sweep)
from drivers.sim_radar import SOURCE_CLUTTER, SOURCE_FALSE_ALARM, simulate_scan
from drivers.sim_scene import LABEL_WALL, EgoState, Scene, SceneObjects

ROOT = Path(__file__).resolve().parents[2]
LIDAR_MOUNT = Transform("ego", "lidar_top", np.eye(3), (1.0, 0.0, 1.9))
RADAR_MOUNT = Transform("ego", "radar_front", np.eye(3), (3.7, 0.0, 0.5))
IMU_MOUNT = Transform("ego", "imu", np.eye(3), (1.3, 0.0, 0.4))


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene(seed=1, duration_s=30.0)


@pytest.fixture(scope="module")
def straight_scene() -> Scene:
    return Scene(seed=3, duration_s=30.0, curvy=False)


class WallScene:
    """A straight drive at constant speed along world +x with one wall across the road behind the ego."""

    def __init__(self, speed: float, wall_x: float):
        self.speed = speed
        self.wall_x = wall_x

    def ego_state(self, t_s: float) -> EgoState:
        return EgoState(self.speed * t_s, 0.0, 0.0, self.speed, 0.0, 0.0, 0.0)

    def objects_world(self, t_s: float) -> SceneObjects:
        return SceneObjects(
            boxes=np.array([[self.wall_x, 0.0, 1.5, 0.4, 30.0, 3.0, 0.0]]), velocities=np.zeros((1, 2)),
            labels=np.array([LABEL_WALL], dtype=np.int32), track_ids=np.array([0], dtype=np.int32),
            reflectivity=np.array([0.6], dtype=np.float32), color=np.zeros((1, 3), dtype=np.uint8),
            siren=np.zeros(1, dtype=np.int8))


# ---------------------------------------------------------------------------------------------- LiDAR
def test_ground_patch_lies_at_z0_in_ego_frame(scene):
    res = simulate_sweep(scene, 5.0, 0.1, LIDAR_MOUNT, "clear", np.random.default_rng(0))
    ego = LIDAR_MOUNT.apply(res.points[:, :3].astype(np.float64))
    # The ego lane 5-15 m ahead is kept free of traffic, so everything there is road surface.
    patch = (ego[:, 0] > 5.0) & (ego[:, 0] < 15.0) & (np.abs(ego[:, 1]) < 1.5)
    assert patch.sum() > 100
    assert abs(ego[patch, 2].mean()) < 0.01
    assert np.abs(ego[patch, 2]).max() < 0.08  # 2 cm range noise, 4 sigma, at shallow elevation


def test_sweep_has_expected_point_count_rings_and_time_offsets(scene):
    params = LidarParams()
    res = simulate_sweep(scene, 5.0, 0.1, LIDAR_MOUNT, "clear", np.random.default_rng(0), params)
    n_max = params.n_columns * params.n_beams
    assert 15_000 < len(res.points) < n_max
    assert res.points.dtype == np.float32 and res.points.shape[1] == 4
    assert res.ring.dtype == np.uint16 and res.ring.max() <= 31
    assert set(np.unique(res.ring)) >= set(range(0, 20))  # every beam below the horizon sees the road
    assert res.time_offset.min() >= -0.1 and res.time_offset.max() == 0.0
    assert np.all(np.diff(res.time_offset) >= 0)  # points come out in firing order
    r = np.linalg.norm(res.points[:, :3], axis=1)
    assert r.min() >= params.min_range_m - 0.1 and r.max() <= params.max_range_m + 0.1
    assert 0.0 <= res.points[:, 3].min() and res.points[:, 3].max() <= 1.0


def test_gt_num_points_equals_lidar_hits_on_each_object(scene):
    res = simulate_sweep(scene, 7.3, 0.1, LIDAR_MOUNT, "clear", np.random.default_rng(2))
    gt = ground_truth_boxes(res, "ground_truth", 7_300_000_000, 72)
    assert len(gt) > 3 and gt.num_points.sum() > 100
    hit_tracks = res.objects.track_ids[res.hit_object[res.hit_object >= 0]]
    for tid, n in zip(gt.track_ids, gt.num_points):
        assert n == np.count_nonzero(hit_tracks == tid)
    # The rule: targets only, near or seen.
    assert np.all(gt.labels >= 0)
    assert np.all((np.hypot(gt.boxes[:, 0], gt.boxes[:, 1]) <= GT_RANGE_M) | (gt.num_points > 0))
    # Every point counted on the most-hit object lies on that object's box at the point's own firing time.
    big = int(np.argmax(gt.num_points))
    j = int(np.flatnonzero(res.objects.track_ids == gt.track_ids[big])[0])
    on = np.flatnonzero(res.hit_object == j)
    for i in on[:: max(1, len(on) // 60)]:
        t = res.t_end_s + float(res.time_offset[i])
        objs = objects_in_ego(scene.objects_world(t), scene.ego_state(t))
        x, y, z, length, width, height, yaw = objs.boxes[objs.track_ids == gt.track_ids[big]][0]
        p = LIDAR_MOUNT.apply(res.points[i:i + 1, :3].astype(np.float64))[0]
        c, s = np.cos(yaw), np.sin(yaw)
        lx, ly = c * (p[0] - x) + s * (p[1] - y), -s * (p[0] - x) + c * (p[1] - y)
        tol = 0.1  # 2 cm range noise, 4 sigma, plus float32
        assert abs(lx) <= length / 2 + tol and abs(ly) <= width / 2 + tol and abs(p[2] - z) <= height / 2 + tol


def test_static_wall_shows_rolling_distortion_of_ego_motion():
    speed, t_end = 20.0, 0.1
    res = simulate_sweep(WallScene(speed, wall_x=-10.0), t_end, 0.1, LIDAR_MOUNT, "clear",
                         np.random.default_rng(0))
    on_wall = res.hit_object == 0
    tau = res.time_offset[on_wall].astype(np.float64)
    x = res.points[on_wall, 0].astype(np.float64)
    first, last = tau < -0.09, tau > -0.01  # the first and last tenth of the sweep (both see the wall)
    assert first.sum() > 50 and last.sum() > 50
    # Wall face at world x = -9.8; sensor at world x = speed * t + 1.0 when it fires.
    expected = -9.8 - (speed * (t_end + tau) + 1.0)
    assert np.abs(x - expected).max() < 0.1
    gap = x[first].mean() - x[last].mean()
    dt = tau[last].mean() - tau[first].mean()
    assert gap == pytest.approx(speed * dt, abs=0.05)
    assert gap > 1.5  # about v * 0.1 s: the raw sweep is visibly smeared
    # Moving every point into the sensor frame at the stamp (what a deskew does) removes it.
    deskewed = x + speed * tau
    assert deskewed[first].mean() == pytest.approx(deskewed[last].mean(), abs=0.02)


def test_fog_shortens_range_and_count_and_adds_near_backscatter(scene):
    out = {w: simulate_sweep(scene, 6.0, 0.1, LIDAR_MOUNT, w, np.random.default_rng(5))
           for w in ("clear", "rain", "fog", "night")}
    real_range = {w: np.linalg.norm(r.points[r.hit_object != HIT_SPURIOUS, :3], axis=1) for w, r in out.items()}
    assert real_range["fog"].max() < 0.5 * real_range["clear"].max()
    assert np.percentile(real_range["rain"], 99) < np.percentile(real_range["clear"], 99)
    assert len(out["fog"].points) < 0.9 * len(out["clear"].points)
    fog_spur = out["fog"].hit_object == HIT_SPURIOUS
    assert fog_spur.sum() > 200
    assert np.linalg.norm(out["fog"].points[fog_spur, :3], axis=1).max() < 40.0
    assert out["fog"].points[fog_spur, 3].max() < out["clear"].points[:, 3].max()
    assert (out["clear"].hit_object == HIT_SPURIOUS).sum() == 0
    # Night: the LiDAR is its own light source.
    assert np.array_equal(out["night"].points, out["clear"].points)


def test_road_returns_fade_with_range_and_intensity_follows_reflectivity(scene):
    res = simulate_sweep(scene, 5.0, 0.1, LIDAR_MOUNT, "clear", np.random.default_rng(0))
    r = np.linalg.norm(res.points[:, :3], axis=1)
    ground = res.hit_object == HIT_GROUND
    # Dark asphalt at grazing incidence is not seen far (the beam reaching the road at ~70 m barely).
    assert np.percentile(r[ground], 99.9) < 60.0 and r[ground].max() < 80.0
    near_ground = ground & (r < 15)
    near_obj = (res.hit_object >= 0) & (r < 15)
    assert near_obj.any()
    refl = res.objects.reflectivity[res.hit_object[near_obj]]
    # Objects (reflectivity 0.25-0.7) read brighter than the road (0.12) at similar range.
    assert np.median(res.points[near_obj, 3]) > np.median(res.points[near_ground, 3])
    assert refl.min() > 0.12


# ---------------------------------------------------------------------------------------------- radar
def _static_track_ids(scene: Scene, t: float) -> set[int]:
    w = scene.objects_world(t)
    return set(w.track_ids[np.hypot(w.velocities[:, 0], w.velocities[:, 1]) < 1e-6].tolist())


def test_radar_static_returns_read_minus_ego_speed_times_cos_azimuth(straight_scene):
    rng = np.random.default_rng(0)
    res_all, checked = [], 0
    for k in range(15):
        t = 2.0 + k / 13.0
        res = simulate_scan(straight_scene, t, RADAR_MOUNT, "clear", rng, "radar_front", 0, k)
        static = np.isin(res.source_track_id, list(_static_track_ids(straight_scene, t)))
        static |= res.source_track_id == SOURCE_CLUTTER
        s = res.scan
        v = straight_scene.ego_state(t).speed
        assert v > 3.0
        predicted = -v * np.cos(s.azimuth[static]) * np.cos(s.elevation[static])
        res_all.append(s.radial_velocity[static] - predicted)
        checked += int(static.sum())
    err = np.concatenate(res_all)
    assert checked > 40
    assert abs(np.median(err)) < 0.1
    assert np.percentile(np.abs(err), 95) < 0.6  # 0.1 m/s Doppler noise + 1 deg azimuth noise


def test_radar_return_from_moving_car_has_relative_radial_velocity(straight_scene):
    rng = np.random.default_rng(1)
    checked = 0
    for k in range(15):
        t = 2.0 + k / 13.0
        res = simulate_scan(straight_scene, t, RADAR_MOUNT, "clear", rng, "radar_front", 0, k)
        ego = straight_scene.ego_state(t)
        objs = objects_in_ego(straight_scene.objects_world(t), ego)
        s = res.scan
        for i in np.flatnonzero(res.source_track_id >= 0):
            j = int(np.flatnonzero(objs.track_ids == res.source_track_id[i])[0])
            if objs.labels[j] != 0 or np.hypot(*objs.velocities[j]) < 3.0:
                continue
            u = np.array([np.cos(s.elevation[i]) * np.cos(s.azimuth[i]),
                          np.cos(s.elevation[i]) * np.sin(s.azimuth[i]), np.sin(s.elevation[i])])
            v_rel = np.array([objs.velocities[j, 0] - ego.speed, objs.velocities[j, 1], 0.0])
            assert s.radial_velocity[i] == pytest.approx(v_rel @ u, abs=0.8)
            checked += 1
    assert checked >= 5


def test_radar_has_false_alarms_and_clutter_and_ignores_fog(straight_scene):
    rng = np.random.default_rng(2)
    sources = np.concatenate([simulate_scan(straight_scene, 1.0 + k / 13, RADAR_MOUNT, "clear", rng,
                                            "radar_front", 0, k).source_track_id for k in range(30)])
    assert np.count_nonzero(sources == SOURCE_FALSE_ALARM) >= 10  # ~1 per scan
    assert np.count_nonzero(sources == SOURCE_CLUTTER) >= 30
    clear = simulate_scan(straight_scene, 4.0, RADAR_MOUNT, "clear", np.random.default_rng(3), "r", 0, 0).scan
    fog = simulate_scan(straight_scene, 4.0, RADAR_MOUNT, "fog", np.random.default_rng(3), "r", 0, 0).scan
    assert np.array_equal(clear.range_m, fog.range_m) and np.array_equal(clear.radial_velocity, fog.radial_velocity)
    assert len(clear) > 5
    assert np.all(np.abs(clear.azimuth) <= np.radians(60.0 + 5.0))  # FOV + noise


def test_radar_ranges_match_object_geometry_within_noise(straight_scene):
    t = 3.0
    res = simulate_scan(straight_scene, t, RADAR_MOUNT, "clear", np.random.default_rng(4), "r", 0, 0)
    objs = objects_in_ego(straight_scene.objects_world(t), straight_scene.ego_state(t))
    xyz_ego = RADAR_MOUNT.apply(res.scan.xyz.astype(np.float64))
    checked = 0
    for i in np.flatnonzero(res.source_track_id >= 0):
        j = int(np.flatnonzero(objs.track_ids == res.source_track_id[i])[0])
        x, y, _, length, width, _, yaw = objs.boxes[j]
        r = res.scan.range_m[i]
        d = xyz_ego[i, :2] - (x, y)
        local = d @ np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        # On the box outline, up to range noise and r * azimuth noise (4 sigma).
        tol = 4 * (0.15 + r * np.radians(1.0))
        assert np.abs(local[0]) <= length / 2 + tol and np.abs(local[1]) <= width / 2 + tol
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------- IMU
def test_imu_gyro_reads_yaw_rate_on_a_curve_and_gravity_on_z():
    scene = Scene(seed=5, duration_s=10.0, curvy=True)
    t = np.arange(0.2, 2.2, 1 / 200)  # this drive starts on a left-hand curve
    wr = np.array([scene.ego_state(x).yaw_rate for x in t])
    assert np.all(np.abs(wr) > 0.05)
    imu = ImuSimulator(scene, IMU_MOUNT, 200.0, np.random.default_rng(0))
    gyro, accel = imu.measure(t)
    assert gyro[:, 2].mean() == pytest.approx(wr.mean(), abs=0.007)  # bias 1.7e-3 rad/s (1 sigma)
    assert np.abs(gyro[:, :2].mean(axis=0)).max() < 0.007
    assert accel[:, 2].mean() == pytest.approx(9.81, abs=0.08)
    lat = np.array([scene.ego_state(x).accel_lat for x in t])
    assert accel[:, 1].mean() == pytest.approx(lat.mean(), abs=0.08)  # v * yaw rate
    assert gyro[:, 2].std() < 0.01  # white noise 1e-4 * sqrt(200) = 1.4e-3 rad/s


def test_imu_lever_arm_adds_centripetal_acceleration():
    scene = Scene(seed=5, duration_s=10.0, curvy=True)
    t = np.arange(0.5, 1.5, 1 / 200)
    far = Transform("ego", "imu", np.eye(3), (11.3, 0.0, 0.4))
    _, f_near = ImuSimulator(scene, IMU_MOUNT, 200.0, np.random.default_rng(0),
                             ImuParams(0, 0, 0, 0, 0, 0)).measure(t)
    _, f_far = ImuSimulator(scene, far, 200.0, np.random.default_rng(0), ImuParams(0, 0, 0, 0, 0, 0)).measure(t)
    wr = np.array([scene.ego_state(x).yaw_rate for x in t])
    # 10 m further forward: -omega^2 * 10 m along x (yaw rate is constant here, so no tangential term).
    assert np.allclose(f_far[:, 0] - f_near[:, 0], -wr ** 2 * 10.0, atol=1e-6)


def test_imu_bias_random_walk_spread_grows_with_time():
    scene = Scene(seed=0, duration_s=10.0, max_speed=0.0)  # parked: only noise and bias move
    params = ImuParams(gyro_noise_density=1e-4, gyro_bias_random_walk=2e-3, gyro_bias_init=0.0,
                       accel_noise_density=1e-3, accel_bias_random_walk=2e-2, accel_bias_init=0.0)
    t = np.arange(0, 8.0, 1 / 200)
    early, late = [], []
    for seed in range(24):
        gyro, accel = ImuSimulator(scene, IMU_MOUNT, 200.0, np.random.default_rng(seed), params).measure(t)
        early.append(gyro[200:400, 2].mean() - gyro[:200, 2].mean())  # 1 s apart
        late.append(gyro[-200:, 2].mean() - gyro[:200, 2].mean())  # 7 s apart
    s_early, s_late = np.std(early), np.std(late)
    assert s_late > 1.8 * s_early  # sqrt(7) = 2.6 for a random walk; 1.0 for white noise alone
    assert s_late == pytest.approx(2e-3 * np.sqrt(7.0), rel=0.4)


def test_wheel_speed_tracks_speed_with_quantisation(scene):
    wheel = WheelSpeedSimulator(scene, np.random.default_rng(0))
    q = WheelSpeedParams().resolution_mps
    ts = np.arange(0.0, 10.0, 0.02)
    meas = np.array([wheel.measure(t) for t in ts])
    true = np.array([scene.ego_state(t).speed for t in ts])
    assert np.allclose(meas / q, np.round(meas / q), atol=1e-9)
    assert np.abs(meas - true).mean() < 0.02 + 0.01 * true.mean()
    parked = WheelSpeedSimulator(Scene(0, 5.0, max_speed=0.0), np.random.default_rng(0))
    assert parked.measure(2.0) == 0.0


# ---------------------------------------------------------------------------------------------- config/rig
def test_sim_default_yaml_loads_and_rejects_unknown_keys(tmp_path):
    from drivers.sim import SimConfig

    cfg = load_yaml_file(SimConfig, ROOT / "configs" / "sim_default.yaml")
    assert cfg.lidar_rate_hz == 10.0 and cfg.n_cameras == 2 and cfg.weather == "clear"
    bad = tmp_path / "sim_bad.yaml"
    bad.write_text("seed: 1\nwether: fog\n")
    with pytest.raises(ConfigError, match="wether"):
        load_yaml_file(SimConfig, bad)
    bad.write_text("weather: snow\n")
    with pytest.raises(ConfigError, match="weather"):
        load_yaml_file(SimConfig, bad)
    bad.write_text("start_stamp_ns: 0\nclock_offset_ns: {imu: -5000}\n")
    with pytest.raises(ConfigError, match="negative stamps"):
        load_yaml_file(SimConfig, bad)


def test_rig_file_is_default_rig():
    from drivers.sim import default_rig

    path = ROOT / "configs" / "rig_sim.yaml"
    assert path.read_text() == default_rig().to_yaml()
    loaded, built = Rig.load(path), default_rig()
    assert loaded.ids() == built.ids()
    for a in built.sensors:
        assert loaded[a.sensor_id].ego_from_sensor.allclose(a.ego_from_sensor, atol=1e-12)
    six = default_rig(6)
    assert len(six.ids("camera")) == 6
    # Cameras look where their names say: the front camera's optical axis is ego +x.
    assert np.allclose(six["cam_front"].ego_from_sensor.rotation[:, 2], [1, 0, 0])
    assert np.allclose(six["cam_rear"].ego_from_sensor.rotation[:, 2], [-1, 0, 0])
    assert six["cam_front_left"].ego_from_sensor.rotation[1, 2] > 0.5


def test_rig_and_config_disagreeing_is_a_clear_error():
    from drivers.sim import SimConfig, SimulatedRig, default_rig

    with pytest.raises(ConfigError, match="n_cameras=2.*3 cameras"):
        SimulatedRig(SimConfig(n_cameras=2), default_rig(3))
    with pytest.raises(ConfigError, match="cam_nowhere"):
        SimulatedRig(SimConfig(clock_offset_ns={"cam_nowhere": 5}), default_rig(2))


# ---------------------------------------------------------------------------------------------- orchestrator
def _payload_bytes(m) -> bytes:
    if isinstance(m, CameraImage):
        return m.image.tobytes()
    if isinstance(m, LidarSweep):
        return m.points.tobytes() + m.time_offset.tobytes() + m.ring.tobytes()
    if isinstance(m, RadarScan):
        return b"".join(a.tobytes() for a in (m.range_m, m.azimuth, m.elevation, m.radial_velocity, m.rcs))
    if isinstance(m, ImuSample):
        return m.angular_velocity.tobytes() + m.linear_acceleration.tobytes()
    if isinstance(m, AudioChunk):
        return m.samples.tobytes()
    if isinstance(m, VehicleSpeed):
        return np.float64(m.speed_mps).tobytes()
    if isinstance(m, GroundTruthBoxes):
        return m.boxes.tobytes() + m.num_points.tobytes() + m.track_ids.tobytes()
    raise AssertionError(f"unexpected message type {type(m).__name__}")


def _run(cfg, n_cameras: int):
    from drivers.sim import SimulatedRig, default_rig

    return [(m.sensor_id, m.stamp_ns, _payload_bytes(m))
            for m in SimulatedRig(cfg, default_rig(n_cameras)).messages()]


def test_same_seed_is_byte_identical_other_seed_differs_and_cameras_do_not_touch_lidar():
    from drivers.sim import SimConfig

    cfg = SimConfig(seed=11, duration_s=0.35, n_cameras=1, stamp_jitter_ns={"imu": 50_000, "lidar_top": 20_000})
    a, b = _run(cfg, 1), _run(cfg, 1)
    assert len(a) > 100 and a == b
    other = _run(dataclasses.replace(cfg, seed=12), 1)
    lidar = [x for x in a if x[0] == "lidar_top"]
    assert [x for x in other if x[0] == "lidar_top"] != lidar
    two_cams = _run(dataclasses.replace(cfg, n_cameras=2), 2)
    assert [x for x in two_cams if x[0] == "lidar_top"] == lidar
    assert [x for x in two_cams if x[0] == "imu"] == [x for x in a if x[0] == "imu"]


@pytest.fixture(scope="module")
def drive():
    from drivers.sim import SimConfig, SimulatedRig, default_rig

    cfg = SimConfig(seed=4, duration_s=1.6, n_cameras=2,
                    clock_offset_ns={"radar_front": 7_000_000, "imu": -3_000_000, "cam_rear": 2_500_000},
                    stamp_jitter_ns={"cam_front": 500_000, "cam_rear": 500_000, "lidar_top": 20_000,
                                     "vehicle_speed": 2_000_000})
    sim = SimulatedRig(cfg, default_rig(2))
    return cfg, sim, list(sim.messages())


def test_messages_are_stamp_ordered_and_cover_every_modality(drive):
    cfg, sim, msgs = drive
    stamps = [m.stamp_ns for m in msgs]
    assert all(b >= a for a, b in zip(stamps, stamps[1:]))
    assert len(msgs) == sim.n_messages_estimate()
    kinds = {type(m) for m in msgs}
    assert kinds == {CameraImage, LidarSweep, RadarScan, ImuSample, AudioChunk, VehicleSpeed, GroundTruthBoxes}
    sweeps = [m for m in msgs if isinstance(m, LidarSweep)]
    gts = [m for m in msgs if isinstance(m, GroundTruthBoxes)]
    assert [g.stamp_ns for g in gts] == [s.stamp_ns for s in sweeps]
    audio = [m for m in msgs if isinstance(m, AudioChunk)]
    assert all(a.samples.shape == (4, 1600) and a.sample_rate == 16000 for a in audio)
    cams = [m for m in msgs if isinstance(m, CameraImage)]
    assert all(c.image.shape == (360, 640, 3) and c.image.dtype == np.uint8 for c in cams)


def test_each_sensor_rate_is_within_two_percent_of_config(drive):
    cfg, sim, msgs = drive
    expected = {"cam_front": cfg.camera_rate_hz, "cam_rear": cfg.camera_rate_hz, "lidar_top": cfg.lidar_rate_hz,
                "radar_front": cfg.radar_rate_hz, "imu": cfg.imu_rate_hz, "mic_array": 10.0,
                "vehicle_speed": cfg.vehicle_speed_rate_hz, "ground_truth": cfg.lidar_rate_hz}
    for sid, rate in expected.items():
        st = np.array([m.stamp_ns for m in msgs if m.sensor_id == sid], dtype=np.int64)
        assert len(st) >= 10, sid
        measured = (len(st) - 1) * 1e9 / (st[-1] - st[0])
        assert measured == pytest.approx(rate, rel=0.02), sid
        seqs = [m.seq for m in msgs if m.sensor_id == sid]
        assert seqs == list(range(len(seqs))), sid


def test_clock_offsets_and_jitter_show_up_in_stamps(drive):
    cfg, sim, msgs = drive

    def deviation(sid, rate, first=0):
        return np.array([m.stamp_ns - cfg.start_stamp_ns - round((m.seq + first) * 1e9 / rate)
                         for m in msgs if m.sensor_id == sid])

    # No jitter configured: exactly the offset.
    assert np.all(deviation("radar_front", cfg.radar_rate_hz) == 7_000_000)
    assert np.all(deviation("imu", cfg.imu_rate_hz) == -3_000_000)
    assert np.all(deviation("mic_array", 10.0) == 0)
    # Jittered cameras: offset plus zero-mean jitter of 0.5 ms, clipped at 3 sigma.
    back = deviation("cam_rear", cfg.camera_rate_hz) - 2_500_000
    front = deviation("cam_front", cfg.camera_rate_hz)
    for d in (back, front):
        assert np.abs(d).max() <= 1_500_000 and np.abs(d).max() > 0
    assert np.all(deviation("lidar_top", cfg.lidar_rate_hz, first=1) != 0)


def _vehicles_overlapping_a_siren(scene: Scene, duration_s: float) -> int:
    """Frames x vehicles whose box overlaps an emergency vehicle's (in the emergency vehicle's frame)."""
    hits = 0
    for t in np.arange(0.0, duration_s, 0.1):
        w = scene.objects_world(float(t))
        vehicles = np.isin(w.labels, [0, 1])  # car, truck
        for e in np.flatnonzero(w.siren > 0):
            x, y, _, length, width, _, yaw = w.boxes[e]
            others = np.flatnonzero(vehicles & (np.arange(len(w.labels)) != e))
            dx, dy = w.boxes[others, 0] - x, w.boxes[others, 1] - y
            along = np.cos(yaw) * dx + np.sin(yaw) * dy
            across = -np.sin(yaw) * dx + np.cos(yaw) * dy
            hits += int(np.sum((np.abs(along) < (length + w.boxes[others, 3]) / 2)
                               & (np.abs(across) < (width + w.boxes[others, 4]) / 2)))
    return hits


def test_the_emergency_vehicle_never_drives_through_other_traffic():
    # Seeds 9105 and 9107 put it into its lane's traffic before the lane was cleared for it.
    for seed in (9105, 9107, 100, 101, 102, 103):
        scene = Scene(seed=seed, duration_s=16.0)
        assert (scene.objects_world(0.0).siren > 0).sum() == 1
        assert _vehicles_overlapping_a_siren(scene, 16.0) == 0, seed
