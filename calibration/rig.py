"""The rig: what sensors there are, where they sit on the vehicle, their intrinsics and clock offsets.

YAML form (one file, no includes)::

    name: sim_default
    sensors:
      - id: lidar_top
        kind: lidar                      # camera | lidar | radar | imu | microphone | vehicle_speed
        translation: [1.2, 0.0, 1.9]     # [m], sensor origin in the ego frame
        rotation_wxyz: [1, 0, 0, 0]      # ego_from_sensor rotation, w first (or rotation_matrix: 3x3 rows)
        time_offset_ns: 0                # sensor clock minus reference clock
        rate_hz: 10.0                    # nominal message rate (optional)
      - id: cam_front
        kind: camera
        translation: [1.5, 0.0, 1.6]
        rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
        intrinsics: {model: pinhole, width: 640, height: 360, fx: 400, fy: 400, cx: 319.5,
                     cy: 179.5, distortion: [0, 0, 0, 0, 0]}
      - id: mic_array
        kind: microphone
        translation: [0.0, 0.0, 1.8]
        rotation_wxyz: [1, 0, 0, 0]
        mic_positions: [[0.1, 0.1, 0], [0.1, -0.1, 0], [-0.1, 0.1, 0], [-0.1, -0.1, 0]]

The ego frame follows REP-103 (x forward, y left, z up, origin on the ground under the rear axle).
A stamp from a sensor with offset ``o`` is moved to the reference clock by ``stamp_ns - o``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import yaml

from calibration.camera import CameraModel
from calibration.transform import Transform, matrix_to_quat_wxyz, quat_wxyz_to_matrix, rotation_error
from calibration.yamlconf import ConfigError, from_dict

SensorKind = Literal["camera", "lidar", "radar", "imu", "microphone", "vehicle_speed"]
EGO_FRAME = "ego"


class RigError(ConfigError):
    """A rig file or rig object is invalid; the message says which sensor and why."""


@dataclass(frozen=True)
class IntrinsicsSpec:
    model: Literal["pinhole", "fisheye"]
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()


@dataclass(frozen=True)
class SensorSpec:
    """One sensor entry as written in YAML."""

    id: str
    kind: SensorKind
    translation: tuple[float, float, float]
    rotation_wxyz: Optional[tuple[float, float, float, float]] = None
    rotation_matrix: Optional[tuple[tuple[float, float, float], ...]] = None
    time_offset_ns: int = 0
    rate_hz: Optional[float] = None
    intrinsics: Optional[IntrinsicsSpec] = None
    mic_positions: Optional[tuple[tuple[float, float, float], ...]] = None


@dataclass(frozen=True)
class RigSpec:
    name: str
    sensors: tuple[SensorSpec, ...]


@dataclass(frozen=True)
class Sensor:
    """One sensor of the rig.

    Args:
        sensor_id: unique name, also the sensor's frame name (e.g. ``"cam_front"``).
        kind: sensor kind.
        ego_from_sensor: Transform(dst="ego", src=sensor_id).
        camera: intrinsics, required for cameras, None otherwise.
        time_offset_ns: sensor clock minus reference clock [ns].
        rate_hz: nominal rate [Hz] or None.
        mic_positions: (M, 3) float64 [m] microphone positions in the sensor frame (microphones only).
    """

    sensor_id: str
    kind: SensorKind
    ego_from_sensor: Transform
    camera: Optional[CameraModel] = None
    time_offset_ns: int = 0
    rate_hz: Optional[float] = None
    mic_positions: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Rig:
    """All sensors of a vehicle; validated on construction (see :meth:`validate`)."""

    name: str
    sensors: tuple[Sensor, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensors", tuple(self.sensors))
        self.validate()

    # ------------------------------------------------------------------ access
    def __getitem__(self, sensor_id: str) -> Sensor:
        for s in self.sensors:
            if s.sensor_id == sensor_id:
                return s
        raise KeyError(f"rig '{self.name}' has no sensor '{sensor_id}' (has: {', '.join(self.ids())})")

    def __contains__(self, sensor_id: str) -> bool:
        return any(s.sensor_id == sensor_id for s in self.sensors)

    def ids(self, kind: str | None = None) -> list[str]:
        """Sensor ids, optionally only those of one kind, in file order."""
        return [s.sensor_id for s in self.sensors if kind is None or s.kind == kind]

    def of_kind(self, kind: str) -> list[Sensor]:
        return [s for s in self.sensors if s.kind == kind]

    def ego_from(self, sensor_id: str) -> Transform:
        return self[sensor_id].ego_from_sensor

    def transform(self, dst: str, src: str) -> Transform:
        """``dst_from_src`` between two sensors (or the ego frame, named ``"ego"``)."""
        def ego_from(frame: str) -> Transform:
            return Transform.identity(EGO_FRAME, EGO_FRAME) if frame == EGO_FRAME else self.ego_from(frame)

        return ego_from(dst).inverse() @ ego_from(src)

    def replace_sensor(self, sensor: Sensor) -> "Rig":
        """A new rig with ``sensor`` replacing the one of the same id (or appended)."""
        out = [sensor if s.sensor_id == sensor.sensor_id else s for s in self.sensors]
        if sensor.sensor_id not in self:
            out.append(sensor)
        return Rig(self.name, tuple(out))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise RigError for: duplicate ids, frames that are not the sensor id, improper rotations,
        cameras without intrinsics, intrinsics on non-cameras, microphones without positions."""
        seen: set[str] = set()
        for s in self.sensors:
            where = f"rig '{self.name}', sensor '{s.sensor_id}'"
            if not s.sensor_id or s.sensor_id == EGO_FRAME:
                raise RigError(f"rig '{self.name}': invalid sensor id {s.sensor_id!r}")
            if s.sensor_id in seen:
                raise RigError(f"rig '{self.name}': duplicate sensor id '{s.sensor_id}'")
            seen.add(s.sensor_id)
            T = s.ego_from_sensor
            if T.dst != EGO_FRAME or T.src != s.sensor_id:
                raise RigError(f"{where}: transform must be ego_from_{s.sensor_id}, got {T.name}")
            if s.kind == "camera" and s.camera is None:
                raise RigError(f"{where}: camera has no intrinsics")
            if s.kind != "camera" and s.camera is not None:
                raise RigError(f"{where}: intrinsics given for a {s.kind}")
            if s.kind == "microphone":
                if s.mic_positions is None or np.asarray(s.mic_positions).ndim != 2 or len(s.mic_positions) < 1:
                    raise RigError(f"{where}: microphone needs mic_positions as a list of [x, y, z]")

    # ------------------------------------------------------------------ YAML
    @classmethod
    def from_spec(cls, spec: RigSpec, where: str = "rig") -> "Rig":
        sensors = []
        for i, s in enumerate(spec.sensors):
            loc = f"{where}: sensors[{i}] ('{s.id}')"
            if (s.rotation_wxyz is None) == (s.rotation_matrix is None):
                raise RigError(f"{loc}: give exactly one of rotation_wxyz or rotation_matrix")
            if s.rotation_wxyz is not None:
                q = np.asarray(s.rotation_wxyz, dtype=np.float64)
                if abs(np.linalg.norm(q) - 1.0) > 1e-3:
                    raise RigError(f"{loc}: rotation_wxyz is not a unit quaternion (norm {np.linalg.norm(q):.4f})")
                R = quat_wxyz_to_matrix(q)
            else:
                R = np.asarray(s.rotation_matrix, dtype=np.float64)
                problem = rotation_error(R)
                if problem:
                    raise RigError(f"{loc}: rotation_matrix {problem.removeprefix('rotation ')}")
            try:
                T = Transform(EGO_FRAME, s.id, R, s.translation)
                cam = CameraModel(**vars(s.intrinsics)) if s.intrinsics is not None else None
            except ValueError as e:
                raise RigError(f"{loc}: {e}") from e
            mics = np.asarray(s.mic_positions, dtype=np.float64) if s.mic_positions is not None else None
            sensors.append(Sensor(s.id, s.kind, T, cam, s.time_offset_ns, s.rate_hz, mics))
        try:
            return cls(spec.name, tuple(sensors))
        except RigError as e:
            raise RigError(f"{where}: {e}") from e

    @classmethod
    def from_dict(cls, data: dict, where: str = "rig") -> "Rig":
        try:
            spec = from_dict(RigSpec, data, where)
        except ConfigError as e:
            # Name the sensor by its id, not only by its position in the list.
            m = re.search(r"\.sensors\[(\d+)\]", str(e))
            sensors = data.get("sensors") if isinstance(data, dict) else None
            if m and isinstance(sensors, list) and isinstance(sensors[int(m.group(1))], dict):
                sid = sensors[int(m.group(1))].get("id", "?")
                raise RigError(f"sensor '{sid}': {e}") from e
            raise RigError(str(e)) from e
        return cls.from_spec(spec, where)

    @classmethod
    def from_yaml(cls, text: str, where: str = "rig.yaml") -> "Rig":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RigError(f"{where}: not valid YAML: {e}") from e
        return cls.from_dict(data, where)

    @classmethod
    def load(cls, path: str | Path) -> "Rig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise RigError(f"cannot read rig file {path}: {e.strerror}") from e
        return cls.from_yaml(text, str(path))

    def to_dict(self) -> dict:
        out = []
        for s in self.sensors:
            d: dict = {
                "id": s.sensor_id,
                "kind": s.kind,
                "translation": [float(x) for x in s.ego_from_sensor.translation],
                "rotation_wxyz": [float(x) for x in matrix_to_quat_wxyz(s.ego_from_sensor.rotation)],
                "time_offset_ns": int(s.time_offset_ns),
            }
            if s.rate_hz is not None:
                d["rate_hz"] = float(s.rate_hz)
            if s.camera is not None:
                c = s.camera
                d["intrinsics"] = {
                    "model": c.model, "width": c.width, "height": c.height,
                    "fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy,
                    "distortion": [float(x) for x in c.distortion],
                }
            if s.mic_positions is not None:
                d["mic_positions"] = np.asarray(s.mic_positions, dtype=float).tolist()
            out.append(d)
        return {"name": self.name, "sensors": out}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path) -> None:
        """Write the rig atomically (temp file + rename), so a crash never leaves half a rig."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)

