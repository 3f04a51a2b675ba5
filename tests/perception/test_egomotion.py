"""Ego motion: gyro integration, bias at standstill, speed from radar Doppler, pose queries."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.transform import Transform
from drivers.messages import ImuSample, RadarScan, VehicleSpeed
from perception.egomotion import EgoMotion, speed_from_doppler


def _drive(em: EgoMotion, seconds: float, speed: float, yaw_rate: float, bias=np.zeros(3), rate_hz=200):
    n = int(seconds * rate_hz)
    for k in range(n):
        t = int(k * 1e9 / rate_hz)
        if k % 4 == 0:
            em.add_speed(VehicleSpeed("speed", t, k, speed))
        em.add_imu(ImuSample("imu", t, k, np.array([0.0, 0.0, yaw_rate]) + bias, np.array([0.0, speed * yaw_rate, 9.81])))
    return n


def test_constant_turn_integrates_to_the_analytic_circle():
    em = EgoMotion(Transform.identity("ego", "imu"))
    v, w, T = 10.0, 0.2, 5.0
    _drive(em, T + 0.01, v, w)
    pose = em.pose_at(int(T * 1e9))
    # Exact circle: x = v/w sin(wT), y = v/w (1 - cos(wT)), yaw = wT.
    assert pose.yaw == pytest.approx(w * T, abs=1e-3)
    assert pose.translation[0] == pytest.approx(v / w * np.sin(w * T), abs=0.05)
    assert pose.translation[1] == pytest.approx(v / w * (1 - np.cos(w * T)), abs=0.05)


def test_ego_from_ego_moves_a_static_point_by_the_ego_motion():
    em = EgoMotion(Transform.identity("ego", "imu"))
    _drive(em, 2.0, 20.0, 0.0)
    rel = em.ego_from_ego(int(1.0e9), int(0.9e9))  # ego@1.0s from ego@0.9s
    # A static point 30 m ahead at 0.9 s is 2 m closer at 1.0 s.
    p = rel.apply(np.array([[30.0, 0.0, 0.0]]))
    assert p[0, 0] == pytest.approx(28.0, abs=1e-3)


def test_gyro_bias_is_learned_at_standstill_and_removed_while_driving():
    em = EgoMotion(Transform.identity("ego", "imu"))
    bias = np.array([0.004, -0.003, 0.01])
    rng = np.random.default_rng(0)
    k = 0
    for _ in range(600):  # 3 s still, with vibration noise
        t = int(k * 5e6)
        em.add_speed(VehicleSpeed("speed", t, k, 0.0))
        em.add_imu(ImuSample("imu", t, k, bias + rng.normal(0, 0.02, 3), np.array([0, 0, 9.81]) + rng.normal(0, 0.2, 3)))
        k += 1
    assert np.allclose(em.gyro_bias, bias, atol=0.003)
    yaw0 = em.latest.yaw
    for _ in range(2000):  # 10 s straight at 15 m/s: the residual heading drift is tiny
        t = int(k * 5e6)
        em.add_speed(VehicleSpeed("speed", t, k, 15.0))
        em.add_imu(ImuSample("imu", t, k, bias, np.array([0, 0, 9.81])))
        k += 1
    assert abs(em.latest.yaw - yaw0) < 0.03  # without the bias estimate: 0.1 rad


def test_pose_outside_history_is_refused():
    em = EgoMotion(Transform.identity("ego", "imu"), history_s=1.0)
    _drive(em, 3.0, 5.0, 0.0)
    with pytest.raises(ValueError, match="outside pose history"):
        em.pose_at(int(0.5e9))


def _radar_scan(v_ego: float, rng: np.random.Generator, n_static=40, n_moving=8) -> RadarScan:
    az = rng.uniform(-1.0, 1.0, n_static + n_moving)
    rng_m = rng.uniform(5, 100, len(az))
    vr = -v_ego * np.cos(az) + rng.normal(0, 0.05, len(az))
    vr[n_static:] += rng.uniform(-15, 15, n_moving)  # moving objects break the static model
    z = np.zeros(len(az), np.float32)
    return RadarScan("radar_front", 0, 0, rng_m.astype(np.float32), az.astype(np.float32), z,
                     vr.astype(np.float32), z)


def test_speed_from_radar_doppler_ignores_moving_objects():
    rng = np.random.default_rng(3)
    scan = _radar_scan(17.0, rng)
    v = speed_from_doppler(scan, Transform.from_rpy("ego", "radar_front", 0, 0, 0, [3.6, 0, 0.5]))
    assert v == pytest.approx(17.0, abs=0.1)


def test_radar_speed_used_only_when_speed_messages_stop():
    em = EgoMotion(Transform.identity("ego", "imu"))
    rng = np.random.default_rng(4)
    ego_from_radar = Transform.identity("ego", "radar_front")
    em.add_speed(VehicleSpeed("speed", 0, 0, 10.0))
    scan = _radar_scan(12.0, rng)
    fresh = RadarScan(**{**scan.__dict__, "stamp_ns": 100_000_000})
    assert em.add_radar(fresh, ego_from_radar) is None  # speed message is fresh: radar not needed
    stale = RadarScan(**{**scan.__dict__, "stamp_ns": 2_000_000_000})
    assert em.add_radar(stale, ego_from_radar) == pytest.approx(12.0, abs=0.1)


def test_euroc_imu_integrates_145_s_and_estimates_gyro_bias_at_rest(realdata):
    """Real EuRoC V1_01 IMU log (200 Hz, 145.6 s): the MAV rests for its first ~4.5 s (rotors vibrating)."""
    path = realdata / "euroc_v101_imu_cam" / "mav0" / "imu0" / "data.csv"
    data = np.loadtxt(path, delimiter=",", comments="#")
    stamps = np.loadtxt(path, delimiter=",", comments="#", usecols=0, dtype=np.int64)
    em = EgoMotion(Transform.identity("ego", "imu0"), history_s=200.0)
    for i in range(len(stamps)):
        em.add_imu(ImuSample("imu0", int(stamps[i]), i, data[i, 1:4], data[i, 4:7]))
    assert len(stamps) == 29120
    span_s = (em.latest.stamp_ns - stamps[0]) / 1e9
    assert span_s == pytest.approx(145.6, abs=0.1)
    R = em.latest.rotation
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-9)
    # The rest period is found (and flight is not mistaken for rest): 3-7 s of still samples.
    assert 600 <= em.still_samples <= 1400
    rest_mean = data[: 4 * 200, 1:4].mean(axis=0)
    print(f"EuRoC gyro bias estimate [rad/s]: {np.round(em.gyro_bias, 5)} "
          f"(mean of first 4 s: {np.round(rest_mean, 5)}), still samples {em.still_samples}")
    assert np.allclose(em.gyro_bias, rest_mean, atol=0.002)


def test_vectorised_and_single_pose_queries_agree_over_a_long_drive_with_a_short_history():
    # 30 s at 200 Hz with 1 s of history: the kept poses are trimmed and their arrays compacted many times.
    em = EgoMotion(Transform.identity("ego", "imu"), history_s=1.0)
    _drive(em, 30.0, 12.0, 0.15)
    first = em.latest.stamp_ns - 1_000_000_000  # the oldest kept pose is at most 1 s older than the newest
    with pytest.raises(ValueError, match="outside pose history"):
        em.pose_at(first - 10_000_000)
    first = first + 10_000_000
    last = em.latest.stamp_ns
    t = np.sort(np.random.default_rng(3).integers(first, last + 150_000_000, 64))
    R, p = em.poses_at(t)
    for k, tk in enumerate(t):
        pose = em.pose_at(int(tk))
        np.testing.assert_allclose(R[k], pose.rotation, atol=1e-12)
        np.testing.assert_allclose(p[k], pose.translation, atol=1e-9)
    with pytest.raises(ValueError, match="outside pose history"):
        em.poses_at(np.array([first - 20_000_000, last]))
