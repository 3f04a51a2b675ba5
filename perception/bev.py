"""The bird's-eye-view grid every BEV feature map and kernel shares.

Cell (iy, ix) covers x in [x_min + ix*cell, x_min + (ix+1)*cell) and y in [y_min + iy*cell, ...) in the
ego frame; maps are stored (C, ny, nx), row = y index, column = x index. A point is inside the grid when
x_min <= x < x_max, y_min <= y < y_max and z_min <= z < z_max. Linear cell index = iy * nx + ix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BevGrid:
    """A square-celled BEV grid in the ego frame [m].

    Args:
        x_min, x_max, y_min, y_max: extent [m]; (x_max - x_min) / cell must be an integer (same for y).
        z_min, z_max: height band kept [m].
        cell: cell edge [m].
    """

    x_min: float = -51.2
    x_max: float = 51.2
    y_min: float = -51.2
    y_max: float = 51.2
    z_min: float = -3.0
    z_max: float = 5.0
    cell: float = 0.8

    def __post_init__(self) -> None:
        for lo, hi, axis in ((self.x_min, self.x_max, "x"), (self.y_min, self.y_max, "y")):
            n = (hi - lo) / self.cell
            if hi <= lo or abs(n - round(n)) > 1e-6:
                raise ValueError(f"BevGrid: {axis} extent [{lo}, {hi}] is not a whole number of {self.cell} m cells")
        if self.z_max <= self.z_min:
            raise ValueError(f"BevGrid: z_max {self.z_max} must exceed z_min {self.z_min}")

    @property
    def nx(self) -> int:
        return int(round((self.x_max - self.x_min) / self.cell))

    @property
    def ny(self) -> int:
        return int(round((self.y_max - self.y_min) / self.cell))

    @property
    def n_cells(self) -> int:
        return self.nx * self.ny

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(nx,) x and (ny,) y of the cell centres [m]."""
        return (self.x_min + (np.arange(self.nx) + 0.5) * self.cell,
                self.y_min + (np.arange(self.ny) + 0.5) * self.cell)

    def downsampled(self, factor: int) -> "BevGrid":
        """The same extent with cells ``factor`` times larger (the head's output grid)."""
        return BevGrid(self.x_min, self.x_max, self.y_min, self.y_max, self.z_min, self.z_max, self.cell * factor)


def _clip_convex(subject: list, clipper: list) -> list:
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex ``clipper``, both lists of
    (x, y) counter-clockwise. Plain floats: a few corners each, where numpy's per-call cost would dominate."""
    out = subject
    for i in range(len(clipper)):
        if not out:
            break
        (ax, ay), (bx, by) = clipper[i], clipper[(i + 1) % len(clipper)]
        side = [(bx - ax) * (py - ay) - (by - ay) * (px - ax) for px, py in out]  # >= 0: inside
        kept = []
        for k, (p, sp) in enumerate(zip(out, side)):
            q, sq = out[(k + 1) % len(out)], side[(k + 1) % len(out)]
            if sp >= 0:
                kept.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                kept.append((p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t))
        out = kept
    return out


def footprint_overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """How much of the smaller footprint two boxes share: intersection area over the smaller of the two
    ground footprint areas, in [0, 1], for ``box`` (7,) against each row of ``others`` (N, 7) (x y z length
    width height yaw). Two vehicles cannot overlap on the ground, so a large value means two detections of
    one object."""
    from calibration.importers import box_corners  # here: the module costs 0.1 s to import

    out = np.zeros(len(others))
    reach = 0.5 * np.hypot(box[3], box[4]) + 0.5 * np.hypot(others[:, 3], others[:, 4])
    near = np.flatnonzero(np.hypot(others[:, 0] - box[0], others[:, 1] - box[1]) < reach)
    if not len(near):
        return out
    # bottom faces, reversed: box_corners runs them clockwise seen from above
    feet = box_corners(np.vstack([box[None, :7], others[near, :7]]))[:, 3::-1, :2].tolist()
    area_a = float(box[3]) * float(box[4])
    for j, foot in zip(near.tolist(), feet[1:]):
        inter = _clip_convex(feet[0], foot)
        if len(inter) < 3:
            continue
        area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(inter, inter[1:] + inter[:1])))
        smaller = min(area_a, float(others[j, 3]) * float(others[j, 4]))
        out[j] = min(1.0, area / smaller) if smaller > 0 else 0.0
    return out
