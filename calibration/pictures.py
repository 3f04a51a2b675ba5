"""Pictures that let a person judge a calibration at a glance, written as PNG with cv2.imwrite.

- Coverage (:func:`draw_coverage`): every accepted corner on a blank image of the camera's size, one
  colour per view, over a grid heat map of how many corners fell in each cell, so regions the board
  never reached (where distortion is extrapolated, not measured) stand out as dark cells marked 0.
- Undistortion preview (:func:`draw_undistortion_preview`): original | undistorted side by side with
  straight reference lines; board edges should run parallel to them on the right-hand side.
- :func:`side_by_side` and :func:`draw_horizontal_lines` are shared with the stereo rectification
  preview.

All images are BGR uint8 (H, W, 3). Colours: heat map values stay at or below 120 per channel so the
full-brightness corner marks (one channel at 255) can be told apart from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.intrinsics import CalibrationError, IntrinsicsResult

HEAT_MAX = 120  # brightest heat-map channel value
MARK_RADIUS_PX = 2
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def view_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated BGR colours (full value: the largest channel is 255)."""
    hues = np.linspace(0, 180, max(n, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 255)], axis=1)[None]
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]
    return [tuple(int(c) for c in px) for px in bgr[:n]]


def coverage_counts(image_points: list[np.ndarray], size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(grid_rows, grid_cols) int64 number of corners per cell.

    Args:
        image_points: per view, (N, 2) [px] corners.
        size: (width, height) [px] of the image.
        grid: (cells across, cells down)."""
    w, h = size
    gx, gy = grid
    counts = np.zeros((gy, gx), np.int64)
    for pts in image_points:
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        cx = np.clip((p[:, 0] / w * gx).astype(int), 0, gx - 1)
        cy = np.clip((p[:, 1] / h * gy).astype(int), 0, gy - 1)
        np.add.at(counts, (cy, cx), 1)
    return counts


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    """White text on a black box, readable on any background; ``org`` is the text's bottom-left."""
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    cv2.rectangle(img, (x - 3, y - h - 3), (x + w + 3, y + base + 1), (0, 0, 0), -1)
    cv2.putText(img, text, org, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_coverage(result: IntrinsicsResult, grid: tuple[int, int] = (8, 6)) -> np.ndarray:
    """Coverage picture of a calibration.

    Args:
        result: the calibration (its accepted corners and camera size are drawn).
        grid: heat-map cells (across, down).
    Returns:
        (height, width, 3) uint8 BGR image the size of the camera: heat map of corners per cell
        (dark = none; cells without corners say "0"), each view's board outline and corners in its
        own colour, and a line of text with the model, RMS and number of views."""
    cam = result.camera
    size = (cam.width, cam.height)
    counts = coverage_counts(list(result.image_points), size, grid)
    norm = (255 * counts / max(int(counts.max()), 1)).astype(np.uint8)
    heat = cv2.applyColorMap(norm, cv2.COLORMAP_VIRIDIS).astype(np.float64) * (HEAT_MAX / 255.0)
    heat[counts == 0] = 0
    img = cv2.resize(heat.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    gx, gy = grid
    for i in range(1, gx):
        x = round(i * cam.width / gx)
        cv2.line(img, (x, 0), (x, cam.height - 1), (60, 60, 60), 1)
    for j in range(1, gy):
        y = round(j * cam.height / gy)
        cv2.line(img, (0, y), (cam.width - 1, y), (60, 60, 60), 1)
    for cy in range(gy):
        for cx in range(gx):
            if counts[cy, cx] == 0:
                org = (int((cx + 0.5) * cam.width / gx) - 5, int((cy + 0.5) * cam.height / gy) + 5)
                cv2.putText(img, "0", org, _FONT, 0.45, (0, 0, 200), 1, cv2.LINE_AA)
    cols, rows = result.pattern
    colours = view_colours(len(result.image_points))
    grids = [np.asarray(pts, np.float64).reshape(rows, cols, 2) for pts in result.image_points]
    for g, colour in zip(grids, colours):
        outline = np.array([g[0, 0], g[0, -1], g[-1, -1], g[-1, 0]])
        cv2.polylines(img, [np.rint(outline).astype(np.int32)], True, colour, 1, cv2.LINE_AA)
    # Marks after all outlines, so no outline is drawn over a corner.
    for g, colour in zip(grids, colours):
        for u, v in np.rint(g.reshape(-1, 2)).astype(int):
            cv2.circle(img, (int(u), int(v)), MARK_RADIUS_PX, colour, -1)
    n_acc = len(result.image_points)
    _put_text(img, f"{cam.model}  RMS {result.rms_px:.3f} px  {n_acc}/{len(result.per_view)} views",
              (8, 20))
    empty = int((counts == 0).sum())
    _put_text(img, f"cells without corners: {empty}/{counts.size}", (8, cam.height - 10), 0.45)
    return img


def draw_reference_lines(img: np.ndarray, step_px: int = 40, colour: tuple[int, int, int] = (0, 200, 0)
                         ) -> np.ndarray:
    """Copy of a BGR image with a grid of straight horizontal and vertical lines every ``step_px``."""
    out = img.copy()
    h, w = out.shape[:2]
    for x in range(step_px, w, step_px):
        cv2.line(out, (x, 0), (x, h - 1), colour, 1)
    for y in range(step_px, h, step_px):
        cv2.line(out, (0, y), (w - 1, y), colour, 1)
    return out


def draw_horizontal_lines(img: np.ndarray, step_px: int = 24) -> np.ndarray:
    """Copy of a BGR image with full-width horizontal lines every ``step_px`` (alternating colours),
    the usual way to check that rectified stereo rows line up."""
    out = img.copy()
    h, w = out.shape[:2]
    for k, y in enumerate(range(step_px // 2, h, step_px)):
        cv2.line(out, (0, y), (w - 1, y), (0, 255, 0) if k % 2 == 0 else (0, 0, 255), 1)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, left_title: str = "", right_title: str = "") -> np.ndarray:
    """Two images of the same height next to each other -> (H, W_left + W_right, 3) uint8 BGR.
    Grey inputs are converted to BGR; titles are written in the top-left corner of each half."""
    def bgr(a: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR) if a.ndim == 2 else a.copy()

    a, b = bgr(left), bgr(right)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"side_by_side needs equal heights, got {a.shape[0]} and {b.shape[0]}")
    if left_title:
        _put_text(a, left_title, (8, 20))
    if right_title:
        _put_text(b, right_title, (8, 20))
    return np.concatenate([a, b], axis=1)


def draw_undistortion_preview(camera: CameraModel, image: np.ndarray, step_px: int = 40) -> np.ndarray:
    """Original | undistorted (same K) side by side, both with straight reference lines.

    Args:
        camera: the calibrated camera.
        image: (height, width) grey or (height, width, 3) BGR uint8 image taken by that camera.
    Returns:
        (height, 2 * width, 3) uint8 BGR."""
    und = camera.undistort(image)
    return side_by_side(draw_reference_lines(_as_bgr(image), step_px),
                        draw_reference_lines(_as_bgr(und), step_px), "original", "undistorted")


def _as_bgr(a: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR) if a.ndim == 2 else a


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 image to ``path`` as PNG (parent folders created); raises CalibrationError when
    OpenCV cannot write it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise CalibrationError(f"could not write picture {path}")
    return path


@dataclass(frozen=True)
class IntrinsicsPictures:
    """Paths of the pictures written for one intrinsic calibration."""

    coverage: Path
    undistortion: Path


def save_intrinsics_pictures(result: IntrinsicsResult, out_dir: str | Path, name: str = "camera"
                             ) -> IntrinsicsPictures:
    """Write ``<name>_coverage.png`` and ``<name>_undistortion.png`` (preview of the first accepted
    view) into ``out_dir``. Returns their paths."""
    out_dir = Path(out_dir)
    coverage = write_png(out_dir / f"{name}_coverage.png", draw_coverage(result))
    image = cv2.imread(str(result.view_paths[0]), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f"cannot re-read {result.view_paths[0]} for the undistortion preview")
    preview = write_png(out_dir / f"{name}_undistortion.png", draw_undistortion_preview(result.camera, image))
    return IntrinsicsPictures(coverage, preview)
