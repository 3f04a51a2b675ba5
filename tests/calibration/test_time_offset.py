"""Sensor time offsets: camera-, LiDAR- and radar-IMU on simulated drives with known clock offsets, the rate
correlation on exact rates, the radar's static-world fit on synthetic scans, the microphone offset from a
synthesised chirp, bad input, the rig update."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibration.rig import Rig, Sensor
from calibration.time_offset import (IntervalRates, TimeOffsetError, TimeOffsetResult, camera_angular_rates,
                                     camera_imu_time_offset, lidar_imu_time_offset, microphone_time_offset,
                                     offset_from_rates, radar_angular_rates, radar_imu_time_offset,
                                     radar_static_velocity, rig_with_time_offset)
from calibration.transform import Transform, rotation_from_rpy
from drivers.messages import CameraImage, ImuSample, LidarSweep, RadarScan
from drivers.sim import SIM_CAMERA, SimConfig, default_rig
from drivers.sim_calib import time_offset_drive

CAMERA_OFFSET_NS = 30_000_000
LIDAR_OFFSET_NS = -20_000_000
RADAR_OFFSET_NS = 30_000_000
CORNER_RADAR_OFFSET_NS = -45_000_000
# A calibration drive: a winding road at up to 10 m/s, no traffic (a quiet road, as such drives are
# done), realistic stamp jitter on every clock.
JITTER_NS = {"cam_front": 300_000, "lidar_top": 100_000, "imu": 50_000, "radar_front": 200_000,
             "radar_front_left": 200_000}
WINDING = dict(radius_m=(25.0, 50.0), arc_m=(4.0, 15.0), transition_m=(4.0, 8.0))
# The radar's yaw rate is good to about 0.02 rad/s per scan (its Doppler noise over ~20 returns), against
# well under 0.01 rad/s from the camera: 15 s of WINDING leave it 3-10 ms (1 sigma). A longer drive on a
# tighter weave (a slalom-like calibration drive) gets 1-3 ms.
RADAR_WEAVE = dict(radius_m=(20.0, 35.0), arc_m=(2.0, 6.0), transition_m=(3.0, 6.0))


def _drive(rig: Rig, seed: int, camera_rate_hz: float, clock_offset_ns: dict[str, int], duration_s: float = 15.0,
           winding: dict = WINDING):
    config = SimConfig(seed=seed, duration_s=duration_s, n_cameras=1, max_speed=10.0, traffic_density=0.0,
                       n_sirens=0, camera_rate_hz=camera_rate_hz, clock_offset_ns=clock_offset_ns,
                       stamp_jitter_ns={k: v for k, v in JITTER_NS.items() if k in rig})
    return time_offset_drive(config, rig, **winding).messages()


def _gyro(messages: list) -> tuple[np.ndarray, np.ndarray]:
    imu = [m for m in messages if isinstance(m, ImuSample)]
    return np.array([m.stamp_ns for m in imu]), np.array([m.angular_velocity for m in imu])


# ---------------------------------------------------------------------------------------------- simulated drives
@pytest.fixture(scope="module")
def camera_drive() -> tuple[Rig, list]:
    """15 s of the front camera (640x360, 15 Hz) and the IMU; the camera's clock runs 30 ms ahead."""
    base = default_rig(1)
    rig = Rig("offsets", (base["cam_front"], base["imu"]))
    return rig, list(_drive(rig, 3, 15.0, {"cam_front": CAMERA_OFFSET_NS}))


@pytest.fixture(scope="module")
def lidar_drive() -> tuple[Rig, list]:
    """15 s of the roof LiDAR (10 Hz, 1800 columns) and the IMU; the LiDAR's clock runs 20 ms behind.
    (The rig needs a camera; a tiny one at 1 Hz costs nothing.)"""
    base = default_rig(1)
    tiny = dataclasses.replace(base["cam_front"], camera=SIM_CAMERA.scaled(0.1))
    rig = Rig("offsets", (tiny, base["imu"], base["lidar_top"]))
    return rig, list(_drive(rig, 1, 1.0, {"lidar_top": LIDAR_OFFSET_NS}))


@pytest.fixture(scope="module")
def radar_drive() -> tuple[Rig, list]:
    """60 s of RADAR_WEAVE with the front bumper radar (clock 30 ms ahead), a front-left corner radar
    turned 45 deg outward (clock 45 ms behind) and the IMU; radar scans and IMU samples only. (The rig
    needs a camera; a tiny one at 1 Hz costs nothing.)"""
    base = default_rig(1)
    tiny = dataclasses.replace(base["cam_front"], camera=SIM_CAMERA.scaled(0.1))
    corner = Sensor("radar_front_left", "radar",
                    Transform.from_rpy("ego", "radar_front_left", 0.0, 0.0, np.radians(45.0), (3.5, 0.8, 0.5)),
                    rate_hz=13.0)
    rig = Rig("offsets", (tiny, base["imu"], base["radar_front"], corner))
    offsets = {"radar_front": RADAR_OFFSET_NS, "radar_front_left": CORNER_RADAR_OFFSET_NS}
    messages = _drive(rig, 1, 1.0, offsets, duration_s=60.0, winding=RADAR_WEAVE)
    return rig, [m for m in messages if isinstance(m, (RadarScan, ImuSample))]


def _scans(messages: list, radar_id: str) -> tuple[list, list, list, list]:
    """(stamps, azimuths, elevations, radial velocities) of one radar's scans."""
    scans = [m for m in messages if isinstance(m, RadarScan) and m.sensor_id == radar_id]
    return ([s.stamp_ns for s in scans], [s.azimuth for s in scans], [s.elevation for s in scans],
            [s.radial_velocity for s in scans])


def test_camera_imu_offset_of_30ms_is_recovered_within_3ms_on_a_winding_drive(camera_drive):
    rig, messages = camera_drive
    frames = [m for m in messages if isinstance(m, CameraImage)]
    gyro_stamps, gyro = _gyro(messages)
    result = camera_imu_time_offset(rig, "cam_front", "imu", [f.stamp_ns for f in frames],
                                    [f.image for f in frames], gyro_stamps, gyro)
    error_ms = (result.offset_ns - CAMERA_OFFSET_NS) / 1e6
    assert abs(error_ms) < 3.0, result.summary()
    assert result.peak_correlation > 0.95
    assert 0 < result.uncertainty_ns < 3_000_000
    assert result.samples_used > 150  # of 224 frame intervals
    # The scanned curve is kept for plots and peaks where the result says.
    assert result.lags_ns[int(np.argmax(result.correlation))] == pytest.approx(result.offset_ns, abs=1_000_000)


def test_lidar_imu_offset_is_recovered_within_5ms_from_raw_sweeps(lidar_drive):
    rig, messages = lidar_drive
    sweeps = [m for m in messages if isinstance(m, LidarSweep)]
    gyro_stamps, gyro = _gyro(messages)
    result = lidar_imu_time_offset(rig, "lidar_top", "imu", [s.stamp_ns for s in sweeps], [s.points for s in sweeps],
                                   [s.time_offset for s in sweeps], gyro_stamps, gyro)
    error_ms = (result.offset_ns - LIDAR_OFFSET_NS) / 1e6
    assert abs(error_ms) < 5.0, result.summary()
    assert result.peak_correlation > 0.95
    assert result.samples_used > 100  # of 149 sweep pairs


def test_camera_rates_match_the_drive_yaw_rate(camera_drive):
    """The visual rotation alone, at half resolution, against the IMU with the known offset removed."""
    rig, messages = camera_drive
    frames = [m for m in messages if isinstance(m, CameraImage)][:60]
    half = rig["cam_front"].camera.scaled(0.5)
    import cv2

    images = [cv2.resize(f.image, (half.width, half.height), interpolation=cv2.INTER_AREA) for f in frames]
    cam_from_ego = rig.transform("cam_front", "ego").rotation
    rates = camera_angular_rates([f.stamp_ns for f in frames], images, half, up=cam_from_ego[:, 2],
                                 travel_direction=cam_from_ego[:, 0])
    gyro_stamps, gyro = _gyro(messages)
    yaw_cam = -rates.omega[:, 1]  # camera y points down: the ego yaw rate is minus the rate about it
    mid = (rates.start_ns + rates.end_ns) // 2 - CAMERA_OFFSET_NS
    yaw_imu = np.interp(mid, gyro_stamps, gyro[:, 2])
    assert rates.valid.all()
    assert np.abs(yaw_imu).max() > 0.15  # the drive turns
    assert np.sqrt(np.mean((yaw_cam - yaw_imu) ** 2)) < 0.03  # rad/s


def test_radar_offset_of_plus_30ms_is_recovered_within_3ms_on_a_weaving_drive(radar_drive):
    rig, messages = radar_drive
    gyro_stamps, gyro = _gyro(messages)
    result = radar_imu_time_offset(rig, "radar_front", "imu", *_scans(messages, "radar_front"), gyro_stamps, gyro)
    error_ns = result.offset_ns - RADAR_OFFSET_NS
    print(f"\nradar_front: error {error_ns / 1e6:+.2f} ms; {result.summary()}")
    assert abs(error_ns) < 3_000_000, result.summary()
    assert 0 < result.uncertainty_ns < 3_000_000
    assert abs(error_ns) < 3 * result.uncertainty_ns  # the reported 1 sigma is not too small
    assert result.peak_correlation > 0.95
    assert result.samples_used > 700  # of 781 scans


def test_corner_radar_turned_45deg_with_a_clock_45ms_behind_is_recovered_within_3ms(radar_drive):
    """The corner radar's directions are turned by the rig's rotation, and its lever arm has a sideways
    part (0.8 m) that enters the forward velocity, not the yaw rate."""
    rig, messages = radar_drive
    gyro_stamps, gyro = _gyro(messages)
    result = radar_imu_time_offset(rig, "radar_front_left", "imu", *_scans(messages, "radar_front_left"),
                                   gyro_stamps, gyro)
    error_ns = result.offset_ns - CORNER_RADAR_OFFSET_NS
    print(f"\nradar_front_left: error {error_ns / 1e6:+.2f} ms; {result.summary()}")
    assert abs(error_ns) < 3_000_000, result.summary()
    assert 0 < result.uncertainty_ns < 3_000_000
    assert abs(error_ns) < 3 * result.uncertainty_ns
    assert result.peak_correlation > 0.95
    assert result.samples_used > 500


def test_radar_yaw_rates_match_the_gyro_on_a_weaving_drive(radar_drive):
    """Per scan, against the gyro's z rate at the scan's true time; pins the Doppler sign convention."""
    rig, messages = radar_drive
    rates = radar_angular_rates(*_scans(messages, "radar_front"), rig.ego_from("radar_front"))
    gyro_stamps, gyro = _gyro(messages)
    mid = (rates.start_ns + rates.end_ns) // 2 - RADAR_OFFSET_NS
    yaw_imu = np.interp(mid, gyro_stamps, gyro[:, 2])
    ok = rates.valid
    assert ok.sum() > 750 and np.median(rates.support[ok]) >= 10
    assert np.all(rates.omega[ok, :2] == 0.0)  # planar motion: only the yaw rate is measured
    assert np.abs(yaw_imu).max() > 0.3  # the drive turns
    assert np.sqrt(np.mean((rates.omega[ok, 2] - yaw_imu[ok]) ** 2)) < 0.03  # rad/s


def test_radar_scans_with_too_few_static_returns_are_skipped_and_counted(radar_drive):
    rig, messages = radar_drive
    stamps, az, el, vr = _scans(messages, "radar_front")
    baseline = radar_angular_rates(stamps, az, el, vr, rig.ego_from("radar_front"))
    few = set(range(0, len(stamps), 4))  # every fourth scan keeps only its 4 nearest returns
    cut = [[a[:4] if k in few else a for k, a in enumerate(arrays)] for arrays in (az, el, vr)]
    gyro_stamps, gyro = _gyro(messages)
    result = radar_imu_time_offset(rig, "radar_front", "imu", stamps, *cut, gyro_stamps, gyro)
    expected = len(few | set(np.flatnonzero(~baseline.valid).tolist()))
    assert result.samples_skipped == expected and expected >= 195
    assert f"({expected} unusable skipped)" in result.summary()
    assert abs(result.offset_ns - RADAR_OFFSET_NS) < 3_000_000, result.summary()
    # With almost every scan cut, too few remain: a clear error, not a guess.
    keep = set(range(0, len(stamps), 60))  # 14 scans
    cut = [[a if k in keep else a[:4] for k, a in enumerate(arrays)] for arrays in (az, el, vr)]
    with pytest.raises(TimeOffsetError, match=r"only 1[0-4] of 781 radar scans have 6 or more static returns"):
        radar_imu_time_offset(rig, "radar_front", "imu", stamps, *cut, gyro_stamps, gyro)


# ---------------------------------------------------------------------------------------------- exact rates
def _yaw_rate(t: np.ndarray) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * 0.31 * t) + 0.15 * np.sin(2 * np.pi * 0.73 * t + 1.0)


def _yaw_angle(t: np.ndarray) -> np.ndarray:
    return (-0.3 / (2 * np.pi * 0.31) * np.cos(2 * np.pi * 0.31 * t)
            - 0.15 / (2 * np.pi * 0.73) * np.cos(2 * np.pi * 0.73 * t + 1.0))


def _exact_case(offset_ns: int, sensor_from_imu: np.ndarray, seed: int = 0, duration_s: float = 12.0
                ) -> tuple[IntervalRates, np.ndarray, np.ndarray]:
    """A sensor at 15 Hz whose clock is offset_ns ahead of the IMU's (200 Hz, noisy, biased), both seeing
    a known yaw motion about the IMU's z axis; the sensor's rates are exact means over its intervals."""
    rng = np.random.default_rng(seed)
    t_imu = np.arange(0.0, duration_s, 0.005)
    gyro = np.zeros((len(t_imu), 3))
    gyro[:, 2] = _yaw_rate(t_imu)
    gyro += rng.normal(0.0, 1.4e-3, gyro.shape) + [0.002, -0.001, 0.0017]
    gyro_stamps = (t_imu * 1e9).astype(np.int64) + 1_000_000_000
    frames = np.arange(1.0, duration_s - 1.0, 1 / 15)  # reference time of each frame
    stamps = (frames * 1e9).astype(np.int64) + 1_000_000_000 + offset_ns
    s, e = frames[:-1], frames[1:]
    mean_yaw = (_yaw_angle(e) - _yaw_angle(s)) / (e - s)
    omega = np.outer(mean_yaw, sensor_from_imu[:, 2])
    return IntervalRates(stamps[:-1], stamps[1:], omega, np.full(len(s), 100)), gyro_stamps, gyro


def test_exact_rates_give_the_offset_to_a_fraction_of_a_millisecond():
    R = rotation_from_rpy(0.3, -1.2, 2.0)
    rates, gs, g = _exact_case(37_400_000, R)
    with_rotation = offset_from_rates(rates, gs, g, R)
    magnitudes = offset_from_rates(rates, gs, g, None)
    assert abs(with_rotation.offset_ns - 37_400_000) < 300_000, with_rotation.summary()
    assert abs(magnitudes.offset_ns - 37_400_000) < 1_000_000, magnitudes.summary()
    assert with_rotation.peak_correlation > 0.99
    assert 0 < with_rotation.uncertainty_ns < 300_000


def test_negative_offsets_are_found_as_well():
    rates, gs, g = _exact_case(-55_000_000, np.eye(3), seed=1)
    assert abs(offset_from_rates(rates, gs, g, np.eye(3)).offset_ns + 55_000_000) < 300_000


def test_grossly_wrong_intervals_are_dropped():
    rates, gs, g = _exact_case(20_000_000, np.eye(3), seed=2)
    omega = rates.omega.copy()
    omega[[10, 40, 41, 90, 120], 2] += 2.0  # failed registrations
    bad = dataclasses.replace(rates, omega=omega)
    result = offset_from_rates(bad, gs, g, np.eye(3))
    assert abs(result.offset_ns - 20_000_000) < 500_000, result.summary()
    assert result.samples_used <= rates.valid.sum() - 5


def test_a_drive_without_rotation_raises():
    rates, gs, g = _exact_case(10_000_000, np.eye(3))
    still = dataclasses.replace(rates, omega=np.random.default_rng(3).normal(0.0, 1e-3, rates.omega.shape))
    with pytest.raises(TimeOffsetError, match="no clear correlation"):
        offset_from_rates(still, gs, np.random.default_rng(4).normal(0.0, 1e-3, g.shape), np.eye(3))


def test_a_single_axis_correlation_ignores_the_other_axes():
    """A sensor that measures only its z rate: junk on x and y must not move the offset."""
    rates, gs, g = _exact_case(-23_000_000, np.eye(3), seed=5)
    omega = rates.omega.copy()
    omega[:, :2] = np.random.default_rng(7).normal(0.0, 0.5, (len(omega), 2))
    junk = dataclasses.replace(rates, omega=omega)
    result = offset_from_rates(junk, gs, g, np.eye(3), axes=(2,))
    assert abs(result.offset_ns + 23_000_000) < 300_000, result.summary()
    assert result.peak_correlation > 0.99
    with pytest.raises(TimeOffsetError, match="axes must name"):
        offset_from_rates(rates, gs, g, np.eye(3), axes=(3,))


def test_an_offset_beyond_the_search_range_raises():
    rates, gs, g = _exact_case(300_000_000, np.eye(3))
    with pytest.raises(TimeOffsetError, match="edge of the search range"):
        offset_from_rates(rates, gs, g, np.eye(3), max_offset_ns=100_000_000)


def test_imu_data_that_does_not_cover_the_sensor_data_raises():
    rates, gs, g = _exact_case(0, np.eye(3))
    keep = gs < gs[0] + 1_600_000_000  # the sensor starts 1 s in: only 0.6 s overlap
    with pytest.raises(TimeOffsetError, match="covers only"):
        offset_from_rates(rates, gs[keep], g[keep], np.eye(3))


def test_camera_frames_of_the_wrong_size_raise():
    images = [np.zeros((100, 100, 3), np.uint8)] * 3
    with pytest.raises(TimeOffsetError, match="frame 0"):
        camera_angular_rates([0, 1, 2], images, SIM_CAMERA)


# ---------------------------------------------------------------------------------------------- radar, synthetic
def _radar_scans(rig: Rig, radar_id: str, yaw_rate, duration_s: float, offset_ns: int, seed: int,
                 speed: float = 10.0, n_static: int = 60) -> tuple[list, list, list, list]:
    """13 Hz scans of a radar on a car driving at ``speed`` with ``yaw_rate(t)`` [rad/s]: ``n_static``
    static returns (Doppler noise 0.1 m/s, azimuth noise 1 deg) and 3 false alarms per scan, stamped on
    a clock ``offset_ns`` ahead of the reference (the IMU of :func:`_imu`)."""
    rng = np.random.default_rng(seed)
    T = rig.ego_from(radar_id)
    r_x, r_y = T.translation[:2]
    stamps, azs, els, vrs = [], [], [], []
    for t in np.arange(1.0, duration_s - 1.0, 1 / 13):
        w = float(yaw_rate(np.array([t]))[0])
        v_sensor = np.array([speed - w * r_y, w * r_x, 0.0])  # ego frame
        az = rng.uniform(-1.0, 1.0, n_static) * np.radians(60.0)
        el = rng.uniform(-1.0, 1.0, n_static) * np.radians(5.0)
        u = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1) @ T.rotation.T
        vr = -(u @ v_sensor) + rng.normal(0.0, 0.1, n_static)
        az = az + rng.normal(0.0, np.radians(1.0), n_static)
        stamps.append(int(t * 1e9) + 1_000_000_000 + offset_ns)
        azs.append(np.concatenate([az, rng.uniform(-1.0, 1.0, 3)]))
        els.append(np.concatenate([el, np.zeros(3)]))
        vrs.append(np.concatenate([vr, rng.uniform(-30.0, 30.0, 3)]))
    return stamps, azs, els, vrs


def _imu(yaw_rate, duration_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """200 Hz gyro (IMU frame = ego frame orientation) reading ``yaw_rate(t)`` with noise and bias."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, duration_s, 0.005)
    gyro = rng.normal(0.0, 1.4e-3, (len(t), 3)) + [0.002, -0.001, 0.0017]
    gyro[:, 2] += yaw_rate(t)
    return (t * 1e9).astype(np.int64) + 1_000_000_000, gyro


def test_radar_static_velocity_ignores_moving_objects_and_false_alarms():
    rng = np.random.default_rng(11)
    v = np.array([9.0, 0.8])
    az = np.radians(np.r_[rng.uniform(-60, 60, 12), rng.uniform(10, 14, 5), rng.uniform(-60, 60, 2)])
    u = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], axis=1)
    vr = -(u[:, :2] @ v) + rng.normal(0.0, 0.05, len(az))
    vr[12:17] = -(u[12:17, :2] @ (v - [12.0, 1.0]))  # a car crossing ahead, 5 returns
    vr[17:] = [25.0, -7.0]  # false alarms
    est, inliers = radar_static_velocity(u, vr)
    np.testing.assert_allclose(est, v, atol=0.1)
    assert inliers.tolist() == [True] * 12 + [False] * 7


def test_radar_offset_from_synthetic_scans_and_a_straight_drive_that_raises():
    rig = default_rig(1)
    duration = 14.0
    gs, g = _imu(_yaw_rate, duration, seed=12)
    result = radar_imu_time_offset(rig, "radar_front", "imu", *_radar_scans(rig, "radar_front", _yaw_rate, duration,
                                                                             -33_000_000, seed=13), gs, g)
    # 156 scans of 60 static returns: about 1.6 ms (1 sigma) over seeds, no bias (20 seeds: +0.3 +- 0.4 ms).
    assert abs(result.offset_ns + 33_000_000) < 4_000_000, result.summary()
    assert abs(result.offset_ns + 33_000_000) < 3 * result.uncertainty_ns

    def straight(t):
        return np.zeros_like(t)

    gs, g = _imu(straight, duration, seed=14)
    with pytest.raises(TimeOffsetError, match="no clear correlation"):
        radar_imu_time_offset(rig, "radar_front", "imu", *_radar_scans(rig, "radar_front", straight, duration,
                                                                        10_000_000, seed=15), gs, g)


def test_radar_over_the_rear_axle_or_a_sensor_that_is_no_radar_raises():
    base = default_rig(1)
    scans = _radar_scans(base, "radar_front", _yaw_rate, 14.0, 0, seed=16)
    gs, g = _imu(_yaw_rate, 14.0, seed=17)
    over_axle = base.replace_sensor(Sensor("radar_front", "radar", Transform.from_rpy(
        "ego", "radar_front", 0.0, 0.0, 0.0, (0.3, 0.0, 1.0)), rate_hz=13.0))
    with pytest.raises(TimeOffsetError, match=r"\+0.30 m ahead of the rear axle"):
        radar_imu_time_offset(over_axle, "radar_front", "imu", *scans, gs, g)
    with pytest.raises(TimeOffsetError, match="has no radar 'lidar_top'"):
        radar_imu_time_offset(base, "lidar_top", "imu", *scans, gs, g)


# ---------------------------------------------------------------------------------------------- microphone
def _chirp(t: np.ndarray, duration_s: float = 0.02, f0: float = 1000.0, f1: float = 4000.0) -> np.ndarray:
    """Linear chirp under a Hann window, zero outside [0, duration]."""
    inside = (t >= 0) & (t <= duration_s)
    k = (f1 - f0) / duration_s
    phase = 2 * np.pi * (f0 * t + 0.5 * k * t * t)
    return np.where(inside, np.sin(phase) * np.sin(np.pi * t / duration_s) ** 2, 0.0)


def test_microphone_offset_from_a_chirp_with_propagation_delay_and_an_echo():
    rig = default_rig(1)
    mic = rig["mic_array"]
    mics = mic.ego_from_sensor.apply(mic.mic_positions)
    fs = 16000
    source = np.array([14.0, -6.0, 1.0])  # a loudspeaker beside the car, ego frame
    image_source = source * [1, 1, -1]  # its reflection in the ground
    emission_ns = 5_000_000_000_123  # reference clock
    offset_ns = 7_300_000  # the microphone's clock runs 7.3 ms ahead
    first_sample_ns = emission_ns - 250_000_000 + offset_ns + 40_000  # mic clock, not on a sample of the event
    n = np.arange(int(1.0 * fs))
    t_ref = (first_sample_ns + n * 1e9 / fs - offset_ns) / 1e9  # reference time of each sample [s]
    rng = np.random.default_rng(5)
    audio = np.zeros((len(mics), len(n)))
    for m, p in enumerate(mics):
        for src, gain in ((source, 1.0), (image_source, 0.5)):
            r = np.linalg.norm(p - src)
            audio[m] += gain / r * _chirp(t_ref - emission_ns / 1e9 - r / 343.0)
    audio += rng.normal(0.0, 0.01, audio.shape)  # SNR about 10 dB over the chirp
    waveform = _chirp(np.arange(int(0.02 * fs) + 1) / fs)
    result = microphone_time_offset(audio.astype(np.float32), first_sample_ns, fs, waveform, emission_ns, source, mics)
    assert isinstance(result, TimeOffsetResult)
    assert abs(result.offset_ns - offset_ns) < 30_000, result.summary()  # under half a sample (31 us)
    assert result.samples_used == 4
    assert result.peak_correlation > 0.5
    assert 0 < result.uncertainty_ns < 60_000


def test_microphone_that_did_not_hear_the_sound_raises():
    noise = np.random.default_rng(6).normal(0.0, 0.1, (2, 16000))
    waveform = _chirp(np.arange(321) / 16000)
    with pytest.raises(TimeOffsetError, match="no channel of 2 heard"):
        microphone_time_offset(noise, 0, 16000, waveform, 0, np.zeros(3), np.zeros((2, 3)))


def test_microphone_shapes_are_checked():
    with pytest.raises(TimeOffsetError, match="microphone positions"):
        microphone_time_offset(np.zeros((3, 1000)), 0, 16000, np.ones(10), 0, np.zeros(3), np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------- the rig
def test_rig_with_time_offset_adds_the_reference_offset_and_survives_yaml(tmp_path):
    base = default_rig(1)
    rig = base.replace_sensor(dataclasses.replace(base["imu"], time_offset_ns=1_000_000))
    result = TimeOffsetResult(30_200_000, 500_000, 0.99, 200)
    updated = rig_with_time_offset(rig, "cam_front", result, reference_id="imu")
    assert updated["cam_front"].time_offset_ns == 31_200_000
    assert updated["imu"].time_offset_ns == 1_000_000
    assert rig["cam_front"].time_offset_ns == 0  # the input rig is unchanged
    updated.save(tmp_path / "rig.yaml")
    assert Rig.load(tmp_path / "rig.yaml")["cam_front"].time_offset_ns == 31_200_000
    with pytest.raises(TimeOffsetError, match="no sensor 'cam_side'"):
        rig_with_time_offset(rig, "cam_side", result)
