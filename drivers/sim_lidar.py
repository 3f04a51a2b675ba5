"""Simulated spinning LiDAR: a numba ray-caster against the scene's oriented boxes and the ground plane.

Sensor model (32 beams, 10 Hz, 1800 columns of 0.2 deg, so at most 57 600 points per sweep):

- Beams: 32 fixed elevations from -25 deg to +15 deg, denser near the horizon (0.55 deg spacing around
  -1 deg, 3 deg at the bottom, 2.2 deg at the top), in the spirit of gradient-spaced sensors such as the
  OS-1-32 "gradient" or the HDL-32E's tighter centre. ``ring`` 0 is the lowest beam.
- Spin: clockwise seen from above (azimuth decreasing), starting and ending behind the vehicle (the seam
  at azimuth +-180 deg), one column every ``period / n_columns``; all 32 beams of a column fire together.
- Timing: every column is fired at its own time, and the scene is evaluated at that time. The ego pose
  is sampled at ``n_blocks + 1`` block boundaries per sweep (``Scene.ego_state``, 25 blocks of 4 ms)
  and interpolated linearly per column (chord error v^2 kappa dt^2 / 8 < 1 mm at 20 m/s on a 60 m
  radius); object poses are interpolated per column between their poses at the first and the last
  column (they move at constant speed along the road; chord-vs-arc error < 1 cm). Points are reported
  in the sensor frame at their own firing time, so the raw sweep shows the rolling distortion of ego
  motion that a deskew removes. ``stamp_ns`` is the last column's time; ``time_offset`` is in
  ``[-(n_columns - 1) / n_columns * period, 0]``.
- Return strength (single return: the first surface along the ray):
  ``signal = reflectivity * (0.3 + 0.7 cos(incidence)) * exp(-2 alpha r) / r^2`` (two-way Beer-Lambert
  extinction ``alpha``), detected with probability ``1 / (1 + (s_min / signal)^8)`` (10 % to 90 % within
  2.4 dB), where ``s_min`` puts the 50 % point of a 10 % Lambertian target at ``range_10pct_m`` (80 m)
  in clear air. So dark asphalt at grazing incidence fades out between 50 and 70 m while buildings are
  seen to the hard limit ``max_range_m`` (120 m). On top: random dropouts (1 %) and range noise (2 cm,
  1 sigma) along the ray.
- Intensity in [0, 1]: ``reflectivity * (0.3 + 0.7 cos) * exp(-2 alpha r) / (1 + (r / 60 m)^2)`` with 5 %
  multiplicative noise; the ground (road) has reflectivity 0.12.
- Weather (:data:`LIDAR_WEATHER`): rain (alpha 0.01 / m) and fog (alpha 0.05 / m, visibility ~80 m) shorten
  the range and attenuate the intensity; each ray may also return a spurious low-intensity point from a
  rain drop or from fog backscatter at short range, which hides whatever is behind it. Night changes
  nothing (the LiDAR is its own light source).
- The ego vehicle's own body is not modelled (no self-occlusion); returns closer than ``min_range_m`` are
  discarded as real sensors do.

Hit accounting is exact: the ray-caster counts, per object, the returns that the sweep reports for it, so
ground-truth ``num_points`` equals the number of points on that object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numba import njit

from calibration.transform import Transform
from drivers.messages import CLASS_NAMES, GroundTruthBoxes
from drivers.sim_scene import EgoState, SceneObjects

Weather = Literal["clear", "rain", "fog", "night"]
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog", "night")

# Object index codes written by the ray-casters next to the object indices (>= 0).
HIT_GROUND = -1
HIT_SPURIOUS = -2
HIT_NONE = -3

# 32 beam elevations [deg], ascending (ring 0 = lowest). Cubic spacing law: g(u) = -1 + 17.05 (u - 0.547)
# + 89.39 (u - 0.547)^3 for u = 0 .. 1 in 32 steps, rounded to 0.01 deg.
BEAM_ELEVATIONS_DEG: tuple[float, ...] = (
    -25.0, -22.01, -19.3, -16.87, -14.68, -12.73, -11.0, -9.46, -8.1, -6.9, -5.85, -4.92, -4.1, -3.37,
    -2.71, -2.11, -1.54, -0.98, -0.43, 0.14, 0.75, 1.41, 2.15, 2.97, 3.91, 4.97, 6.17, 7.54, 9.09, 10.84,
    12.8, 15.0,
)

GT_RANGE_M = 100.0
"""Ground truth keeps a target object when its box centre is within this horizontal distance of the ego
origin at the stamp, or when the sweep has at least one point on it."""


XYZ_STEPS_PER_M = 256.0


@dataclass(frozen=True)
class LidarParams:
    """Spinning LiDAR model parameters (defaults: a 32-beam automotive unit at 10 Hz).

    Args:
        n_columns: azimuth columns per revolution (1800 = 0.2 deg steps).
        beam_elevations_deg: beam elevations [deg], ascending.
        n_blocks: ego-pose samples per sweep (block boundaries); poses are interpolated in between.
        max_range_m / min_range_m: hard range limits [m].
        range_10pct_m: range [m] at which a 10 % Lambertian target at normal incidence is detected half
            the time in clear air; sets the detection threshold.
        range_noise_m: 1-sigma range noise [m].
        dropout_prob: probability that a ray returns nothing regardless of its target.
        ground_reflectivity: reflectivity of the ground plane (asphalt) [0, 1].
    """

    n_columns: int = 1800
    beam_elevations_deg: tuple[float, ...] = BEAM_ELEVATIONS_DEG
    n_blocks: int = 25
    max_range_m: float = 120.0
    min_range_m: float = 0.5
    range_10pct_m: float = 80.0
    range_noise_m: float = 0.02
    dropout_prob: float = 0.01
    ground_reflectivity: float = 0.12

    def __post_init__(self) -> None:
        if self.n_columns < 4 or self.n_blocks < 1 or self.n_blocks > self.n_columns:
            raise ValueError(f"LidarParams: need n_columns >= 4 and 1 <= n_blocks <= n_columns, got "
                             f"{self.n_columns} columns, {self.n_blocks} blocks")
        el = np.asarray(self.beam_elevations_deg)
        if el.ndim != 1 or len(el) < 1 or np.any(np.diff(el) <= 0) or np.any(np.abs(el) >= 89.0):
            raise ValueError("LidarParams: beam_elevations_deg must be strictly ascending, within +-89 deg")
        if not 0 < self.min_range_m < self.max_range_m:
            raise ValueError(f"LidarParams: need 0 < min_range_m < max_range_m, got {self.min_range_m}, "
                             f"{self.max_range_m}")

    @property
    def n_beams(self) -> int:
        return len(self.beam_elevations_deg)


@dataclass(frozen=True)
class LidarWeather:
    """What the weather does to the LiDAR.

    Args:
        extinction_per_m: Beer-Lambert extinction coefficient alpha [1/m] (two-way loss exp(-2 alpha r)).
        spurious_prob: probability per ray of a spurious return from a drop / backscatter.
        spurious_min_m, spurious_scale_m: spurious range = min + Exponential(scale) [m].
    """

    extinction_per_m: float
    spurious_prob: float
    spurious_min_m: float
    spurious_scale_m: float


LIDAR_WEATHER: dict[str, LidarWeather] = {
    "clear": LidarWeather(0.0, 0.0, 1.0, 1.0),
    "night": LidarWeather(0.0, 0.0, 1.0, 1.0),
    # Moderate rain (~10 mm/h): small extinction, sparse drop hits within ~15 m.
    "rain": LidarWeather(0.01, 0.004, 1.0, 4.0),
    # Fog with ~80 m visibility (Koschmieder 3.9 / alpha): strong extinction, dense near backscatter.
    "fog": LidarWeather(0.05, 0.03, 0.5, 2.5),
}


class SceneLike(Protocol):
    """What the sensor models need from a scene (``drivers.sim_scene.Scene`` provides it)."""

    def ego_state(self, t_s: float) -> EgoState: ...

    def objects_world(self, t_s: float) -> SceneObjects: ...


def weather_for_lidar(weather: str) -> LidarWeather:
    """The :class:`LidarWeather` for a weather name; ValueError naming the allowed ones otherwise."""
    try:
        return LIDAR_WEATHER[weather]
    except KeyError:
        raise ValueError(f"unknown weather {weather!r} (allowed: {', '.join(WEATHERS)})") from None


def objects_in_ego(objects: SceneObjects, ego: EgoState) -> SceneObjects:
    """World-frame objects -> the ego frame of ``ego`` (positions, yaw, over-ground velocity rotated)."""
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    dx = objects.boxes[:, 0] - ego.x
    dy = objects.boxes[:, 1] - ego.y
    boxes = objects.boxes.copy()
    boxes[:, 0] = c * dx + s * dy
    boxes[:, 1] = -s * dx + c * dy
    boxes[:, 6] = (boxes[:, 6] - ego.yaw + np.pi) % (2 * np.pi) - np.pi
    v = objects.velocities
    vel = np.column_stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]])
    return SceneObjects(boxes, vel, objects.labels, objects.track_ids, objects.reflectivity,
                        objects.color, objects.siren)


def select_objects(objects: SceneObjects, keep: np.ndarray) -> SceneObjects:
    """The objects where the (N,) bool mask ``keep`` is True."""
    return SceneObjects(objects.boxes[keep], objects.velocities[keep], objects.labels[keep],
                        objects.track_ids[keep], objects.reflectivity[keep], objects.color[keep],
                        objects.siren[keep])


# ---------------------------------------------------------------------------------------------- numba core
@njit(cache=True, nogil=True)
def _ray_box(ox, oy, oz, dx, dy, dz, cx, cy, cz, hx, hy, hz, cyaw, syaw):
    """Entry distance of a unit ray into an upright box (yaw only), and |cos| of the incidence angle.

    Returns (inf, 0) on a miss or when the ray starts inside the box."""
    px = ox - cx
    py = oy - cy
    lx = cyaw * px + syaw * py
    ly = -syaw * px + cyaw * py
    lz = oz - cz
    ldx = cyaw * dx + syaw * dy
    ldy = -syaw * dx + cyaw * dy
    ldz = dz
    tmin = -np.inf
    tmax = np.inf
    cos_inc = 0.0
    for a in range(3):
        if a == 0:
            p, d, h = lx, ldx, hx
        elif a == 1:
            p, d, h = ly, ldy, hy
        else:
            p, d, h = lz, ldz, hz
        if abs(d) < 1e-12:
            if abs(p) > h:
                return np.inf, 0.0
            continue
        t1 = (-h - p) / d
        t2 = (h - p) / d
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tmin:
            tmin = t1
            cos_inc = abs(d)
        if t2 < tmax:
            tmax = t2
    if tmin > tmax or tmin <= 0.0:
        return np.inf, 0.0
    return tmin, cos_inc


@njit(cache=True, nogil=True)
def cast_rays(origins, dirs, boxes, max_range):
    """First hit of each ray against upright boxes and the ground plane z = 0.

    Args:
        origins: (R, 3) float64 [m]; dirs: (R, 3) float64 unit directions, same frame as ``boxes``.
        boxes: (N, 7) float64 x y z (centre) l w h yaw, upright (yaw only).
        max_range: hits farther than this [m] are ignored.
    Returns:
        range (R,) float64 [m] (inf when nothing is hit), object (R,) int32 (box index, HIT_GROUND or
        HIT_NONE), cos_incidence (R,) float64.
    """
    n_rays = origins.shape[0]
    n_obj = boxes.shape[0]
    rng_out = np.full(n_rays, np.inf)
    obj_out = np.full(n_rays, HIT_NONE, dtype=np.int32)
    cos_out = np.zeros(n_rays)
    cy = np.cos(boxes[:, 6])
    sy = np.sin(boxes[:, 6])
    for r in range(n_rays):
        ox, oy, oz = origins[r, 0], origins[r, 1], origins[r, 2]
        dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        best = max_range
        best_obj = HIT_NONE
        best_cos = 0.0
        if dz < -1e-12 and oz > 0.0:
            tg = -oz / dz
            if tg < best:
                best, best_obj, best_cos = tg, HIT_GROUND, -dz
        for i in range(n_obj):
            t, c = _ray_box(ox, oy, oz, dx, dy, dz, boxes[i, 0], boxes[i, 1], boxes[i, 2],
                            0.5 * boxes[i, 3], 0.5 * boxes[i, 4], 0.5 * boxes[i, 5], cy[i], sy[i])
            if t < best:
                best, best_obj, best_cos = t, i, c
        if best_obj != HIT_NONE:
            rng_out[r] = best
            obj_out[r] = best_obj
            cos_out[r] = best_cos
    return rng_out, obj_out, cos_out


@njit(cache=True, nogil=True)
def _sweep_kernel(col_az, col_w, ego_x, ego_y, ego_yaw, beam_el, mount_r, mount_t,
                  c0, c1, yaw0, dyaw, half, refl,
                  ground_refl, alpha, s_min, max_range, min_range, range_sigma, p_drop,
                  p_spur, spur_min, spur_scale, rnd_u, rnd_n,
                  out_xyz, out_int, out_obj, hits):
    """Ray-cast one sweep, column by column, in a world frame local to the sweep.

    Per column c: ego pose (ego_x, ego_y, ego_yaw)[c], objects at c0 + col_w[c] (c1 - c0) with yaw
    yaw0 + col_w[c] dyaw. Writes per ray (column-major, beam-minor) the point in the sensor frame, its
    intensity and its object code (HIT_NONE where nothing is reported); counts reported hits per object.
    """
    n_col = col_az.shape[0]
    n_beam = beam_el.shape[0]
    n_obj = c0.shape[0]
    cos_el = np.cos(beam_el)
    sin_el = np.sin(beam_el)
    cx = np.empty(n_obj)
    cy = np.empty(n_obj)
    cz = np.empty(n_obj)
    cyw = np.empty(n_obj)
    syw = np.empty(n_obj)
    rad = np.empty(n_obj)
    for i in range(n_obj):
        rad[i] = np.sqrt(half[i, 0] ** 2 + half[i, 1] ** 2) + 1e-3
    cand = np.empty(n_obj, dtype=np.int64)
    ds = np.empty((n_beam, 3))  # beam directions, sensor frame
    dw = np.empty((n_beam, 3))  # beam directions, world frame
    for c in range(n_col):
        ca, sa = np.cos(col_az[c]), np.sin(col_az[c])
        cpsi, spsi = np.cos(ego_yaw[c]), np.sin(ego_yaw[c])
        # Sensor origin in the world: ego pose applied to the mount translation.
        ox = ego_x[c] + cpsi * mount_t[0] - spsi * mount_t[1]
        oy = ego_y[c] + spsi * mount_t[0] + cpsi * mount_t[1]
        oz = mount_t[2]
        # Beam directions; the horizontal spread of the column bounds the culling error for tilted mounts.
        hx0, hy0 = 0.0, 0.0
        for b in range(n_beam):
            ds[b, 0] = cos_el[b] * ca
            ds[b, 1] = cos_el[b] * sa
            ds[b, 2] = sin_el[b]
            ex = mount_r[0, 0] * ds[b, 0] + mount_r[0, 1] * ds[b, 1] + mount_r[0, 2] * ds[b, 2]
            ey = mount_r[1, 0] * ds[b, 0] + mount_r[1, 1] * ds[b, 1] + mount_r[1, 2] * ds[b, 2]
            ez = mount_r[2, 0] * ds[b, 0] + mount_r[2, 1] * ds[b, 1] + mount_r[2, 2] * ds[b, 2]
            dw[b, 0] = cpsi * ex - spsi * ey
            dw[b, 1] = spsi * ex + cpsi * ey
            dw[b, 2] = ez
            hx0 += dw[b, 0]
            hy0 += dw[b, 1]
        hn = np.sqrt(hx0 * hx0 + hy0 * hy0)
        spread = 1.0  # sin of the largest angle between a beam's heading and the column heading
        if hn > 1e-9:
            hx0 /= hn
            hy0 /= hn
            min_cos = 1.0
            for b in range(n_beam):
                bn = np.sqrt(dw[b, 0] ** 2 + dw[b, 1] ** 2)
                if bn < 1e-9:
                    min_cos = -1.0
                    break
                cb = (dw[b, 0] * hx0 + dw[b, 1] * hy0) / bn
                if cb < min_cos:
                    min_cos = cb
            spread = 1.0 if min_cos <= 0.0 else np.sqrt(max(0.0, 1.0 - min_cos * min_cos))
        # Objects at this column's time; keep those whose footprint circle the column's rays can reach.
        w = col_w[c]
        n_cand = 0
        for i in range(n_obj):
            cx[i] = c0[i, 0] + w * (c1[i, 0] - c0[i, 0])
            cy[i] = c0[i, 1] + w * (c1[i, 1] - c0[i, 1])
            cz[i] = c0[i, 2] + w * (c1[i, 2] - c0[i, 2])
            rx = cx[i] - ox
            ry = cy[i] - oy
            along = rx * hx0 + ry * hy0
            if along < -rad[i] or along - rad[i] > max_range:
                continue
            perp = abs(rx * hy0 - ry * hx0)
            dist = np.sqrt(rx * rx + ry * ry)
            if perp > rad[i] + dist * spread:
                continue
            yw = yaw0[i] + w * dyaw[i]
            cyw[i] = np.cos(yw)
            syw[i] = np.sin(yw)
            cand[n_cand] = i
            n_cand += 1
        for b in range(n_beam):
            k = c * n_beam + b
            dx, dy, dz = dw[b, 0], dw[b, 1], dw[b, 2]
            best = np.inf
            best_obj = HIT_NONE
            best_cos = 0.0
            if dz < -1e-12 and oz > 0.0:
                best = -oz / dz
                best_obj = HIT_GROUND
                best_cos = -dz
            for j in range(n_cand):
                i = cand[j]
                t, cinc = _ray_box(ox, oy, oz, dx, dy, dz, cx[i], cy[i], cz[i],
                                   half[i, 0], half[i, 1], half[i, 2], cyw[i], syw[i])
                if t < best:
                    best, best_obj, best_cos = t, i, cinc
            out_obj[k] = HIT_NONE
            # Real return: detection by received signal, then random dropout.
            have = False
            r_meas = 0.0
            inten = 0.0
            if best_obj != HIT_NONE and best <= max_range:
                rf = ground_refl if best_obj == HIT_GROUND else refl[best_obj]
                g = rf * (0.3 + 0.7 * best_cos) * np.exp(-2.0 * alpha * best)
                signal = g / max(best * best, 1.0)
                p_det = 1.0 / (1.0 + (s_min / max(signal, 1e-30)) ** 8)
                if rnd_u[k, 0] < p_det and rnd_u[k, 1] >= p_drop:
                    r_meas = best + range_sigma * rnd_n[k, 0]
                    inten = g / (1.0 + (best / 60.0) ** 2) * (1.0 + 0.05 * rnd_n[k, 1])
                    have = r_meas >= min_range and r_meas <= max_range
            obj = best_obj
            # Spurious near return (drop / backscatter) in front of the real one hides it.
            if p_spur > 0.0 and rnd_u[k, 2] < p_spur:
                r_s = spur_min - spur_scale * np.log(max(rnd_u[k, 3], 1e-12))
                if r_s >= min_range and (not have or r_s < r_meas):
                    have = True
                    r_meas = r_s
                    inten = 0.01 + 0.03 * rnd_u[k, 3]
                    obj = HIT_SPURIOUS
            if not have:
                continue
            out_xyz[k, 0] = r_meas * ds[b, 0]
            out_xyz[k, 1] = r_meas * ds[b, 1]
            out_xyz[k, 2] = r_meas * ds[b, 2]
            out_int[k] = min(max(inten, 0.0), 1.0)
            out_obj[k] = obj
            if obj >= 0:
                hits[obj] += 1


# ---------------------------------------------------------------------------------------------- python API
@dataclass(frozen=True, eq=False)
class LidarSimResult:
    """One simulated sweep plus what produced each point.

    Args:
        points: (N, 4) float32 x y z [m] in the sensor frame at each point's firing time, intensity [0, 1].
        time_offset: (N,) float32 [s], firing time minus the sweep end time, in [-period, 0].
        ring: (N,) uint16 beam index, 0 = lowest.
        hit_object: (N,) int32 index into ``objects`` of the object each point lies on, or HIT_GROUND /
            HIT_SPURIOUS.
        objects: the objects the sweep could see, in the ego frame at the sweep end time.
        num_points: (len(objects),) int32 number of points on each object.
        t_end_s: sweep end time [s] (time of the last column).
    """

    points: np.ndarray
    time_offset: np.ndarray
    ring: np.ndarray
    hit_object: np.ndarray
    objects: SceneObjects
    num_points: np.ndarray
    t_end_s: float


def column_times(t_end_s: float, period_s: float, n_columns: int) -> np.ndarray:
    """(n_columns,) float64 firing time [s] of each column; the last column fires at ``t_end_s``."""
    return t_end_s - period_s * (n_columns - 1 - np.arange(n_columns)) / n_columns


def column_azimuths(n_columns: int) -> np.ndarray:
    """(n_columns,) float64 azimuth [rad] of each column: clockwise from the rear (+pi) round to -pi."""
    return np.pi - 2.0 * np.pi * np.arange(n_columns) / n_columns


def simulate_sweep(scene: SceneLike, t_end_s: float, period_s: float, ego_from_lidar: Transform,
                   weather: str, rng: np.random.Generator, params: LidarParams = LidarParams()
                   ) -> LidarSimResult:
    """Simulate one LiDAR revolution ending at ``t_end_s``.

    Args:
        scene: the world (ego poses and objects over time).
        t_end_s: time of the last column [s]; period_s: revolution period [s] (0.1 at 10 Hz).
        ego_from_lidar: mounting of the sensor (Transform dst "ego").
        weather: one of ``clear | rain | fog | night``.
        rng: random stream of this sensor (noise, dropouts, spurious returns).
        params: sensor model.
    Returns:
        the sweep (see :class:`LidarSimResult`); points are in column-major, ring-minor firing order.
    """
    wx = weather_for_lidar(weather)
    if period_s <= 0:
        raise ValueError(f"simulate_sweep: period_s must be > 0, got {period_s}")
    n_col, n_beam = params.n_columns, params.n_beams
    t_col = column_times(t_end_s, period_s, n_col)
    t0 = float(t_col[0])
    # Ego pose at block boundaries, interpolated per column (yaw unwrapped so interpolation is safe).
    t_blk = np.linspace(t0, t_end_s, params.n_blocks + 1)
    states = [scene.ego_state(float(t)) for t in t_blk]
    ref = scene.ego_state(t_end_s)
    bx = np.array([s.x for s in states]) - ref.x  # local world frame centred on the final ego position
    by = np.array([s.y for s in states]) - ref.y
    byaw = np.unwrap(np.array([s.yaw for s in states]))
    ego_x = np.interp(t_col, t_blk, bx)
    ego_y = np.interp(t_col, t_blk, by)
    ego_yaw = np.interp(t_col, t_blk, byaw)

    # Objects that can come within range during the sweep (static margin covers the sweep's motion).
    w1 = scene.objects_world(t_end_s)
    half_diag = 0.5 * np.hypot(w1.boxes[:, 3], w1.boxes[:, 4])
    dist = np.hypot(w1.boxes[:, 0] - ref.x, w1.boxes[:, 1] - ref.y)
    keep = dist - half_diag < params.max_range_m + np.linalg.norm(ego_from_lidar.translation) + 10.0
    w1 = select_objects(w1, keep)
    w0 = select_objects(scene.objects_world(t0), keep)
    c0 = np.ascontiguousarray(w0.boxes[:, :3]) - [ref.x, ref.y, 0.0]
    c1 = np.ascontiguousarray(w1.boxes[:, :3]) - [ref.x, ref.y, 0.0]
    yaw0 = w0.boxes[:, 6].copy()
    dyaw = (w1.boxes[:, 6] - yaw0 + np.pi) % (2 * np.pi) - np.pi
    half = np.ascontiguousarray(0.5 * w1.boxes[:, 3:6])
    col_w = (t_col - t0) / max(t_end_s - t0, 1e-12)

    n_rays = n_col * n_beam
    rnd_u = rng.random((n_rays, 4))
    rnd_n = rng.standard_normal((n_rays, 2))
    out_xyz = np.zeros((n_rays, 3), dtype=np.float32)
    out_int = np.zeros(n_rays, dtype=np.float32)
    out_obj = np.full(n_rays, HIT_NONE, dtype=np.int32)
    hits = np.zeros(len(half), dtype=np.int64)
    s_min = 0.1 / params.range_10pct_m ** 2
    _sweep_kernel(column_azimuths(n_col), col_w, ego_x, ego_y, ego_yaw,
                  np.radians(np.asarray(params.beam_elevations_deg, dtype=np.float64)),
                  np.ascontiguousarray(ego_from_lidar.rotation), np.ascontiguousarray(ego_from_lidar.translation),
                  c0, c1, yaw0, dyaw, half, w1.reflectivity.astype(np.float64),
                  params.ground_reflectivity, wx.extinction_per_m, s_min, params.max_range_m,
                  params.min_range_m, params.range_noise_m, params.dropout_prob,
                  wx.spurious_prob, wx.spurious_min_m, wx.spurious_scale_m, rnd_u, rnd_n,
                  out_xyz, out_int, out_obj, hits)
    valid = out_obj != HIT_NONE
    points = np.empty((int(valid.sum()), 4), dtype=np.float32)
    # Output resolution of the simulated driver: coordinates on a 1/256 m (3.9 mm) grid, intensity in 8 bits,
    # as real sensors report (2-4 mm range units, 8-bit reflectivity). Far below the 2 cm range noise, and
    # it makes recordings compress about 2x better.
    points[:, :3] = np.round(out_xyz[valid] * XYZ_STEPS_PER_M) / XYZ_STEPS_PER_M
    points[:, 3] = np.round(out_int[valid] * 255.0) / 255.0
    col_of_ray = np.repeat(np.arange(n_col), n_beam)[valid]
    time_offset = (t_col[col_of_ray] - t_end_s).astype(np.float32)
    ring = np.tile(np.arange(n_beam, dtype=np.uint16), n_col)[valid]
    return LidarSimResult(points, time_offset, ring, out_obj[valid], objects_in_ego(w1, ref),
                          hits.astype(np.int32), float(t_end_s))


def ground_truth_boxes(result: LidarSimResult, sensor_id: str, stamp_ns: int, seq: int,
                       gt_range_m: float = GT_RANGE_M) -> GroundTruthBoxes:
    """Ground truth paired with a sweep: target objects (labels >= 0) in the ego frame at the sweep end.

    Keeps a target when its centre is within ``gt_range_m`` of the ego origin or it has >= 1 point.
    ``num_points`` is the exact number of the sweep's points on the object.
    """
    o = result.objects
    near = np.hypot(o.boxes[:, 0], o.boxes[:, 1]) <= gt_range_m
    keep = (o.labels >= 0) & (near | (result.num_points > 0))
    return GroundTruthBoxes(
        sensor_id=sensor_id, stamp_ns=int(stamp_ns), seq=int(seq),
        boxes=o.boxes[keep].astype(np.float64), velocities=o.velocities[keep].astype(np.float64),
        labels=o.labels[keep].astype(np.int32), track_ids=o.track_ids[keep].astype(np.int32),
        siren=o.siren[keep] > 0, num_points=result.num_points[keep].astype(np.int32),
        class_names=CLASS_NAMES,
    )
