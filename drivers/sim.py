"""The simulated rig: every sensor of a rig driven by one deterministic scene, as one ordered message stream.

``SimulatedRig(config, rig).messages()`` yields camera images, LiDAR sweeps, radar scans, IMU samples,
audio chunks, vehicle speed and ground truth (``sensor_id == "ground_truth"``, one per reference-LiDAR
sweep, same stamp) in non-decreasing ``stamp_ns`` order, lazily (a camera image is rendered only when
its turn comes).

Time: the data of each message is generated at its true time ``t`` (seconds since the start of the drive,
on the sensor's regular grid); its stamp is ``start_stamp_ns + t + clock_offset_ns[sensor] + jitter``,
where the jitter is Gaussian with ``stamp_jitter_ns[sensor]`` as 1 sigma, clipped to 3 sigma and to a
quarter of the sensor period (so each sensor's stamps stay increasing). The offsets model what the
sensors' clocks really do; the rig's ``time_offset_ns`` is what downstream code believes (calibration).
Set both equal for a perfectly calibrated rig, or leave the rig at 0 to exercise offset estimation.

Determinism: the scene comes from ``config.seed``; every sensor draws from its own random streams,
derived from ``(seed, crc32(sensor_id))`` with ``numpy.random.SeedSequence``, so adding a camera changes
nothing in the LiDAR's data.

Grids (``k = 0, 1, ...``, all inside ``[0, duration_s]``): cameras expose at ``k / camera_rate``; LiDAR
sweeps end at ``(k + 1) / lidar_rate``; radar scans at ``k / radar_rate``; IMU and vehicle speed at
``k / rate``; audio chunks start at ``k * chunk / sample_rate``.
"""

from __future__ import annotations

import dataclasses
import heapq
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from calibration.camera import CameraModel
from calibration.rig import Rig, Sensor
from calibration.transform import Transform
from calibration.yamlconf import ConfigError
from drivers.messages import AudioChunk, CameraImage, LidarSweep, Message
from drivers.sim_audio import synth_audio
from drivers.sim_camera import render_camera
from drivers.sim_imu import ImuSimulator, WheelSpeedSimulator
from drivers.sim_lidar import WEATHERS, LidarParams, ground_truth_boxes, simulate_sweep
from drivers.sim_radar import simulate_scan
from drivers.sim_scene import Scene

GT_SENSOR_ID = "ground_truth"
MAX_CAMERAS = 6
IMU_CHUNK_S = 0.1  # IMU samples are computed in vectorised chunks of this length


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulated drive needs besides the rig (loaded from ``configs/sim_*.yaml``).

    Args:
        seed: scene and sensor-noise seed.
        duration_s: length of the drive [s].
        weather: ``clear | rain | fog | night``.
        max_speed: ego top speed [m/s]; curvy: curved road stretches; stop: one stop in the drive.
        n_sirens: emergency vehicles sounding a siren; traffic_density: vehicles per 100 m of lane.
        n_cameras: cameras of the default rig (1-6); a rig given to :class:`SimulatedRig` must have as many.
        camera_rate_hz, lidar_rate_hz, radar_rate_hz, imu_rate_hz, vehicle_speed_rate_hz: rates [Hz].
        lidar_columns: LiDAR azimuth columns per revolution (1800 = 0.2 deg steps, 900 = 0.4 deg).
        audio_sample_rate: [Hz]; audio_chunk_samples: samples per AudioChunk.
        start_stamp_ns: stamp of t = 0 [ns]; by default 2023-11-14 22:13:20 UTC, a realistic epoch time
            (int64 nanoseconds, as real recordings carry; stamps must stay >= 0 for ROS time).
        clock_offset_ns: sensor id -> offset of that sensor's stamps [ns] (sensors not listed: 0).
        stamp_jitter_ns: sensor id -> 1-sigma stamp jitter [ns] (sensors not listed: 0).
    """

    seed: int = 0
    duration_s: float = 20.0
    weather: Literal["clear", "rain", "fog", "night"] = "clear"
    max_speed: float = 15.0
    curvy: bool = True
    stop: bool = False
    n_sirens: int = 1
    traffic_density: float = 1.2
    n_cameras: int = 2
    camera_rate_hz: float = 15.0
    lidar_rate_hz: float = 10.0
    lidar_columns: int = 1800
    radar_rate_hz: float = 13.0
    imu_rate_hz: float = 200.0
    vehicle_speed_rate_hz: float = 50.0
    audio_sample_rate: int = 16000
    audio_chunk_samples: int = 1600
    start_stamp_ns: int = 1_700_000_000_000_000_000
    clock_offset_ns: dict[str, int] = field(default_factory=dict)
    stamp_jitter_ns: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"SimConfig: {what}")

        need(self.duration_s > 0, f"duration_s must be > 0, got {self.duration_s}")
        need(self.weather in WEATHERS, f"weather must be one of {list(WEATHERS)}, got {self.weather!r}")
        need(self.max_speed >= 0, f"max_speed must be >= 0, got {self.max_speed}")
        need(self.n_sirens >= 0, f"n_sirens must be >= 0, got {self.n_sirens}")
        need(self.traffic_density >= 0, f"traffic_density must be >= 0, got {self.traffic_density}")
        need(1 <= self.n_cameras <= MAX_CAMERAS, f"n_cameras must be 1..{MAX_CAMERAS}, got {self.n_cameras}")
        for name in ("camera_rate_hz", "lidar_rate_hz", "radar_rate_hz", "imu_rate_hz", "vehicle_speed_rate_hz"):
            need(0 < getattr(self, name) <= 1000, f"{name} must be in (0, 1000], got {getattr(self, name)}")
        need(self.audio_sample_rate > 0 and self.audio_chunk_samples > 0,
             f"audio_sample_rate and audio_chunk_samples must be > 0, got {self.audio_sample_rate}, "
             f"{self.audio_chunk_samples}")
        for sid, j in self.stamp_jitter_ns.items():
            need(j >= 0, f"stamp_jitter_ns[{sid!r}] must be >= 0, got {j}")
        # The earliest stamp is start + offset - jitter (clipped at 3 sigma); ROS time cannot be negative.
        for sid, o in self.clock_offset_ns.items():
            j = self.stamp_jitter_ns.get(sid, 0)
            need(self.start_stamp_ns + o - 3 * j >= 0,
                 f"clock_offset_ns[{sid!r}] = {o} (jitter {j}) gives negative stamps with start_stamp_ns = "
                 f"{self.start_stamp_ns}; raise start_stamp_ns")
        need(self.start_stamp_ns - 3 * max(self.stamp_jitter_ns.values(), default=0) >= 0,
             f"start_stamp_ns = {self.start_stamp_ns} is too small for the stamp jitter (stamps would be < 0)")


# ---------------------------------------------------------------------------------------------- default rig
def _camera_rotation(yaw_deg: float) -> np.ndarray:
    """ego_from_camera rotation of a level camera looking along ego yaw ``yaw_deg`` (optical frame)."""
    y = np.radians(yaw_deg)
    z_axis = np.array([np.cos(y), np.sin(y), 0.0])   # optical z: viewing direction
    x_axis = np.array([np.sin(y), -np.cos(y), 0.0])  # optical x: image right
    y_axis = np.array([0.0, 0.0, -1.0])              # optical y: image down
    # Rounded so exact angles (0, 180 deg) give exact matrices and a clean rig file.
    return np.round(np.column_stack([x_axis, y_axis, z_axis]), 12) + 0.0


# (id, viewing yaw [deg], position in ego [m]); the first n of these are the default rig's cameras.
CAMERA_LAYOUT: tuple[tuple[str, float, tuple[float, float, float]], ...] = (
    ("cam_front", 0.0, (1.8, 0.0, 1.55)),
    ("cam_rear", 180.0, (-0.6, 0.0, 1.5)),
    ("cam_front_left", 55.0, (1.6, 0.8, 1.55)),
    ("cam_front_right", -55.0, (1.6, -0.8, 1.55)),
    ("cam_rear_left", 110.0, (0.3, 0.85, 1.55)),
    ("cam_rear_right", -110.0, (0.3, -0.85, 1.55)),
)
SIM_CAMERA = CameraModel("pinhole", 640, 360, 400.0, 400.0, 319.5, 179.5, (-0.05, 0.01, 0.0, 0.0, 0.0))

# (id, boresight yaw [deg], position in ego [m]) of the radars: one in the front bumper and one at each
# corner, as nuScenes' rig has them. Each sees +-60 deg (drivers.sim_radar), so together they see all round.
RADAR_LAYOUT: tuple[tuple[str, float, tuple[float, float, float]], ...] = (
    ("radar_front", 0.0, (3.7, 0.0, 0.5)),
    ("radar_front_left", 80.0, (3.4, 0.9, 0.5)),
    ("radar_front_right", -80.0, (3.4, -0.9, 0.5)),
    ("radar_back_left", 160.0, (-0.8, 0.9, 0.5)),
    ("radar_back_right", -160.0, (-0.8, -0.9, 0.5)),
)


def default_rig(n_cameras: int = 2) -> Rig:
    """The simulated vehicle: ``n_cameras`` (1-6) pinhole cameras 640x360 (77 deg horizontal field of
    view, mild barrel distortion) around the roof (front, rear, then front-left/right, rear-left/right),
    ``lidar_top`` (1.0, 0, 1.9), five level radars (:data:`RADAR_LAYOUT`: ``radar_front`` in the bumper at
    (3.7, 0, 0.5), ``radar_front_left`` / ``_right`` and ``radar_back_left`` / ``_right`` at the corners,
    looking 80 and 160 deg to each side), ``imu`` (1.3, 0, 0.4), ``mic_array`` of 4 microphones in a 0.2 m
    square on the roof, and ``vehicle_speed``. All sensors are level and face forward except the cameras and
    radars; every ``time_offset_ns`` is 0.

    ``configs/rig_sim.yaml`` is ``default_rig()`` written out.
    """
    if not 1 <= n_cameras <= MAX_CAMERAS:
        raise ValueError(f"default_rig: n_cameras must be 1..{MAX_CAMERAS}, got {n_cameras}")
    sensors = []
    for cam_id, yaw, pos in CAMERA_LAYOUT[:n_cameras]:
        sensors.append(Sensor(cam_id, "camera", Transform("ego", cam_id, _camera_rotation(yaw), pos),
                              camera=SIM_CAMERA, rate_hz=15.0))

    def level(sid: str, pos) -> Transform:
        return Transform("ego", sid, np.eye(3), pos)

    sensors += [
        Sensor("lidar_top", "lidar", level("lidar_top", (1.0, 0.0, 1.9)), rate_hz=10.0),
        *[Sensor(rid, "radar", Transform.from_rpy("ego", rid, 0.0, 0.0, np.radians(yaw), pos), rate_hz=13.0)
          for rid, yaw, pos in RADAR_LAYOUT],
        Sensor("imu", "imu", level("imu", (1.3, 0.0, 0.4)), rate_hz=200.0),
        Sensor("mic_array", "microphone", level("mic_array", (0.2, 0.0, 1.6)), rate_hz=10.0,
               mic_positions=np.array([[0.1, 0.1, 0.0], [0.1, -0.1, 0.0], [-0.1, 0.1, 0.0], [-0.1, -0.1, 0.0]])),
        Sensor("vehicle_speed", "vehicle_speed", level("vehicle_speed", (0.0, 0.0, 0.0)), rate_hz=50.0),
    ]
    return Rig("sim_default", tuple(sensors))


# ---------------------------------------------------------------------------------------------- streams
def sensor_rng(seed: int, sensor_id: str, purpose: int) -> np.random.Generator:
    """Independent random stream for one sensor: purpose 0 = data noise, 1 = stamp jitter."""
    key = zlib.crc32(sensor_id.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(key, purpose)))


@dataclass(frozen=True)
class _Grid:
    """A sensor's regular time grid: times ``(k + first) / rate`` for k < count (integer ns)."""

    rate_hz: float
    first: int
    count: int

    def t_ns(self, k: int) -> int:
        return int(round((k + self.first) * 1e9 / self.rate_hz))


def _grid(duration_s: float, rate_hz: float, first: int = 0) -> _Grid:
    """All grid times ``(k + first) / rate`` inside [0, duration]."""
    last = int(np.floor(duration_s * rate_hz + 1e-9))
    return _Grid(rate_hz, first, max(0, last - first + 1))


class SimulatedRig:
    """Drives every sensor of ``rig`` through one scene built from ``config``.

    Args:
        config: the drive and sensor rates.
        rig: the sensors to simulate (``default_rig(config.n_cameras)`` or a rig file); must have
            ``config.n_cameras`` cameras; sensor kinds camera, lidar, radar, imu, microphone, vehicle_speed.
    Raises:
        ConfigError: camera count mismatch, or offsets/jitters named for sensors the rig lacks.
    """

    def __init__(self, config: SimConfig, rig: Rig):
        cams = rig.ids("camera")
        if len(cams) != config.n_cameras:
            raise ConfigError(f"sim config says n_cameras={config.n_cameras} but rig '{rig.name}' has "
                              f"{len(cams)} cameras ({', '.join(cams) or 'none'}); make them agree")
        for what, table in (("clock_offset_ns", config.clock_offset_ns), ("stamp_jitter_ns", config.stamp_jitter_ns)):
            unknown = sorted(set(table) - set(rig.ids()))
            if unknown:
                raise ConfigError(f"sim config {what} names sensor '{unknown[0]}' that rig '{rig.name}' lacks "
                                  f"(has: {', '.join(rig.ids())})")
        self.config = config
        self.scene = Scene(config.seed, config.duration_s, max_speed=config.max_speed, curvy=config.curvy,
                           n_sirens=config.n_sirens, traffic_density=config.traffic_density, stop=config.stop)
        self.rig = Rig(rig.name, tuple(dataclasses.replace(s, rate_hz=self._rate(s)) for s in rig.sensors))
        lidars = self.rig.ids("lidar")
        self.reference_lidar: str | None = lidars[0] if lidars else None

    @classmethod
    def from_config(cls, config: SimConfig) -> "SimulatedRig":
        """The simulated drive on ``default_rig(config.n_cameras)``."""
        return cls(config, default_rig(config.n_cameras))

    # ------------------------------------------------------------------ timing
    def _rate(self, s: Sensor) -> float:
        c = self.config
        return {
            "camera": c.camera_rate_hz, "lidar": c.lidar_rate_hz, "radar": c.radar_rate_hz,
            "imu": c.imu_rate_hz, "vehicle_speed": c.vehicle_speed_rate_hz,
            "microphone": c.audio_sample_rate / c.audio_chunk_samples,
        }[s.kind]

    def _grid_of(self, s: Sensor) -> _Grid:
        # LiDAR sweeps are stamped at their end, so the first full sweep ends at one period.
        return _grid(self.config.duration_s, self._rate(s), first=1 if s.kind == "lidar" else 0)

    def _audio_chunks(self) -> int:
        c = self.config
        return int(np.floor(c.duration_s * c.audio_sample_rate / c.audio_chunk_samples + 1e-9))

    def n_messages_estimate(self) -> int:
        """Exact number of messages :meth:`messages` yields (for progress bars)."""
        n = 0
        for s in self.rig.sensors:
            if s.kind == "microphone":
                n += self._audio_chunks()
            else:
                k = self._grid_of(s).count
                n += 2 * k if s.sensor_id == self.reference_lidar else k
        return n

    def _stamper(self, s: Sensor) -> Callable[[int], int]:
        """true time [ns] -> stamp [ns] for sensor ``s`` (offset + clipped Gaussian jitter)."""
        c = self.config
        offset = int(c.clock_offset_ns.get(s.sensor_id, 0))
        sigma = float(c.stamp_jitter_ns.get(s.sensor_id, 0))
        clip = min(3.0 * sigma, 0.25e9 / s.rate_hz)
        rng = sensor_rng(c.seed, s.sensor_id, 1)

        def stamp(t_ns: int) -> int:
            j = float(np.clip(rng.normal(0.0, sigma), -clip, clip)) if sigma > 0 else 0.0
            return c.start_stamp_ns + t_ns + offset + int(round(j))

        return stamp

    # ------------------------------------------------------------------ per-sensor streams
    def _camera_stream(self, s: Sensor) -> Iterator[Message]:
        grid, stamp, rng = self._grid_of(s), self._stamper(s), sensor_rng(self.config.seed, s.sensor_id, 0)
        for k in range(grid.count):
            t_ns = grid.t_ns(k)
            img = render_camera(self.scene, t_ns / 1e9, s.camera, s.ego_from_sensor, self.config.weather, rng)
            yield CameraImage(s.sensor_id, stamp(t_ns), k, img)

    def _lidar_stream(self, s: Sensor) -> Iterator[Message]:
        grid, stamp, rng = self._grid_of(s), self._stamper(s), sensor_rng(self.config.seed, s.sensor_id, 0)
        period = 1.0 / grid.rate_hz
        for k in range(grid.count):
            t_ns = grid.t_ns(k)
            res = simulate_sweep(self.scene, t_ns / 1e9, period, s.ego_from_sensor, self.config.weather, rng,
                                 LidarParams(n_columns=self.config.lidar_columns))
            st = stamp(t_ns)
            yield LidarSweep(s.sensor_id, st, k, res.points, res.time_offset, res.ring)
            if s.sensor_id == self.reference_lidar:
                yield ground_truth_boxes(res, GT_SENSOR_ID, st, k)

    def _radar_stream(self, s: Sensor) -> Iterator[Message]:
        grid, stamp, rng = self._grid_of(s), self._stamper(s), sensor_rng(self.config.seed, s.sensor_id, 0)
        for k in range(grid.count):
            t_ns = grid.t_ns(k)
            yield simulate_scan(self.scene, t_ns / 1e9, s.ego_from_sensor, self.config.weather, rng,
                                s.sensor_id, stamp(t_ns), k).scan

    def _imu_stream(self, s: Sensor) -> Iterator[Message]:
        grid, stamp = self._grid_of(s), self._stamper(s)
        imu = ImuSimulator(self.scene, s.ego_from_sensor, grid.rate_hz, sensor_rng(self.config.seed, s.sensor_id, 0))
        chunk = max(1, int(round(IMU_CHUNK_S * grid.rate_hz)))
        for k0 in range(0, grid.count, chunk):
            ks = range(k0, min(k0 + chunk, grid.count))
            t_ns = [grid.t_ns(k) for k in ks]
            yield from imu.samples(np.asarray(t_ns) / 1e9, [stamp(t) for t in t_ns], s.sensor_id, k0)

    def _speed_stream(self, s: Sensor) -> Iterator[Message]:
        grid, stamp = self._grid_of(s), self._stamper(s)
        wheel = WheelSpeedSimulator(self.scene, sensor_rng(self.config.seed, s.sensor_id, 0))
        for k in range(grid.count):
            t_ns = grid.t_ns(k)
            yield wheel.message(t_ns / 1e9, stamp(t_ns), s.sensor_id, k)

    def _audio_stream(self, s: Sensor) -> Iterator[Message]:
        c = self.config
        stamp, rng = self._stamper(s), sensor_rng(c.seed, s.sensor_id, 0)
        mics_ego = s.ego_from_sensor.apply(np.asarray(s.mic_positions, dtype=np.float64))
        for k in range(self._audio_chunks()):
            t_ns = int(round(k * c.audio_chunk_samples * 1e9 / c.audio_sample_rate))
            samples = synth_audio(self.scene, t_ns / 1e9, c.audio_chunk_samples, c.audio_sample_rate, mics_ego, rng)
            yield AudioChunk(s.sensor_id, stamp(t_ns), k, np.asarray(samples, dtype=np.float32), c.audio_sample_rate)

    def messages(self) -> Iterator[Message]:
        """Every message of the drive in non-decreasing ``stamp_ns`` order (ties: rig order).

        Each call starts the drive afresh and yields the same messages for the same config and rig."""
        makers = {"camera": self._camera_stream, "lidar": self._lidar_stream, "radar": self._radar_stream,
                  "imu": self._imu_stream, "vehicle_speed": self._speed_stream, "microphone": self._audio_stream}
        streams = [makers[s.kind](s) for s in self.rig.sensors]
        return heapq.merge(*streams, key=lambda m: m.stamp_ns)

