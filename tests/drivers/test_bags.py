"""Foreign bags: real ROS 1 and ROS 2 (sqlite3, MCAP) bags written with rosbags' own writers, read back
through open_bag into our messages."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.yamlconf import ConfigError
from drivers import ros_msgs
from drivers.bags import BagError, BagTopic, BagTopicMap, open_bag
from drivers.messages import CameraImage, ImuSample, LidarSweep, RadarScan, VehicleSpeed

REPO = Path(__file__).resolve().parents[2]
T0 = 1_650_000_000_250_000_000

RIG_YAML = """
name: bag_rig
sensors:
  - {id: lidar_top, kind: lidar, translation: [1.0, 0.0, 1.9], rotation_wxyz: [1, 0, 0, 0]}
  - {id: lidar_rear, kind: lidar, translation: [-0.5, 0.0, 1.9], rotation_wxyz: [0, 0, 0, 1]}
  - id: cam_front
    kind: camera
    translation: [1.5, 0.0, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 20, height: 10, fx: 10, fy: 10, cx: 9.5, cy: 4.5}
  - id: cam_mono
    kind: camera
    translation: [1.5, 0.0, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 20, height: 10, fx: 10, fy: 10, cx: 9.5, cy: 4.5}
  - id: cam_png
    kind: camera
    translation: [1.5, 0.0, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 20, height: 10, fx: 10, fy: 10, cx: 9.5, cy: 4.5}
  - {id: imu, kind: imu, translation: [0.0, 0.0, 0.5], rotation_wxyz: [1, 0, 0, 0]}
  - {id: wheel_speed, kind: vehicle_speed, translation: [0.0, 0.0, 0.0], rotation_wxyz: [1, 0, 0, 0]}
  - {id: radar_front, kind: radar, translation: [3.6, 0.0, 0.5], rotation_wxyz: [1, 0, 0, 0]}
"""

TOPICS_YAML = """
rig: rig.yaml
topics:
  - {topic: /velodyne_points, sensor_id: lidar_top}
  - {topic: /ouster/points, sensor_id: lidar_rear, intensity_scale: 0.001}
  - {topic: /camera/image_raw, sensor_id: cam_front}
  - {topic: /mono/image_raw, sensor_id: cam_mono}
  - {topic: /png/image/compressed, sensor_id: cam_png}
  - {topic: /imu/data, sensor_id: imu}
  - {topic: /vehicle/twist, sensor_id: wheel_speed}
  - {topic: /radar/scan, sensor_id: radar_front}
"""

VELODYNE = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                     "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                     "offsets": [0, 4, 8, 12, 16, 18], "itemsize": 22})
OUSTER = np.dtype({"names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "ambient", "range"],
                   "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "<u2", "<u2", "<u4"],
                   "offsets": [0, 4, 8, 16, 20, 24, 26, 28, 32], "itemsize": 48})
_CODES = {"f4": 7, "u2": 4, "u4": 6}


def make_content(rng: np.random.Generator) -> dict:
    """The raw sensor data the bags hold, per topic, as plain numpy (independent of any ROS type)."""
    vel = []
    for k in range(3):
        n = 300
        cloud = np.zeros(n, VELODYNE)
        for a in "xyz":
            cloud[a] = rng.normal(0, 10, n)
        cloud["x"][[5, 17]] = np.nan  # no-return points, as organised Velodyne clouds have
        cloud["intensity"] = rng.integers(0, 256, n)
        cloud["ring"] = rng.integers(0, 32, n)
        cloud["time"] = np.sort(rng.uniform(0, 0.1, n))  # seconds after the header stamp (sweep start)
        vel.append((T0 + k * 100_000_000, cloud))
    ous = []
    for k in range(2):
        h, w = 4, 64
        cloud = np.zeros(h * w, OUSTER)
        for a in "xyz":
            cloud[a] = rng.normal(0, 30, h * w)
        cloud["intensity"] = rng.uniform(0, 1000, h * w)
        cloud["t"] = np.tile(np.arange(w, dtype=np.uint32) * 1_562_500, h)  # ns after the header stamp
        cloud["ring"] = np.repeat(np.arange(h), w)
        ous.append((T0 + 7_000 + k * 100_000_000, h, w, cloud))
    rgb = [(T0 + 33_000_000 * k, rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)) for k in range(3)]
    mono = [(T0 + 1_000 + 33_000_000 * k, rng.integers(0, 256, (10, 20), dtype=np.uint8)) for k in range(2)]
    png = [(T0 + 2_000 + 33_000_000 * k, rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)) for k in range(2)]
    imu = [(T0 + 5_000_000 * k, rng.normal(size=3), rng.normal(size=3)) for k in range(20)]
    twist = [(T0 + 20_000_000 * k, float(rng.normal(12, 2))) for k in range(5)]
    radar = [(T0 + 3_000 + 77_000_000 * k, rng.normal(size=(4 + k, 5)).astype(np.float32)) for k in range(2)]
    return {"vel": vel, "ous": ous, "rgb": rgb, "mono": mono, "png": png, "imu": imu, "twist": twist, "radar": radar}


def _store(ros1: bool):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types = {}
    for name in ("radar_msgs/msg/RadarReturn", "radar_msgs/msg/RadarScan"):
        types.update(get_types_from_msg(ros_msgs.message_definition(name), name))
    store.register(types)
    return store


def write_bag(path: Path, fmt: str, content: dict) -> Path:
    """A real bag with rosbags' own writer: fmt is 'ros1', 'sqlite3' or 'mcap'."""
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as Writer2

    ros1 = fmt == "ros1"
    store = _store(ros1)
    T = store.types

    def header(stamp: int, frame: str):
        t = T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
        return T["std_msgs/msg/Header"](seq=0, stamp=t, frame_id=frame) if ros1 else T["std_msgs/msg/Header"](
            stamp=t, frame_id=frame)

    def fields(dtype):
        return [T["sensor_msgs/msg/PointField"](name=n, offset=dtype.fields[n][1],
                                                 datatype=_CODES[dtype.fields[n][0].str[1:]], count=1)
                for n in dtype.names]

    def vec(v):
        return T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    msgs = []  # (topic, type, bag time, message)
    PC2 = "sensor_msgs/msg/PointCloud2"
    for stamp, cloud in content["vel"]:
        msgs.append(("/velodyne_points", PC2, stamp + 120_000_000, T[PC2](
            header=header(stamp, "velodyne"), height=1, width=len(cloud), fields=fields(VELODYNE), is_bigendian=False,
            point_step=22, row_step=22 * len(cloud), data=cloud.view(np.uint8), is_dense=False)))
    for stamp, h, w, cloud in content["ous"]:
        msgs.append(("/ouster/points", PC2, stamp + 110_000_000, T[PC2](
            header=header(stamp, "os_lidar"), height=h, width=w, fields=fields(OUSTER), is_bigendian=False,
            point_step=48, row_step=48 * w, data=cloud.view(np.uint8), is_dense=True)))
    IMG = "sensor_msgs/msg/Image"
    for stamp, img in content["rgb"]:
        bgr = np.zeros((10, 20 * 3 + 4), np.uint8)  # rows padded: step > width * 3
        bgr[:, :60] = img[:, :, ::-1].reshape(10, 60)
        msgs.append(("/camera/image_raw", IMG, stamp + 5_000_000, T[IMG](
            header=header(stamp, "camera"), height=10, width=20, encoding="bgr8", is_bigendian=0, step=64,
            data=bgr.reshape(-1))))
    for stamp, img in content["mono"]:
        msgs.append(("/mono/image_raw", IMG, stamp + 5_000_000, T[IMG](
            header=header(stamp, "mono"), height=10, width=20, encoding="mono8", is_bigendian=0, step=20,
            data=img.reshape(-1))))
    CIMG = "sensor_msgs/msg/CompressedImage"
    for stamp, img in content["png"]:
        ok, png = cv2.imencode(".png", img[:, :, ::-1])
        msgs.append(("/png/image/compressed", CIMG, stamp + 5_000_000, T[CIMG](
            header=header(stamp, "png"), format="png", data=png.reshape(-1))))
    IMU = "sensor_msgs/msg/Imu"
    for stamp, gyro, acc in content["imu"]:
        msgs.append(("/imu/data", IMU, stamp + 1_000_000, T[IMU](
            header=header(stamp, "imu_link"), orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=np.zeros(9), angular_velocity=vec(gyro), angular_velocity_covariance=np.zeros(9),
            linear_acceleration=vec(acc), linear_acceleration_covariance=np.zeros(9))))
    TW = "geometry_msgs/msg/TwistStamped"
    for stamp, speed in content["twist"]:
        msgs.append(("/vehicle/twist", TW, stamp + 1_000_000, T[TW](
            header=header(stamp, "base_link"), twist=T["geometry_msgs/msg/Twist"](
                linear=vec([speed, 0.1, 0.0]), angular=vec([0.0, 0.0, 0.02])))))
    RS = "radar_msgs/msg/RadarScan"
    for stamp, ret in content["radar"]:
        msgs.append(("/radar/scan", RS, stamp + 2_000_000, T[RS](header=header(stamp, "radar"), returns=[
            T["radar_msgs/msg/RadarReturn"](range=float(r[0]), azimuth=float(r[1]), elevation=float(r[2]),
                                            doppler_velocity=float(r[3]), amplitude=float(r[4])) for r in ret])))
    STR = "std_msgs/msg/String"
    for k in range(3):  # a topic the map does not name
        msgs.append(("/diagnostics_text", STR, T0 + k, T[STR](data=f"ok {k}")))

    msgs.sort(key=lambda m: m[2])
    if ros1:
        writer = Writer1(path)
    else:
        plugin = StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(path, version=9, storage_plugin=plugin)
    with writer:
        conns = {}
        for topic, typ, stamp, msg in msgs:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, typ, typestore=store)
            data = store.serialize_ros1(msg, typ) if ros1 else store.serialize_cdr(msg, typ)
            writer.write(conns[topic], stamp, data)
    return path


@pytest.fixture()
def topic_map(tmp_path) -> BagTopicMap:
    (tmp_path / "rig.yaml").write_text(RIG_YAML)
    (tmp_path / "topics.yaml").write_text(TOPICS_YAML)
    return BagTopicMap.load(tmp_path / "topics.yaml")


def _by_sensor(msgs) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in msgs:
        out.setdefault(m.sensor_id, []).append(m)
    return out


@pytest.mark.parametrize("fmt", ["ros1", "sqlite3", "mcap"])
def test_bag_messages_convert_to_our_types_exactly(tmp_path, topic_map, fmt, caplog):
    content = make_content(np.random.default_rng(20))
    bag = write_bag(tmp_path / ("drive.bag" if fmt == "ros1" else f"drive_{fmt}"), fmt, content)
    with caplog.at_level(logging.INFO, logger="drivers.bags"):
        got = _by_sensor(open_bag(bag, topic_map))
    assert "/diagnostics_text (3)" in caplog.text  # unmapped topic: counted and logged, not fatal
    assert set(got) == {"lidar_top", "lidar_rear", "cam_front", "cam_mono", "cam_png", "imu", "wheel_speed",
                        "radar_front"}
    for sensor, msgs in got.items():
        assert [m.seq for m in msgs] == list(range(len(msgs))), sensor

    # Velodyne layout: float intensity 0..255, float time [s] after the header stamp, NaN points dropped
    for m, (stamp, cloud) in zip(got["lidar_top"], content["vel"], strict=True):
        keep = np.isfinite(cloud["x"])
        assert isinstance(m, LidarSweep) and len(m) == keep.sum() == len(cloud) - 2
        assert np.array_equal(m.points[:, :3], np.stack([cloud[a][keep] for a in "xyz"], 1))
        np.testing.assert_allclose(m.points[:, 3], cloud["intensity"][keep] / 255.0, rtol=1e-6)
        assert np.array_equal(m.ring, cloud["ring"][keep]) and m.ring.dtype == np.uint16
        last = float(cloud["time"][keep].max())
        assert abs(m.stamp_ns - (stamp + last * 1e9)) <= 1  # stamped at its last point
        np.testing.assert_allclose(m.time_offset, cloud["time"][keep].astype(np.float64) - last, atol=1e-7)
        assert m.time_offset.max() == 0.0 and m.time_offset.dtype == np.float32

    # Ouster layout: organised 4 x 64, padded fields, uint32 t [ns], explicit intensity scale from the map
    for m, (stamp, h, w, cloud) in zip(got["lidar_rear"], content["ous"], strict=True):
        assert len(m) == h * w
        assert np.array_equal(m.points[:, :3], np.stack([cloud[a] for a in "xyz"], 1))
        np.testing.assert_allclose(m.points[:, 3], np.clip(cloud["intensity"] * 0.001, 0, 1), rtol=1e-6)
        assert m.stamp_ns == stamp + int(cloud["t"].max())
        np.testing.assert_allclose(m.time_offset, (cloud["t"].astype(np.float64) - cloud["t"].max()) * 1e-9, atol=1e-9)
        assert np.array_equal(m.ring, cloud["ring"])

    for m, (stamp, img) in zip(got["cam_front"], content["rgb"], strict=True):
        assert isinstance(m, CameraImage) and m.stamp_ns == stamp and np.array_equal(m.image, img)
    for m, (stamp, img) in zip(got["cam_mono"], content["mono"], strict=True):
        assert m.stamp_ns == stamp and np.array_equal(m.image, np.repeat(img[:, :, None], 3, axis=2))
    for m, (stamp, img) in zip(got["cam_png"], content["png"], strict=True):
        assert m.stamp_ns == stamp and np.array_equal(m.image, img)
    for m, (stamp, gyro, acc) in zip(got["imu"], content["imu"], strict=True):
        assert isinstance(m, ImuSample) and m.stamp_ns == stamp
        assert m.angular_velocity.tolist() == gyro.tolist() and m.linear_acceleration.tolist() == acc.tolist()
    for m, (stamp, speed) in zip(got["wheel_speed"], content["twist"], strict=True):
        assert isinstance(m, VehicleSpeed) and (m.stamp_ns, m.speed_mps) == (stamp, speed)
    for m, (stamp, ret) in zip(got["radar_front"], content["radar"], strict=True):
        assert isinstance(m, RadarScan) and m.stamp_ns == stamp
        assert np.array_equal(np.stack([m.range_m, m.azimuth, m.elevation, m.radial_velocity, m.rcs], 1), ret)


def test_bags_come_in_bag_order_with_header_stamps(tmp_path, topic_map):
    content = make_content(np.random.default_rng(21))
    bag = write_bag(tmp_path / "order.bag", "ros1", content)
    imu = [m for m in open_bag(bag, topic_map) if m.sensor_id == "imu"]
    assert [m.stamp_ns for m in imu] == [s for s, _, _ in content["imu"]]


def test_undecodable_message_is_skipped_counted_and_logged(tmp_path, topic_map, caplog):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    CIMG = "sensor_msgs/msg/CompressedImage"
    good = np.random.default_rng(22).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", good)
    with Writer(tmp_path / "broken", version=9) as w:
        conn = w.add_connection("/png/image/compressed", CIMG, typestore=store)
        for k, data in enumerate([np.frombuffer(b"not an image at all", np.uint8), png.reshape(-1)]):
            hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=k), frame_id="png")
            w.write(conn, 1_000_000_000 + k, store.serialize_cdr(T[CIMG](header=hdr, format="png", data=data), CIMG))
    with caplog.at_level(logging.WARNING, logger="drivers.bags"):
        got = list(open_bag(tmp_path / "broken", topic_map))
    assert len(got) == 1 and got[0].seq == 0 and got[0].stamp_ns == 1_000_000_001
    assert np.array_equal(got[0].image, good[:, :, ::-1])
    assert "cannot be decoded" in caplog.text and "/png/image/compressed (1)" in caplog.text


def test_mapped_topic_of_unsupported_type_fails_at_open(tmp_path, topic_map):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    STR = "std_msgs/msg/String"
    with Writer(tmp_path / "wrong", version=9) as w:
        conn = w.add_connection("/imu/data", STR, typestore=store)
        w.write(conn, 1, store.serialize_cdr(store.types[STR](data="x"), STR))
    with pytest.raises(BagError, match="topic /imu/data carries std_msgs/msg/String, which cannot be converted"):
        open_bag(tmp_path / "wrong", topic_map)


def test_sensor_missing_from_the_rig_fails_at_open(tmp_path):
    content = make_content(np.random.default_rng(23))
    bag = write_bag(tmp_path / "rig.bag", "ros1", content)
    (tmp_path / "rig.yaml").write_text(RIG_YAML)
    tmap = BagTopicMap((BagTopic("/imu/data", "imu_rear"),), rig=str(tmp_path / "rig.yaml"))
    with pytest.raises(BagError, match="maps to sensor 'imu_rear', which is not in rig 'bag_rig'"):
        open_bag(bag, tmap)
    wrong_kind = BagTopicMap((BagTopic("/imu/data", "wheel_speed"),), rig=str(tmp_path / "rig.yaml"))
    with pytest.raises(BagError, match="'wheel_speed', a vehicle_speed in the rig, not a imu"):
        open_bag(bag, wrong_kind)
    with pytest.raises(BagError, match="does not exist"):
        open_bag(tmp_path / "nope.bag", tmap)


def test_topic_map_file_is_strict_and_resolves_the_rig_path(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rig.yaml").write_text(RIG_YAML)
    good = tmp_path / "map.yaml"
    good.write_text("rig: sub/rig.yaml\ntopics:\n  - {topic: /a, sensor_id: imu}\n")
    tmap = BagTopicMap.load(good)
    assert tmap.rig == str((tmp_path / "sub" / "rig.yaml").resolve()) and tmap.load_rig().name == "bag_rig"
    typo = tmp_path / "typo.yaml"
    typo.write_text("topics:\n  - {topic: /a, sensor: imu}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*unknown key 'sensor'"):
        BagTopicMap.load(typo)
    dup = tmp_path / "dup.yaml"
    dup.write_text("topics:\n  - {topic: /a, sensor_id: imu}\n  - {topic: /a, sensor_id: imu2}\n")
    with pytest.raises(ConfigError, match="topic '/a' appears twice"):
        BagTopicMap.load(dup)


def test_example_topic_map_loads_and_matches_its_rig():
    tmap = BagTopicMap.load(REPO / "configs" / "bag_topics_example.yaml")
    assert len(tmap.topics) >= 4
    rig = tmap.load_rig()
    assert rig is not None and all(t.sensor_id in rig for t in tmap.topics)


def test_default_typestore_knows_radar_msgs():
    from drivers.bags import default_typestore

    store = default_typestore()
    assert "radar_msgs/msg/RadarScan" in store.types and "sensor_msgs/msg/PointCloud2" in store.types


def test_info_summarises_a_ros1_bag_through_a_topic_map(tmp_path, topic_map):
    import subprocess
    import sys

    content = make_content(np.random.default_rng(21))
    bag = write_bag(tmp_path / "drive.bag", "ros1", content)
    r = subprocess.run([sys.executable, "-m", "perception.cli", "info", str(bag), "--topics",
                        str(tmp_path / "topics.yaml")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imu_line = next(line for line in r.stdout.splitlines() if line.startswith("imu "))
    assert f" {len(content['imu'])} " in imu_line and "ImuSample" in imu_line
    assert "lidar_top" in r.stdout and "radar_front" in r.stdout
