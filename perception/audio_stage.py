"""The pipeline's audio stage: siren probability and bearing from the microphone array, fused late with
the frame's vehicle detections (:func:`perception.audio.associate_sirens`).

Each frame carries the audio chunks overlapping its span (a chunk straddling a frame stamp comes in both
frames); each chunk is pushed once, then the detector scores the last second of audio and, when a siren is
heard, the bearing is matched against the car/truck detections scoring at least ``min_score``.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from calibration.rig import Rig
from drivers.messages import AudioChunk
from perception.audio import SirenDetector, associate_sirens, mic_positions_ego
from perception.decode import Detections3D
from perception.sync import SyncedFrame

BEARING_GATE_RAD = math.radians(15.0)


class SirenStage:
    """``(frame, detections) -> detections`` with the siren attribute and siren events set.

    Args:
        detector: the siren detector (ring buffer + network + direction of arrival).
        microphone_id: the array's sensor id.
        threshold: siren probability needed to report a siren.
        min_score: only detections at least this confident can be associated.
        gate_rad: largest bearing difference for an association.
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
        self._frames = 0
        self._estimate = None
        # The detector (log-mel + CNN + SRP-PHAT) runs in one worker thread, started by :meth:`start` before
        # the networks and joined by :meth:`__call__` after them, so it overlaps the detection networks.
        # Every frame waits for its own result: the output does not depend on timing.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siren")
        self._pending: Future | None = None

    def start(self, frame: SyncedFrame) -> None:
        """Take the frame's new audio and, every ``every_frames`` frames (a siren's bearing changes slowly;
        the detector scores a 1 s window), start scoring the last second in the worker thread."""
        self._push(frame)
        self._frames += 1
        if (self._frames - 1) % self.every_frames == 0 and self.detector.ready:
            self._pending = self._pool.submit(self.detector.detect)

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

    def __call__(self, frame: SyncedFrame, dets: Detections3D) -> Detections3D:
        """Siren attribute and events for this frame's detections (call :meth:`start` first)."""
        if self._pending is not None:
            self._estimate = self._pending.result()
            self._pending = None
        est = self._estimate
        if est is None or not math.isfinite(est.bearing_rad) or est.probability < self.threshold:
            return dets
        keep = np.flatnonzero(dets.scores >= self.min_score)
        sub = associate_sirens(dets[keep], frame.stamp_ns, est.probability, est.bearing_rad, self.threshold,
                               self.gate_rad)
        siren = dets.siren.copy()
        siren[keep] = sub.siren
        events = tuple(e if e.detection_index < 0 else
                       type(e)(e.stamp_ns, e.bearing_rad, e.probability, int(keep[e.detection_index]))
                       for e in sub.siren_events)
        return Detections3D(dets.stamp_ns, dets.boxes, dets.velocities, dets.scores, dets.labels, siren,
                            dets.class_names, dets.siren_events + events)
