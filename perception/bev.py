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
