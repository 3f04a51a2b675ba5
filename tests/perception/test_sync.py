"""Scenario tests for the synchronizer: hand-built rig timelines with real message objects (tiny payloads).

The simulated rig: a 10 Hz LiDAR (reference, stamped at the sweep end, delivered 30 ms later), a camera
exposed 20 ms before each sweep end (delivered after 15 ms), a radar 10 ms after (5 ms), a 100 Hz IMU,
a 20 Hz wheel-speed stream and 20 ms audio chunks. Each scenario perturbs that timeline, drives a
Synchronizer with ``push`` at every arrival and ``poll`` every 5 ms (a real loop's shape), and checks what
was emitted, what ``missing`` holds, the counters, and that output never stalls past the timeout.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.yamlconf import ConfigError
from drivers.messages import AudioChunk, CameraImage, ImuSample, LidarSweep, Message, RadarScan, VehicleSpeed
from perception.sync import (SensorSyncConfig, SyncConfig, SyncedFrame, Synchronizer, approximate_time_sets)

MS = 1_000_000
S = 1_000 * MS
P = 100 * MS  # LiDAR period
T0 = 1_000 * S  # epoch of the scenarios, a multiple of the poll tick
TIMEOUT = 50 * MS
TICK = 5 * MS

LIDAR, CAM, RADAR, IMU, SPEED, MIC = "lidar_top", "cam_front", "radar_front", "imu", "wheel_speed", "mic_array"
CAM_OFFSET, RADAR_OFFSET = -20 * MS, 10 * MS
DELAY = {LIDAR: 30 * MS, CAM: 15 * MS, RADAR: 5 * MS, IMU: 2 * MS, SPEED: 3 * MS, MIC: 2 * MS}
IMU_PERIOD, SPEED_PERIOD, CHUNK = 10 * MS, 50 * MS, 20 * MS

CONFIG = SyncConfig(
    reference=LIDAR,
    sensors=(
        SensorSyncConfig(CAM, offset_ns=CAM_OFFSET, tolerance_ns=15 * MS, queue_limit=4),
        SensorSyncConfig(RADAR, offset_ns=RADAR_OFFSET, tolerance_ns=30 * MS, queue_limit=4),
        SensorSyncConfig(IMU, offset_ns=0, tolerance_ns=0, queue_limit=64, stream=True),
        SensorSyncConfig(SPEED, offset_ns=0, tolerance_ns=0, queue_limit=16, stream=True),
        SensorSyncConfig(MIC, offset_ns=0, tolerance_ns=0, queue_limit=16, stream=True),
    ),
    timeout_ns=TIMEOUT,
    max_open_frames=4,
    max_forward_jump_ns=2 * S,
    max_backward_jump_ns=500 * MS,
)
ALL = (LIDAR, CAM, RADAR, IMU, SPEED, MIC)


# ------------------------------------------------------------------------------------------ messages


def lidar(stamp: int, seq: int = 0) -> LidarSweep:
    return LidarSweep(LIDAR, stamp, seq, np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.zeros(1, np.uint16))


def camera(stamp: int, seq: int = 0, sensor_id: str = CAM) -> CameraImage:
    return CameraImage(sensor_id, stamp, seq, np.zeros((2, 2, 3), np.uint8))


def radar(stamp: int, seq: int = 0) -> RadarScan:
    z = np.zeros(1, np.float32)
    return RadarScan(RADAR, stamp, seq, z, z, z, z, z)


def imu(stamp: int, seq: int = 0) -> ImuSample:
    return ImuSample(IMU, stamp, seq, np.zeros(3), np.array([0.0, 0.0, 9.81]))


def speed(stamp: int, seq: int = 0) -> VehicleSpeed:
    return VehicleSpeed(SPEED, stamp, seq, 10.0)


def chunk(stamp: int, seq: int = 0, duration_ns: int = CHUNK) -> AudioChunk:
    # 1 kHz keeps the payload tiny: one sample per millisecond.
    return AudioChunk(MIC, stamp, seq, np.zeros((4, duration_ns // MS), np.float32), 1000)


# ------------------------------------------------------------------------------------------ timelines


@dataclass
class Ev:
    """One delivery: ``msg`` arrives at ``arrival_ns`` on the host clock (true time of the scenario)."""

    arrival_ns: int
    msg: Message


def rig_timeline(n_frames: int, clock: Callable[[int], int] = lambda t: 0,
                 skip: Callable[[str, int], bool] = lambda sensor, k: False) -> list[Ev]:
    """The nominal rig for LiDAR frames k = 1..n_frames (true sweep end T0 + k P), streams from T0 to T0 + n P.

    ``clock(true_ns)`` is added to every stamp (clock jumps); ``skip(sensor, k)`` removes a message
    (k = frame index for lidar/camera/radar, sample index for streams). Messages carry ``seq = k``.
    """
    out: list[Ev] = []

    def add(sensor: str, k: int, true: int, make, arrival: int) -> None:
        if not skip(sensor, k):
            out.append(Ev(arrival, make(true + clock(true), k)))

    for k in range(1, n_frames + 1):
        t = T0 + k * P
        add(LIDAR, k, t, lidar, t + DELAY[LIDAR])
        add(CAM, k, t + CAM_OFFSET, camera, t + CAM_OFFSET + DELAY[CAM])
        add(RADAR, k, t + RADAR_OFFSET, radar, t + RADAR_OFFSET + DELAY[RADAR])
    for j in range(n_frames * P // IMU_PERIOD + 1):
        t = T0 + j * IMU_PERIOD
        add(IMU, j, t, imu, t + DELAY[IMU])
    for j in range(n_frames * P // SPEED_PERIOD + 1):
        t = T0 + j * SPEED_PERIOD
        add(SPEED, j, t, speed, t + DELAY[SPEED])
    for j in range(n_frames * P // CHUNK + 1):
        t = T0 + j * CHUNK
        add(MIC, j, t, chunk, t + CHUNK + DELAY[MIC])
    out.sort(key=lambda e: e.arrival_ns)
    return out


def find(events: list[Ev], sensor: str, seq: int) -> Ev:
    return next(e for e in events if e.msg.sensor_id == sensor and e.msg.seq == seq)


@dataclass
class Emission:
    now_ns: Optional[int]  # None: handed out by flush()
    frame: SyncedFrame


@dataclass
class Run:
    sync: Synchronizer
    emissions: list[Emission]
    ref_arrival: dict[int, int]  # id(reference message) -> now_ns it was pushed

    @property
    def frames(self) -> list[SyncedFrame]:
        return [e.frame for e in self.emissions]

    def row(self, sensor: str):
        return self.sync.report().row(sensor)


def drive(events: list[Ev], config: SyncConfig = CONFIG, tick: int = TICK, flush: bool = True) -> Run:
    """Push every event at its arrival, poll every ``tick`` (events first at equal times), flush at the end."""
    sync = Synchronizer(config)
    actions = [(e.arrival_ns, 0, i, e.msg) for i, e in enumerate(events)]
    start = min(e.arrival_ns for e in events) // tick * tick
    end = max(e.arrival_ns for e in events) + 2 * config.timeout_ns
    actions += [(t, 1, 0, None) for t in range(start, end + tick, tick)]
    actions.sort(key=lambda a: a[:3])
    emissions: list[Emission] = []
    ref_arrival: dict[int, int] = {}
    for t, kind, _, msg in actions:
        if kind == 0:
            if msg.sensor_id == config.reference:
                ref_arrival.setdefault(id(msg), t)
            frames = sync.push(msg, t)
        else:
            frames = sync.poll(t)
        emissions += [Emission(t, f) for f in frames]
    if flush:
        emissions += [Emission(None, f) for f in sync.flush()]
    return Run(sync, emissions, ref_arrival)


def stamps(frames: list[SyncedFrame]) -> list[int]:
    return [f.stamp_ns for f in frames]


def assert_frame_latency_within_timeout(run: Run, timeout: int = TIMEOUT) -> None:
    """Every frame left at most ``timeout`` (+ one poll tick) after its reference message arrived."""
    for e in run.emissions:
        if e.now_ns is None:
            continue
        waited = e.now_ns - run.ref_arrival[id(e.frame.messages[LIDAR])]
        assert 0 <= waited <= timeout + TICK, f"frame {e.frame.stamp_ns} waited {waited / MS} ms"


def assert_output_never_stops(run: Run, timeout: int = TIMEOUT) -> None:
    """While the LiDAR keeps arriving every P, consecutive emissions are at most P + timeout apart."""
    nows = [e.now_ns for e in run.emissions if e.now_ns is not None]
    gaps = np.diff(nows)
    assert len(gaps) > 0 and gaps.max() <= P + timeout + TICK, f"output stalled {gaps.max() / MS} ms"
    assert_frame_latency_within_timeout(run, timeout)


def assert_everything_accounted(run: Run) -> None:
    """After flush, every received message has exactly one fate (delivered, late, duplicate, ...)."""
    report = run.sync.report()
    for r in report.sensors:
        assert r.queued == 0, r
        assert r.received == r.accounted, r
    assert report.open_frames == 0


def anomalies(run: Run, sensor: str) -> dict[str, int]:
    r = run.row(sensor)
    names = ("late", "duplicate", "replaced", "dropped", "unmatched", "ignored", "out_of_order", "clock_jump",
             "off_timeline", "missing")
    return {n: getattr(r, n) for n in names if getattr(r, n)}


# ------------------------------------------------------------------------------------------ scenarios


def test_perfect_timing_emits_every_frame_complete_when_its_lidar_arrives():
    events = rig_timeline(30)
    run = drive(events)
    frames = run.frames
    assert stamps(frames) == [T0 + k * P for k in range(1, 31)]
    assert [f.seq for f in frames] == list(range(30))
    assert not any(f.partial for f in frames)
    for k, (e, f) in enumerate(zip(run.emissions, frames), start=1):
        assert set(f.messages) == {LIDAR, CAM, RADAR}
        assert f.messages[CAM].stamp_ns == f.stamp_ns + CAM_OFFSET
        assert f.messages[RADAR].stamp_ns == f.stamp_ns + RADAR_OFFSET
        # Everything else arrived before the sweep, so the frame leaves the moment the LiDAR is pushed.
        assert e.now_ns == f.stamp_ns + DELAY[LIDAR]
        lo = f.stamp_ns - P if k > 1 else T0 - 1
        assert [s.stamp_ns for s in f.imu] == [t for t in range(T0, f.stamp_ns + 1, IMU_PERIOD) if t > lo]
        assert [s.stamp_ns for s in f.speed] == [t for t in range(T0, f.stamp_ns + 1, SPEED_PERIOD) if t > lo]
    assert len(frames[0].imu) == 11 and all(len(f.imu) == 10 for f in frames[1:])
    for sensor in ALL:
        assert anomalies(run, sensor) == {}, sensor
    assert run.row(LIDAR).rate_hz == pytest.approx(10.0)
    assert run.row(IMU).rate_hz == pytest.approx(100.0)
    assert run.row(CAM).delivered == 30
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_jitter_within_tolerance_still_matches_each_camera_to_its_own_frame():
    rng = np.random.default_rng(3)
    # Stamp jitter [lo, hi] per sensor. The LiDAR only jitters early so the streams still reach the last sweep.
    jitter = {LIDAR: (-2 * MS, 0), CAM: (-10 * MS, 10 * MS), RADAR: (-20 * MS, 20 * MS)}
    events = []
    for e in rig_timeline(30):
        m, arrival = e.msg, e.arrival_ns + int(rng.integers(-3, 4)) * MS
        if m.sensor_id in jitter:
            lo, hi = jitter[m.sensor_id]
            m = dataclasses.replace(m, stamp_ns=m.stamp_ns + int(rng.integers(lo, hi + 1)))
        events.append(Ev(arrival, m))
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 30 and not any(f.partial for f in frames)
    for k, f in enumerate(frames, start=1):
        assert f.messages[LIDAR].seq == k
        assert f.messages[CAM].seq == k, "camera matched to a neighbouring frame"
        assert f.messages[RADAR].seq == k
        assert abs(f.messages[CAM].stamp_ns - CAM_OFFSET - f.stamp_ns) <= 15 * MS
    for sensor in (LIDAR, CAM, RADAR):
        assert anomalies(run, sensor) == {}, sensor
    for sensor in (IMU, SPEED, MIC):
        # The last sweep may be stamped just before the last sample, which then has no frame to join.
        assert anomalies(run, sensor) in ({}, {"unmatched": 1}), sensor
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_camera_dropping_every_fifth_frame_marks_exactly_those_frames_partial():
    events = rig_timeline(30, skip=lambda s, k: s == CAM and k % 5 == 0)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 30
    for e in run.emissions:
        k = e.frame.messages[LIDAR].seq
        if k % 5 == 0:
            assert e.frame.missing == frozenset({CAM}) and CAM not in e.frame.messages
            # Waited the full timeout (measured from the LiDAR's arrival), not a moment longer.
            assert e.now_ns == run.ref_arrival[id(e.frame.messages[LIDAR])] + TIMEOUT
        else:
            assert not e.frame.partial
    assert anomalies(run, CAM) == {"missing": 6}
    for sensor in (LIDAR, RADAR, IMU, SPEED, MIC):
        assert anomalies(run, sensor) == {}, sensor
    report = run.sync.report()
    assert (report.frames_emitted, report.frames_partial, report.frames_forced) == (30, 6, 0)
    assert run.row(CAM).rate_hz == pytest.approx(8.0, rel=0.15)  # 80 % of 10 Hz over the last second
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_camera_dead_for_two_seconds_then_recovering():
    events = rig_timeline(40, skip=lambda s, k: s == CAM and 11 <= k <= 30)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 40
    dead = [f.messages[LIDAR].seq for f in frames if f.partial]
    assert dead == list(range(11, 31))
    assert all(f.missing == frozenset({CAM}) for f in frames if f.partial)
    assert all(CAM in f.messages for f in frames[30:]), "camera not used again after recovering"
    cam = run.row(CAM)
    # A silence is a gap, not a clock jump, even though it is longer than max_forward_jump_ns.
    assert anomalies(run, CAM) == {"missing": 20}
    assert cam.largest_gap_ns == 21 * P
    assert cam.rate_hz == pytest.approx(10.0)
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_late_camera_is_counted_and_its_frame_leaves_partial_at_the_deadline():
    late_frames = (3, 10, 17, 24)
    events = rig_timeline(30)
    for k in late_frames:
        find(events, CAM, k).arrival_ns += 120 * MS  # 35 ms after the deadline of its frame
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 30
    assert [f.messages[LIDAR].seq for f in frames if f.partial] == list(late_frames)
    assert all(f.missing == frozenset({CAM}) for f in frames if f.partial)
    # Each late camera also arrived after the next one: out of order as well as late.
    assert anomalies(run, CAM) == {"late": 4, "out_of_order": 4, "missing": 4}
    assert run.row(CAM).delivered == 26
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_late_lidar_is_counted_and_its_span_folds_into_the_next_frame():
    events = rig_timeline(30)
    find(events, LIDAR, 12).arrival_ns += 250 * MS  # arrives after frames 13 and 14 have left
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert [f.messages[LIDAR].seq for f in frames] == [k for k in range(1, 31) if k != 12]
    assert not any(f.partial for f in frames)
    assert anomalies(run, LIDAR) == {"late": 1, "out_of_order": 1}
    # Its camera and radar never met a frame: counted, not silently lost.
    assert anomalies(run, CAM) == {"unmatched": 1}
    assert anomalies(run, RADAR) == {"unmatched": 1}
    f13 = next(f for f in frames if f.messages[LIDAR].seq == 13)
    assert [s.stamp_ns for s in f13.imu] == list(range(T0 + 11 * P + IMU_PERIOD, T0 + 13 * P + 1, IMU_PERIOD))
    assert_frame_latency_within_timeout(run)
    assert_everything_accounted(run)


def test_duplicate_messages_are_counted_and_never_reach_a_frame():
    events = rig_timeline(30)
    copies = []
    for e in events:
        m = e.msg
        if m.sensor_id == CAM or (m.sensor_id == LIDAR and m.seq % 4 == 0) or (m.sensor_id == IMU and m.seq % 10 == 5):
            copies.append(Ev(e.arrival_ns + 1 * MS, dataclasses.replace(m, seq=m.seq + 1000)))
    events = sorted(events + copies, key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 30 and not any(f.partial for f in frames)
    for f in frames:
        assert all(m.seq < 1000 for m in f.messages.values())
        assert all(s.seq < 1000 for s in f.imu)
    assert all(len(f.imu) == 10 for f in frames[1:])
    assert anomalies(run, CAM) == {"duplicate": 30}
    assert anomalies(run, LIDAR) == {"duplicate": 7}
    assert anomalies(run, IMU) == {"duplicate": 30}
    assert run.row(CAM).received == 60 and run.row(CAM).delivered == 30
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_out_of_order_arrival_is_counted_and_still_used():
    events = rig_timeline(30)
    for k in (3, 13, 23):  # camera k+1 overtakes camera k
        find(events, CAM, k + 1).arrival_ns = find(events, CAM, k).arrival_ns - 1 * MS
    for k in (6, 16, 26):  # LiDAR k arrives after LiDAR k+1, while frame k+1 still waits for its radar
        find(events, LIDAR, k).arrival_ns = T0 + (k + 1) * P + 31 * MS
        find(events, RADAR, k + 1).arrival_ns = T0 + (k + 1) * P + 40 * MS
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert stamps(frames) == [T0 + k * P for k in range(1, 31)], "frames must leave in stamp order"
    assert not any(f.partial for f in frames)
    assert all(f.messages[CAM].seq == f.messages[LIDAR].seq for f in frames)
    assert all(len(f.imu) == 10 for f in frames[1:])
    assert anomalies(run, CAM) == {"out_of_order": 3}
    assert anomalies(run, LIDAR) == {"out_of_order": 3}
    for k in (6, 16, 26):
        ek = next(e for e in run.emissions if e.frame.messages[LIDAR].seq == k)
        ek1 = next(e for e in run.emissions if e.frame.messages[LIDAR].seq == k + 1)
        assert ek.now_ns == T0 + (k + 1) * P + 31 * MS  # complete as soon as its LiDAR showed up
        assert ek1.now_ns == T0 + (k + 1) * P + 40 * MS  # then the newer frame, when its radar came
    # The reordered sweeps themselves came ~100 ms late, so only the per-frame bound applies.
    assert_frame_latency_within_timeout(run)
    assert_everything_accounted(run)


def test_out_of_order_lidar_never_holds_a_newer_frame_past_its_deadline():
    events = rig_timeline(20, skip=lambda s, k: s == CAM and k == 8)
    find(events, LIDAR, 8).arrival_ns = T0 + 9 * P + 70 * MS  # sweep 8 turns up after 9, camera-less,
    find(events, RADAR, 9).arrival_ns = T0 + 9 * P + 75 * MS  # while frame 9 still waits for its radar
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    assert stamps(run.frames) == [T0 + k * P for k in range(1, 21)]
    e8, e9 = (next(e for e in run.emissions if e.frame.messages[LIDAR].seq == k) for k in (8, 9))
    assert e8.frame.missing == frozenset({CAM}) and not e9.frame.partial
    # Frame 9 is complete at +75 ms but must leave after frame 8; frame 8 inherits frame 9's deadline
    # (its LiDAR arrival + 50 ms), so frame 9 is not held until frame 8's own arrival + 50 ms.
    assert e8.now_ns == e9.now_ns == run.ref_arrival[id(e9.frame.messages[LIDAR])] + TIMEOUT
    assert_frame_latency_within_timeout(run)
    assert_everything_accounted(run)


def _clock_jump_run(step_ns: int) -> Run:
    # The rig's clock steps by step_ns at true time T0 + 1.55 s (between frames 15 and 16); the host's
    # monotonic clock (now_ns) does not.
    jump_at = T0 + 1550 * MS
    return drive(rig_timeline(30, clock=lambda t: step_ns if t >= jump_at else 0))


@pytest.mark.parametrize("step_ns", [-1 * S, 5 * S], ids=["backward_1s", "forward_5s"])
def test_clock_jump_reanchors_without_partial_frames(step_ns):
    run = _clock_jump_run(step_ns)
    frames = run.frames
    assert stamps(frames) == [T0 + k * P for k in range(1, 16)] + [T0 + k * P + step_ns for k in range(16, 31)]
    assert [f.seq for f in frames] == list(range(30))
    # Sensors that stepped before the LiDAR were held and joined the first frame after the re-anchor.
    assert not any(f.partial for f in frames)
    for sensor in ALL:
        assert run.row(sensor).clock_jump == 1, sensor
    first_new = frames[15]
    assert [s.stamp_ns for s in first_new.imu] == [T0 + t * MS + step_ns for t in range(1550, 1601, 10)]
    assert [c.stamp_ns for c in first_new.audio] == [T0 + t * MS + step_ns for t in (1560, 1580, 1600)]
    assert [s.stamp_ns for s in first_new.speed] == [T0 + t * MS + step_ns for t in (1550, 1600)]
    # Old-clock samples still queued after frame 15 cannot join a new-clock frame: dropped, and counted.
    assert anomalies(run, IMU) == {"clock_jump": 1, "off_timeline": 8, "dropped": 4}
    assert anomalies(run, MIC) == {"clock_jump": 1, "off_timeline": 3, "dropped": 2}
    assert anomalies(run, SPEED) == {"clock_jump": 1, "off_timeline": 2}
    assert anomalies(run, CAM) == {"clock_jump": 1, "off_timeline": 1}
    assert anomalies(run, RADAR) == {"clock_jump": 1, "off_timeline": 1}
    assert anomalies(run, LIDAR) == {"clock_jump": 1}
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_single_camera_clock_jump_leaves_that_camera_missing_but_output_flowing():
    jump_at = T0 + 1550 * MS
    events = rig_timeline(30)
    events = [Ev(e.arrival_ns, dataclasses.replace(e.msg, stamp_ns=e.msg.stamp_ns - 1 * S))
              if e.msg.sensor_id == CAM and e.msg.stamp_ns >= jump_at else e for e in events]
    run = drive(events)
    frames = run.frames
    assert stamps(frames) == [T0 + k * P for k in range(1, 31)]  # the reference timeline is untouched
    assert [f.messages[LIDAR].seq for f in frames if f.partial] == list(range(16, 31))
    cam = run.row(CAM)
    assert (cam.clock_jump, cam.off_timeline, cam.missing) == (1, 15, 15)
    assert cam.dropped == 15  # 11 pushed out of the 4-deep hold, the last 4 at flush
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_single_corrupted_lidar_stamp_costs_one_bogus_frame_and_output_continues():
    events = rig_timeline(30)
    bad = find(events, LIDAR, 15)
    bad.msg = dataclasses.replace(bad.msg, stamp_ns=bad.msg.stamp_ns + 1000 * S)
    run = drive(events)
    frames = run.frames
    assert stamps(frames) == ([T0 + k * P for k in range(1, 15)] + [T0 + 15 * P + 1000 * S]
                              + [T0 + k * P for k in range(16, 31)])
    bogus = frames[14]
    assert bogus.missing == frozenset({CAM, RADAR, IMU, SPEED, MIC})
    assert [f.seq for f in frames if f.partial] == [14]
    # It jumped forward, then back: two re-anchors; what was queued at the first one is dropped.
    assert run.row(LIDAR).clock_jump == 2
    assert (run.row(CAM).dropped, run.row(CAM).missing) == (1, 1)
    assert run.row(IMU).dropped == 12  # samples 14P+10 ms .. 15P+20 ms
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_camera_burst_at_three_times_its_rate_keeps_the_closest_message():
    events = rig_timeline(30)
    for k in range(10, 20):
        for d in (-8 * MS, 6 * MS):  # two extra exposures per frame, inside the 15 ms tolerance
            t = T0 + k * P + CAM_OFFSET + d
            events.append(Ev(t + DELAY[CAM], camera(t, 500 + k)))
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert len(frames) == 30 and not any(f.partial for f in frames)
    assert all(f.messages[CAM].stamp_ns == f.stamp_ns + CAM_OFFSET for f in frames)
    assert anomalies(run, CAM) == {"replaced": 20}
    assert run.row(CAM).delivered == 30
    assert_output_never_stops(run)
    assert_everything_accounted(run)


def test_network_stall_then_burst_delivers_the_backlog_in_stamp_order():
    stall_from, stall_to = T0 + 1000 * MS, T0 + 1300 * MS
    events = rig_timeline(30)
    for e in events:
        if stall_from <= e.arrival_ns < stall_to:
            e.arrival_ns = stall_to  # all arrive at once, in their original order (stable sort)
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    frames = run.frames
    assert stamps(frames) == [T0 + k * P for k in range(1, 31)] and not any(f.partial for f in frames)
    burst = [e.frame.messages[LIDAR].seq for e in run.emissions if e.now_ns == stall_to]
    assert burst == [10, 11, 12]
    for sensor in ALL:
        assert anomalies(run, sensor) == {}, sensor
    assert_frame_latency_within_timeout(run)  # no reference arrived during the stall
    assert_everything_accounted(run)


def test_queue_limits_bound_memory_while_the_lidar_is_silent():
    events = rig_timeline(30, skip=lambda s, k: s == LIDAR and 6 <= k <= 25)
    sync = Synchronizer(CONFIG)
    limits = {s.sensor_id: s.queue_limit for s in CONFIG.sensors}
    frames = []
    for e in events:
        frames += sync.push(e.msg, e.arrival_ns)
        report = sync.report()
        for sid, limit in limits.items():
            assert report.row(sid).queued <= limit, (sid, report.row(sid).queued)
        for r in report.sensors:  # mid-stream too, every message is queued or has a fate
            assert r.received == r.accounted, r
    frames += sync.poll(events[-1].arrival_ns + TIMEOUT)
    frames += sync.flush()
    assert [f.messages[LIDAR].seq for f in frames] == [k for k in range(1, 31) if not 6 <= k <= 25]
    assert not any(f.partial for f in frames)
    report = sync.report()
    # Cameras/radars 6..22 were pushed out of the 4-deep queue; 23..25 met no frame.
    for sid in (CAM, RADAR):
        assert (report.row(sid).dropped, report.row(sid).unmatched) == (17, 3)
    # The IMU kept its newest 64 samples; the first frame after the silence carries those up to its stamp.
    f26 = next(f for f in frames if f.messages[LIDAR].seq == 26)
    assert [s.stamp_ns for s in f26.imu] == list(range(T0 + 26 * P - 610 * MS, T0 + 26 * P + 1, IMU_PERIOD))
    assert report.row(IMU).dropped == 212 - 64
    assert report.row(LIDAR).largest_gap_ns == 21 * P
    for r in report.sensors:
        assert r.received == r.accounted, r


def test_open_frames_are_bounded_and_the_oldest_is_forced_out():
    sync = Synchronizer(CONFIG)
    now = T0
    frames = []
    for k in range(1, 11):  # ten sweeps delivered at once, nothing else
        frames += sync.push(lidar(T0 + k * P, k), now)
        assert sync.open_frames <= CONFIG.max_open_frames
    assert [f.messages[LIDAR].seq for f in frames] == [1, 2, 3, 4, 5, 6]
    assert sync.poll(now + TIMEOUT - 1) == []
    frames += sync.poll(now + TIMEOUT)
    assert [f.seq for f in frames] == list(range(10))
    assert all(f.missing == frozenset({CAM, RADAR, IMU, SPEED, MIC}) for f in frames)
    report = sync.report()
    assert (report.frames_emitted, report.frames_partial, report.frames_forced) == (10, 10, 6)
    assert all(report.row(s).missing == 10 for s in (CAM, RADAR, IMU, SPEED, MIC))


def test_imu_samples_and_audio_chunks_travel_with_the_right_frame():
    config = SyncConfig(reference=LIDAR, sensors=(
        SensorSyncConfig(IMU, 0, 0, 32, stream=True),
        SensorSyncConfig(SPEED, 0, 0, 32, stream=True),
        SensorSyncConfig(MIC, 0, 0, 32, stream=True),
    ), timeout_ns=TIMEOUT, max_open_frames=4, max_forward_jump_ns=2 * S, max_backward_jump_ns=500 * MS)
    ms = lambda v: T0 + v * MS  # noqa: E731
    msgs = [imu(ms(t), i) for i, t in enumerate((95, 100, 101, 150, 200, 250, 300))]
    msgs += [speed(ms(t), i) for i, t in enumerate((100, 200, 300))]
    msgs += [chunk(ms(t), i, duration_ns=40 * MS) for i, t in enumerate((60, 100, 140, 180, 220, 260, 300))]
    msgs += [lidar(ms(t), i) for i, t in enumerate((100, 200, 300))]
    msgs.sort(key=lambda m: (m.stamp_ns + (m.duration_ns if isinstance(m, AudioChunk) else 0), m.sensor_id))
    sync = Synchronizer(config)
    frames = []
    for m in msgs:
        frames += sync.push(m, m.stamp_ns + 40 * MS)  # every message 40 ms in transit
    frames += sync.flush()
    assert stamps(frames) == [ms(100), ms(200), ms(300)] and not any(f.partial for f in frames)
    rel = lambda seq: [(m.stamp_ns - T0) // MS for m in seq]  # noqa: E731
    # IMU and speed: (previous stamp, this stamp]; a sample exactly at a frame stamp belongs to that frame.
    assert [rel(f.imu) for f in frames] == [[95, 100], [101, 150, 200], [250, 300]]
    assert [rel(f.speed) for f in frames] == [[100], [200], [300]]
    # Audio: every chunk overlapping the span; [180, 220) straddles 200 ms and goes with both frames.
    assert [rel(f.audio) for f in frames] == [[60, 100], [100, 140, 180], [180, 220, 260, 300]]
    report = sync.report()
    assert report.row(MIC).delivered == 7  # each chunk counted once however many frames carry it
    for r in report.sensors:
        assert r.received == r.accounted, r


def _messy_events() -> list[Ev]:
    rng = np.random.default_rng(11)
    events = []
    for e in rig_timeline(40, clock=lambda t: -S if t >= T0 + 2550 * MS else 0,
                          skip=lambda s, k: s == RADAR and k % 5 == 2):
        arrival = e.arrival_ns + int(rng.integers(0, 4)) * MS
        if e.msg.sensor_id == CAM and rng.random() < 0.1:
            arrival += 120 * MS  # late
        events.append(Ev(arrival, e.msg))
        if rng.random() < 0.05:
            events.append(Ev(arrival + MS, dataclasses.replace(e.msg, seq=e.msg.seq + 1000)))  # duplicate
    events.sort(key=lambda e: e.arrival_ns)
    return events


def _signature(run: Run) -> list:
    return [(e.now_ns, f.seq, f.stamp_ns, sorted((s, m.stamp_ns, m.seq) for s, m in f.messages.items()),
             [(m.stamp_ns, m.seq) for m in f.imu], [(m.stamp_ns, m.seq) for m in f.speed],
             [(m.stamp_ns, m.seq) for m in f.audio], sorted(f.missing))
            for e in run.emissions for f in [e.frame]]


def test_replaying_the_same_input_twice_gives_identical_frames():
    first, second = drive(_messy_events()), drive(_messy_events())
    assert _signature(first) == _signature(second)
    assert first.sync.report().to_json_dict() == second.sync.report().to_json_dict()
    # The input is messy enough for the comparison to mean something.
    report = first.sync.report()
    assert report.frames_partial > 0
    assert report.row(CAM).late > 0 and report.row(LIDAR).clock_jump == 1
    assert sum(r.duplicate for r in report.sensors) > 0
    assert_frame_latency_within_timeout(first)
    assert_everything_accounted(first)


def test_now_stepping_back_keeps_every_wait_its_length():
    sync = Synchronizer(CONFIG)
    now = T0 + P + 30 * MS
    assert sync.push(lidar(T0 + P, 1), now) == []
    back = now - S  # the host clock was stepped back by one second
    assert sync.poll(back) == []
    assert sync.poll(back + TIMEOUT - 1) == []
    frames = sync.poll(back + TIMEOUT)
    assert len(frames) == 1 and frames[0].partial
    assert sync.report().clock_steps_back == 1


def test_sensor_missing_from_the_config_is_counted_as_ignored():
    events = rig_timeline(10)
    events += [Ev(e.arrival_ns, camera(e.msg.stamp_ns, e.msg.seq, sensor_id="cam_rear"))
               for e in list(events) if e.msg.sensor_id == CAM]
    events.sort(key=lambda e: e.arrival_ns)
    run = drive(events)
    assert len(run.frames) == 10 and not any(f.partial for f in run.frames)
    assert all("cam_rear" not in f.messages for f in run.frames)
    row = run.row("cam_rear")
    assert (row.role, row.received, row.ignored) == ("unconfigured", 10, 10)


def test_stream_sensor_sending_an_image_raises_a_clear_type_error():
    sync = Synchronizer(CONFIG)
    with pytest.raises(TypeError, match="'imu' is configured as a stream but sent CameraImage"):
        sync.push(camera(T0, 0, sensor_id=IMU), T0)
    with pytest.raises(TypeError, match="stamp_ns must be integer nanoseconds"):
        sync.push(camera(1.5, 0), T0)  # type: ignore[arg-type]


def test_sync_config_loads_from_yaml_and_names_bad_keys(tmp_path: Path):
    good = tmp_path / "sync.yaml"
    good.write_text(
        "reference: lidar_top\ntimeout_ns: 50000000\nmax_open_frames: 4\n"
        "max_forward_jump_ns: 2000000000\nmax_backward_jump_ns: 500000000\nsensors:\n"
        "  - {sensor_id: cam_front, offset_ns: -20000000, tolerance_ns: 15000000, queue_limit: 4}\n"
        "  - {sensor_id: imu, offset_ns: 0, tolerance_ns: 0, queue_limit: 64, stream: true}\n")
    cfg = SyncConfig.load(good)
    assert cfg.reference == LIDAR and cfg.timeout_ns == TIMEOUT
    assert cfg.sensor(CAM) == SensorSyncConfig(CAM, -20 * MS, 15 * MS, 4)
    assert cfg.sensor(IMU).stream
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("tolerance_ns: 15000000", "tolerance: 15000000"))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'tolerance'"):
        SyncConfig.load(bad)
    ref_listed = tmp_path / "ref.yaml"
    ref_listed.write_text(good.read_text().replace("sensor_id: imu", "sensor_id: lidar_top"))
    with pytest.raises(ConfigError, match="reference 'lidar_top' must not be listed"):
        SyncConfig.load(ref_listed)


def _euroc(realdata: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EuRoC V1_01 stamps [ns]: cam0 (95), cam1 (99), IMU (29,120), and the IMU's gyro+accel rows (N, 6)."""
    root = realdata / "euroc_v101_imu_cam" / "mav0"

    def column0(path: Path) -> np.ndarray:
        return np.loadtxt(path, delimiter=",", usecols=0, dtype=np.int64, comments="#")

    imu_rows = np.loadtxt(root / "imu0" / "data.csv", delimiter=",", comments="#", usecols=range(1, 7))
    return (column0(root / "cam0" / "data.csv"), column0(root / "cam1" / "data.csv"),
            column0(root / "imu0" / "data.csv"), imu_rows)


def test_euroc_stereo_and_imu_stamps_form_complete_frames(realdata: Path):
    """Real VI-Sensor stamps (EuRoC V1_01): cam0 as reference, cam1 matched, the 200 Hz IMU as a stream."""
    cam0, cam1, imu_t, rows = _euroc(realdata)
    imu_t = imu_t[imu_t <= cam1[-1]]
    config = SyncConfig(reference="cam0", sensors=(
        SensorSyncConfig("cam1", 0, 5 * MS, 4),
        SensorSyncConfig("imu0", 0, 0, 256, stream=True),
    ), timeout_ns=30 * MS, max_open_frames=4, max_forward_jump_ns=2 * S, max_backward_jump_ns=500 * MS)
    events = [Ev(int(t) + 10 * MS, camera(int(t), i, sensor_id="cam0")) for i, t in enumerate(cam0)]
    events += [Ev(int(t) + 10 * MS, camera(int(t), i, sensor_id="cam1")) for i, t in enumerate(cam1)]
    events += [Ev(int(t) + 1 * MS, ImuSample("imu0", int(t), i, rows[i, 0:3].copy(), rows[i, 3:6].copy()))
               for i, t in enumerate(imu_t)]
    events.sort(key=lambda e: e.arrival_ns)
    sync = Synchronizer(config)
    frames = []
    for e in events:
        frames += sync.push(e.msg, e.arrival_ns)
    frames += sync.flush()
    assert stamps(frames) == cam0.tolist() and not any(f.partial for f in frames)
    assert all(f.messages["cam1"].stamp_ns == f.stamp_ns for f in frames)
    counts = [len(f.imu) for f in frames]
    assert counts[0] == 1 and set(counts[1:]) <= {9, 10, 11} and sum(counts) == int((imu_t <= cam0[-1]).sum())
    assert np.mean(counts[1:]) == pytest.approx(10.0, abs=0.05)
    assert np.linalg.norm(frames[10].imu[0].linear_acceleration) == pytest.approx(9.8, abs=0.5)
    report = sync.report()
    assert report.row("cam0").rate_hz == pytest.approx(20.0, rel=1e-3)
    assert report.row("imu0").rate_hz == pytest.approx(200.0, rel=1e-3)
    assert report.row("cam1").unmatched == len(cam1) - len(cam0)  # cam1 recorded 4 frames more
    for r in report.sensors:
        assert r.received == r.accounted, r


def test_health_table_of_a_run_shows_the_missing_camera():
    run = drive(rig_timeline(10, skip=lambda s, k: s == CAM and k in (4, 7)))
    report = run.sync.report()
    table = report.format_table()
    cam_line = next(line for line in table.splitlines() if line.startswith(CAM))
    assert cam_line.split()[-1] == "2"  # the missing column is last
    assert json.loads(json.dumps(report.to_json_dict()))["sensors"][1]["missing"] == 2


# ------------------------------------------------------------------------------------------ offline


def _greedy_nearest(ref: list[int], other: list[int], max_interval: int) -> list[tuple[int, int]]:
    """What a naive matcher does: each reference message takes the nearest unused other message."""
    used, out = set(), []
    for r in ref:
        free = [o for o in other if o not in used and abs(o - r) <= max_interval]
        if free:
            o = min(free, key=lambda o: abs(o - r))
            used.add(o)
            out.append((r, o))
    return out


def _sets_as_stamps(sets) -> list[dict[str, int]]:
    return [{sid: m.stamp_ns for sid, m in s.messages.items()} for s in sets]


def test_approximate_time_beats_greedy_nearest_neighbour():
    a, b = [0, 10 * MS], [6 * MS]
    greedy = _greedy_nearest(a, b, 20 * MS)
    assert greedy == [(0, 6 * MS)]  # spread 6 ms, and the sweep at 10 ms is left without a partner
    sets = approximate_time_sets({"a": [camera(t, i, "a") for i, t in enumerate(a)],
                                  "b": [camera(t, i, "b") for i, t in enumerate(b)]}, 20 * MS)
    assert _sets_as_stamps(sets) == [{"a": 10 * MS, "b": 6 * MS}]
    assert sets[0].spread_ns == 4 * MS < greedy[0][1] - greedy[0][0]


def test_approximate_time_three_sensors_picks_the_smallest_spread_for_the_pivot():
    data = {"a": [0, 10, 20], "b": [4, 13], "c": [9, 21]}
    msgs = {s: [camera(t * MS, i, s) for i, t in enumerate(ts)] for s, ts in data.items()}
    sets = approximate_time_sets(msgs, 100 * MS)
    # Candidates for the pivot c=9: {0,4,9} spread 9, {10,4,9} spread 6, {10,13,9} spread 4 -> the last.
    assert _sets_as_stamps(sets) == [{"a": 10 * MS, "b": 13 * MS, "c": 9 * MS}]
    # Greedy on a: a=0 takes b=4, c=9 (spread 9); a=10 takes b=13, c=21 (spread 11). Both worse.
    assert sets[0].spread_ns == 4 * MS


def test_approximate_time_regular_streams_give_one_set_per_period_and_honour_max_interval():
    data = {"a": [0, 100, 200, 300], "b": [5, 98, 210, 290], "c": [2, 103, 199, 330]}
    msgs = {s: [camera(t * MS, i, s) for i, t in enumerate(ts)] for s, ts in data.items()}
    expected = [{"a": 0, "b": 5, "c": 2}, {"a": 100, "b": 98, "c": 103}, {"a": 200, "b": 210, "c": 199},
                {"a": 300, "b": 290, "c": 330}]
    as_ms = lambda sets: [{s: v // MS for s, v in d.items()} for d in _sets_as_stamps(sets)]  # noqa: E731
    assert as_ms(approximate_time_sets(msgs, 50 * MS)) == expected
    assert as_ms(approximate_time_sets(msgs, 30 * MS)) == expected[:3]  # the last set spans 40 ms
    # Input order does not matter: shuffled lists and mapping order give the same sets.
    shuffled = {s: list(reversed(msgs[s])) for s in ("c", "a", "b")}
    assert as_ms(approximate_time_sets(shuffled, 50 * MS)) == expected


def test_approximate_time_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no sensors"):
        approximate_time_sets({}, 0)
    with pytest.raises(ValueError, match="max_interval_ns"):
        approximate_time_sets({"a": [camera(0, 0, "a")]}, -1)


def test_approximate_time_on_euroc_stereo_and_imu_pairs_identical_stamps(realdata: Path):
    cam0, cam1, imu_t, _ = _euroc(realdata)
    imu_t = imu_t[imu_t <= cam1[-1] + 10 * MS]
    sets = approximate_time_sets({
        "cam0": [camera(int(t), i, "cam0") for i, t in enumerate(cam0)],
        "cam1": [camera(int(t), i, "cam1") for i, t in enumerate(cam1)],
        "imu0": [ImuSample("imu0", int(t), i, np.zeros(3), np.zeros(3)) for i, t in enumerate(imu_t)],
    }, 3 * MS)
    assert len(sets) == len(cam0)  # cam1's 4 extra frames at the end have no cam0 partner
    assert all(s.messages["cam0"].stamp_ns == s.messages["cam1"].stamp_ns for s in sets)
    # The 200 Hz IMU has a sample within a microsecond of every camera stamp.
    assert max(s.spread_ns for s in sets) < 1_000


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 200), min_size=1, max_size=10, unique=True), min_size=2, max_size=4),
       st.integers(0, 60), st.randoms(use_true_random=False))
def test_approximate_time_sets_use_each_message_once_in_order_whatever_the_input_order(stamp_lists, max_interval, rnd):
    msgs = {f"s{i}": [camera(t, j, f"s{i}") for j, t in enumerate(ts)] for i, ts in enumerate(stamp_lists)}
    sets = approximate_time_sets(msgs, max_interval)
    used = [id(m) for s in sets for m in s.messages.values()]
    assert len(used) == len(set(used)), "a message was used twice"
    for s in sets:
        assert set(s.messages) == set(msgs)
        assert s.spread_ns <= max_interval
        ts = [m.stamp_ns for m in s.messages.values()]
        assert (s.start_ns, s.end_ns) == (min(ts), max(ts))
    for prev, nxt in zip(sets, sets[1:]):
        # Sets do not cross: every sensor moves strictly forward.
        assert all(prev.messages[k].stamp_ns < nxt.messages[k].stamp_ns for k in msgs)
    # Deterministic whatever the input order.
    shuffled = {}
    for k in rnd.sample(sorted(msgs), len(msgs)):
        lst = list(msgs[k])
        rnd.shuffle(lst)
        shuffled[k] = lst
    again = approximate_time_sets(shuffled, max_interval)
    assert [[id(m) for m in s.messages.values()] for s in again] == [[id(m) for m in s.messages.values()] for s in sets]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 200), min_size=1, max_size=10, unique=True), min_size=2, max_size=4))
def test_approximate_time_sets_without_a_spread_limit_are_contiguous(stamp_lists):
    msgs = {f"s{i}": [camera(t, j, f"s{i}") for j, t in enumerate(ts)] for i, ts in enumerate(stamp_lists)}
    sets = approximate_time_sets(msgs, 10**9)
    assert sets, "with no spread limit there is always at least one set"
    for prev, nxt in zip(sets, sets[1:]):
        # Some sensor skipped no message between two consecutive sets: no set could be formed in between.
        skipped = {k: sum(prev.messages[k].stamp_ns < m.stamp_ns < nxt.messages[k].stamp_ns for m in msgs[k])
                   for k in msgs}
        assert min(skipped.values()) == 0, skipped
