"""Extrinsics by registration: LiDAR to LiDAR (6 DoF) and LiDAR to radar (planar x, y, yaw).

LiDAR-LiDAR (:func:`register_lidars`, :func:`calibrate_lidar_pair`): sweeps of two LiDARs taken at the same
instant see the same surfaces, so the transform between them is the one that lays the second sensor's
points onto the first sensor's surfaces. Per frame both clouds are voxel-downsampled and the reference
cloud gets surface normals (open3d); a point-to-plane ICP then solves for one ``target_from_source``
shared by all frames, stacking every frame's point-to-plane constraints into one Gauss-Newton system
(open3d's ICP registers a single pair of clouds, so the joint solve is written here; open3d provides the
downsampling, normals, nearest-neighbour search and the global registration). Correspondences are
gated by a distance that shrinks from coarse to fine, residuals are weighted with Tukey's biweight, and
the final system gives the uncertainty. Neighbouring residuals are correlated (a shared surface and
normal estimate, an object that moved between the two sensors' firing times), so the covariance is the
cluster-robust ("sandwich") estimate with 2 m cells as clusters,
``(J^T W J)^-1 (sum_c g_c g_c^T) (J^T W J)^-1 C / (C - 6)``, g_c the weighted gradient of cell c, rather
than the far too small sigma^2 (J^T W J)^-1 of independent residuals. It still does not see biases shared
by the whole scene: with traffic passing, the simulated test's error (1.1 cm) is about 5 times its
1-sigma. With no initial guess, FPFH features and RANSAC (open3d) find a coarse transform on the first
frame first.

LiDAR-radar (:func:`calibrate_lidar_radar`): a radar measures range and azimuth well but elevation
poorly (degrees), so only the planar part of ``ego_from_radar`` (x, y, yaw) is estimated; z, roll and
pitch stay at the rig's prior. Targets are compact, isolated LiDAR clusters standing above the ground
(corner reflectors on stands, posts); radar returns with a strong RCS are matched to the nearest target
and the pose is solved by robust Gauss-Newton in the radar's own measurement space (range and azimuth
residuals, each scaled by its noise), so that the far, noisy-in-azimuth returns do not dominate.

The radar's covariance is cluster-robust too, with the targets as clusters (all returns of a target share
its LiDAR centre and that centre's error).

Frames: ``target_from_source`` maps source-LiDAR points into the target (reference) LiDAR frame.
Covariances are over (rx, ry, rz, tx, ty, tz): a small rotation vector [rad] and translation [m] applied
on the left (in the target frame); for radar over (x [m], y [m], yaw [rad]) of the radar in the ego frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import cv2
import numpy as np
import open3d as o3d

from calibration.rig import EGO_FRAME, Rig, Sensor
from calibration.transform import Transform


class RegistrationError(ValueError):
    """Registration could not run or did not produce a usable result; the message says why."""


# ---------------------------------------------------------------------------------------------- helpers
def _xyz(points: np.ndarray, what: str) -> np.ndarray:
    P = np.asarray(points)
    if P.ndim != 2 or P.shape[1] < 3:
        raise RegistrationError(f"{what} must be (N, >=3) with x y z first, got shape {P.shape}")
    P = P[:, :3].astype(np.float64)
    return P[np.all(np.isfinite(P), axis=1)]


def _exp_se3(delta: np.ndarray) -> np.ndarray:
    """(6,) rotation vector + translation -> (4, 4): rotation by Rodrigues, translation added as is
    (the left-multiplied update used by the Gauss-Newton steps below)."""
    M = np.eye(4)
    M[:3, :3] = cv2.Rodrigues(np.asarray(delta[:3], dtype=np.float64))[0]
    M[:3, 3] = delta[3:]
    return M


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle [deg] of a (3, 3) rotation."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def transform_error(estimate: Transform, truth: Transform) -> tuple[float, float]:
    """(translation error [m], rotation error [deg]) between two transforms of the same frames."""
    return (float(np.linalg.norm(estimate.translation - truth.translation)),
            rotation_angle_deg(estimate.rotation @ truth.rotation.T))


# ---------------------------------------------------------------------------------------------- LiDAR-LiDAR
@dataclass(frozen=True)
class IcpParams:
    """Point-to-plane ICP settings.

    Args:
        voxel_m: voxel size [m] for downsampling both clouds.
        min_range_m, max_range_m: points outside this range from their sensor are dropped [m]
            (the vehicle's own body, and far points with poor normals).
        normal_radius_m, normal_max_nn: neighbourhood for target normals.
        max_planarity_residual: target points whose local surface is not flat (smallest covariance
            eigenvalue over the sum, 0 = a perfect plane, 1/3 = isotropic) above this are not used.
        correspondence_m: gating distances [m], coarse to fine; each stage iterates to convergence.
        robust_m: Tukey biweight width [m] for the point-to-plane residuals (no weight beyond it) in the
            last stages; earlier stages use half their gate when that is wider.
        max_iterations: Gauss-Newton iterations per stage.
        tolerance: a stage stops when the update is below this (rotation [rad] and translation [m]).
        cluster_m: cell size [m] of the clusters of the uncertainty estimate (see register_lidars).
    """

    voxel_m: float = 0.2
    min_range_m: float = 1.0
    max_range_m: float = 80.0
    normal_radius_m: float = 0.5
    normal_max_nn: int = 30
    max_planarity_residual: float = 0.05
    correspondence_m: tuple[float, ...] = (2.0, 1.0, 0.5, 0.25, 0.15)
    robust_m: float = 0.06
    max_iterations: int = 30
    tolerance: float = 1e-5
    cluster_m: float = 2.0


@dataclass(frozen=True)
class FrameFit:
    """How well one frame fits at the solution.

    Args:
        fitness: share of the source points with a target point within the finest gate.
        inlier_rmse_m: RMS point-to-plane distance [m] of those correspondences.
        n_correspondences: their number.
    """

    fitness: float
    inlier_rmse_m: float
    n_correspondences: int


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Result of :func:`register_lidars`.

    Args:
        target_from_source: the estimated extrinsic between the two LiDAR frames.
        fitness, inlier_rmse_m, n_correspondences: over all frames (as :class:`FrameFit`).
        covariance: (6, 6) float64 over (rx, ry, rz [rad], tx, ty, tz [m]) in the target frame.
        sigma_rotation_deg: (3,) 1-sigma of rx, ry, rz [deg]; sigma_translation_m: (3,) of tx, ty, tz [m].
        per_frame: one :class:`FrameFit` per input frame.
        initial: the initial guess used (the given one, or the global registration's result).
        iterations: Gauss-Newton iterations run over all stages.
    """

    target_from_source: Transform
    fitness: float
    inlier_rmse_m: float
    n_correspondences: int
    covariance: np.ndarray
    sigma_rotation_deg: np.ndarray
    sigma_translation_m: np.ndarray
    per_frame: tuple[FrameFit, ...]
    initial: Transform
    iterations: int

    def report(self) -> str:
        """A few lines for a person: the transform, fit and 1-sigma uncertainty."""
        T = self.target_from_source
        return "\n".join([
            T.report_line(),
            f"fitness {self.fitness:.3f}, inlier RMSE {self.inlier_rmse_m * 100:.2f} cm, "
            f"{self.n_correspondences} correspondences over {len(self.per_frame)} frame(s)",
            f"1-sigma: rotation {np.round(self.sigma_rotation_deg, 4).tolist()} deg, "
            f"translation {np.round(self.sigma_translation_m * 100, 3).tolist()} cm",
        ])


def _cloud(points: np.ndarray) -> o3d.geometry.PointCloud:
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(points)))


def _prepare(points: np.ndarray, params: IcpParams, what: str) -> np.ndarray:
    P = _xyz(points, what)
    r = np.linalg.norm(P, axis=1)
    P = P[(r >= params.min_range_m) & (r <= params.max_range_m)]
    if len(P) < 100:
        raise RegistrationError(f"{what}: only {len(P)} points within {params.min_range_m}-{params.max_range_m} m")
    return np.asarray(_cloud(P).voxel_down_sample(params.voxel_m).points)


@dataclass(frozen=True, eq=False)
class _Target:
    points: np.ndarray
    normals: np.ndarray
    nns: o3d.core.nns.NearestNeighborSearch


def _target(points: np.ndarray, params: IcpParams) -> _Target:
    pc = _cloud(points)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=params.normal_radius_m,
                                                             max_nn=params.normal_max_nn))
    pc.estimate_covariances(o3d.geometry.KDTreeSearchParamHybrid(radius=params.normal_radius_m,
                                                                 max_nn=params.normal_max_nn))
    cov = np.asarray(pc.covariances)
    ev = np.linalg.eigvalsh(cov)
    flatness = ev[:, 0] / np.maximum(ev.sum(axis=1), 1e-12)
    # Normals are only meaningful on flat patches with enough neighbours (edges, foliage and thin poles
    # would pull the solution along their ill-defined normals).
    keep = flatness < params.max_planarity_residual
    pts = np.asarray(pc.points)[keep]
    nrm = np.asarray(pc.normals)[keep]
    if len(pts) < 50:
        raise RegistrationError(f"target cloud has only {len(pts)} points on flat surfaces")
    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(np.ascontiguousarray(pts)))
    nns.knn_index()
    return _Target(pts, nrm, nns)


def _match(target: _Target, src: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest target point for each source point; (source indices, target indices) within ``gate``."""
    idx, d2 = target.nns.knn_search(o3d.core.Tensor(np.ascontiguousarray(src)), 1)
    idx = idx.numpy().reshape(-1).astype(np.int64)
    d2 = d2.numpy().reshape(-1)
    ok = d2 <= gate * gate
    return np.flatnonzero(ok), idx[ok]


def _normal_equations(targets: Sequence[_Target], sources: Sequence[np.ndarray], M: np.ndarray, gate: float,
                      robust: float, cluster_m: float = 0.0):
    """Stacked point-to-plane system at transform M: H (6, 6), g (6,), number of correspondences,
    per-frame (n_source, n_corr, sum r^2), and, when ``cluster_m`` > 0, the (C, 6) gradient of each
    spatial cluster (cells of cluster_m per frame)."""
    H = np.zeros((6, 6))
    g = np.zeros(6)
    n_total = 0
    per = []
    cluster_g = []
    for tgt, src in zip(targets, sources):
        p = src @ M[:3, :3].T + M[:3, 3]
        si, ti = _match(tgt, p, gate)
        if len(si) == 0:
            per.append((len(src), 0, 0.0))
            continue
        p, q, n = p[si], tgt.points[ti], tgt.normals[ti]
        r = np.einsum("ij,ij->i", p - q, n)
        J = np.concatenate([np.cross(p, n), n], axis=1)
        # Tukey's biweight: residuals beyond `robust` get no weight at all, so surfaces that moved between
        # the two sensors' firing times (traffic) or were seen differently pull far less.
        w = np.where(np.abs(r) < robust, (1.0 - (r / robust) ** 2) ** 2, 0.0)
        H += (J * w[:, None]).T @ J
        g += (J * (w * r)[:, None]).sum(axis=0)
        n_total += len(si)
        per.append((len(src), len(si), float((r * r).sum())))
        if cluster_m > 0:
            cell = np.floor(p / cluster_m).astype(np.int64)
            _, cid = np.unique(cell, axis=0, return_inverse=True)
            gc = np.zeros((cid.max() + 1, 6))
            np.add.at(gc, cid.reshape(-1), J * (w * r)[:, None])
            cluster_g.append(gc)
    return H, g, n_total, per, (np.concatenate(cluster_g) if cluster_g else np.zeros((0, 6)))


def global_registration(target_points: np.ndarray, source_points: np.ndarray, voxel_m: float = 0.5,
                        seed: int = 0) -> tuple[Transform, float]:
    """Coarse ``target_from_source`` without any guess: FPFH features + RANSAC (open3d).

    Args:
        target_points, source_points: (N, >=3) [m] in their own sensor frames.
        voxel_m: downsampling voxel [m]; features use 5 voxels, normals 2 voxels of radius.
        seed: open3d's random seed (RANSAC), for repeatable results.
    Returns:
        (target_from_source with frames "target" and "source", RANSAC fitness in [0, 1]).
    """
    o3d.utility.random.seed(int(seed))
    clouds = []
    for P in (_xyz(source_points, "source points"), _xyz(target_points, "target points")):
        pc = _cloud(P).voxel_down_sample(voxel_m)
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel_m, max_nn=30))
        feat = o3d.pipelines.registration.compute_fpfh_feature(
            pc, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel_m, max_nn=100))
        clouds.append((pc, feat))
    (src, fs), (tgt, ft) = clouds
    reg = o3d.pipelines.registration
    res = reg.registration_ransac_based_on_feature_matching(
        src, tgt, fs, ft, True, 1.5 * voxel_m, reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(1.5 * voxel_m)],
        reg.RANSACConvergenceCriteria(200000, 0.999))
    M = np.asarray(res.transformation)
    u, _, vt = np.linalg.svd(M[:3, :3])
    R = u @ vt
    if np.linalg.det(R) < 0:
        raise RegistrationError("global registration returned a reflection")
    return Transform("target", "source", R, M[:3, 3]), float(res.fitness)


def register_lidars(frames: Sequence[tuple[np.ndarray, np.ndarray]], initial: Optional[Transform] = None,
                    params: IcpParams = IcpParams(), target_frame: str = "target",
                    source_frame: str = "source") -> RegistrationResult:
    """Extrinsic between two LiDARs from one or more pairs of simultaneous sweeps.

    Args:
        frames: (target_points, source_points) per frame: (N, >=3) and (M, >=3) x y z [m] in the target
            and source LiDAR frames, taken at the same instant (ideally deskewed). All frames share one
            extrinsic; their constraints are solved jointly.
        initial: ``target_from_source`` guess (e.g. from the rig); None runs :func:`global_registration`
            on the first frame. Its frame names, when given, name the result's frames.
        params: ICP settings.
        target_frame, source_frame: frame names of the result when ``initial`` is None.
    Returns:
        :class:`RegistrationResult`.
    Raises:
        RegistrationError when a cloud is too small or the problem is degenerate (a direction without
        constraints, e.g. a single flat wall).
    """
    if not frames:
        raise RegistrationError("register_lidars needs at least one frame")
    targets, sources = [], []
    for k, (tp, sp) in enumerate(frames):
        targets.append(_target(_prepare(tp, params, f"frame {k} target points"), params))
        sources.append(_prepare(sp, params, f"frame {k} source points"))
    if initial is None:
        guess, _ = global_registration(frames[0][0], frames[0][1])
        initial = Transform(target_frame, source_frame, guess.rotation, guess.translation)
    M = initial.matrix
    iterations = 0
    for gate in params.correspondence_m:
        # The kernel narrows with the gate: wide while the clouds are still far apart, down to robust_m.
        robust = max(params.robust_m, 0.5 * gate)
        for _ in range(params.max_iterations):
            H, g, n, _, _ = _normal_equations(targets, sources, M, gate, robust)
            if n < 6:
                raise RegistrationError(f"only {n} correspondences within {gate} m: the initial guess is too far off")
            delta = -np.linalg.solve(H + 1e-9 * np.eye(6), g)
            M = _exp_se3(delta) @ M
            iterations += 1
            if np.abs(delta).max() < params.tolerance:
                break
    final_robust = max(params.robust_m, 0.5 * params.correspondence_m[-1])
    H, _, n, per, cluster_g = _normal_equations(targets, sources, M, params.correspondence_m[-1], final_robust,
                                                params.cluster_m)
    ev = np.linalg.eigvalsh(H)
    if ev[0] <= 1e-9 * ev[-1]:
        raise RegistrationError("registration is degenerate: some direction has no constraint "
                                f"(normal-matrix eigenvalues {ev.tolist()})")
    Hinv = np.linalg.inv(H)
    # Residuals of neighbouring points are not independent (they share a surface, its normal estimate
    # and whatever moved or was mis-seen there), so the plain sigma^2 H^-1 is far too optimistic. The
    # cluster-robust ("sandwich") covariance treats each cluster_m cell as one independent measurement.
    C = len(cluster_g)
    cov = Hinv @ (cluster_g.T @ cluster_g) @ Hinv * (C / max(C - 6, 1))
    cov = 0.5 * (cov + cov.T)
    u, _, vt = np.linalg.svd(M[:3, :3])
    T = Transform(initial.dst, initial.src, u @ vt, M[:3, 3])
    fits = tuple(FrameFit(nc / ns if ns else 0.0, float(np.sqrt(s / nc)) if nc else float("nan"), nc)
                 for ns, nc, s in per)
    n_src = sum(p[0] for p in per)
    rss = sum(p[2] for p in per)
    sd = np.sqrt(np.diag(cov))
    return RegistrationResult(T, n / n_src if n_src else 0.0, float(np.sqrt(rss / n)) if n else float("nan"),
                              n, cov, np.degrees(sd[:3]), sd[3:], fits, initial, iterations)


@dataclass(frozen=True, eq=False)
class LidarPairCalibration:
    """Result of :func:`calibrate_lidar_pair`.

    Args:
        registration: the ICP result (``target_from_source`` = reference_from_other).
        ego_from_other: the new mounting of the other LiDAR (the reference's mounting is kept).
        rig: the rig with ``ego_from_other`` replaced (write it with ``rig.save(path)`` when wanted).
        change_translation_m, change_rotation_deg: how far the new mounting is from the rig's.
    """

    registration: RegistrationResult
    ego_from_other: Transform
    rig: Rig
    change_translation_m: float
    change_rotation_deg: float


def calibrate_lidar_pair(rig: Rig, reference_id: str, other_id: str,
                         frames: Sequence[tuple[np.ndarray, np.ndarray]], use_rig_guess: bool = True,
                         params: IcpParams = IcpParams()) -> LidarPairCalibration:
    """Mounting of LiDAR ``other_id`` relative to LiDAR ``reference_id``, from simultaneous sweeps.

    Args:
        rig: the current rig; ``reference_id`` keeps its mounting.
        reference_id, other_id: LiDAR sensor ids in the rig.
        frames: (reference_points, other_points) per frame, each (N, >=3) x y z [m] in its own sensor
            frame (``LidarSweep.points`` of the two sensors at matching stamps).
        use_rig_guess: start from the rig's extrinsic; False starts from a global registration.
        params: ICP settings.
    """
    for sid in (reference_id, other_id):
        if rig[sid].kind != "lidar":
            raise RegistrationError(f"rig '{rig.name}': sensor '{sid}' is a {rig[sid].kind}, not a lidar")
    guess = rig.transform(reference_id, other_id) if use_rig_guess else None
    reg = register_lidars(frames, guess, params, reference_id, other_id)
    ego_from_other = rig.ego_from(reference_id) @ reg.target_from_source
    old = rig[other_id]
    new_rig = rig.replace_sensor(Sensor(old.sensor_id, old.kind, ego_from_other, old.camera, old.time_offset_ns,
                                        old.rate_hz, old.mic_positions))
    dt, dr = transform_error(ego_from_other, old.ego_from_sensor)
    return LidarPairCalibration(reg, ego_from_other, new_rig, dt, dr)


# ---------------------------------------------------------------------------------------------- LiDAR-radar
class RadarScanLike(Protocol):
    """What the radar calibration reads from a scan (``drivers.messages.RadarScan`` has it): per return
    ``range_m`` [m], ``azimuth`` [rad] CCW from the radar's +x, ``rcs`` [dBsm], all (N,)."""

    range_m: np.ndarray
    azimuth: np.ndarray
    rcs: np.ndarray


@dataclass(frozen=True)
class RadarTargetParams:
    """How LiDAR targets (corner reflectors on stands, posts) are found.

    Args:
        min_height_m: points at or below this height above the ground (ego z = 0) are ground [m].
        max_height_m: points above this are ignored (trees, signs overhead) [m].
        cell_m: bird's-eye grid cell [m]; occupied cells that touch (8-neighbourhood) form one cluster.
        max_size_m: largest footprint extent of a target [m] (walls and cars are larger).
        min_points: fewest LiDAR points on a target.
        isolation_m: no other occupied cell within this distance of a target's footprint [m], so a radar
            return near it cannot come from something else.
        max_range_m: targets farther than this from the ego origin are not used [m].
    """

    min_height_m: float = 0.25
    max_height_m: float = 3.0
    cell_m: float = 0.2
    max_size_m: float = 0.8
    min_points: int = 3
    isolation_m: float = 1.5
    max_range_m: float = 80.0


def lidar_targets(points_ego: np.ndarray, params: RadarTargetParams = RadarTargetParams()) -> np.ndarray:
    """Compact, isolated objects standing on the ground, from one LiDAR sweep.

    Args:
        points_ego: (N, >=3) x y z [m] in the ego frame (ground at z = 0).
        params: thresholds.
    Returns:
        (K, 3) float64 target centres [m] in the ego frame: mean x, y, z of each target's points.
    """
    P = _xyz(points_ego, "points_ego")
    keep = (P[:, 2] > params.min_height_m) & (P[:, 2] < params.max_height_m)
    keep &= np.hypot(P[:, 0], P[:, 1]) < params.max_range_m
    P = P[keep]
    if len(P) == 0:
        return np.zeros((0, 3))
    lim = params.max_range_m + params.isolation_m
    n_cells = int(np.ceil(2 * lim / params.cell_m))
    ij = np.floor((P[:, :2] + lim) / params.cell_m).astype(np.int64)
    grid = np.zeros((n_cells, n_cells), np.uint8)
    grid[ij[:, 1], ij[:, 0]] = 1
    n_lab, labels = cv2.connectedComponents(grid, connectivity=8)
    point_label = labels[ij[:, 1], ij[:, 0]]
    pad = int(np.ceil(params.isolation_m / params.cell_m))
    counts = np.bincount(point_label, minlength=n_lab)
    out = []
    for lab in range(1, n_lab):
        if counts[lab] < params.min_points:
            continue
        mine = point_label == lab
        Q = P[mine]
        if np.ptp(Q[:, 0]) > params.max_size_m or np.ptp(Q[:, 1]) > params.max_size_m:
            continue
        c = ij[mine]
        i0, j0 = c.min(axis=0) - pad
        i1, j1 = c.max(axis=0) + pad + 1
        window = labels[max(j0, 0):j1, max(i0, 0):i1]
        if np.any((window != 0) & (window != lab)):
            continue
        out.append(Q.mean(axis=0))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


@dataclass(frozen=True)
class RadarCalibParams:
    """LiDAR-radar calibration settings.

    Args:
        min_rcs_dbsm: radar returns weaker than this are not used (clutter, false alarms).
        gates_m: association gates [m], coarse to fine; a return is matched to the nearest target
            within the gate (distance in the ground plane at the return's measured range and azimuth).
        range_sigma_m, azimuth_sigma_deg: the radar's 1-sigma measurement noise, to weight residuals.
        robust: Huber threshold on the normalised residuals.
        max_iterations: Gauss-Newton iterations per gate.
        targets: how LiDAR targets are found.
    """

    min_rcs_dbsm: float = 0.0
    gates_m: tuple[float, ...] = (2.0, 1.0, 0.6)
    range_sigma_m: float = 0.15
    azimuth_sigma_deg: float = 1.0
    robust: float = 2.0
    max_iterations: int = 20
    targets: RadarTargetParams = RadarTargetParams()


@dataclass(frozen=True, eq=False)
class LidarRadarCalibration:
    """Result of :func:`calibrate_lidar_radar`.

    Args:
        ego_from_radar: the estimate: x, y, yaw solved; z, roll, pitch as in the prior.
        delta_xy_m: (2,) change of the radar position from the prior, ego x y [m].
        delta_yaw_deg: change of yaw from the prior [deg].
        covariance: (3, 3) over (x [m], y [m], yaw [rad]).
        sigma_xy_m: (2,) 1-sigma [m]; sigma_yaw_deg: 1-sigma [deg].
        n_matches: radar returns matched to a LiDAR target; n_returns: returns above the RCS threshold;
            n_targets: LiDAR targets over all frames.
        range_residual_rms_m, azimuth_residual_rms_deg: RMS residuals of the matched returns.
        range_residuals_m, azimuth_residuals_deg: (n_matches,) per matched return.
    """

    ego_from_radar: Transform
    delta_xy_m: np.ndarray
    delta_yaw_deg: float
    covariance: np.ndarray
    sigma_xy_m: np.ndarray
    sigma_yaw_deg: float
    n_matches: int
    n_returns: int
    n_targets: int
    range_residual_rms_m: float
    azimuth_residual_rms_deg: float
    range_residuals_m: np.ndarray
    azimuth_residuals_deg: np.ndarray

    def report(self) -> str:
        """A few lines for a person."""
        T = self.ego_from_radar
        return "\n".join([
            T.report_line(),
            f"change from prior: dx {self.delta_xy_m[0] * 100:+.2f} cm, dy {self.delta_xy_m[1] * 100:+.2f} cm, "
            f"dyaw {self.delta_yaw_deg:+.3f} deg",
            f"1-sigma: x {self.sigma_xy_m[0] * 100:.2f} cm, y {self.sigma_xy_m[1] * 100:.2f} cm, "
            f"yaw {self.sigma_yaw_deg:.3f} deg",
            f"{self.n_matches} of {self.n_returns} strong returns matched to {self.n_targets} LiDAR targets; "
            f"RMS residual range {self.range_residual_rms_m * 100:.1f} cm, azimuth {self.azimuth_residual_rms_deg:.2f} deg",
        ])


def _planar_pose(prior: Transform, theta: np.ndarray) -> Transform:
    """The prior moved by (dx, dy) in the ego plane and turned by dyaw about ego z."""
    c, s = np.cos(theta[2]), np.sin(theta[2])
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Transform(prior.dst, prior.src, Rz @ prior.rotation, prior.translation + np.array([theta[0], theta[1], 0.0]))


def _predict(prior: Transform, theta: np.ndarray, targets_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Range [m] and azimuth [rad] at which the radar posed at theta sees each target."""
    p = _planar_pose(prior, theta).inverse().apply(targets_ego)
    return np.linalg.norm(p, axis=1), np.arctan2(p[:, 1], p[:, 0])


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def calibrate_lidar_radar(frames: Sequence[tuple[np.ndarray, RadarScanLike]], ego_from_lidar: Transform,
                          ego_from_radar_prior: Transform,
                          params: RadarCalibParams = RadarCalibParams()) -> LidarRadarCalibration:
    """Planar extrinsic (x, y, yaw) of a radar from targets that both sensors see.

    Each frame pairs a LiDAR sweep with a radar scan of the same static scene (one sweep may be paired
    with many scans; its targets are found once). Radar returns with ``rcs >= min_rcs_dbsm`` are
    matched to the nearest LiDAR target within a gate; (x, y, yaw) minimise the Huber-weighted range and
    azimuth residuals, each divided by its noise sigma; matching and solving alternate while the gate
    shrinks. A target's height comes from the LiDAR, the radar's from the prior, so the predicted range is
    the full 3D distance although the radar's elevation is not used.

    Args:
        frames: (lidar_points, radar_scan): (N, >=3) x y z [m] in the LiDAR frame, and a scan with
            ``range_m``, ``azimuth``, ``rcs`` (``drivers.messages.RadarScan``).
        ego_from_lidar: the LiDAR's mounting (trusted).
        ego_from_radar_prior: the radar's mounting from the rig; its z, roll and pitch are kept.
        params: settings.
    Raises:
        RegistrationError when there are no LiDAR targets, too few matches, or targets in too few
        directions to fix yaw and position.
    """
    if not frames:
        raise RegistrationError("calibrate_lidar_radar needs at least one frame")
    if ego_from_lidar.dst != EGO_FRAME or ego_from_radar_prior.dst != EGO_FRAME:
        raise RegistrationError(f"expected ego_from_<sensor> transforms, got {ego_from_lidar.name} and "
                                f"{ego_from_radar_prior.name}")
    # One LiDAR sweep may be paired with many scans: its targets are found once. Each target gets a global
    # id (offset of its sweep + index), which groups the returns for the uncertainty estimate.
    cache: dict[int, tuple[np.ndarray, int]] = {}
    tgt_list, base_list, rng_list, az_list, n_targets = [], [], [], [], 0
    for k, (lidar_points, scan) in enumerate(frames):
        key = id(lidar_points)
        if key not in cache:
            found = lidar_targets(ego_from_lidar.apply(_xyz(lidar_points, f"frame {k} lidar points")), params.targets)
            cache[key] = (found, n_targets)
            n_targets += len(found)
        r = np.asarray(scan.range_m, dtype=np.float64).reshape(-1)
        a = np.asarray(scan.azimuth, dtype=np.float64).reshape(-1)
        rcs = np.asarray(scan.rcs, dtype=np.float64).reshape(-1)
        if not (len(r) == len(a) == len(rcs)):
            raise RegistrationError(f"frame {k}: radar range, azimuth and rcs lengths differ: "
                                    f"{len(r)}, {len(a)}, {len(rcs)}")
        strong = (rcs >= params.min_rcs_dbsm) & np.isfinite(r) & np.isfinite(a)
        tgt_list.append(cache[key][0])
        base_list.append(cache[key][1])
        rng_list.append(r[strong])
        az_list.append(a[strong])
    if n_targets == 0:
        raise RegistrationError("no LiDAR targets found (compact objects standing alone above the ground)")
    n_returns = int(sum(len(r) for r in rng_list))
    sig_a = np.radians(params.azimuth_sigma_deg)

    def associate(theta: np.ndarray, gate: float):
        """Matched (measured range, measured azimuth, target centre, target id) over all frames."""
        mr, ma, mt, mid = [], [], [], []
        radar_from_ego = _planar_pose(ego_from_radar_prior, theta).inverse()
        for tg, base, r, a in zip(tgt_list, base_list, rng_list, az_list):
            if len(tg) == 0 or len(r) == 0:
                continue
            pt = radar_from_ego.apply(tg)
            # The return as a point in the radar's horizontal plane vs each target's horizontal position.
            ret = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
            d = np.linalg.norm(ret[:, None, :] - pt[None, :, :2], axis=2)
            j = np.argmin(d, axis=1)
            ok = d[np.arange(len(r)), j] < gate
            mr.append(r[ok])
            ma.append(a[ok])
            mt.append(tg[j[ok]])
            mid.append(base + j[ok])
        if not mr:
            return np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros(0, np.int64)
        return np.concatenate(mr), np.concatenate(ma), np.concatenate(mt, axis=0), np.concatenate(mid)

    def residuals(theta: np.ndarray, mr, ma, mt) -> np.ndarray:
        """Range residuals then azimuth residuals, each in units of its sigma."""
        pr, pa = _predict(ego_from_radar_prior, theta, mt)
        return np.concatenate([(mr - pr) / params.range_sigma_m, _wrap(ma - pa) / sig_a])

    def linearise(theta: np.ndarray, mr, ma, mt):
        """Residuals, numerical Jacobian (3 parameters: central differences) and Huber weights."""
        res = residuals(theta, mr, ma, mt)
        J = np.empty((len(res), 3))
        for i, h in enumerate((1e-4, 1e-4, 1e-6)):
            e = np.zeros(3)
            e[i] = h
            J[:, i] = (residuals(theta + e, mr, ma, mt) - residuals(theta - e, mr, ma, mt)) / (2 * h)
        a = np.abs(res)
        return res, J, np.where(a <= params.robust, 1.0, params.robust / np.maximum(a, 1e-12))

    theta = np.zeros(3)
    mr = ma = mt = mid = None
    for gate in params.gates_m:
        for _ in range(params.max_iterations):
            mr, ma, mt, mid = associate(theta, gate)
            if len(mr) < 3:
                raise RegistrationError(f"only {len(mr)} radar returns within {gate} m of a LiDAR target "
                                        f"({n_targets} targets, {n_returns} strong returns)")
            res, J, w = linearise(theta, mr, ma, mt)
            H = (J * w[:, None]).T @ J
            if np.linalg.cond(H) > 1e12:
                raise RegistrationError("radar targets do not fix x, y and yaw (all in one direction?)")
            step = -np.linalg.solve(H, (J * (w * res)[:, None]).sum(axis=0))
            theta = theta + step
            if np.abs(step).max() < 1e-7:
                break
    res, J, w = linearise(theta, mr, ma, mt)
    H = (J * w[:, None]).T @ J
    Hinv = np.linalg.inv(H)
    # All returns of one target share that target's LiDAR centre (a few cm off on a sparse cluster), so
    # they are not independent: cluster-robust ("sandwich") covariance with the targets as clusters.
    n = len(mr)
    per_res = J * (w * res)[:, None]
    cid = np.concatenate([mid, mid])
    n_clusters = len(np.unique(cid))
    gc = np.zeros((int(cid.max()) + 1, 3))
    np.add.at(gc, cid, per_res)
    cov = Hinv @ (gc.T @ gc) @ Hinv * (n_clusters / max(n_clusters - 3, 1))
    cov = 0.5 * (cov + cov.T)
    r_res = res[:n] * params.range_sigma_m
    a_res = np.degrees(res[n:] * sig_a)
    sd = np.sqrt(np.diag(cov))
    return LidarRadarCalibration(
        _planar_pose(ego_from_radar_prior, theta), theta[:2].copy(), float(np.degrees(theta[2])), cov,
        sd[:2].copy(), float(np.degrees(sd[2])), n, n_returns, n_targets,
        float(np.sqrt(np.mean(r_res ** 2))), float(np.sqrt(np.mean(a_res ** 2))), r_res, a_res,
    )


@dataclass(frozen=True, eq=False)
class RadarRigCalibration:
    """Result of :func:`calibrate_radar`: the estimate and the rig with the radar's new mounting."""

    result: LidarRadarCalibration
    rig: Rig


def calibrate_radar(rig: Rig, lidar_id: str, radar_id: str, frames: Sequence[tuple[np.ndarray, RadarScanLike]],
                    params: RadarCalibParams = RadarCalibParams()) -> RadarRigCalibration:
    """:func:`calibrate_lidar_radar` with both mountings taken from a rig, and the rig updated.

    Args:
        rig: the current rig; ``lidar_id`` (a LiDAR, trusted) and ``radar_id`` (a radar) must be in it.
        frames: (LiDAR points in the ``lidar_id`` frame, scan of ``radar_id``) pairs of a static scene.
        params: settings.
    Returns:
        the estimate and a new rig whose ``radar_id`` has the estimated mounting (save it with
        ``rig.save(path)`` when wanted).
    """
    for sid, kind in ((lidar_id, "lidar"), (radar_id, "radar")):
        if rig[sid].kind != kind:
            raise RegistrationError(f"rig '{rig.name}': sensor '{sid}' is a {rig[sid].kind}, not a {kind}")
    result = calibrate_lidar_radar(frames, rig.ego_from(lidar_id), rig.ego_from(radar_id), params)
    old = rig[radar_id]
    new_rig = rig.replace_sensor(Sensor(old.sensor_id, old.kind, result.ego_from_radar, old.camera,
                                        old.time_offset_ns, old.rate_hz, old.mic_positions))
    return RadarRigCalibration(result, new_rig)
