"""The synchronizer with ``configs/sync_sim.yaml`` on simulated drives (every sensor of the default rig, two
cameras), fed in arrival order with ``now_ns = arrival`` (a replay at recorded speed with zero transport
delay; an audio chunk arrives once its last sample is recorded, as the executor feeds it).

Scenarios: a clean drive; 20 % of the front camera's images lost; the radar dead for 2 s and then back;
the same drive written to a real MCAP recording and replayed twice. The expected ``missing`` sets are
derived from the config's tolerance rule and the messages actually fed, so every frame is checked, not
only a rate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from drivers.messages import AudioChunk, LidarSweep, Message
from drivers.recording import RecordingReader, RecordingWriter
from drivers.sim import RADAR_LAYOUT, SimConfig, SimulatedRig
from perception.executor import arrival_order
from perception.sync import SyncConfig, SyncedFrame, Synchronizer

ROOT = Path(__file__).resolve().parents[2]
SYNC = SyncConfig.load(ROOT / "configs" / "sync_sim.yaml")
MS = 1_000_000
IMU_PERIOD_NS = 5 * MS  # 200 Hz: the finest step at which now_ns advances in these replays
DRIVE = SimConfig(seed=5, duration_s=3.5, n_cameras=2, lidar_columns=900, max_speed=20.0)


@dataclasses.dataclass
class Run:
    frames: list[SyncedFrame]
    emitted_at: list[int | None]  # now_ns when each frame left; None: at flush (end of input)
    sync: Synchronizer


def _replay(messages) -> Run:
    """Push every message with now_ns = its arrival, then flush."""
    sync = Synchronizer(SYNC)
    frames, at = [], []
    for now, m in arrival_order(messages):
        out = sync.push(m, now)
        frames += out
        at += [now] * len(out)
    tail = sync.flush()
    return Run(frames + tail, at + [None] * len(tail), sync)


def _signature(f: SyncedFrame) -> tuple:
    """Everything that identifies a frame's content, by stamps."""
    return (f.stamp_ns, f.seq, tuple(sorted((sid, m.stamp_ns) for sid, m in f.messages.items())),
            tuple(sorted(f.missing)), tuple(s.stamp_ns for s in f.imu), tuple(s.stamp_ns for s in f.speed),
            tuple(a.stamp_ns for a in f.audio))


def _expected_missing(messages: list[Message], sensor_id: str, frame_stamps: list[int]) -> list[bool]:
    """Per frame stamp: True when no message of ``sensor_id`` is within the config's tolerance of it."""
    cfg = SYNC.sensor(sensor_id)
    stamps = np.array([m.stamp_ns - cfg.offset_ns for m in messages if m.sensor_id == sensor_id], dtype=np.int64)
    return [not np.any(np.abs(stamps - s) <= cfg.tolerance_ns) for s in frame_stamps]


def _assert_counters_agree(run: Run, sent: list[Message]) -> None:
    """Every sensor's messages are all accounted for, and the missing counters match the frames."""
    report = run.sync.report()
    assert report.frames_emitted == len(run.frames)
    assert report.frames_partial == sum(f.partial for f in run.frames)
    for row in report.sensors:
        assert row.received == sum(m.sensor_id == row.sensor_id for m in sent), row.sensor_id
        assert row.accounted == row.received, row.sensor_id
        assert row.missing == sum(row.sensor_id in f.missing for f in run.frames), row.sensor_id


def _assert_stream_spans(run: Run) -> None:
    """IMU and speed samples travel with the frame whose span (previous stamp, stamp] holds them, or, when
    they arrived after that frame left (these streams do not hold frames), with the next one: never older
    than the previous stamp minus the stream's tolerance, each in one frame at most, never silently lost."""
    prev = None
    for f in run.frames:
        for s in (*f.imu, *f.speed):
            tol = SYNC.sensor(s.sensor_id).tolerance_ns
            assert (prev is None or s.stamp_ns > prev - tol) and s.stamp_ns <= f.stamp_ns
        prev = f.stamp_ns
    report = run.sync.report()
    for sid, attr in (("imu", "imu"), ("vehicle_speed", "speed")):
        delivered = [s.stamp_ns for f in run.frames for s in getattr(f, attr)]
        assert len(delivered) == len(set(delivered)) == report.row(sid).delivered
        row = report.row(sid)
        assert row.delivered + row.late + row.unmatched + row.queued == row.received


@pytest.fixture(scope="module")
def drive() -> tuple[SimulatedRig, list[Message]]:
    sim = SimulatedRig.from_config(DRIVE)
    return sim, list(sim.messages())


def _lidar_stamps(messages: list[Message]) -> list[int]:
    return [m.stamp_ns for m in messages if isinstance(m, LidarSweep)]


def _check_end_of_drive(run: Run, messages: list[Message]) -> None:
    """The microphone never holds a frame: the last sweep's frame leaves during input, not at flush, with
    audio up to the end of the drive; every audio chunk travels with at least one frame (none lost)."""
    assert run.emitted_at.count(None) == 0
    assert run.frames[-1].stamp_ns == _lidar_stamps(messages)[-1]
    assert "mic_array" not in run.frames[-1].missing
    chunks = [m.stamp_ns for m in messages if isinstance(m, AudioChunk)]
    delivered = {a.stamp_ns for f in run.frames for a in f.audio}
    last = run.frames[-1].stamp_ns
    assert delivered == {c for c in chunks if c <= last}


def test_clean_drive_gives_one_complete_frame_per_sweep(drive):
    _, messages = drive
    run = _replay(messages)
    lidar = _lidar_stamps(messages)
    assert [f.stamp_ns for f in run.frames] == lidar and len(lidar) == 35
    _check_end_of_drive(run, messages)
    during = run.frames
    assert all(not f.partial for f in during)
    for f in during:
        radars = {rid for rid, _, _ in RADAR_LAYOUT}
        assert set(f.messages) == {"lidar_top", "cam_front", "cam_rear"} | radars
        for sid in ("cam_front", "cam_rear", *sorted(radars)):
            # the newest message at or before the sweep (up to 1 ms of stamp jitter after it)
            cfg = SYNC.sensor(sid)
            assert abs(f.messages[sid].stamp_ns - cfg.offset_ns - f.stamp_ns) <= cfg.tolerance_ns
            assert f.messages[sid].stamp_ns <= f.stamp_ns + 1 * MS
    # Streams: samples in (previous stamp, stamp], each in one frame at most; the first frame takes all up to it.
    _assert_stream_spans(run)
    # 200 Hz: none lost, none twice (the sample at the very last stamp would go with a next frame)
    imu = [m.stamp_ns for m in messages if m.sensor_id == "imu" and m.stamp_ns < during[-1].stamp_ns]
    assert sorted(s.stamp_ns for f in during for s in f.imu if s.stamp_ns < during[-1].stamp_ns) == imu
    assert all(19 <= len(f.imu) <= 21 for f in during)
    assert all(1 <= len(f.audio) <= 2 for f in during)
    # A frame waits for no camera or radar message after its sweep, only for the IMU sample (5 ms) and wheel
    # speed (20 ms) at or after its stamp, and never for the timeout.
    latency = [at - f.stamp_ns for f, at in zip(during, run.emitted_at)]
    report = run.sync.report()
    print(f"clean drive: {len(run.frames)} frames, emission latency max {max(latency) / MS:.1f} ms; late stream "
          f"samples (arrived after their frame left): imu {report.row('imu').late}, "
          f"vehicle_speed {report.row('vehicle_speed').late}")
    assert max(latency) <= 21 * MS
    _assert_counters_agree(run, messages)


def test_lost_front_camera_images_show_up_as_missing_in_their_frames(drive):
    _, messages = drive
    cams = [i for i, m in enumerate(messages) if m.sensor_id == "cam_front"]
    rng = np.random.default_rng(0)
    lost = set(rng.choice(cams, size=round(0.2 * len(cams)), replace=False).tolist())
    sent = [m for i, m in enumerate(messages) if i not in lost]
    run = _replay(sent)
    lidar = _lidar_stamps(sent)
    assert [f.stamp_ns for f in run.frames] == lidar
    expected = _expected_missing(sent, "cam_front", lidar)
    got = ["cam_front" in f.missing for f in run.frames]
    print(f"{len(lost)} of {len(cams)} cam_front images removed: cam_front missing in {sum(got)} of {len(got)} "
          f"frames ({100 * sum(got) / len(got):.0f} %); a frame has two images within the 40 ms tolerance every "
          "other sweep, so one loss there is covered by the other image")
    assert got == expected
    assert 2 <= sum(got) <= 0.3 * len(got)
    for f in run.frames[:-1]:
        assert f.missing <= {"cam_front"}  # nothing else suffers
    _check_end_of_drive(run, sent)
    _assert_counters_agree(run, sent)


def test_radar_outage_keeps_frames_coming_and_marks_radar_missing_only_meanwhile(drive):
    _, messages = drive
    t0 = DRIVE.start_stamp_ns
    dead_from, dead_to = t0 + 800 * MS, t0 + 2800 * MS  # radar silent for 2 s, then back
    sent = [m for m in messages if not (m.sensor_id == "radar_front" and dead_from <= m.stamp_ns < dead_to)]
    run = _replay(sent)
    lidar = _lidar_stamps(sent)
    stamps = [f.stamp_ns for f in run.frames]
    assert stamps == lidar and set(np.diff(stamps).tolist()) == {100 * MS}  # 10 Hz throughout, none lost
    expected = _expected_missing(sent, "radar_front", lidar)
    got = ["radar_front" in f.missing for f in run.frames]
    assert got == expected
    tol = SYNC.sensor("radar_front").tolerance_ns
    near_outage = [dead_from - tol <= s < dead_to + tol for s in stamps]  # a scan of the outage would match
    missing_stamps = [s for s, g in zip(stamps, got) if g]
    print(f"radar dead {(dead_to - dead_from) / 1e9:.1f} s: radar missing in {sum(got)} frames, from "
          f"{(missing_stamps[0] - t0) / 1e9:.1f} s to {(missing_stamps[-1] - t0) / 1e9:.1f} s")
    # Missing only while it was dead (frames at the edges may still have a scan within the 45 ms tolerance).
    assert sum(got) >= 19 and all(near for near, g in zip(near_outage, got) if g)
    assert not any(got[: stamps.index(missing_stamps[0])]) and not any(got[stamps.index(missing_stamps[-1]) + 1:])
    # Output never stalls: each frame leaves at most the timeout after its LiDAR sweep arrived.
    latency = {s: at - s for s, at in zip(stamps, run.emitted_at) if at is not None}
    waited = [latency[s] for s, g in zip(stamps, got) if g and s in latency]
    print(f"frames without radar left {min(waited) / MS:.0f}-{max(waited) / MS:.0f} ms after their sweep "
          f"(timeout {SYNC.timeout_ns / MS:.0f} ms)")
    assert max(latency.values()) <= SYNC.timeout_ns + IMU_PERIOD_NS
    assert min(waited) >= SYNC.timeout_ns  # they waited for the radar, up to the deadline
    for f in run.frames[:-1]:
        assert f.missing <= {"radar_front"}
    _check_end_of_drive(run, sent)
    _assert_counters_agree(run, sent)


def test_replaying_a_recording_twice_gives_identical_frames(drive, tmp_path):
    sim, messages = drive
    path = tmp_path / "drive.mcap"
    with RecordingWriter(path, sim.rig, metadata={"scenario": "sync_sim"}) as writer:
        for m in messages:
            writer.write(m)
    live = _replay(messages)
    replays = []
    for _ in range(2):
        with RecordingReader(path) as reader:
            assert reader.complete
            read = list(reader.messages())
        assert [(m.sensor_id, m.stamp_ns) for m in read] == [(m.sensor_id, m.stamp_ns) for m in messages]
        replays.append(_replay(read))
    first, second = ([_signature(f) for f in r.frames] for r in replays)
    print(f"recording {path.stat().st_size / 1e6:.1f} MB, {len(messages)} messages: {len(first)} frames, "
          "identical on both replays and to the live run")
    assert len(first) == 35
    assert first == second
    assert first == [_signature(f) for f in live.frames]  # the recording keeps every stamp
    assert replays[0].sync.report().to_json_dict() == replays[1].sync.report().to_json_dict()
    assert [len(f.imu) for f in replays[0].frames] == [len(f.imu) for f in live.frames]
