"""Stage timing and latency logs: how long each pipeline stage took, per frame, and end to end.

Three pieces:

* :class:`StageTimer` sits inside ``Pipeline.__call__``, which stays one straight line::

      lap = self.timer.start(frame.stamp_ns)
      x = self.align(frame);      lap("align")
      y = self.backbones(x);      lap("backbones")

  Each ``lap(name)`` records the time since the previous lap (or since ``start``). When the timer is
  disabled, ``start`` returns one shared do-nothing function, so timing costs a method call per frame and
  an empty call per stage, and records nothing.
* :class:`LatencyLog` collects one :class:`FrameTiming` per emitted frame (with its end-to-end latency,
  set by whoever emits the frame) and the frame counts (:class:`FrameCounts`), summarises them and
  writes/reads ``latency.json``.
* :func:`format_summary_table` prints the summary as an aligned text table at the end of a replay.

Units: stage durations and latencies are milliseconds (float), measured with ``time.perf_counter_ns``;
stamps are integer nanoseconds on the source clock. End-to-end latency is emit time minus the frame's
``stamp_ns`` (DESIGN: latency = emit time - stamp), so it includes waiting in the synchronizer and queues,
which the stage times do not.

Percentiles are numpy's default ``"linear"`` definition (``np.percentile(x, q, method="linear")``: linear
interpolation between the closest ranks, Hyndman & Fan type 7), the same one spreadsheets call
PERCENTILE.INC.

``latency.json``::

    {"format": "perception.latency/1",
     "deadline_ms": 100.0,                       # or null when no deadline was set
     "percentile_method": "numpy linear",
     "frames": {"total": 120, "emitted": 118, "partial": 3, "dropped": 2, "deadline_missed": 1},
     "summary": {"end_to_end": {"count": 118, "p50": .., "p95": .., "p99": .., "max": .., "mean": ..},
                 "stages": {"align": {...}, "backbones": {...}}},   # null where there are no samples
     "per_frame": [{"stamp_ns": 1700000000100000000, "end_to_end_ms": 41.2,   # or null
                    "stages": {"align": 3.1, "backbones": 20.4}}, ...]}

``summary`` is derived from ``per_frame``; :meth:`LatencyLog.read` recomputes it rather than trusting it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from time import perf_counter_ns

import numpy as np

FORMAT = "perception.latency/1"
PERCENTILE_METHOD = "linear"  # numpy's default; named so that readers of latency.json know
PERCENTILES = (50.0, 95.0, 99.0)

Lap = Callable[[str], None]
"""``lap(stage_name)``: record the time since the previous lap under ``stage_name``."""


class LatencyFileError(ValueError):
    """A ``latency.json`` is malformed; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------- one frame
@dataclass(frozen=True)
class FrameTiming:
    """The timing of one frame.

    Args:
        stamp_ns: the frame's stamp on the source clock [ns].
        stages: (stage name, duration [ms]) in the order the stages ran; names unique within a frame.
        end_to_end_ms: emit time minus ``stamp_ns`` [ms]; None until the frame is emitted (set by the
            executor with :meth:`emitted_at` or ``dataclasses.replace``).
    """

    stamp_ns: int
    stages: tuple[tuple[str, float], ...]
    end_to_end_ms: float | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name, ms in self.stages:
            if name in seen:
                raise ValueError(f"FrameTiming(stamp_ns={self.stamp_ns}): stage {name!r} timed twice in one frame")
            seen.add(name)
            if not (isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0):
                raise ValueError(f"FrameTiming(stamp_ns={self.stamp_ns}): stage {name!r} took {ms!r} ms; "
                                 f"expected a finite duration >= 0")
        if self.end_to_end_ms is not None and not math.isfinite(self.end_to_end_ms):
            raise ValueError(f"FrameTiming(stamp_ns={self.stamp_ns}): end_to_end_ms {self.end_to_end_ms!r} "
                             f"is not finite")

    def as_dict(self) -> dict[str, float]:
        """``{stage: ms}`` in stage order (for printing; not passed between stages)."""
        return dict(self.stages)

    @property
    def stage_total_ms(self) -> float:
        """Sum of the stage durations [ms]."""
        return float(sum(ms for _, ms in self.stages))

    def emitted_at(self, emit_ns: int) -> FrameTiming:
        """This timing with ``end_to_end_ms = (emit_ns - stamp_ns) / 1e6``; ``emit_ns`` on the source clock."""
        return replace(self, end_to_end_ms=(int(emit_ns) - self.stamp_ns) / 1e6)


def _noop_lap(stage: str) -> None:
    """The lap of a disabled timer: records nothing."""


class _Laps:
    """The laps of one frame (enabled timer). ``__slots__`` and two appends keep a lap around 0.3 us."""

    __slots__ = ("ms", "names", "stamp_ns", "t")

    def __init__(self, stamp_ns: int) -> None:
        self.stamp_ns = stamp_ns
        self.names: list[str] = []
        self.ms: list[float] = []
        self.t = perf_counter_ns()

    def __call__(self, stage: str) -> None:
        now = perf_counter_ns()
        self.names.append(stage)
        self.ms.append((now - self.t) / 1e6)
        self.t = now


class StageTimer:
    """Per-stage wall-clock durations of the current frame.

    Use from one thread (the one calling the pipeline); each :meth:`start` begins a new frame.

    Args:
        enabled: False: :meth:`start` returns a shared no-op and :attr:`last` stays None.
    """

    def __init__(self, enabled: bool = False) -> None:
        self._enabled = bool(enabled)
        self._laps: _Laps | None = None

    @property
    def enabled(self) -> bool:
        """Whether laps are recorded."""
        return self._enabled

    def start(self, stamp_ns: int = 0) -> Lap:
        """Begin timing a frame; returns ``lap(stage_name)``, which records the time since the previous lap.

        Args:
            stamp_ns: the frame's stamp [ns], carried into :class:`FrameTiming`.
        """
        if not self._enabled:
            return _noop_lap
        self._laps = _Laps(stamp_ns)
        return self._laps

    @property
    def last(self) -> FrameTiming | None:
        """The most recently started frame's stages so far (end_to_end_ms None); None when disabled or
        never started."""
        laps = self._laps
        if laps is None:
            return None
        return FrameTiming(int(laps.stamp_ns), tuple(zip(laps.names, laps.ms)))


# ---------------------------------------------------------------------------------------------- many frames
@dataclass(frozen=True)
class FrameCounts:
    """What happened to the frames of a run.

    Args:
        total: frames the synchronizer formed; each was either emitted or dropped (``emitted + dropped``).
        emitted: frames whose detections left the pipeline.
        partial: emitted frames with at least one sensor missing.
        dropped: frames not emitted (queue overflow, skipped to keep up, failed).
        deadline_missed: emitted frames whose end-to-end latency exceeded the deadline.
    """

    total: int = 0
    emitted: int = 0
    partial: int = 0
    dropped: int = 0
    deadline_missed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"FrameCounts.{f.name}: expected an integer >= 0, got {v!r}")
        if self.emitted + self.dropped != self.total:
            raise ValueError(f"FrameCounts: emitted ({self.emitted}) + dropped ({self.dropped}) must equal "
                             f"total ({self.total})")
        for name in ("partial", "deadline_missed"):
            if getattr(self, name) > self.emitted:
                raise ValueError(f"FrameCounts.{name} ({getattr(self, name)}) exceeds emitted ({self.emitted})")

    def __add__(self, other: FrameCounts) -> FrameCounts:
        return FrameCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        """The counts by field name (the ``frames`` object of ``latency.json`` and ``metrics.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one latency [ms] over frames: ``count`` samples, percentiles (numpy "linear"),
    maximum and mean."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @staticmethod
    def of(samples_ms: Sequence[float] | np.ndarray) -> LatencyStats | None:
        """The stats of ``samples_ms`` [ms]; None when there are none."""
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0:
            return None
        p = np.percentile(x, PERCENTILES, method=PERCENTILE_METHOD)
        return LatencyStats(int(x.size), float(p[0]), float(p[1]), float(p[2]), float(x.max()), float(x.mean()))

    def as_dict(self) -> dict[str, float]:
        """``{"count", "p50", "p95", "p99", "max", "mean"}``."""
        return asdict(self)


@dataclass(frozen=True)
class LatencySummary:
    """Latency statistics of a log.

    Args:
        end_to_end: over frames with a known end-to-end latency; None when no frame has one.
        stages: (stage name, stats) in the order the stages first ran.
    """

    end_to_end: LatencyStats | None
    stages: tuple[tuple[str, LatencyStats], ...]

    def stage(self, name: str) -> LatencyStats:
        """The stats of stage ``name`` (KeyError naming the stages there are)."""
        for n, s in self.stages:
            if n == name:
                return s
        raise KeyError(f"no stage {name!r} (stages: {', '.join(n for n, _ in self.stages)})")

    def as_dict(self) -> dict:
        """``{"end_to_end": {...} | None, "stages": {name: {...}}}`` (JSON-ready)."""
        return {"end_to_end": None if self.end_to_end is None else self.end_to_end.as_dict(),
                "stages": {n: s.as_dict() for n, s in self.stages}}


class LatencyLog:
    """Frame timings and counts of one run (or several merged), for ``latency.json``.

    The executor calls :meth:`add` once per emitted frame and :meth:`add_dropped` per dropped frame.

    Args:
        deadline_ms: an emitted frame whose ``end_to_end_ms`` exceeds this counts as deadline-missed;
            None: no deadline.
    """

    def __init__(self, deadline_ms: float | None = None) -> None:
        if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
            raise ValueError(f"deadline_ms must be a positive number or None, got {deadline_ms!r}")
        self.deadline_ms = None if deadline_ms is None else float(deadline_ms)
        self._frames: list[FrameTiming] = []
        self._counts = FrameCounts()

    @property
    def frames(self) -> tuple[FrameTiming, ...]:
        """The emitted frames' timings, in the order added."""
        return tuple(self._frames)

    @property
    def counts(self) -> FrameCounts:
        """Frame counts so far."""
        return self._counts

    def add(self, timing: FrameTiming, partial: bool = False) -> None:
        """Record an emitted frame: its stage times and end-to-end latency; counts it (and as
        deadline-missed when its ``end_to_end_ms`` exceeds ``deadline_ms``)."""
        missed = (self.deadline_ms is not None and timing.end_to_end_ms is not None
                  and timing.end_to_end_ms > self.deadline_ms)
        c = self._counts
        self._counts = replace(c, total=c.total + 1, emitted=c.emitted + 1, partial=c.partial + int(bool(partial)),
                               deadline_missed=c.deadline_missed + int(missed))
        self._frames.append(timing)

    def add_dropped(self, count: int = 1) -> None:
        """Record ``count`` frames that were formed but not emitted."""
        if count < 0:
            raise ValueError(f"add_dropped: count must be >= 0, got {count}")
        c = self._counts
        self._counts = replace(c, total=c.total + count, dropped=c.dropped + count)

    def summary(self) -> LatencySummary:
        """Per-stage and end-to-end p50/p95/p99/max/mean [ms] over the emitted frames (a stage over the
        frames that ran it; end to end over the frames that have it)."""
        per_stage: dict[str, list[float]] = {}
        e2e: list[float] = []
        for f in self._frames:
            for name, ms in f.stages:
                per_stage.setdefault(name, []).append(ms)
            if f.end_to_end_ms is not None:
                e2e.append(f.end_to_end_ms)
        stages = tuple((n, LatencyStats.of(v)) for n, v in per_stage.items())
        return LatencySummary(LatencyStats.of(e2e), stages)  # type: ignore[arg-type]  # v is never empty

    def end_to_end_ms(self) -> np.ndarray:
        """(K,) float64 end-to-end latencies [ms] of the frames that have one, in order."""
        return np.array([f.end_to_end_ms for f in self._frames if f.end_to_end_ms is not None], dtype=np.float64)

    @staticmethod
    def merged(logs: Iterable[LatencyLog]) -> LatencyLog:
        """One log with the frames and summed counts of ``logs`` (for statistics over several runs); its
        deadline is the runs' common deadline, or None when they differ."""
        logs = list(logs)
        deadlines = {lg.deadline_ms for lg in logs}
        out = LatencyLog(deadlines.pop() if len(deadlines) == 1 else None)
        for lg in logs:
            out._frames.extend(lg._frames)
            out._counts = out._counts + lg._counts
        return out

    def to_json_dict(self) -> dict:
        """The ``latency.json`` object (see the module docstring)."""
        return {
            "format": FORMAT,
            "deadline_ms": self.deadline_ms,
            "percentile_method": f"numpy {PERCENTILE_METHOD}",
            "frames": self._counts.as_dict(),
            "summary": self.summary().as_dict(),
            "per_frame": [{"stamp_ns": f.stamp_ns, "end_to_end_ms": f.end_to_end_ms, "stages": f.as_dict()}
                          for f in self._frames],
        }

    def write(self, path: str | Path) -> Path:
        """Write ``latency.json`` to ``path`` (a file, or a folder to write ``latency.json`` into)."""
        path = Path(path)
        if path.is_dir():
            path = path / "latency.json"
        path.write_text(json.dumps(self.to_json_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def read(path: str | Path) -> LatencyLog:
        """Load a ``latency.json`` written by :meth:`write`, checking every key it uses.

        Raises:
            LatencyFileError: unreadable file, invalid JSON, a missing key or a value of the wrong type,
                named as ``path: key.path: what``.
        """
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise LatencyFileError(f"{path}: cannot read: {e.strerror}") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise LatencyFileError(f"{path}: not valid JSON: {e}") from e
        return _from_json(obj, path)

    def __repr__(self) -> str:
        return f"LatencyLog(deadline_ms={self.deadline_ms}, frames={len(self._frames)}, counts={self._counts})"


def _from_json(obj: object, path: Path) -> LatencyLog:
    def fail(key: str, what: str) -> LatencyFileError:
        return LatencyFileError(f"{path}: {key}: {what}")

    def number(v: object, key: str, allow_null: bool = False) -> float | None:
        if v is None and allow_null:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise fail(key, f"expected a finite number{' or null' if allow_null else ''}, got {v!r}")
        return float(v)

    if not isinstance(obj, dict):
        raise fail("(top level)", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("deadline_ms", "frames", "per_frame"):
        if key not in obj:
            raise fail(key, "missing key")
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {fmt!r}")
    deadline = number(obj["deadline_ms"], "deadline_ms", allow_null=True)
    try:
        log = LatencyLog(deadline)
    except ValueError as e:
        raise fail("deadline_ms", str(e)) from e

    frames = obj["frames"]
    if not isinstance(frames, dict):
        raise fail("frames", f"expected an object, got {type(frames).__name__}")
    values = {}
    for f in fields(FrameCounts):
        if f.name not in frames:
            raise fail(f"frames.{f.name}", "missing key")
        v = frames[f.name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise fail(f"frames.{f.name}", f"expected an integer >= 0, got {v!r}")
        values[f.name] = v
    try:
        counts = FrameCounts(**values)
    except ValueError as e:
        raise fail("frames", str(e)) from e

    per_frame = obj["per_frame"]
    if not isinstance(per_frame, list):
        raise fail("per_frame", f"expected a list, got {type(per_frame).__name__}")
    timings: list[FrameTiming] = []
    for i, entry in enumerate(per_frame):
        where = f"per_frame[{i}]"
        if not isinstance(entry, dict):
            raise fail(where, f"expected an object, got {type(entry).__name__}")
        for key in ("stamp_ns", "end_to_end_ms", "stages"):
            if key not in entry:
                raise fail(f"{where}.{key}", "missing key")
        stamp = entry["stamp_ns"]
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise fail(f"{where}.stamp_ns", f"expected an integer [ns], got {stamp!r}")
        e2e = number(entry["end_to_end_ms"], f"{where}.end_to_end_ms", allow_null=True)
        stages = entry["stages"]
        if not isinstance(stages, dict):
            raise fail(f"{where}.stages", f"expected an object {{stage: ms}}, got {type(stages).__name__}")
        parsed = []
        for name, ms in stages.items():
            ms = number(ms, f"{where}.stages.{name}")
            if ms < 0:
                raise fail(f"{where}.stages.{name}", f"a duration must be >= 0, got {ms!r}")
            parsed.append((name, ms))
        timings.append(FrameTiming(stamp, tuple(parsed), e2e))
    if len(timings) != counts.emitted:
        raise fail("per_frame", f"{len(timings)} entries, but frames.emitted is {counts.emitted}")
    log._frames = timings
    log._counts = counts
    return log


# ---------------------------------------------------------------------------------------------- printing
def format_summary_table(log: LatencyLog) -> str:
    """The latency summary as an aligned plain-text table, one row per stage then end to end, columns
    count, p50, p95, p99, max [ms], followed by a line of frame counts."""
    s = log.summary()
    rows: list[tuple[str, LatencyStats | None]] = list(s.stages) + [("end-to-end", s.end_to_end)]
    name_w = max([len("stage")] + [len(n) for n, _ in rows])
    head = f"{'stage':<{name_w}}  {'count':>6}  {'p50':>8}  {'p95':>8}  {'p99':>8}  {'max':>8}   [ms]"
    lines = [head, "-" * len(head)]
    for name, st in rows:
        if st is None:
            lines.append(f"{name:<{name_w}}  {0:>6}  {'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}")
        else:
            lines.append(f"{name:<{name_w}}  {st.count:>6}  {st.p50:>8.2f}  {st.p95:>8.2f}  {st.p99:>8.2f}  "
                         f"{st.max:>8.2f}")
    c = log.counts
    deadline = f" (deadline {log.deadline_ms:g} ms)" if log.deadline_ms is not None else " (no deadline)"
    lines.append(f"frames: total {c.total}, emitted {c.emitted}, partial {c.partial}, dropped {c.dropped}, "
                 f"deadline missed {c.deadline_missed}{deadline}")
    return "\n".join(lines)
