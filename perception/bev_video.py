"""The bird's-eye-view picture of a frame, and video / PNG output for it.

:class:`BevRenderer` draws one frame from above: x forward points up the image, y left points left, the
ego's origin (ground under the rear axle) where the grid puts it. The picture is a title strip above the
map; the map covers the :class:`~perception.bev.BevGrid` extent at ``pixels_per_m``:

    row = title_height + (x_max - x) * pixels_per_m        col = (y_max - y) * pixels_per_m

Layers, bottom to top: dark background and LiDAR points coloured by height (the highest point of a pixel
wins); range rings every 10 m and the ego outline; radar returns as magenta
squares with an arrow for their over-ground radial velocity (1 s of motion along the line of sight from
the ego origin, which differs from the radar's own line of sight by its mounting offset over the range:
under 2 degrees beyond 100 m for a bumper radar, a few degrees up close); detections as class-coloured
rotated rectangles with a heading tick, a velocity arrow (1 s of motion) and the score, sirens in red;
ground truth as thin white outlines with a heading tick; siren events as red bearing rays from the ego; the
legend (bottom left) and the title strip. Everything is drawn with a handful of vectorised calls (points:
per-pixel maximum height with ``np.maximum.at`` and one colour-map pass over the map; boxes and arrows: one
``cv2.polylines`` call per colour); only text is drawn per item. Measured on the 2-core dev machine while
it was also training a model: 120k points in about 7 ms, a full frame (120k points, 300 radar returns,
30 detections, 30 ground-truth boxes) in about 15 ms, at 8 px/m over 102.4 m (819 x 859 px).

:class:`VideoSink` writes the pictures into an MP4 (``mp4v``, readable back with OpenCV and common
players); :func:`write_png` writes one picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from perception.align import RadarPoints
from perception.bev import BevGrid
from perception.decode import Detections3D
from perception.evaluation.results import FrameBoxes
from perception.sinks import SIREN_RGB, SinkError, class_color_rgb

BACKGROUND_BGR = (24, 24, 24)
RING_BGR = (70, 70, 70)
TEXT_BGR = (235, 235, 235)
GT_BGR = (255, 255, 255)
RADAR_BGR = (255, 60, 255)
EGO_BGR = (200, 200, 200)
RING_STEP_M = 10.0
ARROW_S = 1.0  # velocity arrows show this much motion [s]
MIN_ARROW_SPEED = 0.5  # [m/s] slower returns and boxes get no arrow
HEIGHT_RANGE_M = (-0.5, 3.0)  # point colours span this height band (ego frame z) [m]
# Ego outline in the ego frame [m]: a 4.7 m x 1.9 m car whose rear axle (the origin) is 1.0 m from its rear.
EGO_OUTLINE_XY = np.array([[-1.0, 0.95], [3.7, 0.95], [3.7, -0.95], [-1.0, -0.95]])
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _bgr(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    return round(rgb[2] * 255), round(rgb[1] * 255), round(rgb[0] * 255)


def _height_lut() -> np.ndarray:
    """(256, 3) uint8 BGR by height level: 0 = no point (background), 1..255 viridis from HEIGHT_RANGE_M's
    low to high end, dimmed towards the ground so obstacles stand out from the road."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_VIRIDIS).reshape(256, 3)
    gain = np.linspace(0.55, 1.0, 256)[:, None]
    lut = np.clip(lut * gain, 0, 255).astype(np.uint8)
    lut[0] = BACKGROUND_BGR
    return lut


class BevRenderer:
    """Draws one frame from above (see the module docstring for the layout and layers).

    Args:
        grid: the extent drawn (ego frame [m]); its cell size is not used.
        pixels_per_m: scale [px/m].
        class_names: names for detection labels (colours by name, see ``perception.sinks.CLASS_COLORS_RGB``).

    Attributes:
        size: (width, height) [px] of every picture, as :class:`VideoSink` wants it.
        title_h: height of the title strip above the map [px]; map_w, map_h: the map's size [px].
    """

    def __init__(self, grid: BevGrid, pixels_per_m: float, class_names: Sequence[str]) -> None:
        if not pixels_per_m > 0:
            raise ValueError(f"BevRenderer: pixels_per_m must be > 0, got {pixels_per_m}")
        self.grid = grid
        self.ppm = float(pixels_per_m)
        self.class_names = tuple(class_names)
        self.map_w = round((grid.y_max - grid.y_min) * self.ppm)
        self.map_h = round((grid.x_max - grid.x_min) * self.ppm)
        if self.map_w < 64 or self.map_h < 64 or self.map_w * self.map_h > 64_000_000:
            raise ValueError(f"BevRenderer: the grid at {pixels_per_m} px/m makes a {self.map_w}x{self.map_h} px map; "
                             "choose pixels_per_m for 64..8000 px a side")
        self.font_scale = float(np.clip(self.map_w / 1600, 0.35, 0.9))
        self.line_h = round(34 * self.font_scale)
        self.title_h = 2 * self.line_h + 6  # two lines of title
        self.size = (self.map_w, self.map_h + self.title_h)
        self._lut = _height_lut().reshape(256, 1, 3)
        self._class_bgr = [_bgr(class_color_rgb(self.class_names, k)) for k in range(len(self.class_names))]
        self._legend, self._legend_at = self._draw_legend()
        self._blank_map = np.empty((self.map_h, self.map_w, 3), np.uint8)
        self._blank_map[:] = BACKGROUND_BGR

    # ------------------------------------------------------------------ geometry
    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Ego-frame points (..., 2) x y [m] -> (..., 2) float64 pixel (col, row) in the picture."""
        xy = np.asarray(xy, np.float64)
        col = (self.grid.y_max - xy[..., 1]) * self.ppm
        row = self.title_h + (self.grid.x_max - xy[..., 0]) * self.ppm
        return np.stack([col, row], axis=-1)

    def _ipx(self, xy: np.ndarray) -> np.ndarray:
        """As :meth:`to_pixels`, rounded to int32 and clipped to a margin around the picture (cv2 draws
        coordinates far outside the picture correctly, but int32 overflow would not be)."""
        lim = 5 * max(self.size)
        return np.clip(np.rint(self.to_pixels(xy)), -lim, lim).astype(np.int32)

    @staticmethod
    def _box_corners(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 7) boxes -> (N, 4, 2) BEV corners (front-left, front-right, rear-right, rear-left) and (N, 2)
        front-edge midpoints, ego frame [m]."""
        x, y, length, width, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
        c, s = np.cos(yaw), np.sin(yaw)
        lx = np.array([0.5, 0.5, -0.5, -0.5])[None, :] * length[:, None]
        ly = np.array([0.5, -0.5, -0.5, 0.5])[None, :] * width[:, None]
        corners = np.stack([x[:, None] + c[:, None] * lx - s[:, None] * ly,
                            y[:, None] + s[:, None] * lx + c[:, None] * ly], axis=-1)
        front = np.stack([x + c * 0.5 * length, y + s * 0.5 * length], axis=-1)
        return corners, front

    def _arrows(self, tail_xy: np.ndarray, vec_xy: np.ndarray) -> list[np.ndarray]:
        """Polylines of arrows from ``tail_xy`` (N, 2) along ``vec_xy`` (N, 2) [m]: per arrow a shaft and a
        head (left barb, tip, right barb), in pixels."""
        if not len(tail_xy):
            return []
        tail = self.to_pixels(tail_xy)
        tip = self.to_pixels(tail_xy + vec_xy)
        d = tip - tail
        length = np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        u = d / length
        barb = np.minimum(0.35 * length, 6.0 + 2.0 * self.font_scale)
        c, s = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
        back = -u
        left = np.stack([back[:, 0] * c - back[:, 1] * s, back[:, 0] * s + back[:, 1] * c], axis=1)
        right = np.stack([back[:, 0] * c + back[:, 1] * s, -back[:, 0] * s + back[:, 1] * c], axis=1)
        shafts = np.stack([tail, tip], axis=1)
        heads = np.stack([tip + left * barb, tip, tip + right * barb], axis=1)
        lim = 5 * max(self.size)
        return ([p for p in np.clip(np.rint(shafts), -lim, lim).astype(np.int32)]
                + [p for p in np.clip(np.rint(heads), -lim, lim).astype(np.int32)])

    # ------------------------------------------------------------------ layers
    def _draw_static(self, img: np.ndarray) -> None:
        """Range rings with labels and the ego outline (over the points, under everything else)."""
        g = self.grid
        origin = tuple(int(v) for v in self._ipx(np.zeros(2)))
        corners = np.array([[g.x_min, g.y_min], [g.x_min, g.y_max], [g.x_max, g.y_min], [g.x_max, g.y_max]])
        max_r = float(np.linalg.norm(corners, axis=1).max())
        fs = 0.85 * self.font_scale
        map_view = img[self.title_h:]  # rings are clipped to the map, never drawn into the title strip
        for k in range(1, int(max_r // RING_STEP_M) + 1):
            r = k * RING_STEP_M
            cv2.circle(map_view, (origin[0], origin[1] - self.title_h), round(r * self.ppm), RING_BGR, 1,
                       cv2.LINE_AA)
            label = self.to_pixels(np.array([r, 0.0]))
            if self.title_h + 12 < label[1] < self.size[1] - 4:
                cv2.putText(img, f"{int(r)} m", (int(label[0]) + 3, int(label[1]) - 3), _FONT, fs, RING_BGR, 1,
                            cv2.LINE_AA)
        cv2.polylines(img, [self._ipx(EGO_OUTLINE_XY)], True, EGO_BGR, 1, cv2.LINE_AA)
        nose = self._ipx(np.array([[3.7, 0.6], [4.3, 0.0], [3.7, -0.6]]))
        cv2.polylines(img, [nose], False, EGO_BGR, 1, cv2.LINE_AA)

    def _draw_legend(self) -> tuple[np.ndarray, tuple[int, int]]:
        """The legend (class colours, ground truth, radar, siren) as a BGR patch and its top-left corner
        (bottom left of the map)."""
        items = [(name, self._class_bgr[k]) for k, name in enumerate(self.class_names)]
        items += [("ground truth", GT_BGR), ("radar", RADAR_BGR), ("siren", _bgr(SIREN_RGB))]
        fs = 0.85 * self.font_scale
        lh = round(26 * self.font_scale) + 2
        patch = np.zeros((lh * len(items) + 8, round(150 * self.font_scale) + 34, 3), np.uint8)
        for k, (name, color) in enumerate(items):
            y = (k + 1) * lh
            cv2.rectangle(patch, (4, y - lh // 2), (18, y), color, -1)
            cv2.putText(patch, name, (26, y), _FONT, fs, TEXT_BGR, 1, cv2.LINE_AA)
        return patch, (4, self.size[1] - 4 - patch.shape[0])

    # ------------------------------------------------------------------ frame
    def render(self, points: np.ndarray | None, radar: RadarPoints | None, dets: Detections3D | None,
               gt: FrameBoxes | None, title: str) -> np.ndarray:
        """One picture.

        Args:
            points: (N, >=3) LiDAR points, x y z [m] in the ego frame at the frame's stamp (extra columns
                ignored); None or empty for none.
            radar: radar returns at the frame's instant (ego frame), None for none.
            dets: the frame's detections (ego frame), None for none.
            gt: ground-truth boxes (ego frame, same stamp), None for none.
            title: up to two lines (``"\\n"``), e.g. stamp, frame counters and latency.
        Returns:
            (H, W, 3) uint8 BGR picture, (W, H) = :attr:`size`.
        """
        img = np.empty((self.size[1], self.size[0], 3), np.uint8)
        img[: self.title_h] = 0
        if points is not None and len(points):
            self._draw_points(img, np.asarray(points))
        else:
            img[self.title_h:] = self._blank_map  # a copy: broadcasting a colour is 100x slower
        self._draw_static(img)
        if radar is not None and len(radar):
            self._draw_radar(img, radar)
        if dets is not None and len(dets):
            self._draw_detections(img, dets)
        if gt is not None and len(gt):
            self._draw_boxes_outline(img, np.asarray(gt.boxes, np.float64), GT_BGR, 1)
        if dets is not None and dets.siren_events:
            self._draw_sirens(img, dets)
        (x0, y0), (h, w) = self._legend_at, self._legend.shape[:2]
        img[y0:y0 + h, x0:x0 + w] = self._legend  # the legend stays on top
        for k, line in enumerate(title.split("\n")[:2]):
            cv2.putText(img, line, (8, (k + 1) * self.line_h), _FONT, self.font_scale, TEXT_BGR, 1, cv2.LINE_AA)
        return img

    def _draw_points(self, img: np.ndarray, points: np.ndarray) -> None:
        """Fills the map: per pixel the colour of its highest point, the background where it has none."""
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"BevRenderer.render: points must be (N, >=3), got shape {points.shape}")
        g, w, h = self.grid, self.map_w, self.map_h
        x, y, z = (np.asarray(points[:, i], np.float32) for i in range(3))
        col = (np.float32(g.y_max) - y) * np.float32(self.ppm)
        row = (np.float32(g.x_max) - x) * np.float32(self.ppm)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & np.isfinite(z)  # NaN compares False
        with np.errstate(invalid="ignore"):  # far-away and NaN points cast to garbage, then masked out
            flat = np.where(inside, row.astype(np.int32) * w + col.astype(np.int32), w * h)
            lo, hi = HEIGHT_RANGE_M
            level = (np.clip((z - np.float32(lo)) * np.float32(254.0 / (hi - lo)), 0, 254) + 1).astype(np.uint8)
        # one byte per pixel, the highest point's level (0 = no point; points outside go to a spare last
        # cell), then one lookup-table pass colours the whole map, background included
        canvas = np.zeros(w * h + 1, np.uint8)
        np.maximum.at(canvas, flat, level)
        levels = canvas[:-1].reshape(h, w)
        img[self.title_h:] = cv2.applyColorMap(levels, self._lut)  # a user colour map: lut[levels], fastest

    def _draw_radar(self, img: np.ndarray, radar: RadarPoints) -> None:
        xy = np.asarray(radar.xyz, np.float64)[:, :2]
        px = np.rint(self.to_pixels(xy)).astype(np.int64)
        h, w = img.shape[:2]
        offsets = np.array([(dc, dr) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])  # 3x3 squares
        sq = px[:, None, :] + offsets[None, :, :]
        c, r = sq[..., 0].reshape(-1), sq[..., 1].reshape(-1)
        ok = (c >= 0) & (c < w) & (r >= self.title_h) & (r < h)
        img[r[ok], c[ok]] = RADAR_BGR
        v = np.asarray(radar.v_radial_ground, np.float64)
        moving = np.abs(v) >= MIN_ARROW_SPEED
        if moving.any():
            rng = np.maximum(np.linalg.norm(xy[moving], axis=1, keepdims=True), 1e-6)
            vec = xy[moving] / rng * (v[moving] * ARROW_S)[:, None]  # + receding: points away from the ego
            cv2.polylines(img, self._arrows(xy[moving], vec), False, RADAR_BGR, 1, cv2.LINE_8)

    def _draw_boxes_outline(self, img: np.ndarray, boxes: np.ndarray, color: tuple[int, int, int],
                            thickness: int) -> None:
        corners, front = self._box_corners(boxes)
        centre = boxes[:, :2]
        polys = [p for p in self._ipx(corners)]
        ticks = [p for p in self._ipx(np.stack([centre, front], axis=1))]
        cv2.polylines(img, polys, True, color, thickness, cv2.LINE_8)
        cv2.polylines(img, ticks, False, color, thickness, cv2.LINE_8)

    def _draw_detections(self, img: np.ndarray, dets: Detections3D) -> None:
        boxes = np.asarray(dets.boxes, np.float64)
        labels = np.asarray(dets.labels)
        siren = np.asarray(dets.siren, bool)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"BevRenderer.render: detection labels must be in 0..{len(self.class_names) - 1}")
        vel = np.asarray(dets.velocities, np.float64)
        moving = np.linalg.norm(vel, axis=1) >= MIN_ARROW_SPEED
        for k in np.unique(labels):
            sel = labels == k
            color = self._class_bgr[int(k)]
            self._draw_boxes_outline(img, boxes[sel & ~siren], color, 2)
            arrows = self._arrows(boxes[sel & moving, :2], vel[sel & moving] * ARROW_S)
            if arrows:
                cv2.polylines(img, arrows, False, color, 1, cv2.LINE_AA)
        if siren.any():
            self._draw_boxes_outline(img, boxes[siren], _bgr(SIREN_RGB), 3)
        corners, _ = self._box_corners(boxes)
        anchor = self.to_pixels(corners).max(axis=1)  # right/bottom-most corner pixel: text beside the box
        fs = 0.8 * self.font_scale
        for i in range(len(dets)):
            text = f"{float(dets.scores[i]):.2f}" + (" SIREN" if siren[i] else "")
            color = _bgr(SIREN_RGB) if siren[i] else self._class_bgr[int(labels[i])]
            cv2.putText(img, text, (int(anchor[i, 0]) + 2, int(anchor[i, 1]) + 2), _FONT, fs, color, 1, cv2.LINE_AA)

    def _draw_sirens(self, img: np.ndarray, dets: Detections3D) -> None:
        g = self.grid
        # rays end short of the nearest map edge (a grid that does not surround the ego: half its size)
        edge = min(g.x_max, -g.x_min, g.y_max, -g.y_min)
        reach = 0.9 * edge if edge > 0 else 0.45 * min(g.x_max - g.x_min, g.y_max - g.y_min)
        bearings = np.array([e.bearing_rad for e in dets.siren_events])
        ends = reach * np.stack([np.cos(bearings), np.sin(bearings)], axis=1)
        rays = [p for p in self._ipx(np.stack([np.zeros_like(ends), ends], axis=1))]
        red = _bgr(SIREN_RGB)
        cv2.polylines(img, rays, False, red, 2, cv2.LINE_AA)
        for e, end in zip(dets.siren_events, self._ipx(ends)):
            cv2.putText(img, f"siren {e.probability:.2f}", (int(end[0]) + 4, int(end[1])), _FONT,
                        0.8 * self.font_scale, red, 1, cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------------------
class VideoSink:
    """An MP4 video of BEV pictures (codec ``mp4v``).

    Args:
        path: output ``.mp4`` (created or truncated).
        fps: frames per second written into the file (the pipeline's frame rate for real-time playback).
        size: (width, height) [px] of every picture, :attr:`BevRenderer.size`.
    Raises:
        SinkError: OpenCV cannot open a writer for the file (no encoder, unwritable folder).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        if not fps > 0:
            raise ValueError(f"VideoSink: fps must be > 0, got {fps}")
        w, h = (int(v) for v in size)
        if w < 2 or h < 2:
            raise ValueError(f"VideoSink: size must be (width, height) of at least 2x2 px, got {size}")
        self.size = (w, h)
        self.frames_written = 0
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size)
        if not self._writer.isOpened():
            raise SinkError(f"cannot open video {self.path} for writing (codec mp4v, {w}x{h} at {fps} fps): "
                            "check the folder exists and is writable")

    def write(self, image: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 BGR picture of the sink's size."""
        if self._writer is None:
            raise SinkError(f"{self.path}: write() after close()")
        want = (self.size[1], self.size[0], 3)
        if image.shape != want or image.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {image.shape} {image.dtype}, expected "
                             f"{want} uint8 BGR")
        self._writer.write(np.ascontiguousarray(image))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (writes the MP4 index; a video not closed is unreadable). Idempotent."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 BGR picture as PNG. Raises SinkError when OpenCV cannot write it."""
    path = Path(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"write_png {path}: expected (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as e:
        raise SinkError(f"cannot write PNG {path}: {e}") from e
    if not ok:
        raise SinkError(f"cannot write PNG {path}: check the folder exists and is writable")
