"""Recordings: MCAP write/read round trips, foreign readers, crash safety, truncation and corruption."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from calibration.rig import Rig
from drivers.messages import (
    AudioChunk,
    CameraImage,
    GroundTruthBoxes,
    ImuSample,
    LidarSweep,
    RadarScan,
    VehicleSpeed,
)
from drivers.recording import McapRecordWriter, RecordingError, RecordingReader, RecordingWriter

REPO = Path(__file__).resolve().parents[2]

RIG_YAML = """
name: test_rig
sensors:
  - {id: lidar_top, kind: lidar, translation: [1.2, 0.0, 1.9], rotation_wxyz: [1, 0, 0, 0]}
  - id: cam_front
    kind: camera
    translation: [1.5, 0.1, 1.6]
    rotation_wxyz: [0.5, -0.5, 0.5, -0.5]
    intrinsics: {model: pinhole, width: 64, height: 48, fx: 40, fy: 41, cx: 31.5, cy: 23.5,
                 distortion: [0.1, -0.01, 0.001, 0.002, 0.0005]}
  - id: cam_fisheye
    kind: camera
    translation: [-0.5, 0.0, 1.5]
    rotation_wxyz: [0.5, -0.5, -0.5, 0.5]
    intrinsics: {model: fisheye, width: 32, height: 24, fx: 12, fy: 12, cx: 15.5, cy: 11.5,
                 distortion: [0.05, -0.01, 0.002, -0.0003]}
  - {id: radar_front, kind: radar, translation: [3.6, 0.0, 0.5], rotation_wxyz: [0.9998477, 0, 0, 0.0174524]}
  - {id: imu, kind: imu, translation: [0.0, 0.0, 0.5], rotation_wxyz: [1, 0, 0, 0]}
  - {id: wheel_speed, kind: vehicle_speed, translation: [0.0, 0.0, 0.0], rotation_wxyz: [1, 0, 0, 0]}
  - id: mic_array
    kind: microphone
    translation: [0.2, 0.0, 1.6]
    rotation_wxyz: [1, 0, 0, 0]
    mic_positions: [[0.1, 0.1, 0.0], [0.1, -0.1, 0.0], [-0.1, 0.1, 0.0]]
"""

T0 = 1_700_000_000_123_456_789


@pytest.fixture(scope="module")
def rig() -> Rig:
    return Rig.from_yaml(RIG_YAML, "test rig")


def _image(rng, h: int, w: int, k: int) -> np.ndarray:
    """Smooth RGB test pattern (JPEG-friendly) that changes with k."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([128 + 90 * np.sin(2 * np.pi * (xx + k / 10)), 128 + 90 * np.cos(2 * np.pi * yy),
                    128 + 60 * np.sin(2 * np.pi * (xx + yy))], axis=-1)
    return np.round(img).astype(np.uint8)


def make_drive(rng: np.random.Generator, n_frames: int = 4) -> list:
    """Messages of every type, in stamp order; includes empty scans/boxes and an empty sweep."""
    out = []
    for k in range(n_frames):
        t = T0 + k * 100_000_000
        n = 0 if k == 1 else 500 + 37 * k
        out.append(LidarSweep("lidar_top", t, k, rng.normal(0, 20, (n, 4)).astype(np.float32),
                              -rng.random(n).astype(np.float32) * 0.1, rng.integers(0, 128, n).astype(np.uint16)))
        out.append(CameraImage("cam_front", t + 1_000, k, _image(rng, 48, 64, k)))
        out.append(CameraImage("cam_fisheye", t + 2_000, k, _image(rng, 24, 32, k)))
        m = 0 if k == 2 else 3 + k
        out.append(RadarScan("radar_front", t + 3_000, k, *(rng.normal(size=m).astype(np.float32) for _ in range(5))))
        for j in range(5):
            out.append(ImuSample("imu", t + 4_000 + j * 20_000_000, 5 * k + j, rng.normal(size=3), rng.normal(size=3)))
        out.append(VehicleSpeed("wheel_speed", t + 5_000, k, float(rng.normal(10, 3))))
        out.append(AudioChunk("mic_array", t + 6_000, k, rng.uniform(-1, 1, (3, 1600)).astype(np.float32), 16000))
        b = 0 if k == 0 else k + 1
        out.append(GroundTruthBoxes("ground_truth", t + 7_000, k, rng.normal(size=(b, 7)), rng.normal(size=(b, 2)),
                                    rng.integers(0, 4, b).astype(np.int32), np.arange(b, dtype=np.int32) + 100,
                                    rng.random(b) > 0.5, rng.integers(0, 500, b).astype(np.int32)))
    return sorted(out, key=lambda m: m.stamp_ns)


def assert_same_message(a, b, jpeg: bool = False) -> None:
    """Field-by-field equality (arrays: same dtype, shape and values); camera images within JPEG tolerance
    when ``jpeg``."""
    assert type(a) is type(b), (type(a), type(b))
    assert (a.sensor_id, a.stamp_ns, a.seq) == (b.sensor_id, b.stamp_ns, b.seq)
    # A camera image's pixels may still be compressed on either side: compare what .image gives.
    names = ("image",) if isinstance(a, CameraImage) else a.__dataclass_fields__
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype)
            if jpeg and isinstance(a, CameraImage):
                diff = np.abs(x.astype(int) - y.astype(int))
                assert diff.mean() < 3.0 and diff.max() < 40, (name, diff.mean(), diff.max())
            else:
                assert np.array_equal(x, y), name
        else:
            assert x == y, (name, x, y)


def write(path: Path, rig: Rig, msgs, **kw) -> Path:
    with RecordingWriter(path, rig, **kw) as w:
        for m in msgs:
            w.write(m)
    return path


# ---------------------------------------------------------------------------------------------- round trips
def test_every_message_type_reads_back_equal(tmp_path, rig):
    msgs = make_drive(np.random.default_rng(1))
    path = write(tmp_path / "drive.mcap", rig, msgs, metadata={"scenario": "unit", "seed": "1"})
    with RecordingReader(path) as r:
        got = list(r.messages())
        assert r.complete and r.metadata == {"scenario": "unit", "seed": "1"}
    assert len(got) == len(msgs)
    for a, b in zip(msgs, got):
        assert_same_message(a, b, jpeg=True)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_zstd_and_uncompressed_chunks_read_back_equal_here_and_in_the_mcap_reader(tmp_path, rig, compression):
    from mcap.reader import make_reader

    msgs = make_drive(np.random.default_rng(3), 2)
    path = write(tmp_path / f"{compression}.mcap", rig, msgs, chunk_size=16384, compression=compression)
    with open(path, "rb") as f:
        reader = make_reader(f)
        names = {c.compression for c in reader.get_summary().chunk_indexes}
        sweeps = sum(1 for _ in reader.iter_messages(topics=["/lidar_top/points"]))
    assert names == {"" if compression == "none" else compression}
    assert sweeps == sum(isinstance(m, LidarSweep) for m in msgs) > 0
    with RecordingReader(path) as r:
        got = list(r.messages())
    assert len(got) == len(msgs)
    for a, b in zip(msgs, got):
        assert_same_message(a, b, jpeg=True)


def test_unknown_compression_is_refused_before_the_file_is_created(tmp_path, rig):
    with pytest.raises(RecordingError, match=r"compression must be one of lz4, zstd, none, got 'gzip'"):
        RecordingWriter(tmp_path / "x.mcap", rig, compression="gzip")
    assert not (tmp_path / "x.mcap").exists()


def test_raw_images_round_trip_losslessly_without_jpeg(tmp_path, rig):
    rng = np.random.default_rng(2)
    msgs = [CameraImage("cam_front", T0 + k, k, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for k in range(3)]
    path = write(tmp_path / "raw.mcap", rig, msgs, jpeg_quality=None)
    with RecordingReader(path) as r:
        got = list(r.messages())
        assert [c.schema_name for c in r.channels() if c.sensor_id == "cam_front"] == [
            "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"]
    for a, b in zip(msgs, got, strict=True):
        assert_same_message(a, b)


def test_jpeg_quality_trades_size_for_fidelity(tmp_path, rig):
    rng = np.random.default_rng(3)
    img = np.clip(_image(rng, 48, 64, 0).astype(int) + rng.integers(-20, 21, (48, 64, 3)), 0, 255).astype(np.uint8)
    errors, sizes = [], []
    for q in (30, 95):
        path = write(tmp_path / f"q{q}.mcap", rig, [CameraImage("cam_front", T0, 0, img)], jpeg_quality=q)
        with RecordingReader(path) as r:
            (back,) = r.messages()
        errors.append(np.abs(back.image.astype(int) - img.astype(int)).mean())
        sizes.append(os.path.getsize(path))
    assert errors[1] < errors[0] and sizes[1] > sizes[0]


def test_compressed_images_can_be_decoded_at_half_size_and_raw_images_are_left_alone(tmp_path, rig):
    import cv2

    img = _image(np.random.default_rng(4), 48, 64, 1)
    jpeg = write(tmp_path / "jpeg.mcap", rig, [CameraImage("cam_front", T0, 0, img)], jpeg_quality=95)
    raw = write(tmp_path / "raw.mcap", rig, [CameraImage("cam_front", T0, 0, img)], jpeg_quality=None)
    with RecordingReader(jpeg) as r:
        (full,) = r.messages()
        (half,) = r.messages(image_reduction=2)
        (eighth,) = r.messages(image_reduction=8)
        with pytest.raises(ValueError, match="image_reduction must be 1, 2, 4 or 8, got 3"):
            next(r.messages(image_reduction=3))
    assert half.image.shape == (24, 32, 3) and eighth.image.shape == (6, 8, 3)
    assert (half.sensor_id, half.stamp_ns, half.seq) == (full.sensor_id, full.stamp_ns, full.seq)
    # The codec's own downscaling is within a few grey levels of a full decode shrunk by area averaging.
    shrunk = cv2.resize(full.image, (32, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(half.image.astype(int) - shrunk.astype(int)).mean() < 2.0
    with RecordingReader(raw) as r:
        (same,) = r.messages(image_reduction=2)
    assert np.array_equal(same.image, img)


def test_rig_attachment_round_trips_into_an_equal_rig(tmp_path, rig):
    path = write(tmp_path / "rig.mcap", rig, make_drive(np.random.default_rng(4), 1))
    with RecordingReader(path) as r:
        back = r.rig
    assert back.to_dict() == Rig.from_yaml(rig.to_yaml()).to_dict()
    assert back.ids() == rig.ids()
    for s in rig.sensors:
        assert np.allclose(back[s.sensor_id].ego_from_sensor.matrix, s.ego_from_sensor.matrix, atol=1e-12)
    assert back["cam_fisheye"].camera == rig["cam_fisheye"].camera
    assert np.array_equal(back["mic_array"].mic_positions, rig["mic_array"].mic_positions)


def test_stamps_match_messages_without_decoding(tmp_path, rig):
    msgs = make_drive(np.random.default_rng(5))
    path = write(tmp_path / "stamps.mcap", rig, msgs, chunk_size=4096)
    with RecordingReader(path) as r:
        stamps = list(r.stamps())
        decoded = [(m.sensor_id, m.stamp_ns, m.stamp_ns) for m in r.messages()]
    assert stamps == decoded
    assert stamps == [(m.sensor_id, m.stamp_ns, m.stamp_ns) for m in msgs]


def test_messages_come_in_log_time_order_when_written_out_of_order(tmp_path, rig):
    rng = np.random.default_rng(6)
    # IMU written on time, camera frames arriving 30 ms late: chunks overlap in time
    imu = [ImuSample("imu", T0 + k * 5_000_000, k, rng.normal(size=3), rng.normal(size=3)) for k in range(200)]
    cams = {T0 + k * 50_000_000 + 1: CameraImage("cam_front", T0 + k * 50_000_000 + 1, k, _image(rng, 48, 64, k))
            for k in range(20)}
    written = []
    for m in imu:
        written.append(m)
        late = m.stamp_ns - 30_000_000
        for stamp in [s for s in cams if s <= late]:
            written.append(cams.pop(stamp))
    written.extend(cams.values())
    path = write(tmp_path / "late.mcap", rig, written, chunk_size=2048)
    with RecordingReader(path) as r:
        got = list(r.messages())
        assert r.summary().chunk_count > 10
    assert [m.stamp_ns for m in got] == sorted(m.stamp_ns for m in written)
    assert len(got) == len(written)


def test_sensor_filter_and_half_open_time_window(tmp_path, rig):
    msgs = make_drive(np.random.default_rng(7), 6)
    path = write(tmp_path / "filter.mcap", rig, msgs, chunk_size=8192)
    start, end = T0 + 150_000_000, T0 + 400_000_000
    with RecordingReader(path) as r:
        got = list(r.messages(sensors=["imu", "ground_truth"], start_ns=start, end_ns=end))
        with pytest.raises(RecordingError, match="no sensor 'lidar_tpo'.*lidar_top"):
            list(r.messages(sensors=["lidar_tpo"]))
    want = [m for m in msgs if m.sensor_id in ("imu", "ground_truth") and start <= m.stamp_ns < end]
    assert len(want) > 5
    assert [(m.sensor_id, m.seq) for m in got] == [(m.sensor_id, m.seq) for m in want]


def test_summary_counts_channels_and_span(tmp_path, rig):
    msgs = make_drive(np.random.default_rng(8), 3)
    path = write(tmp_path / "summary.mcap", rig, msgs)
    with RecordingReader(path) as r:
        s = r.summary()
        channels = {c.topic: c for c in r.channels()}
    expected = {}
    for m in msgs:
        expected[m.sensor_id] = expected.get(m.sensor_id, 0) + 1
    assert s.complete and s.problem is None
    assert s.counts_by_sensor == expected
    assert (s.start_ns, s.end_ns) == (msgs[0].stamp_ns, msgs[-1].stamp_ns)
    assert channels["/cam_front/camera_info"].message_count == expected["cam_front"]
    assert channels["/tf_static"].message_count == 1
    assert channels["/ground_truth"].schema_name == "perception_msgs/msg/GroundTruthArray"
    assert s.message_count == sum(c.message_count for c in channels.values())


def test_writer_rejects_messages_that_do_not_fit_the_rig(tmp_path, rig):
    rng = np.random.default_rng(9)
    with RecordingWriter(tmp_path / "bad.mcap", rig) as w:
        with pytest.raises(RecordingError, match="'lidar_rear' is not in rig 'test_rig'"):
            w.write(LidarSweep("lidar_rear", T0, 0, np.zeros((1, 4), np.float32), np.zeros(1, np.float32),
                               np.zeros(1, np.uint16)))
        with pytest.raises(RecordingError, match="'imu' is a imu in the rig, not a lidar"):
            w.write(LidarSweep("imu", T0, 0, np.zeros((1, 4), np.float32), np.zeros(1, np.float32),
                               np.zeros(1, np.uint16)))
        with pytest.raises(RecordingError, match="cam_front.*image is 32x24 but the rig's intrinsics are 64x48"):
            w.write(CameraImage("cam_front", T0, 0, _image(rng, 24, 32, 0)))
        with pytest.raises(RecordingError, match="2 channels but the rig lists 3 microphones"):
            w.write(AudioChunk("mic_array", T0, 0, np.zeros((2, 10), np.float32), 16000))
        with pytest.raises(RecordingError, match="ground truth needs a sensor id of its own"):
            w.write(GroundTruthBoxes("lidar_top", T0, 0, np.zeros((0, 7)), np.zeros((0, 2)), np.zeros(0, np.int32),
                                     np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int32)))
        with pytest.raises(RecordingError, match="cannot record a dict"):
            w.write({"sensor_id": "imu"})
        with pytest.raises(RecordingError, match="stamp_ns -5"):
            w.write(VehicleSpeed("wheel_speed", -5, 0, 1.0))
        w.write(VehicleSpeed("wheel_speed", T0, 0, 1.0))
    with pytest.raises(RecordingError, match="write\\(\\) after close"):
        w.write(VehicleSpeed("wheel_speed", T0, 1, 1.0))
    with RecordingReader(tmp_path / "bad.mcap") as r:
        assert [m.speed_mps for m in r.messages()] == [1.0]


def test_file_is_finished_when_the_with_body_raises(tmp_path, rig):
    path = tmp_path / "exc.mcap"
    with pytest.raises(KeyError):
        with RecordingWriter(path, rig) as w:
            w.write(VehicleSpeed("wheel_speed", T0, 0, 2.5))
            raise KeyError("boom")
    with RecordingReader(path) as r:
        assert r.complete
        assert [m.speed_mps for m in r.messages()] == [2.5]


def test_non_mcap_empty_and_missing_files_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mcap"
    text.write_text("hello, not a recording\n")
    with pytest.raises(RecordingError, match=r"empty\.mcap is empty \(0 bytes\)"):
        RecordingReader(empty)
    with pytest.raises(RecordingError, match=r"notes\.mcap is not an MCAP recording: it starts with b'hello, n'"):
        RecordingReader(text)
    with pytest.raises(RecordingError, match=r"cannot open recording .*missing\.mcap"):
        RecordingReader(tmp_path / "missing.mcap")


def test_embedded_standard_definitions_match_ros2_humble():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from drivers import ros_msgs

    humble = get_typestore(Stores.ROS2_HUMBLE)
    checked = 0
    for name in ros_msgs.MSG_NAMES:
        if name not in humble.fielddefs:
            assert name.split("/")[0] in ("radar_msgs", "audio_common_msgs", "perception_msgs"), name
            continue
        ours = get_types_from_msg(ros_msgs.message_definition(name), name)[name]
        assert ours == humble.fielddefs[name], name
        checked += 1
    assert checked >= 15


# ---------------------------------------------------------------------------------------------- foreign readers
FOREIGN_READER = textwrap.dedent("""
    import dataclasses, hashlib, json, sys
    from pathlib import Path
    import numpy as np
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.highlevel import AnyReader

    def plain(o):
        if isinstance(o, (bytes, bytearray)):
            return "sha1:" + hashlib.sha1(bytes(o)).hexdigest()
        if isinstance(o, np.ndarray):
            return "sha1:" + hashlib.sha1(o.tobytes()).hexdigest() if o.dtype == np.uint8 else o.tolist()
        if isinstance(o, (list, tuple)):
            return [plain(x) for x in o]
        if dataclasses.is_dataclass(o):
            # rosbags lists constants and __msgtype__ as fields too; mcap_ros2 does not
            return {f.name: plain(getattr(o, f.name)) for f in dataclasses.fields(o)
                    if not (f.name.startswith("__") or f.name.isupper())}
        if hasattr(type(o), "__slots__") and type(o).__slots__:
            return {k: plain(getattr(o, k)) for k in type(o).__slots__}
        return o.item() if isinstance(o, np.generic) else o

    path = sys.argv[1]
    out = {"mcap": {}, "rosbags": {}}
    with open(path, "rb") as f:
        for schema, channel, message, decoded in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            out["mcap"].setdefault(channel.topic, {"type": schema.name, "metadata": channel.metadata, "messages": []})
            out["mcap"][channel.topic]["messages"].append(plain(decoded))
    with AnyReader([Path(path)]) as reader:
        for conn, stamp, raw in reader.messages():
            out["rosbags"].setdefault(conn.topic, {"type": conn.msgtype, "messages": []})
            out["rosbags"][conn.topic]["messages"].append(plain(reader.deserialize(raw, conn.msgtype)))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("drivers", "perception", "calibration"))
    out["our_modules"] = ours
    print(json.dumps(out))
""")


def _stamp(m) -> dict:
    return {"sec": m.stamp_ns // 1_000_000_000, "nanosec": m.stamp_ns % 1_000_000_000}


def test_foreign_readers_decode_every_channel_without_our_packages(tmp_path, rig):
    import hashlib

    msgs = make_drive(np.random.default_rng(10), 3)
    path = write(tmp_path / "foreign.mcap", rig, msgs, chunk_size=16384)
    proc = subprocess.run([sys.executable, "-c", FOREIGN_READER, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["our_modules"] == []
    mc, rb = out["mcap"], out["rosbags"]
    expected_types = {
        "/lidar_top/points": "sensor_msgs/msg/PointCloud2", "/cam_front/image/compressed": "sensor_msgs/msg/CompressedImage",
        "/cam_front/camera_info": "sensor_msgs/msg/CameraInfo", "/cam_fisheye/camera_info": "sensor_msgs/msg/CameraInfo",
        "/radar_front/scan": "radar_msgs/msg/RadarScan", "/imu/imu": "sensor_msgs/msg/Imu",
        "/wheel_speed/twist": "geometry_msgs/msg/TwistStamped", "/mic_array/audio": "audio_common_msgs/msg/AudioDataStamped",
        "/mic_array/audio_info": "audio_common_msgs/msg/AudioInfo", "/ground_truth": "perception_msgs/msg/GroundTruthArray",
        "/tf_static": "tf2_msgs/msg/TFMessage", "/cam_fisheye/image/compressed": "sensor_msgs/msg/CompressedImage",
    }
    assert {t: v["type"] for t, v in mc.items()} == expected_types
    assert {t: v["type"] for t, v in rb.items()} == expected_types
    # both independent decoders agree on every message of every channel
    for topic in expected_types:
        assert mc[topic]["messages"] == rb[topic]["messages"], topic
    assert all(v["metadata"]["sensor_id"] for t, v in mc.items() if t != "/tf_static")

    by_sensor: dict[str, list] = {}
    for m in msgs:
        by_sensor.setdefault(m.sensor_id, []).append(m)

    for sweep, got in zip(by_sensor["lidar_top"], mc["/lidar_top/points"]["messages"], strict=True):
        assert got["header"] == {"stamp": _stamp(sweep), "frame_id": "lidar_top"}
        assert [(f["name"], f["offset"], f["datatype"], f["count"]) for f in got["fields"]] == [
            ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("t", 16, 7, 1), ("ring", 20, 4, 1)]
        assert (got["height"], got["width"], got["point_step"], got["row_step"]) == (1, len(sweep), 24, 24 * len(sweep))
        packed = bytearray()
        for p, t, ring in zip(sweep.points, sweep.time_offset, sweep.ring):
            packed += struct.pack("<5fH2x", *p, t, ring)
        assert got["data"] == "sha1:" + hashlib.sha1(bytes(packed)).hexdigest()

    for s, got in zip(by_sensor["imu"], mc["/imu/imu"]["messages"], strict=True):
        assert got["header"] == {"stamp": _stamp(s), "frame_id": "imu"}
        v = got["angular_velocity"]
        assert [v["x"], v["y"], v["z"]] == s.angular_velocity.tolist()
        a = got["linear_acceleration"]
        assert [a["x"], a["y"], a["z"]] == s.linear_acceleration.tolist()
        assert got["orientation_covariance"][0] == -1.0

    for scan, got in zip(by_sensor["radar_front"], mc["/radar_front/scan"]["messages"], strict=True):
        assert [[r["range"], r["azimuth"], r["elevation"], r["doppler_velocity"], r["amplitude"]] for r in got["returns"]] \
            == np.stack([scan.range_m, scan.azimuth, scan.elevation, scan.radial_velocity, scan.rcs], 1).tolist()

    for gt, got in zip(by_sensor["ground_truth"], mc["/ground_truth"]["messages"], strict=True):
        assert got["header"]["frame_id"] == "ego" and got["class_names"] == list(gt.class_names)
        assert [[b[k] for k in ("x", "y", "z", "length", "width", "height", "yaw")] for b in got["boxes"]] == gt.boxes.tolist()
        assert [[b["vx"], b["vy"]] for b in got["boxes"]] == gt.velocities.tolist()
        assert [(b["label"], b["track_id"], b["siren"], b["num_points"]) for b in got["boxes"]] == list(
            zip(gt.labels.tolist(), gt.track_ids.tolist(), gt.siren.tolist(), gt.num_points.tolist()))

    for a, got in zip(by_sensor["mic_array"], mc["/mic_array/audio"]["messages"], strict=True):
        assert got["audio"]["data"] == "sha1:" + hashlib.sha1(a.samples.T.astype("<f4").tobytes()).hexdigest()
    (info,) = mc["/mic_array/audio_info"]["messages"]
    assert (info["channels"], info["sample_rate"], info["sample_format"]) == (3, 16000, "F32LE")
    assert mc["/mic_array/audio"]["metadata"] == {"sensor_id": "mic_array", "sample_rate": "16000", "channels": "3",
                                                  "sample_format": "F32LE"}

    assert [t["twist"]["linear"]["x"] for t in mc["/wheel_speed/twist"]["messages"]] == [
        m.speed_mps for m in by_sensor["wheel_speed"]]

    for cam_id, model in (("cam_front", "plumb_bob"), ("cam_fisheye", "equidistant")):
        cam = rig[cam_id].camera
        info = mc[f"/{cam_id}/camera_info"]["messages"][0]
        assert info["distortion_model"] == model and info["d"] == list(cam.distortion)
        assert info["k"] == cam.K.reshape(-1).tolist() and (info["width"], info["height"]) == (cam.width, cam.height)
        assert info["p"] == [cam.fx, 0, cam.cx, 0, 0, cam.fy, cam.cy, 0, 0, 0, 1, 0]
        jpeg = mc[f"/{cam_id}/image/compressed"]["messages"][0]
        assert jpeg["format"] == "jpeg" and jpeg["header"]["frame_id"] == cam_id

    (tf,) = mc["/tf_static"]["messages"]
    assert [t["child_frame_id"] for t in tf["transforms"]] == rig.ids()
    radar = next(t for t in tf["transforms"] if t["child_frame_id"] == "radar_front")
    assert radar["header"]["frame_id"] == "ego"
    assert [radar["transform"]["translation"][k] for k in "xyz"] == [3.6, 0.0, 0.5]
    q = radar["transform"]["rotation"]  # ROS order x y z w; the rig's rotation_wxyz is [0.9998477, 0, 0, 0.0174524]
    assert np.allclose([q["w"], q["x"], q["y"], q["z"]], np.array([0.9998477, 0, 0, 0.0174524]) / 0.99999997, atol=1e-7)


# ---------------------------------------------------------------------------------------------- crash safety
def _top_level_records(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(opcode, offset, length) of every complete top-level record after the magic, and the offset where the
    complete records end."""
    pos, out = 8, []
    while pos + 9 <= len(data):
        op, length = struct.unpack_from("<BQ", data, pos)
        if pos + 9 + length > len(data):
            break
        out.append((op, pos, length))
        pos += 9 + length
    return out, pos


def _chunk_messages_by_mcap(data: bytes, records) -> list[tuple[int, int, int, bytes]]:
    """(channel id, sequence, log_time, payload) of every message in the complete chunks, decoded with the
    mcap library's own chunk parser."""
    from io import BytesIO

    from mcap.records import Chunk, Message
    from mcap.data_stream import ReadDataStream
    from mcap.stream_reader import breakup_chunk

    out = []
    for op, offset, length in records:
        if op == 0x06:
            chunk = Chunk.read(ReadDataStream(BytesIO(data[offset + 9:offset + 9 + length])))
            out += [(r.channel_id, r.sequence, r.log_time, r.data) for r in breakup_chunk(chunk, validate_crc=True)
                    if isinstance(r, Message)]
    return out


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from calibration.rig import Rig
    from drivers.messages import ImuSample, RadarScan
    from drivers.recording import RecordingWriter

    rig = Rig.load(sys.argv[2])
    w = RecordingWriter(sys.argv[1], rig, {"run": "killed"}, chunk_size=4096)
    k = 0
    while True:
        w.write(ImuSample("imu", 1_000_000_000 + k * 5_000_000, k, np.array([k, k + 0.5, -k], float),
                          np.array([0.25 * k, 0.5, 9.81])))
        if k % 10 == 0:
            n = k % 7
            w.write(RadarScan("radar_front", 1_000_000_001 + k * 5_000_000, k // 10,
                              *(np.arange(n, dtype=np.float32) + j * 1000 + k for j in range(5))))
        k += 1
        time.sleep(0.0005)
""")


def _check_killed_messages(got) -> None:
    """Every message of the killed writer, recomputed from its seq."""
    for m in got:
        if isinstance(m, ImuSample):
            k = m.seq
            assert m.stamp_ns == 1_000_000_000 + k * 5_000_000
            assert m.angular_velocity.tolist() == [k, k + 0.5, -k]
            assert m.linear_acceleration.tolist() == [0.25 * k, 0.5, 9.81]
        else:
            k = m.seq * 10
            assert m.stamp_ns == 1_000_000_001 + k * 5_000_000
            assert np.array_equal(m.rcs, np.arange(k % 7, dtype=np.float32) + 4000 + k)


def test_record_writer_keeps_publish_time_metadata_and_attachments(tmp_path):
    """The record layer on its own, read back with mcap's reader: pre-encoded payloads, publish_time apart
    from log_time, channel metadata, a schemaless channel, chunks cut by size, attachment and metadata."""
    from mcap.reader import make_reader

    path = tmp_path / "records.mcap"
    w = McapRecordWriter(path, "test-lib/1", chunk_size=300)
    w.add_attachment("notes.txt", "text/plain", b"hello")
    w.add_metadata("run", {"scenario": "records"})
    sid = w.add_schema("std_msgs/msg/String", "ros2msg", b"string data\n")
    assert w.add_schema("std_msgs/msg/String", "ros2msg", b"string data\n") == sid
    a = w.add_channel("/a", "cdr", sid, {"sensor_id": "x"})
    b = w.add_channel("/b", "json", 0, {})
    for k in range(20):
        w.add_message(a if k % 2 else b, 1000 + k, 5000 + 7 * k, k, bytes([k]) * 40)
    w.finish()
    w.finish()  # idempotent

    with open(path, "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().library == "test-lib/1"
        summary = reader.get_summary()
        assert len(summary.chunk_indexes) > 1
        assert summary.statistics.message_count == 20
        assert summary.statistics.channel_message_counts == {a: 10, b: 10}
        got = [(ch.topic, m.log_time, m.publish_time, m.sequence, m.data) for _, ch, m in reader.iter_messages()]
        assert got == [("/a" if k % 2 else "/b", 1000 + k, 5000 + 7 * k, k, bytes([k]) * 40) for k in range(20)]
        assert summary.channels[a].metadata == {"sensor_id": "x"} and summary.channels[b].schema_id == 0
        assert [(x.name, x.data) for x in reader.iter_attachments()] == [("notes.txt", b"hello")]
        assert [(x.name, x.metadata) for x in reader.iter_metadata()] == [("run", {"scenario": "records"})]


def test_abandoned_record_writer_keeps_flushed_chunks(tmp_path):
    from mcap.exceptions import EndOfFile
    from mcap.reader import NonSeekingReader

    path = tmp_path / "abandoned.mcap"
    w = McapRecordWriter(path, "test-lib/1", chunk_size=1 << 20)
    cid = w.add_channel("/a", "cdr", 0, {"sensor_id": ""})
    w.add_message(cid, 10, 11, 0, b"first")
    w.flush()
    w.add_message(cid, 20, 21, 1, b"lost")  # still in the chunk in progress
    w.abandon()
    got = []
    with open(path, "rb") as f, pytest.raises(EndOfFile):  # no summary, no footer: the stream just ends
        for _, _, m in NonSeekingReader(f).iter_messages(log_time_order=False):
            got.append((m.log_time, m.publish_time, m.data))
    assert got == [(10, 11, b"first")]
    with RecordingReader(path) as rec:
        assert not rec.complete and rec.summary().message_count == 1


def test_killed_writer_leaves_every_complete_chunk_readable(tmp_path, rig):
    rig_file = tmp_path / "rig.yaml"
    rig.save(rig_file)
    path = tmp_path / "killed.mcap"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(rig_file)], cwd=REPO,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and path.stat().st_size > 60_000):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    data = path.read_bytes()
    records, complete_end = _top_level_records(data)
    assert sum(op == 0x06 for op, _, _ in records) >= 8
    assert not any(op in (0x0F, 0x02) for op, _, _ in records)  # no DataEnd, no footer: really killed
    expected = _chunk_messages_by_mcap(data, records)

    with RecordingReader(path) as r:
        assert not r.complete
        assert r.rig.to_dict() == rig.to_dict() and r.metadata == {"run": "killed"}
        got = []
        with pytest.raises(RecordingError) as err:
            for m in r.messages():
                got.append(m)
        summary = r.summary()
    # channel ids in order of first use: 1 /imu/imu, 2 /tf_static (not a sensor message), 3 /radar_front/scan
    assert len(got) == len([e for e in expected if e[0] != 2])
    assert len(got) > 50 and {m.sensor_id for m in got} == {"imu", "radar_front"}
    _check_killed_messages(got)
    imu_seqs = [m.seq for m in got if m.sensor_id == "imu"]
    assert imu_seqs == list(range(len(imu_seqs)))
    assert f"byte offset {complete_end}" in str(err.value)
    assert f"{len(got)} messages were delivered" in str(err.value)
    assert not summary.complete and f"byte offset {complete_end}" in summary.problem
    assert summary.counts_by_sensor == {"imu": len(imu_seqs), "radar_front": len(got) - len(imu_seqs)}


def test_truncated_file_delivers_complete_chunks_and_names_the_cut(tmp_path, rig):
    from mcap.reader import make_reader

    rng = np.random.default_rng(11)
    msgs = [ImuSample("imu", T0 + k * 5_000_000, k, rng.normal(size=3), rng.normal(size=3)) for k in range(400)]
    full = write(tmp_path / "full.mcap", rig, msgs, chunk_size=2000)
    with open(full, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    assert len(chunks) > 20
    cut = chunks[12]
    data = full.read_bytes()
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(data[:cut.chunk_start_offset + cut.chunk_length // 2])

    with RecordingReader(truncated) as r:
        got = []
        with pytest.raises(RecordingError) as err:
            for m in r.messages():
                got.append(m)
    want = [m for m in msgs if m.stamp_ns <= chunks[11].message_end_time]
    assert len(got) == len(want) > 50
    for a, b in zip(want, got):
        assert_same_message(a, b)
    text = str(err.value)
    assert "truncated.mcap" in text and f"truncated at byte offset {cut.chunk_start_offset}" in text
    assert "Chunk record" in text and f"{len(got)} messages were delivered" in text


def test_corrupted_chunk_fails_its_crc_after_earlier_messages(tmp_path, rig):
    from mcap.reader import make_reader

    rng = np.random.default_rng(12)
    # noise images JPEG-encode to incompressible bytes, stored raw by lz4: a flipped byte decompresses
    # fine and only the CRC can tell
    msgs = [CameraImage("cam_front", T0 + k * 50_000_000, k, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
            for k in range(30)]
    path = write(tmp_path / "corrupt.mcap", rig, msgs, chunk_size=8000)
    with open(path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    bad = chunks[len(chunks) // 2]
    data = bytearray(path.read_bytes())
    middle = bad.chunk_start_offset + bad.chunk_length // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))

    with RecordingReader(path) as r:
        assert r.complete  # summary intact: the damage is inside a chunk
        got = []
        with pytest.raises(RecordingError) as err:
            for m in r.messages():
                got.append(m)
    want = [m for m in msgs if m.stamp_ns < bad.message_start_time]
    assert len(got) == len(want) > 3
    assert [m.seq for m in got] == [m.seq for m in want]
    text = str(err.value)
    assert f"chunk at byte offset {bad.chunk_start_offset}" in text and "CRC mismatch" in text
    assert f"{len(got)} messages were delivered" in text


def test_damaged_summary_falls_back_to_scanning_the_intact_data(tmp_path, rig):
    msgs = make_drive(np.random.default_rng(13), 3)
    path = write(tmp_path / "summary_damaged.mcap", rig, msgs, chunk_size=4096)
    data = bytearray(path.read_bytes())
    summary_start = struct.unpack_from("<Q", data, len(data) - 8 - 20)[0]
    data[summary_start + 20] ^= 0xFF  # inside the first summary record: the footer CRC no longer matches
    path.write_bytes(bytes(data))
    with RecordingReader(path) as r:
        assert not r.complete and r.problem is None  # data section complete up to DataEnd
        got = list(r.messages())
        s = r.summary()
        assert r.rig.ids() == rig.ids()
    assert len(got) == len(msgs)
    for a, b in zip(msgs, got):
        assert_same_message(a, b, jpeg=True)
    assert s.counts_by_sensor["imu"] == sum(m.sensor_id == "imu" for m in msgs)
    assert (s.start_ns, s.end_ns) == (msgs[0].stamp_ns, msgs[-1].stamp_ns)


def test_compressed_images_are_decoded_on_first_read_and_a_corrupt_one_says_which(tmp_path, rig):
    from drivers import ros_msgs
    from drivers.messages import ImageDecodeError

    img = _image(np.random.default_rng(5), 48, 64, 2)
    path = tmp_path / "corrupt.mcap"
    with RecordingWriter(path, rig, jpeg_quality=95) as w:
        w.write(CameraImage("cam_front", T0, 0, img))
        # A CompressedImage whose bytes are not a JPEG, on the same channel, between two good images.
        cdr = ros_msgs.CdrWriter()
        cdr.header(T0 + 10, "cam_front")
        cdr.string("jpeg")
        cdr.sequence(np.frombuffer(b"\xff\xd8\xff garbage", np.uint8), 1)
        channel = w._channel("/cam_front/image/compressed", "sensor_msgs/msg/CompressedImage", "cam_front")
        w._mcap.add_message(channel, T0 + 10, T0 + 10, 1, bytes(cdr.buf))
        w.write(CameraImage("cam_front", T0 + 20, 2, img))
    with RecordingReader(path) as r:
        first, bad, last = (m for m in r.messages() if isinstance(m, CameraImage))
    assert first.pixels is None and first.compressed is not None  # nothing decoded yet
    assert np.abs(first.image.astype(int) - img.astype(int)).mean() < 3.0
    assert first.pixels is first.image and first.compressed is None  # decoded once, kept
    with pytest.raises(ImageDecodeError, match=r"camera 'cam_front' image seq 1 \(stamp \d+ ns\): compressed image "
                                               r"of 11 bytes cannot be decoded"):
        bad.image
    assert (bad.seq, last.seq) == (1, 2) and last.image.shape == (48, 64, 3)  # the rest is still there
    with pytest.raises(ValueError, match="exactly one of pixels and compressed"):
        CameraImage("cam_front", T0, 0, img, b"jpeg")
