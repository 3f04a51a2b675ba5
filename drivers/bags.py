"""Foreign drives: ROS 1 ``.bag`` files and ROS 2 bags (a directory with ``metadata.yaml``, or a bare
``.db3`` / ``.mcap`` file) read through ``rosbags`` into our typed messages.

Which topic is which sensor comes from a small YAML file (``configs/bag_topics_example.yaml``)::

    rig: ../rigs/my_car.yaml          # optional, relative to this file
    topics:
      - {topic: /velodyne_points, sensor_id: lidar_top}
      - {topic: /imu/data, sensor_id: imu}
      - {topic: /ouster/points, sensor_id: lidar_rear, intensity_scale: 0.001}

Supported message types and what they become (the converters are in ``drivers/ros_msgs.py``):

- sensor_msgs/PointCloud2 -> LidarSweep: any field layout with x y z; intensity, a per-point time field
  and a ring field are optional. Per-point times are moved to our convention (stamp = last point,
  ``time_offset`` <= 0): see :func:`drivers.ros_msgs.sweep_from_pointcloud2` for units and names.
- sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8), sensor_msgs/CompressedImage -> CameraImage (RGB).
- sensor_msgs/Imu -> ImuSample; geometry_msgs/TwistStamped -> VehicleSpeed (twist.linear.x);
  radar_msgs/RadarScan -> RadarScan (amplitude taken as RCS).

``stamp_ns`` is the message's header stamp (sensor time, not bag receive time); messages come in bag
(receive) order; ``seq`` counts per sensor from 0. Topics not in the map are counted and logged, never
fatal; a message that cannot be converted (undecodable image, cloud without x) is skipped, counted and
logged once per topic. A mapped topic of an unsupported type is an error at open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from calibration.rig import Rig
from calibration.yamlconf import ConfigError, load_yaml_file
from drivers import ros_msgs
from drivers.messages import CameraImage, ImuSample, Message, RadarScan, VehicleSpeed
from drivers.ros_msgs import CdrError, ImageMsg, PointCloud2Msg, PointFieldMsg

log = logging.getLogger(__name__)


class BagError(Exception):
    """A bag cannot be opened or does not fit its topic map; the message names the bag and the topic."""


@dataclass(frozen=True)
class BagTopic:
    """One mapped topic.

    Args:
        topic: ROS topic name in the bag (``/velodyne_points``).
        sensor_id: our sensor id for its messages (and the rig's, when a rig is given).
        intensity_scale: PointCloud2 only: factor taking the bag's intensity to [0, 1]; None chooses by
            field type (see ``sweep_from_pointcloud2``).
    """

    topic: str
    sensor_id: str
    intensity_scale: Optional[float] = None


@dataclass(frozen=True)
class BagTopicMap:
    """Topic -> sensor map of a foreign bag.

    Args:
        topics: the mapped topics; topics and sensor ids are each unique.
        rig: path of a rig file, absolute after :meth:`load` (written relative to the config file), or None.
    """

    topics: tuple[BagTopic, ...]
    rig: Optional[str] = None

    def __post_init__(self) -> None:
        for attr in ("topic", "sensor_id"):
            seen: set[str] = set()
            for t in self.topics:
                value = getattr(t, attr)
                if value in seen:
                    raise ConfigError(f"topic map: {attr} '{value}' appears twice")
                seen.add(value)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BagTopicMap:
        """Read a topic map YAML file (strict: unknown keys are errors); the rig path is resolved against
        the file's folder."""
        path = Path(path)
        tmap = load_yaml_file(cls, path)
        if tmap.rig is not None:
            tmap = dataclasses.replace(tmap, rig=str((path.parent / tmap.rig).resolve()))
        return tmap

    def load_rig(self) -> Rig | None:
        """The rig named by ``rig``, or None when there is none."""
        return None if self.rig is None else Rig.load(self.rig)

    def by_topic(self) -> dict[str, BagTopic]:
        """The entries keyed by topic name."""
        return {t.topic: t for t in self.topics}


# ----------------------------------------------------------------------------------------------------------
# rosbags message objects -> our messages
def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _from_pointcloud2(m: Any, t: BagTopic, seq: int) -> Message:
    pc = PointCloud2Msg(
        _stamp_ns(m.header), m.header.frame_id, int(m.height), int(m.width),
        tuple(PointFieldMsg(f.name, int(f.offset), int(f.datatype), int(f.count)) for f in m.fields),
        bool(m.is_bigendian), int(m.point_step), int(m.row_step), np.asarray(m.data, np.uint8), bool(m.is_dense))
    return ros_msgs.sweep_from_pointcloud2(pc, t.sensor_id, seq, native=False, intensity_scale=t.intensity_scale)


def _from_image(m: Any, t: BagTopic, seq: int) -> Message:
    img = ImageMsg(_stamp_ns(m.header), m.header.frame_id, int(m.height), int(m.width), m.encoding,
                   bool(m.is_bigendian), int(m.step), np.asarray(m.data, np.uint8))
    return CameraImage(t.sensor_id, img.stamp_ns, seq, ros_msgs.rgb_from_image(img))


def _from_compressed_image(m: Any, t: BagTopic, seq: int) -> Message:
    return CameraImage(t.sensor_id, _stamp_ns(m.header), seq, ros_msgs.rgb_from_compressed(np.asarray(m.data, np.uint8)))


def _xyz(v: Any) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def _from_imu(m: Any, t: BagTopic, seq: int) -> Message:
    return ImuSample(t.sensor_id, _stamp_ns(m.header), seq, _xyz(m.angular_velocity), _xyz(m.linear_acceleration))


def _from_twist(m: Any, t: BagTopic, seq: int) -> Message:
    return VehicleSpeed(t.sensor_id, _stamp_ns(m.header), seq, float(m.twist.linear.x))


def _from_radar(m: Any, t: BagTopic, seq: int) -> Message:
    cols = [np.array([getattr(r, name) for r in m.returns], dtype=np.float32)
            for name in ("range", "azimuth", "elevation", "doppler_velocity", "amplitude")]
    return RadarScan(t.sensor_id, _stamp_ns(m.header), seq, *cols)


# ROS type -> (converter, rig sensor kind it must map to)
_CONVERTERS: dict[str, tuple[Callable[[Any, BagTopic, int], Message], str]] = {
    "sensor_msgs/msg/PointCloud2": (_from_pointcloud2, "lidar"),
    "sensor_msgs/msg/Image": (_from_image, "camera"),
    "sensor_msgs/msg/CompressedImage": (_from_compressed_image, "camera"),
    "sensor_msgs/msg/Imu": (_from_imu, "imu"),
    "geometry_msgs/msg/TwistStamped": (_from_twist, "vehicle_speed"),
    "radar_msgs/msg/RadarScan": (_from_radar, "radar"),
}


def default_typestore():
    """ROS 2 Humble types plus radar_msgs, for ROS 2 bags that do not embed their message definitions."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    for name in ("radar_msgs/msg/RadarReturn", "radar_msgs/msg/RadarScan"):
        types.update(get_types_from_msg(ros_msgs.message_definition(name), name))
    store.register(types)
    return store


def open_bag(path: str | os.PathLike, topic_map: BagTopicMap) -> Iterator[Message]:
    """Messages of the mapped topics of a ROS 1 or ROS 2 bag, converted to our types, in bag order.

    Args:
        path: a ROS 1 ``.bag`` file, a ROS 2 bag directory, or a ROS 2 ``.db3`` / ``.mcap`` file.
        topic_map: which topic is which sensor (see :class:`BagTopicMap`).

    Raises BagError right away (not at the first ``next``) if the bag cannot be opened, a mapped topic has
    an unsupported type, or a mapped sensor is missing from, or of another kind in, the topic map's rig.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    rig = topic_map.load_rig()
    with _open_reader(path) as reader:  # check now; the generator below opens its own reader
        _mapped_connections(reader, path, topic_map, rig)
    return _messages(path, topic_map, rig)


@contextlib.contextmanager
def _open_reader(path: Path) -> Iterator[Any]:
    """An open ``rosbags`` AnyReader on ``path``; open failures become BagError."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    try:
        reader = AnyReader([path], default_typestore=default_typestore())
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as e:
        raise BagError(f"cannot open bag {path}: {e}") from e
    try:
        yield reader
    finally:
        reader.close()


def _mapped_connections(reader: Any, path: Path, topic_map: BagTopicMap,
                        rig: Rig | None) -> tuple[list, dict[str, int]]:
    """(the reader's connections on mapped topics, checked against the converters and the rig,
    {unmapped topic: message count})."""
    mapped = topic_map.by_topic()
    conns = []
    skipped: dict[str, int] = {}
    for c in reader.connections:
        if c.topic not in mapped:
            skipped[c.topic] = skipped.get(c.topic, 0) + max(c.msgcount, 0)
            continue
        if c.msgtype not in _CONVERTERS:
            raise BagError(f"{path}: topic {c.topic} carries {c.msgtype}, which cannot be converted (supported: "
                           f"{', '.join(sorted(_CONVERTERS))})")
        kind = _CONVERTERS[c.msgtype][1]
        sid = mapped[c.topic].sensor_id
        if rig is not None:
            if sid not in rig:
                raise BagError(f"{path}: topic {c.topic} maps to sensor '{sid}', which is not in rig "
                               f"'{rig.name}' (has: {', '.join(rig.ids())})")
            if rig[sid].kind != kind:
                raise BagError(f"{path}: topic {c.topic} ({c.msgtype}) maps to '{sid}', a {rig[sid].kind} in "
                               f"the rig, not a {kind}")
        conns.append(c)
    return conns, skipped


def _messages(path: Path, topic_map: BagTopicMap, rig: Rig | None) -> Iterator[Message]:
    from rosbags.highlevel import AnyReaderError

    mapped = topic_map.by_topic()
    with _open_reader(path) as reader:
        conns, skipped = _mapped_connections(reader, path, topic_map, rig)
        present = {c.topic for c in reader.connections}
        for topic in sorted(set(mapped) - present):
            log.warning("%s: mapped topic %s is not in the bag", path, topic)
        if skipped:
            log.info("%s: skipping %d messages on %d topics not in the topic map: %s", path, sum(skipped.values()),
                     len(skipped), ", ".join(f"{t} ({n})" for t, n in sorted(skipped.items())))
        if not conns:
            return
        seqs: dict[str, int] = {}
        failed: dict[str, int] = {}
        for c, _, raw in reader.messages(connections=conns):
            t = mapped[c.topic]
            seq = seqs.get(t.sensor_id, 0)
            try:
                msg = _CONVERTERS[c.msgtype][0](reader.deserialize(raw, c.msgtype), t, seq)
            except (CdrError, ValueError, AnyReaderError) as e:
                if c.topic not in failed:
                    log.warning("%s: skipping a %s message on %s: %s", path, c.msgtype, c.topic, e)
                failed[c.topic] = failed.get(c.topic, 0) + 1
                continue
            seqs[t.sensor_id] = seq + 1
            yield msg
        if failed:
            log.warning("%s: skipped unconvertible messages: %s", path,
                        ", ".join(f"{t} ({n})" for t, n in sorted(failed.items())))
