"""Simulated cameras: ray-cast renderer of the simulated world (drivers/sim_scene.py) with weather.

Every output pixel takes its viewing ray from :meth:`CameraModel.unproject` (so pinhole distortion and
fisheye projection are exact), rotated into the ego frame, and intersected with the ground plane (z = 0)
and with every box-shaped part of every object; the nearest hit wins, so depth order is correct by
construction. Objects are drawn as a few boxes each (car: body + cabin; truck: cab + cargo box;
pedestrian: legs, torso, arms, head; bicycle: wheels, frame, rider; pole with lamp arm; wall; building)
with class-typical textures: windows, wheels, lights, emergency light bars flashing red/blue.

The ground is shaded from road coordinates (s, d) of the hit point (:func:`road_coordinates`): lanes at
d = -3.5, 0, 3.5, 7.0 m (d = 0 is the ego lane), dashed white lines between same-direction lanes, a double
yellow centre line between the directions, solid white edge lines, a parking strip on the right, curbs,
sidewalks (paving joints) and grass beyond, all with world-fixed texture noise.

Lighting happens in linear radiance: a sun fixed in the world (with shadows cast by the boxes), sky
ambient, and at night street lamps and the ego's low beams; lamps, headlights, tail lights and light bars
are emissive and bloom. Weather (``clear | rain | fog | night``):
  * fog: Koschmieder's law, radiance L = L0 exp(-beta r) + A (1 - exp(-beta r)) with beta = 3.912 / V
    (visibility V = 60 m) and a grey airlight A; the sky is the airlight.
  * rain: overcast (no sun, darker sky), extinction for V = 500 m, wet road (darker, mirrors the sky,
    puddles), veiling glare from water on the lens cover (20 % of the light spread evenly: lower
    contrast), streaks on the image and drops on the lens (each shows an inverted, blurred scene),
    more noise.
  * night: dark sky with a faint light-pollution glow, street lamps and headlights lighting the ground,
    a higher sensor gain with strong noise.
  * clear: sun, clouds, a little haze toward the horizon (V = 8 km), small noise.
Sensor noise is added in linear space (read noise + shot noise) before the sRGB curve, from a
counter-based hash of the pixel index keyed by one draw from the caller's ``rng`` (rain also draws its
streaks and drops from it): the same rng state gives the same image, and the rest of the rendering is a
pure function of the scene and the time.

Edges are anti-aliased adaptively: pixels whose hit part differs from a neighbour's, or whose brightness
jumps on an object, get three more rays on a triangle 0.3 px around the centre (rays interpolated from
the neighbouring pixel rays) and the four are averaged; lane lines, dashes and paving joints are filtered
analytically by the pixel's footprint on the ground instead.

Performance: rays and per-tile view cones are cached per camera model; boxes are culled per 16x16 tile by
cone/bounding-sphere tests, so each pixel only tests the few boxes that can cover it. The kernels are numba
(``cache=True, nogil=True``) single-threaded, so several cameras can render in parallel threads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numba as nb
import numpy as np

from calibration.camera import CameraModel
from calibration.transform import FrameMismatchError, Transform
from drivers.messages import CLASS_NAMES
from drivers.sim_scene import LABEL_BUILDING, LABEL_POLE, LABEL_WALL, LANE_WIDTH_M, Scene, SceneObjects

WEATHERS: tuple[str, ...] = ("clear", "rain", "fog", "night")
EGO_FRAME = "ego"
RENDER_RANGE_M = 250.0  # objects further than this are not drawn (haze hides them in clear weather)
TILE = 16  # pixels per culling tile side
FOG_VISIBILITY_M = 60.0
RAIN_VISIBILITY_M = 500.0
RAIN_VEIL = 0.2  # fraction of the light the wet lens spreads evenly over the image
CLEAR_VISIBILITY_M = 8000.0
KOSCHMIEDER = 3.912  # -ln(0.02): visibility is where contrast falls to 2 %

# Road cross-section, lateral offset d [m] (+ left), d = 0 the centre of the ego lane.
_HALF_LANE = LANE_WIDTH_M / 2
ROAD_RIGHT_EDGE_D = -LANE_WIDTH_M - _HALF_LANE  # solid white edge line, parking strip beyond
ROAD_LEFT_EDGE_D = 2 * LANE_WIDTH_M + _HALF_LANE
CURB_RIGHT_D = -7.5
CURB_LEFT_D = 10.5
SIDEWALK_RIGHT_D = -11.75
SIDEWALK_LEFT_D = 14.0

# Materials of box parts.
MAT_BODY, MAT_CABIN, MAT_TRUCK_CAB, MAT_CARGO, MAT_LIGHTBAR = 0, 1, 2, 3, 4
MAT_SKIN, MAT_CLOTH, MAT_TROUSERS, MAT_TYRE, MAT_FRAME = 5, 6, 7, 8, 9
MAT_POLE, MAT_LAMP, MAT_WALL, MAT_BUILDING = 10, 11, 12, 13

# Columns of the packed part table handed to the kernel.
_P_COS, _P_SIN = 6, 7  # after centre x y z (0-2) and half length/width/height (3-5)
_P_ALB = 8  # 3: linear albedo
_P_MAT = 11
_P_SEED = 12
_P_FLAG = 13
_P_OWNER = 14  # index of the object the part belongs to
_P_SIZE = 15
_L_SIZE = 12  # columns of a light (see _lights)

# Hit codes in the per-pixel hit map (object parts are >= 0).
HIT_SKY = -2
HIT_GROUND = -1

# Fast-math flags for the ray-casting kernels: no 'nnan' / 'ninf', NaN marks invalid rays.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Indices into the weather/lighting parameter vector handed to the kernels.
_W_SUN = 0  # 3: sun direction, ego frame (unit, pointing to the sun)
_W_SUNCOL = 3  # 3: sun irradiance (linear rgb), zero when overcast or at night
_W_AMB = 6  # 3: sky ambient irradiance
_W_ZEN = 9  # 3: sky radiance at the zenith
_W_HOR = 12  # 3: sky radiance at the horizon
_W_AIR = 15  # 3: airlight radiance (what the fog/haze tends to)
_W_BETA = 18  # extinction coefficient [1/m]
_W_WET = 19  # 0..1 wet road
_W_NIGHT = 20  # 1 at night (emissive lights on, windows lit)
_W_SKYFOG = 21  # how much of the airlight replaces the sky (1 in fog)
_W_CLOUD = 22  # cloud cover 0..1
_W_SUNDISK = 23  # sun disk radiance (0: hidden)
_W_FLASH = 24  # light-bar phase: 0 or 1
_W_EGOX = 25  # ego world x [m] (world-fixed clouds)
_W_EGOY = 26
_W_EGOCOS = 27  # cos and sin of the ego yaw in the world
_W_EGOSIN = 28
_W_SEED = 29  # scene texture seed (windows lit, skin tones)
_W_SIZE = 30


@dataclass(frozen=True, eq=False)
class RoadView:
    """The road centreline near the ego at one instant, sampled every ``step`` metres of arclength,
    in the ego frame at that instant.

    Args:
        s_start: arclength of the first sample [m] (absolute, as the scene's road).
        step: sample spacing [m].
        x, y: (K,) float64 centreline [m], ego frame.
        heading: (K,) float64 centreline direction [rad] CCW from ego +x.
        curvature: (K,) float64 [1/m], positive turning left.
        ego_x_world, ego_y_world, ego_yaw_world: ego pose in the world frame [m, m, rad] (to keep
            sun and clouds fixed in the world).
        seed: the scene's seed (world-fixed textures).
    """

    s_start: float
    step: float
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    curvature: np.ndarray
    ego_x_world: float
    ego_y_world: float
    ego_yaw_world: float
    seed: int


def road_view(scene: Scene, t_s: float, behind_m: float = 150.0, ahead_m: float = 320.0,
              step_m: float = 0.5) -> RoadView:
    """The road around the ego at time ``t_s`` [s], from ``behind_m`` behind to ``ahead_m`` ahead [m]."""
    ego = scene.ego_state(t_s)
    s_ego = scene.ego_s(t_s)
    s = np.arange(s_ego - behind_m, s_ego + ahead_m + step_m, step_m)
    x, y, h, k = scene.road.pose(s)
    c, sn = math.cos(ego.yaw), math.sin(ego.yaw)
    dx, dy = x - ego.x, y - ego.y
    return RoadView(
        s_start=float(s[0]), step=float(step_m),
        x=np.ascontiguousarray(c * dx + sn * dy), y=np.ascontiguousarray(-sn * dx + c * dy),
        heading=np.ascontiguousarray(h - ego.yaw), curvature=np.ascontiguousarray(k, dtype=np.float64),
        ego_x_world=ego.x, ego_y_world=ego.y, ego_yaw_world=ego.yaw, seed=scene.seed,
    )


def road_coordinates(view: RoadView, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map ego-frame ground points to road coordinates.

    Args:
        view: the road near the ego (:func:`road_view`).
        xy: (N, 2) [m] points on the ground, ego frame.
    Returns:
        s: (N,) float64 arclength [m]; d: (N,) float64 lateral offset [m], + left, 0 on the ego lane's
        centre; ok: (N,) bool, the point projects inside the sampled stretch of road.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"road_coordinates expects (N, 2) ego-frame points, got shape {xy.shape}")
    n = len(xy)
    s, d = np.empty(n), np.empty(n)
    ok = np.empty(n, dtype=np.bool_)
    table = _road_table(view)
    for i in range(n):
        s[i], d[i], _, _, ok[i], _ = _road_sd(xy[i, 0], xy[i, 1], table, view.s_start, view.step, -1.0)
    return s, d, ok


def _road_table(view: RoadView) -> np.ndarray:
    """(K, 5) float64 centreline samples for the kernels: x, y, cos(heading), sin(heading), curvature."""
    return np.ascontiguousarray(np.column_stack(
        [view.x, view.y, np.cos(view.heading), np.sin(view.heading), view.curvature]))


# ---------------------------------------------------------------------------------------------- public


@dataclass(frozen=True, eq=False)
class CameraRender:
    """One rendered camera frame with its ground truth.

    Args:
        image: (H, W, 3) uint8 RGB, row 0 at the top.
        depth: (H, W) float32 [m] depth along the optical axis (camera z) of what each pixel centre sees;
            inf for the sky and for pixels without a valid ray.
        object_index: (H, W) int32 index into the SceneObjects that was rendered, -1 ground, -2 sky.
    """

    image: np.ndarray
    depth: np.ndarray
    object_index: np.ndarray


def render_camera(scene: Scene, t_s: float, camera: CameraModel, ego_from_camera: Transform,
                  weather: str, rng: np.random.Generator) -> np.ndarray:
    """Render what ``camera`` sees at time ``t_s``.

    Args:
        scene: the simulated world.
        t_s: exposure time [s] since the start of the drive; objects and ego are evaluated there.
        camera: intrinsics (pinhole with distortion, or fisheye).
        ego_from_camera: Transform(dst="ego", src=<camera optical frame>) (z forward, x right, y down).
        weather: one of ``WEATHERS``.
        rng: draws the sensor noise (one integer per image); the same state gives the same image.
    Returns:
        (H, W, 3) uint8 RGB image.
    """
    objects = scene.objects_at(t_s, max_range=RENDER_RANGE_M)
    return render_objects(objects, road_view(scene, t_s), t_s, camera, ego_from_camera, weather, rng).image


def render_objects(objects: SceneObjects, road: RoadView, t_s: float, camera: CameraModel,
                   ego_from_camera: Transform, weather: str, rng: np.random.Generator) -> CameraRender:
    """Render a given set of objects over the road (the lower level of :func:`render_camera`).

    Args:
        objects: boxes in the ego frame at ``t_s`` (any subset of ``Scene.objects_at``, or built by hand).
        road: the road near the ego at ``t_s`` (:func:`road_view`).
        t_s: time [s] (light-bar flashing, pedestrians' gait).
        camera, ego_from_camera, weather, rng: as :func:`render_camera`.
    Returns:
        CameraRender with the image, depth map and per-pixel object index.
    """
    if weather not in WEATHERS:
        raise ValueError(f"weather must be one of {', '.join(WEATHERS)}; got {weather!r}")
    if ego_from_camera.dst != EGO_FRAME:
        raise FrameMismatchError(
            f"render_camera needs ego_from_camera with dst='{EGO_FRAME}', got {ego_from_camera.name}")
    cache = _camera_cache(camera)
    R = np.ascontiguousarray(ego_from_camera.rotation)
    origin = np.ascontiguousarray(ego_from_camera.translation)
    if origin[2] <= 0.0:
        raise ValueError(f"camera {ego_from_camera.src} is at height {origin[2]:.3f} m; it must be above "
                         "the ground (z > 0 in the ego frame)")
    noise_key = int(rng.integers(0, 2**62))
    wp, exposure, read_noise, shot_noise = _weather_params(weather, t_s, road)
    parts = _build_parts(objects, road, t_s)
    lights = _lights(parts, weather)

    # Bounding spheres of the parts (and of their sun-shadow volumes) in the camera frame, for culling.
    centres = parts[:, 0:3]
    radii = np.sqrt((parts[:, 3:6] ** 2).sum(axis=1))
    sun = wp[_W_SUN:_W_SUN + 3]
    shadow_len = centres[:, 2] / max(sun[2], 0.05)
    ground_pt = centres - sun[None, :] * shadow_len[:, None]
    sh_centres = 0.5 * (centres + ground_pt)
    sh_radii = radii + 0.5 * np.linalg.norm(centres - ground_pt, axis=1)
    cam_c = (centres - origin) @ R
    cam_sh = (sh_centres - origin) @ R
    off, idx = _tile_lists(cache.tile_axis, cache.tile_half, cam_c, radii)
    no_list = (np.zeros(len(cache.tile_half) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    sh_off, sh_idx = no_list
    if wp[_W_SUNCOL:_W_SUNCOL + 3].max() > 0.0:
        sh_off, sh_idx = _tile_lists(cache.tile_axis, cache.tile_half, cam_sh, sh_radii)
    # Lights reach only their range: a tile lists the lights whose sphere of influence its cone meets.
    li_off, li_idx = no_list
    if len(lights):
        li_off, li_idx = _tile_lists(cache.tile_axis, cache.tile_half, (lights[:, 0:3] - origin) @ R,
                                     np.ascontiguousarray(lights[:, 11]))

    H, W = camera.height, camera.width
    hdr = np.empty((H, W, 3), dtype=np.float32)
    depth = np.empty((H, W), dtype=np.float32)
    object_index = np.empty((H, W), dtype=np.int32)
    lists = np.concatenate([idx, sh_idx, li_idx])
    env = np.concatenate([wp, lights.ravel()])
    peak = _render(cache.rays, cache.pix_angle, R, origin, off, sh_off + len(idx),
                   li_off + len(idx) + len(sh_idx), lists, parts, _road_table(road), road.s_start, road.step,
                   env, _NOISE_TEX, _EXP_LUT, hdr, depth, object_index)

    # Bloom: light scattered in the lens around anything brighter than white.
    if peak * exposure > 1.0:
        bright = np.maximum(hdr * np.float32(exposure) - 1.0, 0.0)
        small = cv2.resize(bright, (max(W // 4, 1), max(H // 4, 1)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 2.0)
        hdr += cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR) * np.float32(0.35 / exposure)
    if weather == "rain":
        # Water on the lens cover scatters part of the light over the whole image (veiling glare).
        mean = hdr.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        hdr *= np.float32(1.0 - RAIN_VEIL)
        hdr += np.float32(RAIN_VEIL) * mean
        _rain_overlay(hdr, rng, wp)
    image = np.empty((H, W, 3), dtype=np.uint8)
    _finish(hdr, np.float32(exposure), np.float32(read_noise), np.float32(shot_noise),
            np.uint64(noise_key), _SRGB_LUT, image)
    return CameraRender(image=image, depth=depth, object_index=object_index)


# ------------------------------------------------------------------------------------ camera cache


@dataclass(frozen=True, eq=False)
class _CameraCache:
    rays: np.ndarray  # (H, W, 3) float64 unit rays, camera frame (NaN where unprojection fails)
    pix_angle: np.ndarray  # (H, W) float64 [rad] angle subtended by one pixel
    tile_axis: np.ndarray  # (T, 3) unit cone axes, camera frame
    tile_half: np.ndarray  # (T,) cone half-angles [rad]


@functools.lru_cache(maxsize=16)
def _camera_cache(camera: CameraModel) -> _CameraCache:
    H, W = camera.height, camera.width
    vv, uu = np.mgrid[0:H, 0:W]
    uv = np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float64)
    rays = camera.unproject(uv)
    # Check the inverse: a ray that does not project back onto its pixel (strong distortion beyond its
    # valid range, fisheye beyond 90 degrees) is marked invalid rather than drawn at the wrong place.
    back, valid = camera.project(rays)
    err = np.where(valid, np.hypot(*(back - uv).T), np.inf)
    rays = rays / np.linalg.norm(rays, axis=1, keepdims=True)
    rays[~(err < 0.05)] = np.nan
    rays = np.ascontiguousarray(rays.reshape(H, W, 3))
    # Pixel footprint: angle to the right / lower neighbour (edge pixels copy their neighbour).
    ang = np.full((H, W), np.nan)
    dots_u = np.clip((rays[:, 1:] * rays[:, :-1]).sum(-1), -1, 1)
    dots_v = np.clip((rays[1:] * rays[:-1]).sum(-1), -1, 1)
    au = np.arccos(dots_u)
    av = np.arccos(dots_v)
    ang[:, :-1] = au
    ang[:, -1] = au[:, -1] if W > 1 else 1.0 / camera.fx
    ang[:-1] = np.fmax(ang[:-1], av)
    ang = np.where(np.isfinite(ang), ang, 1.0 / camera.fx)
    axis, half = _tile_cones(rays, TILE)
    for arr in (rays, ang, axis, half):
        arr.flags.writeable = False
    return _CameraCache(rays=rays, pix_angle=np.ascontiguousarray(ang), tile_axis=axis, tile_half=half)


@nb.njit(cache=True, nogil=True)
def _tile_cones(rays, tile):
    """Per tile: unit axis and half-angle of a cone containing the rays of the tile and of a one-pixel
    ring around it (sub-pixel rays used for anti-aliasing stay inside)."""
    H, W = rays.shape[0], rays.shape[1]
    ty_n = (H + tile - 1) // tile
    tx_n = (W + tile - 1) // tile
    axis = np.zeros((ty_n * tx_n, 3))
    half = np.zeros(ty_n * tx_n)
    for ty in range(ty_n):
        for tx in range(tx_n):
            k = ty * tx_n + tx
            v0, v1 = max(ty * tile - 1, 0), min((ty + 1) * tile + 1, H)
            u0, u1 = max(tx * tile - 1, 0), min((tx + 1) * tile + 1, W)
            sx = 0.0
            sy = 0.0
            sz = 0.0
            for v in range(v0, v1):
                for u in range(u0, u1):
                    if rays[v, u, 0] == rays[v, u, 0]:
                        sx += rays[v, u, 0]
                        sy += rays[v, u, 1]
                        sz += rays[v, u, 2]
            n = math.sqrt(sx * sx + sy * sy + sz * sz)
            if n < 1e-12:
                axis[k, 2] = 1.0
                half[k] = -1.0  # no valid ray: nothing to test
                continue
            ax, ay, az = sx / n, sy / n, sz / n
            mx = 0.0
            for v in range(v0, v1):
                for u in range(u0, u1):
                    if rays[v, u, 0] == rays[v, u, 0]:
                        c = ax * rays[v, u, 0] + ay * rays[v, u, 1] + az * rays[v, u, 2]
                        a = math.acos(min(max(c, -1.0), 1.0))
                        if a > mx:
                            mx = a
            axis[k, 0], axis[k, 1], axis[k, 2] = ax, ay, az
            half[k] = mx + 1e-3
    return axis, half


@nb.njit(cache=True, nogil=True)
def _tile_lists(axis, half, centres, radii):
    """CSR lists (offsets (T+1,), indices) of the spheres (centres (P, 3) camera frame, radii (P,))
    each tile's view cone may touch: angle(axis, centre) <= half-angle + angular radius."""
    T = axis.shape[0]
    P = centres.shape[0]
    ux = np.empty(P)
    uy = np.empty(P)
    uz = np.empty(P)
    ang = np.empty(P)
    ca = np.empty(P)
    sa = np.empty(P)
    inside = np.zeros(P, dtype=np.bool_)
    for p in range(P):
        d = math.sqrt(centres[p, 0] ** 2 + centres[p, 1] ** 2 + centres[p, 2] ** 2)
        if d <= radii[p] * 1.0001:
            inside[p] = True  # the camera is inside the sphere
            d = max(d, 1e-9)
        ux[p] = centres[p, 0] / d
        uy[p] = centres[p, 1] / d
        uz[p] = centres[p, 2] / d
        a = math.asin(min(radii[p] / d, 1.0))
        ang[p] = a
        ca[p] = math.cos(a)
        sa[p] = math.sin(a)
    touch = np.zeros((T, P), dtype=np.bool_)
    off = np.zeros(T + 1, dtype=np.int64)
    for k in range(T):
        n = 0
        if half[k] >= 0.0:
            ch = math.cos(half[k])
            shh = math.sin(half[k])
            for p in range(P):
                c = axis[k, 0] * ux[p] + axis[k, 1] * uy[p] + axis[k, 2] * uz[p]
                # cos(half + a) = cos(half) cos(a) - sin(half) sin(a); beyond pi everything touches.
                if inside[p] or half[k] + ang[p] >= math.pi or c >= ch * ca[p] - shh * sa[p]:
                    touch[k, p] = True
                    n += 1
        off[k + 1] = off[k] + n
    idx = np.empty(off[T], dtype=np.int64)
    j = 0
    for k in range(T):
        for p in range(P):
            if touch[k, p]:
                idx[j] = p
                j += 1
    return off, idx


# ------------------------------------------------------------------------------------------ weather


def _srgb_lut() -> np.ndarray:
    """uint8 sRGB value for sqrt(linear) sampled at 4096 steps (sqrt keeps the dark end fine)."""
    x = (np.arange(4096) / 4095.0) ** 2
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8)


_SRGB_LUT = _srgb_lut()
_TEX_SIZE = 256  # noise texture side [texels], a power of two (wrap by masking)
_EXP_STEPS = 64  # exp table samples per unit of optical depth
_EXP_MAX = 24.0  # optical depth beyond which the transmittance is taken as 0


def _noise_texture() -> np.ndarray:
    """(256, 256) float64 tileable smooth noise in [0, 1] (two octaves of periodically blurred white
    noise, fixed seed): sampled bilinearly it replaces per-pixel lattice hashing for smooth textures."""
    white = np.random.default_rng(20240611).standard_normal((_TEX_SIZE, _TEX_SIZE))
    f = np.fft.fftfreq(_TEX_SIZE)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    spec = np.fft.fft2(white)
    tex = np.zeros((_TEX_SIZE, _TEX_SIZE))
    for sigma, weight in ((6.0, 0.65), (2.0, 0.35)):
        layer = np.fft.ifft2(spec * np.exp(-2 * (np.pi * sigma) ** 2 * f2)).real
        tex += weight * layer / layer.std()
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return np.ascontiguousarray(tex)


_NOISE_TEX = _noise_texture()
_EXP_LUT = np.exp(-np.arange(int(_EXP_MAX * _EXP_STEPS) + 2) / _EXP_STEPS)


def _linear(rgb) -> np.ndarray:
    """sRGB uint8 colour(s) -> linear float64 in [0, 1]."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _weather_params(weather: str, t_s: float, road: RoadView) -> tuple[np.ndarray, float, float, float]:
    """Lighting vector for the kernels, plus exposure, read noise and shot-noise factor (linear units)."""
    wp = np.zeros(_W_SIZE)
    # Sun fixed in the world: azimuth 150 deg CCW from world +x, elevation 38 deg.
    az = math.radians(150.0) - road.ego_yaw_world
    el = math.radians(38.0)
    wp[_W_SUN:_W_SUN + 3] = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    wp[_W_FLASH] = 1.0 if (t_s * 3.0) % 1.0 < 0.5 else 0.0  # light bar alternates at 3 Hz
    wp[_W_EGOX], wp[_W_EGOY] = road.ego_x_world, road.ego_y_world
    wp[_W_EGOCOS], wp[_W_EGOSIN] = math.cos(road.ego_yaw_world), math.sin(road.ego_yaw_world)
    wp[_W_SEED] = float(road.seed % 100003)
    if weather == "clear":
        wp[_W_SUNCOL:_W_SUNCOL + 3] = (2.9, 2.75, 2.5)
        wp[_W_AMB:_W_AMB + 3] = (0.42, 0.50, 0.66)
        wp[_W_ZEN:_W_ZEN + 3] = (0.16, 0.34, 0.95)
        wp[_W_HOR:_W_HOR + 3] = (0.95, 1.05, 1.25)
        wp[_W_AIR:_W_AIR + 3] = (0.95, 1.05, 1.25)
        wp[_W_BETA] = KOSCHMIEDER / CLEAR_VISIBILITY_M
        wp[_W_CLOUD] = 0.35
        wp[_W_SUNDISK] = 60.0
        return wp, 0.5, 0.002, 0.0003
    if weather == "rain":
        wp[_W_AMB:_W_AMB + 3] = (0.55, 0.57, 0.62)
        wp[_W_ZEN:_W_ZEN + 3] = (0.34, 0.355, 0.385)
        wp[_W_HOR:_W_HOR + 3] = (0.52, 0.54, 0.57)
        wp[_W_AIR:_W_AIR + 3] = (0.48, 0.50, 0.53)
        wp[_W_BETA] = KOSCHMIEDER / RAIN_VISIBILITY_M
        wp[_W_WET] = 1.0
        wp[_W_SKYFOG] = 0.3
        return wp, 0.75, 0.006, 0.0015
    if weather == "fog":
        wp[_W_AMB:_W_AMB + 3] = (1.05, 1.07, 1.10)
        wp[_W_ZEN:_W_ZEN + 3] = (1.2, 1.2, 1.25)
        wp[_W_HOR:_W_HOR + 3] = (1.2, 1.2, 1.25)
        wp[_W_AIR:_W_AIR + 3] = (1.2, 1.2, 1.24)
        wp[_W_BETA] = KOSCHMIEDER / FOG_VISIBILITY_M
        wp[_W_SKYFOG] = 1.0
        wp[_W_WET] = 0.3
        return wp, 0.55, 0.003, 0.0008
    # night
    wp[_W_AMB:_W_AMB + 3] = (0.004, 0.005, 0.008)
    wp[_W_ZEN:_W_ZEN + 3] = (0.0015, 0.002, 0.005)
    wp[_W_HOR:_W_HOR + 3] = (0.012, 0.009, 0.007)
    wp[_W_AIR:_W_AIR + 3] = (0.008, 0.007, 0.006)
    wp[_W_BETA] = KOSCHMIEDER / 4000.0
    wp[_W_NIGHT] = 1.0
    return wp, 3.0, 0.012, 0.004


# ------------------------------------------------------------------------------------ object parts


_SKIN = _linear([[224, 172, 140], [198, 134, 96], [141, 85, 54], [236, 188, 160]]).tolist()
_TROUSERS = _linear([[40, 42, 62], [28, 28, 30], [72, 72, 80], [62, 52, 40]]).tolist()
_CARGO_WHITE = _linear([225, 225, 220]).tolist()
_BIKE_FRAME = _linear([30, 30, 35]).tolist()
_CAR = CLASS_NAMES.index("car")
_TRUCK = CLASS_NAMES.index("truck")
_PED = CLASS_NAMES.index("pedestrian")
_BIKE = CLASS_NAMES.index("bicycle")


def _build_parts(objects: SceneObjects, road: RoadView, t_s: float) -> np.ndarray:
    """Split every object box into the box parts that give its class its look.

    Returns:
        (P, _P_SIZE) float64 packed parts, ego frame: centre x y z [m], half length/width/height [m],
        cos and sin of the yaw, linear albedo rgb, material, texture seed, flag (emergency livery /
        lamp / hand), owning object index.
    """
    rows: list[tuple] = []
    boxes = objects.boxes.tolist()
    colors = _linear(objects.color).tolist()
    labels = objects.labels.tolist()
    tracks = objects.track_ids.tolist()
    sirens = objects.siren.tolist()
    speeds = np.hypot(objects.velocities[:, 0], objects.velocities[:, 1]).tolist()
    table = _road_table(road)
    for i in range(len(boxes)):
        x, y, z, L, Wd, Hh, yaw = boxes[i]
        label = labels[i]
        base = colors[i]
        seed = float(tracks[i] * 7919 % 100003)
        siren = sirens[i] > 0
        c, s = math.cos(yaw), math.sin(yaw)
        z_ground = z - Hh / 2

        def add(px, py, pz, length, width, height, material, rgb, flag=0.0):
            """One part: (px, py) object-local centre [m] (x forward), pz height of its bottom [m]."""
            rows.append((x + c * px - s * py, y + s * px + c * py, z_ground + pz + height / 2, length / 2,
                         width / 2, height / 2, c, s, rgb[0], rgb[1], rgb[2], material, seed, flag, i))

        if label == _CAR:
            add(0.0, 0.0, 0.0, L, Wd, 0.52 * Hh, MAT_BODY, base, float(siren))
            add(-0.06 * L, 0.0, 0.52 * Hh, 0.5 * L, 0.86 * Wd, 0.48 * Hh, MAT_CABIN, base)
            if siren:
                add(-0.06 * L, 0.0, Hh, 0.28, 0.8 * Wd, 0.11, MAT_LIGHTBAR, base)
        elif label == _TRUCK:
            cab = min(2.3, 0.35 * L)
            cargo = L - cab - 0.15
            cargo_rgb = base if siren else [v * (0.7 + 0.3 * (seed % 7) / 6) for v in _CARGO_WHITE]
            add(L / 2 - cab / 2, 0.0, 0.0, cab, Wd, 0.78 * Hh, MAT_TRUCK_CAB, base, float(siren))
            add(-L / 2 + cargo / 2, 0.0, 0.0, cargo, Wd, Hh, MAT_CARGO, cargo_rgb, float(siren))
            if siren:
                add(L / 2 - cab / 2, 0.0, 0.78 * Hh, 0.3, 0.8 * Wd, 0.12, MAT_LIGHTBAR, base)
        elif label == _PED:
            # Legs and arms swing with the gait (0.9 strides per second when walking).
            swing = 0.16 * min(speeds[i] / 1.3, 1.0) * math.sin(2 * math.pi * 0.9 * t_s + seed)
            skin = _SKIN[int(seed) % len(_SKIN)]
            trousers = _TROUSERS[int(seed) // 5 % len(_TROUSERS)]
            depth, leg_w, arm_y = 0.33 * L, 0.27 * Wd, 0.35 * Wd + 0.05
            add(swing, 0.5 * leg_w, 0.0, depth, leg_w, 0.47 * Hh, MAT_TROUSERS, trousers)
            add(-swing, -0.5 * leg_w, 0.0, depth, leg_w, 0.47 * Hh, MAT_TROUSERS, trousers)
            add(0.0, 0.0, 0.47 * Hh, 0.43 * L, 0.7 * Wd, 0.35 * Hh, MAT_CLOTH, base)
            for sgn in (1.0, -1.0):
                add(-sgn * swing * 0.6, sgn * arm_y, 0.45 * Hh, 0.1, 0.09, 0.36 * Hh, MAT_CLOTH, base, 1.0)
            add(0.0, 0.0, 0.85 * Hh, 0.21, 0.17, 0.15 * Hh, MAT_SKIN, skin)
        elif label == _BIKE:
            wheel = min(0.7, 0.42 * Hh)
            for sgn in (1.0, -1.0):
                add(sgn * (L / 2 - wheel / 2), 0.0, 0.0, wheel, 0.05, wheel, MAT_TYRE, _BIKE_FRAME)
            add(0.0, 0.0, 0.42 * wheel + 0.05, L - 2 * wheel + 0.3, 0.06, 0.35 * wheel, MAT_FRAME, _BIKE_FRAME)
            add(-0.1, 0.0, 0.55 * Hh - 0.35, 0.3, 0.3, 0.35, MAT_TROUSERS, _TROUSERS[int(seed) % 4])
            add(-0.05, 0.0, 0.55 * Hh, 0.34, 0.4, 0.32 * Hh, MAT_CLOTH, base)
            add(0.08, 0.0, 0.87 * Hh, 0.21, 0.18, 0.13 * Hh, MAT_SKIN, _SKIN[int(seed) % 4])
        elif label == LABEL_POLE:
            add(0.0, 0.0, 0.0, L, Wd, Hh, MAT_POLE, base)
            # Lamp arm reaching over the road: toward the road centre (the sign of -d of the pole).
            _, d_pole, _, _, ok, _ = _road_sd(x, y, table, road.s_start, road.step, -1.0)
            toward = -1.0 if (ok and d_pole > 0) else 1.0  # local +y is road-left when yaw = road heading
            arm = 1.8
            add(0.0, toward * arm / 2, Hh - 0.12, 0.12, arm, 0.1, MAT_POLE, base)
            add(0.0, toward * (arm + 0.2), Hh - 0.2, 0.35, 0.6, 0.16, MAT_LAMP, base, 1.0)
        elif label == LABEL_WALL:
            add(0.0, 0.0, 0.0, L, Wd, Hh, MAT_WALL, base)
        elif label == LABEL_BUILDING:
            add(0.0, 0.0, 0.0, L, Wd, Hh, MAT_BUILDING, base)
        else:  # unknown label: a plain box, still occludes correctly
            add(0.0, 0.0, 0.0, L, Wd, Hh, MAT_POLE, base)
    if not rows:
        return np.zeros((0, _P_SIZE))
    return np.ascontiguousarray(np.array(rows, dtype=np.float64))


def _lights(parts: np.ndarray, weather: str) -> np.ndarray:
    """(NL, _L_SIZE) light sources lighting the scene at night: position (3) [m] ego frame, intensity
    rgb (3), spot direction (3) (zero: omnidirectional downward lamp), cos of inner and outer cone angle,
    range [m] (the inverse-square falloff is windowed to reach zero there, so lights can be culled)."""
    if weather != "night":
        return np.zeros((0, _L_SIZE))
    rows = []
    for g in parts[parts[:, _P_MAT] == MAT_LAMP]:
        # A street lamp: a downward hemisphere source just below the lamp head.
        rows.append((g[0], g[1], g[2] - g[5] - 0.05, 9.0, 7.6, 5.4, 0.0, 0.0, -1.0, 0.0, -0.2, 35.0))
    # Ego low beams: two spots at the front bumper, aimed slightly down, cut off above the horizon.
    for y in (0.75, -0.75):
        rows.append((3.7, y, 0.7, 30.0, 29.0, 26.0, 0.995, 0.0, -0.1, 0.93, 0.80, 90.0))
    out = np.array(rows, dtype=np.float64)
    n = np.linalg.norm(out[:, 6:9], axis=1, keepdims=True)
    out[:, 6:9] /= np.where(n > 0, n, 1.0)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------ kernels


@nb.njit(cache=True, nogil=True)
def _hash(x):
    """splitmix64 finaliser: uint64 -> well mixed uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _rand2(i, j, seed):
    """Uniform [0, 1) from integer lattice coordinates (i, j) and a seed (world-fixed texture noise)."""
    h = _hash(np.uint64(i & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
              ^ np.uint64(j & 0xFFFFFFFF) * np.uint64(0xC2B2AE3D27D4EB4F) ^ np.uint64(seed))
    return (h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True, nogil=True, inline="always")
def _tex(tex, x, y):
    """Bilinear sample of the tileable noise texture at texel coordinates (x, y) -> [0, 1]."""
    fx = math.floor(x)
    fy = math.floor(y)
    tx = x - fx
    ty = y - fy
    m = _TEX_SIZE - 1
    i = np.int64(fx) & m
    j = np.int64(fy) & m
    i1 = (i + 1) & m
    j1 = (j + 1) & m
    a = tex[j, i] + (tex[j, i1] - tex[j, i]) * tx
    b = tex[j1, i] + (tex[j1, i1] - tex[j1, i]) * tx
    return a + (b - a) * ty


@nb.njit(cache=True, nogil=True, inline="always")
def _transmittance(exp_lut, optical_depth):
    """exp(-optical_depth) from a table (linear interpolation, relative error < 1e-4)."""
    x = optical_depth * _EXP_STEPS
    if x >= _EXP_MAX * _EXP_STEPS:
        return 0.0
    i = int(x)
    w = x - i
    return exp_lut[i] + (exp_lut[i + 1] - exp_lut[i]) * w


@nb.njit(cache=True, nogil=True, inline="always")
def _road_sd(px, py, road, s_start, step, f_hint):
    """Ego-frame ground point -> (s, d, cos and sin of the road heading, inside the sampled road,
    fractional sample index) by Newton steps along the sampled centreline ``road`` (_road_table).

    ``f_hint`` (fractional sample index of a nearby point, e.g. the previous pixel's) starts the
    iteration; a negative hint starts from the nearest of a coarse scan instead."""
    n = road.shape[0]
    f = f_hint
    # From a warm start one Newton step is exact to ~curvature * jump^2 (< 1 mm for jumps < 25 cm).
    tol = 0.5 if f >= 0.0 else 1e-3
    if f < 0.0:
        best = 1e30
        for i in range(0, n, 8):
            e = (px - road[i, 0]) ** 2 + (py - road[i, 1]) ** 2
            if e < best:
                best = e
                f = float(i)
    d = 0.0
    ch = 1.0
    sh = 0.0
    for _ in range(8):
        i = min(max(int(math.floor(f)), 0), n - 2)
        w = f - i
        cx = road[i, 0] + (road[i + 1, 0] - road[i, 0]) * w
        cy = road[i, 1] + (road[i + 1, 1] - road[i, 1]) * w
        ch = road[i, 2] + (road[i + 1, 2] - road[i, 2]) * w
        sh = road[i, 3] + (road[i + 1, 3] - road[i, 3]) * w
        ex = px - cx
        ey = py - cy
        along = ex * ch + ey * sh
        d = -ex * sh + ey * ch
        denom = 1.0 - road[i, 4] * d
        if denom < 0.2:
            denom = 0.2
        df = along / denom / step
        f = min(max(f + df, -1.0), float(n))
        if abs(df) < tol:
            break
    inside = 0.0 <= f <= n - 1
    return s_start + f * step, d, ch, sh, inside, f


@nb.njit(cache=True, nogil=True, inline="always")
def _box_hit(parts, p, ox, oy, oz, dx, dy, dz, tmax):
    """Ray (unit direction) vs oriented box part p: (entry distance, entry face 0..5 = +x -x +y -y +z -z)
    or (-1, -1)."""
    rx = ox - parts[p, 0]
    ry = oy - parts[p, 1]
    lo2 = oz - parts[p, 2]
    c = parts[p, _P_COS]
    s = parts[p, _P_SIN]
    lo0 = c * rx + s * ry
    lo1 = -s * rx + c * ry
    ld0 = c * dx + s * dy
    ld1 = -s * dx + c * dy
    ld2 = dz
    tn = -1e30
    tf = tmax
    face = -1
    for a in range(3):
        if a == 0:
            o, d, h = lo0, ld0, parts[p, 3]
        elif a == 1:
            o, d, h = lo1, ld1, parts[p, 4]
        else:
            o, d, h = lo2, ld2, parts[p, 5]
        if abs(d) < 1e-12:
            if o < -h or o > h:
                return -1.0, -1
            continue
        inv = 1.0 / d
        if d > 0.0:
            t1 = (-h - o) * inv
            t2 = (h - o) * inv
            f1 = 2 * a + 1  # enters through the -axis face
        else:
            t1 = (h - o) * inv
            t2 = (-h - o) * inv
            f1 = 2 * a
        if t1 > tn:
            tn = t1
            face = f1
        if t2 < tf:
            tf = t2
        if tn > tf:
            return -1.0, -1
    if tn <= 1e-6:
        return -1.0, -1  # the origin is inside the box or it lies behind
    return tn, face


@nb.njit(cache=True, nogil=True, inline="always")
def _sky(dx, dy, dz, wp, tex):
    """Sky radiance in direction (dx, dy, dz) (unit, ego frame)."""
    e = max(dz, 0.0)
    g = 1.0 - (1.0 - e) * (1.0 - e) * (1.0 - e)  # horizon band: brighter and wider than a linear ramp
    r = wp[_W_HOR] + (wp[_W_ZEN] - wp[_W_HOR]) * g
    gg = wp[_W_HOR + 1] + (wp[_W_ZEN + 1] - wp[_W_HOR + 1]) * g
    b = wp[_W_HOR + 2] + (wp[_W_ZEN + 2] - wp[_W_HOR + 2]) * g
    if wp[_W_SUNDISK] > 0.0:
        cs = dx * wp[_W_SUN] + dy * wp[_W_SUN + 1] + dz * wp[_W_SUN + 2]
        if cs > 0.99996:
            return wp[_W_SUNDISK], wp[_W_SUNDISK], wp[_W_SUNDISK] * 0.9
        c1 = max(cs, 0.0)
        c4 = (c1 * c1) * (c1 * c1)
        c8 = c4 * c4
        glow = 0.6 * c8 * c8 * c8 + 0.25 * c4
        r += glow
        gg += glow * 0.92
        b += glow * 0.75
    if wp[_W_CLOUD] > 0.0 and dz > 0.01:
        # Clouds on a plane 1.5 km up, world-fixed (follow the ego pose).
        k = 1500.0 / dz
        c = wp[_W_EGOCOS]
        s = wp[_W_EGOSIN]
        wx = wp[_W_EGOX] + k * (c * dx - s * dy)
        wy = wp[_W_EGOY] + k * (s * dx + c * dy)
        n = _tex(tex, wx / 60.0, wy / 60.0)  # the texture holds two octaves already
        cover = min(max((n - (1.0 - wp[_W_CLOUD])) * 4.0, 0.0), 1.0) * min(dz * 8.0, 1.0)
        r += (1.25 - r) * cover
        gg += (1.25 - gg) * cover
        b += (1.3 - b) * cover
    f = wp[_W_SKYFOG]
    return (r + (wp[_W_AIR] - r) * f, gg + (wp[_W_AIR + 1] - gg) * f, b + (wp[_W_AIR + 2] - b) * f)


@nb.njit(cache=True, nogil=True)
def _cov(x, fp, a, b):
    """Fraction of the interval [x - fp/2, x + fp/2] that lies inside [a, b] (box-filtered edge)."""
    lo = max(x - 0.5 * fp, a)
    hi = min(x + 0.5 * fp, b)
    return max(hi - lo, 0.0) / fp


@nb.njit(cache=True, nogil=True)
def _line_cov(d, fd, centre, width):
    return _cov(d, fd, centre - 0.5 * width, centre + 0.5 * width)


@nb.njit(cache=True, nogil=True)
def _dash_cov(s, fs, period, on):
    """Coverage of dashes [0, on) repeating every ``period`` [m] along s, for a footprint fs."""
    if fs >= period:
        return on / period
    u = s - math.floor(s / period) * period
    return _cov(u, fs, 0.0, on) + _cov(u, fs, period, period + on) + _cov(u, fs, -period, -period + on)


@nb.njit(cache=True, nogil=True, inline="always")
def _ground(px, py, dx, dy, dz, t, pix_angle, road, s_start, step, f_hint, wet, seed, tex):
    """Ground albedo (linear rgb), mirror reflectance and the road sample index (hint for the next
    pixel) at ego-frame point (px, py, 0)."""
    s, d, ch, sh, ok, f = _road_sd(px, py, road, s_start, step, f_hint)
    # Pixel footprint on the ground, across and along the road, for analytic anti-aliasing.
    hn = math.sqrt(dx * dx + dy * dy) + 1e-12
    lat = t * pix_angle
    lon = lat / max(abs(dz), 1e-3)
    ca = abs((dx * ch + dy * sh) / hn)
    sa = math.sqrt(max(1.0 - ca * ca, 0.0))
    fs = max(ca * lon + sa * lat, 1e-4)
    fd = max(sa * lon + ca * lat, 1e-4)
    fp = min(fs, fd)
    if not ok:
        d = 1e3  # beyond the sampled road: open ground
    # Texture noise fades out once the footprint is larger than the texture cell (avoids shimmer).
    fine = (_tex(tex, s * 20.0 + 0.73 * seed, d * 20.0 + 101.0) - 0.5) / (1.0 + (fp * 12.0) ** 2)
    coarse = _tex(tex, s * 3.5 + 0.37 * seed, d * 3.5) - 0.5
    spec = 0.0
    if CURB_RIGHT_D <= d <= CURB_LEFT_D:
        a = 0.085 * (1.0 + 0.35 * fine + 0.3 * coarse)
        ar, ag, ab = a, a, a * 1.05
        # Markings: edge lines solid, lanes of the same direction dashed, the centre a double yellow.
        # Lines sit every half lane width from -5.25 to 8.75 m; only the nearest can cover the pixel.
        near = -_HALF_LANE + LANE_WIDTH_M * math.floor((d + _HALF_LANE) / LANE_WIDTH_M + 0.5)
        if abs(d - near) < 0.3 + fd:
            white = 0.0
            yellow = 0.0
            if near == ROAD_RIGHT_EDGE_D or near == ROAD_LEFT_EDGE_D:
                white = _line_cov(d, fd, near, 0.18)
            elif near == _HALF_LANE:
                yellow = _line_cov(d, fd, _HALF_LANE - 0.11, 0.1) + _line_cov(d, fd, _HALF_LANE + 0.11, 0.1)
            elif near > ROAD_RIGHT_EDGE_D and near < ROAD_LEFT_EDGE_D:
                white = _line_cov(d, fd, near, 0.15) * _dash_cov(s, fs, 12.0, 3.0)
            white = min(white, 1.0) * (0.85 + 0.15 * coarse)
            ar += (0.62 - ar) * white + (0.55 - ar) * yellow
            ag += (0.62 - ag) * white + (0.38 - ag) * yellow
            ab += (0.60 - ab) * white + (0.04 - ab) * yellow
        # Wet asphalt is darker and mirrors the sky; puddles where the coarse noise is low.
        puddle = min(max((-coarse - 0.22) * 6.0, 0.0), 1.0)
        spec = wet * (0.08 + 0.3 * puddle)
        k = 1.0 - 0.45 * wet
        ar *= k
        ag *= k
        ab *= k
    elif d < CURB_RIGHT_D - 0.25 and d > SIDEWALK_RIGHT_D or d > CURB_LEFT_D + 0.25 and d < SIDEWALK_LEFT_D:
        a = 0.2 * (1.0 + 0.2 * fine + 0.2 * coarse)
        joint = min(_dash_cov(s, fs, 1.5, 0.04) + _dash_cov(d, fd, 1.5, 0.04), 1.0)
        a *= 1.0 - 0.5 * joint
        ar, ag, ab = a, a * 0.97, a * 0.93
        spec = wet * 0.05
        k = 1.0 - 0.3 * wet
        ar *= k
        ag *= k
        ab *= k
    elif d < CURB_RIGHT_D or d > CURB_LEFT_D:
        if d < SIDEWALK_RIGHT_D or d > SIDEWALK_LEFT_D:
            g = 1.0 + 0.5 * fine + 0.6 * coarse
            ar, ag, ab = 0.045 * g, 0.09 * g, 0.025 * g
        else:  # curb stone
            ar, ag, ab = 0.33, 0.32, 0.3
    else:
        ar, ag, ab = 0.33, 0.32, 0.3
    return ar, ag, ab, spec, (f if ok else -1.0)


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _material(mat, seed, flag, face, lx, ly, lz, hx, hy, hz, br, bg, bb, night, flash):
    """Box part surface: albedo rgb, emitted radiance rgb, mirror reflectance.
    (lx, ly, lz): hit point in the part's frame (x forward, centre origin) [m]; h*: half sizes;
    night: lights are on; flash: light-bar phase (red or blue lit)."""
    zb = lz + hz  # height above the part's bottom
    ar, ag, ab = br, bg, bb
    er, eg, eb = 0.0, 0.0, 0.0
    spec = 0.0
    side = face == 2 or face == 3
    if mat == MAT_BODY or mat == MAT_TRUCK_CAB or mat == MAT_CARGO:
        spec = 0.04
        if mat == MAT_BODY:
            axles = hx - 0.85
            wheel_r = min(0.33, 0.9 * hz)
            low = 0.12
        elif mat == MAT_TRUCK_CAB:
            axles = 0.0
            wheel_r = 0.5
            low = 0.3
        else:
            axles = hx - 1.0
            wheel_r = 0.5
            low = 0.9
        if zb < low and face != 4:
            ar, ag, ab = 0.02, 0.02, 0.02  # underbody / chassis in shadow
            spec = 0.0
        if side:
            for sgn in (-1.0, 1.0):
                if mat == MAT_TRUCK_CAB and sgn < 0:
                    continue
                ax = sgn * axles
                if mat == MAT_CARGO and sgn > 0:
                    ax = -(hx - 2.4)
                rr = math.sqrt((lx - ax) ** 2 + (zb - wheel_r) ** 2)
                if rr < wheel_r:
                    spec = 0.0
                    if rr < 0.5 * wheel_r:
                        ar, ag, ab = 0.25, 0.25, 0.26  # rim
                    else:
                        ar, ag, ab = 0.015, 0.015, 0.015  # tyre
            stripe_z = (0.45 if mat == MAT_BODY else 0.3) * 2 * hz
            if flag > 0.5 and abs(zb - stripe_z) < 0.09:
                ar, ag, ab = 0.6, 0.02, 0.02  # emergency livery stripe
        if mat == MAT_TRUCK_CAB and zb > 0.55 * 2 * hz and (face == 0 or (side and lx > -0.2 * hx)):
            edge = min(hy - abs(ly), hz - abs(lz), hx - abs(lx)) if side else min(hy - abs(ly), hz - abs(lz))
            if edge > 0.08:
                ar, ag, ab = 0.02, 0.025, 0.03
                spec = 0.3
        lamp_z = (0.72 if mat == MAT_BODY else 0.2) * 2 * hz
        if mat == MAT_CARGO:
            lamp_z = low + 0.15
        in_lamp = abs(zb - lamp_z) < 0.09 and hy - 0.45 < abs(ly) < hy - 0.08
        if face == 0 and in_lamp and mat != MAT_CARGO:
            ar, ag, ab = 0.8, 0.8, 0.75
            spec = 0.2
            if night:
                er, eg, eb = 40.0, 38.0, 33.0
        elif face == 1 and in_lamp and mat != MAT_TRUCK_CAB:
            ar, ag, ab = 0.45, 0.02, 0.02
            if night:
                er, eg, eb = 8.0, 0.25, 0.2
        if face == 0 and mat == MAT_BODY and abs(ly) < hy - 0.6 and abs(zb - 0.45 * 2 * hz) < 0.12:
            ar, ag, ab = 0.03, 0.03, 0.03  # grille
        if mat == MAT_CARGO and not side and face != 4 and face != 5 and abs(ly) < 0.02:
            ar, ag, ab = 0.05, 0.05, 0.05  # door seam
        if mat == MAT_CARGO and side and (zb - low) > 0.0:
            if ((zb - low) % 0.6) < 0.03:
                ar *= 0.7
                ag *= 0.7
                ab *= 0.7
    elif mat == MAT_CABIN:
        if face == 4:
            spec = 0.05  # roof in body colour
        else:
            along = hy if (face == 0 or face == 1) else hx
            pos = ly if (face == 0 or face == 1) else lx
            pillar = 0.09 if (face == 0 or face == 1) else 0.14
            if abs(pos) < along - pillar and zb < 2 * hz - 0.06 and zb > 0.06:
                ar, ag, ab = 0.01, 0.012, 0.015
                spec = 0.12
                if side and abs(lx) < 0.05:
                    ar, ag, ab = br, bg, bb  # B pillar
                    spec = 0.04
    elif mat == MAT_LIGHTBAR:
        red = ly > 0.0
        on = flash == red
        if red:
            ar, ag, ab = 0.5, 0.03, 0.03
            if on:
                er, eg, eb = 25.0, 0.8, 0.6
        else:
            ar, ag, ab = 0.03, 0.08, 0.5
            if on:
                er, eg, eb = 0.8, 2.0, 30.0
    elif mat == MAT_CLOTH:
        if flag > 0.5 and zb < 0.18:
            ar, ag, ab = br * 0.0 + 0.45, 0.3, 0.22  # hand
        if face == 4:
            ar *= 0.8
            ag *= 0.8
            ab *= 0.8
    elif mat == MAT_SKIN:
        if face == 4 or (zb > 2 * hz * 0.72):
            ar, ag, ab = 0.02, 0.015, 0.01  # hair
        elif face == 0 and abs(ly) < 0.05 and abs(zb - hz * 1.1) < 0.02:
            ar, ag, ab = 0.05, 0.03, 0.03  # a shadow of eyes / brow
    elif mat == MAT_TYRE:
        rr = math.sqrt(lx * lx + lz * lz)
        if side and rr > hx:
            return -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0  # outside the round wheel: see-through
        if side and rr < hx - 0.06:
            spoke = abs(lx) < 0.015 or abs(lz) < 0.015 or rr < 0.05
            if not spoke:
                return -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0
            ar, ag, ab = 0.3, 0.3, 0.3
        else:
            ar, ag, ab = 0.02, 0.02, 0.02
    elif mat == MAT_FRAME:
        spec = 0.1
    elif mat == MAT_POLE:
        spec = 0.05
    elif mat == MAT_LAMP:
        ar, ag, ab = 0.3, 0.3, 0.32
        if face == 5:
            ar, ag, ab = 0.7, 0.7, 0.65
            if night:
                er, eg, eb = 60.0, 50.0, 34.0
    elif mat == MAT_WALL:
        course = (zb % 0.25) < 0.02
        brick = ((lx + ly + (0.2 if (zb % 0.5) < 0.25 else 0.0)) % 0.4) < 0.02
        n = _rand2(np.int64(math.floor((lx + ly) * 2.5)), np.int64(math.floor(zb * 4.0)), np.int64(seed))
        k = 0.85 + 0.25 * n
        if course or brick:
            k = 0.6
        ar *= k
        ag *= k
        ab *= k
    elif mat == MAT_BUILDING:
        if face == 4:
            ar, ag, ab = 0.06, 0.06, 0.065
        elif face != 5:
            along = lx if side else ly
            half = hx if side else hy
            u = along + half
            floor_ = math.floor(zb / 3.0)
            col = math.floor(u / 3.0)
            fu = u - col * 3.0
            fz = zb - floor_ * 3.0
            if fu > 0.8 and fu < 2.2 and fz > 0.9 and fz < 2.4 and u > 1.0 and u < 2 * half - 1.0 \
                    and zb < 2 * hz - 0.8:
                lit = _rand2(np.int64(col) + np.int64(face) * 1000, np.int64(floor_), np.int64(seed))
                ar, ag, ab = 0.02, 0.025, 0.035
                spec = 0.3
                if night and lit < 0.35:
                    er, eg, eb = 0.25 + 0.4 * lit, 0.19 + 0.3 * lit, 0.1 + 0.15 * lit
                    spec = 0.0
            else:
                n = _rand2(np.int64(math.floor(u * 2.0)), np.int64(math.floor(zb * 2.0)), np.int64(seed))
                k = 0.9 + 0.15 * n
                ar *= k
                ag *= k
                ab *= k
    return ar, ag, ab, er, eg, eb, spec


@nb.njit(cache=True, nogil=True)
def _subray(rays, v, u, dv, du):
    """Unit ray at the sub-pixel position (v + dv, u + du), bilinear between neighbouring pixel rays."""
    H, W = rays.shape[0], rays.shape[1]
    fv = v + dv
    fu = u + du
    i = min(max(int(math.floor(fv)), 0), H - 2)
    j = min(max(int(math.floor(fu)), 0), W - 2)
    wv = fv - i
    wu = fu - j
    x = 0.0
    y = 0.0
    z = 0.0
    for a in range(2):
        for b in range(2):
            w = (wv if a else 1.0 - wv) * (wu if b else 1.0 - wu)
            x += w * rays[i + a, j + b, 0]
            y += w * rays[i + a, j + b, 1]
            z += w * rays[i + a, j + b, 2]
    n = math.sqrt(x * x + y * y + z * z)
    return x / n, y / n, z / n


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _render(rays, pix_angle, R, o, off, sh_off, li_off, lists, parts, road, s_start, step, env, tex, exp_lut,
            hdr, depth, obj):
    """Ray-cast every pixel into linear radiance ``hdr`` (H, W, 3), depth along the optical axis
    ``depth`` (H, W) [m] (inf for the sky) and ``obj`` (H, W): the object index, HIT_GROUND or HIT_SKY.
    Returns the peak radiance (to skip bloom when nothing is brighter than white).

    Pass 0 shoots one ray through each pixel centre; pass 1 re-renders pixels on a silhouette or a
    strong brightness step with 4 sub-pixel rays (anti-aliasing). The tracing is written once, inline,
    so that no array is handed to a function per ray (each such call costs reference counting).

    Args:
        rays: (H, W, 3) unit rays, camera frame; pix_angle: (H, W) [rad]; R: (3, 3) ego_from_camera;
        o: (3,) camera origin [m], ego frame; off / sh_off / li_off: (T + 1,) CSR offsets into ``lists``
        of the parts each tile may see / the parts that may shadow what it sees / the lights that may
        reach it; parts: (P, _P_SIZE) packed parts; road: (K, 5) _road_table;
        env: lighting vector (_W_*) followed by the lights, _L_SIZE values each;
        tex: _NOISE_TEX; exp_lut: _EXP_LUT.
    """
    H, W = rays.shape[0], rays.shape[1]
    tx_n = (W + TILE - 1) // TILE
    night = env[_W_NIGHT] > 0.5
    flash = env[_W_FLASH] > 0.5
    wet = env[_W_WET]
    seed = np.int64(env[_W_SEED])
    sun_on = env[_W_SUNCOL] > 0.0
    sx, sy, sz = env[_W_SUN], env[_W_SUN + 1], env[_W_SUN + 2]
    ox, oy, oz = o[0], o[1], o[2]
    edge = np.zeros((H, W), dtype=np.bool_)
    lum = np.zeros((H, W), dtype=np.float32)
    hit = np.empty((H, W), dtype=np.int32)  # part index (edges between parts of one object count too)
    peak = 0.0
    for pass_ in range(2):
        for v in range(H):
            ty = v // TILE
            f_hint = -1.0  # road sample index of the last ground hit in this row (Newton warm start)
            for u in range(W):
                if pass_ == 1 and not edge[v, u]:
                    continue
                if rays[v, u, 0] != rays[v, u, 0]:  # no valid ray through this pixel
                    hdr[v, u, 0] = 0.0
                    hdr[v, u, 1] = 0.0
                    hdr[v, u, 2] = 0.0
                    depth[v, u] = np.inf
                    hit[v, u] = HIT_SKY
                    obj[v, u] = HIT_SKY
                    continue
                k = ty * tx_n + u // TILE
                c0, c1 = off[k], off[k + 1]
                s0, s1 = sh_off[k], sh_off[k + 1]
                l0, l1 = li_off[k], li_off[k + 1]
                # Pass 1: the centre sample plus three on a triangle around it (radius 0.3 px, centroid
                # at the centre so edges do not shift), averaged.
                n_sub = 1 if pass_ == 0 else 3
                acc_r = 0.0
                acc_g = 0.0
                acc_b = 0.0
                n_ok = 0
                if pass_ == 1:
                    acc_r = hdr[v, u, 0]
                    acc_g = hdr[v, u, 1]
                    acc_b = hdr[v, u, 2]
                    n_ok = 1
                first_t = np.inf
                first_h = HIT_SKY
                for q in range(n_sub):
                    if pass_ == 0:
                        cx, cy, cz = rays[v, u, 0], rays[v, u, 1], rays[v, u, 2]
                    else:
                        dv_px = -0.3 if q == 0 else 0.15
                        du_px = 0.0 if q == 0 else (-0.26 if q == 1 else 0.26)
                        cx, cy, cz = _subray(rays, v, u, dv_px, du_px)
                        if cx != cx:
                            continue
                    dx = R[0, 0] * cx + R[0, 1] * cy + R[0, 2] * cz
                    dy = R[1, 0] * cx + R[1, 1] * cy + R[1, 2] * cz
                    dz = R[2, 0] * cx + R[2, 1] * cy + R[2, 2] * cz
                    # ---- nearest hit: boxes of this tile, then the ground; see-through parts continue
                    skip_p = -1
                    skip_t = 0.0
                    is_sky = False
                    best_t = 1e30
                    best_p = -1
                    best_f = -1
                    ar, ag, ab, er, eg, eb, spec = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                    nx, ny, nz = 0.0, 0.0, 1.0
                    px, py, pz = 0.0, 0.0, 0.0
                    while True:
                        best_t = 1e30
                        best_p = -1
                        for kk in range(c0, c1):
                            p = lists[kk]
                            if p == skip_p:
                                continue
                            t, f = _box_hit(parts, p, ox, oy, oz, dx, dy, dz, best_t)
                            if t > skip_t and t < best_t:
                                best_t = t
                                best_p = p
                                best_f = f
                        if dz < -1e-12:
                            tg = -oz / dz
                            if tg < best_t:
                                best_t = tg
                                best_p = -1
                                best_f = 4
                        elif best_p < 0:
                            is_sky = True
                            break
                        px = ox + best_t * dx
                        py = oy + best_t * dy
                        pz = oz + best_t * dz
                        if best_p < 0:
                            ar, ag, ab, spec, f_hint = _ground(px, py, dx, dy, dz, best_t, pix_angle[v, u], road,
                                                               s_start, step, f_hint, wet, seed, tex)
                            er, eg, eb = 0.0, 0.0, 0.0
                            nx, ny, nz = 0.0, 0.0, 1.0
                            pz = 0.0
                            break
                        p = best_p
                        c = parts[p, _P_COS]
                        s = parts[p, _P_SIN]
                        qx = px - parts[p, 0]
                        qy = py - parts[p, 1]
                        ar, ag, ab, er, eg, eb, spec = _material(
                            np.int64(parts[p, _P_MAT]), parts[p, _P_SEED], parts[p, _P_FLAG], best_f,
                            c * qx + s * qy, -s * qx + c * qy, pz - parts[p, 2], parts[p, 3], parts[p, 4],
                            parts[p, 5], parts[p, _P_ALB], parts[p, _P_ALB + 1], parts[p, _P_ALB + 2], night, flash)
                        if ar < 0.0:  # see-through (between wheel spokes): continue behind this part
                            skip_p = p
                            skip_t = best_t
                            continue
                        if best_f == 0:
                            nx, ny, nz = c, s, 0.0
                        elif best_f == 1:
                            nx, ny, nz = -c, -s, 0.0
                        elif best_f == 2:
                            nx, ny, nz = -s, c, 0.0
                        elif best_f == 3:
                            nx, ny, nz = s, -c, 0.0
                        elif best_f == 4:
                            nx, ny, nz = 0.0, 0.0, 1.0
                        else:
                            nx, ny, nz = 0.0, 0.0, -1.0
                        break
                    if is_sky:
                        r, g, b = _sky(dx, dy, dz, env, tex)
                        hit_code = HIT_SKY
                        best_t = np.inf
                    else:
                        # ---- irradiance: sky ambient (more on upward faces), sun with shadows, lights
                        up = 0.55 + 0.45 * nz
                        irr_r = env[_W_AMB] * up
                        irr_g = env[_W_AMB + 1] * up
                        irr_b = env[_W_AMB + 2] * up
                        if sun_on:
                            cs = nx * sx + ny * sy + nz * sz
                            if cs > 0.0:
                                lit = True
                                qx = px + nx * 1e-3
                                qy = py + ny * 1e-3
                                qz = pz + nz * 1e-3
                                for kk in range(s0, s1):
                                    t, f = _box_hit(parts, lists[kk], qx, qy, qz, sx, sy, sz, 1e4)
                                    if t > 0.0:
                                        lit = False
                                        break
                                if lit:
                                    irr_r += env[_W_SUNCOL] * cs
                                    irr_g += env[_W_SUNCOL + 1] * cs
                                    irr_b += env[_W_SUNCOL + 2] * cs
                        for kk in range(l0, l1):
                            j = _W_SIZE + _L_SIZE * lists[kk]
                            vx = env[j] - px
                            vy = env[j + 1] - py
                            vz = env[j + 2] - pz
                            r2 = vx * vx + vy * vy + vz * vz + 1e-6
                            rl = math.sqrt(r2)
                            cn = (nx * vx + ny * vy + nz * vz) / rl
                            if cn <= 0.0:
                                continue
                            # Emission toward the point: cosine lobe for lamps, smooth cone for spots
                            # with a low-beam cut-off (nothing above the lamp's horizontal).
                            ce = -(env[j + 6] * vx + env[j + 7] * vy + env[j + 8] * vz) / rl
                            if env[j + 9] > 0.0:
                                lobe = min(max((ce - env[j + 10]) / (env[j + 9] - env[j + 10]), 0.0), 1.0)
                                if -vz / rl > 0.02:
                                    lobe = 0.0
                            else:
                                lobe = max(ce, 0.0)
                            if lobe <= 0.0:
                                continue
                            window = 1.0 - r2 / (env[j + 11] * env[j + 11])
                            if window <= 0.0:
                                continue
                            w = lobe * cn / r2 * window * window
                            irr_r += env[j + 3] * w
                            irr_g += env[j + 4] * w
                            irr_b += env[j + 5] * w
                        r = ar * irr_r + er
                        g = ag * irr_g + eg
                        b = ab * irr_b + eb
                        if spec > 0.0:
                            # Mirror reflection of the sky, growing toward grazing angles (Schlick).
                            dn = dx * nx + dy * ny + dz * nz
                            mz = abs(dz - 2.0 * dn * nz)
                            fres = spec + (1.0 - spec) * (1.0 - abs(dn)) ** 5 * min(spec * 4.0, 1.0)
                            kr, kg, kb = _sky(dx - 2.0 * dn * nx, dy - 2.0 * dn * ny, mz, env, tex)
                            r = r * (1.0 - fres) + kr * fres
                            g = g * (1.0 - fres) + kg * fres
                            b = b * (1.0 - fres) + kb * fres
                        # Koschmieder: contrast decays as exp(-beta r) toward the airlight.
                        T = _transmittance(exp_lut, env[_W_BETA] * best_t)
                        r = r * T + env[_W_AIR] * (1.0 - T)
                        g = g * T + env[_W_AIR + 1] * (1.0 - T)
                        b = b * T + env[_W_AIR + 2] * (1.0 - T)
                        hit_code = best_p if best_p >= 0 else HIT_GROUND
                    acc_r += r
                    acc_g += g
                    acc_b += b
                    n_ok += 1
                    if q == 0:
                        first_t = best_t
                        first_h = hit_code
                if n_ok == 0:
                    continue
                hdr[v, u, 0] = acc_r / n_ok
                hdr[v, u, 1] = acc_g / n_ok
                hdr[v, u, 2] = acc_b / n_ok
                if pass_ == 0:
                    depth[v, u] = first_t * rays[v, u, 2]
                    hit[v, u] = first_h
                    obj[v, u] = np.int32(parts[first_h, _P_OWNER]) if first_h >= 0 else first_h
                    peak = max(peak, acc_r, acc_g, acc_b)
                    # Edge test against the left and upper neighbours (already rendered): a change
                    # of what is hit, or a strong brightness step on an object (windows, lights),
                    # marks both for supersampling. Ground markings are filtered analytically.
                    lu = 0.3 * acc_r + 0.6 * acc_g + 0.1 * acc_b
                    lum[v, u] = lu
                    if u > 0:
                        ll = lum[v, u - 1]
                        if hit[v, u - 1] != first_h or (first_h >= 0 and abs(lu - ll) > 0.3 * (lu + ll) + 0.01):
                            edge[v, u] = True
                            edge[v, u - 1] = True
                    if v > 0:
                        ll = lum[v - 1, u]
                        if hit[v - 1, u] != first_h or (first_h >= 0 and abs(lu - ll) > 0.3 * (lu + ll) + 0.01):
                            edge[v, u] = True
                            edge[v - 1, u] = True
    return peak


@nb.njit(cache=True, nogil=True, inline="always")
def _gauss(word, shift):
    """Approximately standard-normal number from four 5-bit fields of ``word`` starting at bit ``shift``
    (Irwin-Hall: the sum of 4 uniforms has variance 1/3; 32 levels each are plenty for sensor noise)."""
    acc = 0.0
    for q in range(4):
        acc += float((word >> np.uint64(shift + 5 * q)) & np.uint64(31))
    return ((acc + 2.0) * (1.0 / 32.0) - 2.0) * 1.7320508075688772


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _finish(hdr, exposure, read, shot, key, lut, out):
    """Exposure, sensor noise (read + shot, linear), sRGB curve, 8-bit quantisation. The noise is a hash
    of (key, pixel index): the same key gives the same image."""
    H, W = hdr.shape[0], hdr.shape[1]
    for v in range(H):
        for u in range(W):
            h = _hash(key ^ (np.uint64(v * W + u) * np.uint64(0x9E3779B97F4A7C15)))
            for c in range(3):
                x = hdr[v, u, c] * exposure
                if x < 0.0:
                    x = 0.0
                x += math.sqrt(read * read + shot * min(x, 1.0)) * _gauss(h, 20 * c)
                if x < 0.0:
                    x = 0.0
                elif x > 1.0:
                    x = 1.0
                out[v, u, c] = lut[int(math.sqrt(x) * 4095.0 + 0.5)]


def _rain_overlay(hdr: np.ndarray, rng: np.random.Generator, wp: np.ndarray) -> None:
    """Rain streaks (motion-blurred drops in the air) and water drops on the lens, drawn in linear space."""
    H, W = hdr.shape[:2]
    n_streaks = int(H * W / 900)
    slant = rng.normal(0.15, 0.05)
    streaks = np.column_stack([
        rng.uniform(0, W, n_streaks), rng.uniform(0, H, n_streaks),
        rng.uniform(0.03, 0.12, n_streaks) * H,  # length [px]
        slant + rng.normal(0, 0.03, n_streaks),  # angle from vertical [rad]
        rng.uniform(0.05, 0.2, n_streaks),  # opacity
    ])
    n_drops = int(rng.integers(3, 9))
    drops = np.column_stack([rng.uniform(0, W, n_drops), rng.uniform(0, H, n_drops),
                             rng.uniform(0.012, 0.04, n_drops) * W])
    level = float(wp[_W_HOR:_W_HOR + 3].mean()) * 1.3
    _draw_rain(hdr, streaks, drops, level)


@nb.njit(cache=True, nogil=True)
def _draw_rain(hdr, streaks, drops, level):
    H, W = hdr.shape[0], hdr.shape[1]
    for k in range(streaks.shape[0]):
        u0, v0, ln, ang, alpha = streaks[k, 0], streaks[k, 1], streaks[k, 2], streaks[k, 3], streaks[k, 4]
        du = math.sin(ang)
        dv = math.cos(ang)
        u1 = u0 + du * ln
        v1 = v0 + dv * ln
        for v in range(max(int(min(v0, v1)) - 1, 0), min(int(max(v0, v1)) + 2, H)):
            for u in range(max(int(min(u0, u1)) - 1, 0), min(int(max(u0, u1)) + 2, W)):
                # Distance to the segment; 1 px wide anti-aliased line.
                t = ((u - u0) * du + (v - v0) * dv) / ln
                t = min(max(t, 0.0), 1.0)
                ex = u - (u0 + du * ln * t)
                ey = v - (v0 + dv * ln * t)
                a = alpha * max(0.0, 1.0 - math.sqrt(ex * ex + ey * ey))
                if a > 0.0:
                    for c in range(3):
                        hdr[v, u, c] += (level - hdr[v, u, c]) * a
    src = hdr.copy()
    for k in range(drops.shape[0]):
        cu, cv, rad = drops[k, 0], drops[k, 1], drops[k, 2]
        for v in range(max(int(cv - rad), 0), min(int(cv + rad) + 1, H)):
            for u in range(max(int(cu - rad), 0), min(int(cu + rad) + 1, W)):
                q = math.sqrt((u - cu) ** 2 + (v - cv) ** 2) / rad
                if q >= 1.0:
                    continue
                # A drop is a small lens: it shows an inverted, minified and blurred view.
                su = cu - (u - cu) * 2.5
                sv = cv - (v - cv) * 2.5 - rad
                acc0 = 0.0
                acc1 = 0.0
                acc2 = 0.0
                for a in range(-1, 2):
                    for b in range(-1, 2):
                        iu = min(max(int(su + 2 * b), 0), W - 1)
                        iv = min(max(int(sv + 2 * a), 0), H - 1)
                        acc0 += src[iv, iu, 0]
                        acc1 += src[iv, iu, 1]
                        acc2 += src[iv, iu, 2]
                rim = 0.55 if q > 0.85 else 1.0  # dark refracting edge
                hdr[v, u, 0] = acc0 / 9.0 * rim
                hdr[v, u, 1] = acc1 / 9.0 * rim
                hdr[v, u, 2] = acc2 / 9.0 * rim
