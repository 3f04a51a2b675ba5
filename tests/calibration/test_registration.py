"""LiDAR-LiDAR and LiDAR-radar extrinsics by registration, on simulated sweeps and scans and on a real KITTI
scan. Errors are printed with -s.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.registration import (RadarCalibParams, RegistrationError, calibrate_lidar_pair, calibrate_lidar_radar,
                                      calibrate_radar, lidar_targets, register_lidars, transform_error)
from calibration.rig import Rig, Sensor
from calibration.transform import Transform
from drivers.sim_lidar import simulate_sweep
from drivers.sim_radar import simulate_scan
from drivers.sim_calib import ReflectorScene
from drivers.sim_scene import Scene

TOP = Transform.from_rpy("ego", "lidar_top", 0.0, 0.0, 0.0, (1.0, 0.0, 1.9))
# A corner LiDAR at the front left, turned 40 deg outward, pitched 6 deg down and rolled 1 deg.
CORNER = Transform.from_rpy("ego", "lidar_front_left", np.radians(1.0), np.radians(6.0), np.radians(40.0),
                            (3.6, 0.85, 0.75))


def nudged(T: Transform, metres: float, degrees: float, seed: int) -> Transform:
    """T moved by ``metres`` and turned by ``degrees`` in random directions (on the left)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=3)
    axis = rng.normal(size=3)
    R = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(degrees))[0]
    return Transform(T.dst, T.src, R @ T.rotation, T.translation + metres * d / np.linalg.norm(d))


@pytest.fixture(scope="module")
def two_lidar_frames():
    """Simultaneous sweeps of both LiDARs at three places (ego standing, traffic passing)."""
    frames = []
    for seed in (1, 2, 3):
        scene = Scene(seed, duration_s=3.0, max_speed=0.0, n_sirens=0)
        a = simulate_sweep(scene, 1.0, 0.1, TOP, "clear", np.random.default_rng(seed))
        b = simulate_sweep(scene, 1.0, 0.1, CORNER, "clear", np.random.default_rng(100 + seed))
        frames.append((a.points, b.points))
    return frames


def test_two_simulated_lidars_recover_the_corner_mount_from_a_guess_20cm_and_3deg_off(two_lidar_frames):
    truth = TOP.inverse() @ CORNER
    guess = nudged(truth, 0.20, 3.0, seed=0)
    result = register_lidars(two_lidar_frames, guess)
    dt, dr = transform_error(result.target_from_source, truth)
    print(f"\nLiDAR-LiDAR, 3 simulated frames: error {dt * 100:.2f} cm, {dr:.4f} deg "
          f"(guess off by {transform_error(guess, truth)[0] * 100:.0f} cm, {transform_error(guess, truth)[1]:.1f} deg)\n"
          + result.report())
    assert result.target_from_source.name == "lidar_top_from_lidar_front_left"
    assert dt < 0.02 and dr < 0.1
    assert result.fitness > 0.2 and result.inlier_rmse_m < 0.05
    assert len(result.per_frame) == 3 and all(f.n_correspondences > 1000 for f in result.per_frame)
    assert np.all(result.sigma_translation_m < 0.01) and np.all(result.sigma_rotation_deg < 0.05)


def test_stacking_frames_beats_a_single_frame_with_traffic(two_lidar_frames):
    truth = TOP.inverse() @ CORNER
    guess = nudged(truth, 0.20, 3.0, seed=1)
    one = register_lidars(two_lidar_frames[:1], guess)
    three = register_lidars(two_lidar_frames, guess)
    # Three places constrain more surfaces: the information grows, the uncertainty shrinks.
    assert np.all(three.sigma_translation_m < one.sigma_translation_m)
    assert three.n_correspondences > 2 * one.n_correspondences


def test_global_registration_finds_the_corner_lidar_without_a_guess(two_lidar_frames):
    truth = TOP.inverse() @ CORNER
    result = register_lidars(two_lidar_frames, None, target_frame="lidar_top", source_frame="lidar_front_left")
    dt, dr = transform_error(result.target_from_source, truth)
    print(f"\nLiDAR-LiDAR without a guess: FPFH + RANSAC {transform_error(result.initial, truth)[0] * 100:.1f} cm, "
          f"{transform_error(result.initial, truth)[1]:.2f} deg; after ICP {dt * 100:.2f} cm, {dr:.4f} deg")
    assert dt < 0.02 and dr < 0.1


def test_calibrate_lidar_pair_replaces_the_mount_in_the_rig(two_lidar_frames, tmp_path):
    wrong = nudged(CORNER, 0.15, 2.0, seed=4)
    rig = Rig("two_lidars", (Sensor("lidar_top", "lidar", TOP), Sensor("lidar_front_left", "lidar", wrong)))
    cal = calibrate_lidar_pair(rig, "lidar_top", "lidar_front_left", two_lidar_frames)
    dt, dr = transform_error(cal.rig.ego_from("lidar_front_left"), CORNER)
    assert dt < 0.02 and dr < 0.1
    assert cal.change_translation_m == pytest.approx(0.15, abs=0.02)
    assert cal.rig.ego_from("lidar_top").allclose(TOP)
    cal.rig.save(tmp_path / "rig.yaml")
    assert Rig.load(tmp_path / "rig.yaml").ego_from("lidar_front_left").allclose(cal.ego_from_other, atol=1e-6)


def test_register_lidars_refuses_a_single_flat_ground():
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(-20, 20, 20000), rng.uniform(-20, 20, 20000), np.zeros(20000)])
    with pytest.raises(RegistrationError, match="degenerate"):
        register_lidars([(ground, ground + [0.0, 0.0, 0.01])], Transform.identity("a", "b"))
    with pytest.raises(RegistrationError, match="only 3 points"):
        register_lidars([(ground, ground[:3])], Transform.identity("a", "b"))


def test_real_kitti_scan_registers_onto_a_moved_noisy_partial_copy_of_itself(realdata: Path):
    points = np.fromfile(realdata / "kitti_object_vis" / "training" / "velodyne" / "000000.bin",
                         np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
    rng = np.random.default_rng(7)
    half = rng.random(len(points)) < 0.5
    az = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    # Different points for the two clouds (a random half each), 2 cm noise each, and 240 deg sectors that
    # overlap over 180 deg only.
    target = points[half & (az > -150) & (az < 90)]
    target = target + rng.normal(0, 0.02, target.shape)
    source_in_target = points[~half & (az > -90) & (az < 150)]
    truth = Transform.from_rpy("a", "b", np.radians(2.0), np.radians(-1.5), np.radians(25.0), (1.2, -0.6, 0.3))
    source = truth.inverse().apply(source_in_target) + rng.normal(0, 0.02, source_in_target.shape)
    for guess in (nudged(truth, 0.20, 3.0, seed=2), None):
        result = register_lidars([(target, source)], guess, target_frame="a", source_frame="b")
        dt, dr = transform_error(result.target_from_source, truth)
        print(f"\nKITTI 000000 self-registration ({'guess 20 cm, 3 deg off' if guess else 'no guess'}): "
              f"error {dt * 100:.2f} cm, {dr:.4f} deg; fitness {result.fitness:.2f}, RMSE "
              f"{result.inlier_rmse_m * 100:.1f} cm")
        assert dt < 0.02 and dr < 0.1


# ---------------------------------------------------------------------------------------------- radar
PRIOR = Transform.from_rpy("ego", "radar_front", 0.0, 0.0, 0.0, (3.7, 0.0, 0.5))
RADAR_TRUE = Transform.from_rpy("ego", "radar_front", 0.0, 0.0, np.radians(2.0), (3.74, -0.07, 0.5))


@pytest.fixture(scope="module")
def reflector_frames():
    """Three reflector layouts; per layout one LiDAR sweep paired with 50 radar scans (radar mounted at
    RADAR_TRUE: 4 cm forward, 7 cm right and turned 2 deg from the rig's PRIOR)."""
    frames, layouts = [], []
    for seed in (1, 2, 3):
        scene = ReflectorScene(seed)
        sweep = simulate_sweep(scene, 1.0, 0.1, TOP, "clear", np.random.default_rng(seed))
        rng = np.random.default_rng(100 + seed)
        frames += [(sweep.points, simulate_scan(scene, 1.0, RADAR_TRUE, "clear", rng, "radar_front", k, k).scan)
                   for k in range(50)]
        layouts.append((scene, sweep))
    return frames, layouts


def test_lidar_targets_are_the_reflectors_not_the_wall_or_the_car(reflector_frames):
    _, layouts = reflector_frames
    for scene, sweep in layouts:
        targets = lidar_targets(TOP.apply(sweep.points[:, :3]))
        assert len(targets) >= 6
        dist = np.linalg.norm(targets[:, None, :2] - scene.reflectors_ego[None], axis=2).min(axis=1)
        # Each target is a reflector (its centroid lies on the faces the LiDAR sees: within 0.2 m).
        assert np.all(dist < 0.2), dist


def test_radar_mount_recovered_from_corner_reflectors(reflector_frames):
    frames, _ = reflector_frames
    result = calibrate_lidar_radar(frames, TOP, PRIOR)
    est = result.ego_from_radar
    dxy = est.translation[:2] - RADAR_TRUE.translation[:2]
    dyaw = np.degrees(np.arctan2(est.rotation[1, 0], est.rotation[0, 0])) - 2.0
    print(f"\nLiDAR-radar, 3 layouts x 50 scans: error x {dxy[0] * 100:+.2f} cm, y {dxy[1] * 100:+.2f} cm, "
          f"yaw {dyaw:+.3f} deg (prior off by 8 cm, 2 deg)\n" + result.report())
    assert np.hypot(*dxy) < 0.05 and abs(dyaw) < 0.3
    # z, roll and pitch stay at the prior.
    assert est.translation[2] == pytest.approx(PRIOR.translation[2])
    assert est.rotation[2] == pytest.approx(PRIOR.rotation[2])
    # The residuals match the radar's noise (0.15 m, 1 deg) and most returns found a target.
    assert 0.10 < result.range_residual_rms_m < 0.25 and 0.6 < result.azimuth_residual_rms_deg < 1.4
    assert result.n_matches > 600 and result.n_targets >= 20
    assert result.sigma_xy_m.max() < 0.03 and result.sigma_yaw_deg < 0.1


def test_calibrate_radar_updates_the_rig_and_refuses_wrong_sensor_kinds(reflector_frames):
    frames, _ = reflector_frames
    rig = Rig("car", (Sensor("lidar_top", "lidar", TOP), Sensor("radar_front", "radar", PRIOR)))
    cal = calibrate_radar(rig, "lidar_top", "radar_front", frames[:50])
    assert np.hypot(*(cal.rig.ego_from("radar_front").translation[:2] - RADAR_TRUE.translation[:2])) < 0.05
    assert cal.rig.ego_from("lidar_top").allclose(TOP)
    with pytest.raises(RegistrationError, match="'radar_front' is a radar, not a lidar"):
        calibrate_radar(rig, "radar_front", "lidar_top", frames[:1])


def test_radar_calibration_without_targets_says_so():
    scene = Scene(1, duration_s=2.0, max_speed=0.0, n_sirens=0, traffic_density=0.0)
    empty = np.zeros((0, 4), np.float32)
    scan = simulate_scan(scene, 1.0, PRIOR, "clear", np.random.default_rng(0), "radar_front", 0, 0).scan
    with pytest.raises(RegistrationError, match="no LiDAR targets"):
        calibrate_lidar_radar([(empty, scan)], TOP, PRIOR, RadarCalibParams())
