"""Sensor health: per-sensor message counts, rates, gaps, ages and anomaly counters.

The synchronizer (``perception/sync.py``) owns one :class:`SensorHealth` and updates it for every message
it receives and every frame it emits; ``report(now_ns)`` freezes the numbers into a :class:`HealthReport`
that the CLI prints (:meth:`HealthReport.format_table`) and writes next to a run's outputs
(:meth:`HealthReport.to_json_dict`).

Every message a sensor sends ends in exactly one *fate* counter -- ``delivered`` (handed out in a frame),
``late``, ``duplicate``, ``replaced``, ``dropped``, ``unmatched`` or ``ignored`` -- or is still ``queued``, so
``received == delivered + late + duplicate + replaced + dropped + unmatched + ignored + queued`` holds in
every report from ``Synchronizer.report()`` (which fills in ``queued``). ``out_of_order``, ``clock_jump`` and ``off_timeline`` are *events*
on a message that then still gets a fate; ``missing`` counts emitted frames that lacked the sensor.

Time is integer nanoseconds throughout (DESIGN section 3). Rates and gaps come from the sensor's own
stamps; ages and delays compare against the caller's ``now_ns``, never the wall clock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence


class Role(str, enum.Enum):
    """What a sensor is to the synchronizer."""

    REFERENCE = "reference"  # opens frames (the LiDAR)
    MATCHED = "matched"  # one message per frame, matched by stamp (cameras, radars)
    STREAM = "stream"  # every sample in the frame's span travels with it (IMU, speed, audio)
    UNCONFIGURED = "unconfigured"  # not in the sync config: counted and ignored


class Event(enum.Enum):
    """Counters kept per sensor. See the module docstring for fates versus events."""

    DELIVERED = "delivered"  # fate: handed out in an emitted frame
    LATE = "late"  # fate: its frame (or span) was already emitted
    DUPLICATE = "duplicate"  # fate: same sensor and stamp seen before
    REPLACED = "replaced"  # fate: another message of the sensor matched the same frame more closely
    DROPPED = "dropped"  # fate: discarded to keep memory bounded, or on a clock re-anchor
    UNMATCHED = "unmatched"  # fate: no frame within tolerance ever came for it
    IGNORED = "ignored"  # fate: the sensor is not in the sync config
    OUT_OF_ORDER = "out_of_order"  # event: stamp older than the newest one seen from the sensor
    CLOCK_JUMP = "clock_jump"  # event: the sensor's stamps stepped beyond the configured bounds
    OFF_TIMELINE = "off_timeline"  # event: stamp too far from the reference's clock when it arrived
    MISSING = "missing"  # per emitted frame that lacked this sensor


@dataclass(frozen=True)
class SensorHealthRow:
    """Health of one sensor at ``HealthReport.now_ns``.

    Args:
        sensor_id: the rig's sensor id.
        role: ``reference`` | ``matched`` | ``stream`` | ``unconfigured``.
        received: messages pushed for this sensor.
        rate_hz: message rate [Hz] from the stamps inside the last ``rate_window_ns`` of the sensor's
            timeline; None until two distinct stamps were seen.
        largest_gap_ns: largest step [ns] between consecutive newest stamps (out-of-order messages and
            clock jumps do not count as gaps); None until two stamps were seen.
        last_stamp_ns: newest stamp seen [ns], None if nothing arrived.
        last_seen_age_ns: ``now_ns`` minus the arrival ``now_ns`` of the latest message [ns].
        last_delay_ns: arrival ``now_ns`` minus ``stamp_ns`` of the latest message [ns] (transport delay
            when both are on one clock).
        queued: messages the synchronizer holds for this sensor right now.
        delivered .. missing: counters, see :class:`Event`.
    """

    sensor_id: str
    role: str
    received: int
    rate_hz: Optional[float]
    largest_gap_ns: Optional[int]
    last_stamp_ns: Optional[int]
    last_seen_age_ns: Optional[int]
    last_delay_ns: Optional[int]
    queued: int
    delivered: int
    late: int
    duplicate: int
    replaced: int
    dropped: int
    unmatched: int
    ignored: int
    out_of_order: int
    clock_jump: int
    off_timeline: int
    missing: int

    @property
    def accounted(self) -> int:
        """Messages with a fate or still queued; equals ``received`` when nothing was lost silently."""
        return (self.delivered + self.late + self.duplicate + self.replaced + self.dropped + self.unmatched
                + self.ignored + self.queued)


@dataclass(frozen=True)
class HealthReport:
    """A frozen snapshot of every sensor's health plus frame totals.

    Args:
        now_ns: the caller's clock when the snapshot was taken [ns].
        frames_emitted: frames the synchronizer handed out.
        frames_partial: of those, frames with at least one sensor missing.
        frames_forced: of the partial ones, frames emitted before their deadline because a bound was hit
            (open-frame limit), the reference clock jumped, or input ended.
        open_frames: frames waiting for sensors right now.
        clock_steps_back: times the caller's ``now_ns`` went backwards.
        sensors: one row per sensor, reference first, then in config order, then unconfigured ones.
    """

    now_ns: int
    frames_emitted: int
    frames_partial: int
    frames_forced: int
    open_frames: int
    clock_steps_back: int
    sensors: tuple[SensorHealthRow, ...]

    def row(self, sensor_id: str) -> SensorHealthRow:
        """The row of ``sensor_id``; KeyError naming the known sensors if there is none."""
        for r in self.sensors:
            if r.sensor_id == sensor_id:
                return r
        raise KeyError(f"no health row for sensor {sensor_id!r} (known: {[r.sensor_id for r in self.sensors]})")

    def to_json_dict(self) -> dict:
        """Plain JSON-serialisable dict: frame totals and a list of per-sensor rows (ns as ints)."""
        return {
            "now_ns": self.now_ns,
            "frames": {"emitted": self.frames_emitted, "partial": self.frames_partial,
                       "forced": self.frames_forced, "open": self.open_frames},
            "clock_steps_back": self.clock_steps_back,
            "sensors": [asdict(r) for r in self.sensors],
        }

    def format_table(self) -> str:
        """A fixed-width text table, one line per sensor, times in milliseconds; '-' where unknown."""

        def ms(v: Optional[int]) -> str:
            return "-" if v is None else f"{v / 1e6:.1f}"

        header = ("sensor", "role", "msgs", "rate_hz", "max_gap_ms", "age_ms", "delay_ms", "queued",
                  "delivered", "late", "dup", "replaced", "dropped", "unmatched", "ignored", "ooo", "jump",
                  "off_timeline", "missing")
        rows = [header]
        for r in self.sensors:
            rows.append((r.sensor_id, r.role, str(r.received), "-" if r.rate_hz is None else f"{r.rate_hz:.2f}",
                         ms(r.largest_gap_ns), ms(r.last_seen_age_ns), ms(r.last_delay_ns), str(r.queued),
                         str(r.delivered), str(r.late), str(r.duplicate), str(r.replaced), str(r.dropped),
                         str(r.unmatched), str(r.ignored), str(r.out_of_order), str(r.clock_jump),
                         str(r.off_timeline), str(r.missing)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            f"frames: {self.frames_emitted} emitted, {self.frames_partial} partial, {self.frames_forced} forced, "
            f"{self.open_frames} open"
        ]
        for row in rows:
            # Names left-aligned, numbers right-aligned so columns of counts line up.
            cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


class _Track:
    """Mutable per-sensor bookkeeping behind one :class:`SensorHealthRow`."""

    def __init__(self, role: Role):
        self.role = role
        self.received = 0
        self.counts = {e: 0 for e in Event}
        self.window: deque[int] = deque()  # newest stamps inside the rate window, ascending
        self.newest: Optional[int] = None
        self.largest_gap: Optional[int] = None
        self.last_arrival: Optional[int] = None
        self.last_delay: Optional[int] = None


class SensorHealth:
    """Mutable health tracker for a set of sensors; :meth:`report` freezes it into a :class:`HealthReport`.

    Args:
        sensors: (sensor_id, role) pairs in display order; more can be added with :meth:`add_sensor`.
        rate_window_ns: span of stamps [ns] the rate is measured over (default 1 s).
        max_window_samples: cap on stamps kept per sensor for the rate, so a flooding sensor cannot grow
            memory without bound (the rate then covers the newest ``max_window_samples`` stamps).
    """

    def __init__(self, sensors: Sequence[tuple[str, Role]] = (), rate_window_ns: int = 1_000_000_000,
                 max_window_samples: int = 4096):
        if rate_window_ns <= 0:
            raise ValueError(f"SensorHealth: rate_window_ns must be > 0, got {rate_window_ns}")
        if max_window_samples < 2:
            raise ValueError(f"SensorHealth: max_window_samples must be >= 2, got {max_window_samples}")
        self.rate_window_ns = int(rate_window_ns)
        self.max_window_samples = int(max_window_samples)
        self._tracks: dict[str, _Track] = {}
        self.frames_emitted = 0
        self.frames_partial = 0
        self.frames_forced = 0
        self.clock_steps_back = 0
        for sensor_id, role in sensors:
            self.add_sensor(sensor_id, role)

    def add_sensor(self, sensor_id: str, role: Role) -> None:
        """Start tracking ``sensor_id`` (no-op if it is already tracked)."""
        if sensor_id not in self._tracks:
            self._tracks[sensor_id] = _Track(Role(role))

    def has_sensor(self, sensor_id: str) -> bool:
        """Whether ``sensor_id`` is tracked."""
        return sensor_id in self._tracks

    def _track(self, sensor_id: str) -> _Track:
        try:
            return self._tracks[sensor_id]
        except KeyError:
            raise KeyError(f"SensorHealth: sensor {sensor_id!r} is not tracked "
                           f"(known: {sorted(self._tracks)})") from None

    def observe(self, sensor_id: str, stamp_ns: int, now_ns: int) -> None:
        """Record one received message: count, arrival time, delay, and (if it advances) rate and gap.

        Args:
            stamp_ns: the message's stamp [ns]; now_ns: the caller's clock at arrival [ns].
        """
        t = self._track(sensor_id)
        t.received += 1
        t.last_arrival = now_ns
        t.last_delay = now_ns - stamp_ns
        if t.newest is not None and stamp_ns <= t.newest:
            return  # out of order or repeated: not a step of the timeline
        if t.newest is not None:
            gap = stamp_ns - t.newest
            t.largest_gap = gap if t.largest_gap is None else max(t.largest_gap, gap)
        t.newest = stamp_ns
        t.window.append(stamp_ns)
        while len(t.window) > self.max_window_samples or t.window[-1] - t.window[0] > self.rate_window_ns:
            t.window.popleft()

    def restart_timeline(self, sensor_id: str) -> None:
        """Forget the sensor's stamp history (after a clock jump) so rate and gaps do not span the jump."""
        t = self._track(sensor_id)
        t.window.clear()
        t.newest = None

    def count(self, sensor_id: str, event: Event, n: int = 1) -> None:
        """Add ``n`` to the sensor's ``event`` counter."""
        self._track(sensor_id).counts[event] += n

    def counter(self, sensor_id: str, event: Event) -> int:
        """Current value of the sensor's ``event`` counter."""
        return self._track(sensor_id).counts[event]

    def frame_emitted(self, partial: bool, forced: bool) -> None:
        """Record one emitted frame (``forced``: incomplete and emitted before its deadline)."""
        self.frames_emitted += 1
        self.frames_partial += int(partial)
        self.frames_forced += int(forced)

    def clock_stepped_back(self) -> None:
        """Record that the caller's ``now_ns`` went backwards."""
        self.clock_steps_back += 1

    def report(self, now_ns: int, queued: Optional[Mapping[str, int]] = None, open_frames: int = 0) -> HealthReport:
        """Freeze the current state.

        Args:
            now_ns: the caller's clock [ns], for ages.
            queued: messages currently held per sensor (sensors not named hold none).
            open_frames: frames currently waiting.
        """
        queued = queued or {}
        rows = []
        for sid, t in self._tracks.items():
            rate = None
            if len(t.window) >= 2 and t.window[-1] > t.window[0]:
                rate = (len(t.window) - 1) * 1e9 / (t.window[-1] - t.window[0])
            c = t.counts
            rows.append(SensorHealthRow(
                sensor_id=sid, role=t.role.value, received=t.received, rate_hz=rate,
                largest_gap_ns=t.largest_gap, last_stamp_ns=t.newest,
                last_seen_age_ns=None if t.last_arrival is None else now_ns - t.last_arrival,
                last_delay_ns=t.last_delay, queued=int(queued.get(sid, 0)),
                delivered=c[Event.DELIVERED], late=c[Event.LATE], duplicate=c[Event.DUPLICATE],
                replaced=c[Event.REPLACED], dropped=c[Event.DROPPED], unmatched=c[Event.UNMATCHED],
                ignored=c[Event.IGNORED], out_of_order=c[Event.OUT_OF_ORDER], clock_jump=c[Event.CLOCK_JUMP],
                off_timeline=c[Event.OFF_TIMELINE], missing=c[Event.MISSING]))
        return HealthReport(now_ns=now_ns, frames_emitted=self.frames_emitted, frames_partial=self.frames_partial,
                            frames_forced=self.frames_forced, open_frames=open_frames,
                            clock_steps_back=self.clock_steps_back, sensors=tuple(rows))

