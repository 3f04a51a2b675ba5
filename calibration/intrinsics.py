"""Camera intrinsic calibration from chessboard images (OpenCV), with a reason for every rejected view.

Typical use (what ``perception calibrate intrinsics`` does)::

    paths = expand_image_glob("shots/*.jpg")
    result = calibrate_intrinsics(paths, parse_pattern("9x6"), 0.025, "pinhole")  # raises on failure
    write_intrinsics_to_rig("rig.yaml", "cam_front", result.camera)              # only reached on success
    print(result.summary())

Each image goes through these checks, in order; the first that fails rejects the view with a reason
(``ViewReport.reason``, "category: detail"):

1. ``unreadable``: the file is missing or is not an image.
2. ``empty``: no contrast (intensity range below 16 grey levels), e.g. an all-black frame.
3. ``blurry``: variance of the Laplacian below ``min_sharpness`` (sharp 640x480 boards measure
   500-850; a Gaussian blur of sigma 2 px brings them to ~19, sigma 4 px to ~4).
4. ``no board``: no chessboard with the requested inner-corner count, or only part of a larger
   board (the corners would not be the whole board and their numbering would vary between views).
5. ``size``: the image size differs from the size most images have.
6. ``outlier``: after a first solve, a per-view reprojection error above ``outlier_factor`` x the
   median (and above ``outlier_floor_px``); those views are dropped and the camera is solved again.
7. ``ill-conditioned`` (fisheye only): ``cv2.fisheye.calibrate`` fails with CALIB_CHECK_COND; the
   view whose removal makes it succeed is dropped (see :func:`_ill_conditioned_view`).

Checks 1-4 are :func:`find_board_views`, 5-7 :func:`calibrate_from_views`; corners found elsewhere can
go straight to the latter.

Corners are found with ``cv2.findChessboardCorners`` + ``cv2.cornerSubPix`` (fast, ~5 ms per
640x480 image) and, where that fails, ``cv2.findChessboardCornersSB``. The two detectors may number
the corners differently, so every detection is put into one canonical order (see
:func:`detect_chessboard`); stereo calibration relies on the left and right numbering agreeing.

Board frame: x along a row of ``pattern[0]`` corners, y across rows, z = x cross y; corner (i, j) sits at
``(i * square_m, j * square_m, 0)``. Rotations/translations of a view are ``camera_from_board``.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.rig import EGO_FRAME, Rig, RigError, Sensor
from calibration.transform import Transform

ModelName = Literal["pinhole", "fisheye"]

EMPTY_RANGE_GREY = 16  # images whose max - min intensity is below this carry no board
DEFAULT_MIN_SHARPNESS = 10.0  # variance of the Laplacian of the 8-bit grey image
_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
_SOLVE_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-12)
_MAX_OUTLIER_ROUNDS = 3


class CalibrationError(Exception):
    """Calibration could not produce a trustworthy result; the message says why and which images."""


def _cv_flag(name: str) -> int:
    """A fisheye/calibration flag by name: OpenCV 4 keeps them in ``cv2.fisheye``, OpenCV 5 in ``cv2``."""
    value = getattr(cv2.fisheye, name, None)
    return int(value if value is not None else getattr(cv2, name))


# ---------------------------------------------------------------------------------------------- inputs
def parse_pattern(text: str) -> tuple[int, int]:
    """``"9x6"`` -> ``(9, 6)``: inner corners per row, rows of inner corners. Raises CalibrationError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m:
        raise CalibrationError(f"chessboard pattern must look like 9x6 (inner corners), got {text!r}")
    cols, rows = int(m.group(1)), int(m.group(2))
    if cols < 2 or rows < 2:
        raise CalibrationError(f"chessboard pattern {text!r} needs at least 2x2 inner corners")
    return cols, rows


def expand_image_glob(pattern: str) -> list[Path]:
    """Sorted files matching a glob such as ``"shots/*.jpg"`` (``**`` recurses).

    Raises CalibrationError when nothing matches, naming the pattern."""
    paths = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    if not paths:
        raise CalibrationError(f"no image files match {str(pattern)!r}")
    return paths


def board_object_points(pattern: tuple[int, int], square_m: float) -> np.ndarray:
    """(cols * rows, 3) float32 corner positions [m] in the board frame, row by row (see module doc)."""
    cols, rows = pattern
    jj, ii = np.mgrid[0:rows, 0:cols]
    pts = np.zeros((rows * cols, 3), np.float32)
    pts[:, 0] = ii.ravel() * square_m
    pts[:, 1] = jj.ravel() * square_m
    return pts


# ------------------------------------------------------------------------------------------- detection
def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of an (H, W) uint8 image: low means blurred (or featureless)."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Values of a (H, W) image at (N, 2) pixels (nearest pixel), NaN outside the image."""
    h, w = image.shape
    out = np.full(len(uv), np.nan)
    ok = np.isfinite(uv).all(axis=1)
    ok[ok] = (uv[ok, 0] >= 0) & (uv[ok, 0] <= w - 1) & (uv[ok, 1] >= 0) & (uv[ok, 1] <= h - 1)
    out[ok] = image[np.rint(uv[ok, 1]).astype(int), np.rint(uv[ok, 0]).astype(int)]
    return out


@dataclass(frozen=True)
class _GridProbe:
    """Local geometry of a detected corner grid, for the X-junction checks.

    grid: (rows, cols, 2) corners [px]; step_i / step_j: (rows, cols, 2) local vectors [px] to the next
    corner along a row / down a column (central differences, one-sided at the border, so lens
    distortion does not matter); image: the grey image box-blurred over ~1/5 square, float64."""

    grid: np.ndarray
    step_i: np.ndarray
    step_j: np.ndarray
    image: np.ndarray

    @classmethod
    def of(cls, gray: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> "_GridProbe":
        cols, rows = pattern
        g = corners.reshape(rows, cols, 2).astype(np.float64)
        step_j, step_i = np.gradient(g, axis=(0, 1))
        k = max(1, int(0.2 * np.median(np.linalg.norm(step_i, axis=2)))) | 1
        return cls(g, step_i, step_j, cv2.blur(gray, (k, k)).astype(np.float64))

    def responses(self, p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
        """At points p (N, 2) with local steps a (along rows) and b (down columns): the X-junction
        response (TL + BR) - (TR + BL) and the two straight-edge responses, from the four quadrants
        a quarter square away. An X corner has a large X response and small edge responses; a board
        edge or a T junction has a large edge response."""
        tl, tr, br, bl = (_sample(self.image, p + sa * 0.25 * a + sb * 0.25 * b)
                          for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)))
        return (tl + br) - (tr + bl), (tl + bl) - (tr + br), (tl + tr) - (bl + br)


def _x_like(x: np.ndarray, eh: np.ndarray, ev: np.ndarray, parity: np.ndarray, sign: float, x_ref: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(valid, x_like) masks: sampled inside the image / looks like a chessboard corner of the
    expected colour arrangement (the X response changes sign from one corner to the next)."""
    valid = np.isfinite(x) & np.isfinite(eh) & np.isfinite(ev)
    with np.errstate(invalid="ignore"):
        like = (valid & (np.abs(x) > 0.4 * x_ref) & (np.maximum(np.abs(eh), np.abs(ev)) < 0.6 * np.abs(x))
                & (np.sign(x * parity) == sign))
    return valid, like


def _check_grid(gray: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> str:
    """Why a detected grid is not the whole board ("" when it is).

    1. Every detected corner must look like a chessboard X corner (``findChessboardCornersSB`` can
       return a grid that skips rows when asked for a wrong size).
    2. One corner step beyond each side of the grid there must be no further X corners: on a
       complete board that is the board's outer edge; when the pattern asked for is smaller than
       the board, the grid continues (measured on the OpenCV sample boards: at most 3 of 8 points
       on a side of a complete board look like corners, at least 4 of 5 when it continues)."""
    cols, rows = pattern
    probe = _GridProbe.of(gray, corners, pattern)
    jj, ii = np.mgrid[0:rows, 0:cols]
    parity = np.where((ii + jj) % 2 == 0, 1.0, -1.0)
    x, eh, ev = probe.responses(probe.grid.reshape(-1, 2), probe.step_i.reshape(-1, 2),
                                probe.step_j.reshape(-1, 2))
    sign = float(np.sign(np.nanmedian(x * parity.ravel())))
    x_ref = float(np.nanmedian(np.abs(x)))
    valid, like = _x_like(x, eh, ev, parity.ravel(), sign, x_ref)
    if not x_ref > 0 or like.sum() < 0.8 * len(like):
        return f"only {int(like.sum())} of {len(like)} detected corners look like chessboard corners"
    g, a, b = probe.grid, probe.step_i, probe.step_j
    sides = {
        "left": (g[:, 0] - a[:, 0], a[:, 0], b[:, 0], -parity[:, 0]),
        "right": (g[:, -1] + a[:, -1], a[:, -1], b[:, -1], -parity[:, -1]),
        "top": (g[0] - b[0], a[0], b[0], -parity[0]),
        "bottom": (g[-1] + b[-1], a[-1], b[-1], -parity[-1]),
    }
    for side, (p, sa, sb, par) in sides.items():
        valid, like = _x_like(*probe.responses(p, sa, sb), par, sign, x_ref)
        if valid.sum() >= 3 and like.sum() >= 0.6 * valid.sum():
            return f"the chessboard continues beyond the detected corners ({side} side): it is larger"
    return ""


def _canonical_order(corners: np.ndarray, pattern: tuple[int, int], gray: np.ndarray) -> np.ndarray:
    """Renumber detected corners (N, 2) so the numbering follows the physical board, not the detector.

    1. Handedness: going along a row then down the rows must turn clockwise on screen (the board seen
       from its printed side); otherwise each row is reversed.
    2. Half-turn: when cols + rows is odd, the first and last inner squares have different colours, so
       the order that starts at a dark first square is unique; otherwise (a half-turn-symmetric board)
       the first corner is the one nearer the image's top-left. Square patterns (cols == rows) can
       also come out turned by 90 degrees; avoid them for stereo."""
    cols, rows = pattern
    g = corners.reshape(rows, cols, 2)
    a = g[0, -1] - g[0, 0]
    b = g[-1, 0] - g[0, 0]
    if a[0] * b[1] - a[1] * b[0] < 0:
        g = g[:, ::-1]
    if (cols + rows) % 2 == 1:
        first = g[:2, :2].reshape(-1, 2).mean(axis=0)
        second = g[:2, 1:3].reshape(-1, 2).mean(axis=0)
        vals = _sample(cv2.blur(gray, (3, 3)), np.stack([first, second]))
        flip = bool(np.all(np.isfinite(vals)) and vals[0] > vals[1])
    else:
        flip = bool(g[-1, -1].sum() < g[0, 0].sum())
    if flip:
        g = g[::-1, ::-1]
    return np.ascontiguousarray(g.reshape(-1, 2), dtype=np.float32)


def _subpix_window(corners: np.ndarray, pattern: tuple[int, int]) -> int:
    """Half-size [px] of the cornerSubPix window: 0.3 x the smallest corner spacing, 2..11 px.

    A window reaching the neighbouring corners pulls the refinement off (on the OpenCV samples 0.4 x
    left one corner 3 px off; 0.3 x gives the lowest calibration RMS)."""
    cols, rows = pattern
    g = corners.reshape(rows, cols, 2)
    d = min(np.linalg.norm(np.diff(g, axis=1), axis=2).min(), np.linalg.norm(np.diff(g, axis=0), axis=2).min())
    return int(np.clip(0.3 * d, 2, 11))


def detect_chessboard(gray: np.ndarray, pattern: tuple[int, int], use_sb_fallback: bool = True
                      ) -> np.ndarray | None:
    """Find the complete chessboard in an (H, W) uint8 grey image.

    Args:
        gray: (H, W) uint8.
        pattern: (inner corners per row, rows of inner corners), e.g. (9, 6).
        use_sb_fallback: try ``cv2.findChessboardCornersSB`` (~0.1-0.4 s) when the classic detector fails.
    Returns:
        (cols * rows, 2) float32 sub-pixel corners [px] in canonical order (row by row, see
        :func:`_canonical_order`), or None when no complete board with that pattern is visible
        (a detection that is only part of a larger board is refused, see :func:`_check_grid`)."""
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(gray, pattern, flags=flags)
    if found and not _check_grid(gray, corners.reshape(-1, 2), pattern):
        corners = corners.reshape(-1, 2)
        win = _subpix_window(corners, pattern)
        corners = cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2).copy(), (win, win), (-1, -1),
                                   _SUBPIX_CRITERIA).reshape(-1, 2)
        return _canonical_order(corners, pattern, gray)
    if use_sb_fallback:
        found, corners = cv2.findChessboardCornersSB(
            gray, pattern, flags=cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_ACCURACY)
        if found and corners is not None and not _check_grid(gray, corners.reshape(-1, 2), pattern):
            return _canonical_order(corners.reshape(-1, 2), pattern, gray)
    return None


@dataclass(frozen=True)
class BoardView:
    """The outcome of looking for the board in one image.

    Args:
        path: the image file.
        corners: (cols * rows, 2) float32 [px] in canonical order, or None when rejected.
        image_size: (width, height) [px], None when the image could not be read.
        reason: why it was rejected ("category: detail"), "" when the board was found.
    """

    path: Path
    corners: np.ndarray | None
    image_size: tuple[int, int] | None
    reason: str = ""


def find_board_views(image_paths: Sequence[Path], pattern: tuple[int, int],
                     min_sharpness: float = DEFAULT_MIN_SHARPNESS, progress: bool = False) -> list[BoardView]:
    """Read each image and detect the board, applying checks 1-4 of the module doc.

    Args:
        image_paths: image files (any format cv2.imread reads; colour is converted to grey).
        pattern: inner corners (per row, rows).
        min_sharpness: variance-of-Laplacian threshold below which an image is rejected as blurry.
        progress: show a progress bar.
    Returns:
        One BoardView per path, in input order (size consistency is checked by the caller)."""
    views = []
    it = [Path(p) for p in image_paths]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="detecting chessboards", unit="img")
    for path in it:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            views.append(BoardView(path, None, None, "unreadable: missing file or not an image"))
            continue
        size = (gray.shape[1], gray.shape[0])
        span = int(gray.max()) - int(gray.min()) if gray.size else 0
        if span < EMPTY_RANGE_GREY:
            views.append(BoardView(path, None, size, f"empty: no contrast (intensity range {span} grey levels)"))
            continue
        sharp = sharpness(gray)
        if sharp < min_sharpness:
            views.append(BoardView(path, None, size,
                                   f"blurry: variance of Laplacian {sharp:.1f} < {min_sharpness:g}"))
            continue
        corners = detect_chessboard(gray, pattern)
        if corners is None:
            views.append(BoardView(path, None, size,
                                   f"no board: no complete {pattern[0]}x{pattern[1]} inner-corner chessboard"))
            continue
        views.append(BoardView(path, corners, size))
    return views


def _pattern_hint(paths: Sequence[Path], pattern: tuple[int, int], max_images: int = 2) -> str:
    """Which nearby inner-corner counts do find a board (tried on a few images with the fast detector)."""
    cols, rows = pattern
    candidates = [(rows, cols)] if rows != cols else []
    candidates += [(cols + dc, rows + dr) for dc in range(-2, 3) for dr in range(-2, 3)
                   if (dc, dr) != (0, 0) and cols + dc >= 2 and rows + dr >= 2]
    candidates += [(cols - 1, rows - 1)] if (cols - 1, rows - 1) not in candidates else []
    hits: Counter = Counter()
    for path in list(paths)[:max_images]:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        # After the first image with a hit, only confirm those sizes (each miss costs ~70 ms).
        for cand in list(hits) or candidates:
            if detect_chessboard(gray, cand, use_sb_fallback=False) is not None:
                hits[cand] += 1
    if not hits:
        return "no nearby pattern size finds a board either; check the images show the whole board"
    found = ", ".join(f"{c}x{r}" for (c, r), _ in hits.most_common())
    return f"the board is found with pattern {found}"


# ------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ViewReport:
    """One input image's fate.

    Args:
        path: the image file.
        error_px: RMS reprojection error [px] of this view (from the solve that accepted or rejected it),
            None when the view never reached a solve.
        accepted: used in the final solve.
        reason: why it was rejected ("category: detail"), "" when accepted.
    """

    path: Path
    error_px: float | None
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class IntrinsicsResult:
    """A successful intrinsic calibration.

    Args:
        camera: the calibrated CameraModel (pinhole k1 k2 p1 p2 k3, or fisheye k1..k4).
        rms_px: RMS reprojection error [px] over all corners of the accepted views.
        per_view: one ViewReport per input image, in input order.
        pattern: inner corners (per row, rows).
        square_m: square side [m]; translations are in the same unit.
        view_paths: the accepted images, aligned with the arrays below.
        object_points: per accepted view, (N, 3) float32 [m] corners in the board frame.
        image_points: per accepted view, (N, 2) float32 [px] detected corners, canonical order.
        rvecs: per accepted view, (3,) float64 Rodrigues rotation camera_from_board.
        tvecs: per accepted view, (3,) float64 [m] board origin in the camera optical frame.
    """

    camera: CameraModel
    rms_px: float
    per_view: tuple[ViewReport, ...]
    pattern: tuple[int, int]
    square_m: float
    view_paths: tuple[Path, ...]
    object_points: tuple[np.ndarray, ...]
    image_points: tuple[np.ndarray, ...]
    rvecs: tuple[np.ndarray, ...]
    tvecs: tuple[np.ndarray, ...]

    @property
    def accepted(self) -> list[ViewReport]:
        return [v for v in self.per_view if v.accepted]

    @property
    def rejected(self) -> list[ViewReport]:
        return [v for v in self.per_view if not v.accepted]

    def corners_for(self, path: Path) -> np.ndarray | None:
        """(N, 2) float32 [px] corners of an accepted view, None when ``path`` is not one."""
        for p, pts in zip(self.view_paths, self.image_points):
            if Path(p) == Path(path):
                return pts
        return None

    def summary(self) -> str:
        """A few human-readable lines: model, intrinsics, RMS, views used and rejection reasons."""
        c = self.camera
        lines = [
            f"{c.model} {c.width}x{c.height}: fx={c.fx:.2f} fy={c.fy:.2f} cx={c.cx:.2f} cy={c.cy:.2f} px, "
            f"distortion [{', '.join(f'{d:.5f}' for d in c.distortion)}]",
            f"RMS reprojection error {self.rms_px:.3f} px over {len(self.view_paths)} of "
            f"{len(self.per_view)} images",
        ]
        lines += [f"  rejected {v.path.name}: {v.reason}" for v in self.rejected]
        return "\n".join(lines)


def describe_rejections(reports: Sequence, limit: int = 4) -> str:
    """Reports with ``path`` and ``reason`` ("category: detail") -> one line grouped by category, e.g.
    '3 blurry (a.jpg, b.jpg, c.jpg); 2 no board (d.jpg, e.jpg)'; "none" when nothing was rejected."""
    groups: dict[str, list[str]] = {}
    for r in reports:
        if r.reason:
            groups.setdefault(r.reason.split(":")[0], []).append(r.path.name)
    parts = []
    for cat, names in groups.items():
        shown = ", ".join(names[:limit]) + (f", ... {len(names) - limit} more" if len(names) > limit else "")
        parts.append(f"{len(names)} {cat} ({shown})")
    return "; ".join(parts) if parts else "none"


def _check_sizes(views: list[BoardView]) -> tuple[list[BoardView], tuple[int, int] | None]:
    """Reject found views whose size differs from the most common size of the readable images."""
    sizes = Counter(v.image_size for v in views if v.image_size is not None)
    if not sizes:
        return views, None
    ref = sizes.most_common(1)[0][0]
    out = []
    for v in views:
        if v.corners is not None and v.image_size != ref:
            v = BoardView(v.path, None, v.image_size,
                          f"size: image is {v.image_size[0]}x{v.image_size[1]}, the others {ref[0]}x{ref[1]}")
        out.append(v)
    return out, ref


def view_errors(camera: CameraModel, object_points: Sequence[np.ndarray], image_points: Sequence[np.ndarray],
                rvecs: Sequence[np.ndarray], tvecs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per view, (N,) float64 reprojection error [px] of each corner, projecting with ``camera``."""
    out = []
    for obj, img, r, t in zip(object_points, image_points, rvecs, tvecs):
        R, _ = cv2.Rodrigues(np.asarray(r, np.float64))
        uv, _ = camera.project(obj.astype(np.float64) @ R.T + np.asarray(t, np.float64).reshape(3))
        out.append(np.linalg.norm(uv - img, axis=1))
    return out


def _solve(model: ModelName, obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int]
           ) -> tuple[CameraModel, list[np.ndarray], list[np.ndarray]]:
    """One OpenCV solve -> (camera, rvecs, tvecs). cv2.error propagates (the caller names the views)."""
    if model == "pinhole":
        _, K, dist, rvecs, tvecs = cv2.calibrateCamera(
            obj, [p.reshape(-1, 1, 2) for p in img], size, None, None, flags=0, criteria=_SOLVE_CRITERIA)
        dist = np.asarray(dist, np.float64).ravel()[:5]
    else:
        flags = (_cv_flag("CALIB_RECOMPUTE_EXTRINSIC") | _cv_flag("CALIB_CHECK_COND")
                 | _cv_flag("CALIB_FIX_SKEW"))
        _, K, dist, rvecs, tvecs = cv2.fisheye.calibrate(
            # (1, N, C) float64: the layout cv2.fisheye accepts in both OpenCV 4 and 5.
            [o.reshape(1, -1, 3).astype(np.float64) for o in obj],
            [p.reshape(1, -1, 2).astype(np.float64) for p in img],
            size, np.zeros((3, 3)), np.zeros((4, 1)), flags=flags, criteria=_SOLVE_CRITERIA)
        dist = np.asarray(dist, np.float64).ravel()[:4]
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(dist))):
        raise CalibrationError(f"{model} calibration diverged (non-finite intrinsics)")
    try:
        cam = CameraModel(model, size[0], size[1], K[0, 0], K[1, 1], K[0, 2], K[1, 2], tuple(dist))
    except ValueError as e:
        raise CalibrationError(f"{model} calibration gave an invalid camera: {e}") from e
    return (cam, [np.asarray(r, np.float64).reshape(3) for r in rvecs],
            [np.asarray(t, np.float64).reshape(3) for t in tvecs])


def _ill_conditioned_view(obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int], named: int | None,
                          paths: list[Path]) -> tuple[int, str] | None:
    """Which view to drop after cv2.fisheye.calibrate failed with CALIB_CHECK_COND -> (index, reason).

    The view OpenCV names is not always the culprit: one bad view spoils the intrinsics, and then a
    good view's pose is what turns ill-conditioned. So each view is left out in turn; the one whose
    removal lets the solve succeed with the lowest error is dropped. When no single removal helps
    (several bad views), the named view goes, and the next round continues from there; with no view
    named (OpenCV 5.1 failing in a view's initial pose) and no single removal helping, None: the solve
    fails as a whole."""
    best: tuple[float, int] | None = None
    for j in range(len(obj)):
        rest_obj, rest_img = obj[:j] + obj[j + 1:], img[:j] + img[j + 1:]
        try:
            cam, rvecs, tvecs = _solve("fisheye", rest_obj, rest_img, size)
        except (cv2.error, CalibrationError):
            continue
        err = np.concatenate(view_errors(cam, rest_obj, rest_img, rvecs, tvecs))
        rms = float(np.sqrt(np.mean(err**2)))
        if np.isfinite(rms) and (best is None or rms < best[0]):
            best = (rms, j)
    if best is not None:
        named_by = f"naming {paths[min(named, len(paths) - 1)].name}" if named is not None else "naming no view"
        return best[1], (f"ill-conditioned: cv2.fisheye.calibrate fails with this view (CALIB_CHECK_COND, "
                         f"{named_by}) and succeeds without it")
    if named is None:
        return None
    named = min(named, len(obj) - 1)
    return named, "ill-conditioned: named by cv2.fisheye.calibrate (CALIB_CHECK_COND)"


def calibrate_intrinsics(
    image_paths: Sequence[Path],
    pattern: tuple[int, int],
    square_m: float,
    model: ModelName = "pinhole",
    min_views: int = 5,
    min_sharpness: float = DEFAULT_MIN_SHARPNESS,
    outlier_factor: float = 3.0,
    outlier_floor_px: float = 1.0,
    progress: bool = False,
) -> IntrinsicsResult:
    """Calibrate one camera from chessboard images.

    Args:
        image_paths: the images (one board per image); repeated paths are used once.
        pattern: inner corners (per row, rows), e.g. (9, 6) for a board of 10 x 7 squares.
        square_m: side of one square [m].
        model: "pinhole" (cv2.calibrateCamera, k1 k2 p1 p2 k3) or "fisheye" (cv2.fisheye.calibrate,
            k1..k4, extrinsics recomputed each iteration, zero skew).
        min_views: fewest accepted views to trust a result.
        min_sharpness: variance-of-Laplacian threshold for the blur check.
        outlier_factor, outlier_floor_px: a view is an outlier when its RMS error exceeds both
            ``outlier_factor`` x the median view error and ``outlier_floor_px`` [px].
        progress: show a progress bar while detecting.
    Returns:
        IntrinsicsResult (nothing is written anywhere).
    Raises:
        CalibrationError: no images, no board in any image (with a hint at the right pattern size),
            fewer than ``min_views`` usable views (with counts and reasons), or a failed solve.
    """
    if not image_paths:
        raise CalibrationError("no images given for calibration")
    paths = list(dict.fromkeys(Path(p) for p in image_paths))
    pattern = (int(pattern[0]), int(pattern[1]))
    views = find_board_views(paths, pattern, min_sharpness, progress)
    return calibrate_from_views(views, pattern, square_m, model, min_views, outlier_factor, outlier_floor_px)


def calibrate_from_views(
    board_views: Sequence[BoardView],
    pattern: tuple[int, int],
    square_m: float,
    model: ModelName = "pinhole",
    min_views: int = 5,
    outlier_factor: float = 3.0,
    outlier_floor_px: float = 1.0,
) -> IntrinsicsResult:
    """Calibrate one camera from boards already looked for (:func:`find_board_views`, or corners
    from elsewhere); checks 5-7 of the module doc happen here. Arguments, result and errors
    as :func:`calibrate_intrinsics`."""
    if model not in ("pinhole", "fisheye"):
        raise CalibrationError(f"camera model must be 'pinhole' or 'fisheye', got {model!r}")
    if not board_views:
        raise CalibrationError("no images given for calibration")
    if not square_m > 0:
        raise CalibrationError(f"square size must be positive [m], got {square_m}")
    pattern = (int(pattern[0]), int(pattern[1]))
    views, size = _check_sizes(list(board_views))
    found = [v for v in views if v.corners is not None]
    searched = [v for v in views if v.reason.startswith("no board")]
    if not found and searched:
        raise CalibrationError(
            f"no {pattern[0]}x{pattern[1]} chessboard found in any of {len(views)} images "
            f"({describe_rejections(views)}); the pattern counts inner corners (squares - 1 per side): "
            f"{_pattern_hint([v.path for v in searched], pattern)}")

    board = board_object_points(pattern, square_m)
    reports: dict[Path, ViewReport] = {}
    for v in views:
        if v.corners is None:
            reports[v.path] = ViewReport(v.path, None, False, v.reason)
    active = list(found)

    def too_few() -> CalibrationError:
        rejected = [r for r in reports.values() if not r.accepted]
        return CalibrationError(
            f"only {len(active)} usable view(s) of {len(views)} images, need at least {min_views} for "
            f"{model} calibration; rejected: {describe_rejections(rejected)}")

    rounds = 0
    while True:
        if len(active) < min_views:
            raise too_few()
        obj = [board] * len(active)
        img = [v.corners for v in active]
        try:
            cam, rvecs, tvecs = _solve(model, obj, img, size)
        except cv2.error as e:
            # OpenCV 4 names the ill-conditioned view ("input array N"); OpenCV 5.1 may fail earlier, in
            # the initial pose of a degenerate view, without naming one.
            m = re.search(r"input array (\d+)", str(e))
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            culprit = None
            if model == "fisheye":
                culprit = _ill_conditioned_view(obj, img, size, int(m.group(1)) if m else None,
                                                [v.path for v in active])
            if culprit is not None:
                bad = active.pop(culprit[0])
                reports[bad.path] = ViewReport(bad.path, None, False, culprit[1])
                continue
            raise CalibrationError(f"{model} calibration failed on {len(active)} views: {msg}") from e
        errs = view_errors(cam, obj, img, rvecs, tvecs)
        # A view the solve could not place (NaN error) is the worst outlier there is.
        per_view_rms = np.array([np.sqrt(np.mean(e**2)) for e in errs])
        per_view_rms[~np.isfinite(per_view_rms)] = np.inf
        if not np.isfinite(per_view_rms).any():
            raise CalibrationError(f"{model} calibration diverged: no view reprojects to a finite error")
        med = float(np.median(per_view_rms[np.isfinite(per_view_rms)]))
        limit = max(outlier_factor * med, outlier_floor_px)
        outliers = [i for i, e in enumerate(per_view_rms) if e > limit]
        if outliers and rounds < _MAX_OUTLIER_ROUNDS:
            rounds += 1
            for i in outliers:
                p = active[i].path
                reports[p] = ViewReport(p, float(per_view_rms[i]), False,
                                        f"outlier: reprojection error {per_view_rms[i]:.2f} px > {limit:.2f} px "
                                        f"({outlier_factor:g} x median {med:.2f} px)")
            active = [v for i, v in enumerate(active) if i not in set(outliers)]
            continue
        break

    for v, e in zip(active, per_view_rms):
        reports[v.path] = ViewReport(v.path, float(e), True, "")
    all_err = np.concatenate(errs)
    rms = float(np.sqrt(np.mean(all_err**2)))
    if not np.isfinite(rms):
        raise CalibrationError(f"{model} calibration diverged: non-finite reprojection error after "
                               f"{_MAX_OUTLIER_ROUNDS} rounds of outlier rejection")

    def frozen(a: np.ndarray) -> np.ndarray:
        a = np.array(a)
        a.flags.writeable = False
        return a

    return IntrinsicsResult(
        camera=cam,
        rms_px=rms,
        per_view=tuple(reports[v.path] for v in views),
        pattern=pattern,
        square_m=float(square_m),
        view_paths=tuple(v.path for v in active),
        object_points=tuple(frozen(board) for _ in active),
        image_points=tuple(frozen(v.corners) for v in active),
        rvecs=tuple(frozen(r) for r in rvecs),
        tvecs=tuple(frozen(t) for t in tvecs),
    )


# ------------------------------------------------------------------------------------------- the rig
def load_rig_for_update(rig_path: Path, create_missing: bool) -> Rig:
    """The rig in ``rig_path`` (an empty rig named after the file when it is missing and
    ``create_missing``); CalibrationError when missing otherwise or invalid."""
    if not rig_path.exists():
        if not create_missing:
            raise CalibrationError(f"rig file {rig_path} does not exist (ask to create it explicitly)")
        return Rig(rig_path.stem, ())
    try:
        return Rig.load(rig_path)
    except RigError as e:
        raise CalibrationError(f"cannot update rig: {e}") from e


def rig_with_camera(rig: Rig, rig_path: Path, camera_id: str, camera: CameraModel, create_missing: bool) -> Rig:
    """``rig`` with ``camera_id``'s intrinsics replaced (or the camera added with identity pose)."""
    if camera_id in rig:
        sensor = rig[camera_id]
        if sensor.kind != "camera":
            raise CalibrationError(f"rig {rig_path}: sensor '{camera_id}' is a {sensor.kind}, not a camera")
        return rig.replace_sensor(dataclasses.replace(sensor, camera=camera))
    if not create_missing:
        cams = ", ".join(rig.ids("camera")) or "none"
        raise CalibrationError(f"rig {rig_path} has no camera '{camera_id}' (cameras: {cams}); "
                               f"ask to create it explicitly (it gets an identity pose)")
    return rig.replace_sensor(Sensor(camera_id, "camera", Transform.identity(EGO_FRAME, camera_id), camera))


def write_intrinsics_to_rig(rig_path: str | Path, camera_id: str, camera_model: CameraModel,
                            create_missing: bool = False) -> Rig:
    """Replace one camera's intrinsics in a rig YAML file, keeping everything else; atomic write.

    Args:
        rig_path: the rig file (calibration.rig format).
        camera_id: the camera sensor to update.
        camera_model: its new intrinsics.
        create_missing: when the camera (or the whole file) is absent, create it with an identity
            ego_from_camera pose instead of raising.
    Returns:
        The rig as written.
    Raises:
        CalibrationError: unreadable/invalid rig, unknown camera (without ``create_missing``), or a
            sensor of that id that is not a camera. The file is untouched in every error case."""
    rig_path = Path(rig_path)
    rig = load_rig_for_update(rig_path, create_missing)
    try:
        rig = rig_with_camera(rig, rig_path, camera_id, camera_model, create_missing)
    except RigError as e:
        raise CalibrationError(f"cannot update rig {rig_path}: {e}") from e
    rig.save(rig_path)
    return rig
