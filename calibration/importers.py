"""Rigs and labelled boxes from public datasets: KITTI object files and nuScenes / mmdet3d info files.

KITTI (object benchmark): :func:`read_kitti_calib` parses a ``calib/*.txt``, :func:`rig_from_kitti_calib`
turns it into a :class:`~calibration.rig.Rig` and :func:`read_kitti_labels` converts ``label_2/*.txt`` into
boxes in the LiDAR frame.

nuScenes: :class:`NuScenesCalibratedSensor` is one row of nuScenes' ``calibrated_sensor`` table joined with
its ``sensor`` row; :func:`rig_from_nuscenes` builds the rig. :func:`load_mmdet3d_nuscenes_info` reads the
info ``.pkl`` files written by mmdetection3d (v2 info format) with a restricted unpickler that only
rebuilds numpy arrays, scalars and dtypes, so a hostile file cannot run code.

Boxes everywhere are (N, 7) float64 ``x y z l w h yaw``: centre [m] (z is the geometric centre, not the
bottom), length along the heading, width, height [m], yaw [rad] CCW from +x about +z of the frame named
on the field.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from calibration.camera import CameraModel
from calibration.rig import EGO_FRAME, Rig, Sensor
from calibration.transform import Transform, quat_wxyz_to_matrix

# Frame of KITTI's label locations: the rectified reference camera (cam0 after R0_rect).
KITTI_RECT_FRAME = "cam0_rect"


class DatasetFormatError(ValueError):
    """A dataset file does not have the expected layout; the message names the file and what is wrong."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle references a global outside the allow-list; it was not loaded."""


# ---------------------------------------------------------------------------------------------- boxes
def transform_boxes(boxes: np.ndarray, dst_from_src: Transform) -> np.ndarray:
    """Move boxes from frame ``src`` to frame ``dst``.

    Args:
        boxes: (N, 7) ``x y z l w h yaw`` in frame ``dst_from_src.src``; centre [m], size [m], yaw [rad]
            CCW from +x about +z.
        dst_from_src: the rigid transform between the two frames.
    Returns:
        (N, 7) float64 in frame ``dst``. The centre is mapped exactly; the yaw is the heading direction
        mapped and projected onto the dst x-y plane, so a transform with roll or pitch keeps boxes upright.
    """
    B = np.asarray(boxes, dtype=np.float64)
    if B.ndim != 2 or B.shape[1] != 7:
        raise ValueError(f"transform_boxes expects (N, 7) boxes, got shape {B.shape}")
    out = B.copy()
    out[:, :3] = dst_from_src.apply(B[:, :3])
    heading = np.stack([np.cos(B[:, 6]), np.sin(B[:, 6]), np.zeros(len(B))], axis=1)
    h = dst_from_src.apply_vectors(heading)
    out[:, 6] = np.arctan2(h[:, 1], h[:, 0])
    return out


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of boxes.

    Args:
        boxes: (N, 7) ``x y z l w h yaw`` (z = geometric centre), any frame with z up.
    Returns:
        (N, 8, 3) float64 corners [m] in the same frame; corners 0-3 are the bottom face, 4-7 the top.
    """
    B = np.asarray(boxes, dtype=np.float64)
    if B.ndim != 2 or B.shape[1] != 7:
        raise ValueError(f"box_corners expects (N, 7) boxes, got shape {B.shape}")
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    lx = B[:, 3:4] * sx
    ly = B[:, 4:5] * sy
    lz = B[:, 5:6] * sz
    c, s = np.cos(B[:, 6:7]), np.sin(B[:, 6:7])
    x = B[:, 0:1] + c * lx - s * ly
    y = B[:, 1:2] + s * lx + c * ly
    z = B[:, 2:3] + lz
    return np.stack([x, y, z], axis=2)


# ---------------------------------------------------------------------------------------------- KITTI
@dataclass(frozen=True, eq=False)
class KittiCalib:
    """One KITTI object-benchmark calibration file.

    Args:
        P0, P1, P2, P3: (3, 4) float64 projection matrices of the rectified cameras 0-3 [px]; each maps
            homogeneous points of the rectified reference frame (cam0 after R0_rect) to pixels.
        R0_rect: (3, 3) float64 rectifying rotation, unrectified cam0 -> rectified cam0.
        Tr_velo_to_cam: (3, 4) float64, Velodyne -> unrectified cam0 [m].
        Tr_imu_to_velo: (3, 4) float64, IMU (OXTS) -> Velodyne [m].
    """

    P0: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    P3: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    Tr_imu_to_velo: np.ndarray

    @property
    def image2_from_velo(self) -> np.ndarray:
        """(3, 4) float64 ``P2 · R0_rect · Tr_velo_to_cam``: Velodyne points (homogeneous) -> image_2 pixels."""
        R0 = np.eye(4)
        R0[:3, :3] = self.R0_rect
        Tr = np.eye(4)
        Tr[:3, :] = self.Tr_velo_to_cam
        return self.P2 @ R0 @ Tr

    @property
    def rect_from_lidar(self) -> Transform:
        """``cam0_rect_from_lidar`` = R0_rect · Tr_velo_to_cam: the frame KITTI label locations are in."""
        M = self.R0_rect @ self.Tr_velo_to_cam
        return Transform.from_matrix(KITTI_RECT_FRAME, "lidar", M)

    @property
    def K2(self) -> np.ndarray:
        """(3, 3) float64 intrinsics of the rectified left colour camera (image_2): ``P2[:, :3]``."""
        return self.P2[:, :3].copy()

    @property
    def cam2_from_lidar(self) -> Transform:
        """``cam2_from_lidar``: P2 = K2 · [I | t2] with t2 = K2⁻¹ P2[:, 3] (cam2's offset from the rectified
        cam0, mostly the 6 cm baseline), so cam2_from_lidar = [I | t2] · R0_rect · Tr_velo_to_cam and
        ``K2 @ cam2_from_lidar`` reproduces :attr:`image2_from_velo` exactly."""
        t2 = np.linalg.solve(self.K2, self.P2[:, 3])
        M = self.R0_rect @ self.Tr_velo_to_cam
        M[:, 3] += t2
        return Transform.from_matrix("cam2", "lidar", M)


_KITTI_SHAPES = {
    "P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4),
    "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4),
}


def read_kitti_calib(path: str | Path) -> KittiCalib:
    """Parse a KITTI object calib ``.txt`` (``key: v1 v2 ...`` lines; P0-P3, R0_rect, Tr_velo_to_cam,
    Tr_imu_to_velo). Raises DatasetFormatError naming the file and key when one is missing or malformed."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetFormatError(f"cannot read KITTI calib {path}: {e.strerror}") from e
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise DatasetFormatError(f"{path}:{lineno}: expected 'key: values', got {line[:60]!r}")
        try:
            values[key.strip()] = np.array(rest.split(), dtype=np.float64)
        except ValueError as e:
            raise DatasetFormatError(f"{path}:{lineno}: {key.strip()} has a non-number: {e}") from e
    mats = {}
    for key, shape in _KITTI_SHAPES.items():
        if key not in values:
            raise DatasetFormatError(f"{path}: missing key '{key}' (has: {', '.join(values)})")
        v = values[key]
        if v.size != shape[0] * shape[1]:
            raise DatasetFormatError(f"{path}: {key} needs {shape[0] * shape[1]} numbers, got {v.size}")
        mats[key] = v.reshape(shape)
    P2 = mats["P2"]
    if P2[1, 0] != 0 or P2[2, 0] != 0 or P2[2, 1] != 0 or P2[2, 2] != 1 or P2[0, 1] != 0:
        raise DatasetFormatError(f"{path}: P2[:, :3] is not a zero-skew intrinsic matrix: {P2[:, :3].tolist()}")
    return KittiCalib(**mats)


def rig_from_kitti_calib(path: str | Path, width: int, height: int, name: str | None = None) -> Rig:
    """Rig of a KITTI recording from its object calib file.

    KITTI has no separate vehicle frame, so the ego frame of this rig is the Velodyne frame (x forward,
    y left, z up; origin at the LiDAR, about 1.73 m above the road, not on the ground as the project's own
    rigs). Sensors:

    - ``lidar``: identity.
    - ``cam2``: the rectified left colour camera (image_2), pinhole without distortion (KITTI images are
      rectified), K = P2[:, :3] and ``cam2_from_lidar`` such that ``K @ cam2_from_lidar`` equals
      ``P2 · R0_rect · Tr_velo_to_cam`` (see :attr:`KittiCalib.cam2_from_lidar`).
    - ``imu``: the OXTS unit, from Tr_imu_to_velo.

    Nominal rates: LiDAR and camera 10 Hz, IMU 100 Hz.

    Args:
        path: calib ``.txt``.
        width, height: image_2 size [px]; KITTI calib files do not hold it (images are 1224-1242 x 370-375).
        name: rig name; default ``kitti_<file stem>``.
    """
    path = Path(path)
    calib = read_kitti_calib(path)
    K = calib.K2
    try:
        cam = CameraModel("pinhole", width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], (0.0,) * 5)
        lidar_from_cam2 = calib.cam2_from_lidar.inverse()
        ego_from_cam2 = Transform(EGO_FRAME, "cam2", lidar_from_cam2.rotation, lidar_from_cam2.translation)
        ego_from_imu = Transform.from_matrix(EGO_FRAME, "imu", calib.Tr_imu_to_velo)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: {e}") from e
    sensors = (
        Sensor("lidar", "lidar", Transform.identity(EGO_FRAME, "lidar"), rate_hz=10.0),
        Sensor("cam2", "camera", ego_from_cam2, camera=cam, rate_hz=10.0),
        Sensor("imu", "imu", ego_from_imu, rate_hz=100.0),
    )
    return Rig(name or f"kitti_{path.stem}", sensors)


@dataclass(frozen=True, eq=False)
class KittiLabels:
    """Objects of one KITTI ``label_2`` file (DontCare regions left out).

    Args:
        boxes: (N, 7) float64 ``x y z l w h yaw`` in the LiDAR (= ego) frame, z the geometric centre [m].
        class_names: (N,) KITTI type per box (``Car``, ``Van``, ``Truck``, ``Pedestrian``,
            ``Person_sitting``, ``Cyclist``, ``Tram``, ``Misc``).
        bbox_2d: (N, 4) float64 ``left top right bottom`` [px] in image_2.
        truncated: (N,) float64 in [0, 1]; occluded: (N,) int64 in 0..3.
    """

    boxes: np.ndarray
    class_names: tuple[str, ...]
    bbox_2d: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def read_kitti_labels(path: str | Path, rect_from_lidar: Transform) -> KittiLabels:
    """Read a KITTI ``label_2`` file into boxes in the LiDAR frame.

    Each line: type, truncated, occluded, alpha, bbox (l t r b px), dimensions h w l [m], location x y z
    [m] of the bottom centre in the rectified reference camera frame (cam0 after R0_rect; y down),
    rotation_y [rad] about that frame's y axis. The heading in camera coordinates is
    (cos ry, 0, -sin ry).

    Args:
        path: label ``.txt`` (15 fields per line, 16 with a score).
        rect_from_lidar: ``cam0_rect_from_<lidar>`` (:attr:`KittiCalib.rect_from_lidar`). The image_2
            camera is not this frame (it sits 6 cm to the side), so other frames are refused.
    Returns:
        :class:`KittiLabels` in frame ``rect_from_lidar.src``.
    """
    if rect_from_lidar.dst != KITTI_RECT_FRAME:
        raise ValueError(
            f"KITTI labels are in the rectified cam0 frame: pass {KITTI_RECT_FRAME}_from_lidar "
            f"(KittiCalib.rect_from_lidar), got {rect_from_lidar.name}"
        )
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetFormatError(f"cannot read KITTI labels {path}: {e.strerror}") from e
    names, rows = [], []
    for lineno, line in enumerate(lines, 1):
        f = line.split()
        if not f:
            continue
        if len(f) not in (15, 16):
            raise DatasetFormatError(f"{path}:{lineno}: expected 15 fields (16 with score), got {len(f)}")
        if f[0] == "DontCare":
            continue
        try:
            rows.append([float(x) for x in f[1:15]])
        except ValueError as e:
            raise DatasetFormatError(f"{path}:{lineno}: {e}") from e
        names.append(f[0])
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 14)
    h, w, l = a[:, 7], a[:, 8], a[:, 9]
    bottom = a[:, 10:13]
    ry = a[:, 13]
    # y points down in the camera frame, so the centre is half a height above the bottom centre.
    centre_rect = bottom - np.stack([np.zeros_like(h), h / 2, np.zeros_like(h)], axis=1)
    heading_rect = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1)
    lidar_from_rect = rect_from_lidar.inverse()
    centre = lidar_from_rect.apply(centre_rect)
    heading = lidar_from_rect.apply_vectors(heading_rect)
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    boxes = np.column_stack([centre, l, w, h, yaw])
    return KittiLabels(
        boxes=boxes,
        class_names=tuple(names),
        bbox_2d=a[:, 3:7].copy(),
        truncated=a[:, 0].copy(),
        occluded=a[:, 1].astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------- nuScenes
@dataclass(frozen=True)
class NuScenesCalibratedSensor:
    """One nuScenes ``calibrated_sensor`` row with its ``sensor`` row's channel and modality.

    Args:
        channel: nuScenes channel, e.g. ``"CAM_FRONT"``, ``"LIDAR_TOP"``; the rig id is ``channel.lower()``.
        modality: ``"camera"``, ``"lidar"`` or ``"radar"``.
        translation: (3,) [m], sensor origin in the nuScenes ego frame.
        rotation_wxyz: (4,) unit quaternion, w first as nuScenes stores it, ego_from_sensor rotation.
        camera_intrinsic: 3x3 rows [px] for cameras (no skew; images are already undistorted), None
            otherwise.
        width, height: image size [px] for cameras (nuScenes: 1600 x 900), None otherwise.
    """

    channel: str
    modality: Literal["camera", "lidar", "radar"]
    translation: tuple[float, float, float]
    rotation_wxyz: tuple[float, float, float, float]
    camera_intrinsic: Optional[tuple[tuple[float, float, float], ...]] = None
    width: Optional[int] = None
    height: Optional[int] = None

    def __post_init__(self) -> None:
        where = f"nuScenes sensor '{self.channel}'"
        if self.modality not in ("camera", "lidar", "radar"):
            raise ValueError(f"{where}: modality must be camera, lidar or radar, got {self.modality!r}")
        if len(self.translation) != 3 or len(self.rotation_wxyz) != 4:
            raise ValueError(f"{where}: translation needs 3 numbers and rotation_wxyz 4")
        object.__setattr__(self, "translation", tuple(float(x) for x in self.translation))
        object.__setattr__(self, "rotation_wxyz", tuple(float(x) for x in self.rotation_wxyz))
        is_cam = self.modality == "camera"
        if is_cam != (self.camera_intrinsic is not None):
            raise ValueError(f"{where}: camera_intrinsic is required for cameras and only for cameras")
        if is_cam != (self.width is not None and self.height is not None):
            raise ValueError(f"{where}: width and height are required for cameras and only for cameras")
        if is_cam:
            K = np.asarray(self.camera_intrinsic, dtype=np.float64)
            if K.shape != (3, 3):
                raise ValueError(f"{where}: camera_intrinsic must be 3x3, got shape {K.shape}")
            if K[0, 1] != 0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
                raise ValueError(f"{where}: camera_intrinsic must be [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}")
            object.__setattr__(self, "camera_intrinsic", tuple(tuple(float(v) for v in row) for row in K))

    @property
    def sensor_id(self) -> str:
        """Rig sensor id (and frame name): the channel in lower case, e.g. ``"cam_front"``."""
        return self.channel.lower()

    def camera_model(self) -> CameraModel:
        """Pinhole model without distortion (cameras only)."""
        if self.camera_intrinsic is None or self.width is None or self.height is None:
            raise ValueError(f"nuScenes sensor '{self.channel}' is a {self.modality}, not a camera")
        K = self.camera_intrinsic
        return CameraModel("pinhole", self.width, self.height, K[0][0], K[1][1], K[0][2], K[1][2], (0.0,) * 5)

    def ego_from_sensor(self) -> Transform:
        """``ego_from_<sensor_id>``."""
        return Transform(EGO_FRAME, self.sensor_id, quat_wxyz_to_matrix(self.rotation_wxyz), self.translation)


def rig_from_nuscenes(records: Sequence[NuScenesCalibratedSensor], name: str = "nuscenes") -> Rig:
    """Rig from nuScenes calibrated sensors. The ego frame is nuScenes' ego frame (x forward, y left,
    z up, origin at the rear axle centre on the ground), which matches the project's. Sensor ids are the
    channels in lower case; cameras are pinhole without distortion. Nominal rates: camera 12 Hz,
    LiDAR 20 Hz, radar 13 Hz."""
    rates = {"camera": 12.0, "lidar": 20.0, "radar": 13.0}
    sensors = [
        Sensor(
            r.sensor_id,
            r.modality,
            r.ego_from_sensor(),
            camera=r.camera_model() if r.modality == "camera" else None,
            rate_hz=rates[r.modality],
        )
        for r in records
    ]
    return Rig(name, tuple(sensors))


# ---------------------------------------------------------------------------------------------- pickles
# The only globals an mmdet3d info file needs: numpy arrays, scalars and dtypes, and _codecs.encode
# (protocol-2 pickles store numpy's raw bytes as latin-1 text and re-encode them with it).
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # numpy 2 renamed numpy.core to numpy._core; files written with numpy 1 name the old one.
        mod = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (mod, name) not in _ALLOWED_GLOBALS:
            allowed = ", ".join(f"{m}.{n}" for m, n in sorted(_ALLOWED_GLOBALS))
            raise UnsafePickleError(f"refusing global {module}.{name} (allowed: {allowed})")
        return getattr(importlib.import_module(mod), name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r}")


def load_restricted_pickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays, scalars and dtypes (plus ``_codecs.encode``).

    Returns the unpickled object (dicts, lists, numbers, strings, numpy values). Raises
    :class:`UnsafePickleError` naming the file and the refused global for anything else (``os.system``,
    ``builtins.eval``, any class), before it is called.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except OSError as e:
        raise DatasetFormatError(f"cannot read {path}: {e.strerror}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetFormatError(f"{path}: not a valid pickle: {e}") from e


@dataclass(frozen=True, eq=False)
class Mmdet3dCamBox:
    """One object as mmdet3d stored it for one camera (``cam_instances``), all at the camera's stamp.

    Args:
        label: class index into the sample's ``class_names`` (-1: none of them).
        bbox_xyxy: (4,) float64 [px]: the projected 3D box corners in front of the camera, their convex
            hull clipped to the image, and that region's bounding box.
        center_2d: (2,) float64 [px], the projected 3D box centre (may lie outside the image).
        depth: box centre depth [m] in the camera frame.
        center_cam: (3,) float64 [m], geometric box centre in the camera optical frame.
    """

    label: int
    bbox_xyxy: np.ndarray
    center_2d: np.ndarray
    depth: float
    center_cam: np.ndarray


@dataclass(frozen=True, eq=False)
class Mmdet3dCameraView:
    """One camera of an mmdet3d nuScenes sample.

    Args:
        channel: e.g. ``"CAM_FRONT"``.
        image_path: the JPEG, resolved next to the .pkl (mmdet3d stores bare file names).
        stamp_ns: exposure time [ns] (camera and LiDAR stamps differ by up to ~50 ms).
        camera_from_lidar_moving: mmdet3d's ``lidar2cam``: LiDAR frame at the LiDAR stamp -> camera frame
            at the camera stamp, through the global frame, so it folds in the ego motion between the two
            stamps; it is not the static ``rig.transform(camera, lidar)``.
        boxes: the objects mmdet3d found visible in this camera.
    """

    channel: str
    image_path: Path
    stamp_ns: int
    camera_from_lidar_moving: Transform
    boxes: tuple[Mmdet3dCamBox, ...]


@dataclass(frozen=True, eq=False)
class Mmdet3dNuScenesSample:
    """One keyframe of an mmdet3d (v2 info) nuScenes file.

    Args:
        token: nuScenes sample token.
        stamp_ns: LiDAR stamp [ns] (the sample's stamp).
        global_from_ego: ego pose in nuScenes' global (map) frame at ``stamp_ns``. Annotations are
            upright in this frame, so the ego frame sees them tilted by the vehicle's pitch and roll.
        lidar_path: the ``.pcd.bin`` (float32 N x 5: x y z [m] LIDAR_TOP frame, intensity, ring).
        sensors: LIDAR_TOP and the cameras as :class:`NuScenesCalibratedSensor` (pass to
            :func:`rig_from_nuscenes`).
        cameras: per camera, image path, stamp and mmdet3d's per-camera boxes.
        boxes: (N, 7) float64 ``x y z l w h yaw`` in the LIDAR_TOP frame at ``stamp_ns``; z is the
            geometric centre (the info file stores nuScenes' centre; mmdet3d's dataset class moves it to
            the bottom only when it builds LiDARInstance3DBoxes).
        labels: (N,) int64 index into ``class_names``; -1 for an annotated object whose nuScenes category
            is none of them (mmdet3d keeps those boxes and ignores them in training).
        velocities: (N, 2) float64 [m/s] over-ground velocity, x y of the LIDAR_TOP frame (NaN unknown).
        num_lidar_pts, num_radar_pts: (N,) int64 annotation point counts.
        class_names: from the file's metainfo, in label order.
    """

    token: str
    stamp_ns: int
    global_from_ego: Transform
    lidar_path: Path
    sensors: tuple[NuScenesCalibratedSensor, ...]
    cameras: tuple[Mmdet3dCameraView, ...]
    boxes: np.ndarray
    labels: np.ndarray
    velocities: np.ndarray
    num_lidar_pts: np.ndarray
    num_radar_pts: np.ndarray
    class_names: tuple[str, ...]

    def camera(self, channel: str) -> Mmdet3dCameraView:
        """The camera view of ``channel`` (e.g. ``"CAM_FRONT"``)."""
        for c in self.cameras:
            if c.channel == channel:
                return c
        raise KeyError(f"sample {self.token} has no camera {channel!r} (has {[c.channel for c in self.cameras]})")


def _get(d: object, key: str, where: str):
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{where}: expected a mapping, got {type(d).__name__}")
    if key not in d:
        raise DatasetFormatError(f"{where}: missing key '{key}' (has: {', '.join(map(str, d))})")
    return d[key]


def _matrix(value: object, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        M = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(f"{where}: not a numeric matrix: {e}") from e
    if M.shape != shape:
        raise DatasetFormatError(f"{where}: expected a {shape[0]}x{shape[1]} matrix, got shape {M.shape}")
    return M


def _transform(dst: str, src: str, M: np.ndarray, where: str) -> Transform:
    try:
        return Transform.from_matrix(dst, src, M)
    except ValueError as e:
        raise DatasetFormatError(f"{where}: {e}") from e


def _stamp_ns(seconds: float) -> int:
    # The files store float seconds; nuScenes stamps are whole microseconds.
    return int(round(float(seconds) * 1e6)) * 1000


def _sensor_from_matrix(
    where: str, channel: str, modality, ego_from_sensor: np.ndarray, K=None, width=None, height=None
) -> NuScenesCalibratedSensor:
    T = _transform(EGO_FRAME, channel.lower(), ego_from_sensor, where)
    try:
        return NuScenesCalibratedSensor(
            channel, modality, tuple(T.translation), tuple(T.rotation_wxyz),
            None if K is None else tuple(map(tuple, K)), width, height,
        )
    except ValueError as e:
        raise DatasetFormatError(f"{where}: {e}") from e


def load_mmdet3d_nuscenes_info(
    pkl_path: str | Path, width: int = 1600, height: int = 900
) -> tuple[Mmdet3dNuScenesSample, ...]:
    """Read an mmdetection3d v2 nuScenes info ``.pkl`` (``{metainfo, data_list}``) safely.

    Args:
        pkl_path: the info file; it is read with :func:`load_restricted_pickle`, never plain pickle.
        width, height: camera image size [px]; the info file does not store it (nuScenes: 1600 x 900).
    Returns:
        One :class:`Mmdet3dNuScenesSample` per ``data_list`` entry.
    Raises:
        UnsafePickleError for a pickle that references anything but numpy values; DatasetFormatError
        naming the key path when the layout is not the expected one.
    """
    pkl_path = Path(pkl_path)
    data = load_restricted_pickle(pkl_path)
    where = str(pkl_path)
    meta = _get(data, "metainfo", where)
    categories = _get(meta, "categories", f"{where}: metainfo")
    class_names = tuple(n for n, _ in sorted(categories.items(), key=lambda kv: kv[1]))
    samples = []
    for i, info in enumerate(_get(data, "data_list", where)):
        w = f"{where}: data_list[{i}]"
        lidar = _get(info, "lidar_points", w)
        lidar2ego = _matrix(_get(lidar, "lidar2ego", f"{w}.lidar_points"), (4, 4), f"{w}.lidar_points.lidar2ego")
        sensors = [_sensor_from_matrix(f"{w}.lidar_points.lidar2ego", "LIDAR_TOP", "lidar", lidar2ego)]
        cameras = []
        cam_instances = info.get("cam_instances", {}) or {}
        for channel, img in _get(info, "images", w).items():
            wc = f"{w}.images.{channel}"
            K = _matrix(_get(img, "cam2img", wc), (3, 3), f"{wc}.cam2img")
            cam2ego = _matrix(_get(img, "cam2ego", wc), (4, 4), f"{wc}.cam2ego")
            lidar2cam = _matrix(_get(img, "lidar2cam", wc), (4, 4), f"{wc}.lidar2cam")
            sensors.append(_sensor_from_matrix(f"{wc}.cam2ego", channel, "camera", cam2ego, K, width, height))
            boxes = []
            for j, inst in enumerate(cam_instances.get(channel, [])):
                wi = f"{w}.cam_instances.{channel}[{j}]"
                b3 = np.asarray(_get(inst, "bbox_3d", wi), dtype=np.float64)
                boxes.append(
                    Mmdet3dCamBox(
                        label=int(_get(inst, "bbox_label_3d", wi)),
                        bbox_xyxy=np.asarray(_get(inst, "bbox", wi), dtype=np.float64).reshape(4),
                        center_2d=np.asarray(_get(inst, "center_2d", wi), dtype=np.float64).reshape(2),
                        depth=float(_get(inst, "depth", wi)),
                        center_cam=b3[:3].copy(),
                    )
                )
            cameras.append(
                Mmdet3dCameraView(
                    channel=channel,
                    image_path=pkl_path.parent / Path(str(_get(img, "img_path", wc))).name,
                    stamp_ns=_stamp_ns(_get(img, "timestamp", wc)),
                    camera_from_lidar_moving=_transform(channel.lower(), "lidar_top", lidar2cam, f"{wc}.lidar2cam"),
                    boxes=tuple(boxes),
                )
            )
        instances = _get(info, "instances", w)
        n = len(instances)
        boxes3d = np.zeros((n, 7))
        labels = np.zeros(n, dtype=np.int64)
        velo = np.full((n, 2), np.nan)
        n_lidar = np.zeros(n, dtype=np.int64)
        n_radar = np.zeros(n, dtype=np.int64)
        for j, inst in enumerate(instances):
            wi = f"{w}.instances[{j}]"
            b = np.asarray(_get(inst, "bbox_3d", wi), dtype=np.float64)
            if b.shape != (7,):
                raise DatasetFormatError(f"{wi}.bbox_3d: expected 7 numbers, got shape {b.shape}")
            # mmdet3d LiDAR boxes are [x, y, z, dx, dy, dz, yaw], dx along the heading: our l w h order.
            boxes3d[j] = b
            labels[j] = int(_get(inst, "bbox_label_3d", wi))
            v = np.asarray(inst.get("velocity", [np.nan, np.nan]), dtype=np.float64).reshape(-1)[:2]
            velo[j] = v
            n_lidar[j] = int(inst.get("num_lidar_pts", 0))
            n_radar[j] = int(inst.get("num_radar_pts", 0))
        bad = (labels < -1) | (labels >= len(class_names))
        if bad.any():
            raise DatasetFormatError(f"{w}: label {labels[bad][0]} outside -1..{len(class_names) - 1}")
        samples.append(
            Mmdet3dNuScenesSample(
                token=str(_get(info, "token", w)),
                stamp_ns=_stamp_ns(_get(info, "timestamp", w)),
                global_from_ego=_transform(
                    "global", EGO_FRAME, _matrix(_get(info, "ego2global", w), (4, 4), f"{w}.ego2global"),
                    f"{w}.ego2global",
                ),
                lidar_path=pkl_path.parent / Path(str(_get(lidar, "lidar_path", f"{w}.lidar_points"))).name,
                sensors=tuple(sensors),
                cameras=tuple(cameras),
                boxes=boxes3d,
                labels=labels,
                velocities=velo,
                num_lidar_pts=n_lidar,
                num_radar_pts=n_radar,
                class_names=class_names,
            )
        )
    return tuple(samples)
