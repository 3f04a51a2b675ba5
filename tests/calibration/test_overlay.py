"""LiDAR-camera validation pictures and the edge-alignment score, on real KITTI and nuScenes frames and on
simulated frames.

Numbers printed with -s: the edge score of the true extrinsic against each 5 cm / 1 deg step.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.camera import CameraModel
from calibration.importers import (box_corners, load_mmdet3d_nuscenes_info, read_kitti_calib, read_kitti_labels,
                                   rig_from_kitti_calib, rig_from_nuscenes)
from calibration.overlay import (HEADER_PX, LEGEND_PX, STEP_NAMES, OverlayError, box_wireframes, camera_step,
                                 check_extrinsic, depth_colours, draw_lidar_overlay, draw_rig_overlay,
                                 edge_alignment, lidar_depth_edges, mosaic, overlay_title, perturb_extrinsic,
                                 prepare_edge_frame, rings_from_scan_order, write_png)
from calibration.transform import Transform
from drivers.sim import default_rig
from drivers.sim_camera import render_camera
from drivers.sim_lidar import ground_truth_boxes, simulate_sweep
from drivers.sim_scene import LABEL_BUILDING, LABEL_WALL, Scene, SceneObjects

KITTI_FRAMES = ("000000", "000001", "000002")
NUSCENES_PKL = "n015-2018-07-24-11-22-45+0800.pkl"
SURROUND = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decoded_depths(picture: np.ndarray, image_rgb: np.ndarray, region: tuple[int, int, int, int],
                   max_depth_m: float) -> np.ndarray:
    """Depths [m] read back from the colours of the point pixels drawn in ``region`` (x0, y0, x1, y1)."""
    body = picture[HEADER_PX:HEADER_PX + image_rgb.shape[0]].astype(np.int64)
    original = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR).astype(np.int64)
    x0, y0, x1, y1 = region
    b, o = body[y0:y1, x0:x1], original[y0:y1, x0:x1]
    drawn = np.any(b != o, axis=2)
    scale = np.linspace(0.0, max_depth_m, 1001)
    lut = depth_colours(scale, max_depth_m).astype(np.int64)
    colours = b[drawn]
    d2 = ((colours[:, None, :] - lut[None]) ** 2).sum(axis=2)
    # Only pixels that carry a colour of the depth scale exactly are points (box lines and labels are not).
    exact = d2.min(axis=1) == 0
    return scale[np.argmin(d2[exact], axis=1)]


# ---------------------------------------------------------------------------------------------- KITTI
@pytest.fixture(scope="module")
def kitti(realdata: Path):
    root = realdata / "kitti_object_vis" / "training"
    frames = []
    for f in KITTI_FRAMES:
        image = read_rgb(root / "image_2" / f"{f}.png")
        rig = rig_from_kitti_calib(root / "calib" / f"{f}.txt", image.shape[1], image.shape[0])
        labels = read_kitti_labels(root / "label_2" / f"{f}.txt", read_kitti_calib(root / "calib" / f"{f}.txt").rect_from_lidar)
        points = np.fromfile(root / "velodyne" / f"{f}.bin", np.float32).reshape(-1, 4)
        frames.append((f, image, rig, labels, points))
    return frames


def test_kitti_overlay_paints_the_labelled_objects_at_their_depth(kitti, tmp_path):
    for f, image, rig, labels, points in kitti:
        max_depth = 80.0
        picture = draw_rig_overlay(image, rig, "cam2", points, "lidar", None, labels.boxes, labels.class_names,
                                   max_depth, 1, note=f"KITTI {f}")
        path = write_png(tmp_path / f"kitti_{f}.png", picture)
        back = cv2.imread(str(path))
        assert back.shape == (HEADER_PX + image.shape[0] + LEGEND_PX, image.shape[1], 3)
        # Read the depths back from a picture without the wireframes, which cover small far objects.
        picture = draw_rig_overlay(image, rig, "cam2", points, "lidar", None, max_depth_m=max_depth, point_radius_px=1)
        cam_from_lidar = rig.transform("cam2", "lidar")
        for box, name, (left, top, right, bottom) in zip(labels.boxes, labels.class_names, labels.bbox_2d):
            # The middle 60 % of the object's 2D box: the drawn points there read back as the object's
            # depth, i.e. the LiDAR points that land on the object in the image are the object's own.
            cx, cy, hw, hh = (left + right) / 2, (top + bottom) / 2, 0.3 * (right - left), 0.3 * (bottom - top)
            region = (int(cx - hw), int(cy - hh), int(cx + hw) + 1, int(cy + hh) + 1)
            depths = decoded_depths(picture, image, region, max_depth)
            corner_depths = cam_from_lidar.apply(box_corners(box[None])[0])[:, 2]
            assert len(depths) >= 10, f"{f} {name}: only {len(depths)} point pixels on the object"
            median = float(np.median(depths))
            print(f"\nKITTI {f} {name}: box depth {corner_depths.min():.1f}-{corner_depths.max():.1f} m, "
                  f"points drawn on it read {median:.1f} m ({len(depths)} px)")
            assert corner_depths.min() - 1.0 <= median <= corner_depths.max() + 1.0, (f, name, median)


def test_kitti_box_wireframes_outline_the_labelled_2d_boxes(kitti):
    for f, image, rig, labels, _ in kitti:
        cam = rig["cam2"].camera
        for lines, name, box2d, trunc in zip(box_wireframes(labels.boxes, rig.transform("cam2", "lidar"), cam),
                                            labels.class_names, labels.bbox_2d, labels.truncated):
            uv = np.concatenate(lines)
            x0, y0 = np.clip(uv.min(axis=0), 0, [cam.width - 1, cam.height - 1])
            x1, y1 = np.clip(uv.max(axis=0), 0, [cam.width - 1, cam.height - 1])
            l, t, r, b = box2d
            inter = max(0.0, min(x1, r) - max(x0, l)) * max(0.0, min(y1, b) - max(y0, t))
            iou = inter / ((x1 - x0) * (y1 - y0) + (r - l) * (b - t) - inter)
            assert iou > 0.6, f"{f} {name}: wireframe {x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f} vs label {box2d}, IoU {iou:.2f}"


def test_rings_from_scan_order_splits_a_kitti_scan_into_64_lasers_top_down(kitti):
    _, _, _, _, points = kitti[0]
    ring = rings_from_scan_order(points)
    assert ring.max() + 1 == 64
    el = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    front = np.abs(np.arctan2(points[:, 1], points[:, 0])) < np.radians(40)
    medians = np.array([np.median(el[(ring == k) & front]) for k in range(64)])
    spreads = np.array([np.subtract(*np.percentile(el[(ring == k) & front], [90, 10])) for k in range(64)])
    assert np.all(np.diff(medians) < 0.05), "rings are not in top-down elevation order"
    assert np.median(spreads) < 0.3, "a ring mixes lasers of different elevations"


# ---------------------------------------------------------------------------------------------- nuScenes
@pytest.fixture(scope="module")
def nuscenes(realdata: Path):
    folder = realdata / "mmdet3d" / "demo" / "data" / "nuscenes"
    (sample,) = load_mmdet3d_nuscenes_info(folder / NUSCENES_PKL)
    points = np.fromfile(sample.lidar_path, np.float32).reshape(-1, 5)
    return sample, rig_from_nuscenes(sample.sensors), points


def test_nuscenes_six_camera_mosaic_shows_every_camera_box(nuscenes, tmp_path):
    sample, rig, points = nuscenes
    names = [sample.class_names[k] if k >= 0 else "other" for k in sample.labels]
    tiles = []
    for channel in SURROUND:
        view = sample.camera(channel)
        cam = rig[channel.lower()].camera
        # mmdet3d's lidar2cam includes the ego motion between the LiDAR and camera stamps.
        T = view.camera_from_lidar_moving
        tiles.append(draw_lidar_overlay(read_rgb(view.image_path), cam, points, T,
                                        overlay_title(channel.lower(), view.stamp_ns), sample.boxes, T, names,
                                        50.0, 2))
        # Every box mmdet3d lists for this camera gets a wireframe inside the image.
        lines = box_wireframes(sample.boxes, T, cam)
        for cb in view.boxes:
            j = int(np.argmin(np.linalg.norm(T.apply(sample.boxes[:, :3]) - cb.center_cam, axis=1)))
            visible = [uv for uv in lines[j] if cam.in_image(uv).any()]
            assert visible, f"{channel}: box {j} listed by mmdet3d has no wireframe in the image"
    picture = mosaic(tiles, columns=3, tile_width=800)
    tile_h = round(tiles[0].shape[0] * 800 / tiles[0].shape[1])
    assert picture.shape == (2 * tile_h, 3 * 800, 3)
    write_png(tmp_path / "nuscenes_mosaic.png", picture)
    # Each tile is its own camera: the tiles differ.
    assert len({t.tobytes() for t in tiles}) == 6


# ---------------------------------------------------------------------------------------------- pictures
def test_box_edges_behind_the_camera_are_clipped_at_the_near_plane():
    cam = CameraModel("pinhole", 640, 480, 400.0, 400.0, 319.5, 239.5)
    optical = Transform("cam", "ego", np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]]), np.zeros(3))
    # A 10 m long box whose centre is 2 m ahead: its rear half is behind the camera.
    straddling = np.array([[2.0, 0.0, 0.0, 10.0, 2.0, 1.5, 0.0]])
    behind = np.array([[-6.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    (lines,), (none,) = box_wireframes(straddling, optical, cam), box_wireframes(behind, optical, cam)
    assert none == []
    assert 0 < len(lines) < 14  # the rear face's 4 edges and its cross are gone
    for uv in lines:
        assert np.all(np.isfinite(uv))
    # The clipped side edges end where they meet the near plane (0.1 m ahead): far outside the image,
    # at |u - cx| = f * 1 m / 0.1 m.
    assert max(np.abs(uv[:, 0] - cam.cx).max() for uv in lines) == pytest.approx(400.0 * 1.0 / 0.1, rel=1e-6)


def test_depth_colours_run_from_red_near_to_blue_far():
    near, mid, far, beyond = depth_colours(np.array([0.0, 20.0, 40.0, 90.0]), 40.0).astype(int)
    assert near[2] > 150 and near[0] < 80  # BGR: red
    assert far[0] > 150 and far[2] < 120  # blue
    assert np.array_equal(far, beyond)
    assert mid[1] > 150  # green-yellow in between


def test_overlay_refuses_an_image_of_another_size():
    cam = CameraModel("pinhole", 640, 480, 400.0, 400.0, 319.5, 239.5)
    with pytest.raises(OverlayError, match=r"image is 320x240 but the camera is 640x480"):
        draw_lidar_overlay(np.zeros((240, 320, 3), np.uint8), cam, np.zeros((1, 3)),
                           Transform.identity("cam", "lidar"), "t")
    with pytest.raises(OverlayError, match=r"boxes given without camera_from_boxes"):
        draw_lidar_overlay(np.zeros((480, 640, 3), np.uint8), cam, np.zeros((1, 3)),
                           Transform.identity("cam", "lidar"), "t", boxes=np.zeros((1, 7)))


def test_simulated_frame_overlay_paints_ground_truth_cars_at_their_depth(tmp_path):
    rig = default_rig(1)
    scene = Scene(3, duration_s=4.0, max_speed=0.0, n_sirens=0)
    sweep = simulate_sweep(scene, 2.0, 0.1, rig.ego_from("lidar_top"), "clear", np.random.default_rng(1))
    gt = ground_truth_boxes(sweep, "ground_truth", 2_000_000_000, 0)
    # The camera exposes when the LiDAR faces forward (mid-sweep), so moving cars line up.
    image = render_camera(scene, 1.95, rig["cam_front"].camera, rig.ego_from("cam_front"), "clear",
                          np.random.default_rng(2))
    names = [gt.class_names[k] for k in gt.labels]
    picture = draw_rig_overlay(image, rig, "cam_front", sweep.points, "lidar_top", gt.stamp_ns, gt.boxes, names, 60.0)
    write_png(tmp_path / "sim.png", picture)
    cam = rig["cam_front"].camera
    cam_from_ego = rig.transform("cam_front", "ego")
    checked = 0
    for box, name, n in zip(gt.boxes, names, gt.num_points):
        corners = cam_from_ego.apply(box_corners(box[None])[0])
        if name != "car" or n < 30 or corners[:, 2].min() < 3.0:
            continue
        uv, _ = cam.project(corners)
        if not cam.in_image(uv).all():
            continue
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        w, h = x1 - x0, y1 - y0
        region = (int(x0 + 0.3 * w), int(y0 + 0.45 * h), int(x1 - 0.3 * w) + 1, int(y1 - 0.2 * h) + 1)
        depths = decoded_depths(picture, image, region, 60.0)
        assert len(depths) >= 3
        median = float(np.median(depths))
        assert corners[:, 2].min() - 1.0 <= median <= corners[:, 2].max() + 1.0, (box, median)
        checked += 1
    assert checked >= 1


# ---------------------------------------------------------------------------------------------- edge score
def test_edge_score_prefers_the_true_kitti_and_nuscenes_extrinsics_to_every_5cm_or_1deg_step(kitti, nuscenes):
    sample, rig_n, points_n = nuscenes
    groups = {
        "KITTI": [(prepare_edge_frame(image, rig["cam2"].camera, points, rings_from_scan_order(points)),
                   rig.transform("cam2", "lidar")) for _, image, rig, _, points in kitti],
        "nuScenes": [(prepare_edge_frame(read_rgb(v.image_path), rig_n[v.channel.lower()].camera, points_n,
                                         points_n[:, 4].astype(np.int64)), v.camera_from_lidar_moving)
                     for v in sample.cameras],
    }
    for group, frames in groups.items():
        true = edge_alignment(frames)
        gains = {}
        for name in STEP_NAMES:
            step = camera_step(name, 0.05, 1.0)
            gains[name] = true.score / edge_alignment([(f, perturb_extrinsic(T, step)) for f, T in frames]).score - 1
        print(f"\n{group}: true score {true.score:.4f} over {true.n_points} silhouette points; true vs step: "
              + ", ".join(f"{k} {v * 100:+.1f}%" for k, v in gains.items()))
        assert true.n_points > 1000
        assert all(g > 0 for g in gains.values()), f"{group}: a perturbed extrinsic scores as well: {gains}"
        # Rotations of 1 deg and sideways / vertical shifts of 5 cm are clearly worse. 5 cm along the
        # optical axis moves silhouettes by about 1 px at these depths: only just worse.
        clear = [k for k in STEP_NAMES if not k.endswith("tz")]
        assert all(gains[k] > 0.01 for k in clear), f"{group}: {gains}"
        assert check_extrinsic(frames, tolerance=0.005).passed


def test_edge_check_fails_a_kitti_extrinsic_turned_by_1deg_and_points_back(kitti):
    frames = [(prepare_edge_frame(image, rig["cam2"].camera, points, rings_from_scan_order(points)),
               rig.transform("cam2", "lidar")) for _, image, rig, _, points in kitti]
    for wrong, back in (("+ry", "-ry"), ("-rx", "+rx"), ("+tx", "-tx")):
        step = camera_step(wrong, 0.05, 1.0)
        check = check_extrinsic([(f, perturb_extrinsic(T, step)) for f, T in frames], tolerance=0.005)
        assert not check.passed and check.best_step == back, check.report()


class _Yard(Scene):
    """The ego standing still in front of posts, walls and building blocks (plain boxes, so the rendered
    camera image and the ray-cast LiDAR see exactly the same shapes)."""

    def __init__(self, seed: int):
        super().__init__(seed, duration_s=2.0, max_speed=0.0, n_sirens=0, traffic_density=0.0)
        rng = np.random.default_rng(seed)
        ego = self.ego_state(0.0)
        rows = []
        for _ in range(14):  # posts
            x = rng.uniform(6, 30)
            rows.append((x, rng.uniform(-0.6, 0.6) * x, 0.3, 0.3, rng.uniform(1.5, 3.5), rng.uniform(0, np.pi), LABEL_WALL))
        for _ in range(6):  # blocks
            x = rng.uniform(10, 40)
            rows.append((x, rng.uniform(-0.7, 0.7) * x, rng.uniform(1, 6), rng.uniform(0.5, 4), rng.uniform(1, 5),
                         rng.uniform(0, np.pi), LABEL_BUILDING))
        a = np.array(rows)
        c, s = np.cos(ego.yaw), np.sin(ego.yaw)
        n = len(a)
        boxes = np.column_stack([ego.x + c * a[:, 0] - s * a[:, 1], ego.y + s * a[:, 0] + c * a[:, 1], a[:, 4] / 2,
                                 a[:, 2], a[:, 3], a[:, 4], a[:, 5] + ego.yaw])
        self._objects = SceneObjects(boxes, np.zeros((n, 2)), a[:, 6].astype(np.int32), np.arange(n, dtype=np.int32),
                                     np.full(n, 0.6, np.float32), rng.integers(60, 220, (n, 3)).astype(np.uint8),
                                     np.zeros(n, np.int8))

    def objects_world(self, t_s: float) -> SceneObjects:
        return self._objects


def test_edge_check_passes_the_true_simulated_extrinsic_and_fails_every_5cm_or_1deg_error():
    rig = default_rig(1)
    cam = rig["cam_front"].camera
    T = rig.transform("cam_front", "lidar_top")
    frames = []
    for seed in (1, 2, 3):
        scene = _Yard(seed)
        sweep = simulate_sweep(scene, 1.0, 0.1, rig.ego_from("lidar_top"), "clear", np.random.default_rng(seed))
        image = render_camera(scene, 1.0, cam, rig.ego_from("cam_front"), "clear", np.random.default_rng(seed + 10))
        frames.append((prepare_edge_frame(image, cam, sweep.points, sweep.ring), T))
    true = check_extrinsic(frames, tolerance=0.005)
    print("\nsimulated yard, true extrinsic:\n" + true.report())
    assert true.passed
    inverse = {n: ("-" if n[0] == "+" else "+") + n[1:] for n in STEP_NAMES}
    for name in STEP_NAMES:
        wrong = check_extrinsic([(f, perturb_extrinsic(T, camera_step(name, 0.05, 1.0))) for f, _ in frames],
                                tolerance=0.005)
        assert not wrong.passed, f"{name}: {wrong.report()}"
        assert wrong.best_step == inverse[name], f"{name}: {wrong.report()}"


def test_depth_edges_outline_a_post_on_its_sides_and_top():
    rig = default_rig(1)
    scene = _Yard(1)
    # A post 8 m ahead in front of a tall wall 30 m ahead (ego frame).
    boxes = np.array([[8.0, 0.0, 1.0, 0.3, 0.3, 2.0, 0.0], [30.0, 0.0, 5.0, 0.5, 40.0, 10.0, 0.0]])
    ego = scene.ego_state(0.0)
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    world = boxes.copy()
    world[:, 0] = ego.x + c * boxes[:, 0] - s * boxes[:, 1]
    world[:, 1] = ego.y + s * boxes[:, 0] + c * boxes[:, 1]
    world[:, 6] = ego.yaw
    scene._objects = SceneObjects(world, np.zeros((2, 2)), np.array([LABEL_WALL] * 2, np.int32), np.arange(2, dtype=np.int32),
                                  np.full(2, 0.6, np.float32), np.full((2, 3), 128, np.uint8), np.zeros(2, np.int8))
    ego_from_lidar = rig.ego_from("lidar_top")
    sweep = simulate_sweep(scene, 1.0, 0.1, ego_from_lidar, "clear", np.random.default_rng(0))
    edges = ego_from_lidar.apply(lidar_depth_edges(sweep.points, sweep.ring))
    on_post = edges[(np.abs(edges[:, 0] - 7.85) < 0.3) & (np.abs(edges[:, 1]) < 0.5)]
    # Both sides at y = +-0.15 m (within half a column, 0.1 deg = 1.4 cm at 8 m, plus noise) and the top.
    left = on_post[on_post[:, 1] > 0.05]
    right = on_post[on_post[:, 1] < -0.05]
    assert len(left) >= 5 and len(right) >= 5
    assert np.abs(np.median(left[:, 1]) - 0.15) < 0.03 and np.abs(np.median(right[:, 1]) + 0.15) < 0.03
    # The top (2.0 m): the highest beam on the post (0.75 deg, z = 1.99 m at 6.85 m from the LiDAR) sees
    # the wall in the beam above (1.41 deg), so the outline is put half way between the two beams, at
    # 1.08 deg: z = 1.9 + 6.85 tan(1.08 deg) = 2.03 m.
    top = on_post[(on_post[:, 2] > 1.85) & (np.abs(on_post[:, 1]) < 0.14)]
    assert len(top) >= 3 and np.abs(np.median(top[:, 2]) - 2.03) < 0.01
    # Nothing on the open ground or on the face of the wall (its top and its ends at y = +-20 m are
    # outlines against the sky and the far ground).
    stray = edges[(np.hypot(edges[:, 0] - 8.0, edges[:, 1]) > 1.0) & (edges[:, 2] < 9.0) & (np.abs(edges[:, 1]) < 19.5)]
    assert len(stray) == 0, stray
