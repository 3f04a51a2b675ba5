"""The pipeline's audio stage: siren probability and bearing from the microphone array, fused late with
the frame's vehicle detections (:func:`perception.audio.associate_sirens`).

Each frame carries the audio chunks that have arrived for its span (a chunk straddling a frame stamp comes
with both frames, or with the next one when it completes after the frame left); each chunk is pushed once.
The detector scores the last second of audio and, when a siren is heard, the bearing is matched against the
car/truck detections scoring at least ``min_score``.

Scoring is off the frame's critical path: frame k's audio is scored in a worker thread *after* frame k's
networks, between frames, and frame k+1 uses that estimate. The frame waits for the job only if it is not
done yet (on an idle real-time pipeline it always is), and which estimate a frame uses never depends on
timing, so replay stays deterministic. The price is one frame of audio lag (100 ms at 10 Hz), which the
association undoes: each detection is moved back to where it was when the scored sound left it.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from calibration.rig import Rig
from drivers.messages import AudioChunk
from perception.audio import (DOA_WINDOW_S, SPEED_OF_SOUND_MPS, SirenDetector, associate_sirens,
                              mic_positions_ego)
from perception.decode import Detections3D
from perception.sync import SyncedFrame

# Moved back to where the sound left it, the siren vehicle's box is within about 2 degrees of the array's
# bearing when its velocity is right; the velocity comes from the tracker (the detection head's lateral
# velocity is poor). Measured with benchmarks/siren_attribute.py before tracking (4 drives, 204
# siren-vehicle frames): gate 5 deg: 54 % of frames attributed; 10 deg: 64 %; 15 deg: 66 %.
BEARING_GATE_RAD = math.radians(15.0)
# The array's bearing is averaged over DOA_WINDOW_S: a vehicle whose bearing sweeps fast (passing close
# by) is within the gate widened by half the angle it sweeps in that window.
# The vehicle that got the siren is tracked from frame to frame (its box moved on by its velocity relative
# to the ego and found again within TRACK_GATE_M); it keeps the attribute against any vehicle less than
# TRACK_MARGIN_RAD nearer in bearing (perception.audio.associate_sirens, ``prefer``).
# A track starts only from a close match (a siren heard from afar, before its vehicle is detected, is
# otherwise put on whichever vehicle is nearest in bearing, and the track would keep it there).
TRACK_START_RAD = math.radians(3.0)
TRACK_GATE_M = 3.0
TRACK_MAX_GAP_S = 0.5
TRACK_MARGIN_RAD = math.radians(5.0)


class SirenStage:
    """``(frame, detections) -> detections`` with the siren attribute and siren events set.

    Args:
        detector: the siren detector (ring buffer + network + direction of arrival).
        microphone_id: the array's sensor id.
        threshold: siren probability needed to report a siren.
        min_score: only detections at least this confident can be associated.
        gate_rad: largest bearing difference for an association.
        every_frames: score every n-th frame (a siren's bearing changes slowly; one score covers 1 s).
    """

    def __init__(self, detector: SirenDetector, microphone_id: str, threshold: float, min_score: float = 0.2,
                 gate_rad: float = BEARING_GATE_RAD, every_frames: int = 3):
        self.detector = detector
        self.microphone_id = microphone_id
        self.threshold = threshold
        self.min_score = min_score
        self.gate_rad = gate_rad
        self.every_frames = max(1, int(every_frames))
        self._last_chunk_ns: int | None = None
        self._chunk_ns = 0  # duration of the newest chunk: the scored window ends that long after its stamp
        self._frames = 0
        self._estimate = None
        # The vehicle the siren was last put on: (stamp_ns, x, y, vx, vy) with the velocity relative to the ego.
        self._track: tuple[int, float, float, float, float] | None = None
        # One worker thread runs the detector (log-mel + CNN + SRP-PHAT); see the module docstring.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siren")
        self._pending: Future | None = None

    @staticmethod
    def from_checkpoint(path: Path, rig: Rig, microphone_id: str, threshold: float,
                        sample_rate: int = 16000) -> "SirenStage":
        mic = rig[microphone_id]
        if mic.mic_positions is None:
            raise ValueError(f"rig sensor {microphone_id!r} has no mic_positions; the siren stage needs them")
        positions = mic_positions_ego(rig.ego_from(microphone_id), mic.mic_positions)
        # ONNX Runtime with one thread: the siren network runs beside the detection networks without
        # touching torch's process-wide thread pool.
        det = SirenDetector.from_weights(path, sample_rate, len(positions), positions, backend="onnxruntime")
        return SirenStage(det, microphone_id, threshold)

    def _push(self, frame: SyncedFrame) -> None:
        for chunk in frame.audio:
            if not isinstance(chunk, AudioChunk) or chunk.sensor_id != self.microphone_id:
                continue
            if self._last_chunk_ns is not None and chunk.stamp_ns <= self._last_chunk_ns:
                continue
            if chunk.sample_rate != self.detector.sample_rate:
                raise ValueError(f"{chunk.sensor_id}: audio at {chunk.sample_rate} Hz, the siren stage was "
                                 f"built for {self.detector.sample_rate} Hz")
            self.detector.push(chunk)
            self._last_chunk_ns = chunk.stamp_ns
            self._chunk_ns = chunk.duration_ns

    def __call__(self, frame: SyncedFrame, dets: Detections3D) -> Detections3D:
        """Siren attribute and events for this frame's detections from the latest finished estimate (audio up
        to the previous frame), then start scoring this frame's audio (every ``every_frames`` frames)."""
        if self._pending is not None:
            self._estimate = self._pending.result()
            self._pending = None
        out = self._associate(frame, dets)
        # The worker reads the ring buffer: push only once the previous job is collected (above).
        self._push(frame)
        self._frames += 1
        if (self._frames - 1) % self.every_frames == 0 and self.detector.ready:
            self._pending = self._pool.submit(self.detector.detect)
        return out

    def _where_heard(self, dets: Detections3D, frame: SyncedFrame, rel_v: np.ndarray) -> Detections3D:
        """The detections moved back to where they were when the sound the bearing was measured on left them.

        The bearing is the mean over the newest DOA_WINDOW_S of audio scored a frame or more ago, and sound
        takes range / 343 m/s to arrive: at 60 m, closing at 30 m/s, the vehicle has moved metres since. Each
        box goes back along its velocity relative to the ego (over-ground velocity minus the ego speed along
        +x; ``rel_v`` (N, 2) float64) by ``frame stamp - window centre + range / c``; the boxes keep their
        indices."""
        if len(dets) == 0:
            return dets
        window_mid_ns = self._estimate.stamp_ns + self._chunk_ns - int(DOA_WINDOW_S * 5e8)
        xy = dets.boxes[:, :2].astype(np.float64)
        back_s = (frame.stamp_ns - window_mid_ns) * 1e-9 + np.hypot(xy[:, 0], xy[:, 1]) / SPEED_OF_SOUND_MPS
        boxes = dets.boxes.copy()
        boxes[:, :2] = (xy - rel_v * back_s[:, None]).astype(boxes.dtype)
        return Detections3D(dets.stamp_ns, boxes, dets.velocities, dets.scores, dets.labels, dets.siren,
                            dets.class_names, dets.siren_events)

    def _tracked(self, frame: SyncedFrame, dets: Detections3D) -> int:
        """Index of the detection that is the tracked siren vehicle (nearest to where its box moved on to,
        within TRACK_GATE_M), or -1."""
        if self._track is None or len(dets) == 0:
            return -1
        stamp_ns, x, y, vx, vy = self._track
        dt = (frame.stamp_ns - stamp_ns) * 1e-9
        if not 0.0 < dt <= TRACK_MAX_GAP_S:
            return -1
        d = np.hypot(dets.boxes[:, 0] - (x + vx * dt), dets.boxes[:, 1] - (y + vy * dt))
        j = int(np.argmin(d))
        return j if d[j] <= TRACK_GATE_M else -1

    def _associate(self, frame: SyncedFrame, dets: Detections3D) -> Detections3D:
        est = self._estimate
        if est is None or not math.isfinite(est.bearing_rad) or est.probability < self.threshold:
            return dets
        keep = np.flatnonzero(dets.scores >= self.min_score)
        ego_speed = frame.speed[-1].speed_mps if frame.speed else 0.0
        rel_v = dets.velocities[keep].astype(np.float64) - np.array([ego_speed, 0.0])
        heard = self._where_heard(dets[keep], frame, rel_v)
        x, y = heard.boxes[:, 0].astype(np.float64), heard.boxes[:, 1].astype(np.float64)
        turn_rate = np.abs(x * rel_v[:, 1] - y * rel_v[:, 0]) / np.maximum(x * x + y * y, 1.0)   # [rad/s]
        gate = self.gate_rad + turn_rate * (DOA_WINDOW_S / 2)
        tracked = self._tracked(frame, dets[keep])
        sub = associate_sirens(heard, frame.stamp_ns, est.probability, est.bearing_rad, self.threshold, gate,
                               tracked, TRACK_MARGIN_RAD)
        chosen = sub.siren_events[-1].detection_index
        self._track = None
        if chosen >= 0 and (chosen == tracked or
                            abs(math.remainder(math.atan2(y[chosen], x[chosen]) - est.bearing_rad, 2 * math.pi))
                            <= TRACK_START_RAD):
            j = keep[chosen]
            self._track = (frame.stamp_ns, float(dets.boxes[j, 0]), float(dets.boxes[j, 1]),
                           float(dets.velocities[j, 0]) - ego_speed, float(dets.velocities[j, 1]))
        siren = dets.siren.copy()
        siren[keep] = sub.siren
        events = tuple(e if e.detection_index < 0 else
                       type(e)(e.stamp_ns, e.bearing_rad, e.probability, int(keep[e.detection_index]))
                       for e in sub.siren_events)
        return Detections3D(dets.stamp_ns, dets.boxes, dets.velocities, dets.scores, dets.labels, siren,
                            dets.class_names, dets.siren_events + events)
