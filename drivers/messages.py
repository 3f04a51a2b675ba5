"""Typed, time-stamped sensor messages: where data enters the stack.

Every message is a frozen dataclass with ``sensor_id`` (the rig's sensor id, also its frame name),
``stamp_ns`` (integer nanoseconds on the sensor's clock, as delivered) and ``seq`` (per-sensor counter),
plus numpy payloads whose shape, dtype, unit and frame are written on the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

# Object classes shared by the simulator, ground truth and (later) the detectors. Index = label id.
CLASS_NAMES: tuple[str, ...] = ("car", "truck", "pedestrian", "bicycle")


class ImageDecodeError(ValueError):
    """A camera message's compressed bytes cannot be decoded into an image."""


@dataclass(frozen=True, eq=False)
class CameraImage:
    """One camera frame, as decoded pixels or as the compressed bytes that :attr:`image` decodes on first
    read. A reader hands out compressed images undecoded so that those nobody looks at cost nothing: the
    synchroniser passes over a third of a 15 Hz camera's images in 10 Hz frames, and copying sensor
    channels into an output recording never needs the pixels.

    Args:
        stamp_ns: mid-exposure time [ns].
        pixels: (H, W, 3) uint8 RGB, optical frame (z forward, x right, y down); row 0 is the top; or None
            when ``compressed`` is given.
        compressed: JPEG or PNG bytes (``pixels`` None), decoded at 1/``reduction`` of their size (1, 2, 4
            or 8; each side rounded up) by the codec itself.
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    pixels: np.ndarray | None
    compressed: bytes | None = None
    reduction: int = 1

    def __post_init__(self) -> None:
        if (self.pixels is None) == (self.compressed is None):
            raise ValueError(f"CameraImage {self.sensor_id!r} seq {self.seq}: give exactly one of pixels and "
                             "compressed")
        if self.reduction not in (1, 2, 4, 8):
            raise ValueError(f"CameraImage {self.sensor_id!r}: reduction must be 1, 2, 4 or 8, got "
                             f"{self.reduction!r}")

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; compressed bytes are decoded on the first read (and kept). Raises
        :class:`ImageDecodeError` naming the camera and message when they cannot be decoded."""
        if self.pixels is None:
            from drivers.ros_msgs import rgb_from_compressed  # the codec layer imports this module

            try:
                rgb = rgb_from_compressed(self.compressed, self.reduction)
            except ValueError as e:
                raise ImageDecodeError(f"camera {self.sensor_id!r} image seq {self.seq} (stamp "
                                       f"{self.stamp_ns} ns): {e}") from e
            # Cached on the frozen message: the decoded pixels replace the bytes they came from.
            object.__setattr__(self, "pixels", rgb)
            object.__setattr__(self, "compressed", None)
        return self.pixels


@dataclass(frozen=True, eq=False)
class LidarSweep:
    """One full LiDAR revolution.

    Args:
        points: (N, 4) float32: x y z [m] in the sensor frame at each point's own time, intensity [0, 1].
        time_offset: (N,) float32 [s], point time minus ``stamp_ns``; in [-sweep period, 0] because
            ``stamp_ns`` is the time of the last point (the sweep is complete at its stamp).
        ring: (N,) uint16 beam index, 0 = lowest beam.
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    points: np.ndarray
    time_offset: np.ndarray
    ring: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class RadarScan:
    """One radar scan (detections list, as radar_msgs/RadarScan).

    Args:
        range_m: (N,) float32 [m]; azimuth: (N,) float32 [rad], CCW from sensor +x;
        elevation: (N,) float32 [rad], up positive;
        radial_velocity: (N,) float32 [m/s], measured Doppler relative to the sensor, positive = receding
            (includes ego motion);
        rcs: (N,) float32 radar cross section [dBsm].
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    range_m: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    radial_velocity: np.ndarray
    rcs: np.ndarray

    def __len__(self) -> int:
        return len(self.range_m)

    @property
    def xyz(self) -> np.ndarray:
        """(N, 3) float32 [m] Cartesian points in the sensor frame."""
        ce = np.cos(self.elevation)
        return np.stack(
            [self.range_m * ce * np.cos(self.azimuth), self.range_m * ce * np.sin(self.azimuth),
             self.range_m * np.sin(self.elevation)], axis=1
        ).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ImuSample:
    """One IMU sample in the IMU frame.

    Args:
        angular_velocity: (3,) float64 [rad/s]; linear_acceleration: (3,) float64 [m/s^2], specific force
            (reads +9.81 on z when level and still).
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    angular_velocity: np.ndarray
    linear_acceleration: np.ndarray


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """A block of multichannel audio.

    Args:
        samples: (C, S) float32 in [-1, 1], one row per microphone in the rig's ``mic_positions`` order.
        sample_rate: [Hz].
        stamp_ns: time of the first sample [ns].
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    samples: np.ndarray
    sample_rate: int

    @property
    def duration_ns(self) -> int:
        return int(round(self.samples.shape[1] * 1e9 / self.sample_rate))

    @property
    def available_ns(self) -> int:
        """When the chunk can exist at the earliest: its last sample has been recorded [ns]."""
        return self.stamp_ns + self.duration_ns


@dataclass(frozen=True, eq=False)
class VehicleSpeed:
    """Wheel-odometry speed of the ego vehicle [m/s] along ego +x (negative when reversing)."""

    sensor_id: str
    stamp_ns: int
    seq: int
    speed_mps: float


@dataclass(frozen=True, eq=False)
class GroundTruthBoxes:
    """Ground-truth objects at one LiDAR stamp, in the ego frame at ``stamp_ns``.

    Args:
        boxes: (N, 7) float64: x y z [m] (box centre), length width height [m], yaw [rad] CCW from +x.
        velocities: (N, 2) float64 [m/s] over-ground velocity expressed in the ego frame (vx, vy).
        labels: (N,) int32 index into ``class_names``.
        track_ids: (N,) int32 stable object id across frames.
        siren: (N,) bool, the object is an emergency vehicle sounding its siren.
        num_points: (N,) int32 LiDAR points inside the box in the sweep with the same stamp.
        class_names: names for ``labels``.
    """

    sensor_id: str
    stamp_ns: int
    seq: int
    boxes: np.ndarray
    velocities: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    siren: np.ndarray
    num_points: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return len(self.boxes)


Message = Union[CameraImage, LidarSweep, RadarScan, ImuSample, AudioChunk, VehicleSpeed, GroundTruthBoxes]
