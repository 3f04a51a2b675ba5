"""The numba kernels agree bit for bit with their numpy references, on random and adversarial inputs, and
pillarization produces the same voxel set as spconv's PointToVoxel."""

from __future__ import annotations

import numpy as np
import pytest

from perception.bev import BevGrid
from perception.kernels import (
    BevPoolPlan,
    Pillarizer,
    bev_pool,
    bev_pool_reference,
    circle_nms,
    circle_nms_reference,
    heatmap_peaks,
    heatmap_peaks_reference,
    pillarize,
    pillarize_reference,
)

SMALL = BevGrid(x_min=-4.0, x_max=4.0, y_min=-4.0, y_max=4.0, z_min=-1.0, z_max=2.0, cell=1.0)  # 8 x 8 cells


# ------------------------------------------------------------------------------------------- pillarize
def buffers(p: int, m: int, c: int, fill: float = 0.0):
    return (np.full((p, m, c + 5), fill, np.float32), np.full(p, 12345, np.int64), np.full(p, 777, np.int32))


def run_all(points: np.ndarray, grid: BevGrid, p: int, m: int):
    """(n, features, index, npoints) from pillarize (into a garbage-filled buffer), the reference and a fresh
    Pillarizer; asserts all three agree exactly and returns the reference's."""
    c = points.shape[1]
    ours, ref = buffers(p, m, c, fill=7.0), buffers(p, m, c, fill=-3.0)
    n = pillarize(points, grid, *ours)
    n_ref = pillarize_reference(points, grid, *ref)
    pz = Pillarizer(grid, c, p, m)
    n_pz = pz(points)
    assert n == n_ref == n_pz
    for a, b, d in zip(ours, ref, (pz.features, pz.index, pz.npoints)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(d, b)
    return (n, *ref)


def random_cloud(rng: np.random.Generator, n: int, c: int, grid: BevGrid, margin: float = 1.5) -> np.ndarray:
    pts = np.empty((n, c), np.float32)
    pts[:, 0] = rng.uniform(grid.x_min - margin, grid.x_max + margin, n)
    pts[:, 1] = rng.uniform(grid.y_min - margin, grid.y_max + margin, n)
    pts[:, 2] = rng.uniform(grid.z_min - margin, grid.z_max + margin, n)
    pts[:, 3:] = rng.normal(0, 1, (n, c - 3))
    return pts


@pytest.mark.parametrize("seed, n, c, p, m", [(0, 500, 5, 64, 8), (1, 3000, 7, 40, 4), (2, 50, 4, 100, 32),
                                              (3, 2000, 3, 64, 64), (4, 1500, 9, 64, 16), (5, 4100, 5, 64, 8)])
def test_pillarize_matches_reference_on_random_clouds(seed, n, c, p, m):
    rng = np.random.default_rng(seed)
    pts = random_cloud(rng, n, c, SMALL)
    # Clustered duplicates make some pillars overflow M.
    pts = np.concatenate([pts, np.repeat(pts[:5], 12, axis=0)])
    rng.shuffle(pts)
    n_p, _, index, npoints = run_all(pts, SMALL, p, m)
    assert n_p > 0
    assert (npoints[:n_p] >= 1).all() and (npoints[:n_p] <= m).all()
    assert (index[n_p:] == SMALL.n_cells).all() and (npoints[n_p:] == 0).all()


def test_pillarize_hand_checked_example():
    grid = BevGrid(x_min=0.0, x_max=2.0, y_min=0.0, y_max=2.0, z_min=0.0, z_max=4.0, cell=1.0)  # 2 x 2 cells
    pts = np.array([[1.5, 0.5, 1.0, 0.1],    # cell (iy 0, ix 1) -> linear 1, first pillar
                    [0.25, 1.75, 2.0, 0.2],  # cell (1, 0) -> linear 2, second pillar
                    [1.0, 0.0, 3.0, 0.3],    # cell 1 again (edges belong to the upper cell)
                    [5.0, 0.5, 1.0, 0.4],    # x outside: dropped
                    [1.2, 0.2, 4.0, 0.5]],   # z == z_max: dropped
                   np.float32)
    n, feats, index, npoints = run_all(pts, grid, 3, 2)
    assert n == 2
    np.testing.assert_array_equal(index, [1, 2, grid.n_cells])
    np.testing.assert_array_equal(npoints, [2, 1, 0])
    # Pillar 0: points 0 and 2, mean (1.25, 0.25, 2.0), cell centre (1.5, 0.5).
    np.testing.assert_array_equal(feats[0, 0], np.float32([1.5, 0.5, 1.0, 0.1, 0.25, 0.25, -1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(feats[0, 1], np.float32([1.0, 0.0, 3.0, 0.3, -0.25, -0.25, 1.0, -0.5, -0.5]))
    # Pillar 1: one point, its own mean; cell centre (0.5, 1.5).
    np.testing.assert_array_equal(feats[1, 0], np.float32([0.25, 1.75, 2.0, 0.2, 0, 0, 0, -0.25, 0.25]))
    assert not feats[1, 1].any() and not feats[2].any()


def test_pillarize_empty_input_gives_zero_pillars():
    n, feats, index, npoints = run_all(np.zeros((0, 5), np.float32), SMALL, 8, 4)
    assert n == 0
    assert not feats.any() and (index == SMALL.n_cells).all() and not npoints.any()


def test_pillar_with_more_than_m_points_keeps_the_first_m():
    rng = np.random.default_rng(4)
    pts = np.column_stack([rng.uniform(0.01, 0.99, 50), rng.uniform(0.01, 0.99, 50), rng.uniform(0, 1, 50),
                           np.arange(50)]).astype(np.float32)
    n, feats, index, npoints = run_all(pts, SMALL, 4, 16)
    assert n == 1 and npoints[0] == 16
    assert index[0] == 4 * SMALL.nx + 4  # x, y in [0, 1): ix = iy = 4
    np.testing.assert_array_equal(feats[0, :, 3], np.arange(16, dtype=np.float32))  # first 16 in input order
    np.testing.assert_allclose(feats[0, :, 4:7].mean(axis=0), 0.0, atol=1e-6)  # mean over the KEPT points


@pytest.mark.parametrize("n, c", [(1, 5), (16, 5), (17, 5), (48, 5), (37, 5), (64, 3), (30, 8), (20, 9)])
def test_every_row_is_copied_whole_up_to_the_last_one(n, c):
    # One point per cell, so every row is kept, the last one included (whose copy must not read past the
    # input); LiDAR rows in whole groups of 16 and in the rest, other widths narrower and wider than 8.
    cells = np.random.default_rng(n).permutation(SMALL.n_cells)[:n]
    pts = np.zeros((n, c), np.float32)
    pts[:, 0] = SMALL.x_min + (cells % SMALL.nx) + 0.25
    pts[:, 1] = SMALL.y_min + (cells // SMALL.nx) + 0.75
    pts[:, 2] = 0.5
    pts[:, 3:] = np.arange(n * (c - 3), dtype=np.float32).reshape(n, c - 3) + 1
    got, feats, index, npoints = run_all(pts, SMALL, 64, 2)
    assert got == n
    np.testing.assert_array_equal(index[:n], cells)
    np.testing.assert_array_equal(feats[:n, 0, :c], pts)
    np.testing.assert_array_equal(feats[:n, 0, c:c + 3], 0.0)                    # its own mean
    np.testing.assert_array_equal(feats[:n, 0, c + 3:], np.tile([-0.25, 0.25], (n, 1)).astype(np.float32))
    assert (feats[:n, 1] == 0).all() and (feats[n:] == 0).all()


def test_more_cells_than_p_keeps_pillars_in_order_of_first_appearance():
    # One point per cell, in a shuffled cell order, then a second point for every cell.
    rng = np.random.default_rng(5)
    cells = rng.permutation(SMALL.n_cells)
    xy = np.column_stack([SMALL.x_min + (cells % SMALL.nx) + 0.5, SMALL.y_min + (cells // SMALL.nx) + 0.5])
    pts = np.concatenate([xy, xy[::-1] + 0.25]).astype(np.float32)
    pts = np.column_stack([pts, np.zeros(len(pts), np.float32)])
    n, _, index, npoints = run_all(pts, SMALL, 10, 4)
    assert n == 10
    np.testing.assert_array_equal(index, cells[:10])
    np.testing.assert_array_equal(npoints, 2)


def test_points_on_grid_boundaries_follow_the_float32_cell_rule():
    grid = BevGrid()
    edges_x = np.float32(grid.x_min + np.arange(grid.nx + 1) * grid.cell)
    around = np.concatenate([edges_x, np.nextafter(edges_x, np.float32(-np.inf)),
                             np.nextafter(edges_x, np.float32(np.inf))])
    rng = np.random.default_rng(6)
    n = len(around)
    pts = np.column_stack([around, rng.permutation(around), rng.uniform(-2, 4, n),
                           rng.uniform(0, 1, n)]).astype(np.float32)
    z_edges = np.float32([grid.z_min, grid.z_max, np.nextafter(np.float32(grid.z_max), np.float32(-np.inf)),
                          np.nextafter(np.float32(grid.z_min), np.float32(-np.inf))])
    pts_z = np.column_stack([np.zeros(4), np.zeros(4), z_edges, np.zeros(4)]).astype(np.float32)
    corners = np.float32([[grid.x_min, grid.y_min, 0, 0], [grid.x_max, grid.y_min, 0, 0],
                          [grid.x_min, grid.y_max, 0, 0], [grid.x_max - 1e-4, grid.y_max - 1e-4, 0, 0]])
    pts = np.concatenate([pts, pts_z, corners])
    n_p, feats, index, npoints = run_all(pts, grid, 2 * grid.nx * grid.ny, 8)
    # The lower corner is in cell 0, the top-right inside corner in the last cell; z_max and x_max are out.
    assert 0 in index[:n_p] and grid.n_cells - 1 in index[:n_p]
    kept_z = feats[:n_p, :, 2][np.arange(8)[None] < npoints[:n_p, None]]
    assert np.float32(grid.z_min) in kept_z and np.float32(grid.z_max) not in kept_z
    kept_x = feats[:n_p, :, 0][np.arange(8)[None] < npoints[:n_p, None]]
    assert np.float32(grid.x_max) not in kept_x and np.float32(grid.x_min) in kept_x


def test_nan_and_inf_points_are_dropped():
    rng = np.random.default_rng(7)
    pts = random_cloud(rng, 200, 5, SMALL, margin=0.0)
    bad = pts[:40].copy()
    bad[:10, 0] = np.nan
    bad[10:20, 1] = np.nan
    bad[20:30, 2] = np.nan
    bad[30:35, 0] = np.inf
    bad[35:40, 1] = -np.inf
    clean = run_all(pts, SMALL, 64, 16)
    mixed = run_all(np.concatenate([bad, pts]), SMALL, 64, 16)
    for a, b in zip(clean, mixed):
        np.testing.assert_array_equal(a, b)
    # A NaN feature column on a valid point is carried through, not a reason to drop it.
    pts[0, 3] = np.nan
    n, feats, _, npoints = run_all(pts, SMALL, 64, 16)
    assert np.isnan(feats[:n, :, 3]).sum() == 1 and npoints.sum() == clean[3].sum()


def test_pillarizer_reused_on_a_smaller_cloud_clears_the_old_rows():
    rng = np.random.default_rng(8)
    pz = Pillarizer(SMALL, 5, 32, 8)
    big, small = random_cloud(rng, 1500, 5, SMALL), random_cloud(rng, 30, 5, SMALL)
    for cloud in (big, small, big[:400], np.zeros((0, 5), np.float32), small):
        n = pz(cloud)
        ref = buffers(32, 8, 5)
        assert n == pillarize_reference(cloud, SMALL, *ref)
        for a, b in zip((pz.features, pz.index, pz.npoints), ref):
            np.testing.assert_array_equal(a, b)


def test_pillarizer_with_dirty_scratch_raises_and_writes_nothing():
    # What a second thread calling the same instance mid-call would leave: the kernel refuses to run on it.
    rng = np.random.default_rng(10)
    pz = Pillarizer(SMALL, 5, 32, 8)
    cloud = random_cloud(rng, 300, 5, SMALL)
    pz(cloud)
    before = (pz.features.copy(), pz.index.copy(), pz.npoints.copy())
    pz._cell_count[5] = 1
    with pytest.raises(RuntimeError, match="not clear"):
        pz(cloud[:50])
    for a, b in zip((pz.features, pz.index, pz.npoints), before):
        np.testing.assert_array_equal(a, b)


def test_pillarize_rejects_wrong_dtypes_and_shapes():
    pts = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="points"):
        pillarize(pts.astype(np.float64), SMALL, *buffers(4, 2, 5))
    with pytest.raises(ValueError, match="out_features"):
        pillarize(pts, SMALL, *buffers(4, 2, 4))
    f, i, c = buffers(4, 2, 5)
    with pytest.raises(ValueError, match="out_npoints"):
        pillarize(pts, SMALL, f, i, c.astype(np.int64))
    with pytest.raises(ValueError, match="4-column"):
        Pillarizer(SMALL, 4, 4, 2)(pts)


def test_pillarize_voxel_set_equals_spconv_point_to_voxel():
    try:
        import torch
        from spconv.pytorch.utils import PointToVoxel
    except Exception as e:  # noqa: BLE001 - any import failure: spconv unusable here
        pytest.skip(f"spconv not importable: {type(e).__name__}: {e}")
    grid = BevGrid()
    rng = np.random.default_rng(9)
    pts = random_cloud(rng, 6000, 5, grid, margin=5.0)
    # Dense spots (M overflow), boundary values and NaNs.
    edges = np.float32(grid.x_min + np.arange(grid.nx + 1) * grid.cell)
    edge_pts = np.column_stack([edges, edges[::-1], np.zeros_like(edges), np.ones_like(edges),
                                np.ones_like(edges)]).astype(np.float32)
    nan_pts = np.full((3, 5), np.nan, np.float32)
    pts = np.concatenate([pts, np.repeat(pts[:3], 20, axis=0), edge_pts, nan_pts])
    rng.shuffle(pts)
    for p, m in ((20000, 8), (500, 4)):  # everything fits / P overflows
        ours = buffers(p, m, 5)
        n = pillarize(pts, grid, *ours)
        gen = PointToVoxel(vsize_xyz=[grid.cell, grid.cell, grid.z_max - grid.z_min],
                           coors_range_xyz=[grid.x_min, grid.y_min, grid.z_min, grid.x_max, grid.y_max, grid.z_max],
                           num_point_features=5, max_num_voxels=p, max_num_points_per_voxel=m)
        vox, coors, npv = (t.numpy() for t in gen(torch.from_numpy(pts)))
        assert len(vox) == n
        assert (coors[:, 0] == 0).all()
        np.testing.assert_array_equal(coors[:, 1].astype(np.int64) * grid.nx + coors[:, 2], ours[1][:n])
        np.testing.assert_array_equal(npv, ours[2][:n])
        np.testing.assert_array_equal(vox, ours[0][:n, :, :5])


# ------------------------------------------------------------------------------------------- bev_pool
def random_frustum(rng: np.random.Generator, ncam=2, nd=5, nc=3, h=4, w=6, n_cells=20, outside=0.3):
    depth = rng.uniform(0, 1, (ncam, nd, h, w)).astype(np.float32)
    feats = rng.normal(0, 1, (ncam, nc, h, w)).astype(np.float32)
    cells = rng.integers(0, n_cells, (ncam, nd, h, w)).astype(np.int64)
    cells[rng.uniform(0, 1, cells.shape) < outside] = -1
    return depth, feats, cells


@pytest.mark.parametrize("seed, n_cells, outside", [(0, 20, 0.3), (1, 3, 0.0), (2, 500, 0.5), (3, 7, 1.0)])
def test_bev_pool_and_plan_match_reference(seed, n_cells, outside):
    rng = np.random.default_rng(seed)
    depth, feats, cells = random_frustum(rng, n_cells=n_cells, outside=outside)
    outs = [np.full((feats.shape[1], n_cells), 9.0, np.float32) for _ in range(3)]
    bev_pool_reference(depth, feats, cells, outs[0])
    bev_pool(depth, feats, cells, outs[1])
    plan = BevPoolPlan(cells, n_cells)
    plan(depth, feats, outs[2])
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])
    # A second frame through the same plan.
    depth2, feats2, _ = random_frustum(rng, n_cells=n_cells)
    bev_pool_reference(depth2, feats2, cells, outs[0])
    plan(depth2, feats2, outs[2])
    np.testing.assert_array_equal(outs[2], outs[0])
    if outside == 1.0:
        assert not outs[0].any()


def test_bev_pool_hand_checked_example():
    depth = np.array([[[[0.5, 0.25]], [[1.0, 2.0]]]], np.float32)  # (1 cam, D=2, h=1, w=2)
    feats = np.array([[[[2.0, 4.0]], [[1.0, -1.0]]]], np.float32)  # (1 cam, C=2, h=1, w=2)
    cells = np.array([[[[3, 3]], [[-1, 0]]]], np.int64)
    out = np.full((2, 4), 5.0, np.float32)
    bev_pool(depth, feats, cells, out)
    # cell 3: 0.5*f[x=0] + 0.25*f[x=1]; cell 0: 2.0*f[x=1]; (d=1, x=0) is outside.
    np.testing.assert_array_equal(out, np.float32([[8.0, 0, 0, 2.0], [-2.0, 0, 0, 0.25]]))


def test_bev_pool_rejects_out_of_range_cells_and_mismatched_shapes():
    rng = np.random.default_rng(10)
    depth, feats, cells = random_frustum(rng, n_cells=20)
    out = np.zeros((feats.shape[1], 20), np.float32)
    bad = cells.copy()
    bad[0, 0, 0, 0] = 20
    bad[0, 0, 0, 1] = -2
    for fn in (bev_pool, bev_pool_reference):
        with pytest.raises(ValueError, match="2 cell_index values outside"):
            fn(depth, feats, bad, out)
    with pytest.raises(ValueError, match="outside"):
        BevPoolPlan(bad, 20)
    with pytest.raises(ValueError, match="feats"):
        bev_pool(depth, feats[:, :, :2], cells, out)
    with pytest.raises(ValueError, match="out"):
        BevPoolPlan(cells, 20)(depth, feats, np.zeros((feats.shape[1], 21), np.float32))


# ------------------------------------------------------------------------------------------- heatmap peaks
def assert_peaks_equal(heat, threshold, top_k):
    ours = heatmap_peaks(heat, threshold, top_k)
    ref = heatmap_peaks_reference(heat, threshold, top_k)
    for a, b, dt in zip(ours, ref, (np.int32, np.int32, np.int32, np.float32)):
        assert a.dtype == dt and b.dtype == dt
        np.testing.assert_array_equal(a, b)
    return ref


@pytest.mark.parametrize("seed, shape, threshold, top_k", [(0, (3, 17, 23), 0.5, 1000), (1, (2, 9, 9), 0.0, 5),
                                                            (2, (1, 1, 1), 0.1, 3), (3, (4, 32, 32), 0.9, 10)])
def test_heatmap_peaks_match_reference_on_random_heatmaps(seed, shape, threshold, top_k):
    heat = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    scores = assert_peaks_equal(heat, threshold, top_k)[3]
    assert len(scores) <= top_k and (scores >= threshold).all() and (np.diff(scores) <= 0).all()


def test_heatmap_peak_ties_and_plateaus_sort_by_label_then_row_then_column():
    heat = np.zeros((2, 4, 5), np.float32)
    heat[1, 0, 0] = heat[0, 3, 4] = heat[0, 0, 4] = 0.7  # three isolated equal peaks
    heat[1, 2, 1:3] = 0.9  # a two-cell plateau: both cells are peaks
    labels, iy, ix, scores = assert_peaks_equal(heat, 0.5, 10)
    np.testing.assert_array_equal(labels, [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(iy, [2, 2, 0, 3, 0])
    np.testing.assert_array_equal(ix, [1, 2, 4, 4, 0])
    np.testing.assert_array_equal(scores, np.float32([0.9, 0.9, 0.7, 0.7, 0.7]))
    # top_k cuts the sorted list; a constant map is one big plateau (every cell a peak).
    assert len(assert_peaks_equal(heat, 0.5, 3)[0]) == 3
    assert len(assert_peaks_equal(np.full((2, 3, 3), 0.5, np.float32), 0.5, 100)[0]) == 18
    assert len(assert_peaks_equal(heat, 0.5, 0)[0]) == 0


def test_heatmap_peaks_nan_cells_and_neighbours_are_not_peaks():
    heat = np.zeros((1, 5, 5), np.float32)
    heat[0, 1, 1] = 0.8
    heat[0, 1, 2] = np.nan  # neighbour of the 0.8 peak
    heat[0, 4, 4] = 0.6
    _, iy, ix, _ = assert_peaks_equal(heat, 0.5, 10)
    np.testing.assert_array_equal(iy, [4])
    np.testing.assert_array_equal(ix, [4])


# ------------------------------------------------------------------------------------------- circle NMS
@pytest.mark.parametrize("seed, n", [(0, 200), (1, 1), (2, 60)])
def test_circle_nms_matches_reference_on_random_boxes(seed, n):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-10, 10, (n, 2)).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)  # many ties
    labels = rng.integers(0, 3, n).astype(np.int32)
    radius = np.array([2.0, 0.0, 4.0], np.float32)
    keep = circle_nms(xy, scores, labels, radius)
    np.testing.assert_array_equal(keep, circle_nms_reference(xy, scores, labels, radius))
    assert keep.dtype == np.int64
    # Class 1 has radius 0: none of its boxes is suppressed; kept boxes of a class are >= its radius apart.
    assert set(np.flatnonzero(labels == 1)) <= set(keep.tolist())
    for cls, r in enumerate(radius):
        k = keep[labels[keep] == cls]
        d = np.linalg.norm(xy[k][:, None] - xy[k][None], axis=-1) + np.eye(len(k)) * 1e9
        assert r <= 0 or (d >= r * 0.999).all()


def test_circle_nms_hand_checked_example():
    xy = np.float32([[0, 0], [1, 0], [5, 0], [0.5, 0], [1, 0]])
    scores = np.float32([0.5, 0.9, 0.9, 0.3, 0.8])
    labels = np.int32([0, 0, 0, 0, 1])
    keep = circle_nms(xy, scores, labels, np.float32([1.5, 1.0]))
    # Order: 1 (0.9), 2 (0.9, tie -> index), 4 (other class), 0 (1 m from box 1: suppressed), 3 (suppressed).
    np.testing.assert_array_equal(keep, [1, 2, 4])
    np.testing.assert_array_equal(keep, circle_nms_reference(xy, scores, labels, np.float32([1.5, 1.0])))
    # Exactly at the radius is not "closer than": kept.
    np.testing.assert_array_equal(circle_nms(np.float32([[0, 0], [2, 0]]), np.float32([1, 0.5]), np.int32([0, 0]),
                                             np.float32([2.0])), [0, 1])


def test_circle_nms_empty_input_and_bad_labels():
    empty = circle_nms(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                       np.float32([1.0]))
    assert empty.shape == (0,) and empty.dtype == np.int64
    with pytest.raises(ValueError, match="labels"):
        circle_nms(np.zeros((1, 2), np.float32), np.ones(1, np.float32), np.int32([3]), np.float32([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        circle_nms(np.zeros((1, 2), np.float32), np.float32([np.nan]), np.int32([0]), np.float32([1.0]))
