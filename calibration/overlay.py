"""Checking a LiDAR-camera extrinsic: overlay pictures, and an edge-alignment score that needs no ground truth.

Pictures (:func:`draw_lidar_overlay`, :func:`draw_rig_overlay`, :func:`mosaic`): LiDAR points projected
through the extrinsic and the camera model onto the image, coloured by depth along the optical axis
(reversed turbo: near = red, far = blue), 3D boxes as wireframes (edges clipped at the near plane, drawn
through the lens distortion, with a cross on the front face), a band on top with the title (camera id,
stamp) and a depth colour bar with ticks below the image. A good extrinsic puts points on the objects,
object outlines where the points' depth jumps, and box wireframes around the points.

Score (:func:`edge_alignment`, :func:`check_extrinsic`): a correct extrinsic puts the LiDAR's depth
discontinuities (object outlines) on image edges. Silhouette points are returns whose neighbour along the
ring, or in the ring above or below, is clearly farther or missing (:func:`lidar_depth_edges`). The image
gives an edge-strength map: gradient magnitude, normalised, spread to nearby pixels with a decay of 0.9
per pixel (:func:`image_edge_map`, Levinson & Thrun's "inverse distance transform"). The score is the
mean map value under the projected silhouette points, in [0, 1], higher is better; near-misses still
count a little, so the score changes smoothly with the extrinsic, and silhouettes with no image edge
(a grey car on a grey wall) add a constant rather than noise. Frames are pooled: one frame is noisy
(foliage, motion during the sweep); three or more decide reliably.

:func:`check_extrinsic` is the decision rule, needing no ground truth: the extrinsic passes when no small
step (±5 cm along, ±1° about each camera axis) raises the score by more than ``tolerance`` (0.5 %);
otherwise it names the step that raises it most, i.e. the direction the extrinsic is off in. Measured
(tests/calibration/test_overlay.py): on 3 real KITTI frames and on the 6 nuScenes cameras the true
extrinsic scores higher than every one of the 12 steps, by 1.5-19 % for rotations of 1° and shifts of
5 cm across the optical axis, but only by 0.1-0.8 % for 5 cm along the optical axis (which moves the
silhouettes by about 1 px at 10-15 m): forward/backward errors of a few cm are below what real frames
resolve. On simulated frames with exact ground truth every step is flagged (>= 1.6 %).

All pictures are BGR uint8 (ready for ``cv2.imwrite``); images handed in are RGB as
:class:`~drivers.messages.CameraImage` carries them (or grey).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.importers import box_corners
from calibration.rig import EGO_FRAME, Rig
from calibration.transform import Transform
from calibration.pictures import write_png  # noqa: F401  (re-exported: overlays are saved with it)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
NEAR_PLANE_M = 0.1
# Turbo lookup range: index 235 (red) for the nearest depth down to 25 (blue) for the farthest; the
# extreme ends of turbo are too dark to see on a dark image.
_TURBO = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, :]
_NEAR_INDEX, _FAR_INDEX = 235, 25
# Box edges as corner index pairs (corners from importers.box_corners: 0-3 bottom, 4-7 top; 0, 1, 4, 5
# form the front face), plus the two diagonals of the front face that mark the heading.
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
FRONT_CROSS = ((0, 5), (1, 4))
_EDGE_SAMPLES = 24  # points per projected edge, so lens distortion bends the drawn edge as it should
HEADER_PX = 26
LEGEND_PX = 44


class OverlayError(ValueError):
    """Inputs to an overlay or score do not fit together (image size vs camera, shapes, frames)."""


# ---------------------------------------------------------------------------------------------- colours
def depth_colours(depth_m: np.ndarray, max_depth_m: float) -> np.ndarray:
    """Colours for depths: reversed turbo, near = red, ``max_depth_m`` and beyond = blue.

    Args:
        depth_m: (N,) depth [m] (any float dtype); values are clipped to [0, max_depth_m].
        max_depth_m: depth [m] that gets the far end of the colour scale.
    Returns:
        (N, 3) uint8 BGR.
    """
    if not max_depth_m > 0:
        raise OverlayError(f"max_depth_m must be > 0, got {max_depth_m}")
    f = np.clip(np.asarray(depth_m, dtype=np.float64) / max_depth_m, 0.0, 1.0)
    idx = np.rint(_NEAR_INDEX + f * (_FAR_INDEX - _NEAR_INDEX)).astype(np.intp)
    return _TURBO[idx]


# BGR colours of the classes of this project, KITTI and nuScenes (looked up in lower case): vehicles in
# greens and oranges, people magenta, two-wheelers cyan, road furniture red and grey.
CLASS_COLOURS_BGR: dict[str, tuple[int, int, int]] = {
    "car": (0, 255, 0), "van": (0, 200, 120), "truck": (0, 165, 255), "bus": (0, 215, 255),
    "trailer": (0, 120, 255), "construction_vehicle": (0, 90, 200), "tram": (80, 160, 255),
    "pedestrian": (255, 0, 255), "person_sitting": (200, 0, 200), "bicycle": (255, 255, 0),
    "cyclist": (255, 255, 0), "motorcycle": (255, 190, 0), "barrier": (200, 200, 200),
    "traffic_cone": (0, 0, 255),
}


def class_colour(name: str) -> tuple[int, int, int]:
    """BGR colour of a box class, the same in every picture: from :data:`CLASS_COLOURS_BGR`, or for other
    names a saturated colour whose hue is a checksum (crc32) of the name."""
    known = CLASS_COLOURS_BGR.get(name.lower())
    if known is not None:
        return known
    hue = zlib.crc32(name.encode()) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 255, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


# ---------------------------------------------------------------------------------------------- projection
@dataclass(frozen=True, eq=False)
class ProjectedPoints:
    """Points that land in the image.

    Args:
        uv: (K, 2) float64 pixels (u right, v down).
        depth: (K,) float64 depth along the optical axis [m].
        index: (K,) int64 index of each point in the array that was projected.
    """

    uv: np.ndarray
    depth: np.ndarray
    index: np.ndarray


def _xyz(points: np.ndarray, what: str) -> np.ndarray:
    P = np.asarray(points)
    if P.ndim != 2 or P.shape[1] < 3:
        raise OverlayError(f"{what} must be (N, >=3) with x y z first, got shape {P.shape}")
    return P[:, :3].astype(np.float64)


def project_points(points: np.ndarray, camera_from_points: Transform, camera: CameraModel,
                   min_depth_m: float = NEAR_PLANE_M) -> ProjectedPoints:
    """Project points into the image.

    Args:
        points: (N, >=3) x y z [m] in frame ``camera_from_points.src`` (extra columns are ignored).
        camera_from_points: the extrinsic, points' frame -> camera optical frame.
        camera: intrinsics (with distortion).
        min_depth_m: points closer than this along the optical axis are dropped.
    Returns:
        the points in front of the camera that land inside the image.
    """
    P = camera_from_points.apply(_xyz(points, "points"))
    front = P[:, 2] > min_depth_m
    uv, _ = camera.project(P[front])
    inside = camera.in_image(uv)
    idx = np.flatnonzero(front)[inside]
    return ProjectedPoints(uv[inside], P[idx, 2], idx)


def _clip_edge(a: np.ndarray, b: np.ndarray, near: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The part of segment a-b (camera frame) with z >= near, or None when all of it is behind."""
    za, zb = a[2], b[2]
    if za < near and zb < near:
        return None
    if za < near:
        a = a + (b - a) * (near - za) / (zb - za)
    elif zb < near:
        b = b + (a - b) * (near - zb) / (za - zb)
    return a, b


def box_wireframes(boxes: np.ndarray, camera_from_boxes: Transform, camera: CameraModel,
                   near_m: float = NEAR_PLANE_M) -> list[list[np.ndarray]]:
    """Projected box edges, ready to draw.

    Args:
        boxes: (M, 7) ``x y z l w h yaw`` (z = geometric centre) in frame ``camera_from_boxes.src``.
        camera_from_boxes: boxes' frame -> camera optical frame.
        camera: intrinsics; edges are sampled densely so distortion bends them as it bends the scene.
        near_m: edges are clipped at this depth [m]; parts behind it are not drawn.
    Returns:
        per box, a list of polylines ((S, 2) float64 pixels), one per visible edge (12 box edges and the
        2 diagonals of the front face). Boxes entirely behind the near plane get an empty list.
    """
    B = np.asarray(boxes, dtype=np.float64)
    if B.ndim != 2 or B.shape[1] != 7:
        raise OverlayError(f"boxes must be (M, 7) x y z l w h yaw, got shape {B.shape}")
    corners = box_corners(B)
    out: list[list[np.ndarray]] = []
    s = np.linspace(0.0, 1.0, _EDGE_SAMPLES)[:, None]
    for c8 in corners:
        cc = camera_from_boxes.apply(c8)
        lines = []
        for i, j in BOX_EDGES + FRONT_CROSS:
            seg = _clip_edge(cc[i], cc[j], near_m)
            if seg is None:
                continue
            a, b = seg
            uv, ok = camera.project(a + s * (b - a))
            if ok.all():
                lines.append(uv)
        out.append(lines)
    return out


# ---------------------------------------------------------------------------------------------- drawing
def _put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
              colour: tuple[int, int, int] = (255, 255, 255)) -> None:
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _to_bgr(image: np.ndarray, camera: CameraModel) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise OverlayError(f"image must be (H, W, 3) RGB or (H, W) grey uint8, got {img.dtype} {img.shape}")
    if img.shape[:2] != (camera.height, camera.width):
        raise OverlayError(f"image is {img.shape[1]}x{img.shape[0]} but the camera is "
                           f"{camera.width}x{camera.height}")
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def _splat(canvas: np.ndarray, uv: np.ndarray, depth: np.ndarray, colours: np.ndarray, radius: int) -> None:
    """Draw points as small discs, the nearest point winning where discs overlap (a z-buffer, so the
    result does not depend on point order)."""
    h, w = canvas.shape[:2]
    u0 = np.rint(uv[:, 0]).astype(np.int64)
    v0 = np.rint(uv[:, 1]).astype(np.int64)
    zbuf = np.full(h * w, np.inf)
    owner = np.full(h * w, -1, dtype=np.int64)
    offsets = [(du, dv) for du in range(-radius, radius + 1) for dv in range(-radius, radius + 1)
               if du * du + dv * dv <= radius * radius]
    # Nearest first: with np.minimum.at the smallest depth per pixel wins; owner is then the first point
    # (in depth order) whose depth equals the pixel's minimum.
    order = np.argsort(depth, kind="stable")
    for du, dv in offsets:
        u, v = u0[order] + du, v0[order] + dv
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        np.minimum.at(zbuf, v[ok] * w + u[ok], depth[order][ok])
    for du, dv in offsets:
        u, v = u0[order] + du, v0[order] + dv
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        pix = v[ok] * w + u[ok]
        mine = (depth[order][ok] == zbuf[pix]) & (owner[pix] < 0)
        owner[pix[mine]] = order[ok][mine]
    hit = owner >= 0
    flat = canvas.reshape(-1, 3)
    flat[hit] = colours[owner[hit]]


def _legend(width: int, max_depth_m: float) -> np.ndarray:
    """(LEGEND_PX, width, 3) band: depth colour bar with ticks and a caption."""
    band = np.full((LEGEND_PX, width, 3), 24, np.uint8)
    x0, x1 = 10, max(width - 150, 60)
    ramp = depth_colours(np.linspace(0.0, max_depth_m, x1 - x0), max_depth_m)
    band[6:20, x0:x1] = ramp[None, :, :]
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if max_depth_m / s <= 8), max_depth_m)
    for d in np.arange(0.0, max_depth_m + 1e-9, step):
        x = int(round(x0 + d / max_depth_m * (x1 - x0 - 1)))
        cv2.line(band, (x, 20), (x, 25), (255, 255, 255), 1)
        label = f"{d:g}"
        tw = cv2.getTextSize(label, _FONT, 0.4, 1)[0][0]
        _put_text(band, label, (min(max(x - tw // 2, 0), width - tw), 38), 0.4)
    _put_text(band, "depth [m]", (x1 + 12, 18), 0.45)
    _put_text(band, "near=red far=blue", (x1 + 12, 36), 0.38, (200, 200, 200))
    return band


def overlay_title(camera_id: str, stamp_ns: Optional[int], note: str = "") -> str:
    """Title line: ``"<camera_id>  stamp <stamp_ns> ns (<seconds> s)  <note>"`` (stamp left out when None)."""
    parts = [camera_id]
    if stamp_ns is not None:
        parts.append(f"stamp {int(stamp_ns)} ns ({int(stamp_ns) * 1e-9:.3f} s)")
    if note:
        parts.append(note)
    return "  ".join(parts)


def draw_lidar_overlay(image: np.ndarray, camera: CameraModel, points: np.ndarray,
                       camera_from_points: Transform, title: str, boxes: Optional[np.ndarray] = None,
                       camera_from_boxes: Optional[Transform] = None,
                       box_labels: Optional[Sequence[str]] = None, max_depth_m: float = 40.0,
                       point_radius_px: int = 1) -> np.ndarray:
    """LiDAR points (and boxes) drawn on a camera image.

    Args:
        image: (H, W, 3) uint8 RGB (as ``CameraImage.image``) or (H, W) grey, the camera's size.
        camera: intrinsics of that camera.
        points: (N, >=3) x y z [m] in frame ``camera_from_points.src``; other columns are ignored.
        camera_from_points: points' frame -> camera optical frame (e.g. ``rig.transform(cam, lidar)``).
        title: text of the header line (see :func:`overlay_title`); the number of drawn points is added.
        boxes: (M, 7) ``x y z l w h yaw`` (z = geometric centre) in frame ``camera_from_boxes.src``.
        camera_from_boxes: required with ``boxes``.
        box_labels: (M,) class names; boxes are coloured per class and the first letter is written at
            the box's top front corner.
        max_depth_m: depth [m] that gets the far (blue) end of the scale.
        point_radius_px: radius of the drawn points [px] (1 for dense 64-beam scans, 2 for sparse ones).
    Returns:
        (HEADER_PX + H + LEGEND_PX, W, 3) uint8 BGR: title band, overlay, depth colour bar.
    """
    canvas = _to_bgr(image, camera)
    proj = project_points(points, camera_from_points, camera)
    _splat(canvas, proj.uv, proj.depth, depth_colours(proj.depth, max_depth_m), int(point_radius_px))
    n_boxes = 0
    scale = max(0.45, min(1.0, camera.width / 2400.0 + 0.2))  # readable text on 640 to 1600 px images
    if boxes is not None:
        if camera_from_boxes is None:
            raise OverlayError("boxes given without camera_from_boxes (the frame they are in)")
        B = np.asarray(boxes, dtype=np.float64)
        B = np.zeros((0, 7)) if B.size == 0 else B
        labels = list(box_labels) if box_labels is not None else ["box"] * len(B)
        if len(labels) != len(B):
            raise OverlayError(f"{len(labels)} box labels for {len(B)} boxes")
        colours = {name: class_colour(name) for name in set(labels)}
        thickness = 1 if camera.width < 1000 else 2
        for lines, name in zip(box_wireframes(B, camera_from_boxes, camera), labels):
            if not lines:
                continue
            polys = [np.rint(np.clip(p, -1e5, 1e5) * 4).astype(np.int32) for p in lines]
            cv2.polylines(canvas, polys, False, colours[name], thickness, cv2.LINE_AA, shift=2)
            # Class name just above the box's highest visible pixel.
            uv = np.concatenate(lines)
            uv = uv[camera.in_image(uv)]
            if len(uv):
                n_boxes += 1
                top = uv[np.argmin(uv[:, 1])]
                _put_text(canvas, name, (int(top[0]) - 10, max(int(top[1]) - 4, 12)), 0.8 * scale, colours[name])
    header = np.full((HEADER_PX, camera.width, 3), 24, np.uint8)
    text = f"{title}  |  {len(proj.depth)} points" + (f", {n_boxes} boxes in view" if boxes is not None else "")
    _put_text(header, text, (8, 18), scale)
    return np.concatenate([header, canvas, _legend(camera.width, max_depth_m)], axis=0)


def draw_rig_overlay(image: np.ndarray, rig: Rig, camera_id: str, points: np.ndarray, lidar_id: str,
                     stamp_ns: Optional[int], boxes_ego: Optional[np.ndarray] = None,
                     box_labels: Optional[Sequence[str]] = None, max_depth_m: float = 40.0,
                     point_radius_px: int = 1, note: str = "") -> np.ndarray:
    """:func:`draw_lidar_overlay` with the extrinsics taken from a rig.

    Args:
        image: (H, W, 3) uint8 RGB of ``camera_id`` (``CameraImage.image``).
        rig: the rig; ``camera_id`` must be a camera and ``lidar_id`` a sensor of it.
        points: (N, >=3) x y z [m] in the ``lidar_id`` frame (``LidarSweep.points``).
        stamp_ns: stamp shown in the title (the camera image's), or None.
        boxes_ego: (M, 7) boxes in the ego frame (``GroundTruthBoxes.boxes``), or None.
        box_labels, max_depth_m, point_radius_px: as :func:`draw_lidar_overlay`; note: extra title text.
    Returns:
        BGR picture as :func:`draw_lidar_overlay`.
    """
    sensor = rig[camera_id]
    if sensor.camera is None:
        raise OverlayError(f"rig '{rig.name}': sensor '{camera_id}' is a {sensor.kind}, not a camera")
    return draw_lidar_overlay(
        image, sensor.camera, points, rig.transform(camera_id, lidar_id),
        overlay_title(camera_id, stamp_ns, note), boxes_ego,
        rig.transform(camera_id, EGO_FRAME) if boxes_ego is not None else None,
        box_labels, max_depth_m, point_radius_px,
    )


def mosaic(tiles: Sequence[np.ndarray], columns: int = 3, tile_width: Optional[int] = None) -> np.ndarray:
    """Pictures in a grid (row-major; e.g. six cameras as 2 x 3: front-left, front, front-right on top).

    Args:
        tiles: BGR uint8 pictures (any sizes); each is resized to ``tile_width`` keeping its aspect, and
            padded at the bottom to the tallest tile.
        columns: tiles per row.
        tile_width: width [px] of every tile; default the first tile's width.
    Returns:
        (rows * tile_height, columns * tile_width, 3) uint8 BGR; empty cells are black.
    """
    if not tiles:
        raise OverlayError("mosaic needs at least one picture")
    if columns < 1:
        raise OverlayError(f"mosaic columns must be >= 1, got {columns}")
    width = int(tile_width or tiles[0].shape[1])
    scaled = []
    for t in tiles:
        t = cv2.cvtColor(t, cv2.COLOR_GRAY2BGR) if t.ndim == 2 else t
        h = max(1, int(round(t.shape[0] * width / t.shape[1])))
        scaled.append(cv2.resize(t, (width, h), interpolation=cv2.INTER_AREA))
    th = max(t.shape[0] for t in scaled)
    rows = (len(scaled) + columns - 1) // columns
    out = np.zeros((rows * th, columns * width, 3), np.uint8)
    for k, t in enumerate(scaled):
        r, c = divmod(k, columns)
        out[r * th:r * th + t.shape[0], c * width:(c + 1) * width] = t
    return out


# ---------------------------------------------------------------------------------------------- edge score
@dataclass(frozen=True)
class EdgeParams:
    """Parameters of the edge-alignment score (defaults tuned on real KITTI and simulated frames).

    Args:
        min_jump_m, min_jump_rel: a neighbouring return (along the ring, or in the ring above or below)
            is "behind" when its range exceeds the point's by more than max(min_jump_m, min_jump_rel * range).
        gap_columns: no return within this many azimuth steps on that side (sky, or a surface too dark
            or far to return) also counts as "behind"; more than 3 so that random single dropouts do not.
        smooth_rel: the neighbour on the other side must continue the point's surface: its range within
            smooth_rel * range (drops isolated returns: foliage, rain, mixed pixels).
        max_range_m: silhouette points farther than this are not used [m].
        blur_px: Gaussian sigma [px] before the image gradient.
        decay_per_px: edge strength spread to the neighbourhood: a pixel d px from an edge of strength e
            gets e * decay_per_px ** d (chessboard distance), so the score rewards being near strong edges.
        spread_px: how far [px] the edge strength is spread.
        edge_weight: share of the raw edge strength in the map (the rest is the spread strength).
    """

    min_jump_m: float = 0.5
    min_jump_rel: float = 0.05
    gap_columns: float = 4.0
    smooth_rel: float = 0.03
    max_range_m: float = 50.0
    blur_px: float = 2.0
    decay_per_px: float = 0.9
    spread_px: int = 30
    edge_weight: float = 1.0 / 3.0


def rings_from_scan_order(points: np.ndarray) -> np.ndarray:
    """Ring index of each point for sensors that store a sweep ring by ring, each ring in increasing
    azimuth from 0 to 2 pi (KITTI's Velodyne files: 64 rings, top laser first): a new ring starts where
    the azimuth, taken in [0, 2 pi), drops by more than pi.

    Args:
        points: (N, >=3) x y z [m] in the LiDAR frame, in stored order.
    Returns:
        (N,) int64 ring index in storage order.
    """
    P = _xyz(points, "points")
    az = np.mod(np.arctan2(P[:, 1], P[:, 0]), 2 * np.pi)
    return np.concatenate([[0], np.cumsum(np.diff(az) < -np.pi)]).astype(np.int64)


def _spherical(r: np.ndarray, az: np.ndarray, el: np.ndarray) -> np.ndarray:
    return np.column_stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)])


def lidar_depth_edges(points: np.ndarray, ring: np.ndarray, params: EdgeParams = EdgeParams()) -> np.ndarray:
    """Foreground silhouette points of a sweep: where the range jumps up between neighbouring returns.

    A point is a silhouette point when its neighbour on one side is farther by more than the jump
    threshold (or missing: nothing within ``gap_columns`` azimuth steps, e.g. sky) while the neighbour on
    the opposite side continues its surface. Neighbours are taken along the ring (the sides of objects)
    and between adjacent rings at the same azimuth (tops and bottoms of objects; rings are put in
    elevation order by their median elevation). Each point is moved half a step toward the far side, at
    its own range: the object's outline lies between the two returns.

    Args:
        points: (N, >=3) x y z [m] in the LiDAR frame (one sweep, ideally deskewed).
        ring: (N,) beam index per point (``LidarSweep.ring``, nuScenes' 5th column, or
            :func:`rings_from_scan_order`).
        params: thresholds.
    Returns:
        (K, 3) float64 silhouette points [m] in the LiDAR frame.
    """
    xyz = _xyz(points, "points")
    ring = np.asarray(ring).reshape(-1)
    if len(ring) != len(xyz):
        raise OverlayError(f"ring has {len(ring)} entries for {len(xyz)} points")
    r = np.linalg.norm(xyz, axis=1)
    ok = r > 1e-6
    xyz, ring, r = xyz[ok], ring[ok], r[ok]
    n = len(xyz)
    if n < 3:
        return np.zeros((0, 3))
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    el = np.arcsin(np.clip(xyz[:, 2] / r, -1.0, 1.0))
    order = np.lexsort((az, ring))
    rs, azs, els, rg = r[order], az[order], el[order], ring[order]
    # gap[i]: azimuth step between sorted points i-1 and i (inf across rings and at both ends).
    gap = np.full(n + 1, np.inf)
    gap[1:n] = np.where(rg[1:] == rg[:-1], np.diff(azs), np.inf)
    finite = gap[np.isfinite(gap)]
    if len(finite) == 0:
        return np.zeros((0, 3))
    step = float(np.median(finite))
    thr = np.maximum(params.min_jump_m, params.min_jump_rel * rs)
    smooth = params.smooth_rel * rs
    idx = np.arange(n)
    found = []

    # Along the ring: the sides of objects.
    taken = np.zeros(n, bool)
    for s in (1, -1):
        g_out = gap[idx + 1] if s > 0 else gap[idx]      # toward the candidate background
        g_in = gap[idx] if s > 0 else gap[idx + 1]       # toward the continuing surface
        j_out = np.clip(idx + s, 0, n - 1)
        j_in = np.clip(idx - s, 0, n - 1)
        behind = (g_out < 1.5 * step) & (rs[j_out] - rs > thr)
        behind |= np.isfinite(g_out) & (g_out > params.gap_columns * step)
        continues = (g_in < 1.5 * step) & (np.abs(rs[j_in] - rs) < smooth)
        hit = np.flatnonzero(behind & continues & ~taken & (rs < params.max_range_m))
        taken[hit] = True
        found.append(_spherical(rs[hit], azs[hit] + s * 0.5 * step, els[hit]))

    # Across rings: tops and bottoms of objects.
    rings, starts = np.unique(rg, return_index=True)
    bounds = np.append(starts, n)
    med_el = np.array([np.median(els[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    by_el = np.argsort(med_el)

    def neighbour(k_from: int, k_to: int) -> tuple[np.ndarray, np.ndarray]:
        """Per point of ring k_from: range of the nearest-azimuth return of ring k_to (NaN when none is
        within half a step) and whether ring k_to has nothing within gap_columns steps (missing)."""
        a0, a1 = bounds[k_from], bounds[k_from + 1]
        b0, b1 = bounds[k_to], bounds[k_to + 1]
        q, ref = azs[a0:a1], azs[b0:b1]
        j = np.clip(np.searchsorted(ref, q), 1, len(ref) - 1) if len(ref) > 1 else np.zeros(len(q), np.intp)
        cand = np.stack([j - 1, j], axis=1) if len(ref) > 1 else j[:, None]
        d = np.abs(ref[cand] - q[:, None])
        best = cand[np.arange(len(q)), np.argmin(d, axis=1)]
        dmin = d.min(axis=1)
        rng_nb = np.where(dmin < 0.75 * step, rs[b0:b1][best], np.nan)
        return rng_nb, dmin > params.gap_columns * step

    for pos, k in enumerate(by_el):
        a0, a1 = bounds[k], bounds[k + 1]
        r0 = rs[a0:a1]
        for s in (1, -1):  # 1: look up (ring above), -1: look down
            out_pos, in_pos = pos + s, pos - s
            if not (0 <= out_pos < len(by_el) and 0 <= in_pos < len(by_el)):
                continue
            r_out, missing = neighbour(k, by_el[out_pos])
            r_in, _ = neighbour(k, by_el[in_pos])
            with np.errstate(invalid="ignore"):
                behind = (r_out - r0 > thr[a0:a1]) | missing
                continues = np.abs(r_in - r0) < smooth[a0:a1]
            hit = np.flatnonzero(behind & continues & (r0 < params.max_range_m)) + a0
            half = 0.5 * (med_el[by_el[out_pos]] - med_el[k])
            found.append(_spherical(rs[hit], azs[hit], els[hit] + half))
    return np.concatenate(found, axis=0)


def image_edge_map(image: np.ndarray, params: EdgeParams = EdgeParams()) -> np.ndarray:
    """Edge-strength map: gradient magnitude of the blurred grey image, normalised by its 99th percentile
    and clipped to 1, then spread to nearby pixels with a geometric decay per pixel (an "inverse distance
    transform", after Levinson & Thrun, RSS 2013).

    Args:
        image: (H, W, 3) uint8 RGB or (H, W) grey.
    Returns:
        (H, W) float32 in [0, 1]; 1 on the strongest edges, falling off with distance from them.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise OverlayError(f"image must be (H, W, 3) RGB or (H, W) grey uint8, got {img.dtype} {img.shape}")
    g = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img).astype(np.float32)
    if params.blur_px > 0:
        g = cv2.GaussianBlur(g, (0, 0), params.blur_px)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    e = np.hypot(gx, gy)
    scale = float(np.percentile(e, 99))
    e = np.minimum(e / scale, 1.0) if scale > 0 else np.zeros_like(e)
    spread = e.copy()
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(int(params.spread_px)):
        spread = np.maximum(spread, params.decay_per_px * cv2.dilate(spread, kernel))
    w = params.edge_weight
    return (w * e + (1.0 - w) * spread).astype(np.float32)


@dataclass(frozen=True, eq=False)
class EdgeFrame:
    """One camera image and LiDAR sweep prepared for the edge score (:func:`prepare_edge_frame`).

    Args:
        camera: intrinsics of the image.
        edge_map: (H, W) float32 edge strength in [0, 1] (:func:`image_edge_map`).
        silhouettes: (K, 3) float64 LiDAR silhouette points [m] in the LiDAR frame.
    """

    camera: CameraModel
    edge_map: np.ndarray
    silhouettes: np.ndarray


def prepare_edge_frame(image: np.ndarray, camera: CameraModel, points: np.ndarray, ring: np.ndarray,
                       params: EdgeParams = EdgeParams()) -> EdgeFrame:
    """Edge map of the image and silhouette points of the sweep, for :func:`edge_alignment`.

    Args:
        image: (H, W, 3) uint8 RGB or (H, W) grey, the camera's size, taken when the sweep faced the camera.
        camera: intrinsics.
        points: (N, >=3) x y z [m] in the LiDAR frame; ring: (N,) beam index per point.
    """
    if np.asarray(image).shape[:2] != (camera.height, camera.width):
        raise OverlayError(f"image is {np.asarray(image).shape[1]}x{np.asarray(image).shape[0]} but the camera "
                           f"is {camera.width}x{camera.height}")
    return EdgeFrame(camera, image_edge_map(image, params), lidar_depth_edges(points, ring, params))


@dataclass(frozen=True)
class EdgeScore:
    """Edge alignment of one extrinsic.

    Args:
        score: mean edge strength [0, 1] under the projected silhouette points (higher is better).
        n_points: silhouette points that landed in the image(s).
    """

    score: float
    n_points: int


def _sample(edge_map: np.ndarray, uv: np.ndarray) -> np.ndarray:
    # Bilinear, so sub-pixel moves of the extrinsic change the score smoothly.
    return cv2.remap(edge_map, uv[:, 0].astype(np.float32)[:, None], uv[:, 1].astype(np.float32)[:, None],
                     cv2.INTER_LINEAR)[:, 0]


def edge_alignment(frames: Sequence[tuple[EdgeFrame, Transform]]) -> EdgeScore:
    """Edge score of extrinsics over one or more frames, pooled over all silhouette points.

    Args:
        frames: (frame, camera_from_lidar) pairs; usually the same transform for every frame of a
            recording (each KITTI drive has its own, so the pairing is explicit).
    Returns:
        the mean edge strength under every silhouette point that lands in its image (margin 2 px).
    """
    total, count = 0.0, 0
    for frame, camera_from_lidar in frames:
        if len(frame.silhouettes) == 0:
            continue
        P = camera_from_lidar.apply(frame.silhouettes)
        front = P[:, 2] > 1.0
        uv, _ = frame.camera.project(P[front])
        uv = uv[frame.camera.in_image(uv, 2.0)]
        if len(uv):
            total += float(_sample(frame.edge_map, uv).sum())
            count += len(uv)
    return EdgeScore(total / count if count else 0.0, count)


def camera_step(name: str, step_m: float, step_deg: float) -> Transform:
    """A small motion of the camera frame named like ``"+tx"`` or ``"-ry"``: translation [m] along, or
    rotation [deg] about, the camera optical axes (x right, y down, z forward).

    Returns:
        ``camera_from_camera`` to compose as ``step @ camera_from_lidar``; frames are named
        "camera" so it composes with any camera id after renaming (see :func:`perturb_extrinsic`).
    """
    if len(name) != 3 or name[0] not in "+-" or name[1] not in "tr" or name[2] not in "xyz":
        raise OverlayError(f"step name must look like '+tx' or '-rz', got {name!r}")
    sign = 1.0 if name[0] == "+" else -1.0
    axis = "xyz".index(name[2])
    vec = np.zeros(3)
    if name[1] == "t":
        vec[axis] = sign * step_m
        return Transform("camera", "camera", np.eye(3), vec)
    vec[axis] = sign * np.radians(step_deg)
    return Transform("camera", "camera", cv2.Rodrigues(vec)[0], np.zeros(3))


def perturb_extrinsic(camera_from_lidar: Transform, step: Transform) -> Transform:
    """``step @ camera_from_lidar`` with the step's frames renamed to the camera's."""
    c = camera_from_lidar.dst
    return Transform(c, c, step.rotation, step.translation) @ camera_from_lidar


STEP_NAMES = ("+tx", "-tx", "+ty", "-ty", "+tz", "-tz", "+rx", "-rx", "+ry", "-ry", "+rz", "-rz")


@dataclass(frozen=True)
class ExtrinsicCheck:
    """Verdict of :func:`check_extrinsic`.

    Args:
        score: edge score of the extrinsic as given; n_points: silhouette points scored.
        steps: per step name (``"+tx"`` = camera moved 5 cm right, ``"-ry"`` = turned -1 deg about the
            camera's y axis, ...) the score after that step.
        passed: no step improves the score by more than ``tolerance`` (relative).
        best_step: the step that improves the score most, or None when none improves it.
    """

    score: float
    n_points: int
    steps: tuple[tuple[str, float], ...]
    passed: bool
    best_step: Optional[str]

    def report(self) -> str:
        """Multi-line text: score, verdict, and each step's relative change."""
        lines = [f"edge score {self.score:.4f} over {self.n_points} silhouette points: "
                 + ("PASS (no nearby extrinsic scores better)" if self.passed
                    else f"FAIL (step {self.best_step} scores better)")]
        for name, s in self.steps:
            lines.append(f"  {name}: {s:.4f} ({(s / self.score - 1) * 100 if self.score else 0.0:+.1f} %)")
        return "\n".join(lines)


def check_extrinsic(frames: Sequence[tuple[EdgeFrame, Transform]], step_m: float = 0.05,
                    step_deg: float = 1.0, tolerance: float = 0.005) -> ExtrinsicCheck:
    """Is this LiDAR-camera extrinsic a local optimum of the edge score? No ground truth needed.

    The score is evaluated at the extrinsic and after each of 12 small camera motions (± ``step_m``
    along and ± ``step_deg`` about each camera axis). A correct extrinsic passes: none of them scores
    better by more than ``tolerance`` (relative). A wrong one fails and ``best_step`` points back toward
    the right one.

    Args:
        frames: (frame, camera_from_lidar) pairs as :func:`edge_alignment`.
        step_m: translation step [m]; step_deg: rotation step [deg].
        tolerance: relative score gain a step must exceed to fail the extrinsic.
    """
    base = edge_alignment(frames)
    if base.n_points == 0:
        raise OverlayError("no LiDAR silhouette point lands in any image: wrong camera, or no objects")
    steps = []
    for name in STEP_NAMES:
        d = camera_step(name, step_m, step_deg)
        steps.append((name, edge_alignment([(f, perturb_extrinsic(T, d)) for f, T in frames]).score))
    best_name, best = max(steps, key=lambda kv: kv[1])
    passed = best <= base.score * (1.0 + tolerance)
    return ExtrinsicCheck(base.score, base.n_points, tuple(steps), passed,
                          best_name if best > base.score else None)
