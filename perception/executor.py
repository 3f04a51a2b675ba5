"""Runs source -> sync -> pipeline -> sinks, with a per-frame deadline.

Two clocks, one code path:

- **Replay, as fast as possible** (default): the source clock is virtual. A message "arrives" when it could
  exist at the earliest (:func:`arrival_order`: at its stamp, an audio chunk at its last sample); the
  synchroniser is driven with ``now = arrival`` so replay is deterministic. A frame's end-to-end latency
  is the time it waited in the synchroniser on the virtual clock (e.g. for a late camera) plus the measured
  wall time of the pipeline and sinks: the latency it would have had live with data arriving on time.
  Nothing is dropped (there is no wall clock to fall behind).
- **Real time** (``--realtime``, ``perception live``): a source thread delivers each message at its arrival
  time mapped onto the wall clock (``speed`` times faster for overload tests) and feeds the synchroniser; frames
  go into a one-slot mailbox. The pipeline thread always takes the newest frame: a frame replaced in the
  mailbox before the pipeline got to it, or one already older than the deadline when taken, is dropped and
  counted, never queued behind. A frame that finishes after its deadline is emitted and counted as
  ``deadline_missed``. Memory stays flat: at most one waiting frame.

End-to-end latency = emit time (after the sinks wrote the frame) - frame stamp, both on the source clock.
"""

from __future__ import annotations

import gc
import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol

from drivers.messages import AudioChunk, CameraImage, GroundTruthBoxes, ImageDecodeError, Message
from perception.decode import Detections3D
from perception.sync import SyncedFrame, Synchronizer
from perception.timing import LatencyLog

log = logging.getLogger(__name__)


def arrival_order(messages: Iterable[Message]) -> Iterator[tuple[int, Message]]:
    """``(arrival_ns, message)`` in arrival order, for a source in stamp order.

    A message arrives when it can exist at the earliest: at its stamp (a LiDAR sweep is stamped at its last
    point, a camera image at its exposure), an audio chunk once its last sample is recorded
    (``stamp + duration``; a 100 ms chunk stamped at its first sample cannot be there before). Replaying a
    recording with chunks at their first sample would promise live latencies no microphone driver gives.
    """
    pending: list[tuple[int, int, Message]] = []
    n = 0
    for msg in messages:
        while pending and pending[0][0] <= msg.stamp_ns:
            arrival, _, held = heapq.heappop(pending)
            yield arrival, held
        arrival = msg.available_ns if isinstance(msg, AudioChunk) else msg.stamp_ns
        if arrival <= msg.stamp_ns:  # everything still pending arrives later
            yield arrival, msg
            continue
        heapq.heappush(pending, (arrival, n, msg))
        n += 1
    while pending:
        arrival, _, held = heapq.heappop(pending)
        yield arrival, held


SOURCE_LAG_NS = 20_000_000  # a paced source this far behind its schedule [source-clock ns] holds the clock


BACKGROUND_NICE = 10  # niceness added to a background thread where SCHED_IDLE is not available


def lower_thread_priority() -> str:
    """Make the calling thread yield the CPU to everything else in the process; returns what was done.

    For the source and sink threads. They do little per frame (decoding messages, writing files) but do it
    while the networks run, and a network's intra-op threads wait for each other at every op: one of them
    kept off its core by a background thread at equal priority slows the whole network. Measured on the
    2-core target (realtime replay of the sample drive, 3 runs each, numpy's BLAS on one thread): the BEV
    network's p95 was 31-33 ms with these threads niced by 10 and 26-29 ms with them at SCHED_IDLE (20 ms
    alone, 37-42 ms with everything at equal priority and the default BLAS threads).

    Linux: ``SCHED_IDLE`` (the thread runs only when a core would otherwise be idle, and yields at once when
    another thread wakes; any user may set it for its own threads). Where that is refused or missing, the
    thread's niceness goes up by ``BACKGROUND_NICE``; elsewhere nothing changes. Returns ``"idle"``,
    ``"nice"`` or ``"unchanged"``. On a machine that other processes keep busy, an idle-class source falls
    behind; that shows as later frames and counted deadline misses.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
            return "idle"
        except OSError as e:
            log.debug("SCHED_IDLE refused for thread %s: %s", threading.current_thread().name, e)
    if hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
            return "nice"
        except OSError as e:
            log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name, e)
    return "unchanged"


class Sink(Protocol):
    """Receives every emitted frame's detections (and the frame and its inputs, for pictures)."""

    def write(self, frame: SyncedFrame, dets: Detections3D, emit_ns: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    """What an executor run did."""

    frames: int = 0
    messages: int = 0
    ground_truth: int = 0
    wall_s: float = 0.0
    source_lag_s: float = 0.0  # source-clock time the clock waited for a slow simulated source


class Executor:
    """Drives one pipeline from one message source.

    Args:
        messages: the source (a recording's messages in log order, or a live/simulated rig).
        sync: the synchroniser.
        pipeline: ``SyncedFrame -> Detections3D`` with a ``timer`` (StageTimer).
        sinks: outputs, called in order for every emitted frame.
        latency: where per-frame timings and counts go.
        deadline_ms: per-frame deadline from the frame's stamp.
        realtime: deliver messages at their stamps on the wall clock (see the module docstring).
        speed: real-time factor (2.0 = twice as fast as recorded); realtime only.
        paced_by_source: realtime only, for a simulated source that may render slower than real time: when a
            message is due more than ``SOURCE_LAG_NS`` ago, the clock waits for the source (its origin moves
            by the lag, summed in ``RunStats.source_lag_s``) instead of ageing every frame past its deadline.
            A real sensor is never paced: its lag is latency.
        on_ground_truth: called with each ground-truth message the source carries (not synchronised).
        progress: called after each emitted or dropped frame with the stats so far.
    """

    def __init__(self, messages: Iterable[Message], sync: Synchronizer, pipeline, sinks: list, latency: LatencyLog,
                 deadline_ms: float = 100.0, realtime: bool = False, speed: float = 1.0,
                 on_ground_truth: Optional[Callable[[GroundTruthBoxes], None]] = None,
                 progress: Optional[Callable[[RunStats], None]] = None, paced_by_source: bool = False):
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.messages = messages
        self.sync = sync
        self.pipeline = pipeline
        self.sinks = sinks
        self.latency = latency
        self.deadline_ns = int(deadline_ms * 1e6)
        self.realtime = realtime
        self.speed = speed
        self.paced_by_source = paced_by_source
        self.on_ground_truth = on_ground_truth
        self.progress = progress
        self.stats = RunStats()

    # ------------------------------------------------------------------ common
    def _process(self, frame: SyncedFrame, clock: Callable[[], int]) -> None:
        dets = self.pipeline(frame)
        emit = clock()
        for s in self.sinks:
            s.write(frame, dets, emit)
        emit = clock()
        timing = self.pipeline.timer.last
        if timing is not None:
            # Partial: a sensor missing from the frame or dropped on purpose (the pipeline knows both).
            missing = getattr(self.pipeline, "last_missing", frame.missing)
            self.latency.add(timing.emitted_at(emit), partial=bool(missing))
        self.stats.frames += 1
        if self.progress:
            self.progress(self.stats)

    def _route(self, msg: Message, now_ns: int) -> list[SyncedFrame]:
        self.stats.messages += 1
        if isinstance(msg, GroundTruthBoxes):
            self.stats.ground_truth += 1
            if self.on_ground_truth:
                self.on_ground_truth(msg)
            return []
        return self.sync.push(msg, now_ns)

    def run(self) -> RunStats:
        # One full collection now, and everything that exists (imports, networks, buffers) moves to the
        # permanent generation: later collections walk only what the run makes. Otherwise the first full
        # collection comes a moment into the run and takes 90-130 ms on the 2-core target (the heap holds
        # torch and ONNX Runtime), in whichever thread trips it: a frame past its deadline.
        gc.collect()
        gc.freeze()
        t0 = time.perf_counter()
        try:
            if self.realtime:
                self._run_realtime()
            else:
                self._run_virtual()
        finally:
            for s in self.sinks:
                s.close()
            self.stats.wall_s = time.perf_counter() - t0
        return self.stats

    # ------------------------------------------------------------------ virtual clock
    def _run_virtual(self) -> None:
        for now, msg in arrival_order(self.messages):
            for frame in self._route(msg, now):
                self._virtual_frame(frame, now)
        for frame in self.sync.flush():
            self._virtual_frame(frame, frame.stamp_ns)

    def _virtual_frame(self, frame: SyncedFrame, formed_ns: int) -> None:
        start = time.perf_counter_ns()
        # Source clock: the frame left the synchroniser at formed_ns; processing takes real wall time.
        self._process(frame, lambda: formed_ns + (time.perf_counter_ns() - start))

    # ------------------------------------------------------------------ real time
    def _run_realtime(self) -> None:
        first: list[int] = []
        wall0 = time.perf_counter_ns()

        def clock() -> int:  # source clock now
            return first[0] + int((time.perf_counter_ns() - wall0) * self.speed) if first else 0

        mailbox: list[SyncedFrame] = []
        dropped = [0]  # frames replaced in the mailbox, counted into the log by this (the pipeline) thread
        cond = threading.Condition()
        done = threading.Event()
        error: list[BaseException] = []

        def post(frames: list[SyncedFrame]) -> None:
            if not frames:
                return
            with cond:
                dropped[0] += len(mailbox) + len(frames) - 1
                mailbox[:] = frames[-1:]
                cond.notify()

        def feed() -> None:
            nonlocal wall0
            lower_thread_priority()
            try:
                for arrival, msg in arrival_order(self.messages):
                    if isinstance(msg, CameraImage):
                        # Live, an image is decoded by the time it arrives, here on this thread while the
                        # pipeline works on the previous frame; a replay as fast as possible decodes only the
                        # images its frames use, in the pipeline (the frontend).
                        try:
                            msg.image
                        except ImageDecodeError:
                            pass  # counted and logged by the frontend, which reads it again
                    if not first:
                        first.append(arrival)
                        wall0 = time.perf_counter_ns()
                    wait_ns = (arrival - clock()) / self.speed
                    if wait_ns > 0:
                        time.sleep(wait_ns / 1e9)
                    elif self.paced_by_source and -wait_ns * self.speed > SOURCE_LAG_NS:
                        lag = -wait_ns  # wall ns the source is behind: the clock waits for it
                        wall0 += int(lag)
                        self.stats.source_lag_s += lag * self.speed / 1e9
                    with cond:
                        frames = self._route(msg, max(clock(), arrival))
                    post(frames)
                    with cond:
                        frames = self.sync.poll(clock())
                    post(frames)
                with cond:
                    frames = self.sync.flush()
                post(frames)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                error.append(e)
            finally:
                done.set()
                with cond:
                    cond.notify()

        feeder = threading.Thread(target=feed, name="source", daemon=True)
        feeder.start()
        while True:
            with cond:
                while not mailbox and not done.is_set():
                    cond.wait(0.05)
                    if not mailbox and first:
                        # A silent sensor must not stall output: let the synchroniser time frames out.
                        frames = self.sync.poll(clock())
                        if frames:
                            dropped[0] += len(mailbox) + len(frames) - 1
                            mailbox[:] = frames[-1:]
                n_dropped, dropped[0] = dropped[0], 0
                if not mailbox and done.is_set():
                    frame = None
                else:
                    frame = mailbox.pop()
            if n_dropped:
                self.latency.add_dropped(n_dropped)
            if frame is None:
                break
            if clock() - frame.stamp_ns > self.deadline_ns:
                self.latency.add_dropped()
                continue
            self._process(frame, clock)
        feeder.join()
        if error:
            raise error[0]
