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
association undoes: each vehicle is compared where it was when the scored sound left it (below).
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from calibration.rig import Rig
from drivers.messages import AudioChunk
from perception.audio import (DOA_WINDOW_S, SPEED_OF_SOUND_MPS, SirenDetector, _wrap, associate_sirens,
                              is_vehicle, mic_positions_ego)
from perception.bev import footprint_overlap
from perception.decode import Detections3D
from perception.sync import SyncedFrame

# A vehicle is compared with the array's bearing where it was while the scored sound left it: the bearing
# comes from the newest DOA_WINDOW_S of audio scored a frame or more ago, and sound takes range / 343 m/s
# to arrive. A tracked vehicle (the pipeline tracker's identities) has its bearings of the past HISTORY_S:
# the arc they cover over that span (interpolated, extrapolated at most EXTRAPOLATE_S past the track's
# first or last frame) is where the array's peak may fall. A vehicle passing close by sweeps tens of
# degrees in the window, and the peak lands anywhere on the arc, not at its mean. A vehicle without that
# history is moved back along its velocity relative to the ego, with an arc of its bearing rate times half
# the window either side. The error is the distance from the array's bearing to the arc.
# Gate measured with benchmarks/siren_attribute.py before tracking (4 drives, 204 siren-vehicle frames):
# 5 deg: 54 % of frames attributed; 10 deg: 64 %; 15 deg: 66 %.
BEARING_GATE_RAD = math.radians(15.0)
MIN_SCORE = 0.2  # detections less confident than this are not given the siren
# Range check by level. A siren's tone falls off with range as 1/r (-20 dB per decade), so the level the
# array hears says roughly how far away the siren is: a vehicle at range r (where it was when the scored
# sound left it) should be heard at about L1 - 20 log10(r) dB, L1 being the siren's level at 1 m on the
# array's scale (its SPL at 1 m minus the microphones' full-scale SPL). A vehicle heard more than
# LEVEL_TOLERANCE_DB away from that (6 dB: half or twice the range) is not given the siren: most wrong
# attributions are a nearer vehicle in the direction of a siren that is farther away, often beyond 60 m or
# not detected at all. Measured on 16 simulated drives (seeds 9200-9215, none of them a benchmark's
# drive): the level of the siren vehicle follows L1 - 20.3 log10(r) with a residual of 1.8 dB (std; 5th and
# 95th percentiles -3.4 and +2.3 dB); with the check at 6 dB, siren attributes on vehicles without a siren
# went from 737 to 382 and the siren vehicle's frames with the attribute from 556 to 553 (of 768).
LEVEL_TOLERANCE_DB = 6.0
HISTORY_S = 2.0
EXTRAPOLATE_S = 0.3
# Evidence over frames, per track: the exponentially weighted mean of the squared bearing error (capped at
# RESIDUAL_CAP_RAD, weight SCORE_DECAY per frame on the past). The siren stays on its vehicle unless
# another one's RMS error is OWNER_MARGIN_RAD smaller, so a second vehicle in nearly the same direction
# does not take it, and a wrong first choice (the siren vehicle not yet detected) is given up once the
# right one has been seen to match better. A siren unheard for OWNER_MAX_GAP_S frees its vehicle.
SCORE_DECAY = 0.5
# One vehicle, two boxes: the detector may see one vehicle as both a car and a truck (a van-sized
# emergency vehicle sits between the two classes' sizes), and the two classes are suppressed separately.
# The siren belongs to the vehicle, so every car or truck box sharing at least SAME_OBJECT_OVERLAP of the
# smaller footprint with the chosen box gets it too, whatever its score.
SAME_OBJECT_OVERLAP = 0.4
RESIDUAL_CAP_RAD = math.radians(20.0)
# The level also ranks: each dB between what a vehicle's range implies and what was heard adds
# LEVEL_RANK_RAD_PER_DB to its error, so of two vehicles in one direction (one behind the other) the one at
# the heard range gets the siren. Small: the level's spread (1.8 dB) then weighs like a few tenths of a
# degree. Measured with benchmarks/siren_attribute.py: frames with the attribute 338 -> 340 of 374
# (9100-9107), 691 -> 692 of 769 (9200-9215), 693 -> 701 of 788 (9300-9315); false vehicles 142, 368 -> 364,
# 356 -> 343.
LEVEL_RANK_RAD_PER_DB = math.radians(0.25)
OWNER_MARGIN_RAD = math.radians(1.0)
OWNER_MAX_GAP_S = 0.5


class SirenStage:
    """``(frame, detections) -> detections`` with the siren attribute and siren events set.

    Args:
        detector: the siren detector (ring buffer + network + direction of arrival).
        microphone_id: the array's sensor id.
        threshold: siren probability needed to report a siren.
        min_score: only detections at least this confident can be associated.
        gate_rad: largest bearing difference for an association.
        every_frames: score every n-th frame (a siren's bearing changes slowly; one score covers 1 s).
        level_at_1m_db: the siren's level at 1 m on the array's scale [dB re full scale, mean square] (its SPL
            at 1 m minus the microphones' full-scale SPL), or None for no range check by level.
        level_tolerance_db: how far from the level its range implies a vehicle may be heard and still get
            the siren [dB].
    """

    def __init__(self, detector: SirenDetector, microphone_id: str, threshold: float, min_score: float = MIN_SCORE,
                 gate_rad: float = BEARING_GATE_RAD, every_frames: int = 3, level_at_1m_db: float | None = None,
                 level_tolerance_db: float = LEVEL_TOLERANCE_DB):
        if level_at_1m_db is not None and not math.isfinite(level_at_1m_db):
            raise ValueError(f"SirenStage: level_at_1m_db must be a finite number or None, got {level_at_1m_db}")
        if not level_tolerance_db > 0:
            raise ValueError(f"SirenStage: level_tolerance_db must be > 0, got {level_tolerance_db}")
        self.detector = detector
        self.microphone_id = microphone_id
        self.threshold = threshold
        self.min_score = min_score
        self.gate_rad = gate_rad
        self.every_frames = max(1, int(every_frames))
        self.level_at_1m_db = level_at_1m_db
        self.level_tolerance_db = float(level_tolerance_db)
        self._last_chunk_ns: int | None = None
        self._chunk_ns = 0  # duration of the newest chunk: the scored window ends that long after its stamp
        self._frames = 0
        self._estimate = None
        # Per track identity: its bearings [(stamp_ns, bearing_rad)] over HISTORY_S, and its evidence
        # (exponentially weighted mean squared bearing error [rad^2]).
        self._seen: dict[int, list[tuple[int, float]]] = {}
        self._score: dict[int, float] = {}
        self._owner = -1          # the track the siren was last put on, and when
        self._owner_ns = 0
        # One worker thread runs the detector (log-mel + CNN + SRP-PHAT); see the module docstring.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siren")
        self._pending: Future | None = None

    @staticmethod
    def from_checkpoint(path: Path, rig: Rig, microphone_id: str, threshold: float, sample_rate: int = 16000,
                        level_at_1m_db: float | None = None,
                        level_tolerance_db: float = LEVEL_TOLERANCE_DB) -> "SirenStage":
        mic = rig[microphone_id]
        if mic.mic_positions is None:
            raise ValueError(f"rig sensor {microphone_id!r} has no mic_positions; the siren stage needs them")
        positions = mic_positions_ego(rig.ego_from(microphone_id), mic.mic_positions)
        # ONNX Runtime with one thread: the siren network runs beside the detection networks without
        # touching torch's process-wide thread pool.
        det = SirenDetector.from_weights(path, sample_rate, len(positions), positions, backend="onnxruntime")
        return SirenStage(det, microphone_id, threshold, level_at_1m_db=level_at_1m_db,
                          level_tolerance_db=level_tolerance_db)

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
        self._remember(dets)
        out = self._associate(frame, dets)
        # The worker reads the ring buffer: push only once the previous job is collected (above).
        self._push(frame)
        self._frames += 1
        if (self._frames - 1) % self.every_frames == 0 and self.detector.ready:
            self._pending = self._pool.submit(self.detector.detect)
        return out

    def _remember(self, dets: Detections3D) -> None:
        """Keep every tracked vehicle's bearing, HISTORY_S back."""
        if dets.track_ids is None:
            return
        for j in np.flatnonzero((dets.track_ids >= 0) & is_vehicle(dets)):
            bearing = math.atan2(float(dets.boxes[j, 1]), float(dets.boxes[j, 0]))
            self._seen.setdefault(int(dets.track_ids[j]), []).append((dets.stamp_ns, bearing))
        oldest = dets.stamp_ns - int(HISTORY_S * 1e9)
        for tid in list(self._seen):
            kept = [e for e in self._seen[tid] if e[0] >= oldest]
            if kept:
                self._seen[tid] = kept
            else:
                del self._seen[tid]
                self._score.pop(tid, None)

    def _emitted_at(self, dets: Detections3D, frame: SyncedFrame, rel_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each box was (x, y [m], this frame's ego frame) when the sound at the middle of the scored
        window left it: moved back along its velocity relative to the ego (``rel_v`` (N, 2) float64) from the
        frame stamp to the window centre, and by the sound's travel time."""
        end_ns = self._estimate.stamp_ns + self._chunk_ns
        x, y = dets.boxes[:, 0].astype(np.float64), dets.boxes[:, 1].astype(np.float64)
        back_s = (frame.stamp_ns - end_ns) * 1e-9 + DOA_WINDOW_S / 2 + np.hypot(x, y) / SPEED_OF_SOUND_MPS
        return x - rel_v[:, 0] * back_s, y - rel_v[:, 1] * back_s

    def _heard(self, dets: Detections3D, rel_v: np.ndarray, hx: np.ndarray,
               hy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per detection, the arc of bearings it was heard from while the scored sound left it: its centre
        and half-width [rad]. ``hx, hy``: where each box was at the window centre (:meth:`_emitted_at`).

        The scored window is [end - DOA_WINDOW_S, end]; sound heard at time s left a vehicle at range r at
        s - r / c. A track seen in at least two frames gets the arc its bearings cover over that span
        (inside it, and at its ends interpolated or extrapolated from the two nearest frames). Otherwise
        the box goes back along its velocity relative to the ego (over-ground velocity minus the ego speed
        along +x; ``rel_v`` (N, 2) float64) from the frame stamp to the window centre, and the arc is its
        bearing rate times half the window either side."""
        end_ns = self._estimate.stamp_ns + self._chunk_ns
        r = np.hypot(dets.boxes[:, 0].astype(np.float64), dets.boxes[:, 1].astype(np.float64))
        centre = np.arctan2(hy, hx)
        rate = np.abs(hx * rel_v[:, 1] - hy * rel_v[:, 0]) / np.maximum(hx * hx + hy * hy, 1.0)   # [rad/s]
        half = rate * (DOA_WINDOW_S / 2)
        if dets.track_ids is None:
            return centre, half
        for j, tid in enumerate(dets.track_ids.tolist()):
            past = self._seen.get(tid)
            if past is None or len(past) < 2:
                continue
            delay_ns = r[j] / SPEED_OF_SOUND_MPS * 1e9
            lo = end_ns - DOA_WINDOW_S * 1e9 - delay_ns
            hi = end_ns - delay_ns
            t = np.array([e[0] for e in past], np.float64)
            b = np.unwrap(np.array([e[1] for e in past]))
            # the bearings inside the span, and at its ends (interpolated; extrapolated from the two
            # nearest at most EXTRAPOLATE_S beyond the track's first or last frame)
            ends = np.clip([lo, hi], t[0] - EXTRAPOLATE_S * 1e9, t[-1] + EXTRAPOLATE_S * 1e9)
            at_ends = np.interp(ends, t, b)
            for k, tk in enumerate(ends):
                if tk < t[0]:
                    at_ends[k] = b[0] + (b[1] - b[0]) / (t[1] - t[0]) * (tk - t[0])
                elif tk > t[-1]:
                    at_ends[k] = b[-1] + (b[-1] - b[-2]) / (t[-1] - t[-2]) * (tk - t[-1])
            arc = np.concatenate([at_ends, b[(t > lo) & (t < hi)]])
            centre[j] = (arc.max() + arc.min()) / 2
            half[j] = (arc.max() - arc.min()) / 2
        return centre, half

    def _associate(self, frame: SyncedFrame, dets: Detections3D) -> Detections3D:
        est = self._estimate
        if est is None or not math.isfinite(est.bearing_rad) or est.probability < self.threshold:
            return dets
        ego_speed = frame.speed[-1].speed_mps if frame.speed else 0.0
        rel_v = dets.velocities.astype(np.float64) - np.array([ego_speed, 0.0])
        hx, hy = self._emitted_at(dets, frame, rel_v)
        ok = dets.scores >= self.min_score
        level_off = np.zeros(len(dets))
        if self.level_at_1m_db is not None and math.isfinite(est.level_db):
            expected = self.level_at_1m_db - 20.0 * np.log10(np.maximum(np.hypot(hx, hy), 1.0))
            level_off = np.abs(est.level_db - expected)
            ok &= level_off <= self.level_tolerance_db
        keep = np.flatnonzero(ok)
        sub = dets[keep]
        centre, half = self._heard(sub, rel_v[keep], hx[keep], hy[keep])
        # the current owner's index in this frame
        ids = sub.track_ids if sub.track_ids is not None else np.full(len(sub), -1, np.int64)
        prefer = -1
        if (frame.stamp_ns - self._owner_ns) * 1e-9 <= OWNER_MAX_GAP_S:
            hits = np.flatnonzero(ids == self._owner)
            prefer = int(hits[0]) if len(hits) and self._owner >= 0 else -1
        # the error left beyond each arc to the array's bearing; the owner is matched against the nearest of
        # its possible bearings (the best and the spatial aliases that score almost as well), so an alias
        # taking the peak for a moment does not take the siren off its vehicle, nor give it to another
        bearings = np.array((est.bearing_rad,) + tuple(est.other_bearings_rad))
        errs = np.maximum(np.abs(_wrap(bearings[:, None] - centre[None, :])) - half[None, :], 0.0)  # (K, N)
        match = np.zeros(len(sub), np.int64)
        if prefer >= 0:
            match[prefer] = int(np.argmin(errs[:, prefer]))
        err = errs[match, np.arange(len(sub))]
        # evidence per track
        rank = err.copy()
        for j, tid in enumerate(ids.tolist()):
            if tid < 0:
                continue
            e2 = min(err[j], RESIDUAL_CAP_RAD) ** 2
            old = self._score.get(tid)
            self._score[tid] = e2 if old is None else SCORE_DECAY * old + (1.0 - SCORE_DECAY) * e2
            rank[j] = math.sqrt(self._score[tid])
        rank += LEVEL_RANK_RAD_PER_DB * level_off[keep]
        out = associate_sirens(sub, frame.stamp_ns, est.probability, est.bearing_rad, self.threshold,
                               self.gate_rad, prefer, OWNER_MARGIN_RAD, rank_err_rad=rank, bearing_err_rad=err)
        chosen = out.siren_events[-1].detection_index
        if chosen >= 0 and ids[chosen] >= 0:
            self._owner, self._owner_ns = int(ids[chosen]), frame.stamp_ns
        siren = dets.siren.copy()
        siren[keep] = out.siren
        if chosen >= 0:
            vehicles = np.flatnonzero(is_vehicle(dets))
            same = footprint_overlap(dets.boxes[keep[chosen]], dets.boxes[vehicles]) >= SAME_OBJECT_OVERLAP
            siren[vehicles[same]] = True
        # an event on a vehicle reports the bearing that vehicle matched
        events = tuple(e if e.detection_index < 0 else
                       type(e)(e.stamp_ns, float(bearings[match[e.detection_index]]), e.probability,
                               int(keep[e.detection_index]))
                       for e in out.siren_events[len(sub.siren_events):])
        return Detections3D(dets.stamp_ns, dets.boxes, dets.velocities, dets.scores, dets.labels, siren,
                            dets.class_names, dets.siren_events + events, dets.track_ids)
