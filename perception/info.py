"""``perception info``: what is in a recording, read without running perception.

Per sensor: message type, count, time span, rate, largest gap, gaps (periods over 1.5x the median),
clock jumps (a stamp earlier than the previous one, or a step forward over max(1 s, 20 median periods)).
Only message headers are parsed (no image or point decoding), so it is fast on long drives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GAP_FACTOR = 1.5
JUMP_FACTOR = 20.0
JUMP_MIN_NS = 1_000_000_000


@dataclass(frozen=True)
class SensorStats:
    """Timing statistics of one sensor's stamps.

    Args:
        sensor_id: sensor (or ``ground_truth``); topic, schema_name: its main channel.
        count: messages; first_ns, last_ns: stamps [ns] (reference clock as recorded).
        rate_hz: (count - 1) / span; median_period_ms, max_gap_ms: [ms] between consecutive stamps.
        gaps: periods longer than 1.5x the median; backward_jumps / forward_jumps: clock jumps.
    """

    sensor_id: str
    topic: str
    schema_name: str
    count: int
    first_ns: int
    last_ns: int
    rate_hz: float
    median_period_ms: float
    max_gap_ms: float
    gaps: int
    backward_jumps: int
    forward_jumps: int


def stamp_stats(sensor_id: str, topic: str, schema_name: str, stamps_ns: np.ndarray) -> SensorStats:
    """Statistics of one sensor's stamps in arrival order. ``stamps_ns``: (N,) int64 [ns]."""
    s = np.asarray(stamps_ns, dtype=np.int64)
    if len(s) < 2:
        first = int(s[0]) if len(s) else 0
        return SensorStats(sensor_id, topic, schema_name, len(s), first, first, 0.0, 0.0, 0.0, 0, 0, 0)
    d = np.diff(s)
    forward = d[d > 0]
    median = float(np.median(forward)) if len(forward) else 0.0
    jump_bound = max(JUMP_MIN_NS, JUMP_FACTOR * median)
    span = int(s.max() - s.min())
    return SensorStats(
        sensor_id=sensor_id,
        topic=topic,
        schema_name=schema_name,
        count=len(s),
        first_ns=int(s[0]),
        last_ns=int(s[-1]),
        rate_hz=(len(s) - 1) / (span / 1e9) if span > 0 else 0.0,
        median_period_ms=median / 1e6,
        max_gap_ms=float(d.max()) / 1e6,
        gaps=int(np.sum((d > GAP_FACTOR * median) & (d <= jump_bound))) if median > 0 else 0,
        backward_jumps=int(np.sum(d < 0)),
        forward_jumps=int(np.sum(d > jump_bound)),
    )


@dataclass
class RecordingInfo:
    """Everything ``perception info`` prints about one recording."""

    path: Path
    size_bytes: int
    metadata: dict[str, str]
    rig_name: str | None
    rig_sensors: list[str]
    sensors: list[SensorStats]
    errors: list[str] = field(default_factory=list)

    def format(self) -> str:
        """A human-readable report (several lines)."""
        lines = [f"recording  {self.path}  ({self.size_bytes / 1e6:.1f} MB)"]
        if self.metadata:
            lines.append("metadata   " + ", ".join(f"{k}={v}" for k, v in sorted(self.metadata.items())))
        if self.rig_name is not None:
            lines.append(f"rig        {self.rig_name}: {', '.join(self.rig_sensors)}")
        else:
            lines.append("rig        (no rig.yaml attachment)")
        if self.sensors:
            t0 = min(s.first_ns for s in self.sensors)
            t1 = max(s.last_ns for s in self.sensors)
            lines.append(f"time span  {(t1 - t0) / 1e9:.3f} s  ({t0} .. {t1} ns)")
        header = f"{'sensor':<16}{'type':<40}{'count':>7}{'rate Hz':>9}{'period ms':>11}{'max gap ms':>12}" \
                 f"{'gaps':>6}{'jumps -/+':>11}"
        lines += ["", header, "-" * len(header)]
        for s in self.sensors:
            lines.append(
                f"{s.sensor_id:<16}{s.schema_name:<40}{s.count:>7}{s.rate_hz:>9.2f}{s.median_period_ms:>11.2f}"
                f"{s.max_gap_ms:>12.2f}{s.gaps:>6}{f'{s.backward_jumps}/{s.forward_jumps}':>11}"
            )
        for e in self.errors:
            lines.append(f"ERROR: {e}")
        return "\n".join(lines)


def bag_info(path: Path, topics_path: Path) -> RecordingInfo:
    """Like :func:`recording_info` for a foreign ROS 1 / ROS 2 bag read through a topic->sensor map."""
    from drivers.bags import BagTopicMap, open_bag

    tmap = BagTopicMap.load(topics_path)
    by_sensor = {t.sensor_id: t.topic for t in tmap.topics}
    stamps: dict[str, list[int]] = {}
    kinds: dict[str, str] = {}
    for msg in open_bag(path, tmap):
        stamps.setdefault(msg.sensor_id, []).append(msg.stamp_ns)
        kinds[msg.sensor_id] = type(msg).__name__
    rig = tmap.load_rig()
    stats = [stamp_stats(sid, by_sensor.get(sid, "?"), kinds[sid], np.asarray(v)) for sid, v in sorted(stamps.items())]
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return RecordingInfo(path, size, {}, rig.name if rig else None, rig.ids() if rig else [], stats)


def recording_info(path: Path) -> RecordingInfo:
    """Read ``path`` (an .mcap recording) and compute :class:`RecordingInfo`.

    A recording that breaks part-way (truncated, corrupted) still gets its statistics up to the break, and
    the break is listed in ``errors``.
    """
    from drivers.recording import RecordingError, RecordingReader

    if not path.exists():
        raise FileNotFoundError(f"no such recording: {path}")
    errors: list[str] = []
    with RecordingReader(path) as reader:
        channels = {c.sensor_id: c for c in reader.channels() if c.primary}
        stamps: dict[str, list[int]] = {}
        try:
            for sensor_id, stamp_ns, _log_ns in reader.stamps():
                stamps.setdefault(sensor_id, []).append(stamp_ns)
        except RecordingError as e:
            errors.append(str(e))
        rig = reader.rig
        metadata = dict(reader.metadata)
    stats = [
        stamp_stats(sid, channels[sid].topic if sid in channels else "?",
                    channels[sid].schema_name if sid in channels else "?", np.asarray(v))
        for sid, v in sorted(stamps.items())
    ]
    return RecordingInfo(path, path.stat().st_size, metadata, rig.name if rig else None,
                         rig.ids() if rig else [], stats, errors)


@dataclass(frozen=True)
class OffsetStats:
    """Observed stamp offset of one matched sensor relative to the frame stamp [ms]."""

    sensor_id: str
    matched: int
    missing: int
    median_ms: float
    p05_ms: float
    p95_ms: float


@dataclass
class SyncView:
    """How a recording's messages would be formed into frames by a sync config."""

    frames: int
    complete: int
    partial: int
    offsets: list[OffsetStats]
    health_table: str
    errors: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = ["", f"sync       {self.frames} frames: {self.complete} complete, {self.partial} partial", ""]
        header = f"{'sensor':<16}{'matched':>8}{'missing':>8}{'offset p05 ms':>15}{'median ms':>11}{'p95 ms':>9}"
        lines += [header, "-" * len(header)]
        for o in self.offsets:
            lines.append(f"{o.sensor_id:<16}{o.matched:>8}{o.missing:>8}{o.p05_ms:>15.1f}{o.median_ms:>11.1f}"
                         f"{o.p95_ms:>9.1f}")
        lines += ["", self.health_table]
        lines += [f"ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def sync_view(path: Path, config_path: Path) -> SyncView:
    """Replay ``path`` through a :class:`perception.sync.Synchronizer` built from ``config_path``, with
    ``now_ns`` = each message's recorded stamp, and summarise the frames (complete vs partial, per-sensor
    observed offsets) so a user can see and tune the sync config."""
    from drivers.recording import RecordingError, RecordingReader
    from perception.sync import SyncConfig, Synchronizer

    config = SyncConfig.load(config_path)
    sync = Synchronizer(config)
    frames = []
    errors: list[str] = []
    now = 0
    with RecordingReader(path) as reader:
        try:
            for msg in reader.messages():
                if msg.sensor_id != config.reference and all(s.sensor_id != msg.sensor_id for s in config.sensors):
                    continue
                now = max(now, msg.stamp_ns)
                frames += sync.poll(now)
                frames += sync.push(msg, now)
        except RecordingError as e:
            errors.append(str(e))
    frames += sync.flush()
    matched_ids = [s.sensor_id for s in config.sensors if not s.stream]
    offsets = []
    for sid in matched_ids:
        d = np.array([(f.messages[sid].stamp_ns - f.stamp_ns) / 1e6 for f in frames if sid in f.messages])
        n_missing = sum(1 for f in frames if sid in f.missing)
        if len(d):
            offsets.append(OffsetStats(sid, len(d), n_missing, float(np.median(d)), float(np.percentile(d, 5)),
                                       float(np.percentile(d, 95))))
        else:
            offsets.append(OffsetStats(sid, 0, n_missing, float("nan"), float("nan"), float("nan")))
    partial = sum(1 for f in frames if f.partial)
    return SyncView(len(frames), len(frames) - partial, partial, offsets,
                    sync.report(now).format_table(), errors)
