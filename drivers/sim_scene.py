"""The simulated world: a road with straight and curved stretches, an ego vehicle driving it with a
varying speed, traffic (cars, trucks, cyclists, pedestrians, some emergency vehicles sounding a siren) and
static clutter (poles, walls). Everything is an oriented box standing on flat ground (z = 0).

World frame: x east, y north, z up (REP-103 style). The ego frame at time t is the ego pose at t.
Deterministic: the whole scene is drawn from ``numpy.random.default_rng(seed)`` at construction; every
query is a pure function of time.

The sensor models (``drivers/sim_*.py``) query :meth:`Scene.ego_state` and :meth:`Scene.objects_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.messages import CLASS_NAMES

LANE_WIDTH_M = 3.5
ROAD_STEP_M = 0.25
EGO_GRID_S = 1e-3  # ego speed profile sampled at 1 kHz
# Label ids for things that are not detection targets (not in CLASS_NAMES).
LABEL_POLE = -1
LABEL_WALL = -2
LABEL_BUILDING = -3

# Typical sizes (length, width, height) [m] and their spread, per class.
CLASS_SIZE = {
    "car": ((4.6, 1.9, 1.6), (0.4, 0.1, 0.15)),
    "truck": ((9.0, 2.5, 3.4), (2.0, 0.1, 0.4)),
    "pedestrian": ((0.6, 0.6, 1.75), (0.1, 0.1, 0.12)),
    "bicycle": ((1.8, 0.6, 1.7), (0.1, 0.05, 0.1)),
}
# Typical LiDAR reflectivity [0, 1] per class (painted metal, clothing, bike frame + rider).
CLASS_REFLECTIVITY = {"car": 0.45, "truck": 0.5, "pedestrian": 0.25, "bicycle": 0.3}


@dataclass(frozen=True)
class EgoState:
    """Ego vehicle state at one instant, in the world frame.

    Args:
        x, y: position [m]; yaw: heading [rad] CCW from world +x.
        speed: [m/s] along ego +x; yaw_rate: [rad/s]; accel_long: dv/dt [m/s^2];
        accel_lat: centripetal acceleration v * yaw_rate [m/s^2], positive to the left.
    """

    x: float
    y: float
    yaw: float
    speed: float
    yaw_rate: float
    accel_long: float
    accel_lat: float

    def world_from_ego(self) -> np.ndarray:
        """(3, 3) float64 homogeneous 2D transform world_from_ego."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, self.x], [s, c, self.y], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SceneObjects:
    """All objects at one instant (struct of arrays), in the frame they were asked for.

    Args:
        boxes: (N, 7) float64: x y z (centre) [m], length width height [m], yaw [rad].
        velocities: (N, 2) float64 over-ground velocity [m/s] expressed in the same frame.
        labels: (N,) int32: index into CLASS_NAMES, or LABEL_POLE / LABEL_WALL / LABEL_BUILDING.
        track_ids: (N,) int32 stable ids.
        reflectivity: (N,) float32 LiDAR reflectivity [0, 1].
        color: (N, 3) uint8 RGB base colour for cameras.
        siren: (N,) int8: 0 none, 1 wail, 2 yelp.
    """

    boxes: np.ndarray
    velocities: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    reflectivity: np.ndarray
    color: np.ndarray
    siren: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def is_target(self) -> np.ndarray:
        """(N,) bool, the object is a detection target (a CLASS_NAMES class)."""
        return self.labels >= 0


class Road:
    """A road centreline made of constant-curvature segments, sampled every ROAD_STEP_M metres.

    Args:
        segments: list of (length [m], curvature [1/m]) pieces, positive curvature turns left.
    """

    def __init__(self, segments: list[tuple[float, float]]):
        lengths = np.array([seg[0] for seg in segments], dtype=np.float64)
        curv = np.array([seg[1] for seg in segments], dtype=np.float64)
        total = lengths.sum()
        self.s = np.arange(0.0, total + ROAD_STEP_M, ROAD_STEP_M)
        edges = np.concatenate([[0.0], np.cumsum(lengths)])
        idx = np.clip(np.searchsorted(edges, self.s, side="right") - 1, 0, len(segments) - 1)
        self.kappa = curv[idx]
        heading = np.concatenate([[0.0], np.cumsum(self.kappa[:-1] * ROAD_STEP_M)])
        # Midpoint rule for position: exact to O(step^2 kappa^2).
        mid = heading[:-1] + 0.5 * self.kappa[:-1] * ROAD_STEP_M
        self.x = np.concatenate([[0.0], np.cumsum(np.cos(mid) * ROAD_STEP_M)])
        self.y = np.concatenate([[0.0], np.cumsum(np.sin(mid) * ROAD_STEP_M)])
        self.heading = heading
        self.length = float(total)

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centreline (x, y, heading, curvature) at arclength(s) s [m] (clamped to the road)."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        f = s / ROAD_STEP_M
        i = np.clip(np.floor(f).astype(np.int64), 0, len(self.s) - 2)
        w = f - i
        x = self.x[i] * (1 - w) + self.x[i + 1] * w
        y = self.y[i] * (1 - w) + self.y[i + 1] * w
        h = self.heading[i] * (1 - w) + self.heading[i + 1] * w
        return x, y, h, self.kappa[i]

    def to_world(self, s, d) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Road coordinates (arclength s, lateral offset d, + left) -> world (x, y, heading, curvature)."""
        x, y, h, k = self.pose(s)
        d = np.asarray(d, dtype=np.float64)
        return x - d * np.sin(h), y + d * np.cos(h), h, k


def _meets(row: tuple, siren: tuple, duration_s: float, margin_m: float = 2.0) -> bool:
    """Whether the object of ``row`` shares the lane of the emergency vehicle ``siren`` (rows as
    ``Scene._build_objects`` makes them: label, l, w, h, s0, d0, vs, vd, ...) and comes within
    ``margin_m`` of it, bumper to bumper, at some time in [-1, duration_s + 1] s."""
    _, length, width, _, s0, d0, vs, _ = row[:8]
    _, e_length, e_width, _, e_s0, e_d0, e_vs, _ = siren[:8]
    if abs(d0 - e_d0) >= (width + e_width) / 2:
        return False
    reach = (length + e_length) / 2 + margin_m
    gap = [s0 - e_s0 + (vs - e_vs) * t for t in (-1.0, duration_s + 1.0)]
    return gap[0] * gap[1] <= 0 or min(abs(gap[0]), abs(gap[1])) < reach


class Scene:
    """A deterministic drive.

    Args:
        seed: random seed; the same seed gives the same scene.
        duration_s: length of the drive [s].
        max_speed: ego top speed [m/s] (0-25 typical); the profile varies between ~0.3x and 1x of it,
            with one stop when ``stop`` is True.
        curvy: include curved stretches (radius 60-250 m) between straights.
        n_sirens: number of emergency vehicles sounding a siren (placed where the ego will meet them).
        traffic_density: vehicles per 100 m of lane.
    """

    def __init__(
        self,
        seed: int,
        duration_s: float,
        max_speed: float = 15.0,
        curvy: bool = True,
        n_sirens: int = 1,
        traffic_density: float = 1.2,
        stop: bool = False,
    ):
        self.seed = int(seed)
        self.duration_s = float(duration_s)
        rng = np.random.default_rng(self.seed)
        self._build_ego_profile(rng, max_speed, stop)
        need = self._ego_s[-1] + 400.0
        segments: list[tuple[float, float]] = [(60.0, 0.0)]
        while sum(seg[0] for seg in segments) < need:
            if curvy and rng.random() < 0.6:
                radius = rng.uniform(60.0, 250.0)
                segments.append((rng.uniform(40.0, 120.0), rng.choice([-1.0, 1.0]) / radius))
            segments.append((rng.uniform(30.0, 150.0), 0.0))
        self.road = Road(segments)
        self._s_offset = 150.0  # the ego starts this far along the road so traffic behind it exists
        self._build_objects(rng, traffic_density, n_sirens)

    # ------------------------------------------------------------------ ego
    def _build_ego_profile(self, rng: np.random.Generator, max_speed: float, stop: bool) -> None:
        n = int(np.ceil((self.duration_s + 2.0) / EGO_GRID_S)) + 1
        t = np.arange(n) * EGO_GRID_S
        # Target speed changes every 3-8 s; first-order approach with |a| <= 2.5 m/s^2.
        knots, targets = [0.0], [rng.uniform(0.5, 1.0) * max_speed]
        while knots[-1] < t[-1]:
            knots.append(knots[-1] + rng.uniform(3.0, 8.0))
            targets.append(rng.uniform(0.3, 1.0) * max_speed)
        if stop and len(knots) > 2:
            targets[1] = 0.0
        target = np.asarray(targets)[np.searchsorted(np.asarray(knots), t, side="right") - 1]
        v = np.empty(n)
        v[0] = target[0]
        a_max = 2.5
        for k in range(1, n):  # 1 kHz loop over a few thousand samples: fast enough, keeps it obvious
            dv = np.clip((target[k] - v[k - 1]) * 0.8, -a_max, a_max) * EGO_GRID_S
            v[k] = max(0.0, v[k - 1] + dv)
        self._ego_t = t
        self._ego_v = v
        self._ego_a = np.gradient(v, EGO_GRID_S)
        self._ego_s = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * EGO_GRID_S)])

    def ego_state(self, t_s: float) -> EgoState:
        """Ego state at time t_s [s] since the start of the drive."""
        f = np.clip(t_s / EGO_GRID_S, 0, len(self._ego_t) - 1.000001)
        i = int(f)
        w = f - i
        v = self._ego_v[i] * (1 - w) + self._ego_v[i + 1] * w
        a = self._ego_a[i] * (1 - w) + self._ego_a[i + 1] * w
        s = self._ego_s[i] * (1 - w) + self._ego_s[i + 1] * w + self._s_offset
        x, y, h, k = self.road.to_world(s, 0.0)
        return EgoState(float(x), float(y), float(h), float(v), float(v * k), float(a), float(v * v * k))

    def ego_s(self, t_s: float) -> float:
        """Ego arclength along the road [m] at time t_s."""
        return float(np.interp(t_s, self._ego_t, self._ego_s) + self._s_offset)

    # ------------------------------------------------------------------ objects
    def _build_objects(self, rng: np.random.Generator, density: float, n_sirens: int) -> None:
        s_lo = self._s_offset - 120.0
        s_hi = self.ego_s(self.duration_s) + 200.0
        rows = []  # (label, l, w, h, s0, d0, vs, vd, reflectivity, r, g, b, siren)

        def add(label, size, s0, d0, vs, vd, refl, color, siren=0):
            rows.append((label, *size, s0, d0, vs, vd, refl, *color, siren))

        def sized(name):
            mean, spread = CLASS_SIZE[name]
            return tuple(max(0.3, m + rng.normal(0.0, sd)) for m, sd in zip(mean, spread))

        vehicle_colors = np.array(
            [[200, 30, 30], [30, 60, 170], [230, 230, 230], [30, 30, 30], [140, 140, 150], [200, 170, 40]]
        )
        # Lanes: d = -3.5 (same direction, right of ego), +3.5 and +7.0 (oncoming). The ego lane (d = 0)
        # is left free ahead/behind the ego so the ego never drives through a box.
        for d0, direction in ((-LANE_WIDTH_M, 1.0), (LANE_WIDTH_M, -1.0), (2 * LANE_WIDTH_M, -1.0)):
            lane_speed = rng.uniform(6.0, 20.0)
            s = s_lo + rng.uniform(0.0, 30.0)
            while s < s_hi:
                name = "truck" if rng.random() < 0.2 else "car"
                size = sized(name)
                color = vehicle_colors[rng.integers(len(vehicle_colors))]
                add(CLASS_NAMES.index(name), size, s, d0, direction * lane_speed, 0.0,
                    CLASS_REFLECTIVITY[name] + rng.normal(0, 0.05), color)
                s += size[0] + rng.exponential(100.0 / max(density, 1e-3)) + 6.0
        # Parked cars on the right kerb, some of them.
        s = s_lo
        while s < s_hi:
            s += rng.uniform(20.0, 90.0)
            size = sized("car")
            add(CLASS_NAMES.index("car"), size, s, -2 * LANE_WIDTH_M + 0.6, 0.0, 0.0,
                CLASS_REFLECTIVITY["car"], vehicle_colors[rng.integers(len(vehicle_colors))])
        # Cyclists on the shoulder, same direction.
        for _ in range(rng.poisson(3)):
            add(CLASS_NAMES.index("bicycle"), sized("bicycle"), rng.uniform(s_lo, s_hi), -5.3,
                rng.uniform(3.0, 7.0), 0.0, CLASS_REFLECTIVITY["bicycle"], (40, 160, 60))
        # Pedestrians on both sidewalks, walking either way; a few standing.
        for _ in range(rng.poisson(10)):
            side = rng.choice([-9.0, 12.5]) + rng.normal(0, 0.4)
            speed = rng.choice([0.0, 1.0, 1.3, 1.5]) * rng.choice([-1.0, 1.0])
            shirt = rng.integers(40, 230, size=3)
            add(CLASS_NAMES.index("pedestrian"), sized("pedestrian"), rng.uniform(s_lo, s_hi), side,
                speed, 0.0, CLASS_REFLECTIVITY["pedestrian"], shirt)
        # Emergency vehicles, oncoming in the nearest oncoming lane, met by the ego mid-drive.
        first_siren = len(rows)
        for k in range(n_sirens):
            t_meet = self.duration_s * (0.35 + 0.3 * (k + 1) / (n_sirens + 1))
            speed = rng.uniform(10.0, 16.0)
            s0 = self.ego_s(t_meet) + speed * t_meet
            name = "truck" if rng.random() < 0.3 else "car"
            add(CLASS_NAMES.index(name), sized(name), s0, LANE_WIDTH_M - 0.2, -speed, 0.0, 0.55,
                (240, 240, 240), siren=int(rng.integers(1, 3)))
        # That lane's traffic keeps its own speed, so the emergency vehicle would drive through the vehicles
        # it catches up with (or that catch up with it): those have pulled over and are left out.
        sirens = rows[first_siren:]
        rows[:first_siren] = [r for r in rows[:first_siren] if not any(_meets(r, e, self.duration_s) for e in sirens)]
        # Static clutter: poles every ~25 m on the right, walls and buildings further out.
        s = s_lo
        while s < s_hi:
            s += rng.uniform(18.0, 35.0)
            add(LABEL_POLE, (0.3, 0.3, 5.0), s, -10.5, 0.0, 0.0, 0.7, (120, 120, 120))
        s = s_lo
        while s < s_hi:
            length = rng.uniform(8.0, 40.0)
            gap = rng.uniform(5.0, 40.0)
            kind = LABEL_WALL if rng.random() < 0.5 else LABEL_BUILDING
            height = 2.0 if kind == LABEL_WALL else rng.uniform(6.0, 15.0)
            depth = 0.4 if kind == LABEL_WALL else rng.uniform(6.0, 12.0)
            side = rng.choice([-1.0, 1.0])
            d = -12.5 - depth / 2 if side < 0 else 15.0 + depth / 2
            color = (170, 150, 130) if kind == LABEL_WALL else tuple(int(c) for c in rng.integers(90, 200, 3))
            add(kind, (length, depth, height), s + length / 2, d, 0.0, 0.0, 0.6, color)
            s += length + gap
        arr = np.array(rows, dtype=np.float64)
        self._label = arr[:, 0].astype(np.int32)
        self._size = arr[:, 1:4]
        self._s0, self._d0, self._vs, self._vd = arr[:, 4], arr[:, 5], arr[:, 6], arr[:, 7]
        self._refl = np.clip(arr[:, 8], 0.05, 1.0).astype(np.float32)
        self._color = arr[:, 9:12].astype(np.uint8)
        self._siren = arr[:, 12].astype(np.int8)
        self._track = np.arange(len(arr), dtype=np.int32)

    def objects_world(self, t_s: float) -> SceneObjects:
        """All objects at time t_s in the world frame."""
        s = self._s0 + self._vs * t_s
        d = self._d0 + self._vd * t_s
        x, y, h, k = self.road.to_world(s, d)
        # Heading follows the direction of travel (reversed for oncoming objects).
        yaw = h + np.where(self._vs < 0, np.pi, 0.0)
        # Over-ground velocity: along-road speed scaled by (1 - d kappa) on curves.
        speed_along = self._vs * (1.0 - d * k)
        vx = speed_along * np.cos(h) - self._vd * np.sin(h)
        vy = speed_along * np.sin(h) + self._vd * np.cos(h)
        boxes = np.column_stack([x, y, self._size[:, 2] / 2, self._size, (yaw + np.pi) % (2 * np.pi) - np.pi])
        return SceneObjects(boxes, np.column_stack([vx, vy]), self._label, self._track, self._refl,
                            self._color, self._siren)

    def objects_at(self, t_s: float, max_range: float = 150.0) -> SceneObjects:
        """Objects within ``max_range`` metres of the ego at t_s, in the ego frame at t_s.

        Velocities are over-ground, expressed in the ego frame (DESIGN section 3).
        """
        w = self.objects_world(t_s)
        ego = self.ego_state(t_s)
        c, s = np.cos(ego.yaw), np.sin(ego.yaw)
        dx = w.boxes[:, 0] - ego.x
        dy = w.boxes[:, 1] - ego.y
        # Keep objects whose nearest point may be in range (centre distance minus half diagonal).
        half_diag = 0.5 * np.hypot(w.boxes[:, 3], w.boxes[:, 4])
        keep = np.hypot(dx, dy) - half_diag < max_range
        boxes = w.boxes[keep].copy()
        boxes[:, 0] = c * dx[keep] + s * dy[keep]
        boxes[:, 1] = -s * dx[keep] + c * dy[keep]
        boxes[:, 6] = (boxes[:, 6] - ego.yaw + np.pi) % (2 * np.pi) - np.pi
        v = w.velocities[keep]
        vel = np.column_stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]])
        return SceneObjects(boxes, vel, w.labels[keep], w.track_ids[keep], w.reflectivity[keep],
                            w.color[keep], w.siren[keep])

    def ego_from_ego(self, t_dst: float, t_src: float) -> np.ndarray:
        """(3, 3) planar transform ego(t_dst)_from_ego(t_src): moves points seen at t_src into the ego
        frame at t_dst (used for rolling-shutter / sweep distortion)."""
        a = self.ego_state(t_dst).world_from_ego()
        b = self.ego_state(t_src).world_from_ego()
        return np.linalg.inv(a) @ b
