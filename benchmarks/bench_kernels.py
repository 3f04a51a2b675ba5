"""Speed of the detection kernels (numba) against their numpy references, measured in the same run.

- bev_pool: 2 cameras of the simulated rig (``default_rig(2)``, 640x360), feature map h=22 x w=40
  (stride 16), D=48 depth bins from 1 to 48 m, C=32 channels, on ``BevGrid()`` (128 x 128 cells);
  the frustum -> cell table comes from the real camera geometry; depth is a softmax over bins.
  Rows: ``bev_pool`` (no precomputation), ``BevPoolPlan`` (frustum sorted once; plan build time printed
  separately), reference ``bev_pool_reference``.
- heatmap_peaks: 4 x 128 x 128 heatmap of Gaussian blobs (200 objects) on low noise, threshold 0.1,
  top_k 500; reference ``heatmap_peaks_reference``.
- circle_nms: 500 boxes (clusters of duplicates around 150 centres, 4 classes); reference
  ``circle_nms_reference``.
Each row: median over ``--runs`` calls after one warm-up; ratio = reference median / row median. Every
numba result is checked equal to its reference in the same run.

    .venv/bin/python benchmarks/bench_kernels.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from drivers.sim import default_rig
from perception.bev import BevGrid
from perception.kernels import (
    BevPoolPlan,
    bev_pool,
    bev_pool_reference,
    circle_nms,
    circle_nms_reference,
    heatmap_peaks,
    heatmap_peaks_reference,
)


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def frustum_cells(grid: BevGrid, n_cameras: int, depth_bins: np.ndarray, h: int, w: int) -> np.ndarray:
    """(Ncam, D, h, w) int64 BEV cell of each frustum point (pixel centre at a stride of image/w, depth bin
    centre along the optical axis) of the simulated rig's cameras; -1 outside the grid (x, y or z)."""
    rig = default_rig(n_cameras)
    out = np.empty((n_cameras, len(depth_bins), h, w), np.int64)
    for n, sensor in enumerate(rig.of_kind("camera")):
        cam = sensor.camera
        v, u = np.meshgrid((np.arange(h) + 0.5) * cam.height / h, (np.arange(w) + 0.5) * cam.width / w, indexing="ij")
        rays = cam.unproject(np.stack([u.ravel(), v.ravel()], axis=1))  # (h*w, 3), z = 1
        pts = depth_bins[:, None, None] * rays[None]  # (D, h*w, 3) optical frame
        ego = sensor.ego_from_sensor.apply(pts.reshape(-1, 3)).reshape(len(depth_bins), h * w, 3)
        ix = np.floor((ego[..., 0] - grid.x_min) / grid.cell)
        iy = np.floor((ego[..., 1] - grid.y_min) / grid.cell)
        ok = ((ix >= 0) & (ix < grid.nx) & (iy >= 0) & (iy < grid.ny)
              & (ego[..., 2] >= grid.z_min) & (ego[..., 2] < grid.z_max))
        out[n] = np.where(ok, iy * grid.nx + ix, -1).astype(np.int64).reshape(len(depth_bins), h, w)
    return out


def heatmap(rng: np.random.Generator, k: int, size: int, n_objects: int) -> np.ndarray:
    heat = rng.uniform(0, 0.05, (k, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n_objects):
        c, cy, cx = rng.integers(k), rng.uniform(0, size), rng.uniform(0, size)
        sigma, peak = rng.uniform(0.8, 2.5), rng.uniform(0.2, 1.0)
        heat[c] = np.maximum(heat[c], peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)))
    return heat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    grid = BevGrid()
    rows: list[tuple[str, str, float, float, bool]] = []  # kernel, implementation, ms, reference ms, equal

    # ---- bev_pool
    ncam, nd, nc, h, w = 2, 48, 32, 22, 40
    cells = frustum_cells(grid, ncam, np.arange(1, nd + 1, dtype=np.float64), h, w)
    logits = rng.normal(0, 2, (ncam, nd, h, w))
    depth = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    feats = rng.normal(0, 1, (ncam, nc, h, w)).astype(np.float32)
    out_ref, out_a, out_b = (np.empty((nc, grid.n_cells), np.float32) for _ in range(3))
    ref_ms = median_ms(lambda: bev_pool_reference(depth, feats, cells, out_ref), args.runs)
    BevPoolPlan(cells, grid.n_cells)  # warm-up (compilation)
    t0 = time.perf_counter()
    plan = BevPoolPlan(cells, grid.n_cells)
    plan_ms = 1e3 * (time.perf_counter() - t0)
    rows.append(("bev_pool", "bev_pool (numba)", median_ms(lambda: bev_pool(depth, feats, cells, out_a), args.runs),
                 ref_ms, False))
    rows.append(("bev_pool", "BevPoolPlan (numba)", median_ms(lambda: plan(depth, feats, out_b), args.runs), ref_ms,
                 False))
    same = np.array_equal(out_a, out_ref) and np.array_equal(out_b, out_ref)
    rows[-2:] = [r[:4] + (same,) for r in rows[-2:]]
    rows.append(("bev_pool", "bev_pool_reference", ref_ms, ref_ms, True))
    valid = int((cells >= 0).sum())

    # ---- heatmap_peaks
    heat = heatmap(rng, 4, 128, 200)
    ref_ms = median_ms(lambda: heatmap_peaks_reference(heat, 0.1, 500), args.runs)
    ours_ms = median_ms(lambda: heatmap_peaks(heat, 0.1, 500), args.runs)
    a, b = heatmap_peaks(heat, 0.1, 500), heatmap_peaks_reference(heat, 0.1, 500)
    rows.append(("heatmap_peaks", "heatmap_peaks (numba)", ours_ms, ref_ms,
                 all(np.array_equal(x, y) for x, y in zip(a, b))))
    rows.append(("heatmap_peaks", "heatmap_peaks_reference", ref_ms, ref_ms, True))
    n_peaks = len(a[0])

    # ---- circle_nms
    centres = rng.uniform(-50, 50, (150, 2))
    pick = rng.integers(0, 150, 500)
    xy = (centres[pick] + rng.normal(0, 0.6, (500, 2))).astype(np.float32)
    labels = (pick % 4).astype(np.int32)
    scores = rng.uniform(0.05, 1, 500).astype(np.float32)
    radius = np.array([4.0, 6.0, 0.5, 0.85], np.float32)
    ref_ms = median_ms(lambda: circle_nms_reference(xy, scores, labels, radius), args.runs)
    ours_ms = median_ms(lambda: circle_nms(xy, scores, labels, radius), args.runs)
    keep = circle_nms(xy, scores, labels, radius)
    rows.append(("circle_nms", "circle_nms (numba)", ours_ms, ref_ms,
                 np.array_equal(keep, circle_nms_reference(xy, scores, labels, radius))))
    rows.append(("circle_nms", "circle_nms_reference", ref_ms, ref_ms, True))

    print(f"medians over {args.runs} runs; ratio = numpy reference / this row")
    print(f"{'kernel':<14} {'implementation':<26} {'median ms':>10} {'ref/this':>9}  equal to reference")
    for kernel, impl, ms, rms, eq in rows:
        print(f"{kernel:<14} {impl:<26} {ms:>10.3f} {rms / ms:>8.1f}x  {eq}")
    print(f"bev_pool: {ncam}x{nd}x{h}x{w} frustum points, {valid} inside the grid, C={nc}; BevPoolPlan build "
          f"{plan_ms:.1f} ms once")
    print(f"heatmap_peaks: {n_peaks} peaks returned; circle_nms: kept {len(keep)} of {len(xy)} boxes")


if __name__ == "__main__":
    main()
