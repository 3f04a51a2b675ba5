"""Stage timer, latency log, latency.json and the summary table."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from perception.timing import (
    FrameCounts,
    FrameTiming,
    LatencyFileError,
    LatencyLog,
    LatencyStats,
    StageTimer,
    format_summary_table,
)


def run_frame(timer: StageTimer, stamp_ns: int, sleep_s: float = 0.0) -> None:
    """What Pipeline.__call__ does: one lap per stage."""
    lap = timer.start(stamp_ns)
    sum(range(100))
    lap("sync")
    if sleep_s:
        time.sleep(sleep_s)
    lap("align")
    lap("backbones")


def sample_log() -> LatencyLog:
    """100 emitted frames with end-to-end 1..100 ms and two stages, 3 partial, 2 dropped, deadline 90 ms."""
    log = LatencyLog(deadline_ms=90.0)
    for i in range(100):
        log.add(FrameTiming(1_000 + i, (("align", 0.5 + i / 100), ("model", 10.0 + i)), float(i + 1)),
                partial=i in (3, 50, 70))
    log.add_dropped(2)
    return log


# ---------------------------------------------------------------------------------------------- StageTimer
def test_disabled_timer_records_nothing():
    timer = StageTimer(enabled=False)
    lap = timer.start(123)
    assert timer.start(456) is lap  # one shared no-op, nothing allocated per frame
    run_frame(timer, 789)
    assert lap("anything") is None
    assert timer.last is None
    assert not timer.enabled


def test_enabled_timer_records_stages_in_run_order():
    timer = StageTimer(enabled=True)
    t0 = time.perf_counter_ns()
    run_frame(timer, 42, sleep_s=0.002)
    wall_ms = (time.perf_counter_ns() - t0) / 1e6
    last = timer.last
    assert last is not None and last.stamp_ns == 42 and last.end_to_end_ms is None
    assert [name for name, _ in last.stages] == ["sync", "align", "backbones"]
    assert list(last.as_dict()) == ["sync", "align", "backbones"]
    assert all(ms >= 0 for _, ms in last.stages)
    assert last.as_dict()["align"] >= 2.0  # the lap spans the sleep, which lasts at least 2 ms
    assert last.stage_total_ms <= wall_ms  # laps partition time inside the measured span


def test_each_start_begins_a_new_frame():
    timer = StageTimer(enabled=True)
    run_frame(timer, 1)
    lap = timer.start(2)
    lap("only")
    assert timer.last.stamp_ns == 2
    assert [n for n, _ in timer.last.stages] == ["only"]


def test_stage_timed_twice_in_one_frame_is_an_error():
    timer = StageTimer(enabled=True)
    lap = timer.start(1)
    lap("align")
    lap("align")
    with pytest.raises(ValueError, match="'align' timed twice"):
        _ = timer.last


def test_emitted_at_sets_end_to_end_from_the_frame_stamp():
    t = FrameTiming(1_000_000_000, (("a", 1.0),)).emitted_at(1_045_500_000)
    assert t.end_to_end_ms == pytest.approx(45.5)


# ---------------------------------------------------------------------------------------------- LatencyLog
def test_percentiles_match_numpy_linear_and_hand_values():
    s = sample_log().summary()
    e2e = np.arange(1, 101, dtype=float)
    # numpy's default ("linear") definition; by hand for 1..100: rank q/100 * 99 from the first sample.
    assert (s.end_to_end.p50, s.end_to_end.p95, s.end_to_end.p99) == pytest.approx((50.5, 95.05, 99.01))
    assert s.end_to_end.p95 == pytest.approx(np.percentile(e2e, 95))
    assert s.end_to_end.max == 100.0 and s.end_to_end.mean == pytest.approx(50.5) and s.end_to_end.count == 100
    model = 10.0 + np.arange(100)
    assert s.stage("model").p99 == pytest.approx(np.percentile(model, 99))
    assert [n for n, _ in s.stages] == ["align", "model"]


def test_counts_include_partial_dropped_and_deadline_missed():
    c = sample_log().counts
    # end-to-end 91..100 ms exceed the 90 ms deadline
    assert c == FrameCounts(total=102, emitted=100, partial=3, dropped=2, deadline_missed=10)


def test_frame_without_end_to_end_is_left_out_of_that_statistic_only():
    log = LatencyLog()
    log.add(FrameTiming(1, (("a", 2.0),), None))
    log.add(FrameTiming(2, (("a", 4.0),), 30.0))
    s = log.summary()
    assert s.end_to_end.count == 1 and s.stage("a").count == 2
    assert LatencyLog().summary().end_to_end is None


def test_inconsistent_frame_counts_are_rejected():
    with pytest.raises(ValueError, match="emitted .* dropped .* total"):
        FrameCounts(total=5, emitted=3, dropped=1)
    with pytest.raises(ValueError, match="partial"):
        FrameCounts(total=2, emitted=2, partial=3)


def test_merged_logs_pool_frames_and_sum_counts():
    a, b = sample_log(), LatencyLog(deadline_ms=90.0)
    b.add(FrameTiming(5, (("align", 1.0),), 500.0))
    m = LatencyLog.merged([a, b])
    assert m.counts.total == 103 and m.counts.deadline_missed == 11
    assert m.summary().end_to_end.p50 == pytest.approx(np.percentile(np.r_[np.arange(1, 101), 500.0], 50))
    assert m.deadline_ms == 90.0
    assert LatencyLog.merged([a, LatencyLog(50.0)]).deadline_ms is None


# ---------------------------------------------------------------------------------------------- latency.json
def test_latency_json_round_trip(tmp_path):
    log = sample_log()
    path = log.write(tmp_path)
    assert path == tmp_path / "latency.json"
    obj = json.loads(path.read_text())
    assert obj["deadline_ms"] == 90.0
    assert obj["frames"] == {"total": 102, "emitted": 100, "partial": 3, "dropped": 2, "deadline_missed": 10}
    assert obj["summary"]["end_to_end"]["p50"] == pytest.approx(50.5)
    assert list(obj["summary"]["stages"]) == ["align", "model"]
    assert obj["per_frame"][0] == {"stamp_ns": 1000, "end_to_end_ms": 1.0, "stages": {"align": 0.5, "model": 10.0}}
    back = LatencyLog.read(path)
    assert back.frames == log.frames
    assert back.counts == log.counts and back.deadline_ms == 90.0
    assert back.summary() == log.summary()


@pytest.mark.parametrize("edit, key", [
    (lambda o: o.pop("frames"), "frames: missing key"),
    (lambda o: o["frames"].pop("dropped"), "frames.dropped: missing key"),
    (lambda o: o["frames"].update(partial=-1), "frames.partial: expected an integer >= 0"),
    (lambda o: o["per_frame"][1]["stages"].update(model="fast"), r"per_frame\[1\].stages.model: expected a finite"),
    (lambda o: o["per_frame"][2].pop("stamp_ns"), r"per_frame\[2\].stamp_ns: missing key"),
    (lambda o: o["per_frame"].pop(), "per_frame: 99 entries, but frames.emitted is 100"),
    (lambda o: o.update(deadline_ms="soon"), "deadline_ms: expected a finite number or null"),
])
def test_malformed_latency_json_names_the_key(tmp_path, edit, key):
    path = sample_log().write(tmp_path / "latency.json")
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))
    with pytest.raises(LatencyFileError, match=key) as e:
        LatencyLog.read(path)
    assert str(path) in str(e.value)


def test_latency_json_that_is_not_json_is_an_error(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text("{\"frames\": ")
    with pytest.raises(LatencyFileError, match="not valid JSON"):
        LatencyLog.read(path)


# ---------------------------------------------------------------------------------------------- table
def test_summary_table_lists_stages_in_order_then_end_to_end_and_counts():
    text = format_summary_table(sample_log())
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["stage", "count", "p50", "p95", "p99", "max"]
    rows = [ln.split() for ln in lines[2:-1]]
    assert [r[0] for r in rows] == ["align", "model", "end-to-end"]
    assert rows[2][1:] == ["100", "50.50", "95.05", "99.01", "100.00"]
    assert lines[-1] == ("frames: total 102, emitted 100, partial 3, dropped 2, deadline missed 10 "
                         "(deadline 90 ms)")
    widths = {len(ln) for ln in lines[2:-1]}
    assert len(widths) == 1  # aligned columns


def test_stats_of_nothing_is_none():
    assert LatencyStats.of([]) is None
