"""Simulated IMU (gyro + accelerometer) and wheel-speed sensor, from the scene's ego motion.

IMU: the ego moves in the plane, so the true angular velocity is (0, 0, yaw_rate) and the specific force
at the IMU's mounting point ``r`` (ego frame) is::

    f = (dv/dt, v * yaw_rate, 0) + yaw_acc * z x r - yaw_rate^2 * (r_x, r_y, 0) + (0, 0, 9.81)

(the origin's acceleration, the lever-arm terms, and the reaction to gravity: a level IMU at rest reads
+9.81 m/s^2 on z). Both are rotated into the IMU frame with the mounting rotation.

Error model (per axis, independent; defaults: an automotive-grade MEMS IMU, e.g. ASM330LHH / SMI230 class):

=====================  ======================  ================================
quantity               gyro                    accelerometer
=====================  ======================  ================================
white noise density    1.0e-4 rad/s/sqrt(Hz)   1.0e-3 m/s^2/sqrt(Hz) (~100 ug)
bias random walk       2.0e-5 rad/s^2/sqrt(Hz) 2.0e-4 m/s^3/sqrt(Hz)
turn-on bias (1 sig)   1.7e-3 rad/s (0.1 d/s)  0.02 m/s^2 (2 mg)
=====================  ======================  ================================

Discretised at rate f with step dt = 1/f: white noise std = density * sqrt(f) per sample; the bias takes
a step of std = random_walk * sqrt(dt) per sample, so its spread grows as sqrt(t).

Vehicle speed (wheel odometry): true speed times a fixed scale error (tyre radius, 0.3 % 1 sigma), plus
0.02 m/s white noise, quantised to 0.05 km/h (a typical CAN signal resolution); below 0.1 m/s the wheel
sensors see no teeth passing and report exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.transform import Transform
from drivers.messages import ImuSample, VehicleSpeed
from drivers.sim_lidar import SceneLike

GRAVITY_MPS2 = 9.81


@dataclass(frozen=True)
class ImuParams:
    """IMU error model (see the module docstring for the defaults' origin).

    Args:
        gyro_noise_density: [rad/s/sqrt(Hz)]; gyro_bias_random_walk: [rad/s^2/sqrt(Hz)];
        gyro_bias_init: turn-on bias 1 sigma [rad/s];
        accel_noise_density: [m/s^2/sqrt(Hz)]; accel_bias_random_walk: [m/s^3/sqrt(Hz)];
        accel_bias_init: turn-on bias 1 sigma [m/s^2].
    """

    gyro_noise_density: float = 1.0e-4
    gyro_bias_random_walk: float = 2.0e-5
    gyro_bias_init: float = 1.7e-3
    accel_noise_density: float = 1.0e-3
    accel_bias_random_walk: float = 2.0e-4
    accel_bias_init: float = 0.02


class ImuSimulator:
    """Produces IMU samples on a regular grid, carrying the bias state from one call to the next.

    Args:
        scene: the world (only the ego motion is used).
        ego_from_imu: mounting of the IMU.
        rate_hz: sample rate [Hz].
        rng: random stream of this sensor (turn-on bias drawn here, then noise and bias steps).
        params: error model.
    """

    def __init__(self, scene: SceneLike, ego_from_imu: Transform, rate_hz: float, rng: np.random.Generator,
                 params: ImuParams = ImuParams()):
        if rate_hz <= 0:
            raise ValueError(f"ImuSimulator: rate_hz must be > 0, got {rate_hz}")
        self.scene = scene
        self.ego_from_imu = ego_from_imu
        self.rate_hz = float(rate_hz)
        self.params = params
        self._rng = rng
        self._gyro_bias = rng.normal(0.0, params.gyro_bias_init, 3)
        self._accel_bias = rng.normal(0.0, params.accel_bias_init, 3)

    def true_motion(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free (gyro (n, 3) [rad/s], specific force (n, 3) [m/s^2]) in the IMU frame.

        Args:
            t_s: (n,) consecutive sample times [s] on this IMU's grid (spacing 1 / rate_hz).
        """
        t_s = np.asarray(t_s, dtype=np.float64)
        if len(t_s) == 0:
            return np.zeros((0, 3)), np.zeros((0, 3))
        dt = 1.0 / self.rate_hz
        st = [self.scene.ego_state(float(t)) for t in t_s]
        wr = np.array([s.yaw_rate for s in st])
        # Yaw acceleration by central differences on the grid, with one extra state at each end.
        padded = np.concatenate([[self.scene.ego_state(float(t_s[0]) - dt).yaw_rate], wr,
                                 [self.scene.ego_state(float(t_s[-1]) + dt).yaw_rate]])
        yaw_acc = np.gradient(padded, dt)[1:-1]
        r = self.ego_from_imu.translation
        f = np.zeros((len(t_s), 3))
        f[:, 0] = np.array([s.accel_long for s in st]) - yaw_acc * r[1] - wr ** 2 * r[0]
        f[:, 1] = np.array([s.accel_lat for s in st]) + yaw_acc * r[0] - wr ** 2 * r[1]
        f[:, 2] = GRAVITY_MPS2
        gyro = np.zeros((len(t_s), 3))
        gyro[:, 2] = wr
        R = self.ego_from_imu.rotation
        return gyro @ R, f @ R  # row-wise R^T v: ego frame -> IMU frame

    def measure(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Measured (gyro (n, 3) [rad/s], accel (n, 3) [m/s^2]) at consecutive grid times ``t_s``.

        Successive calls continue the bias random walk, so call it with consecutive, increasing times."""
        gyro, accel = self.true_motion(t_s)
        n = len(gyro)
        p, dt = self.params, 1.0 / self.rate_hz
        # Bias walks first, then is read: sample k carries k+1 steps since the state before the call.
        g_steps = np.cumsum(self._rng.normal(0.0, p.gyro_bias_random_walk * np.sqrt(dt), (n, 3)), axis=0)
        a_steps = np.cumsum(self._rng.normal(0.0, p.accel_bias_random_walk * np.sqrt(dt), (n, 3)), axis=0)
        g_bias = self._gyro_bias + g_steps
        a_bias = self._accel_bias + a_steps
        if n:
            self._gyro_bias = g_bias[-1].copy()
            self._accel_bias = a_bias[-1].copy()
        g_white = self._rng.normal(0.0, p.gyro_noise_density * np.sqrt(self.rate_hz), (n, 3))
        a_white = self._rng.normal(0.0, p.accel_noise_density * np.sqrt(self.rate_hz), (n, 3))
        return gyro + g_bias + g_white, accel + a_bias + a_white

    def samples(self, t_s: np.ndarray, stamps_ns: list[int], sensor_id: str,
                first_seq: int) -> list[ImuSample]:
        """:meth:`measure` packed into messages, one per time, with the given stamps and consecutive seqs."""
        gyro, accel = self.measure(t_s)
        return [ImuSample(sensor_id, int(s), first_seq + i, gyro[i].copy(), accel[i].copy())
                for i, s in enumerate(stamps_ns)]


@dataclass(frozen=True)
class WheelSpeedParams:
    """Wheel-odometry speed model.

    Args:
        scale_sigma: 1-sigma fixed scale error (tyre radius) [-]; noise_mps: white noise [m/s];
        resolution_mps: quantisation step [m/s]; standstill_mps: below this true speed the reading is 0.
    """

    scale_sigma: float = 0.003
    noise_mps: float = 0.02
    resolution_mps: float = 0.05 / 3.6
    standstill_mps: float = 0.1


class WheelSpeedSimulator:
    """Vehicle-speed readings from the ego speed.

    Args:
        scene: the world; rng: random stream of this sensor (scale error drawn here); params: model.
    """

    def __init__(self, scene: SceneLike, rng: np.random.Generator,
                 params: WheelSpeedParams = WheelSpeedParams()):
        self.scene = scene
        self.params = params
        self._rng = rng
        self.scale = 1.0 + rng.normal(0.0, params.scale_sigma)

    def measure(self, t_s: float) -> float:
        """Measured speed [m/s] along ego +x at time t_s."""
        v = self.scene.ego_state(t_s).speed
        noise = self._rng.normal(0.0, self.params.noise_mps)
        if abs(v) < self.params.standstill_mps:
            return 0.0
        q = self.params.resolution_mps
        return float(np.round((v * self.scale + noise) / q) * q)

    def message(self, t_s: float, stamp_ns: int, sensor_id: str, seq: int) -> VehicleSpeed:
        """:meth:`measure` as a :class:`VehicleSpeed` message."""
        return VehicleSpeed(sensor_id, int(stamp_ns), int(seq), self.measure(t_s))
