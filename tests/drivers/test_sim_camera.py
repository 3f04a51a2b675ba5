"""Simulated cameras: geometry (horizon, projection, occlusion, fisheye), weather physics, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.camera import CameraModel
from calibration.transform import FrameMismatchError, Transform, rotation_from_rpy
from drivers.messages import CLASS_NAMES
from drivers.sim_camera import (
    HIT_GROUND,
    HIT_SKY,
    WEATHERS,
    render_camera,
    render_objects,
    road_coordinates,
    road_view,
)
from drivers.sim_scene import LABEL_POLE, Scene, SceneObjects

# Optical frame (z forward, x right, y down) expressed in the ego frame (x forward, y left, z up).
EGO_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAM_HEIGHT = 1.6
PINHOLE = CameraModel("pinhole", 640, 360, 400.0, 400.0, 319.5, 179.5)
PINHOLE_DISTORTED = CameraModel("pinhole", 640, 360, 400.0, 400.0, 319.5, 179.5, (-0.05, 0.01, 0.0, 0.0, 0.0))
FISHEYE = CameraModel("fisheye", 640, 480, 230.0, 230.0, 319.5, 239.5, (0.02, -0.01, 0.0, 0.0))
T_S = 10.0


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene(seed=3, duration_s=40.0)


@pytest.fixture(scope="module")
def road(scene):
    return road_view(scene, T_S)


def camera_pose(pitch_down_rad: float = 0.0, yaw_rad: float = 0.0) -> Transform:
    """ego_from_camera for a camera at x = 1.5 m, 1.6 m high, pitched down / yawed left by the angles."""
    R = rotation_from_rpy(0.0, pitch_down_rad, yaw_rad) @ EGO_FROM_OPTICAL
    return Transform("ego", "cam", R, [1.5, 0.0, CAM_HEIGHT])


def subset(objects: SceneObjects, keep) -> SceneObjects:
    keep = np.asarray(keep)
    return SceneObjects(objects.boxes[keep], objects.velocities[keep], objects.labels[keep],
                        objects.track_ids[keep], objects.reflectivity[keep], objects.color[keep],
                        objects.siren[keep])


def make_objects(rows, track_ids=None) -> SceneObjects:
    """rows: (x, y, length, width, height, yaw, label, rgb) standing on the ground, ego frame."""
    n = len(rows)
    track_ids = np.arange(n) if track_ids is None else np.asarray(track_ids)
    boxes = np.array([[r[0], r[1], r[4] / 2, r[2], r[3], r[4], r[5]] for r in rows], dtype=np.float64)
    return SceneObjects(boxes.reshape(n, 7), np.zeros((n, 2)), np.array([r[6] for r in rows], dtype=np.int32),
                        track_ids.astype(np.int32), np.full(n, 0.5, dtype=np.float32),
                        np.array([r[7] for r in rows], dtype=np.uint8).reshape(n, 3), np.zeros(n, dtype=np.int8))


def no_objects() -> SceneObjects:
    return make_objects([])


def render(objects, road, camera=PINHOLE, pose=None, weather="clear", seed=0):
    return render_objects(objects, road, T_S, camera, pose or camera_pose(), weather, np.random.default_rng(seed))


def luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def horizon_curve(camera: CameraModel, pose: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Image of the horizon (directions with zero ego elevation), sampled densely: (u, v) pixels."""
    az = np.linspace(-np.pi, np.pi, 20001)
    dirs_ego = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], axis=1)
    dirs_cam = dirs_ego @ pose.rotation  # rotation.T applied to each row: camera_from_ego
    uv, valid = camera.project(dirs_cam)
    ok = valid & camera.in_image(uv)
    order = np.argsort(uv[ok, 0])
    return uv[ok, 0][order], uv[ok, 1][order]


def first_non_sky_row(object_index: np.ndarray) -> np.ndarray:
    """Per column, the first row (from the top) that is not sky; -1 where the whole column is sky."""
    not_sky = object_index != HIT_SKY
    rows = np.argmax(not_sky, axis=0)
    return np.where(not_sky.any(axis=0), rows, -1)


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("pitch_deg", [0.0, 5.0, -3.0])
def test_horizon_row_follows_camera_pitch(road, pitch_deg):
    pitch = np.radians(pitch_deg)
    r = render(no_objects(), road, pose=camera_pose(pitch))
    v_horizon = PINHOLE.cy - PINHOLE.fy * np.tan(pitch)  # pitched down: the horizon moves up
    # Geometry: every column turns from sky to ground within one pixel of the predicted row.
    rows = first_non_sky_row(r.object_index)
    assert np.all(np.abs(rows - v_horizon) <= 1.0), (rows.min(), rows.max(), v_horizon)
    # Appearance: blue sky above, grey/green ground below (central columns, 3 px away from the line).
    blue_minus_red = (r.image[:, :, 2].astype(int) - r.image[:, :, 0].astype(int))[:, 160:480].mean(axis=1)
    above = blue_minus_red[: int(v_horizon) - 3]
    below = blue_minus_red[int(v_horizon) + 4:]
    assert above.min() > 15, above.min()
    assert below.max() < 10, below.max()
    assert np.all(r.object_index[int(v_horizon) + 2:] == HIT_GROUND)


def test_car_from_scene_renders_inside_its_projected_corners(scene, road):
    objects = scene.objects_at(T_S)
    pose = camera_pose()
    cam_from_ego = pose.inverse()
    # A car the camera sees fully: in front, 8-40 m, inside the image with a margin.
    chosen = None
    for i in np.flatnonzero(objects.labels == CLASS_NAMES.index("car")):
        corners = box_corners(objects.boxes[i])
        uv, valid = PINHOLE_DISTORTED.project(cam_from_ego.apply(corners))
        if 8.0 < objects.boxes[i, 0] < 40.0 and valid.all() and PINHOLE_DISTORTED.in_image(uv, margin=2).all():
            chosen = (i, uv)
            break
    assert chosen is not None, "scene seed 3 at t=10 s should have a car in view of the front camera"
    i, uv = chosen
    car_only = subset(objects, [i])
    with_car = render(car_only, road, camera=PINHOLE_DISTORTED, pose=pose)
    empty = render(no_objects(), road, camera=PINHOLE_DISTORTED, pose=pose)
    hull = np.zeros((PINHOLE.height, PINHOLE.width), dtype=np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(uv).astype(np.int32)), 1)
    inside = hull.astype(bool)
    changed = np.abs(with_car.image.astype(int) - empty.image.astype(int)).max(axis=2) > 2
    assert inside.sum() > 200  # the car is big enough for the fractions to mean something
    assert changed[inside].mean() > 0.8, changed[inside].mean()
    # The car's pixels are where its corners project (one pixel of slack for the curved distorted edges).
    car_pixels = with_car.object_index == 0
    grown = cv2.dilate(hull, np.ones((3, 3), np.uint8)).astype(bool)
    assert car_pixels.sum() > 0.6 * inside.sum()
    assert grown[car_pixels].mean() > 0.99


def box_corners(box: np.ndarray) -> np.ndarray:
    x, y, z, L, W, H, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    out = []
    for dx in (-L / 2, L / 2):
        for dy in (-W / 2, W / 2):
            for dz in (-H / 2, H / 2):
                out.append([x + c * dx - s * dy, y + s * dx + c * dy, z + dz])
    return np.array(out)


def test_nearer_pedestrian_occludes_farther_car_regardless_of_list_order(road):
    ped = (10.0, 0.0, 0.6, 0.6, 1.75, 0.0, CLASS_NAMES.index("pedestrian"), (200, 40, 40))
    car = (30.0, 0.8, 4.6, 1.9, 1.6, 0.0, CLASS_NAMES.index("car"), (30, 60, 170))
    ped_only = render(make_objects([ped]), road)
    car_only = render(make_objects([car]), road)
    # Interior pedestrian pixels (eroded so anti-aliased edges do not count).
    ped_mask = cv2.erode((ped_only.object_index == 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    car_mask = car_only.object_index == 0
    overlap = ped_mask & car_mask
    assert overlap.sum() > 50  # the pedestrian stands in front of the car in the image
    # Track ids follow the objects (they seed clothing colours), the list order is what changes.
    for rows, ids, ped_idx in (([ped, car], [0, 1], 0), ([car, ped], [1, 0], 1)):
        both = render(make_objects(rows, ids), road)
        assert np.all(both.object_index[overlap] == ped_idx)
        assert np.array_equal(both.image[overlap], ped_only.image[overlap])
        # The car is still visible wherever the pedestrian does not cover it.
        uncovered = car_mask & (ped_only.object_index != 0)
        assert np.sum(both.object_index[uncovered] == 1 - ped_idx) > 0.95 * uncovered.sum()
    assert np.abs(ped_only.image[overlap].astype(int) - car_only.image[overlap].astype(int)).mean() > 20


def test_depth_map_matches_ground_plane_and_box_distance(road):
    car = (20.0, 0.0, 4.6, 1.9, 1.6, 0.0, CLASS_NAMES.index("car"), (30, 60, 170))
    r = render(make_objects([car]), road)
    # A ground pixel below the horizon: depth along the optical axis = height / tan(depression).
    v = 300
    expected = PINHOLE.fy * CAM_HEIGHT / (v - PINHOLE.cy)
    assert r.depth[v, 20] == pytest.approx(expected, rel=1e-4)
    # The car's rear face is at x = 20 - 2.3 m ahead of the ego, the camera at x = 1.5 m.
    car_depth = r.depth[r.object_index == 0]
    assert np.median(car_depth) == pytest.approx(20.0 - 2.3 - 1.5, abs=0.05)
    assert np.all(np.isinf(r.depth[r.object_index == HIT_SKY]))


def test_fisheye_renders_the_horizon_as_the_curve_its_model_implies(road):
    pose = camera_pose(np.radians(25.0))
    r = render(no_objects(), road, camera=FISHEYE, pose=pose)
    assert r.image.shape == (480, 640, 3)
    u, v = horizon_curve(FISHEYE, pose)
    cols = np.arange(40, 600)
    v_pred = np.interp(cols, u, v)
    rows = first_non_sky_row(r.object_index)[cols]
    assert np.abs(rows - v_pred).max() <= 1.5
    # A pitched fisheye bends the horizon: the edges sit far below the centre (a pinhole keeps it straight).
    sag = v_pred[[0, -1]].mean() - v_pred[len(cols) // 2]
    assert sag > 40
    # The image agrees: sky colour above the curve, none below it.
    b_r = r.image[:, :, 2].astype(int) - r.image[:, :, 0].astype(int)
    vv = np.arange(480)[:, None]
    assert np.median(b_r[:, cols][vv < v_pred[None, :] - 4]) > 15
    assert np.median(b_r[:, cols][vv > v_pred[None, :] + 4]) < 8


def test_road_coordinates_put_the_ego_on_its_lane_centre(scene, road):
    s, d, ok = road_coordinates(road, np.array([[0.0, 0.0], [0.0, 3.5], [25.0, -3.5]]))
    assert ok.all()
    assert s[0] == pytest.approx(scene.ego_s(T_S), abs=0.01)
    assert d[:2] == pytest.approx([0.0, 3.5], abs=0.01)
    # A point 25 m ahead in the right lane stays 3.5 m right of the (possibly curving) centreline.
    xw, yw, _, _ = scene.road.to_world(s[2], d[2])
    ego = scene.ego_state(T_S)
    back = np.linalg.inv(ego.world_from_ego()) @ np.array([float(xw), float(yw), 1.0])
    assert back[:2] == pytest.approx([25.0, -3.5], abs=0.01)


# ------------------------------------------------------------------------------------------- weather


def weber_contrast(with_obj, without_obj, mask) -> float:
    lo, lb = luminance(with_obj.image)[mask].mean(), luminance(without_obj.image)[mask].mean()
    return abs(lo - lb) / lb


def test_fog_lowers_contrast_of_far_objects_more_than_near_ones(road):
    ratios = {}
    for x in (12.0, 45.0):
        obj = make_objects([(x, 0.0, 4.6, 1.9, 1.6, 0.0, CLASS_NAMES.index("car"), (25, 25, 28))])
        contrast = {}
        for weather in ("clear", "fog"):
            with_car = render(obj, road, weather=weather)
            empty = render(no_objects(), road, weather=weather)
            mask = cv2.erode((with_car.object_index == 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            contrast[weather] = weber_contrast(with_car, empty, mask)
        ratios[x] = contrast["fog"] / contrast["clear"]
    # Koschmieder: contrast falls as exp(-3.912 d / V); with V = 60 m that is 0.45 at 12 m, 0.05 at 45 m.
    assert ratios[12.0] < 1.0
    assert ratios[45.0] < 0.35 * ratios[12.0], ratios


def test_night_is_much_darker_but_street_lamps_stay_bright(scene, road):
    pose = camera_pose()
    objects = scene.objects_at(T_S)
    clear = render_objects(objects, road, T_S, PINHOLE, pose, "clear", np.random.default_rng(0))
    night = render_objects(objects, road, T_S, PINHOLE, pose, "night", np.random.default_rng(0))
    assert night.image.mean() < 0.45 * clear.image.mean()
    lum = luminance(night.image)
    assert np.median(lum) < 45
    # Every street lamp in view within 40 m (pole + arm + lamp head) has near-saturated pixels.
    near_poles = np.flatnonzero((objects.labels == LABEL_POLE) & (objects.boxes[:, 0] > 3)
                                & (np.hypot(objects.boxes[:, 0], objects.boxes[:, 1]) < 40))
    checked = 0
    for i in near_poles:
        mask = cv2.dilate((night.object_index == i).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        if (night.object_index == i).sum() < 30:
            continue
        assert lum[mask].max() > 200, (i, lum[mask].max())
        checked += 1
    assert checked >= 1
    # Sensor noise is much stronger at night (high gain): compare pixel-to-pixel noise in the sky.
    sky_noise = {w: np.std(np.diff(luminance(r.image)[5:40, 300:340], axis=1)) for w, r in
                 (("clear", clear), ("night", night))}
    assert sky_noise["night"] > 2 * sky_noise["clear"], sky_noise


def test_rain_lowers_global_contrast_and_draws_drops(scene):
    pose = camera_pose()
    clear = render_camera(scene, T_S, PINHOLE, pose, "clear", np.random.default_rng(0))
    rain = render_camera(scene, T_S, PINHOLE, pose, "rain", np.random.default_rng(0))
    assert luminance(rain).std() < 0.85 * luminance(clear).std()
    # The streaks and drops come from the rng: another seed moves them.
    rain2 = render_camera(scene, T_S, PINHOLE, pose, "rain", np.random.default_rng(1))
    assert np.abs(rain.astype(int) - rain2.astype(int)).max(axis=2).__gt__(20).mean() > 0.002


def test_every_weather_renders_a_full_image(scene):
    for weather in WEATHERS:
        img = render_camera(scene, T_S, PINHOLE_DISTORTED, camera_pose(), weather, np.random.default_rng(0))
        assert img.shape == (360, 640, 3) and img.dtype == np.uint8
        assert 5 < img.mean() < 250 and img.std() > 5


# -------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_images_and_another_seed_differs(scene):
    pose = camera_pose()
    a = render_camera(scene, T_S, PINHOLE, pose, "clear", np.random.default_rng(7))
    b = render_camera(scene, T_S, PINHOLE, pose, "clear", np.random.default_rng(7))
    c = render_camera(scene, T_S, PINHOLE, pose, "clear", np.random.default_rng(8))
    assert np.array_equal(a, b)
    diff = np.abs(a.astype(int) - c.astype(int))
    assert diff.mean() > 0.3  # sensor noise differs everywhere...
    assert diff.mean() < 3.0  # ...but it is only noise: same scene, same time


def test_unknown_weather_is_rejected(scene):
    with pytest.raises(ValueError, match="weather must be one of"):
        render_camera(scene, T_S, PINHOLE, camera_pose(), "snow", np.random.default_rng(0))


def test_camera_transform_must_map_into_the_ego_frame(scene):
    wrong = Transform("cam", "ego", EGO_FROM_OPTICAL.T, [0.0, 0.0, 0.0])
    with pytest.raises(FrameMismatchError, match="dst='ego'"):
        render_camera(scene, T_S, PINHOLE, wrong, "clear", np.random.default_rng(0))


def test_camera_below_the_ground_is_rejected(scene):
    pose = Transform("ego", "cam", EGO_FROM_OPTICAL, [1.5, 0.0, -0.2])
    with pytest.raises(ValueError, match="above the ground"):
        render_camera(scene, T_S, PINHOLE, pose, "clear", np.random.default_rng(0))
