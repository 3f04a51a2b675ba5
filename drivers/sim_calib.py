"""Simulated calibration scenarios: a chessboard target in front of the parked car (LiDAR-camera
extrinsics), corner reflectors in front of it (LiDAR-radar extrinsics), and a drive on a winding road
(sensor time offsets).

LiDAR-camera (:func:`lidar_camera_scenario`): the car with the default rig stands still on flat ground;
a planar chessboard on a thin pole stand is shown at N poses in front of it (3-8 m away, tilted up to
+-30 deg left/right and up/down, spread over the camera's field of view), with a wall, a parked car and
a pillar around it. For every pose:

* the camera image is rendered per pixel: each pixel is split into ``supersample`` x ``supersample``
  sub-pixels whose viewing rays come from :meth:`CameraModel.unproject` (so lens distortion, pinhole or
  fisheye, is exact), each ray is intersected with the board plane and shaded (print black 6 %, paper
  white 85 %, lit by a soft key light and ambient light, over a plain grey background with a smooth
  brightness gradient); the sub-pixels are averaged (anti-aliasing), the optics blur by a Gaussian
  (``blur_sigma_px``), and the sensor adds shot and read noise before 8-bit quantisation, in an sRGB-like
  response;
* the LiDAR sweep uses the simulator's beam pattern and ray-caster (``drivers.sim_lidar.cast_rays``,
  32 beams, 1800 columns): the ground plane and the upright clutter boxes are cast in the ego frame;
  the board, a thin box with any 3D orientation, is cast in its own frame (where it is an upright box)
  and the nearer hit wins. Range noise (2 cm, 1 sigma) along the ray, 1 % dropouts, the 0.5 m minimum
  range and the driver's 1/256 m output grid are applied as in ``simulate_sweep``. The car is parked,
  so there is no rolling distortion.

The truth is the rig's ``ego_from_sensor`` transforms (``default_rig()`` unless another rig is given).

LiDAR-radar (:class:`ReflectorScene`): the car parked on flat ground, 12 corner reflectors on stands in
front of it, a wall and a parked car; the simulators' LiDAR (``simulate_sweep``) and radar
(``simulate_scan``) see it as they see any scene.

Time offsets (:class:`WindingScene`, :func:`time_offset_drive`): the default scene has few and gentle
curves; offset estimation needs rotation that changes often, so this scene replaces the road with
alternating left and right curves joined by clothoid transitions (by default radius 25-50 m, curves
4-15 m long, transitions 4-8 m: at 10 m/s the yaw rate swings between about +-0.3 rad/s every 1-2 s, a
typical calibration weave), everything else (traffic, clutter, ego speed profile) as
:class:`drivers.sim_scene.Scene`. The clocks are the simulator's: set ``SimConfig.clock_offset_ns``.
The curvature changes continuously on purpose: with the curvature steps of constant-curvature pieces,
the yaw rate jumps between two IMU samples and the 200 Hz gyro cannot tell when within 5 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.camera import CameraModel
from calibration.lidar_camera import BOARD_FRAME, ChessboardTarget
from calibration.rig import EGO_FRAME, Rig
from calibration.transform import Transform
from drivers.sim import SimConfig, SimulatedRig, default_rig
from drivers.sim_lidar import HIT_NONE, XYZ_STEPS_PER_M, LidarParams, cast_rays, column_azimuths
from drivers.sim_scene import LABEL_POLE, LABEL_WALL, Road, Scene, SceneObjects

BOARD_THICKNESS_M = 0.01
BOARD_REFLECTIVITY = (0.06, 0.85)  # black print, white paper (camera albedo and LiDAR reflectivity)
BACKGROUND_ALBEDO = 0.35
STAND_SIZE_M = 0.05  # square section of the stand's pole
# Upright clutter around the target, ego frame: x y z (centre) length width height yaw, reflectivity.
CLUTTER_BOXES = np.array([
    [17.0, 0.0, 1.5, 0.4, 24.0, 3.0, 0.0],    # wall across, behind the target area
    [9.0, -5.0, 0.75, 4.5, 1.9, 1.5, 0.05],   # parked car to the right
    [7.0, 4.0, 1.5, 0.4, 0.4, 3.0, 0.0],      # pillar to the left
])
CLUTTER_REFLECTIVITY = np.array([0.5, 0.4, 0.6])
GROUND_REFLECTIVITY = 0.12


# ---------------------------------------------------------------------------------------------- poses
def _facing_rotation(direction: np.ndarray) -> np.ndarray:
    """ego_from_board rotation of an upright board whose z axis (into the board) points along the
    horizontal part of ``direction`` (3,), x to the viewer's right, y down."""
    z = np.array([direction[0], direction[1], 0.0])
    z /= np.linalg.norm(z)
    y = np.array([0.0, 0.0, -1.0])
    x = np.cross(y, z)
    return np.column_stack([x, y, z])


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def board_poses(n_poses: int, rig: Rig, camera_id: str, target: ChessboardTarget, rng: np.random.Generator,
                distance_range_m: tuple[float, float] = (3.0, 8.0), max_tilt_deg: float = 30.0,
                margin_px: float = 10.0) -> list[Transform]:
    """``n_poses`` board placements (Transform(dst="ego", src="board")) fully inside the camera's image.

    Distances are spread evenly over ``distance_range_m`` (shuffled); the tilt signs cycle through the
    four combinations of left/right and up/down, with magnitudes drawn in [max_tilt / 3, max_tilt], plus
    a roll of up to 10 deg; the board centre is drawn over the field of view (height 0.8-2.6 m above
    the ground) until the whole board projects at least ``margin_px`` inside the image.
    """
    if n_poses < 1:
        raise ValueError(f"board_poses: n_poses must be >= 1, got {n_poses}")
    cam = rig[camera_id]
    model: CameraModel = cam.camera
    ego_from_cam = cam.ego_from_sensor
    cam_pos = ego_from_cam.translation
    distances = rng.permutation(np.linspace(distance_range_m[0], distance_range_m[1], n_poses))
    signs = [(1, 1), (-1, -1), (1, -1), (-1, 1)]
    lo = np.radians(max_tilt_deg) / 2
    hi = np.radians(max_tilt_deg)
    poses = []
    for k, dist in enumerate(distances):
        sy, sp = signs[k % 4]
        for _ in range(200):
            # A pixel drawn over the central part of the image, pushed out to the distance.
            uv = np.array([[rng.uniform(0.08, 0.92) * model.width, rng.uniform(0.15, 0.85) * model.height]])
            ray = ego_from_cam.apply_vectors(model.unproject(uv))[0]
            centre = cam_pos + dist * ray / np.linalg.norm(ray)
            if not 0.8 <= centre[2] <= 2.6:
                continue
            R = (_facing_rotation(centre - cam_pos) @ _rot(1, sy * rng.uniform(lo, hi))
                 @ _rot(0, sp * rng.uniform(lo, hi)) @ _rot(2, rng.uniform(-1, 1) * np.radians(10.0)))
            T = Transform(EGO_FRAME, BOARD_FRAME, R, centre)
            corners = (ego_from_cam.inverse() @ T).apply(target.outline())
            uv_c, valid = model.project(corners)
            if valid.all() and model.in_image(uv_c, margin_px).all():
                poses.append(T)
                break
        else:
            raise RuntimeError(f"board_poses: could not place pose {k} at {dist:.1f} m inside the image of "
                               f"'{camera_id}'")
    return poses


# ---------------------------------------------------------------------------------------------- camera
def _board_albedo(bx: np.ndarray, by: np.ndarray, target: ChessboardTarget) -> tuple[np.ndarray, np.ndarray]:
    """(albedo, on_board) for board-frame coordinates [m]: squares alternate, the corner square at
    (-x, -y) is black, the border is white."""
    sq = target.square_m
    hx, hy = (target.cols + 1) * sq / 2, (target.rows + 1) * sq / 2
    on_board = (np.abs(bx) <= target.width_m / 2) & (np.abs(by) <= target.height_m / 2)
    in_grid = (np.abs(bx) < hx) & (np.abs(by) < hy)
    qi = np.floor((bx + hx) / sq).astype(np.int64)
    qj = np.floor((by + hy) / sq).astype(np.int64)
    black = in_grid & ((qi + qj) % 2 == 0)
    albedo = np.where(black, BOARD_REFLECTIVITY[0], BOARD_REFLECTIVITY[1])
    return albedo, on_board


def _subpixel_rays(camera: CameraModel, supersample: int) -> np.ndarray:
    """(H, W, s*s, 3) float32 viewing rays (z = 1) of sub-pixel centres, camera optical frame.

    Rays are unprojected exactly at the pixel corners and interpolated bilinearly inside each pixel: the
    lens mapping is smooth, so the interpolation error is far below a thousandth of a pixel, and it
    needs (H + 1)(W + 1) unprojections instead of H W s^2."""
    h, w, s = camera.height, camera.width, supersample
    gv, gu = np.mgrid[0:h + 1, 0:w + 1] - 0.5
    grid = camera.unproject(np.stack([gu.ravel(), gv.ravel()], axis=1))[:, :2].reshape(h + 1, w + 1, 2)
    off = (np.arange(s) + 0.5) / s
    fu, fv = np.meshgrid(off, off)
    fu, fv = fu.ravel()[None, None, :, None], fv.ravel()[None, None, :, None]
    c00, c01 = grid[:-1, :-1, None], grid[:-1, 1:, None]
    c10, c11 = grid[1:, :-1, None], grid[1:, 1:, None]
    xy = (1 - fv) * ((1 - fu) * c00 + fu * c01) + fv * ((1 - fu) * c10 + fu * c11)
    rays = np.ones((h, w, s * s, 3), dtype=np.float32)
    rays[..., :2] = xy
    return rays


def render_board_image(camera: CameraModel, camera_from_board: Transform | None, target: ChessboardTarget,
                       rng: np.random.Generator, blur_sigma_px: float = 0.6, read_noise: float = 1.5,
                       supersample: int = 3, rays: np.ndarray | None = None) -> np.ndarray:
    """Render what the camera sees of the board over a plain background.

    Args:
        camera: intrinsics (distortion exact, see the module docstring).
        camera_from_board: board pose (Transform(dst=<camera>, src="board")), or None for no board.
        target: the board.
        rng: draws the background gradient and the sensor noise.
        blur_sigma_px: optics blur, Gaussian sigma [px].
        read_noise: read noise [8-bit grey levels, 1 sigma]; shot noise comes on top (full well ~ 4000 e-).
        supersample: sub-pixels per side for anti-aliasing.
        rays: precomputed sub-pixel rays for this camera and ``supersample`` (a speed-up when rendering
            many images; see ``_subpixel_rays``).
    Returns:
        (H, W, 3) uint8 RGB image.
    """
    import cv2

    if rays is None:
        rays = _subpixel_rays(camera, supersample)
    h, w = camera.height, camera.width
    v, u = np.mgrid[0:h, 0:w] / max(h, w)
    g = rng.uniform(-0.25, 0.25, 2)
    # Plain background: a wall with a smooth brightness gradient (irradiance falls off across the scene).
    background = BACKGROUND_ALBEDO * (1.0 + g[0] * (u - 0.5) + g[1] * (v - 0.5))
    radiance = np.repeat(background[:, :, None], rays.shape[2], axis=2)
    if camera_from_board is not None:
        R, t = camera_from_board.rotation, camera_from_board.translation
        n = R[:, 2]
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = (n @ t) / denom
        hit = np.isfinite(lam) & (lam > 0)
        X = rays * np.where(hit, lam, 0.0)[..., None]
        local = (X - t) @ R  # board frame
        albedo, on_board = _board_albedo(local[..., 0], local[..., 1], target)
        on_board &= hit
        # Soft key light from above-left of the camera plus ambient; a tilted board is lit less.
        light = np.array([-0.3, -0.5, -1.0])
        light /= np.linalg.norm(light)
        shade = 0.55 + 0.45 * abs(float(n @ light))
        radiance = np.where(on_board, albedo * shade, radiance)
    img = radiance.mean(axis=2)
    if blur_sigma_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma_px)
    # Sensor: exposure puts white paper near 80 % of full scale; shot noise in electrons, read noise in DN.
    full_well = 4000.0
    electrons = np.clip(img / 0.9, 0.0, 1.0) * full_well
    electrons = electrons + rng.normal(0.0, 1.0, electrons.shape) * np.sqrt(np.maximum(electrons, 1.0))
    linear = np.clip(electrons / full_well, 0.0, 1.0)
    dn = 255.0 * linear ** (1 / 2.2) + rng.normal(0.0, read_noise, linear.shape)
    gray = np.clip(np.round(dn), 0, 255).astype(np.uint8)
    tint = np.array([1.0, 0.98, 0.95])  # a slightly warm white balance
    return np.clip(np.round(gray[:, :, None] * tint), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- LiDAR
def _stand_box(ego_from_board: Transform, target: ChessboardTarget) -> np.ndarray:
    """(7,) upright box of the board's pole stand (ego frame): behind the board centre, from the ground
    to just below the board's lowest point."""
    R, c = ego_from_board.rotation, ego_from_board.translation
    normal_h = np.array([R[0, 2], R[1, 2]])
    normal_h /= np.linalg.norm(normal_h)
    xy = c[:2] + normal_h * (BOARD_THICKNESS_M + STAND_SIZE_M)
    lowest = float(ego_from_board.apply(target.outline())[:, 2].min())
    top = max(lowest - 0.02, 0.1)
    yaw = float(np.arctan2(normal_h[1], normal_h[0]))
    return np.array([xy[0], xy[1], top / 2, STAND_SIZE_M, STAND_SIZE_M, top, yaw])


def scan_board(ego_from_lidar: Transform, ego_from_board: Transform | None, target: ChessboardTarget,
               rng: np.random.Generator, params: LidarParams = LidarParams(),
               clutter: np.ndarray = CLUTTER_BOXES) -> np.ndarray:
    """One sweep of the parked car's LiDAR over the target area.

    Args:
        ego_from_lidar: LiDAR mounting (Transform(dst="ego", src=<lidar id>)).
        ego_from_board: board pose, or None for a sweep without the board (and its stand).
        target: the board.
        rng: draws range noise, dropouts and intensity noise.
        params: beam pattern and noise (the simulator's defaults).
        clutter: (M, 7) upright boxes in the ego frame (x y z l w h yaw) besides the board and stand.
    Returns:
        (N, 4) float32 points: x y z [m] in the LiDAR frame, intensity [0, 1].
    """
    az = column_azimuths(params.n_columns)
    el = np.radians(np.asarray(params.beam_elevations_deg))
    A, E = np.meshgrid(az, el, indexing="ij")
    dirs_s = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], axis=-1).reshape(-1, 3)
    dirs = np.ascontiguousarray(ego_from_lidar.apply_vectors(dirs_s))
    origins = np.ascontiguousarray(np.broadcast_to(ego_from_lidar.translation, dirs.shape))
    boxes = np.asarray(clutter, dtype=np.float64).reshape(-1, 7)
    refl = list(CLUTTER_REFLECTIVITY[:len(boxes)]) + [0.5] * max(0, len(boxes) - len(CLUTTER_REFLECTIVITY))
    if ego_from_board is not None:
        boxes = np.vstack([boxes, _stand_box(ego_from_board, target)])
        refl.append(0.3)
    rng_w, obj, cos = cast_rays(origins, dirs, np.ascontiguousarray(boxes), params.max_range_m)
    reflect = np.where(obj >= 0, np.asarray(refl + [0.0])[np.clip(obj, 0, None)], GROUND_REFLECTIVITY)
    if ego_from_board is not None:
        # The board may be tilted in any direction: cast it in its own frame, where it is an upright box
        # centred at z = thickness / 2 (its printed face at z = 0). Shifting that frame 1 km down keeps
        # every ray origin below z = 0, so the ray-caster's ground plane cannot be hit there.
        inv = ego_from_board.inverse()
        o_b = inv.apply(origins)
        o_b[:, 2] -= 1000.0
        d_b = np.ascontiguousarray(inv.apply_vectors(dirs))
        board = np.array([[0.0, 0.0, BOARD_THICKNESS_M / 2 - 1000.0, target.width_m, target.height_m,
                           BOARD_THICKNESS_M, 0.0]])
        rb, ob, cb = cast_rays(np.ascontiguousarray(o_b), d_b, board, params.max_range_m)
        nearer = rb < rng_w
        hit_pts = o_b[nearer] + rb[nearer, None] * d_b[nearer]
        albedo, _ = _board_albedo(hit_pts[:, 0], hit_pts[:, 1], target)
        rng_w = np.where(nearer, rb, rng_w)
        cos = np.where(nearer, cb, cos)
        reflect = reflect.copy()
        reflect[nearer] = albedo
        obj = np.where(nearer, 0, obj)
    hit = np.isfinite(rng_w) & (obj != HIT_NONE)
    r_meas = rng_w + params.range_noise_m * rng.standard_normal(len(rng_w))
    keep = hit & (rng.random(len(rng_w)) >= params.dropout_prob)
    keep &= (r_meas >= params.min_range_m) & (r_meas <= params.max_range_m)
    xyz = dirs_s[keep] * r_meas[keep, None]
    inten = reflect[keep] * (0.3 + 0.7 * cos[keep]) / (1.0 + (rng_w[keep] / 60.0) ** 2)
    inten *= 1.0 + 0.05 * rng.standard_normal(len(inten))
    out = np.empty((int(keep.sum()), 4), dtype=np.float32)
    out[:, :3] = np.round(xyz * XYZ_STEPS_PER_M) / XYZ_STEPS_PER_M
    out[:, 3] = np.round(np.clip(inten, 0.0, 1.0) * 255.0) / 255.0
    return out


# ---------------------------------------------------------------------------------------------- scenario
@dataclass(frozen=True, eq=False)
class BoardShot:
    """One pose of the target.

    Args:
        image: (H, W, 3) uint8 RGB from the camera.
        lidar_points: (N, 4) float32 x y z [m] LiDAR frame, intensity [0, 1].
        ego_from_board: true board pose, Transform(dst="ego", src="board").
    """

    image: np.ndarray
    lidar_points: np.ndarray
    ego_from_board: Transform


@dataclass(frozen=True, eq=False)
class LidarCameraScenario:
    """A simulated LiDAR-camera calibration session.

    Args:
        rig: the true rig (its ``ego_from_sensor`` transforms are the truth).
        camera_id, lidar_id: the pair being calibrated.
        target: the board shown.
        shots: one per pose.
    """

    rig: Rig
    camera_id: str
    lidar_id: str
    target: ChessboardTarget
    shots: tuple[BoardShot, ...]

    @property
    def images(self) -> list[np.ndarray]:
        return [s.image for s in self.shots]

    @property
    def lidar_points(self) -> list[np.ndarray]:
        return [s.lidar_points for s in self.shots]

    @property
    def camera_from_lidar(self) -> Transform:
        """The true extrinsic, Transform(dst=camera_id, src=lidar_id)."""
        return self.rig.transform(self.camera_id, self.lidar_id)


def lidar_camera_scenario(n_poses: int = 10, seed: int = 0, rig: Rig | None = None, camera_id: str = "cam_front",
                          lidar_id: str = "lidar_top", target: ChessboardTarget = ChessboardTarget(),
                          distance_range_m: tuple[float, float] = (3.0, 8.0), max_tilt_deg: float = 30.0,
                          blur_sigma_px: float = 0.6, read_noise: float = 1.5,
                          lidar_params: LidarParams = LidarParams()) -> LidarCameraScenario:
    """Simulate a chessboard calibration session (see the module docstring).

    Args:
        n_poses: board poses (>= 1).
        seed: seeds placements and all noise.
        rig: the true rig (default ``default_rig(1)``); must have ``camera_id`` and ``lidar_id``.
        camera_id, lidar_id: the sensors to simulate.
        target: the board.
        distance_range_m: board distances from the camera [m].
        max_tilt_deg: largest left/right and up/down tilt of the board [deg].
        blur_sigma_px, read_noise: camera blur [px] and read noise [grey levels].
        lidar_params: LiDAR beam pattern and noise.
    Returns:
        LidarCameraScenario.
    """
    rig = default_rig(1) if rig is None else rig
    rng = np.random.default_rng(seed)
    cam = rig[camera_id]
    ego_from_lidar = rig.ego_from(lidar_id)
    poses = board_poses(n_poses, rig, camera_id, target, rng, distance_range_m, max_tilt_deg)
    rays = _subpixel_rays(cam.camera, 3)
    cam_from_ego = cam.ego_from_sensor.inverse()
    shots = []
    for T in poses:
        image = render_board_image(cam.camera, cam_from_ego @ T, target, rng, blur_sigma_px, read_noise, 3, rays)
        points = scan_board(ego_from_lidar, T, target, rng, lidar_params)
        shots.append(BoardShot(image, points, T))
    return LidarCameraScenario(rig, camera_id, lidar_id, target, tuple(shots))


# ---------------------------------------------------------------------------------------------- reflectors
class ReflectorScene(Scene):
    """The ego standing still (the start of a :class:`Scene` drive with ``max_speed=0``); 12 corner
    reflectors on stands (0.25 m square, 1.3 m high, at least 4 m apart) 6-45 m in front of a radar at ego
    x = 3.7 m within +-45 deg, a wall and a parked car. Nothing moves.

    Args:
        seed: the reflector layout (and the base scene).
    Attributes:
        reflectors_ego: (12, 2) float64 reflector centres x y [m] in the ego frame.
    """

    def __init__(self, seed: int):
        super().__init__(seed, duration_s=2.0, max_speed=0.0, n_sirens=0, traffic_density=0.0)
        rng = np.random.default_rng(seed)
        ego = self.ego_state(0.0)
        spots: list[np.ndarray] = []
        while len(spots) < 12:
            r, a = rng.uniform(6, 45), np.radians(rng.uniform(-45, 45))
            p = np.array([3.7 + r * np.cos(a), r * np.sin(a)])
            if all(np.linalg.norm(p - q) > 4.0 for q in spots):
                spots.append(p)
        rows = [(p[0], p[1], 0.25, 0.25, 1.3, 0.0, LABEL_POLE) for p in spots]
        rows += [(30.0, -14.0, 12.0, 0.4, 2.0, 0.3, LABEL_WALL), (18.0, 9.0, 4.5, 1.9, 1.5, 0.1, 0)]
        a = np.array(rows)
        c, s = np.cos(ego.yaw), np.sin(ego.yaw)
        n = len(a)
        boxes = np.column_stack([ego.x + c * a[:, 0] - s * a[:, 1], ego.y + s * a[:, 0] + c * a[:, 1], a[:, 4] / 2,
                                 a[:, 2], a[:, 3], a[:, 4], a[:, 5] + ego.yaw])
        self.reflectors_ego = np.array(spots)
        self._objects = SceneObjects(boxes, np.zeros((n, 2)), a[:, 6].astype(np.int32), np.arange(n, dtype=np.int32),
                                     np.full(n, 0.6, np.float32), np.full((n, 3), 150, np.uint8), np.zeros(n, np.int8))

    def objects_world(self, t_s: float) -> SceneObjects:
        """The reflectors, the wall and the car, world frame (the same at every ``t_s``)."""
        return self._objects


# ---------------------------------------------------------------------------------------------- drives
class WindingScene(Scene):
    """:class:`Scene` on a winding road: after the first 60 m straight, curves alternate left and right,
    sometimes with a short straight between, joined by transitions over which the curvature changes
    linearly (clothoids, as real roads are built, approximated by 0.5 m pieces), so the yaw rate changes
    often and always continuously, as a real vehicle's does.

    Args:
        seed, duration_s, max_speed, n_sirens, traffic_density, stop: as :class:`Scene` (traffic and
            roadside objects are laid along the new road).
        radius_m: (min, max) curve radius [m], drawn uniformly per curve.
        arc_m: (min, max) length of constant curvature per curve [m].
        transition_m: (min, max) length of each clothoid transition [m].
    """

    def __init__(self, seed: int, duration_s: float, max_speed: float = 10.0, n_sirens: int = 0,
                 traffic_density: float = 1.2, stop: bool = False,
                 radius_m: tuple[float, float] = (25.0, 50.0), arc_m: tuple[float, float] = (4.0, 15.0),
                 transition_m: tuple[float, float] = (4.0, 8.0)):
        super().__init__(seed, duration_s, max_speed=max_speed, curvy=False, n_sirens=n_sirens,
                         traffic_density=traffic_density, stop=stop)
        rng = np.random.default_rng([int(seed), 0x57AD])
        segments: list[tuple[float, float]] = [(60.0, 0.0)]
        piece = 0.5
        kappa = 0.0
        side = rng.choice([-1.0, 1.0])

        def go_to(target: float, length: float) -> None:
            n = max(1, int(round(length / piece)))
            for i in range(n):
                # Piece i carries the curvature at its middle: a linear ramp from kappa to target.
                segments.append((length / n, kappa + (target - kappa) * (i + 0.5) / n))

        while sum(seg[0] for seg in segments) < self.road.length:
            target = side / rng.uniform(*radius_m)
            go_to(target, rng.uniform(*transition_m))
            kappa = target
            segments.append((rng.uniform(*arc_m), kappa))
            if rng.random() < 0.3:
                go_to(0.0, rng.uniform(*transition_m))
                kappa = 0.0
                segments.append((rng.uniform(5.0, 15.0), 0.0))
            side = -side
        self.road = Road(segments)


def time_offset_drive(config: SimConfig, rig: Rig, radius_m: tuple[float, float] = (25.0, 50.0),
                      arc_m: tuple[float, float] = (4.0, 15.0),
                      transition_m: tuple[float, float] = (4.0, 8.0)) -> SimulatedRig:
    """The simulated rig (``SimulatedRig(config, rig)``) driving a :class:`WindingScene` built from
    ``config`` (seed, duration, speed, sirens, traffic, stop) and the road shape given (see
    :class:`WindingScene`); sensor clocks as ``config.clock_offset_ns`` / ``stamp_jitter_ns`` say.
    Returns the rig; iterate ``.messages()``."""
    sim = SimulatedRig(config, rig)
    sim.scene = WindingScene(config.seed, config.duration_s, max_speed=config.max_speed, n_sirens=config.n_sirens,
                             traffic_density=config.traffic_density, stop=config.stop, radius_m=radius_m,
                             arc_m=arc_m, transition_m=transition_m)
    return sim
