"""Dataset importers on real KITTI and nuScenes (mmdet3d) data from ../shared/realdata.

The numbers each check measures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.importers import (
    DatasetFormatError,
    NuScenesCalibratedSensor,
    UnsafePickleError,
    box_corners,
    load_mmdet3d_nuscenes_info,
    load_restricted_pickle,
    read_kitti_calib,
    read_kitti_labels,
    rig_from_kitti_calib,
    rig_from_nuscenes,
    transform_boxes,
)
from calibration.transform import Transform

KITTI_FRAMES = ["000000", "000001", "000002"]
NUSCENES_PKL = "n015-2018-07-24-11-22-45+0800.pkl"


# ---------------------------------------------------------------------------------------------- helpers
def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 3) points, (M, 7) boxes (z = centre) -> (M,) number of points inside each box."""
    counts = []
    for b in boxes:
        d = points - b[:3]
        c, s = np.cos(b[6]), np.sin(b[6])
        along = d[:, 0] * c + d[:, 1] * s
        across = -d[:, 0] * s + d[:, 1] * c
        inside = (np.abs(along) <= b[3] / 2) & (np.abs(across) <= b[4] / 2) & (np.abs(d[:, 2]) <= b[5] / 2)
        counts.append(int(inside.sum()))
    return np.array(counts)


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def clipped_hull_box(uv: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Bounding box of the convex hull of ``uv`` intersected with the image [0, W] x [0, H] (how
    mmdet3d/nuScenes derive 2D boxes from projected 3D corners), or None when they do not overlap."""
    hull = cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2)
    canvas = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    area, inter = cv2.intersectConvexConvex(hull, canvas)
    if area <= 0 or inter is None:
        return None
    inter = inter.reshape(-1, 2).astype(np.float64)
    return np.concatenate([inter.min(axis=0), inter.max(axis=0)])


# ---------------------------------------------------------------------------------------------- KITTI
@pytest.fixture(scope="module")
def kitti(realdata: Path) -> Path:
    return realdata / "kitti_object_vis" / "training"


def kitti_rig(kitti: Path, frame: str):
    image = cv2.imread(str(kitti / "image_2" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"cannot read image_2/{frame}.png"
    height, width = image.shape[:2]
    return rig_from_kitti_calib(kitti / "calib" / f"{frame}.txt", width, height), width, height


@pytest.mark.parametrize("frame", KITTI_FRAMES)
def test_kitti_rig_projects_lidar_points_like_the_raw_calib_product(kitti, frame):
    rig, width, height = kitti_rig(kitti, frame)
    calib = read_kitti_calib(kitti / "calib" / f"{frame}.txt")
    points = np.fromfile(kitti / "velodyne" / f"{frame}.bin", np.float32).reshape(-1, 4)[:, :3]
    points = points[points[:, 0] > 0].astype(np.float64)

    cam = rig["cam2"].camera
    assert (cam.width, cam.height) == (width, height)
    points_cam = rig.transform("cam2", "lidar").apply(points)
    uv, valid = cam.project(points_cam)

    hom = calib.image2_from_velo @ np.column_stack([points, np.ones(len(points))]).T
    raw_valid = hom[2] > 1e-6
    raw_uv = (hom[:2] / np.where(raw_valid, hom[2], 1.0)).T
    # A few thousand points with x > 0 are beside or behind the camera; both paths must agree which.
    np.testing.assert_array_equal(valid, raw_valid)
    # Every point, in the camera frame: P2 = K [I | t2], so K^-1 of the raw product is the 3D point.
    max_3d = np.abs(points_cam - np.linalg.solve(cam.K, hom).T).max()

    diff = np.abs(uv[valid] - raw_uv[valid]).max(axis=1)
    in_image = cam.in_image(raw_uv[valid])
    # Rays close to the image plane land at |u| up to ~1e8 px, where the ~1e-7 deviation of KITTI's
    # rotations from orthonormality (which a rigid transform cannot carry) shows as pixels; compare
    # pixels for rays within 75 degrees of the optical axis (image_2 spans about +-41 degrees).
    off_axis = np.degrees(np.arctan2(np.linalg.norm(points_cam[valid, :2], axis=1), points_cam[valid, 2]))
    within_75 = off_axis < 75.0
    print(f"\nKITTI {frame}: {valid.sum()} points in front of cam2; max |duv| {diff[in_image].max():.2e} px "
          f"over {in_image.sum()} in image, {diff[within_75].max():.2e} px over {within_75.sum()} within 75 deg, "
          f"{diff.max():.2e} px over all; max 3D difference {max_3d:.2e} m")
    assert in_image.sum() > 10000
    assert diff[in_image].max() < 1e-4
    assert diff[within_75].max() < 1e-3
    assert max_3d < 1e-5


@pytest.mark.parametrize("frame", KITTI_FRAMES)
def test_kitti_rig_camera_reproduces_p2_and_the_imu_pose(kitti, frame):
    rig, _, _ = kitti_rig(kitti, frame)
    calib = read_kitti_calib(kitti / "calib" / f"{frame}.txt")
    assert rig.ids() == ["lidar", "cam2", "imu"]
    assert rig.ego_from("lidar").allclose(Transform.identity("ego", "lidar"), atol=0)
    cam = rig["cam2"].camera
    np.testing.assert_array_equal(cam.K, calib.P2[:, :3])
    assert cam.distortion == (0.0,) * 5
    # K @ [R | t] of the rig's camera is P2 · R0_rect · Tr_velo_to_cam, all 12 entries.
    product = cam.K @ rig.transform("cam2", "lidar").matrix[:3]
    np.testing.assert_allclose(product, calib.image2_from_velo, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rig.ego_from("imu").matrix[:3], calib.Tr_imu_to_velo, atol=1e-12)


@pytest.mark.parametrize("frame", KITTI_FRAMES)
def test_kitti_label_boxes_project_inside_their_2d_boxes(kitti, frame):
    rig, _, _ = kitti_rig(kitti, frame)
    calib = read_kitti_calib(kitti / "calib" / f"{frame}.txt")
    labels = read_kitti_labels(kitti / "label_2" / f"{frame}.txt", calib.rect_from_lidar)
    cam_from_lidar = rig.transform("cam2", "lidar")
    cam = rig["cam2"].camera
    centres, valid = cam.project(cam_from_lidar.apply(labels.boxes[:, :3]))
    assert valid.all()
    l, t, r, b = labels.bbox_2d.T
    assert np.all((centres[:, 0] > l) & (centres[:, 0] < r) & (centres[:, 1] > t) & (centres[:, 1] < b))
    # The projected 3D box (size, yaw) covers nearly the same region as the hand-drawn 2D box.
    ious = []
    for box, bbox in zip(labels.boxes, labels.bbox_2d):
        uv, ok = cam.project(cam_from_lidar.apply(box_corners(box[None])[0]))
        assert ok.all()
        ious.append(iou_xyxy(np.concatenate([uv.min(axis=0), uv.max(axis=0)]), bbox))
    print(f"\nKITTI {frame}: {labels.class_names}, IoU(projected 3D box, label 2D box) = {np.round(ious, 3)}")
    assert min(ious) > 0.8


@pytest.mark.parametrize("frame", KITTI_FRAMES)
def test_kitti_label_boxes_hold_lidar_points_and_follow_the_yaw_convention(kitti, frame):
    calib = read_kitti_calib(kitti / "calib" / f"{frame}.txt")
    labels = read_kitti_labels(kitti / "label_2" / f"{frame}.txt", calib.rect_from_lidar)
    points = np.fromfile(kitti / "velodyne" / f"{frame}.bin", np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
    counts = points_in_boxes(points, labels.boxes)
    assert counts.min() >= 5, counts
    # KITTI's rotation_y is about the camera's down axis; in the LiDAR frame yaw = -ry - pi/2
    # up to the small LiDAR-camera misalignment.
    ry = np.array([float(line.split()[14]) for line in (kitti / "label_2" / f"{frame}.txt").read_text().splitlines()
                   if line.split() and line.split()[0] != "DontCare"])
    dyaw = np.angle(np.exp(1j * (labels.boxes[:, 6] - (-ry - np.pi / 2))))
    assert np.abs(dyaw).max() < 0.01


def test_kitti_labels_skip_dontcare_and_keep_sizes(kitti):
    calib = read_kitti_calib(kitti / "calib" / "000001.txt")
    labels = read_kitti_labels(kitti / "label_2" / "000001.txt", calib.rect_from_lidar)
    assert labels.class_names == ("Truck", "Car", "Cyclist")
    # Truck line: h w l = 2.85 2.63 12.34 -> l w h.
    np.testing.assert_allclose(labels.boxes[0, 3:6], [12.34, 2.63, 2.85])
    np.testing.assert_allclose(labels.bbox_2d[0], [599.41, 156.40, 629.75, 189.25])
    assert labels.occluded.tolist() == [0, 0, 3]


def test_kitti_labels_refuse_the_image_2_camera_frame(kitti):
    rig, _, _ = kitti_rig(kitti, "000000")
    with pytest.raises(ValueError, match="rectified cam0 frame.*got cam2_from_lidar"):
        read_kitti_labels(kitti / "label_2" / "000000.txt", rig.transform("cam2", "lidar"))


def test_kitti_calib_errors_name_the_file_and_key(tmp_path, kitti):
    text = (kitti / "calib" / "000000.txt").read_text()
    no_r0 = tmp_path / "no_r0.txt"
    no_r0.write_text("\n".join(line for line in text.splitlines() if not line.startswith("R0_rect")))
    with pytest.raises(DatasetFormatError, match=r"no_r0.txt: missing key 'R0_rect'"):
        read_kitti_calib(no_r0)
    short = tmp_path / "short.txt"
    short.write_text(text.replace("P2: 7.070493000000e+02 ", "P2: "))
    with pytest.raises(DatasetFormatError, match=r"short.txt: P2 needs 12 numbers, got 11"):
        read_kitti_calib(short)
    with pytest.raises(DatasetFormatError, match="cannot read KITTI calib"):
        read_kitti_calib(tmp_path / "absent.txt")


def test_kitti_label_line_with_wrong_field_count_names_the_line(tmp_path, kitti):
    calib = read_kitti_calib(kitti / "calib" / "000000.txt")
    bad = tmp_path / "label.txt"
    bad.write_text("Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57\n"
                   "Car 0.00 0 1.85 387.63 181.54 423.81\n")
    with pytest.raises(DatasetFormatError, match=r"label.txt:2: expected 15 fields .*got 7"):
        read_kitti_labels(bad, calib.rect_from_lidar)


# ---------------------------------------------------------------------------------------------- nuScenes
@pytest.fixture(scope="module")
def nuscenes(realdata: Path):
    folder = realdata / "mmdet3d" / "demo" / "data" / "nuscenes"
    (sample,) = load_mmdet3d_nuscenes_info(folder / NUSCENES_PKL)
    return sample, rig_from_nuscenes(sample.sensors)


@pytest.fixture(scope="module")
def ego_motion(nuscenes):
    """Constant rates v [m/s] and w [rad/s] such that ego(camera stamp)_from_ego(LiDAR stamp) is
    (Rodrigues(w dt), v dt) for every camera, fitted to mmdet3d's lidar2cam given our static rig.
    mmdet3d goes LiDAR -> global (LiDAR stamp) -> camera (camera stamp), so each lidar2cam folds in
    the ego motion over that camera's stamp gap dt. Static points shift opposite to the vehicle, so
    v is about minus the vehicle's velocity."""
    sample, rig = nuscenes
    dts, shifts, turns = [], [], []
    for view in sample.cameras:
        motion = rig.ego_from(view.channel.lower()) @ view.camera_from_lidar_moving @ rig.transform("lidar_top", "ego")
        dts.append((view.stamp_ns - sample.stamp_ns) * 1e-9)
        shifts.append(motion.translation)
        turns.append(cv2.Rodrigues(np.ascontiguousarray(motion.rotation))[0].ravel())
    dts, shifts, turns = np.array(dts), np.array(shifts), np.array(turns)
    v = dts @ shifts / (dts @ dts)
    w = dts @ turns / (dts @ dts)
    return v, w, dts, shifts, turns


def motion_over(v: np.ndarray, w: np.ndarray, dt: float) -> Transform:
    """ego(camera stamp)_from_ego(LiDAR stamp) under constant v, w."""
    return Transform("ego", "ego", cv2.Rodrigues(w * dt)[0], v * dt)


def test_nuscenes_rig_matches_the_info_file(nuscenes, realdata):
    sample, rig = nuscenes
    assert rig.ids() == ["lidar_top", "cam_front", "cam_front_right", "cam_front_left", "cam_back",
                         "cam_back_left", "cam_back_right"]
    assert sample.class_names[0] == "car" and len(sample.class_names) == 10
    assert len(sample.boxes) == 69 and sample.boxes.shape == (69, 7)
    assert sample.stamp_ns == 1532402927647951000
    for view in sample.cameras:
        image = cv2.imread(str(view.image_path))
        assert image is not None, view.image_path
        cam = rig[view.channel.lower()].camera
        assert (cam.width, cam.height) == (image.shape[1], image.shape[0])
    lidar = np.fromfile(sample.lidar_path, np.float32)
    assert lidar.size == 34688 * 5


def test_nuscenes_lidar2cam_differs_from_the_static_rig_by_one_constant_ego_motion(ego_motion):
    # If any camera's extrinsics in our rig were wrong (quaternion order, frame direction), its implied
    # ego motion would not fit the same constant velocity as the other five cameras.
    v, w, dts, shifts, turns = ego_motion
    translation_residual = np.abs(shifts - np.outer(dts, v)).max()
    rotation_residual = np.abs(turns - np.outer(dts, w)).max()
    print(f"\nnuScenes ego motion: v = {np.round(v, 3)} m/s, w = {np.round(w, 4)} rad/s, "
          f"residuals {translation_residual * 1e3:.2f} mm, {rotation_residual:.1e} rad over {len(dts)} cameras")
    assert 1.0 < np.linalg.norm(v) < 30.0
    assert np.linalg.norm(w) < 0.2
    assert translation_residual < 2e-3
    assert rotation_residual < 5e-4


def test_nuscenes_box_centres_project_onto_mmdet3d_center_2d(nuscenes, ego_motion):
    sample, rig = nuscenes
    v, w, _, _, _ = ego_motion
    boxes_ego = transform_boxes(sample.boxes, rig.ego_from("lidar_top"))
    worst_static, worst_moving, n_matched = 0.0, 0.0, 0
    for view in sample.cameras:
        cid = view.channel.lower()
        cam = rig[cid].camera
        dt = (view.stamp_ns - sample.stamp_ns) * 1e-9
        static = rig.transform(cid, "ego")
        moving = static @ motion_over(v, w, dt)
        centres_static = static.apply(boxes_ego[:, :3])
        centres = moving.apply(boxes_ego[:, :3])
        uv_static, in_front = cam.project(centres_static)
        uv, _ = cam.project(centres)

        matched = set()
        for box in view.boxes:
            dist = np.linalg.norm(centres - box.center_cam, axis=1)
            j = int(np.argmin(dist))
            assert dist[j] < 0.01, f"{view.channel}: no labelled box within 1 cm of {box.center_cam}"
            assert sample.labels[j] == box.label
            matched.add(j)
            err_static = np.linalg.norm(uv_static[j] - box.center_2d)
            # Without the ego motion over the stamp gap, the centre moves by at most f * |v dt| / depth.
            allowed = cam.fx * np.linalg.norm(v * dt) / box.depth + 1.0
            assert err_static < allowed, f"{view.channel} box {j}: {err_static:.2f} px > {allowed:.2f} px"
            worst_static = max(worst_static, err_static)
            worst_moving = max(worst_moving, np.linalg.norm(uv[j] - box.center_2d))
        n_matched += len(view.boxes)
        # Every labelled box of a mmdet3d class whose centre is in front of this camera and projects
        # into its image is one mmdet3d listed for this camera.
        visible = in_front & cam.in_image(uv_static) & (sample.labels >= 0)
        assert set(np.nonzero(visible)[0]) <= matched, f"{view.channel}: {set(np.nonzero(visible)[0]) - matched}"
    print(f"\nnuScenes center_2d: {n_matched} camera boxes; max error static rig {worst_static:.2f} px, "
          f"with constant-velocity ego motion {worst_moving:.3f} px")
    assert n_matched == 84
    assert worst_moving < 0.5


def test_nuscenes_box_corners_fill_mmdet3d_2d_boxes(nuscenes, ego_motion):
    sample, rig = nuscenes
    v, w, _, _, _ = ego_motion
    # nuScenes annotations are upright in the global frame; go through it so the corners tilt with
    # the vehicle's pitch and roll as the annotated boxes do.
    global_from_ego = sample.global_from_ego
    boxes_global = transform_boxes(transform_boxes(sample.boxes, rig.ego_from("lidar_top")), global_from_ego)
    corners_global = box_corners(boxes_global)
    worst_static, worst_moving = 1.0, 1.0
    for view in sample.cameras:
        cid = view.channel.lower()
        cam = rig[cid].camera
        dt = (view.stamp_ns - sample.stamp_ns) * 1e-9
        static = rig.transform(cid, "ego") @ global_from_ego.inverse()
        moving = rig.transform(cid, "ego") @ motion_over(v, w, dt) @ global_from_ego.inverse()
        centres = moving.apply(boxes_global[:, :3])
        for box in view.boxes:
            j = int(np.argmin(np.linalg.norm(centres - box.center_cam, axis=1)))
            for T, name in ((static, "static"), (moving, "moving")):
                c8 = T.apply(corners_global[j])
                uv, _ = cam.project(c8[c8[:, 2] > 0])
                region = clipped_hull_box(uv, cam.width, cam.height)
                assert region is not None, f"{view.channel} box {j}: corners miss the image"
                iou = iou_xyxy(region, box.bbox_xyxy)
                if name == "static":
                    worst_static = min(worst_static, iou)
                else:
                    worst_moving = min(worst_moving, iou)
    print(f"\nnuScenes 2D boxes: min IoU static rig {worst_static:.3f}, with ego motion {worst_moving:.4f}")
    assert worst_static > 0.4
    assert worst_moving > 0.98


def test_nuscenes_info_box_z_is_the_geometric_centre(nuscenes):
    # The info file keeps nuScenes' box centre; mmdet3d moves z to the bottom only when it builds
    # LiDARInstance3DBoxes. Count LiDAR points per box both ways and compare with num_lidar_pts.
    sample, _ = nuscenes
    points = np.fromfile(sample.lidar_path, np.float32).reshape(-1, 5)[:, :3].astype(np.float64)
    as_centre = points_in_boxes(points, sample.boxes)
    bottom = sample.boxes.copy()
    bottom[:, 2] += bottom[:, 5] / 2
    as_bottom = points_in_boxes(points, bottom)
    swapped = sample.boxes[:, [0, 1, 2, 4, 3, 5, 6]]
    as_swapped = points_in_boxes(points, swapped)
    n = len(sample.boxes)
    exact = [(counts == sample.num_lidar_pts).sum() for counts in (as_centre, as_bottom, as_swapped)]
    print(f"\nnuScenes boxes whose point count equals num_lidar_pts: z centre {exact[0]}/{n}, "
          f"z bottom {exact[1]}/{n}, l and w swapped {exact[2]}/{n}")
    assert exact[0] >= 0.85 * n
    assert exact[1] < 0.5 * n and exact[2] < 0.75 * n


def test_nuscenes_record_quaternion_is_w_first():
    q = (np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5))  # 90 degrees about +z
    record = NuScenesCalibratedSensor("RADAR_FRONT", "radar", (3.4, 0.0, 0.5), q)
    rig = rig_from_nuscenes([record])
    assert rig.ids() == ["radar_front"] and rig["radar_front"].kind == "radar"
    np.testing.assert_allclose(rig.ego_from("radar_front").apply(np.array([[1.0, 0, 0]])), [[3.4, 1.0, 0.5]],
                               atol=1e-12)


def test_nuscenes_record_rejects_cameras_without_intrinsics_and_skewed_intrinsics():
    with pytest.raises(ValueError, match="CAM_FRONT.*camera_intrinsic is required for cameras"):
        NuScenesCalibratedSensor("CAM_FRONT", "camera", (0, 0, 0), (1, 0, 0, 0), None, 1600, 900)
    with pytest.raises(ValueError, match="CAM_FRONT.*width and height"):
        NuScenesCalibratedSensor("CAM_FRONT", "camera", (0, 0, 0), (1, 0, 0, 0), ((1, 0, 1), (0, 1, 1), (0, 0, 1)))
    with pytest.raises(ValueError, match="must be \\[\\[fx,0,cx\\]"):
        NuScenesCalibratedSensor("CAM_FRONT", "camera", (0, 0, 0), (1, 0, 0, 0),
                                 ((1000, 5, 800), (0, 1000, 450), (0, 0, 1)), 1600, 900)
    with pytest.raises(ValueError, match="LIDAR_TOP.*only for cameras"):
        NuScenesCalibratedSensor("LIDAR_TOP", "lidar", (0, 0, 0), (1, 0, 0, 0),
                                 ((1000, 0, 800), (0, 1000, 450), (0, 0, 1)), 1600, 900)


def test_transform_boxes_turns_yaw_with_the_frame():
    boxes = np.array([[10.0, 0.0, 1.0, 4.0, 2.0, 1.5, 0.0]])
    T = Transform.from_rpy("ego", "lidar", 0.0, 0.0, np.pi / 2, [1.0, 0.0, 2.0])
    out = transform_boxes(boxes, T)
    np.testing.assert_allclose(out, [[1.0, 10.0, 3.0, 4.0, 2.0, 1.5, np.pi / 2]], atol=1e-12)
    back = transform_boxes(out, T.inverse())
    np.testing.assert_allclose(back, boxes, atol=1e-12)


# ---------------------------------------------------------------------------------------------- pickles
def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(UnsafePickleError) as err:
        load_restricted_pickle(evil)
    assert "evil.pkl" in str(err.value) and "refusing global os.system" in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="evil.pkl: refusing global os.system"):
        load_mmdet3d_nuscenes_info(evil)


@pytest.mark.parametrize(
    "payload, name",
    [
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
        (b"cnumpy.core.multiarray\nfrombuffer\n(C\x00\ntR.", "numpy.core.multiarray.frombuffer"),
        (b"csubprocess\nPopen\n(S'ls'\ntR.", "subprocess.Popen"),
    ],
    ids=["eval", "numpy_load", "numpy_other", "subprocess"],
)
def test_restricted_unpickler_refuses_other_globals(tmp_path, payload, name):
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=f"refusing global {name}"):
        load_restricted_pickle(path)


def test_restricted_unpickler_loads_numpy_values(tmp_path):
    data = {"array": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(2.5), "list": [1, "a"]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    back = load_restricted_pickle(path)
    np.testing.assert_array_equal(back["array"], data["array"])
    assert back["array"].dtype == np.float32
    assert back["scalar"] == 2.5 and back["list"] == [1, "a"]


def test_mmdet3d_info_with_a_missing_key_names_it(tmp_path):
    path = tmp_path / "info.pkl"
    path.write_bytes(pickle.dumps({"metainfo": {"categories": {"car": 0}}, "data_list": [{"token": "t"}]}))
    with pytest.raises(DatasetFormatError, match=r"info.pkl: data_list\[0\]: missing key 'lidar_points'"):
        load_mmdet3d_nuscenes_info(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetFormatError, match="garbage.pkl: not a valid pickle"):
        load_restricted_pickle(garbage)
