"""Frame-to-frame tracking of the detections: over-ground velocity and heading from where objects went.

The detection head's lateral velocity and sin(yaw) outputs are weak (recordings/models/README.md): most
training traffic moves along x, so a crossing car comes out with vy near 0 and a yaw of 0 or 180 degrees.
A track sees where the object actually went. Per frame:

1. Tracks are predicted to the frame's stamp (constant velocity) and moved into its ego frame with the ego
   motion since the previous frame (IMU + wheel speed, the frontend's :class:`EgoMotion`).
2. Detections are matched to tracks greedily, nearest centre first, same class, within the class's gate
   (CenterPoint's tracking scheme; gates as CenterPoint uses on nuScenes).
3. Each matched track runs a Kalman update per axis on state (position, velocity) with two measurements:
   the detection's centre (POSITION_SIGMA_M, growing with range) and the head's velocity
   (HEAD_VELOCITY_SIGMA_MPS). Then the radar: the median over-ground radial speed of the returns inside
   the box is a measurement of the velocity along the ray to the box (RADAR_SIGMA_MPS). Unmatched
   detections start tracks at the head's velocity; tracks unmatched for more than MAX_MISSES frames end.
4. A detection on a track with at least MIN_HITS updates gets the track's velocity; when the object is a
   vehicle or bicycle moving faster than HEADING_MIN_SPEED_MPS and its velocity's heading is more than
   HEADING_OVERRIDE_RAD off the head's yaw (which is 0 or 180 degrees: right for traffic along the road,
   wrong for a turning or crossing object, or facing backwards), the yaw follows the velocity. Positions,
   sizes and scores are left as detected, so the detection metrics' matching (mAP) is unchanged. Every
   detection also gets its track's identity (``Detections3D.track_ids``), which the siren stage follows.

The step is one numba kernel (nogil, cached) over fixed-capacity track arrays, about 0.1 ms a frame
at 40 detections; :func:`track_step_reference` is its plain-numpy twin, and the tests require the two to
agree bit for bit (same float64 operations in the same order).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from perception.decode import Detections3D

# Association gates [m] by class name (CenterPoint's nuScenes tracking thresholds); other classes 2 m.
CLASS_GATE_M = {"car": 4.0, "truck": 4.0, "bus": 5.5, "trailer": 3.0, "pedestrian": 1.0, "bicycle": 2.5,
                "motorcycle": 4.0}
# Detection centre noise: grows with range (fewer points on a far object).
POSITION_SIGMA_M = 0.3
POSITION_SIGMA_PER_M = 0.02
# Radar: the median over-ground radial speed of the returns inside a box (footprint + RADAR_MARGIN_M) is a
# measurement of the track velocity along the ray to the box centre. The ray from the ego origin stands in
# for the radar's own (a few per cent apart at 10 m and beyond). Width chosen on the validation drives
# (0.5, 1 and 2 m/s: mAVE 0.70, 0.63, 0.67).
RADAR_SIGMA_MPS = 1.0
RADAR_MARGIN_M = 0.5
HEAD_VELOCITY_SIGMA_MPS = 4.0    # the head's velocity as a measurement: loose (its vy is near 0 whatever)
ACCEL_SIGMA_MPS2 = 3.0           # process noise: unmodelled acceleration
INITIAL_VELOCITY_SIGMA_MPS = 4.0
MIN_HITS = 3
MAX_MISSES = 2
MAX_GAP_S = 0.5                  # a longer gap between frames (or no ego motion) ends every track
HEADING_MIN_SPEED_MPS = 5.0      # below it the velocity's direction is too noisy to give a heading
# The head's yaw is good for the traffic it learned (along the road: 0 or 180 degrees) and stays there for a
# turning or crossing object; the track's heading replaces it only when the two disagree by more than this.
HEADING_OVERRIDE_RAD = math.radians(20.0)
HEADING_CLASSES = ("car", "truck", "bus", "trailer", "bicycle", "motorcycle")
MAX_TRACKS = 1024                # capacity; new tracks beyond it are not started (>= 4 x max_detections)


class TrackState:
    """The tracks, in fixed-capacity arrays; rows [0, n) are live. Per track and axis (x, y of the current
    ego frame): position ``pos``, velocity ``vel`` and the covariance [[a, b], [b, c]] of (position,
    velocity); ``label``, ``hits`` (updates so far), ``misses`` (frames since the last update) and ``ident``
    (the track's identity: unique for the tracker's lifetime, from ``counter``)."""

    def __init__(self, capacity: int = MAX_TRACKS):
        self.n = 0
        self.pos = np.zeros((capacity, 2))
        self.vel = np.zeros((capacity, 2))
        self.a = np.zeros((capacity, 2))
        self.b = np.zeros((capacity, 2))
        self.c = np.zeros((capacity, 2))
        self.label = np.zeros(capacity, np.int32)
        self.hits = np.zeros(capacity, np.int32)
        self.misses = np.zeros(capacity, np.int32)
        self.ident = np.zeros(capacity, np.int64)
        self.counter = np.zeros(1, np.int64)  # the next track's identity

    def arrays(self) -> tuple:
        return self.pos, self.vel, self.a, self.b, self.c, self.label, self.hits, self.misses, self.ident


def _params(min_hits: int, max_misses: int) -> tuple:
    return (float(ACCEL_SIGMA_MPS2 ** 2), float(POSITION_SIGMA_M), float(POSITION_SIGMA_PER_M),
            float(HEAD_VELOCITY_SIGMA_MPS ** 2),
            float(INITIAL_VELOCITY_SIGMA_MPS ** 2), int(min_hits), int(max_misses), float(HEADING_MIN_SPEED_MPS),
            float(HEADING_OVERRIDE_RAD), float(RADAR_SIGMA_MPS ** 2), float(RADAR_MARGIN_M))


@nb.njit(nogil=True, cache=True, error_model="numpy")
def _track_kernel(n, pos, vel, a, b, c, label, hits, misses, ident, reset, dt, R, t, xy, lwy, v, labels, radar,
                  gate, heading, out_v, out_yaw, out_id, counter, q, s0, s1, r2, p0c, min_hits, max_misses,
                  min_speed, min_turn, sr2, margin):
    """One frame; returns the new track count. out_v (N, 2) float32 and out_yaw (N,) float32 hold the head's
    velocity and yaw on entry and the frame's output on exit; out_id (N,) int64 gets each detection's track
    identity (-1 where none could be started)."""
    cap = pos.shape[0]
    n_det = xy.shape[0]
    if reset:
        n = 0
    # 1. predict (constant velocity, white-acceleration process noise) into this frame's ego frame
    for k in range(n):
        for ax in range(2):
            a[k, ax] = a[k, ax] + 2.0 * dt * b[k, ax] + dt * dt * c[k, ax] + q * dt ** 4 / 4
            b[k, ax] = b[k, ax] + dt * c[k, ax] + q * dt ** 3 / 2
            c[k, ax] = c[k, ax] + q * dt * dt
        px = pos[k, 0] + vel[k, 0] * dt
        py = pos[k, 1] + vel[k, 1] * dt
        pos[k, 0] = R[0, 0] * px + R[0, 1] * py + t[0]
        pos[k, 1] = R[1, 0] * px + R[1, 1] * py + t[1]
        vx = vel[k, 0]
        vy = vel[k, 1]
        vel[k, 0] = R[0, 0] * vx + R[0, 1] * vy
        vel[k, 1] = R[1, 0] * vx + R[1, 1] * vy
        misses[k] += 1
    # 2. greedy association, nearest (detection, track) pair first, same class, within the class gate
    n_cand = 0
    for i in range(n_det):
        for k in range(n):
            if labels[i] == label[k]:
                if np.hypot(np.float64(xy[i, 0]) - pos[k, 0], np.float64(xy[i, 1]) - pos[k, 1]) <= gate[labels[i]]:
                    n_cand += 1
    cd = np.empty(n_cand)
    ci = np.empty(n_cand, np.int64)
    ck = np.empty(n_cand, np.int64)
    j = 0
    for i in range(n_det):
        for k in range(n):
            if labels[i] == label[k]:
                d = np.hypot(np.float64(xy[i, 0]) - pos[k, 0], np.float64(xy[i, 1]) - pos[k, 1])
                if d <= gate[labels[i]]:
                    cd[j] = d
                    ci[j] = i
                    ck[j] = k
                    j += 1
    track_of = np.full(n_det, -1, np.int64)
    used = np.zeros(n, np.bool_)
    for j in np.argsort(cd, kind="mergesort"):
        if track_of[ci[j]] < 0 and not used[ck[j]]:
            track_of[ci[j]] = ck[j]
            used[ck[j]] = True
    # 3. Kalman update per axis, H = I, R = diag(r1, r2), closed-form 2x2 gain; P = (I - K) P
    for i in range(n_det):
        k = track_of[i]
        if k < 0:
            continue
        sp = s0 + s1 * np.hypot(np.float64(xy[i, 0]), np.float64(xy[i, 1]))
        r1 = sp * sp
        for ax in range(2):
            aa = a[k, ax]
            bb = b[k, ax]
            cc = c[k, ax]
            det = (aa + r1) * (cc + r2) - bb * bb
            k11 = (aa * (cc + r2) - bb * bb) / det
            k12 = bb * r1 / det
            k21 = bb * r2 / det
            k22 = (cc * (aa + r1) - bb * bb) / det
            ep = np.float64(xy[i, ax]) - pos[k, ax]
            ev = np.float64(v[i, ax]) - vel[k, ax]
            pos[k, ax] = pos[k, ax] + (k11 * ep + k12 * ev)
            vel[k, ax] = vel[k, ax] + (k21 * ep + k22 * ev)
            a[k, ax] = (1 - k11) * aa - k12 * bb
            b[k, ax] = (1 - k11) * bb - k12 * cc
            c[k, ax] = -k21 * bb + (1 - k22) * cc
        hits[k] += 1
        misses[k] = 0
    # 3b. radar Doppler: scalar update along the ray u to the box centre, z = u . v. The gain couples the axes;
    # the per-axis covariance keeps only its own block (the cross-axis terms are dropped).
    speeds = np.empty(radar.shape[0])
    for i in range(n_det):
        k = track_of[i]
        if k < 0:
            continue
        cx = np.float64(xy[i, 0])
        cy = np.float64(xy[i, 1])
        cyaw = np.cos(np.float64(lwy[i, 2]))
        syaw = np.sin(np.float64(lwy[i, 2]))
        hl = np.float64(lwy[i, 0]) / 2 + margin
        hw = np.float64(lwy[i, 1]) / 2 + margin
        m_r = 0
        for j in range(radar.shape[0]):
            dx = np.float64(radar[j, 0]) - cx
            dy = np.float64(radar[j, 1]) - cy
            if abs(cyaw * dx + syaw * dy) <= hl and abs(-syaw * dx + cyaw * dy) <= hw:
                rr = np.hypot(np.float64(radar[j, 0]), np.float64(radar[j, 1]))
                if rr > 0:
                    speeds[m_r] = (np.float64(radar[j, 3]) * radar[j, 0] + np.float64(radar[j, 4]) * radar[j, 1]) / rr
                    m_r += 1
        rc = np.hypot(cx, cy)
        if m_r == 0 or rc <= 0:
            continue
        z = np.median(speeds[:m_r])
        hx = cx / rc
        hy = cy / rc
        sv = hx * hx * c[k, 0] + hy * hy * c[k, 1] + sr2
        e = z - (hx * vel[k, 0] + hy * vel[k, 1])
        for ax in range(2):
            h = hx if ax == 0 else hy
            bb = b[k, ax]
            cc = c[k, ax]
            pos[k, ax] = pos[k, ax] + h * bb / sv * e
            vel[k, ax] = vel[k, ax] + h * cc / sv * e
            g = h * h / sv
            a[k, ax] = a[k, ax] - g * bb * bb
            b[k, ax] = bb - g * bb * cc
            c[k, ax] = cc - g * cc * cc
    # 4. drop tracks missed too long (order kept), then start one per unmatched detection (detection order)
    renumber = np.full(n, -1, np.int64)
    m = 0
    for k in range(n):
        if misses[k] <= max_misses:
            renumber[k] = m
            if m != k:
                pos[m] = pos[k]
                vel[m] = vel[k]
                a[m] = a[k]
                b[m] = b[k]
                c[m] = c[k]
                label[m] = label[k]
                hits[m] = hits[k]
                misses[m] = misses[k]
                ident[m] = ident[k]
            m += 1
    for i in range(n_det):
        if track_of[i] >= 0:
            track_of[i] = renumber[track_of[i]]
        elif m < cap:
            sp = s0 + s1 * np.hypot(np.float64(xy[i, 0]), np.float64(xy[i, 1]))
            r1 = sp * sp
            for ax in range(2):
                pos[m, ax] = xy[i, ax]
                vel[m, ax] = v[i, ax]
                a[m, ax] = r1
                b[m, ax] = 0.0
                c[m, ax] = p0c
            label[m] = labels[i]
            hits[m] = 1
            misses[m] = 0
            ident[m] = counter[0]
            counter[0] += 1
            track_of[i] = m
            m += 1
    # 5. established tracks give the velocity, and a moving vehicle's yaw
    for i in range(n_det):
        k = track_of[i]
        out_id[i] = -1 if k < 0 else ident[k]
        if k < 0 or hits[k] < min_hits:
            continue
        out_v[i, 0] = np.float32(vel[k, 0])
        out_v[i, 1] = np.float32(vel[k, 1])
        if heading[labels[i]] and np.hypot(out_v[i, 0], out_v[i, 1]) >= min_speed:
            h = np.float32(math.atan2(np.float64(out_v[i, 1]), np.float64(out_v[i, 0])))
            turn = np.float64(h) - np.float64(out_yaw[i])
            if abs(turn - 2.0 * np.pi * np.floor(turn / (2.0 * np.pi) + 0.5)) > min_turn:
                out_yaw[i] = h
    return m


def track_step_reference(state: TrackState, reset: bool, dt: float, R: np.ndarray, t: np.ndarray, xy: np.ndarray,
                         lwy: np.ndarray, v: np.ndarray, labels: np.ndarray, radar: np.ndarray, gate: np.ndarray,
                         heading: np.ndarray, out_v: np.ndarray, out_yaw: np.ndarray, out_id: np.ndarray,
                         min_hits: int = MIN_HITS, max_misses: int = MAX_MISSES) -> None:
    """Plain-numpy twin of the numba step: detections xy (N, 2), length width yaw (N, 3), head velocity
    (N, 2) and labels; radar returns (R, 7) as :class:`perception.frontend.FrameInputs` has them. Updates
    ``state``, ``out_v``, ``out_yaw`` and ``out_id`` in place."""
    q, s0, s1, r2, p0c, min_hits, max_misses, min_speed, min_turn, sr2, margin = _params(min_hits, max_misses)
    n = 0 if reset else state.n
    pos, vel, a, b, c = (x[:n].copy() for x in (state.pos, state.vel, state.a, state.b, state.c))
    label, hits, misses = state.label[:n].copy(), state.hits[:n].copy(), state.misses[:n].copy()
    ident = state.ident[:n].copy()
    if n:
        a = a + 2.0 * dt * b + dt * dt * c + q * dt ** 4 / 4
        b = b + dt * c + q * dt ** 3 / 2
        c = c + q * dt * dt
        p = pos + vel * dt
        pos = np.stack([R[0, 0] * p[:, 0] + R[0, 1] * p[:, 1] + t[0], R[1, 0] * p[:, 0] + R[1, 1] * p[:, 1] + t[1]], 1)
        vel = np.stack([R[0, 0] * vel[:, 0] + R[0, 1] * vel[:, 1], R[1, 0] * vel[:, 0] + R[1, 1] * vel[:, 1]], 1)
        misses = misses + 1
    xy64, v64 = xy.astype(np.float64), v.astype(np.float64)
    sp = s0 + s1 * np.hypot(xy64[:, 0], xy64[:, 1])
    r1_all = (sp * sp)[:, None]                         # (N, 1): the same on both axes
    d = np.hypot(xy64[:, None, 0] - pos[None, :, 0], xy64[:, None, 1] - pos[None, :, 1])
    ok = (labels[:, None] == label[None, :]) & (d <= gate[labels][:, None])
    det_i, trk_i = np.nonzero(ok)                       # row-major: the kernel's candidate order
    order = np.argsort(d[det_i, trk_i], kind="stable")
    track_of = np.full(len(xy), -1, np.int64)
    used = np.zeros(n, bool)
    for i, k in zip(det_i[order].tolist(), trk_i[order].tolist()):
        if track_of[i] < 0 and not used[k]:
            track_of[i] = k
            used[k] = True
    matched = track_of >= 0
    k = track_of[matched]
    if len(k):
        r1 = r1_all[matched]
        aa, bb, cc = a[k], b[k], c[k]
        det = (aa + r1) * (cc + r2) - bb * bb
        k11 = (aa * (cc + r2) - bb * bb) / det
        k12 = bb * r1 / det
        k21 = bb * r2 / det
        k22 = (cc * (aa + r1) - bb * bb) / det
        ep = xy64[matched] - pos[k]
        ev = v64[matched] - vel[k]
        pos[k] = pos[k] + (k11 * ep + k12 * ev)
        vel[k] = vel[k] + (k21 * ep + k22 * ev)
        a[k], b[k], c[k] = (1 - k11) * aa - k12 * bb, (1 - k11) * bb - k12 * cc, -k21 * bb + (1 - k22) * cc
        hits[k] += 1
        misses[k] = 0
    r64 = radar.astype(np.float64)
    rr = np.hypot(r64[:, 0], r64[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = (r64[:, 3] * r64[:, 0] + r64[:, 4] * r64[:, 1]) / rr
    # Radar: the median radial speed inside each matched box, then one vectorised update of those tracks.
    with_radar, z = [], []
    for i in np.flatnonzero(matched):
        cyaw, syaw = np.cos(np.float64(lwy[i, 2])), np.sin(np.float64(lwy[i, 2]))
        dx, dy = r64[:, 0] - xy64[i, 0], r64[:, 1] - xy64[i, 1]
        inside = ((np.abs(cyaw * dx + syaw * dy) <= np.float64(lwy[i, 0]) / 2 + margin)
                  & (np.abs(-syaw * dx + cyaw * dy) <= np.float64(lwy[i, 1]) / 2 + margin) & (rr > 0))
        if inside.any() and np.hypot(xy64[i, 0], xy64[i, 1]) > 0:
            with_radar.append(i)
            z.append(np.median(speed[inside]))
    if with_radar:
        i, kr = np.array(with_radar), track_of[with_radar]
        rc = np.hypot(xy64[i, 0], xy64[i, 1])
        h = xy64[i] / rc[:, None]                                   # (M, 2): the ray's x and y parts
        bb, cc = b[kr], c[kr]
        sv = h[:, 0] * h[:, 0] * cc[:, 0] + h[:, 1] * h[:, 1] * cc[:, 1] + sr2
        e = np.array(z) - (h[:, 0] * vel[kr, 0] + h[:, 1] * vel[kr, 1])
        pos[kr] = pos[kr] + h * bb / sv[:, None] * e[:, None]
        vel[kr] = vel[kr] + h * cc / sv[:, None] * e[:, None]
        g = h * h / sv[:, None]
        a[kr] = a[kr] - g * bb * bb
        b[kr] = bb - g * bb * cc
        c[kr] = cc - g * cc * cc
    keep = misses <= max_misses
    renumber = np.cumsum(keep) - 1
    track_of[matched] = renumber[k]
    m = int(keep.sum())
    new = np.flatnonzero(~matched)[: len(state.label) - m]
    track_of[new] = m + np.arange(len(new))
    n_new = len(new)
    cols = (np.concatenate([pos[keep], xy64[new]]), np.concatenate([vel[keep], v64[new]]),
            np.concatenate([a[keep], np.broadcast_to(r1_all[new], (n_new, 2))]),
            np.concatenate([b[keep], np.zeros((n_new, 2))]),
            np.concatenate([c[keep], np.full((n_new, 2), p0c)]), np.concatenate([label[keep], labels[new]]),
            np.concatenate([hits[keep], np.ones(n_new, np.int32)]),
            np.concatenate([misses[keep], np.zeros(n_new, np.int32)]),
            np.concatenate([ident[keep], state.counter[0] + np.arange(n_new, dtype=np.int64)]))
    state.counter[0] += n_new
    state.n = m + n_new
    for dst, src in zip(state.arrays(), cols):
        dst[: state.n] = src
    est = track_of >= 0
    out_id[:] = np.where(est, state.ident[np.maximum(track_of, 0)], -1)
    est[est] = state.hits[track_of[est]] >= min_hits
    out_v[est] = state.vel[track_of[est]].astype(np.float32)
    speed = np.hypot(out_v[:, 0], out_v[:, 1])
    # libm's atan2 in float64, element by element, as the kernel calls it: numpy's vectorised arctan2 (SVML
    # on AVX-512 CPUs) may round differently
    h = np.array([math.atan2(float(vy), float(vx)) for vx, vy in out_v], np.float64).astype(np.float32)
    turn = h.astype(np.float64) - out_yaw.astype(np.float64)
    off = np.abs(turn - 2.0 * np.pi * np.floor(turn / (2.0 * np.pi) + 0.5)) > min_turn
    turn = est & heading[labels] & (speed >= min_speed) & off
    out_yaw[turn] = h[turn]


class Tracker:
    """``(detections, ego motion since the previous frame) -> detections`` with track velocities and yaw.

    Args:
        class_names: the detector's class names (label order).
        min_hits: track updates before its velocity replaces the head's.
        max_misses: frames a track survives without a detection.
    """

    def __init__(self, class_names: tuple[str, ...], min_hits: int = MIN_HITS, max_misses: int = MAX_MISSES):
        self.class_names = tuple(class_names)
        self.gate = np.array([CLASS_GATE_M.get(n, 2.0) for n in self.class_names], np.float64)
        self.heading = np.array([n in HEADING_CLASSES for n in self.class_names])
        self.min_hits = int(min_hits)
        self.max_misses = int(max_misses)
        self.state = TrackState()
        self._stamp_ns: int | None = None

    def __len__(self) -> int:
        return self.state.n

    def warm_up(self) -> None:
        """Load (or compile) the kernel on a scratch state, so the first frame does not pay for it."""
        scratch = TrackState(capacity=1)
        empty = np.zeros((0, 2), np.float32)
        _track_kernel(0, *scratch.arrays(), True, 0.1, np.eye(2), np.zeros(2), empty, np.zeros((0, 3), np.float32),
                      empty.copy(), np.zeros(0, np.int32), np.zeros((0, 7), np.float32), self.gate, self.heading,
                      empty.copy(), np.zeros(0, np.float32), np.zeros(0, np.int64), scratch.counter,
                      *_params(self.min_hits, self.max_misses))

    def __call__(self, dets: Detections3D, motion: tuple[np.ndarray, np.ndarray] | None,
                 radar: np.ndarray | None = None) -> Detections3D:
        """Track one frame.

        Args:
            dets: the frame's detections (ego frame at ``dets.stamp_ns``), in stamp order frame after frame.
            motion: (R (2, 2), t (2,)) taking ego-frame points at the previous frame's stamp into this frame's
                ego frame, or None when unknown (every track ends).
            radar: the frame's radar returns (R, 7) float32 (``FrameInputs.radar_points``: x y z, over-ground
                radial velocity vx vy, rcs, lag), or None.
        Returns:
            A new Detections3D: velocities and yaw from the tracks where they are established, and every
            detection's track identity (``track_ids``).
        """
        dt = 0.0 if self._stamp_ns is None else (dets.stamp_ns - self._stamp_ns) * 1e-9
        self._stamp_ns = dets.stamp_ns
        reset = motion is None or not 0.0 < dt <= MAX_GAP_S
        R, t = (np.eye(2), np.zeros(2)) if motion is None else (np.asarray(motion[0], np.float64),
                                                               np.asarray(motion[1], np.float64))
        radar = np.zeros((0, 7), np.float32) if radar is None else np.ascontiguousarray(radar, np.float32)
        vel = dets.velocities.copy()
        boxes = dets.boxes.copy()
        yaw = np.ascontiguousarray(boxes[:, 6])
        ids = np.empty(len(dets), np.int64)
        self.state.n = _track_kernel(self.state.n, *self.state.arrays(), reset, dt, R, t,
                                     np.ascontiguousarray(boxes[:, :2]), np.ascontiguousarray(boxes[:, [3, 4, 6]]),
                                     vel.copy(), dets.labels, radar, self.gate, self.heading, vel, yaw, ids,
                                     self.state.counter, *_params(self.min_hits, self.max_misses))
        boxes[:, 6] = yaw
        return Detections3D(dets.stamp_ns, boxes, vel, dets.scores, dets.labels, dets.siren, dets.class_names,
                            dets.siren_events, ids)


def planar_motion(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground-plane part (R[:2, :2] re-orthonormalised to a pure yaw, t[:2]) of a 3D ego motion."""
    yaw = math.atan2(R[1, 0], R[0, 0])
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s], [s, c]]), np.asarray(t[:2], np.float64)
