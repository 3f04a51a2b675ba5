"""Detection sinks: detections.mcap read back with the readers a user has (mcap + mcap_ros2, rosbags), raw
sensor copies, crash safety, and detections.jsonl."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from drivers.messages import CLASS_NAMES
from drivers.recording import RecordingReader, RecordingWriter
from drivers.sim import SimConfig, SimulatedRig
from perception.decode import Detections3D, SirenEvent
from perception.evaluation.results import read_predictions
from perception.sinks import (
    BOXES_TOPIC,
    CLASS_COLORS_RGB,
    OUTPUT_MSG_NAMES,
    SCENE_TOPIC,
    SIREN_TOPIC,
    BackgroundSink,
    DetectionsMcapSink,
    ResultsSink,
    SinkError,
    output_message_definition,
)

REPO = Path(__file__).resolve().parents[2]
COPIED = ["lidar_top", "cam_front", "radar_front"]
# yaws that exercise every quadrant and the +-pi wrap
YAWS = np.array([-math.pi, -2.9, -1.2, 0.0, 0.7, 2.9, math.pi - 1e-3], np.float32)


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    """A short simulated drive recorded with our writer (small chunks: several per file)."""
    sim = SimulatedRig.from_config(SimConfig(seed=3, duration_s=0.35, n_cameras=1, lidar_columns=900))
    path = tmp_path_factory.mktemp("drive") / "drive.mcap"
    with RecordingWriter(path, sim.rig, {"scenario": "sink-test"}, chunk_size=200_000) as w:
        for msg in sim.messages():
            w.write(msg)
    return path


def _frame_dets(stamp_ns: int, k: int, gt_boxes: np.ndarray) -> Detections3D:
    """Hand-built boxes with the yaws of YAWS (shifted per frame), then the frame's ground-truth boxes."""
    n_hand = len(YAWS)
    hand = np.zeros((n_hand, 7), np.float32)
    hand[:, 0] = np.linspace(-30, 40, n_hand) + k
    hand[:, 1] = np.linspace(12, -9, n_hand)
    hand[:, 2] = 0.9
    hand[:, 3:6] = np.stack([np.linspace(4, 12, n_hand), np.linspace(1.8, 2.6, n_hand), np.linspace(1.5, 3.5, n_hand)],
                            axis=1)
    hand[:, 6] = np.roll(YAWS, k)
    boxes = np.concatenate([hand, gt_boxes.astype(np.float32)])
    n = len(boxes)
    vel = np.zeros((n, 2), np.float32)
    vel[::2] = (6.0, -1.5)  # every other one moves (velocity arrow), the rest stand still
    labels = (np.arange(n) % len(CLASS_NAMES)).astype(np.int32)
    siren = np.zeros(n, bool)
    siren[1] = True
    events = (SirenEvent(stamp_ns, -2.5, 0.91, -1),
              SirenEvent(stamp_ns, float(np.arctan2(boxes[1, 1], boxes[1, 0])), 0.77, 1))
    return Detections3D(stamp_ns, boxes, vel, np.linspace(0.95, 0.3, n).astype(np.float32), labels, siren,
                        CLASS_NAMES, events)


@pytest.fixture(scope="module")
def written(drive, tmp_path_factory):
    """detections.mcap for every ground-truth frame of the drive, with lidar, camera and radar copied."""
    rec = RecordingReader(drive)
    frames = []
    for k, gt in enumerate(rec.messages(sensors=["ground_truth"])):
        frames.append((_frame_dets(gt.stamp_ns, k, np.asarray(gt.boxes)), gt.stamp_ns + 37_000_000 + k))
    out = tmp_path_factory.mktemp("out") / "detections.mcap"
    with DetectionsMcapSink(out, rec, COPIED, CLASS_NAMES, frame_period_ns=100_000_000,
                            metadata={"git_rev": "abc123"}) as sink:
        for dets, emit in frames:
            sink.write(dets, emit)
    rec.close()
    assert len(frames) >= 3
    return out, frames


def _decoded(path: Path) -> dict[str, list]:
    """topic -> [(schema name, log_time, publish_time, sequence, decoded)] with mcap + mcap_ros2."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out: dict[str, list] = {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages(
                topics=[SCENE_TOPIC, BOXES_TOPIC, SIREN_TOPIC]):
            out.setdefault(channel.topic, []).append(
                (schema.name, message.log_time, message.publish_time, message.sequence, decoded))
    return out


def _yaw(q) -> float:
    assert abs(q.x) < 1e-12 and abs(q.y) < 1e-12
    assert math.isclose(q.w * q.w + q.z * q.z, 1.0, abs_tol=1e-12)
    return 2.0 * math.atan2(q.z, q.w)


def _same_angle(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(math.remainder(a - b, 2 * math.pi)) < tol


def test_every_detection_decodes_with_its_class_centre_size_and_yaw(written):
    path, frames = written
    boxes_msgs = _decoded(path)[BOXES_TOPIC]
    assert len(boxes_msgs) == len(frames)
    for (schema, log_time, publish_time, seq, msg), (k, (dets, emit)) in zip(boxes_msgs, enumerate(frames)):
        assert schema == "vision_msgs/msg/Detection3DArray"
        assert (log_time, publish_time, seq) == (dets.stamp_ns, emit, k)
        assert msg.header.frame_id == "ego"
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == dets.stamp_ns
        assert len(msg.detections) == len(dets)
        for i, d in enumerate(msg.detections):
            x, y, z, length, width, height, yaw = (float(v) for v in dets.boxes[i])
            assert len(d.results) == 1
            assert d.results[0].hypothesis.class_id == CLASS_NAMES[dets.labels[i]]
            assert d.results[0].hypothesis.score == pytest.approx(float(dets.scores[i]))
            c = d.bbox.center.position
            assert (c.x, c.y, c.z) == (x, y, z)  # float32 -> float64 is exact
            assert (d.bbox.size.x, d.bbox.size.y, d.bbox.size.z) == (length, width, height)
            assert _same_angle(_yaw(d.bbox.center.orientation), yaw), (i, yaw)
            assert _same_angle(_yaw(d.results[0].pose.pose.orientation), yaw)


def test_scene_shows_each_detection_as_a_class_coloured_cube_with_label(written):
    path, frames = written
    scene = _decoded(path)[SCENE_TOPIC]
    assert len(scene) == len(frames)
    for (schema, log_time, publish_time, _, msg), (dets, emit) in zip(scene, frames):
        assert schema == "foxglove_msgs/msg/SceneUpdate"
        assert (log_time, publish_time) == (dets.stamp_ns, emit)
        assert [(d.type, d.timestamp.sec * 10**9 + d.timestamp.nanosec) for d in msg.deletions] == [(1, dets.stamp_ns)]
        assert len(msg.entities) == len(dets) + len(dets.siren_events)
        for i in range(len(dets)):
            e = msg.entities[i]
            name = CLASS_NAMES[dets.labels[i]]
            assert e.id == f"det/{i}" and e.frame_id == "ego"
            assert e.lifetime.sec * 10**9 + e.lifetime.nanosec == 150_000_000
            (cube,) = e.cubes
            assert (cube.pose.position.x, cube.pose.position.y) == (float(dets.boxes[i, 0]), float(dets.boxes[i, 1]))
            assert _same_angle(_yaw(cube.pose.orientation), float(dets.boxes[i, 6]))
            assert (cube.size.x, cube.size.y, cube.size.z) == tuple(float(v) for v in dets.boxes[i, 3:6])
            assert (cube.color.r, cube.color.g, cube.color.b) == CLASS_COLORS_RGB[name]
            assert e.texts[0].text.startswith(f"{name} {dets.scores[i]:.2f}")
            assert {kv.key: kv.value for kv in e.metadata}["class"] == name
            moving = np.hypot(*dets.velocities[i]) > 0
            assert len(e.arrows) == int(moving)
            if moving:
                assert _same_angle(_yaw(e.arrows[0].pose.orientation), math.atan2(-1.5, 6.0))
                assert e.arrows[0].shaft_length + e.arrows[0].head_length == pytest.approx(math.hypot(6.0, 1.5))
            assert len(e.spheres) == int(dets.siren[i])  # the siren beacon
            assert ("SIREN" in e.texts[0].text) == bool(dets.siren[i])
        for e, ev in zip(msg.entities[len(dets):], dets.siren_events):
            assert e.id.startswith("siren/")
            assert _same_angle(_yaw(e.arrows[0].pose.orientation), ev.bearing_rad)
            assert (e.arrows[0].pose.position.x, e.arrows[0].pose.position.y) == (0.0, 0.0)


def test_siren_channel_carries_bearing_only_and_associated_events(written):
    path, frames = written
    siren = _decoded(path)[SIREN_TOPIC]
    assert len(siren) == len(frames)
    for (schema, log_time, _, _, msg), (dets, _) in zip(siren, frames):
        assert schema == "perception_msgs/msg/SirenEventArray"
        assert log_time == dets.stamp_ns
        got = [(e.bearing_rad, e.probability, e.detection_index) for e in msg.events]
        assert got == [(e.bearing_rad, e.probability, e.detection_index) for e in dets.siren_events]
        assert [e.detection_index for e in msg.events] == [-1, 1]


def _raw_by_topic(path: Path) -> dict[str, list[tuple[int, int, int, str]]]:
    from mcap.reader import make_reader

    out: dict[str, list] = {}
    with open(path, "rb") as f:
        for _, channel, m in make_reader(f).iter_messages(log_time_order=True):
            out.setdefault(channel.topic, []).append(
                (m.log_time, m.publish_time, m.sequence, hashlib.sha1(m.data).hexdigest()))
    return out


def test_copied_sensor_channels_are_byte_identical_and_others_left_out(drive, written):
    path, _ = written
    src, dst = _raw_by_topic(drive), _raw_by_topic(path)
    src_rec = RecordingReader(drive)
    copied = {c.topic for c in src_rec.channels() if c.sensor_id in COPIED or not c.sensor_id}
    assert {"/lidar_top/points", "/cam_front/image/compressed", "/cam_front/camera_info", "/radar_front/scan",
            "/tf_static"} <= copied
    assert set(dst) == copied | {SCENE_TOPIC, BOXES_TOPIC, SIREN_TOPIC}
    for topic in copied:
        assert dst[topic] == src[topic], topic  # same count, times, sequence numbers and payload bytes
    # the rig, the recording's metadata and the channel metadata travel along: it replays as a recording
    out = RecordingReader(path)
    assert out.rig is not None and out.attachment("rig.yaml") == src_rec.attachment("rig.yaml")
    assert out.rig.ids() == src_rec.rig.ids()
    assert out.metadata["scenario"] == "sink-test" and out.metadata["git_rev"] == "abc123"
    assert out.metadata["class_names"] == ",".join(CLASS_NAMES)
    counts = out.summary().counts_by_sensor
    assert counts == {s: n for s, n in src_rec.summary().counts_by_sensor.items() if s in COPIED}
    sweeps = [m for m in out.messages(sensors=["lidar_top"])]
    ref = [m for m in src_rec.messages(sensors=["lidar_top"])]
    assert [s.stamp_ns for s in sweeps] == [s.stamp_ns for s in ref]
    np.testing.assert_array_equal(sweeps[-1].points, ref[-1].points)


def test_detection_channels_decode_with_rosbags_too(written):
    """A second, independent CDR decoder (rosbags, from the embedded definitions) reads the same values."""
    from rosbags.highlevel import AnyReader

    path, frames = written
    seen: dict[str, list] = {}
    with AnyReader([path]) as reader:
        conns = [c for c in reader.connections if c.topic in (SCENE_TOPIC, BOXES_TOPIC, SIREN_TOPIC)]
        for conn, _, raw in reader.messages(connections=conns):
            seen.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    assert {t: len(v) for t, v in seen.items()} == {t: len(frames) for t in (SCENE_TOPIC, BOXES_TOPIC, SIREN_TOPIC)}
    dets = frames[-1][0]
    last = seen[BOXES_TOPIC][-1].detections
    assert [d.results[0].hypothesis.class_id for d in last] == [CLASS_NAMES[k] for k in dets.labels]
    np.testing.assert_array_equal([d.bbox.size.x for d in last], dets.boxes[:, 3].astype(np.float64))
    assert seen[SCENE_TOPIC][-1].entities[1].texts[0].text.endswith("SIREN")
    assert seen[SIREN_TOPIC][-1].events[1].detection_index == 1


def test_shared_geometry_definitions_match_ros2_humble():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    humble = get_typestore(Stores.ROS2_HUMBLE)
    standard = [n for n in OUTPUT_MSG_NAMES if n in humble.fielddefs]
    assert {"geometry_msgs/msg/Pose", "geometry_msgs/msg/PoseWithCovariance", "builtin_interfaces/msg/Duration"} \
        <= set(standard)
    for name in standard:
        assert get_types_from_msg(output_message_definition(name), name)[name] == humble.fielddefs[name], name


KILLED_SINK = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from drivers.recording import RecordingReader
    from perception.decode import Detections3D
    from perception.sinks import DetectionsMcapSink
    rec = RecordingReader(sys.argv[1])
    stamps = [gt.stamp_ns for gt in rec.messages(sensors=["ground_truth"])]
    sink = DetectionsMcapSink(sys.argv[2], rec, ["lidar_top"], ("car", "truck", "pedestrian", "bicycle"))
    for k, stamp in enumerate(stamps[:2]):
        box = np.array([[10.0 + k, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3]], np.float32)
        sink.write(Detections3D(stamp, box, np.zeros((1, 2), np.float32), np.array([0.9], np.float32),
                                np.array([k], np.int32), np.zeros(1, bool)), stamp + 5)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_killed_run_keeps_every_frame_written(drive, tmp_path):
    from mcap.exceptions import EndOfFile
    from mcap.reader import NonSeekingReader
    from mcap_ros2.decoder import DecoderFactory

    out = tmp_path / "killed.mcap"
    proc = subprocess.run([sys.executable, "-c", KILLED_SINK, str(drive), str(out)], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    rec = RecordingReader(out)
    assert not rec.complete and rec.rig is not None
    assert rec.summary().counts_by_sensor["lidar_top"] == 2  # the sweeps up to the second frame's stamp
    centres = []
    with open(out, "rb") as f:
        reader = NonSeekingReader(f, decoder_factories=[DecoderFactory()])
        with pytest.raises(EndOfFile):  # no summary, no footer: the stream just ends
            for _, channel, _, msg in reader.iter_decoded_messages(topics=[BOXES_TOPIC], log_time_order=False):
                centres += [(d.bbox.center.position.x, d.results[0].hypothesis.class_id) for d in msg.detections]
    assert centres == [(10.0, "car"), (11.0, "truck")]


def test_sink_refuses_sensors_the_input_lacks_and_foreign_class_names(drive, tmp_path):
    rec = RecordingReader(drive)
    with pytest.raises(ValueError, match="cannot copy sensor 'lidar_rear'.*has: .*lidar_top"):
        DetectionsMcapSink(tmp_path / "a.mcap", rec, ["lidar_rear"], CLASS_NAMES)
    with pytest.raises(ValueError, match="without an input recording"):
        DetectionsMcapSink(tmp_path / "b.mcap", None, ["lidar_top"], CLASS_NAMES)
    with DetectionsMcapSink(tmp_path / "c.mcap", None, [], ("car", "bus")) as sink:
        with pytest.raises(ValueError, match="class names"):
            sink.write(Detections3D.empty(1_000), 2_000)
        sink.write(Detections3D.empty(1_000, ("car", "bus")), 2_000)  # an empty frame is a valid frame
    assert len(_decoded(tmp_path / "c.mcap")[BOXES_TOPIC][0][4].detections) == 0


def test_results_sink_writes_one_results_line_per_frame(tmp_path):
    path = tmp_path / "detections.jsonl"
    frames = [_frame_dets(1_000_000_000 + 100_000_000 * k, k, np.zeros((0, 7))) for k in range(3)]
    with ResultsSink(path) as sink:
        for dets in frames:
            sink.write(dets, dets.stamp_ns + 40_000_000)
        assert sink.frames_written == 3
    read = read_predictions(path)
    assert [f.stamp_ns for f in read.frames] == [d.stamp_ns for d in frames]
    got, want = read.frames[2], frames[2]
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=1e-6)
    assert list(got.labels) == [CLASS_NAMES[k] for k in want.labels]
    assert [a["siren"] for a in got.attributes] == list(want.siren)


def test_background_sink_writes_the_same_file_in_order_off_the_callers_thread(drive, written, tmp_path):
    _, frames = written
    rec = RecordingReader(drive)
    out = tmp_path / "background.mcap"
    with BackgroundSink(DetectionsMcapSink(out, rec, COPIED, CLASS_NAMES, frame_period_ns=100_000_000,
                                           metadata={"git_rev": "abc123"}), max_queue=2) as sink:
        for dets, emit in frames:
            sink.write(dets, emit)
    rec.close()
    # every message of every channel as the same sink wrote it in the caller's thread: same frames, same
    # order, same bytes, nothing lost (the files differ only in their attachment's creation time)
    assert _raw_by_topic(out) == _raw_by_topic(written[0])


def test_background_sink_raises_the_threads_error_and_refuses_writes_after_close(tmp_path):
    sink = BackgroundSink(DetectionsMcapSink(tmp_path / "c.mcap", None, [], ("car", "bus")))
    sink.write(Detections3D.empty(1_000), 2_000)  # foreign class names: the inner sink raises in the thread
    with pytest.raises(ValueError, match="class names"):
        sink.close()
    sink.close()  # idempotent
    with pytest.raises(SinkError, match="after close"):
        sink.write(Detections3D.empty(1_000, ("car", "bus")), 2_000)
    assert (tmp_path / "c.mcap").exists()  # the inner sink was closed: the file is complete
    assert BOXES_TOPIC not in _decoded(tmp_path / "c.mcap")  # the refused frame was not written


class _PolicyProbe:
    """A sink that records the scheduling policy of the thread that writes."""

    def __init__(self) -> None:
        self.policies: list[int] = []

    def write(self, dets, emit_ns) -> None:
        self.policies.append(os.sched_getscheduler(0))

    def close(self) -> None:
        pass


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_background_sink_thread_yields_the_cpu_to_the_pipeline():
    probe = _PolicyProbe()
    with BackgroundSink(probe) as sink:
        sink.write(Detections3D.empty(1_000), 2_000)
    assert probe.policies == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own thread is left as it was


def test_a_corrupt_input_chunk_stops_the_copy_with_a_warning_and_every_frame_is_still_written(
        drive, tmp_path, caplog):
    from mcap.reader import make_reader

    with open(drive, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    assert {c.compression for c in chunks} == {"lz4"} and len(chunks) >= 3
    bad = chunks[len(chunks) // 2]
    data = bytearray(drive.read_bytes())
    # the chunk record: opcode, length, start, end, uncompressed size, crc, "lz4", compressed size, then the
    # lz4 frame, whose magic number is overwritten
    payload = bad.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4 + 4 + 3 + 8
    assert bytes(data[payload:payload + 4]) == b"\x04\x22\x4d\x18"
    data[payload:payload + 4] = b"\0\0\0\0"
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))

    rec = RecordingReader(damaged)
    stamps = [gt.stamp_ns for gt in RecordingReader(drive).messages(sensors=["ground_truth"])]
    out = tmp_path / "detections.mcap"
    with caplog.at_level("WARNING", logger="perception.sinks"):
        with DetectionsMcapSink(out, rec, ["lidar_top"], CLASS_NAMES) as sink:
            for k, stamp in enumerate(stamps):
                sink.write(_frame_dets(stamp, k, np.zeros((0, 7))), stamp + 30_000_000)
    rec.close()
    assert "input recording unreadable past this point (RuntimeError" in caplog.text
    assert "sensor copying stops" in caplog.text
    decoded = _decoded(out)
    assert [m[1] for m in decoded[BOXES_TOPIC]] == stamps
    with open(out, "rb") as f:
        copied = [m.log_time for _, _, m in make_reader(f).iter_messages(topics=["/lidar_top/points"])]
    with open(drive, "rb") as f:
        every = [m.log_time for _, _, m in make_reader(f).iter_messages(topics=["/lidar_top/points"])]
    assert 0 < len(copied) < len(every) and max(copied) <= bad.message_start_time
