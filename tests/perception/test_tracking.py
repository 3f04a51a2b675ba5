"""Frame-to-frame tracking: velocities and heading from where the detections went."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.messages import CLASS_NAMES
from perception.decode import Detections3D
from perception.tracking import (MAX_GAP_S, TrackState, Tracker, _params, _track_kernel, planar_motion,
                                 track_step_reference)

CAR, PED = CLASS_NAMES.index("car"), CLASS_NAMES.index("pedestrian")


def dets_at(stamp_ns, xy, labels, vel=None, yaw=None) -> Detections3D:
    n = len(xy)
    boxes = np.zeros((n, 7), np.float32)
    boxes[:, :2] = xy
    boxes[:, 3:6] = (4.5, 1.9, 1.6)
    if yaw is not None:
        boxes[:, 6] = yaw
    v = np.zeros((n, 2), np.float32) if vel is None else np.asarray(vel, np.float32).reshape(n, 2)
    return Detections3D(stamp_ns, boxes, v, np.full(n, 0.8, np.float32), np.asarray(labels, np.int32),
                        np.zeros(n, bool))


def ego_step(yaw_rate, speed, dt):
    """(R, t) taking points in the ego frame before a step of the ego (speed along +x, turning at yaw_rate)
    into the ego frame after it."""
    th = yaw_rate * dt
    c, s = math.cos(th), math.sin(th)
    R = np.array([[c, s], [-s, c]])            # rotate by -th
    return R, -R @ np.array([speed * dt, 0.0])


def test_a_crossing_car_gets_its_velocity_and_heading_while_the_ego_drives_and_turns():
    # World: a car crossing at (3, 9) m/s (heading 71.6 deg); the ego drives at 10 m/s turning at 0.1 rad/s.
    # The head reports vy = 0 and yaw 0, as the shipped model does; the centres carry 0.2 m of noise.
    rng = np.random.default_rng(0)
    tracker = Tracker(CLASS_NAMES)
    car_w, car_v = np.array([40.0, -20.0]), np.array([3.0, 9.0])
    ego_p, ego_yaw = np.zeros(2), 0.0
    dt = 0.1
    for f in range(30):
        t = f * dt
        c, s = math.cos(ego_yaw), math.sin(ego_yaw)
        to_ego = np.array([[c, s], [-s, c]])
        rel = to_ego @ (car_w + car_v * t - ego_p)
        v_ego = to_ego @ car_v
        head_v = [v_ego[0], 0.0]
        out = tracker(dets_at(int(1e9 + f * 1e8), rel[None] + rng.normal(0, 0.2, (1, 2)), [CAR], [head_v]),
                      None if f == 0 else ego_step(0.1, 10.0, dt))
        ego_p = ego_p + 10.0 * dt * np.array([c, s])
        ego_yaw += 0.1 * dt
    assert np.linalg.norm(out.velocities[0] - v_ego) < 1.0              # the head's vy error was 8.5 m/s
    heading = math.atan2(v_ego[1], v_ego[0])
    assert abs(math.remainder(float(out.boxes[0, 6]) - heading, 2 * math.pi)) < math.radians(8)
    assert out.boxes[0, 0] == pytest.approx(rel[0], abs=1.0)             # positions are left as detected


def test_radar_doppler_corrects_a_wrong_head_velocity_along_the_ray():
    # A car 30 m ahead driving away at 8 m/s over ground; the head says 2 m/s. The radar returns on it
    # measure +8 m/s along the ray (over-ground radial velocity); clutter elsewhere measures 0.
    def run(with_radar):
        tracker = Tracker(CLASS_NAMES)
        for f in range(6):
            x = 30.0 + 8.0 * 0.1 * f
            radar = np.zeros((5, 7), np.float32)
            radar[:3, 0] = (x - 1.0, x, x + 1.2)
            radar[:3, 3] = 8.0
            radar[3:, :2] = ((20.0, 10.0), (-15.0, 3.0))
            out = tracker(dets_at(f * 100_000_000, [(x, 0.0)], [CAR], [(2.0, 0.0)]),
                          None if f == 0 else (np.eye(2), np.zeros(2)), radar if with_radar else None)
        return out.velocities[0, 0]

    assert abs(run(True) - 8.0) < 0.5
    assert abs(run(True) - 8.0) < abs(run(False) - 8.0)


def test_a_parked_car_stays_still_while_the_ego_passes_it():
    tracker = Tracker(CLASS_NAMES)
    for f in range(15):
        out = tracker(dets_at(f * 100_000_000, [(50.0 - 1.5 * f, 4.0)], [CAR]),
                      None if f == 0 else ego_step(0.0, 15.0, 0.1))
    # Without the ego motion its positions would say -15 m/s.
    assert np.abs(out.velocities[0]).max() < 0.1


def test_young_tracks_keep_the_head_and_gaps_or_unknown_motion_end_every_track():
    tracker = Tracker(CLASS_NAMES, min_hits=3)
    eye = (np.eye(2), np.zeros(2))
    a = tracker(dets_at(0, [(10.0, 0.0)], [CAR], [(5.0, 1.0)]), None)
    assert a.velocities.tolist() == [[5.0, 1.0]] and len(tracker) == 1
    tracker(dets_at(100_000_000, [(10.5, 0.0)], [CAR], [(5.0, 1.0)]), eye)
    c = tracker(dets_at(200_000_000, [(11.0, 0.0)], [CAR], [(5.0, 1.0)]), eye)
    assert c.velocities[0].tolist() != [5.0, 1.0]                          # third update: the track's
    late = int(200_000_000 + (MAX_GAP_S + 0.1) * 1e9)
    assert a.track_ids.tolist() == c.track_ids.tolist() == [0]                # one identity throughout
    d = tracker(dets_at(late, [(11.5, 0.0)], [CAR], [(5.0, 1.0)]), eye)
    assert d.velocities.tolist() == [[5.0, 1.0]] and len(tracker) == 1      # a new track
    e = tracker(dets_at(late + 100_000_000, [(12.0, 0.0)], [CAR], [(5.0, 1.0)]), None)
    assert e.velocities.tolist() == [[5.0, 1.0]] and len(tracker) == 1
    assert d.track_ids.tolist() == [1] and e.track_ids.tolist() == [2]       # identities are never reused


def test_association_keeps_classes_apart_and_takes_the_nearest_pair_first():
    tracker = Tracker(CLASS_NAMES, min_hits=1, max_misses=0)
    eye = (np.eye(2), np.zeros(2))
    tracker(dets_at(0, [(10.0, 0.0), (10.0, 5.0)], [CAR, PED]), None)
    out = tracker(dets_at(100_000_000, [(10.0, 0.2), (10.0, 4.9)], [PED, CAR]), eye)
    # Neither matches its old neighbour of the other class: both start anew, the old tracks end.
    assert len(tracker) == 2 and out.velocities.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    t2 = Tracker(CLASS_NAMES, min_hits=2)
    t2(dets_at(0, [(10.0, 0.0), (13.0, 0.0)], [CAR, CAR]), None)
    out = t2(dets_at(100_000_000, [(12.0, 0.0), (10.2, 0.0)], [CAR, CAR]), eye)
    # (10.2 -> track at 10) is the nearest pair; 12 then takes the track at 13, moving at about -10 m/s.
    assert out.velocities[1, 0] > 0 and out.velocities[0, 0] < -1.0
    assert out.track_ids.tolist() == [1, 0]


def test_kernel_equals_the_numpy_reference_bit_for_bit():
    rng = np.random.default_rng(5)
    labels_all = np.array([CLASS_NAMES.index(n) for n in ("car", "truck", "pedestrian", "bicycle")])
    gate = Tracker(CLASS_NAMES).gate
    heading = Tracker(CLASS_NAMES).heading
    objects = rng.uniform(-50, 50, (60, 2))
    speeds = rng.normal(0, 6, (60, 2))
    obj_labels = labels_all[rng.integers(0, 4, 60)]
    kern, ref = TrackState(capacity=80), TrackState(capacity=80)   # small: the capacity limit is hit
    most = 0
    for f in range(40):
        seen = rng.random(60) < 0.8
        xy = (objects[seen] + speeds[seen] * f * 0.1 + rng.normal(0, 0.3, (seen.sum(), 2))).astype(np.float32)
        extra = rng.uniform(-50, 50, (rng.integers(0, 30), 2)).astype(np.float32)   # clutter
        xy = np.concatenate([xy, extra])
        labels = np.concatenate([obj_labels[seen], labels_all[rng.integers(0, 4, len(extra))]]).astype(np.int32)
        v = rng.normal(0, 5, (len(xy), 2)).astype(np.float32)
        yaw = rng.uniform(-3, 3, len(xy)).astype(np.float32)
        lwy = np.stack([rng.uniform(0.5, 6, len(xy)), rng.uniform(0.5, 2.5, len(xy)), yaw], 1).astype(np.float32)
        # radar returns: on some of the detections, plus clutter
        on = xy[rng.random(len(xy)) < 0.5]
        pts = np.concatenate([np.repeat(on, 3, axis=0) + rng.normal(0, 0.5, (3 * len(on), 2)),
                              rng.uniform(-50, 50, (20, 2))]).astype(np.float32)
        radar = np.zeros((len(pts), 7), np.float32)
        radar[:, :2] = pts
        u = pts / np.maximum(np.hypot(pts[:, 0], pts[:, 1]), 1e-3)[:, None]
        radar[:, 3:5] = u * rng.normal(0, 8, (len(pts), 1))
        reset = f in (0, 17)
        dt = 0.1 if f != 25 else 0.2
        R, t = planar_motion(*_random_motion(rng))
        out = []
        for st, fn in ((kern, "kernel"), (ref, "reference")):
            ov, oy, oi = v.copy(), yaw.copy(), np.empty(len(xy), np.int64)
            if fn == "kernel":
                st.n = _track_kernel(st.n, *st.arrays(), reset, dt, R, t, xy, lwy, v.copy(), labels, radar, gate,
                                     heading, ov, oy, oi, st.counter, *_params(3, 2))
            else:
                track_step_reference(st, reset, dt, R, t, xy, lwy, v.copy(), labels, radar, gate, heading, ov, oy,
                                     oi, 3, 2)
            out.append((ov, oy, oi))
        assert kern.n == ref.n
        most = max(most, kern.n)
        for x, y in zip(kern.arrays(), ref.arrays()):
            assert np.array_equal(x[: kern.n], y[: ref.n])
        assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
        assert np.array_equal(out[0][2], out[1][2]) and kern.counter[0] == ref.counter[0]
        ids = out[0][2][out[0][2] >= 0]
        assert len(np.unique(ids)) == len(ids)                     # one detection per track
    assert most == 80                                              # the capacity was reached


def _random_motion(rng):
    th = rng.normal(0, 0.02)
    R = np.array([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0.0, 0.0, 1.0]])
    return R, np.array([rng.normal(-1.0, 0.3), rng.normal(0, 0.05), 0.0])
