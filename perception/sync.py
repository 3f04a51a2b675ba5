"""Time synchronizer: typed sensor messages in, :class:`SyncedFrame` out -- never stalls, never drops silently.

The synchronizer is fed one message at a time together with ``now_ns`` (the caller's clock: the host's
monotonic clock live, the recorded arrival time in replay) and never reads the wall clock, so replaying the
same ``(message, now_ns)`` sequence gives the same frames, bit for bit (DESIGN sections 3 and 5).

Rules (all times integer nanoseconds):

* **Frames.** Every message of the reference sensor (the LiDAR) opens a frame at its stamp. A matched
  sensor ``s`` with expected offset ``o_s`` (its stamp minus the reference stamp) and tolerance ``tol_s``
  contributes the one message whose *target* ``stamp - o_s`` is nearest the frame stamp, within ``tol_s``.
  If two messages qualify, the closer one stays and the other is counted ``replaced``. Tolerances are
  assumed below half the reference period, so a message is within tolerance of at most one frame.
* **Streams** (IMU, vehicle speed, audio) are not matched one-to-one: every IMU/speed sample with target
  in ``(previous frame stamp, frame stamp]`` travels with the frame, and every audio chunk whose span
  ``[target, target + duration)`` overlaps that interval (a chunk straddling a frame stamp goes with both
  frames). The first frame, and the first after a re-anchor, takes everything up to its stamp. A stream
  has *covered* a frame once it delivered a sample at or after ``frame stamp - tol_s`` (for audio: a chunk
  that contains that instant). A stream with ``tol_s > 0`` thus lets a frame leave before its samples up to
  the stamp are all in; such a sample, arriving within ``tol_s`` after the frame left, travels with the
  next frame (not counted late).
* **Emission and deadline.** The oldest open frame is emitted as soon as every matched sensor has a
  message and every stream has covered it, or when ``now_ns`` reaches its deadline; then ``missing`` names
  the absent sensors and each one's ``missing`` counter increments. The deadline is measured on
  **arrival**: ``now_ns`` when the reference message was pushed, plus ``timeout_ns``. Stamps can lie (clock
  jumps, a sensor clock that is offset from the host), a deadline on the stamp would then fire at once or
  wait for seconds; arrival time is on the one clock the synchronizer waits on. Frames leave in stamp
  order, so a complete frame waits for an older incomplete one, but never past that one's deadline; and
  a reference that arrives out of order inherits the deadline of the next newer open frame if that is
  earlier. Deadlines therefore never decrease along the stamp order, and every frame is emitted at most
  ``timeout_ns`` after its reference message arrived (given ``poll`` is called), whatever the other sensors do.
* **Anomalies**, counted per sensor in ``self.health`` (see ``perception/health.py``), none raises and
  none blocks output:

  - *duplicate*: same sensor and stamp as one of its last ``DUPLICATE_MEMORY`` stamps -> discarded.
  - *out of order*: older than the newest stamp seen from that sensor -> counted, then handled like any
    other message (used if its frame is still open, else also late).
  - *late*: its frame has already left -- a matched target within tolerance of the last emitted frame
    or older, a stream sample inside an emitted span, a reference not newer than the last emitted frame
    (frames leave in stamp order) -> discarded.
  - *clock jump*: a stamp more than ``max_backward_jump_ns`` older than the sensor's newest, or that moved
    ahead by more than ``max_forward_jump_ns`` beyond the ``now_ns`` that elapsed since that newest one
    (so a sensor that was silent for a while is a gap, not a jump) -> the sensor's stamp history (newest
    stamp, duplicate memory, rate window) restarts from this message. Smaller steps are ordinary
    out-of-order, late or gap events.
  - *off timeline*: a non-reference message whose target is more than ``max_backward_jump_ns`` before the
    newest reference stamp, or more than ``max_forward_jump_ns`` after where the reference clock should be
    now, is held (bounded) instead of matched: usually the whole rig's clock stepped and the reference
    will follow. When the **reference** jumps, the synchronizer **re-anchors**: it emits every open frame
    at once (incomplete ones partial), discards what was queued on the old timeline (counted
    ``dropped``), restarts the frame order from the new stamp and re-examines the held messages, so the
    sensors that jumped first are matched to the first new frame. A sensor whose clock alone jumped stays
    off the timeline: its messages are held, dropped when the hold is full, and it is ``missing``. A
    single corrupted reference stamp costs two re-anchors (there and back): one partial frame at the
    bogus stamp plus what was queued at that moment; output goes on.
  - *bounded memory*: each sensor holds at most ``queue_limit`` messages waiting for a frame, and as many
    held off the timeline; the oldest beyond that is ``dropped``. At most ``max_open_frames`` frames wait;
    one more forces the oldest out early (partial if incomplete, counted ``frames_forced``).

* ``now_ns`` should not run backwards; if it does, every pending deadline moves back by the same step,
  so waits keep their length, and ``clock_steps_back`` is counted.
* A reference sensor that stops yields no frames (there is nothing to anchor them to); its health row
  shows the growing age while the other sensors' queues stay bounded.

Config (YAML, loaded strictly by :meth:`SyncConfig.load`)::

    reference: lidar_top
    timeout_ns: 50000000            # 50 ms after the reference arrives, a frame leaves regardless
    max_open_frames: 4
    max_forward_jump_ns: 2000000000
    max_backward_jump_ns: 500000000
    sensors:
      - {sensor_id: cam_front, offset_ns: -20000000, tolerance_ns: 15000000, queue_limit: 4}
      - {sensor_id: radar_front, offset_ns: 10000000, tolerance_ns: 30000000, queue_limit: 4}
      - {sensor_id: imu, offset_ns: 0, tolerance_ns: 0, queue_limit: 256, stream: true}

Offline, :func:`approximate_time_sets` groups whole recorded streams like the ApproximateTime policy of ROS
``message_filters`` (minimal-spread sets, each message used at most once, sets in time order).
"""

from __future__ import annotations

import bisect
import logging
import numbers
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from calibration.yamlconf import load_yaml_file
from drivers.messages import AudioChunk, ImuSample, Message, VehicleSpeed
from perception.health import Event, HealthReport, Role, SensorHealth

log = logging.getLogger(__name__)

# Stamps remembered per sensor to recognise duplicates; older repeats are classified late or out of order.
DUPLICATE_MEMORY = 64

_STREAM_TYPES = (ImuSample, VehicleSpeed, AudioChunk)


@dataclass(frozen=True)
class SensorSyncConfig:
    """How one non-reference sensor joins reference frames.

    Args:
        sensor_id: the rig's sensor id (``Message.sensor_id``).
        offset_ns: expected stamp of this sensor minus the reference stamp of the same frame [ns] (the
            rig's ``time_offset_ns`` plus any trigger delay); ``stamp - offset_ns`` is the message's target.
        tolerance_ns: matched sensors: largest |target - frame stamp| accepted [ns]; keep it below half the
            reference period. Streams: how far before the frame stamp the newest sample may be and still
            cover the frame [ns] (0: a sample at or after the stamp, or a chunk containing it, is needed).
        queue_limit: messages held for this sensor while no frame takes them (and, separately, while off
            the reference timeline); the oldest beyond it is dropped and counted.
        stream: True for IMU, vehicle speed and audio: every sample in the frame's span travels with it.
    """

    sensor_id: str
    offset_ns: int
    tolerance_ns: int
    queue_limit: int
    stream: bool = False

    def __post_init__(self) -> None:
        if not self.sensor_id:
            raise ValueError("sync sensor: sensor_id must not be empty")
        if self.tolerance_ns < 0:
            raise ValueError(f"sync sensor {self.sensor_id!r}: tolerance_ns must be >= 0, got {self.tolerance_ns}")
        if self.queue_limit < 1:
            raise ValueError(f"sync sensor {self.sensor_id!r}: queue_limit must be >= 1, got {self.queue_limit}")


@dataclass(frozen=True)
class SyncConfig:
    """Synchronizer settings (see the module docstring for the rules they drive).

    Args:
        reference: sensor id whose messages open frames (the LiDAR).
        sensors: every other sensor to synchronise; sensors not listed are counted and ignored.
        timeout_ns: a frame leaves at most this long after its reference message arrived [ns].
        max_open_frames: frames allowed to wait at once; one more forces the oldest out.
        max_forward_jump_ns: a stamp that runs ahead of the elapsed ``now_ns`` by more than this is a
            clock jump [ns].
        max_backward_jump_ns: a stamp older than the sensor's newest by more than this is a clock jump
            [ns]; smaller steps back are out-of-order or late messages.
    """

    reference: str
    sensors: tuple[SensorSyncConfig, ...]
    timeout_ns: int
    max_open_frames: int
    max_forward_jump_ns: int
    max_backward_jump_ns: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensors", tuple(self.sensors))
        if not self.reference:
            raise ValueError("sync config: reference must name a sensor")
        if self.timeout_ns <= 0:
            raise ValueError(f"sync config: timeout_ns must be > 0, got {self.timeout_ns}")
        if self.max_open_frames < 1:
            raise ValueError(f"sync config: max_open_frames must be >= 1, got {self.max_open_frames}")
        for name in ("max_forward_jump_ns", "max_backward_jump_ns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sync config: {name} must be > 0, got {getattr(self, name)}")
        seen = set()
        for s in self.sensors:
            if s.sensor_id == self.reference:
                raise ValueError(f"sync config: the reference {self.reference!r} must not be listed in sensors")
            if s.sensor_id in seen:
                raise ValueError(f"sync config: sensor {s.sensor_id!r} is listed twice")
            seen.add(s.sensor_id)

    def sensor(self, sensor_id: str) -> SensorSyncConfig:
        """The entry for ``sensor_id``; KeyError naming the configured sensors if there is none."""
        for s in self.sensors:
            if s.sensor_id == sensor_id:
                return s
        raise KeyError(f"sync config has no sensor {sensor_id!r} (configured: {[s.sensor_id for s in self.sensors]})")

    @classmethod
    def load(cls, path: str | Path) -> "SyncConfig":
        """Read a sync YAML file; ``ConfigError`` names the file and the offending key."""
        return load_yaml_file(cls, path)


@dataclass(frozen=True, eq=False)
class SyncedFrame:
    """One synchronised set of sensor data, anchored on a reference (LiDAR) message.

    Args:
        stamp_ns: the reference message's stamp [ns]; everything downstream keeps it.
        seq: emission counter of this synchronizer, 0, 1, 2, ... (gapless).
        messages: sensor_id -> message for the reference and every matched sensor that made it.
        imu: IMU samples (all IMU stream sensors) with target in (previous frame stamp, stamp_ns], sorted by
            target then sensor id.
        speed: vehicle-speed samples in the same span, same order.
        audio: audio chunks overlapping that span (a chunk straddling a frame stamp appears in both frames).
        missing: sensors (matched or stream) that were absent when the frame left -- data, not an error.
    """

    stamp_ns: int
    seq: int
    messages: dict[str, Message]
    imu: tuple[ImuSample, ...]
    speed: tuple[VehicleSpeed, ...]
    audio: tuple[AudioChunk, ...]
    missing: frozenset[str]

    @property
    def partial(self) -> bool:
        """True when at least one configured sensor is missing."""
        return bool(self.missing)


class _Item:
    """A message waiting in the synchronizer, with its span on the reference clock [ns]."""

    __slots__ = ("msg", "start", "last", "attached", "carried")

    def __init__(self, msg: Message, start: int, last: int):
        self.msg = msg
        self.start = start  # target: stamp - offset
        # Last instant covered: start + duration - 1 for an audio chunk [start, start + duration), = start for
        # point samples. Closed intervals make the span rules the same for every stream.
        self.last = last
        self.attached = False  # already handed out in a frame (audio chunks straddling a frame stamp)
        self.carried = False  # stamped inside an emitted span of a stream that does not hold frames: next frame


@dataclass
class _OpenFrame:
    stamp_ns: int
    reference: Message
    deadline_ns: int
    matched: dict[str, _Item]


class _SensorState:
    """Stamp history and queues of one sensor."""

    def __init__(self, cfg: Optional[SensorSyncConfig]):
        self.cfg = cfg  # None for the reference
        self.newest: Optional[int] = None  # newest stamp seen [ns, sensor clock]
        self.newest_now = 0  # now_ns when ``newest`` arrived
        self._recent: deque[int] = deque()
        self._recent_set: set[int] = set()
        # Matched: messages waiting for their frame, in arrival order. Stream: samples sorted by start.
        self.queue: list[_Item] = []
        self.held: deque[_Item] = deque()  # off the reference timeline, waiting for the reference to jump
        self.reach: Optional[int] = None  # stream: latest instant covered by an accepted sample [ns, ref clock]

    def seen(self, stamp: int) -> bool:
        return stamp in self._recent_set

    def remember(self, stamp: int) -> None:
        self._recent.append(stamp)
        self._recent_set.add(stamp)
        if len(self._recent) > DUPLICATE_MEMORY:
            self._recent_set.discard(self._recent.popleft())

    def restart(self, stamp: int, now: int) -> None:
        self._recent.clear()
        self._recent_set.clear()
        self.newest = None
        self.advance(stamp, now)

    def advance(self, stamp: int, now: int) -> None:
        self.remember(stamp)
        if self.newest is None or stamp > self.newest:
            self.newest = stamp
            self.newest_now = now


def _stamp_of(msg: Message) -> int:
    stamp = getattr(msg, "stamp_ns", None)
    if isinstance(stamp, bool) or not isinstance(stamp, numbers.Integral):
        raise TypeError(f"{type(msg).__name__} from sensor {getattr(msg, 'sensor_id', '?')!r}: stamp_ns must be "
                        f"integer nanoseconds, got {stamp!r}")
    return int(stamp)


class Synchronizer:
    """Groups messages into :class:`SyncedFrame` s around a reference sensor; see the module docstring.

    Args:
        config: the :class:`SyncConfig`.
        rate_window_ns: span of stamps the health rates are measured over [ns].

    Feed it with :meth:`push` (one message and the current ``now_ns``), call :meth:`poll` regularly (so
    deadlines fire when nothing arrives) and :meth:`flush` at the end of input. Each returns the frames
    that became ready, in stamp order. ``self.health`` holds the per-sensor counters; :meth:`report`
    snapshots them. Not thread-safe: one thread owns it (the sensor threads feed it through queues).
    """

    def __init__(self, config: SyncConfig, rate_window_ns: int = 1_000_000_000):
        self.config = config
        self._ref = _SensorState(None)
        self._states = {c.sensor_id: _SensorState(c) for c in config.sensors}
        self._matched = [(sid, st) for sid, st in self._states.items() if not st.cfg.stream]
        self._streams = [(sid, st) for sid, st in self._states.items() if st.cfg.stream]
        roles = [(config.reference, Role.REFERENCE)]
        roles += [(c.sensor_id, Role.STREAM if c.stream else Role.MATCHED) for c in config.sensors]
        self.health = SensorHealth(roles, rate_window_ns=rate_window_ns)
        self._open: list[_OpenFrame] = []  # sorted by stamp
        self._now: Optional[int] = None
        self._last_emitted: Optional[int] = None  # stamp of the last frame emitted on this timeline
        self._seq = 0
        self._out: list[SyncedFrame] = []
        self._warned: set[tuple[str, Event]] = set()

    # ------------------------------------------------------------------ public API

    def push(self, msg: Message, now_ns: int) -> list[SyncedFrame]:
        """Take one message that arrived at ``now_ns`` [ns]; return the frames that became ready (maybe none).

        Raises TypeError only for programming errors: a non-integer ``stamp_ns``/``now_ns``, or a sensor
        configured as a stream sending something other than ImuSample, VehicleSpeed or AudioChunk.
        """
        sid = getattr(msg, "sensor_id", None)
        if not isinstance(sid, str):
            raise TypeError(f"push: expected a sensor message with a sensor_id, got {type(msg).__name__}")
        stamp = _stamp_of(msg)
        st = self._states.get(sid)
        if st is not None and st.cfg.stream and not isinstance(msg, _STREAM_TYPES):
            raise TypeError(f"sensor {sid!r} is configured as a stream but sent {type(msg).__name__}; streams "
                            "carry ImuSample, VehicleSpeed or AudioChunk")
        self._advance_clock(now_ns)
        if sid == self.config.reference:
            self._on_reference(msg, stamp)
        elif st is None:
            self.health.add_sensor(sid, Role.UNCONFIGURED)
            self.health.observe(sid, stamp, self._now)
            self._note(sid, Event.IGNORED, "not in the sync config")
        elif st.cfg.stream:
            self._on_stream(sid, st, msg, stamp)
        else:
            self._on_matched(sid, st, msg, stamp)
        self._emit_ready()
        return self._take_output()

    def poll(self, now_ns: int) -> list[SyncedFrame]:
        """Advance the clock to ``now_ns`` [ns] and return frames whose deadline passed (or that completed)."""
        self._advance_clock(now_ns)
        self._emit_ready()
        return self._take_output()

    def flush(self) -> list[SyncedFrame]:
        """End of input: emit every open frame now (incomplete ones partial) and account for leftovers.

        Messages still waiting for a frame are counted ``unmatched``, held off-timeline ones ``dropped``.
        The synchronizer stays usable; later messages older than the last frame count as late.
        """
        while self._open:
            self._emit(self._open.pop(0))
        for sid, st in self._states.items():
            for it in st.queue:
                if not it.attached:
                    self._note(sid, Event.UNMATCHED, "input ended before a frame took it")
            st.queue.clear()
            for _ in st.held:
                self._note(sid, Event.DROPPED, "input ended while it was off the reference timeline")
            st.held.clear()
        return self._take_output()

    @property
    def open_frames(self) -> int:
        """Frames waiting for sensors right now."""
        return len(self._open)

    def report(self, now_ns: Optional[int] = None) -> HealthReport:
        """Snapshot of ``self.health`` at ``now_ns`` [ns] (default: the latest clock value seen)."""
        queued = {self.config.reference: len(self._open)}
        for sid, st in self._states.items():
            waiting = sum(1 for it in st.queue if not it.attached) + len(st.held)
            queued[sid] = waiting + sum(1 for f in self._open if sid in f.matched)
        now = now_ns if now_ns is not None else (self._now if self._now is not None else 0)
        return self.health.report(now, queued=queued, open_frames=len(self._open))

    # ------------------------------------------------------------------ arrival

    def _advance_clock(self, now_ns: int) -> None:
        if isinstance(now_ns, bool) or not isinstance(now_ns, numbers.Integral):
            raise TypeError(f"now_ns must be integer nanoseconds, got {now_ns!r}")
        now = int(now_ns)
        if self._now is not None and now < self._now:
            # Keep every wait its length: shift deadlines and arrival times back by the same step.
            step = self._now - now
            for f in self._open:
                f.deadline_ns -= step
            for st in (self._ref, *self._states.values()):
                st.newest_now -= step
            self.health.clock_stepped_back()
        self._now = now

    def _classify(self, sid: str, st: _SensorState, stamp: int) -> str:
        """Stamp checks common to all sensors: returns 'ok', 'duplicate' or 'jump' (and counts)."""
        cfg = self.config
        if st.newest is not None:
            back = st.newest - stamp
            ahead = (stamp - st.newest) - (self._now - st.newest_now)
            if back > cfg.max_backward_jump_ns or ahead > cfg.max_forward_jump_ns:
                self._note(sid, Event.CLOCK_JUMP, f"stamp {stamp} after {st.newest}")
                self.health.restart_timeline(sid)
                self.health.observe(sid, stamp, self._now)
                st.restart(stamp, self._now)
                return "jump"
        self.health.observe(sid, stamp, self._now)
        if st.seen(stamp):
            self._note(sid, Event.DUPLICATE, f"stamp {stamp} seen before")
            return "duplicate"
        if st.newest is not None and stamp < st.newest:
            self._note(sid, Event.OUT_OF_ORDER, f"stamp {stamp} older than {st.newest}")
        st.advance(stamp, self._now)
        return "ok"

    def _on_timeline(self, target: int) -> bool:
        """Whether a target [ns, reference clock] is plausible on the reference's current timeline."""
        ref = self._ref
        if ref.newest is None:
            return True
        cfg = self.config
        expected = ref.newest + max(0, self._now - ref.newest_now)  # where the reference clock should be now
        return ref.newest - cfg.max_backward_jump_ns <= target <= expected + cfg.max_forward_jump_ns

    def _on_reference(self, msg: Message, stamp: int) -> None:
        rid = self.config.reference
        kind = self._classify(rid, self._ref, stamp)
        if kind == "duplicate":
            return
        if kind == "jump":
            self._reanchor()
        elif self._last_emitted is not None and stamp <= self._last_emitted:
            self._note(rid, Event.LATE, f"frame {stamp} is not newer than the last emitted {self._last_emitted}")
            return
        if any(f.stamp_ns == stamp for f in self._open):  # a repeat older than the duplicate memory
            self._note(rid, Event.DUPLICATE, f"frame {stamp} is already open")
            return
        frame = _OpenFrame(stamp, msg, self._now + self.config.timeout_ns, {})
        idx = bisect.bisect_left([f.stamp_ns for f in self._open], stamp)
        if idx < len(self._open):
            # Out-of-order reference: never let it hold newer frames past their own deadline.
            frame.deadline_ns = min(frame.deadline_ns, self._open[idx].deadline_ns)
        self._open.insert(idx, frame)
        if kind == "jump":
            self._replay_held()
        for sid, st in self._matched:
            self._fill_from_queue(frame, sid, st)
        while len(self._open) > self.config.max_open_frames:
            self._emit(self._open.pop(0))

    def _on_matched(self, sid: str, st: _SensorState, msg: Message, stamp: int) -> None:
        if self._classify(sid, st, stamp) == "duplicate":
            return
        target = stamp - st.cfg.offset_ns
        item = _Item(msg, target, target)
        if not self._on_timeline(target):
            self._hold(sid, st, item)
            return
        self._place_matched(sid, st, item)

    def _on_stream(self, sid: str, st: _SensorState, msg: Message, stamp: int) -> None:
        if self._classify(sid, st, stamp) == "duplicate":
            return
        start = stamp - st.cfg.offset_ns
        last = start + max(msg.duration_ns, 1) - 1 if isinstance(msg, AudioChunk) else start
        item = _Item(msg, start, last)
        if not self._on_timeline(start):
            self._hold(sid, st, item)
            return
        self._place_stream(sid, st, item)

    # ------------------------------------------------------------------ placing

    def _hold(self, sid: str, st: _SensorState, item: _Item) -> None:
        self._note(sid, Event.OFF_TIMELINE, f"target {item.start} far from reference stamp {self._ref.newest}")
        st.held.append(item)
        if len(st.held) > st.cfg.queue_limit:
            st.held.popleft()
            self._note(sid, Event.DROPPED, "off-timeline hold full")

    def _place_matched(self, sid: str, st: _SensorState, item: _Item) -> None:
        tol = st.cfg.tolerance_ns
        best: Optional[_OpenFrame] = None
        for f in self._open:  # nearest open frame within tolerance; ties go to the older frame
            d = abs(item.start - f.stamp_ns)
            if d <= tol and (best is None or d < abs(item.start - best.stamp_ns)):
                best = f
        if best is not None:
            self._offer(best, sid, item)
            return
        if self._last_emitted is not None and item.start <= self._last_emitted + tol:
            # Within tolerance of the last emitted frame or older: its frame has left.
            self._note(sid, Event.LATE, f"target {item.start} belongs to an emitted frame (last {self._last_emitted})")
            return
        st.queue.append(item)
        if len(st.queue) > st.cfg.queue_limit:
            st.queue.pop(0)
            self._note(sid, Event.DROPPED, "queue full")

    def _offer(self, frame: _OpenFrame, sid: str, item: _Item) -> None:
        current = frame.matched.get(sid)
        if current is None:
            frame.matched[sid] = item
        elif abs(item.start - frame.stamp_ns) < abs(current.start - frame.stamp_ns):
            frame.matched[sid] = item
            self._note(sid, Event.REPLACED, f"a closer message took frame {frame.stamp_ns}")
        else:
            self._note(sid, Event.REPLACED, f"frame {frame.stamp_ns} already has a closer message")

    def _fill_from_queue(self, frame: _OpenFrame, sid: str, st: _SensorState) -> None:
        tol = st.cfg.tolerance_ns
        candidates = [it for it in st.queue if abs(it.start - frame.stamp_ns) <= tol]
        if not candidates:
            return
        best = min(candidates, key=lambda it: abs(it.start - frame.stamp_ns))  # ties: earliest arrival
        st.queue = [it for it in st.queue if abs(it.start - frame.stamp_ns) > tol]
        for it in candidates:
            if it is not best:
                self._note(sid, Event.REPLACED, f"a closer message took frame {frame.stamp_ns}")
        self._offer(frame, sid, best)

    def _place_stream(self, sid: str, st: _SensorState, item: _Item) -> None:
        if self._last_emitted is not None and item.last <= self._last_emitted:
            # A stream that does not hold frames (tolerance > 0) lets them leave before its sample at the
            # stamp arrives; that sample goes with the next frame instead of being lost. Older ones are late.
            if not (st.cfg.tolerance_ns > 0 and item.last > self._last_emitted - st.cfg.tolerance_ns):
                self._note(sid, Event.LATE, f"sample at {item.start} belongs before the last emitted "
                                            f"{self._last_emitted}")
                return
            item.carried = True
        if not st.queue or st.queue[-1].start <= item.start:
            st.queue.append(item)
        else:
            st.queue.insert(bisect.bisect_right([it.start for it in st.queue], item.start), item)
        st.reach = item.last if st.reach is None else max(st.reach, item.last)
        if len(st.queue) > st.cfg.queue_limit:
            oldest = st.queue.pop(0)
            if not oldest.attached:
                self._note(sid, Event.DROPPED, "queue full")

    def _reanchor(self) -> None:
        """The reference clock jumped: close the old timeline so the new one starts clean."""
        while self._open:
            self._emit(self._open.pop(0))
        for sid, st in self._states.items():
            for it in st.queue:
                if not it.attached:
                    self._note(sid, Event.DROPPED, "queued on the old timeline when the reference clock jumped")
            st.queue.clear()
            st.reach = None
        self._last_emitted = None

    def _replay_held(self) -> None:
        for sid, st in self._states.items():
            held, st.held = list(st.held), deque()
            for it in held:
                if not self._on_timeline(it.start):
                    st.held.append(it)  # still off: keep waiting, already counted once
                elif st.cfg.stream:
                    self._place_stream(sid, st, it)
                else:
                    self._place_matched(sid, st, it)

    # ------------------------------------------------------------------ emission

    def _covered(self, st: _SensorState, stamp: int) -> bool:
        return st.reach is not None and st.reach >= stamp - st.cfg.tolerance_ns

    def _complete(self, frame: _OpenFrame) -> bool:
        if len(frame.matched) < len(self._matched):
            return False
        return all(self._covered(st, frame.stamp_ns) for _, st in self._streams)

    def _emit_ready(self) -> None:
        while self._open:
            head = self._open[0]
            if not (self._complete(head) or self._now >= head.deadline_ns):
                break
            self._emit(self._open.pop(0))

    def _emit(self, frame: _OpenFrame) -> None:
        hi, lo = frame.stamp_ns, self._last_emitted
        missing: list[str] = []
        messages: dict[str, Message] = {self.config.reference: frame.reference}
        self.health.count(self.config.reference, Event.DELIVERED)
        for sid, _ in self._matched:
            item = frame.matched.get(sid)
            if item is None:
                missing.append(sid)
            else:
                messages[sid] = item.msg
                self.health.count(sid, Event.DELIVERED)
        taken: dict[type, list[tuple[int, str, Message]]] = {ImuSample: [], VehicleSpeed: [], AudioChunk: []}
        for sid, st in self._streams:
            if not self._covered(st, hi):
                missing.append(sid)
            keep = []
            for it in st.queue:
                if it.start <= hi and (lo is None or it.last > lo or it.carried):
                    taken[type(it.msg)].append((it.start, sid, it.msg))
                    if not it.attached:
                        it.attached = True
                        self.health.count(sid, Event.DELIVERED)
                elif it.last <= hi and not it.attached:  # cannot reach any later span
                    self._note(sid, Event.UNMATCHED, f"sample at {it.start} fell outside every frame span")
                if it.last > hi:  # later samples, and audio straddling this stamp, wait for the next frame
                    keep.append(it)
            st.queue = keep
        for sid in missing:
            self._note(sid, Event.MISSING, f"frame {hi} left without it")
        partial = bool(missing)
        out = SyncedFrame(
            stamp_ns=hi, seq=self._seq, messages=messages,
            imu=tuple(m for *_, m in sorted(taken[ImuSample], key=lambda t: t[:2])),
            speed=tuple(m for *_, m in sorted(taken[VehicleSpeed], key=lambda t: t[:2])),
            audio=tuple(m for *_, m in sorted(taken[AudioChunk], key=lambda t: t[:2])),
            missing=frozenset(missing),
        )
        self._seq += 1
        self._last_emitted = hi
        self.health.frame_emitted(partial=partial, forced=partial and self._now < frame.deadline_ns)
        self._out.append(out)
        for sid, st in self._matched:  # whatever can no longer meet a newer frame is unmatched
            tol = st.cfg.tolerance_ns
            stale = [it for it in st.queue if it.start <= hi + tol]
            if stale:
                st.queue = [it for it in st.queue if it.start > hi + tol]
                for it in stale:
                    self._note(sid, Event.UNMATCHED, f"no frame within tolerance of target {it.start}")

    def _take_output(self) -> list[SyncedFrame]:
        out, self._out = self._out, []
        return out

    def _note(self, sid: str, event: Event, detail: str) -> None:
        self.health.count(sid, event)
        if (sid, event) not in self._warned:
            # First occurrence per sensor and kind is logged; the rest are only counted (see health).
            self._warned.add((sid, event))
            log.warning("sync: sensor %r %s (%s); further ones are counted in the health report",
                        sid, event.value.replace("_", " "), detail)


# ---------------------------------------------------------------------------------------------- offline


@dataclass(frozen=True, eq=False)
class MessageSet:
    """One set chosen by :func:`approximate_time_sets`.

    Args:
        messages: sensor_id -> message, one per input sensor.
        start_ns, end_ns: earliest and latest stamp in the set [ns].
    """

    messages: dict[str, Message]
    start_ns: int
    end_ns: int

    @property
    def spread_ns(self) -> int:
        """Latest minus earliest stamp [ns] (the set's 'size' in ROS terms)."""
        return self.end_ns - self.start_ns


def approximate_time_sets(messages_by_sensor: Mapping[str, Sequence[Message]],
                          max_interval_ns: int) -> list[MessageSet]:
    """Group whole recorded streams into minimal-spread sets, like ROS message_filters' ApproximateTime.

    Each output set holds one message per sensor; a message is used at most once; sets do not cross (for
    consecutive sets S, T every sensor's message in S is older than its message in T) and come in time
    order; no set spans more than ``max_interval_ns``. The search follows the policy's pivot/candidate
    scheme: the latest head among the sensors' queues is the *pivot*; the earliest head is advanced one
    message at a time while that shrinks the set, and the best set for the pivot is taken once no later
    set containing the pivot can be smaller (or the sensor being advanced is the pivot itself). Since the
    whole input is known, a queue that runs out ends the search for better sets. Messages older than a
    taken set's message are not reused.

    Args:
        messages_by_sensor: sensor_id -> that sensor's messages (any order; sorted by ``stamp_ns`` here,
            stably, so equal stamps keep their input order).
        max_interval_ns: largest allowed spread of a set [ns], >= 0.

    Returns:
        The sets in time order. Deterministic: ties between sensors are broken by sensor id (the pivot is
        the last id among equally late heads, the advanced sensor the first among equally early ones), so
        the result does not depend on the mapping's order.
    """
    if not messages_by_sensor:
        raise ValueError("approximate_time_sets: no sensors given")
    if isinstance(max_interval_ns, bool) or not isinstance(max_interval_ns, numbers.Integral) or max_interval_ns < 0:
        raise ValueError(f"approximate_time_sets: max_interval_ns must be an integer >= 0, got {max_interval_ns!r}")
    ids = sorted(messages_by_sensor)
    queues: list[deque[tuple[int, Message]]] = []
    for sid in ids:
        stamped = [(_stamp_of(m), m) for m in messages_by_sensor[sid]]
        queues.append(deque(sorted(stamped, key=lambda sm: sm[0])))
    n = len(ids)
    past: list[list[tuple[int, Message]]] = [[] for _ in range(n)]
    sets: list[MessageSet] = []
    candidate: Optional[list[tuple[int, Message]]] = None
    pivot = -1
    pivot_time = cand_start = cand_end = 0

    def publish() -> None:
        nonlocal candidate, pivot
        assert candidate is not None
        sets.append(MessageSet({sid: m for sid, (_, m) in zip(ids, candidate)}, cand_start, cand_end))
        for i in range(n):
            # Messages passed over while searching for this pivot go back; the set's own message, now at
            # the front again, is consumed.
            queues[i].extendleft(reversed(past[i]))
            past[i].clear()
            queues[i].popleft()
        candidate, pivot = None, -1

    while True:
        while all(queues):
            heads = [q[0][0] for q in queues]
            end_i = max(range(n), key=lambda i: (heads[i], i))  # latest head; ties: last id
            start_i = min(range(n), key=lambda i: (heads[i], i))  # earliest head; ties: first id
            end_t, start_t = heads[end_i], heads[start_i]
            if candidate is None:
                if end_t - start_t > max_interval_ns:
                    queues[start_i].popleft()  # too wide to ever be a set: this message is dropped
                    continue
                candidate = [q[0] for q in queues]
                cand_start, cand_end = start_t, end_t
                pivot, pivot_time = end_i, end_t
                for p in past:
                    p.clear()
            elif end_t - cand_end < start_t - cand_start:  # strictly smaller set for the same pivot
                candidate = [q[0] for q in queues]
                cand_start, cand_end = start_t, end_t
                for p in past:  # messages passed over before a better set can never be used
                    p.clear()
            past[start_i].append(queues[start_i].popleft())
            if start_i == pivot:
                publish()  # advancing the pivot itself: no further set contains it
            elif end_t - cand_end >= pivot_time - cand_start:
                publish()  # any later set contains [pivot_time, end_t], already wider than the candidate
        if candidate is None:
            return sets
        publish()  # a queue ran dry: no later message can make a smaller set for this pivot
