"""SensorHealth: rates and gaps from stamps, ages from the caller's clock, counters, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perception.health import Event, HealthReport, Role, SensorHealth

MS = 1_000_000
S = 1_000 * MS


def test_real_euroc_imu_stamps_give_200_hz_and_the_true_largest_gap(realdata: Path):
    path = realdata / "euroc_v101_imu_cam" / "mav0" / "imu0" / "data.csv"
    stamps = np.loadtxt(path, delimiter=",", usecols=0, dtype=np.int64, comments="#")
    health = SensorHealth([("imu0", Role.STREAM)])
    for t in stamps.tolist():
        health.observe("imu0", t, t + 1 * MS)
    row = health.report(int(stamps[-1]) + 26 * MS).row("imu0")
    assert row.received == len(stamps) == 29_120
    assert row.rate_hz == pytest.approx(200.0, rel=1e-4)
    assert row.largest_gap_ns == int(np.diff(stamps).max())  # 5.000192 ms in this log
    assert row.last_stamp_ns == int(stamps[-1])
    assert row.last_seen_age_ns == 25 * MS
    assert row.last_delay_ns == 1 * MS


def test_silence_shows_as_largest_gap_and_growing_age_while_rate_recovers():
    health = SensorHealth([("cam", Role.MATCHED)], rate_window_ns=1 * S)
    stamps = [k * 100 * MS for k in range(10)] + [k * 100 * MS for k in range(30, 45)]  # dead 2.1 s
    for t in stamps:
        health.observe("cam", t, t + 5 * MS)
    row = health.report(44 * 100 * MS + 5 * MS).row("cam")
    assert row.largest_gap_ns == 2100 * MS
    assert row.last_seen_age_ns == 0
    assert row.rate_hz == pytest.approx(10.0)  # the window holds only stamps after the silence
    assert health.report(44 * 100 * MS + 3 * S).row("cam").last_seen_age_ns == 3 * S - 5 * MS


def test_out_of_order_stamps_do_not_count_as_gaps_and_a_clock_jump_restarts_the_timeline():
    health = SensorHealth([("radar", Role.MATCHED)])
    for t in (0, 100, 200, 150, 300):  # 150 arrives out of order
        health.observe("radar", t * MS, t * MS)
    row = health.report(300 * MS).row("radar")
    assert row.largest_gap_ns == 100 * MS and row.received == 5 and row.last_stamp_ns == 300 * MS
    health.restart_timeline("radar")  # the sensor's clock stepped back by 10 s
    for t in (-9_700, -9_600):
        health.observe("radar", t * MS, (400 + t + 9_700) * MS)
    row = health.report(600 * MS).row("radar")
    assert row.largest_gap_ns == 100 * MS, "the jump itself must not show as a gap"
    assert row.last_stamp_ns == -9_600 * MS
    assert row.rate_hz == pytest.approx(10.0)


def test_counters_frames_and_queue_depths_land_in_the_report():
    health = SensorHealth([("lidar", Role.REFERENCE), ("cam", Role.MATCHED)])
    health.count("cam", Event.LATE)
    health.count("cam", Event.MISSING, 3)
    health.count("cam", Event.DELIVERED, 2)
    health.add_sensor("cam_rear", Role.UNCONFIGURED)
    health.count("cam_rear", Event.IGNORED)
    health.frame_emitted(partial=True, forced=False)
    health.frame_emitted(partial=True, forced=True)
    health.frame_emitted(partial=False, forced=False)
    health.clock_stepped_back()
    report = health.report(0, queued={"cam": 2}, open_frames=1)
    cam = report.row("cam")
    assert (cam.late, cam.missing, cam.delivered, cam.queued, cam.duplicate) == (1, 3, 2, 2, 0)
    assert cam.accounted == 1 + 2 + 2  # late + delivered + queued; missing is an event, not a fate
    assert report.row("cam_rear").role == "unconfigured" and report.row("cam_rear").ignored == 1
    assert (report.frames_emitted, report.frames_partial, report.frames_forced) == (3, 2, 1)
    assert (report.open_frames, report.clock_steps_back) == (1, 1)
    assert health.counter("cam", Event.MISSING) == 3


def test_report_is_frozen_json_ready_and_prints_as_a_table():
    health = SensorHealth([("lidar_top", Role.REFERENCE), ("cam_front", Role.MATCHED)])
    for k in range(11):
        health.observe("lidar_top", k * 100 * MS, k * 100 * MS + 30 * MS)
    health.count("cam_front", Event.MISSING, 11)
    report = health.report(1_100 * MS)
    assert isinstance(report, HealthReport)
    with pytest.raises(AttributeError):
        report.frames_emitted = 5  # type: ignore[misc]
    data = json.loads(json.dumps(report.to_json_dict()))
    assert data["now_ns"] == 1_100 * MS
    assert [r["sensor_id"] for r in data["sensors"]] == ["lidar_top", "cam_front"]
    assert data["sensors"][0]["rate_hz"] == pytest.approx(10.0)
    assert data["sensors"][1]["rate_hz"] is None and data["sensors"][1]["missing"] == 11
    lines = report.format_table().splitlines()
    assert len(lines) == 4  # totals, header, one line per sensor
    header = lines[1].split()
    assert header[:4] == ["sensor", "role", "msgs", "rate_hz"] and header[-1] == "missing"
    lidar = dict(zip(header, lines[2].split()))
    cam = dict(zip(header, lines[3].split()))
    assert (lidar["msgs"], lidar["rate_hz"], lidar["max_gap_ms"], lidar["age_ms"]) == ("11", "10.00", "100.0", "70.0")
    assert (cam["msgs"], cam["rate_hz"], cam["age_ms"], cam["missing"]) == ("0", "-", "-", "11")


def test_unknown_sensor_lookups_name_the_known_ones():
    health = SensorHealth([("lidar_top", Role.REFERENCE)])
    with pytest.raises(KeyError, match="'radar'.*lidar_top"):
        health.observe("radar", 0, 0)
    with pytest.raises(KeyError, match="no health row for sensor 'radar'.*lidar_top"):
        health.report(0).row("radar")
    with pytest.raises(ValueError, match="rate_window_ns"):
        SensorHealth(rate_window_ns=0)
