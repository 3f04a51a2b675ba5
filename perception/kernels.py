"""The hot kernels of the detection pipeline: pillarization, lift-splat BEV pooling, heatmap peaks, circle NMS.

Every kernel is a numba function compiled with ``nogil=True`` (the pipeline may run stages on threads) and
``cache=True``, behind a thin Python wrapper that checks shapes and dtypes and raises ``ValueError`` naming
the argument that is wrong. Each has a plain-numpy ``*_reference`` twin with the same signature; the tests
require the two to agree bit for bit, so both follow the same arithmetic (same float32 operations, same
float64 accumulation order).

Grid convention (:class:`perception.bev.BevGrid`): linear cell index ``iy * nx + ix``; BEV maps are
``(C, ny, nx)``. A point's cell is found exactly as spconv's ``PointToVoxel`` finds it, in float32:
``ix = floor((x - x_min) / cell)``, ``iy = floor((y - y_min) / cell)`` and one z slab
``floor((z - z_min) / (z_max - z_min))``; the point is kept when ``0 <= ix < nx``, ``0 <= iy < ny`` and the
z slab is 0. Written as ``q >= 0 and q < n`` on the float quotient, so NaN and inf coordinates are dropped.

Speed notes:
- Pillarization is one pass over the points and one over the pillars. The point pass takes LiDAR rows in
  groups of ``PILLAR_GROUP``: x y z are copied out of the rows so the cells of a group are found in one
  branch-free vector; then each point gets its slot from a per-cell count and its pillar (numbered by first
  appearance) from a per-cell table, both reset only at the touched cells, and a kept point's row is
  copied straight to its slot. The cells of group g + 1 are found just before the slots of group g, in
  the same loop, so the divisions run while the core waits on the count loads and recovers from the
  mispredicted branch on a full pillar. Against finding the cells of 1024 points in one loop and then
  giving them their slots in the next, that took 2-14 % off the kernel on new frames at 6000 x 16 (it
  varies with where the buffers land) and 11-18 % at the other limits. Rows of other widths, and the last
  LiDAR rows, go point by point. The pillar pass sums each pillar's mean in float64 from the rows it holds
  (in point order) and writes the decorations.
  A fixed (P, M, C+5) output is mostly empty (most pillars hold far fewer than M points), so clearing it
  would dominate: spconv's PointToVoxel clears its whole buffer on every call. :class:`Pillarizer` owns
  its output buffers and, knowing what its previous call wrote, clears only the rows that call filled and
  this one does not. The plain :func:`pillarize` writes into any caller buffer and so clears all of it.
  The decorations stay here rather than in the network: computed in the BEV graph from the raw rows (as
  mmdetection3d's PillarFeatureNet does), they cost ONNX Runtime about 8 ms a frame on 2 CPU cores
  (broadcast subtractions, slices and concatenations over the (6000, 16, C) tensor), against about 0.1 ms
  here.
- Row traffic goes through three small LLVM-IR helpers (``_xyz16``, ``_copy8``, ``_decorate``), because
  numba compiles every row access to one scalar load or store per float: x y z of 16 LiDAR rows with five
  loads and a few permutes (the strided copy was a sixth of the kernel), a kept row with one 8-float move
  instead of five, the five decorations with two stores. Together, on new frames of 120k points, about a
  fifth off the kernel at 6000 x 16 (0.74 -> 0.59 ms in one run) and a quarter at M = 128 and 512; the
  numba-only versions of the same loops with flat unsigned indices took back less than half of that.
- Measured no faster on consecutive different frames (the pipeline's case; "block": 1024 points, as the
  point pass went before the groups): branch-free slot assignment (into per-cell or per-pillar tables with a
  spare slot for dropped points), listing each block's kept points without a branch and copying their rows
  in a second loop, listing the points whose pillar was not yet full at the start of the block first (a
  quarter slower), ranking every point within its cell in one branch-free loop and handling only the ranks
  below M in a second (7 % slower), a point pass in its own function (numba's reference counting around
  array arguments, and the code changes: 15-35 % slower), noting input row numbers in pass 1 to
  gather the rows in pass 2, 8- and 16-bit count tables, a bit per full cell, count and pillar packed in one
  table (16 % slower), summing the means in the point pass (scalar or as a 4-double vector: up to 5 %
  slower), a vector float64 sum in the pillar pass (within noise at M = 16, slower at M = 512), the z-slab test
  as two float32 bounds or a multiplication instead of the division (within noise), output buffers on huge
  pages. Two threads (a ``parallel=True`` kernel finding the cells of each half of the points, then the
  serial slot pass, then each half of the pillars) take a quarter off in the benchmark, but only while
  OpenMP's idle worker spins (about 7 ms after every call); with passive waiting the wake-ups cost what the
  second core saves. In realtime replay the spinning version's stage p95 went from 1.5-2 ms to 7-9 ms (p99
  11 ms): now and then a call waits milliseconds for the worker thread.
- The point pass's branch on whether the point's pillar is full mispredicts about once per change from kept
  to dropped points or back (~19k a frame); the branch predictor learns it for a repeated input. With the
  cell vectors interleaved, a new simulated frame takes as long as the same frame again and a new KITTI scan
  a tenth to a fifth longer (before: a sixth and a third). Without the branch (every point stores its
  cell's count) the loop is slower either way, because points in a row that share a cell wait for each
  other's store. Sixteen points at a time with AVX-512
  (gather the counts, rank equal cells with a conflict test, scatter, compress the kept ones), written in C
  for the measurement: no better (gather and scatter cost what the branch did).
- BEV pooling sorts the frustum points by cell (a stable counting sort), sums each occupied cell's points
  in float64 and writes the output row by row. :class:`BevPoolPlan` does the sort once for a static rig.
- Measured by ``benchmarks/bench_pillarize.py`` and ``benchmarks/bench_kernels.py``.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from perception.bev import BevGrid

N_DERIVED = 5  # x - mean_x, y - mean_y, z - mean_z, x - cell_center_x, y - cell_center_y


# ============================================================================================ pillarize
def _grid_scalars(grid: BevGrid) -> tuple:
    """float32 grid constants shared by the numba kernel and the numpy reference (same rounding in both)."""
    cx, cy = grid.cell_centers()
    return (np.float32(grid.x_min), np.float32(grid.y_min), np.float32(grid.z_min), np.float32(grid.cell),
            np.float32(grid.z_max - grid.z_min), grid.nx, grid.ny,
            cx.astype(np.float32), cy.astype(np.float32))


def _check_pillar_buffers(where: str, points: np.ndarray, grid: BevGrid, out_features: np.ndarray,
                          out_index: np.ndarray, out_npoints: np.ndarray) -> None:
    if not isinstance(grid, BevGrid):
        raise ValueError(f"{where}: grid must be a BevGrid, got {type(grid).__name__}")
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] < 3 or points.dtype != np.float32:
        raise ValueError(f"{where}: points must be (N, C>=3) float32 (x y z [m] then features), got "
                         f"{getattr(points, 'shape', None)} {getattr(points, 'dtype', type(points).__name__)}")
    c = points.shape[1]
    if (not isinstance(out_features, np.ndarray) or out_features.ndim != 3 or out_features.dtype != np.float32
            or out_features.shape[2] != c + N_DERIVED or not out_features.flags.c_contiguous
            or not out_features.flags.writeable):
        raise ValueError(f"{where}: out_features must be a writeable C-contiguous (P, M, {c + N_DERIVED}) float32 "
                         f"array for {c}-column points, got {getattr(out_features, 'shape', None)} "
                         f"{getattr(out_features, 'dtype', None)}")
    p, m = out_features.shape[:2]
    if p < 1 or m < 1:
        raise ValueError(f"{where}: out_features needs P >= 1 pillars and M >= 1 points, got shape "
                         f"{out_features.shape}")
    for name, arr, dt in (("out_index", out_index, np.int64), ("out_npoints", out_npoints, np.int32)):
        if (not isinstance(arr, np.ndarray) or arr.shape != (p,) or arr.dtype != dt or not arr.flags.c_contiguous
                or not arr.flags.writeable):
            raise ValueError(f"{where}: {name} must be a writeable contiguous ({p},) {np.dtype(dt).name} array, got "
                             f"{getattr(arr, 'shape', None)} {getattr(arr, 'dtype', None)}")


# Vector helpers for the pillarizer. numba (LLVM) compiles the kernel's row accesses (5-column LiDAR rows,
# rows of C+5 output columns) to one scalar load or store per float: a stride of 5 does not vectorise, and
# the gathers LLVM emits when pushed to (flat indices) made the kernel a sixth slower on our Zen 4. These
# three intrinsics write the vector loads, shuffles and stores out in target-independent LLVM IR, which LLVM
# lowers for the CPU it compiles for (AVX-512 permutes here). They do no bounds checks: each one's docstring
# says what its caller guarantees.
_F32 = ir.FloatType()
_I32 = ir.IntType(32)


def _f32_array(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 1 and t.layout == "C"


def _vec_ptr(builder, context, arr_type, arr, offset, width: int):
    """Pointer to ``width`` float32 at ``arr[offset]`` as an LLVM vector pointer."""
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(_F32, width).as_pointer())


def _shuffle_mask(lanes: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(lanes)), [ir.Constant(_I32, i) for i in lanes])


@intrinsic
def _xyz16(typingctx, rows, start, bx, by, bz):
    """Columns 0, 1, 2 of the 16 five-column rows at ``rows[start:start + 80]`` into ``bx``, ``by``,
    ``bz[0:16]``: five 16-float loads, shuffles, three 16-float stores. The caller guarantees both ranges
    are inside the arrays."""
    if not (_f32_array(rows) and _f32_array(bx) and _f32_array(by) and _f32_array(bz)
            and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        rows_t, _, bx_t, by_t, bz_t = sig.args
        rows_v, start_v, bx_v, by_v, bz_v = args
        src = _vec_ptr(builder, context, rows_t, rows_v, start_v, 16)
        v = [builder.load(builder.gep(src, [ir.Constant(ir.IntType(64), i)]), align=4) for i in range(5)]
        for col, arr_t, arr_v in ((0, bx_t, bx_v), (1, by_t, by_v), (2, bz_t, bz_v)):
            at = [5 * i + col for i in range(16)]  # positions in the 80 floats of v[0] .. v[4]
            # Lanes marked 0 are don't-cares, replaced by the next shuffle.
            lo = builder.shuffle_vector(v[0], v[1], _shuffle_mask([a if a < 32 else 0 for a in at]))
            mid = builder.shuffle_vector(v[2], v[3], _shuffle_mask([a - 32 if 32 <= a < 64 else 0 for a in at]))
            both = builder.shuffle_vector(lo, mid, _shuffle_mask([i if a < 32 else 16 + i for i, a in enumerate(at)]))
            out = builder.shuffle_vector(both, v[4], _shuffle_mask([i if a < 64 else a - 48 for i, a in enumerate(at)]))
            builder.store(out, _vec_ptr(builder, context, arr_t, arr_v, ir.Constant(ir.IntType(64), 0), 16), align=4)
        return context.get_dummy_value()

    return types.void(rows, start, bx, by, bz), codegen


@intrinsic
def _copy8(typingctx, src, s, dst, d):
    """``dst[d:d + 8] = src[s:s + 8]`` (one 32-byte load and store). The caller guarantees both ranges are
    inside the arrays; the pillarizer copies a LiDAR point's 5 columns this way and the 3 floats past them
    land in decoration columns that its pillar pass overwrites."""
    if not (_f32_array(src) and _f32_array(dst) and isinstance(s, types.Integer) and isinstance(d, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        src_t, _, dst_t, _ = sig.args
        src_v, s_v, dst_v, d_v = args
        x = builder.load(_vec_ptr(builder, context, src_t, src_v, s_v, 8), align=4)
        builder.store(x, _vec_ptr(builder, context, dst_t, dst_v, d_v, 8), align=4)
        return context.get_dummy_value()

    return types.void(src, s, dst, d), codegen


@intrinsic
def _decorate(typingctx, buf, r, c, mx, my, mz, ccx, ccy):
    """``buf[r + c:r + c + 5] = x - mx, y - my, z - mz, x - ccx, y - ccy`` with x y z = ``buf[r:r + 3]`` (one
    4-float load, a 4-float and a 1-float store; float32 subtractions as the scalar code does them). The
    caller guarantees ``buf[r:r + 4]`` and ``buf[r + c:r + c + 5]`` are inside the array."""
    if not (_f32_array(buf) and isinstance(r, types.Integer) and isinstance(c, types.Integer)
            and all(t == types.float32 for t in (mx, my, mz, ccx, ccy))):
        return None

    def codegen(context, builder, sig, args):
        buf_v, r_v, c_v, mx_v, my_v, mz_v, ccx_v, ccy_v = args
        v4 = ir.VectorType(_F32, 4)
        row = _vec_ptr(builder, context, sig.args[0], buf_v, r_v, 4)
        xyz = builder.load(row, align=4)
        sub = ir.Constant(v4, None)
        for i, value in enumerate((mx_v, my_v, mz_v, ccx_v)):
            sub = builder.insert_element(sub, value, ir.Constant(_I32, i))
        four = builder.fsub(builder.shuffle_vector(xyz, xyz, _shuffle_mask([0, 1, 2, 0])), sub)
        out = builder.gep(builder.bitcast(row, _F32.as_pointer()), [c_v])
        builder.store(four, builder.bitcast(out, v4.as_pointer()), align=4)
        y = builder.extract_element(xyz, ir.Constant(_I32, 1))
        builder.store(builder.fsub(y, ccy_v), builder.gep(out, [ir.Constant(ir.IntType(64), 4)]), align=4)
        return context.get_dummy_value()

    return types.void(buf, r, c, mx, my, mz, ccx, ccy), codegen


PILLAR_GROUP = 16  # LiDAR points per group of the pillarizer's point pass (one 16-float vector of cells)


# error_model="numpy": no zero-division checks in the loops (the cell size, slab height and every kept
# pillar's count are > 0), which lets the cell loop vectorise.
@nb.njit(nogil=True, cache=True, error_model="numpy")
def _pillarize_kernel(points, x_min, y_min, z_min, cell, z_size, nx, ny, cx, cy,
                      out_features, out_index, out_npoints, cell_to_pillar, cell_count, dirty, bx, by, bz, bc,
                      prev_filled):
    """Fill the outputs; return the pillar count (-1, with nothing written, when the scratch is not clear).

    Scratch: cell_to_pillar (n_cells,) uint32 (read only where the count is non-zero) and cell_count
    (n_cells,) uint32 must be all 0 on entry; both are so again on exit (only the touched cells are reset).
    Unsigned, so the pillar and slot read from them index the output without numba's negative-index
    wraparound (a few per cent of the kernel); bx, by, bz (PILLAR_GROUP,) float32 and bc (2 * PILLAR_GROUP,)
    int32 are overwritten;
    dirty (P,) int32 holds, per pillar, how many leading rows of out_features may be non-zero on entry, and
    holds the same for the new contents on exit. Pillars from max(count, prev_filled) on are left as they
    are: the caller knows they are already empty (out_index n_cells, out_npoints 0, dirty 0).
    """
    n_points, n_cols = points.shape
    max_pillars, max_points = out_features.shape[0], out_features.shape[1]
    n_cells = nx * ny
    # The scratch must be clear (two calls at once on one Pillarizer would break that). Reading both tables
    # in order also brings them into cache ahead of pass 1's random accesses: when other stages have run
    # since the last frame, about a tenth of the kernel's time.
    leftover = np.uint32(0)
    for i in range(n_cells):
        leftover |= cell_count[i] | cell_to_pillar[i]
    if leftover != 0:
        return -1
    n = 0
    n_in = n_points * n_cols
    flat_in = points.reshape(n_in)
    n_out = out_features.shape[2]
    flat_out = out_features.reshape(max_pillars * max_points * n_out)
    # float32 bounds keep the comparisons in float32 (exact: nx, ny and 1 are representable), so the cell
    # loop vectorises; the result is the same as comparing against the integers. NaN fails them all.
    fnx = np.float32(nx)
    fny = np.float32(ny)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    inx = np.int32(nx)
    # Pass 1: each point's cell, its pillar (numbered by first appearance) and slot (slot order is point
    # order), and a kept point's row copied to its slot. LiDAR rows go in groups of PILLAR_GROUP, all but
    # the last row: step g finds the cells of group g + 1 (vector loads, permutes, divisions), then gives
    # the points of group g their slots (loads, compares, branches), so the core works on both at once.
    n_groups = max(0, (n_points - 1) // PILLAR_GROUP) if n_cols == 5 else 0
    for g in range(-1, n_groups):
        if g + 1 < n_groups:
            _xyz16(flat_in, 5 * PILLAR_GROUP * (g + 1), bx, by, bz)
            nxt = ((g + 1) & 1) * PILLAR_GROUP
            for t in range(PILLAR_GROUP):
                qx = (bx[t] - x_min) / cell
                qy = (by[t] - y_min) / cell
                qz = (bz[t] - z_min) / z_size
                ok = (qx >= zero) & (qx < fnx) & (qy >= zero) & (qy < fny) & (qz >= zero) & (qz < one)
                bc[nxt + t] = np.int32(qy) * inx + np.int32(qx) if ok else np.int32(-1)
        if g < 0:
            continue
        cur = (g & 1) * PILLAR_GROUP
        for j in range(cur, cur + PILLAR_GROUP):
            c = bc[j]
            if c < 0:
                continue
            # The count is looked up by cell, not through the pillar, so a point that its full pillar drops
            # (most of them at small M) costs one load and one compare.
            k = cell_count[c]
            if k < max_points:
                if k == 0:
                    if n >= max_pillars:
                        continue
                    cell_to_pillar[c] = np.uint32(n)
                    out_index[n] = c
                    n += 1
                p = cell_to_pillar[c]
                cell_count[c] = k + np.uint32(1)
                # 8 floats: the row, then the next row's first 3 (a later row exists) into decoration
                # columns, which pass 2 overwrites.
                _copy8(flat_in, 5 * (g * PILLAR_GROUP + j - cur), flat_out, (np.int64(p) * max_points + k) * n_out)
    # The rest (the last 1 to PILLAR_GROUP LiDAR rows; all rows of other widths) point by point, the same way.
    for i in range(PILLAR_GROUP * n_groups, n_points):
        qx = (points[i, 0] - x_min) / cell
        qy = (points[i, 1] - y_min) / cell
        qz = (points[i, 2] - z_min) / z_size
        if not ((qx >= zero) & (qx < fnx) & (qy >= zero) & (qy < fny) & (qz >= zero) & (qz < one)):
            continue
        c = np.int32(qy) * inx + np.int32(qx)
        k = cell_count[c]
        if k < max_points:
            if k == 0:
                if n >= max_pillars:
                    continue
                cell_to_pillar[c] = np.uint32(n)
                out_index[n] = c
                n += 1
            p = cell_to_pillar[c]
            cell_count[c] = k + np.uint32(1)
            for q in range(n_cols):
                out_features[p, k, q] = points[i, q]
    # Pass 2, per pillar: float64 mean of the kept points (in point order, read back from the rows), the
    # five decorations; rows an earlier fill left beyond the new count are cleared.
    for p in range(min(max_pillars, max(n, prev_filled))):
        cnt = 0
        if p < n:
            c = out_index[p]
            cell_to_pillar[c] = np.uint32(0)
            cnt = cell_count[c]
            cell_count[c] = np.uint32(0)
            out_npoints[p] = cnt
            sx = 0.0
            sy = 0.0
            sz = 0.0
            row0 = np.uint64(p) * np.uint64(max_points * n_out)  # unsigned: no wraparound code
            r = row0
            for k in range(cnt):
                sx += flat_out[r]
                sy += flat_out[r + np.uint64(1)]
                sz += flat_out[r + np.uint64(2)]
                r += np.uint64(n_out)
            mx = np.float32(sx / cnt)
            my = np.float32(sy / cnt)
            mz = np.float32(sz / cnt)
            ccx = cx[c % nx]
            ccy = cy[c // nx]
            r = row0
            for k in range(cnt):
                _decorate(flat_out, r, n_cols, mx, my, mz, ccx, ccy)
                r += np.uint64(n_out)
        else:
            out_index[p] = n_cells
            out_npoints[p] = 0
        for k in range(cnt, dirty[p]):
            for j in range(n_out):
                out_features[p, k, j] = 0.0
        dirty[p] = cnt
    return n


def _checked(n: int) -> int:
    if n < 0:
        raise RuntimeError("pillarize: the scratch tables were not clear on entry (one Pillarizer called from "
                           "two threads at once?)")
    return int(n)


def _group_scratch() -> tuple[np.ndarray, ...]:
    """bx, by, bz for one group of LiDAR points, bc for two (the current group and the next)."""
    return (np.empty(PILLAR_GROUP, np.float32), np.empty(PILLAR_GROUP, np.float32),
            np.empty(PILLAR_GROUP, np.float32), np.empty(2 * PILLAR_GROUP, np.int32))


class Pillarizer:
    """Pillarization with scratch and output buffers kept between calls (the pipeline's hot path).

    Same result as :func:`pillarize`, written into buffers this object owns: ``features`` (P, M, C+5) float32,
    ``index`` (P,) int64 and ``npoints`` (P,) int32. They stay valid until the next call, which overwrites
    them; callers read them (``torch.from_numpy`` views are fine) and must not write into them, because a
    call clears only the rows its predecessor filled. One instance is not safe to call from two threads at
    once; instances are independent (the kernel releases the GIL).

    Args:
        grid: the BEV grid (one pillar per cell).
        n_features: C, columns per input point (x y z + extras), >= 3.
        max_pillars: P; pillars beyond it are dropped. max_points: M; points beyond it per pillar are dropped.
    """

    def __init__(self, grid: BevGrid, n_features: int, max_pillars: int, max_points: int):
        if n_features < 3 or max_pillars < 1 or max_points < 1:
            raise ValueError(f"Pillarizer: need n_features >= 3, max_pillars >= 1, max_points >= 1; got "
                             f"{n_features}, {max_pillars}, {max_points}")
        self.grid = grid
        self.n_features = n_features
        self.features = np.zeros((max_pillars, max_points, n_features + N_DERIVED), np.float32)
        self.index = np.full(max_pillars, grid.n_cells, np.int64)
        self.npoints = np.zeros(max_pillars, np.int32)
        self._consts = _grid_scalars(grid)
        self._cell_to_pillar = np.zeros(grid.n_cells, np.uint32)
        self._cell_count = np.zeros(grid.n_cells, np.uint32)
        self._dirty = np.zeros(max_pillars, np.int32)
        self._group = _group_scratch()
        self._filled = max_pillars  # pillars the previous call may have filled (all, before the first call)

    def __call__(self, points: np.ndarray) -> int:
        """Pillarize ``points`` ((N, C) float32, x y z [m] ego frame then C-3 features) into ``features``,
        ``index``, ``npoints``; returns the number of pillars filled (see :func:`pillarize`)."""
        # Only the points need checking: the buffers are this object's own.
        if (not isinstance(points, np.ndarray) or points.ndim != 2 or points.dtype != np.float32
                or points.shape[1] != self.n_features):
            raise ValueError(f"Pillarizer: built for {self.n_features}-column points: points must be "
                             f"(N, {self.n_features}) float32, got "
                             f"{getattr(points, 'shape', None)} {getattr(points, 'dtype', type(points).__name__)}")
        if not points.flags.c_contiguous:
            points = np.ascontiguousarray(points)
        n = _checked(_pillarize_kernel(points, *self._consts, self.features, self.index, self.npoints,
                                       self._cell_to_pillar, self._cell_count, self._dirty, *self._group,
                                       self._filled))
        self._filled = n
        return n


def pillarize(points: np.ndarray, grid: BevGrid, out_features: np.ndarray, out_index: np.ndarray,
              out_npoints: np.ndarray) -> int:
    """Group points into BEV pillars (one pillar per grid cell) with PointPillars' per-point features.

    Args:
        points: (N, C) float32, columns x y z [m] in the ego frame, then C-3 feature columns (LiDAR:
            intensity, time lag [s]; radar: vx, vy, rcs, time lag). Points outside the grid in x, y or z
            (NaN and inf included) are dropped.
        grid: the BEV grid; a pillar is one cell.
        out_features: (P, M, C+5) float32, filled: per kept point its C input columns, then x - mean_x,
            y - mean_y, z - mean_z (mean over the pillar's kept points, summed in float64), then
            x - cell_center_x, y - cell_center_y [m]. Rows past a pillar's point count and pillars past the
            returned count are zero.
        out_index: (P,) int64, linear cell index ``iy * nx + ix`` per pillar; ``grid.n_cells`` past the count.
        out_npoints: (P,) int32, points kept per pillar; 0 past the count.
    Returns:
        the number of pillars, <= P. Pillars are numbered in order of the first appearance of a point in
        ``points`` (as spconv's PointToVoxel numbers voxels); points beyond M in a pillar and pillars beyond
        P are dropped.

    Clears all of ``out_features`` on every call; :class:`Pillarizer` avoids that and is the faster choice
    when the same buffers are reused frame after frame.
    """
    _check_pillar_buffers("pillarize", points, grid, out_features, out_index, out_npoints)
    points = np.ascontiguousarray(points)
    p, m = out_features.shape[:2]
    return _checked(_pillarize_kernel(points, *_grid_scalars(grid), out_features, out_index, out_npoints,
                                      np.zeros(grid.n_cells, np.uint32), np.zeros(grid.n_cells, np.uint32),
                                      np.full(p, m, np.int32), *_group_scratch(), p))


def pillarize_reference(points: np.ndarray, grid: BevGrid, out_features: np.ndarray, out_index: np.ndarray,
                        out_npoints: np.ndarray) -> int:
    """:func:`pillarize` in plain numpy (same arguments, same result bit for bit)."""
    _check_pillar_buffers("pillarize_reference", points, grid, out_features, out_index, out_npoints)
    x_min, y_min, z_min, cell, z_size, nx, ny, cx, cy = _grid_scalars(grid)
    max_pillars, max_points, _ = out_features.shape
    n_cols = points.shape[1]
    out_features[:] = 0
    out_index[:] = grid.n_cells
    out_npoints[:] = 0
    qx = (points[:, 0] - x_min) / cell
    qy = (points[:, 1] - y_min) / cell
    qz = (points[:, 2] - z_min) / z_size
    inside = (qx >= 0) & (qx < nx) & (qy >= 0) & (qy < ny) & (qz >= 0) & (qz < 1)
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return 0
    ix = qx[idx].astype(np.int64)
    iy = qy[idx].astype(np.int64)
    cells = iy * nx + ix
    # Pillar number = rank of the cell's first appearance.
    uniq, first, inverse = np.unique(cells, return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty(len(uniq), np.int64)
    rank[by_first] = np.arange(len(uniq))
    pillar = rank[inverse]
    # Slot = how many earlier points share the pillar.
    order = np.argsort(pillar, kind="stable")
    counts = np.bincount(pillar, minlength=len(uniq))
    starts = np.cumsum(counts) - counts
    slot = np.empty(len(pillar), np.int64)
    slot[order] = np.arange(len(pillar)) - starts[pillar[order]]
    keep = (pillar < max_pillars) & (slot < max_points)
    kp, ks, ki = pillar[keep], slot[keep], idx[keep]
    n = min(len(uniq), max_pillars)
    cnt = np.bincount(kp, minlength=n)
    # bincount accumulates in float64 in point order, as the kernel does.
    means = np.stack([(np.bincount(kp, weights=points[ki, a], minlength=n) / cnt).astype(np.float32)
                      for a in range(3)], axis=1)
    kept = points[ki]
    out_features[kp, ks, :n_cols] = kept
    for a in range(3):
        out_features[kp, ks, n_cols + a] = kept[:, a] - means[kp, a]
    out_features[kp, ks, n_cols + 3] = kept[:, 0] - cx[ix[keep]]
    out_features[kp, ks, n_cols + 4] = kept[:, 1] - cy[iy[keep]]
    out_index[:n] = uniq[by_first[:n]]
    out_npoints[:n] = cnt
    return n


# ============================================================================================ bev_pool
def _check_bev_pool(where: str, depth: np.ndarray, feats: np.ndarray, cell_index: np.ndarray | None,
                    out: np.ndarray, geometry: tuple[int, int, int, int] | None = None) -> None:
    if not isinstance(depth, np.ndarray) or depth.ndim != 4 or depth.dtype != np.float32:
        raise ValueError(f"{where}: depth must be (Ncam, D, h, w) float32, got {getattr(depth, 'shape', None)} "
                         f"{getattr(depth, 'dtype', None)}")
    ncam, _, h, w = depth.shape
    if geometry is not None and depth.shape != geometry:
        raise ValueError(f"{where}: depth shape {depth.shape} differs from the plan's frustum {geometry}")
    if (not isinstance(feats, np.ndarray) or feats.ndim != 4 or feats.dtype != np.float32
            or feats.shape[0] != ncam or feats.shape[2:] != (h, w)):
        raise ValueError(f"{where}: feats must be ({ncam}, C, {h}, {w}) float32 to match depth, got "
                         f"{getattr(feats, 'shape', None)} {getattr(feats, 'dtype', None)}")
    if cell_index is not None and (not isinstance(cell_index, np.ndarray) or cell_index.shape != depth.shape
                                   or cell_index.dtype != np.int64):
        raise ValueError(f"{where}: cell_index must be {depth.shape} int64 like depth, got "
                         f"{getattr(cell_index, 'shape', None)} {getattr(cell_index, 'dtype', None)}")
    c = feats.shape[1]
    if (not isinstance(out, np.ndarray) or out.ndim != 2 or out.shape[0] != c or out.dtype != np.float32
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"{where}: out must be a writeable C-contiguous ({c}, n_cells) float32 array, got "
                         f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}")


@nb.njit(nogil=True, cache=True)
def _bev_pool_sort(cell_index, n_cells, counts, point_depth, point_row, cells, starts):
    """Stable counting sort of the frustum points by BEV cell; within a cell the points keep (n, d, y, x)
    order, the order the sums run in.

    Args: cell_index (Ncam, D, h*w) int64; counts (n_cells + 1,) int64 scratch. Outputs: point_depth
    (>= npts,) int64 flat index into depth; point_row (>= npts,) int64 row ``n * h*w + pixel`` of the
    channels-last features; cells (>= n_cells,) occupied cells ascending; starts (>= n_cells + 1,) their
    bounds in the sorted order. Returns (sorted points, occupied cells), or (-bad, 0) when ``bad`` indices
    lie outside [-1, n_cells).
    """
    ncam, nd, hw = cell_index.shape
    counts[:] = 0
    bad = 0
    for n in range(ncam):
        for d in range(nd):
            for i in range(hw):
                c = cell_index[n, d, i]
                if c >= 0 and c < n_cells:
                    counts[c + 1] += 1
                elif c != -1:
                    bad += 1
    if bad:
        return -bad, 0
    m = 0
    for c in range(n_cells):
        if counts[c + 1] > 0:
            cells[m] = c
            starts[m] = counts[c]
            m += 1
        counts[c + 1] += counts[c]
    starts[m] = counts[n_cells]
    for n in range(ncam):
        for d in range(nd):
            for i in range(hw):
                c = cell_index[n, d, i]
                if c >= 0:
                    j = counts[c]
                    point_depth[j] = (n * nd + d) * hw + i
                    point_row[j] = n * hw + i
                    counts[c] = j + 1
    return starts[m], m


@nb.njit(nogil=True, cache=True)
def _bev_pool_sorted(depth, feats, point_depth, point_row, cells, starts, out, feats_t, acc, pooled):
    """Pool the sorted frustum points (see :func:`_bev_pool_sort`): each occupied cell's points are summed
    in float64, then out is written row by row (zeros and the pooled values of that channel).

    Scratch: feats_t (Ncam * h*w, C) float32 (channels-last copy, so the inner loop is contiguous);
    acc (C,) float64; pooled (C, >= occupied cells) float32."""
    ncam, nc, h, w = feats.shape
    hw = h * w
    ffl = feats.reshape(ncam, nc, hw)
    dfl = depth.reshape(-1)
    for n in range(ncam):
        for c in range(nc):
            for i in range(hw):
                feats_t[n * hw + i, c] = ffl[n, c, i]
    for k in range(len(cells)):
        acc[:] = 0.0
        for j in range(starts[k], starts[k + 1]):
            wgt = dfl[point_depth[j]]
            r = point_row[j]
            for c in range(nc):
                acc[c] += wgt * feats_t[r, c]  # float32 product, float64 sum
        for c in range(nc):
            pooled[c, k] = np.float32(acc[c])
    # Row by row: each (C, n_cells) row stays in cache while its cells are scattered into it.
    for c in range(nc):
        out[c, :] = 0.0
        for k in range(len(cells)):
            out[c, cells[k]] = pooled[c, k]


def _sort_frustum(where: str, cell_index: np.ndarray, n_cells: int) -> tuple[np.ndarray, ...]:
    """(point_depth, point_row, cells, starts) of :func:`_bev_pool_sort`, trimmed; ValueError on bad indices."""
    ncam, nd, h, w = cell_index.shape
    npts = cell_index.size
    point_depth, point_row = np.empty(npts, np.int64), np.empty(npts, np.int64)
    cells, starts = np.empty(n_cells, np.int64), np.empty(n_cells + 1, np.int64)
    n_sorted, m = _bev_pool_sort(np.ascontiguousarray(cell_index).reshape(ncam, nd, h * w), n_cells,
                                 np.empty(n_cells + 1, np.int64), point_depth, point_row, cells, starts)
    if n_sorted < 0:
        raise ValueError(f"{where}: {-n_sorted} cell_index values outside [-1, {n_cells})")
    return point_depth[:n_sorted], point_row[:n_sorted], cells[:m], starts[:m + 1]


def bev_pool(depth: np.ndarray, feats: np.ndarray, cell_index: np.ndarray, out: np.ndarray) -> None:
    """Lift-splat sum pooling of camera frustum features into the BEV grid (as in LSS / BEVFusion).

    Args:
        depth: (Ncam, D, h, w) float32, per-pixel depth-bin weights.
        feats: (Ncam, C, h, w) float32 image features.
        cell_index: (Ncam, D, h, w) int64, linear BEV cell (``iy * nx + ix``) of each frustum point; -1 =
            outside the grid.
        out: (C, n_cells) float32, overwritten: ``out[c, cell] = sum depth[n,d,y,x] * feats[n,c,y,x]`` over
            the frustum points in that cell (each product in float32, summed in float64 in (n, d, y, x)
            order, rounded to float32 once); 0 where no point falls. View it as (C, ny, nx).
    Raises:
        ValueError: mismatched shapes or dtypes, or a cell index outside [-1, n_cells).

    Sorts the frustum points by cell on every call (a counting sort); with a static rig,
    :class:`BevPoolPlan` does that once and gives the same result faster.
    """
    _check_bev_pool("bev_pool", depth, feats, cell_index, out)
    ncam, nc, h, w = feats.shape
    sorted_frustum = _sort_frustum("bev_pool", cell_index, out.shape[1])
    _bev_pool_sorted(np.ascontiguousarray(depth), np.ascontiguousarray(feats), *sorted_frustum, out,
                     np.empty((ncam * h * w, nc), np.float32), np.empty(nc, np.float64),
                     np.empty((nc, len(sorted_frustum[2])), np.float32))


def bev_pool_reference(depth: np.ndarray, feats: np.ndarray, cell_index: np.ndarray, out: np.ndarray) -> None:
    """:func:`bev_pool` in plain numpy (same arguments, same result bit for bit)."""
    _check_bev_pool("bev_pool_reference", depth, feats, cell_index, out)
    nc, n_cells = out.shape
    bad = int(np.count_nonzero((cell_index >= n_cells) | (cell_index < -1)))
    if bad:
        raise ValueError(f"bev_pool_reference: {bad} cell_index values outside [-1, {n_cells})")
    valid = cell_index >= 0
    cells = cell_index[valid]
    cam, _, yy, xx = np.nonzero(valid)  # (n, d, y, x) order, the order the kernel sums in
    wts = depth[valid]
    for c in range(nc):
        # float32 products; bincount sums them in float64 in index order.
        out[c] = np.bincount(cells, weights=wts * feats[cam, c, yy, xx], minlength=n_cells)


class BevPoolPlan:
    """:func:`bev_pool` for a fixed ``cell_index`` (static camera geometry, computed once from the rig): the
    frustum points are sorted by BEV cell here, once, so a call only pools.

    Args:
        cell_index: (Ncam, D, h, w) int64 linear BEV cell per frustum point, -1 = outside the grid.
        n_cells: cells of the BEV grid (``grid.n_cells``); ``out`` of a call is (C, n_cells).
    Raises:
        ValueError: wrong dtype/shape or a cell index outside [-1, n_cells).
    """

    def __init__(self, cell_index: np.ndarray, n_cells: int):
        if not isinstance(cell_index, np.ndarray) or cell_index.ndim != 4 or cell_index.dtype != np.int64:
            raise ValueError(f"BevPoolPlan: cell_index must be (Ncam, D, h, w) int64, got "
                             f"{getattr(cell_index, 'shape', None)} {getattr(cell_index, 'dtype', None)}")
        self.shape = tuple(cell_index.shape)
        self.n_cells = int(n_cells)
        self._sorted = _sort_frustum("BevPoolPlan", cell_index, self.n_cells)
        self._feats_t = np.zeros((0, 0), np.float32)
        self._acc = np.zeros(0, np.float64)
        self._pooled = np.zeros((0, 0), np.float32)

    def __call__(self, depth: np.ndarray, feats: np.ndarray, out: np.ndarray) -> None:
        """Same as ``bev_pool(depth, feats, cell_index, out)`` with the plan's cell_index (same result bit
        for bit). Not safe to call from two threads at once (it reuses its scratch)."""
        _check_bev_pool("BevPoolPlan", depth, feats, None, out, self.shape)
        if out.shape[1] != self.n_cells:
            raise ValueError(f"BevPoolPlan: out has {out.shape[1]} cells, the plan was built for {self.n_cells}")
        ncam, nc, h, w = feats.shape
        if self._feats_t.shape != (ncam * h * w, nc):
            self._feats_t = np.empty((ncam * h * w, nc), np.float32)
            self._acc = np.empty(nc, np.float64)
            self._pooled = np.empty((nc, len(self._sorted[2])), np.float32)
        _bev_pool_sorted(np.ascontiguousarray(depth), np.ascontiguousarray(feats), *self._sorted, out,
                         self._feats_t, self._acc, self._pooled)


# ============================================================================================ heatmap peaks
def _check_heat(where: str, heat: np.ndarray, top_k: int) -> None:
    if not isinstance(heat, np.ndarray) or heat.ndim != 3 or heat.dtype != np.float32:
        raise ValueError(f"{where}: heat must be (K, H, W) float32, got {getattr(heat, 'shape', None)} "
                         f"{getattr(heat, 'dtype', None)}")
    if int(top_k) < 0:
        raise ValueError(f"{where}: top_k must be >= 0, got {top_k}")


@nb.njit(nogil=True, cache=True)
def _heatmap_peaks_kernel(heat, threshold, top_k):
    nk, nh, nw = heat.shape
    flat = np.empty(nk * nh * nw, np.int64)
    score = np.empty(nk * nh * nw, np.float32)
    m = 0
    for k in range(nk):
        for y in range(nh):
            y0 = max(y - 1, 0)
            y1 = min(y + 2, nh)
            row = heat[k, y]
            for x in range(nw):
                v = row[x]
                if v >= threshold:
                    x0 = max(x - 1, 0)
                    x1 = min(x + 2, nw)
                    peak = True
                    for yy in range(y0, y1):
                        for xx in range(x0, x1):
                            if not (v >= heat[k, yy, xx]):  # a NaN neighbour fails too: no peak
                                peak = False
                                break
                        if not peak:
                            break
                    if peak:
                        flat[m] = (k * nh + y) * nw + x
                        score[m] = v
                        m += 1
    # Candidates are in (label, iy, ix) order; a stable sort by descending score keeps that for ties.
    order = np.argsort(-score[:m], kind="mergesort")
    r = min(m, top_k)
    labels = np.empty(r, np.int32)
    iy = np.empty(r, np.int32)
    ix = np.empty(r, np.int32)
    scores = np.empty(r, np.float32)
    for j in range(r):
        f = flat[order[j]]
        labels[j] = f // (nh * nw)
        iy[j] = (f // nw) % nh
        ix[j] = f % nw
        scores[j] = score[order[j]]
    return labels, iy, ix, scores


Peaks = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # labels, iy, ix (int32), scores (float32)


def heatmap_peaks(heat: np.ndarray, threshold: float, top_k: int) -> Peaks:
    """Local maxima of a class heatmap (CenterPoint-style decoding without the max-pool tensor).

    Args:
        heat: (K, H, W) float32 class probabilities on the head's BEV grid (row = y index, column = x index).
        threshold: minimum score of a peak.
        top_k: at most this many peaks are returned (over all classes).
    Returns:
        (labels int32, iy int32, ix int32, scores float32), each (R,), R <= top_k: the cells whose value is
        >= threshold and equals the maximum of its 3x3 neighbourhood in the same class (neighbourhood clipped
        at the borders; plateaus give several peaks; a NaN neighbour disqualifies), sorted by score
        descending, ties by (label, iy, ix) ascending.
    """
    _check_heat("heatmap_peaks", heat, top_k)
    return _heatmap_peaks_kernel(np.ascontiguousarray(heat), np.float32(threshold), int(top_k))


def heatmap_peaks_reference(heat: np.ndarray, threshold: float, top_k: int) -> Peaks:
    """:func:`heatmap_peaks` in plain numpy (same arguments, same result)."""
    _check_heat("heatmap_peaks_reference", heat, top_k)
    _, nh, nw = heat.shape
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    mx = heat.copy()
    for dy in range(3):
        for dx in range(3):
            mx = np.maximum(mx, padded[:, dy:dy + nh, dx:dx + nw])  # propagates NaN
    is_peak = (heat == mx) & (heat >= np.float32(threshold))
    k, y, x = np.nonzero(is_peak)  # (label, iy, ix) order
    s = heat[k, y, x]
    order = np.argsort(-s, kind="stable")[:int(top_k)]
    return k[order].astype(np.int32), y[order].astype(np.int32), x[order].astype(np.int32), s[order].astype(np.float32)


# ============================================================================================ circle NMS
def _check_nms(where: str, xy: np.ndarray, scores: np.ndarray, labels: np.ndarray,
               radius_per_class: np.ndarray) -> None:
    if not isinstance(xy, np.ndarray) or xy.ndim != 2 or xy.shape[1] != 2 or xy.dtype != np.float32:
        raise ValueError(f"{where}: xy must be (N, 2) float32, got {getattr(xy, 'shape', None)} "
                         f"{getattr(xy, 'dtype', None)}")
    n = len(xy)
    if not isinstance(scores, np.ndarray) or scores.shape != (n,) or scores.dtype != np.float32:
        raise ValueError(f"{where}: scores must be ({n},) float32, got {getattr(scores, 'shape', None)} "
                         f"{getattr(scores, 'dtype', None)}")
    if np.isnan(scores).any():
        raise ValueError(f"{where}: scores contain NaN")
    if (not isinstance(radius_per_class, np.ndarray) or radius_per_class.ndim != 1
            or radius_per_class.dtype != np.float32):
        raise ValueError(f"{where}: radius_per_class must be (K,) float32, got "
                         f"{getattr(radius_per_class, 'shape', None)} {getattr(radius_per_class, 'dtype', None)}")
    if not isinstance(labels, np.ndarray) or labels.shape != (n,) or labels.dtype != np.int32:
        raise ValueError(f"{where}: labels must be ({n},) int32, got {getattr(labels, 'shape', None)} "
                         f"{getattr(labels, 'dtype', None)}")
    if n and (labels.min() < 0 or labels.max() >= len(radius_per_class)):
        raise ValueError(f"{where}: labels must lie in [0, {len(radius_per_class)}) (one radius per class), got "
                         f"[{labels.min()}, {labels.max()}]")


@nb.njit(nogil=True, cache=True)
def _circle_nms_kernel(xy, scores, labels, radius_per_class):
    n = len(scores)
    order = np.argsort(-scores, kind="mergesort")
    keep = np.empty(n, np.int64)
    m = 0
    for a in range(n):
        i = order[a]
        lab = labels[i]
        r = radius_per_class[lab]
        suppressed = False
        if r > 0:
            r2 = r * r
            x = xy[i, 0]
            y = xy[i, 1]
            for b in range(m):
                j = keep[b]
                if labels[j] == lab:
                    dx = x - xy[j, 0]
                    dy = y - xy[j, 1]
                    if dx * dx + dy * dy < r2:
                        suppressed = True
                        break
        if not suppressed:
            keep[m] = i
            m += 1
    return keep[:m].copy()


def circle_nms(xy: np.ndarray, scores: np.ndarray, labels: np.ndarray, radius_per_class: np.ndarray) -> np.ndarray:
    """Greedy per-class suppression by centre distance (CenterPoint's circle NMS).

    Args:
        xy: (N, 2) float32 box centres [m] (ego frame).
        scores: (N,) float32 (no NaN). labels: (N,) int32 in [0, K).
        radius_per_class: (K,) float32 [m]; <= 0 turns suppression off for that class.
    Returns:
        (R,) int64 indices of the kept boxes in descending score order (ties by index). Boxes are visited in
        that order; one is dropped when a kept box of its class lies closer than the class radius
        (``dx*dx + dy*dy < r*r`` in float32).
    """
    _check_nms("circle_nms", xy, scores, labels, radius_per_class)
    return _circle_nms_kernel(np.ascontiguousarray(xy), np.ascontiguousarray(scores), np.ascontiguousarray(labels),
                              np.ascontiguousarray(radius_per_class))


def circle_nms_reference(xy: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                         radius_per_class: np.ndarray) -> np.ndarray:
    """:func:`circle_nms` in plain numpy (same arguments, same result)."""
    _check_nms("circle_nms_reference", xy, scores, labels, radius_per_class)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    kept_xy = np.empty((n, 2), np.float32)
    kept_label = np.empty(n, np.int32)
    keep = []
    for i in order:
        lab = labels[i]
        r = radius_per_class[lab]
        if r > 0:
            same = kept_label[:len(keep)] == lab
            d = xy[i] - kept_xy[:len(keep)][same]
            if np.any(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] < r * r):
                continue
        kept_xy[len(keep)] = xy[i]
        kept_label[len(keep)] = lab
        keep.append(i)
    return np.asarray(keep, np.int64)
