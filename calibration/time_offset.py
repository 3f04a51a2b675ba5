"""Sensor time offsets: camera-, LiDAR- and radar-IMU by correlating angular rates, microphone by a known sound.

Convention (as the rig's ``time_offset_ns``): an offset is *sensor clock minus reference clock*: an event
at reference time ``t`` is stamped ``t + offset`` by the sensor. For the rig, the reference is the IMU's
clock, so a calibrated sensor gets ``time_offset_ns = rig[imu].time_offset_ns + result.offset_ns``
(:func:`rig_with_time_offset`).

Typical use (what ``perception calibrate time-offset`` does)::

    cam_from_ego = rig.transform("cam_front", "ego").rotation
    rates = camera_angular_rates(cam_stamps_ns, images, rig["cam_front"].camera,
                                 up=cam_from_ego[:, 2], travel_direction=cam_from_ego[:, 0])
    result = offset_from_rates(rates, imu_stamps_ns, gyro, rig.transform("cam_front", "imu").rotation)
    rig_with_time_offset(rig, "cam_front", result, reference_id="imu").save("rig.yaml")

Rate correlation (:func:`offset_from_rates`). A sensor that sees the world move gives its own rotation
between two of its frames, i.e. its *mean* angular velocity over an interval ``[s_k, e_k]`` of its
clock. For a candidate offset ``tau``, the gyro says the same mean rate is the integral of the gyro
(rotated into the sensor frame) over ``[s_k - tau, e_k - tau]`` divided by the interval's length, which
is exact for any motion, so no resampling error enters. The offset is the ``tau`` that maximises the
Pearson correlation of the two sequences (all three axes stacked, each axis' mean removed, which also
removes the gyro bias). The correlation is scanned on a ``step_ns`` grid over ``+- max_offset_ns``, the
peak refined by a parabola through its neighbours; intervals that misfit grossly (a failed registration)
are dropped once and the scan repeated. The 1-sigma uncertainty is the larger of the white-noise
figure from linearising the fit ``sensor ~ a * gyro(tau) + b`` around the peak,
``sigma_tau = sigma_res / (|a| * ||d gyro / d tau||)``, and a delete-one-block jackknife over 10
contiguous blocks of intervals (neighbouring intervals share features and scenery, so their errors are
not independent, and the white-noise figure alone was 2-4 times too small on the simulated drives). Without the sensor-from-IMU rotation the magnitudes of the two rates are correlated.
Timing information comes from changes of the rotation rate: drive a winding road (or weave) for
10-20 s; a straight drive raises TimeOffsetError.

Camera rotation per frame pair (:func:`camera_angular_rates`): Shi-Tomasi corners tracked by pyramidal
Lucas-Kanade (kept when the backward track returns within 0.2 px), turned into rays by the camera model
(pinhole or fisheye). Three things keep the rotation honest on a moving vehicle:

* Translation: a rotation-only fit absorbs the flow that the vehicle's translation causes, a bias that
  follows the scenery. So the epipolar constraint ``b . (t x R a) = 0`` is used, with one direction of
  travel ``t`` for the whole sequence (per pair it would trade yaw against sideways translation, the
  bas-relief ambiguity of a narrow view). ``t`` starts from ``travel_direction`` (e.g. the ego x axis
  in the camera frame, from the rig) or from the pairs' essential matrices, and is refined on all
  pairs together: 1 deg of error in ``t`` turns the parallax of a nearby building into a rotation error
  as large as the signal. (The lever-arm side-slip of a camera ahead of the rear axle tilts the true
  ``t`` in proportion to the yaw rate: a scale error, which the correlation ignores.)
* Near points: each track is weighted by ``1 / (1 + (parallax / 1 px)^2)`` (its displacement left after
  removing the rotation): near surfaces shear and change scale between frames and track worse, while
  distant points pin the rotation. The losses are robust (soft-L1, then Cauchy; 0.5 and 0.3 px scales)
  against moving objects.
* The road surface: with ``up`` given (the ego z axis in the camera frame), tracks more than
  ``below_horizon_deg`` below the horizon are not used. Road texture is low-contrast, seen at grazing
  angles and close by; on the simulated rig its tracks lag the true motion by tens of milliseconds
  (measured against the renderer's depth), enough to bias the offset by several milliseconds.

LiDAR rotation per sweep pair (:func:`lidar_angular_rates`): point-to-plane ICP (Open3D, Tukey loss
against moving objects) between consecutive raw (not deskewed) sweeps, voxel-averaged, optionally
without the ground. A sweep is collected over a whole revolution, so the rotation between two raw
sweeps is the motion between the times at which the geometry that pins the yaw was scanned: each
correspondence saw the motion between its two points' times, and the ICP yaw is a linear combination
of the correspondences (the yaw row of the least-squares solution), so the interval ends are the
points' times averaged with each correspondence's share of the yaw. (Taking the mid-sweep times instead
is off by up to 20 ms when the structure is on one side.)

Radar yaw rate per scan (:func:`radar_angular_rates`): the static world's returns read
``doppler_i = -(v . u_i)`` (positive = receding), with ``u_i`` the unit direction to return ``i`` and ``v``
the radar's velocity over ground. Per scan, RANSAC over pairs of returns then least squares on the
inliers (:func:`radar_static_velocity`; moving objects and false alarms are the outliers) gives ``v`` in
the ego's horizontal plane (directions turned into the ego frame with the rig's rotation; ``v_z = 0``
for a ground vehicle). With the ego origin under the rear axle, where a car does not slip sideways,
the radar at lever arm ``(r_x, r_y)`` moves with ``v_y = omega r_x`` and ``v_x = v - omega r_y``, so
``omega = v_y / r_x``: one yaw rate per scan, at the scan's stamp, correlated with the gyro's rate about
the ego z axis alone (``offset_from_rates(..., axes=(2,))``). A scan with fewer than ``min_static``
static returns, or with all of them in one direction, is skipped and counted (``samples_skipped``).
The precision is set by the Doppler noise: on the simulated radar (0.1 m/s, 1 deg, ~20 returns per
scan, 3.7 m ahead of the axle) the yaw rate is good to about 0.02 rad/s per scan, so 15 s of the
default weave leave 3-10 ms (1 sigma); a 60 s drive on a tighter weave (20-35 m curves) gets 1-3 ms.

Microphone (:func:`microphone_time_offset`): matched filtering (FFT cross-correlation) of each channel
with the known emitted waveform, a parabola through the peak, minus the propagation delay from the
known source position to each microphone (speed of sound 343 m/s); the offset is the median over
channels, its uncertainty the channels' spread (or a 1/10-sample floor for a single channel). Its reference
is the clock of the emission stamp, not the IMU: ``perception calibrate time-offset --sensor <microphone>``
takes that to be the rig's reference clock and writes the result as is
(``rig_with_time_offset(rig, mic_id, result, reference_id=None)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.intrinsics import CalibrationError
from calibration.rig import EGO_FRAME, Rig, RigError
from calibration.transform import Transform

SPEED_OF_SOUND_MPS = 343.0
MIN_INTERVALS = 20
MAX_OUTLIER_FRACTION = 0.1
JACKKNIFE_BLOCKS = 10
PARALLAX_PX = 1.0  # tracks whose parallax is this many pixels get half weight in the camera rotation


class TimeOffsetError(CalibrationError):
    """A time offset could not be estimated; the message says why."""


@dataclass(frozen=True, eq=False)
class IntervalRates:
    """A sensor's mean angular velocity over consecutive intervals of its own clock.

    Args:
        start_ns, end_ns: (K,) int64 interval ends [ns], sensor clock.
        omega: (K, 3) float64 mean angular velocity [rad/s] over each interval, in the sensor frame
            (the sensor's rotation rate, as a gyro fixed to it would read).
        support: (K,) int64 how many measurements back each interval (tracked features, ICP
            correspondences); 0 where the interval is unusable (its omega is NaN).
    """

    start_ns: np.ndarray
    end_ns: np.ndarray
    omega: np.ndarray
    support: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.start_ns)
        if not (len(self.end_ns) == k and np.shape(self.omega) == (k, 3) and len(self.support) == k):
            raise ValueError(f"IntervalRates: inconsistent shapes start {np.shape(self.start_ns)}, end "
                             f"{np.shape(self.end_ns)}, omega {np.shape(self.omega)}, support {np.shape(self.support)}")

    @property
    def valid(self) -> np.ndarray:
        """(K,) bool, the interval has a usable rate."""
        return (self.support > 0) & np.all(np.isfinite(self.omega), axis=1) & (self.end_ns > self.start_ns)


@dataclass(frozen=True, eq=False)
class TimeOffsetResult:
    """An estimated time offset.

    Args:
        offset_ns: sensor clock minus reference clock [ns].
        uncertainty_ns: 1-sigma uncertainty [ns].
        peak_correlation: correlation at the peak (Pearson, [-1, 1]; for audio the normalised
            matched-filter response of the best channel).
        samples_used: intervals (rate correlation) or audio channels (microphone) that entered.
        samples_skipped: intervals the sensor could not measure (too few tracked features, ICP
            correspondences or static radar returns: ``IntervalRates.valid`` false); they did not enter.
        lags_ns: (L,) int64 candidate offsets scanned [ns] (empty for audio).
        correlation: (L,) float64 correlation at each candidate offset (empty for audio).
    """

    offset_ns: int
    uncertainty_ns: int
    peak_correlation: float
    samples_used: int
    lags_ns: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    correlation: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    samples_skipped: int = 0

    def summary(self) -> str:
        """One line: offset, uncertainty, peak, samples (and the unusable ones skipped, if any)."""
        skipped = f" ({self.samples_skipped} unusable skipped)" if self.samples_skipped else ""
        return (f"offset {self.offset_ns / 1e6:+.3f} ms +- {self.uncertainty_ns / 1e6:.3f} ms (1 sigma), "
                f"peak correlation {self.peak_correlation:.3f}, {self.samples_used} samples{skipped}")


# ---------------------------------------------------------------------------------------------- correlation
def _as_stamps(stamps_ns, what: str) -> np.ndarray:
    s = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    if len(s) > 1 and np.any(np.diff(s) <= 0):
        i = int(np.argmax(np.diff(s) <= 0))
        raise TimeOffsetError(f"{what} stamps must increase: stamp {i + 1} ({s[i + 1]}) <= stamp {i} ({s[i]})")
    return s


def offset_from_rates(rates: IntervalRates, gyro_stamps_ns: np.ndarray, gyro: np.ndarray,
                      sensor_from_imu: np.ndarray | None = None, max_offset_ns: int = 200_000_000,
                      step_ns: int = 1_000_000, min_correlation: float = 0.5,
                      outlier_sigmas: float = 5.0, axes: Sequence[int] = (0, 1, 2)) -> TimeOffsetResult:
    """Offset of a sensor's clock against the IMU's, by correlating angular rates (module docstring).

    Args:
        rates: the sensor's interval rates (:func:`camera_angular_rates`, :func:`lidar_angular_rates`,
            :func:`radar_angular_rates`).
        gyro_stamps_ns: (N,) int IMU stamps [ns], increasing.
        gyro: (N, 3) float angular velocity [rad/s], IMU frame.
        sensor_from_imu: (3, 3) rotation from the IMU frame into the sensor frame (e.g.
            ``rig.transform(sensor, imu).rotation``); None correlates rate magnitudes instead.
        max_offset_ns: the offset is searched in [-max, +max].
        step_ns: scan step [ns]; the peak is refined below it.
        min_correlation: a peak below this is no evidence of a match (TimeOffsetError).
        outlier_sigmas: after a first scan, intervals whose rate misfits the gyro by more than this many
            robust sigmas (failed registrations, a passing truck filling the view) are dropped and the
            scan repeated.
        axes: the axes of the sensor frame that enter the correlation: all three for a sensor that sees
            its full rotation, ``(2,)`` for one that measures only the rate about its z axis (the radar's
            yaw rate, :func:`radar_angular_rates`). Ignored when ``sensor_from_imu`` is None.
    Returns:
        TimeOffsetResult (offset = sensor clock minus IMU clock).
    Raises:
        TimeOffsetError: too few usable intervals, IMU data that does not cover them, a weak or
            boundary peak (not enough rotation, or an offset beyond the search range).
    """
    gs = _as_stamps(gyro_stamps_ns, "IMU")
    g = np.asarray(gyro, dtype=np.float64)
    if g.shape != (len(gs), 3):
        raise TimeOffsetError(f"gyro must be (N, 3) with N = {len(gs)} stamps, got shape {g.shape}")
    if sensor_from_imu is not None:
        g = g @ np.asarray(sensor_from_imu, dtype=np.float64).reshape(3, 3).T
    ax = np.unique(np.asarray(axes, dtype=np.int64).reshape(-1))
    if len(ax) == 0 or ax.min() < 0 or ax.max() > 2:
        raise TimeOffsetError(f"axes must name some of the axes 0, 1, 2, got {tuple(axes)}")
    use = rates.valid
    skipped = int((~use).sum())
    if use.sum() < MIN_INTERVALS:
        raise TimeOffsetError(f"only {int(use.sum())} usable intervals of {len(use)}; need at least {MIN_INTERVALS}")
    # Keep the intervals that the IMU covers at every candidate offset.
    margin = max_offset_ns + step_ns
    use &= (rates.start_ns - margin >= gs[0]) & (rates.end_ns + margin <= gs[-1])
    if use.sum() < MIN_INTERVALS:
        raise TimeOffsetError(
            f"the IMU data ({(gs[-1] - gs[0]) / 1e9:.2f} s) covers only {int(use.sum())} usable intervals at offsets "
            f"up to +-{max_offset_ns / 1e6:.0f} ms; record IMU data beyond both ends of the sensor data")
    lags = np.arange(-max_offset_ns, max_offset_ns + 1, step_ns, dtype=np.int64)
    tg = (gs - gs[0]) / 1e9
    # Cumulative integral of the gyro (trapezoids), so any interval's mean rate is a difference.
    cum = np.concatenate([np.zeros((1, 3)), np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(tg)[:, None], axis=0)])
    s_all = (rates.start_ns - gs[0]) / 1e9
    e_all = (rates.end_ns - gs[0]) / 1e9

    def gyro_means(tau_s: float, idx: np.ndarray) -> np.ndarray:
        """(n, 3) gyro mean rates over the intervals idx moved by -tau to the IMU clock (or (n, 1) norms)."""
        s, e = s_all[idx] - tau_s, e_all[idx] - tau_s
        a = np.stack([np.interp(s, tg, cum[:, i]) for i in range(3)], axis=1)
        b = np.stack([np.interp(e, tg, cum[:, i]) for i in range(3)], axis=1)
        m = (b - a) / (e - s)[:, None]
        return m[:, ax] if sensor_from_imu is not None else np.linalg.norm(m, axis=1, keepdims=True)

    def sensor(idx: np.ndarray) -> np.ndarray:
        o = rates.omega[idx]
        return o[:, ax] if sensor_from_imu is not None else np.linalg.norm(o, axis=1, keepdims=True)

    def peak(idx: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, int, float, float]:
        """Correlation at every lag of grid [ns], the best lag's index, the parabola-refined peak
        (tau [s]) and the correlation there."""
        y = sensor(idx)
        y = (y - y.mean(axis=0)).ravel()
        ny = float(np.sqrt(y @ y))
        if ny == 0:
            raise TimeOffsetError("the sensor's angular rate never changes: no rotation to correlate")

        def corr(tau_s: float) -> float:
            x = gyro_means(tau_s, idx)
            x = (x - x.mean(axis=0)).ravel()
            nx = float(np.sqrt(x @ x))
            return float(x @ y) / (nx * ny) if nx > 0 else 0.0

        c = np.array([corr(lag / 1e9) for lag in grid])
        i = int(np.argmax(c))
        frac = 0.0
        if 0 < i < len(grid) - 1:
            y0, y1, y2 = c[i - 1], c[i], c[i + 1]
            den = y0 - 2 * y1 + y2
            frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
        tau = (grid[i] + frac * step_ns) / 1e9
        return c, i, tau, corr(tau)

    def scan(idx: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Correlation at every lag, the refined peak (tau [s]) and its correlation; raises when the
        peak is weak or on the edge of the search range."""
        c, i, tau, value = peak(idx, lags)
        if c[i] < min_correlation:
            raise TimeOffsetError(f"no clear correlation between the sensor's and the gyro's rates (best {c[i]:.2f} at "
                                  f"{lags[i] / 1e6:+.1f} ms, need {min_correlation}); is there enough rotation?")
        if i == 0 or i == len(lags) - 1:
            raise TimeOffsetError(f"the correlation peaks at the edge of the search range ({lags[i] / 1e6:+.0f} ms); "
                                  "widen max_offset_ns")
        return c, tau, value

    def fit(tau_s: float, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis fit sensor ~ a * gyro + b_axis at tau -> (residuals (n, k), coefficients)."""
        x, y = gyro_means(tau_s, idx), sensor(idx)
        k = x.shape[1]
        A = np.zeros((x.size, 1 + k))
        A[:, 0] = x.ravel()
        A[np.arange(x.size), 1 + np.tile(np.arange(k), len(x))] = 1.0
        coef, *_ = np.linalg.lstsq(A, y.ravel(), rcond=None)
        return (y.ravel() - A @ coef).reshape(-1, k), coef

    idx = np.flatnonzero(use)
    c, tau, best = scan(idx)
    res, _ = fit(tau, idx)
    worst = np.abs(res).max(axis=1)
    sigma = 1.4826 * np.median(np.abs(res)) + 1e-12
    # Drop the worst misfits beyond the threshold, but never more than MAX_OUTLIER_FRACTION of the
    # intervals: a misfit shared by many intervals is no outlier but a problem of the data (or a wrong
    # offset), and removing it would hide that.
    order = np.argsort(-worst)
    n_drop = min(int((worst > outlier_sigmas * sigma).sum()), int(MAX_OUTLIER_FRACTION * len(idx)))
    keep = np.ones(len(idx), dtype=bool)
    keep[order[:n_drop]] = False
    if n_drop and keep.sum() >= MIN_INTERVALS:
        idx = idx[keep]
        c, tau, best = scan(idx)
    # Uncertainty, white-noise part: linearise sensor ~ a * gyro(tau) + b around the peak.
    res, coef = fit(tau, idx)
    dof = max(res.size - 1 - res.shape[1] - 1, 1)
    sig = float(np.sqrt(np.sum(res ** 2) / dof))
    h = step_ns / 1e9
    dx = ((gyro_means(tau + h, idx) - gyro_means(tau - h, idx)) / (2 * h)).ravel()
    info = float(coef[0] ** 2 * (dx @ dx))
    unc = sig / np.sqrt(info) if info > 0 else 1.0
    # Errors of neighbouring intervals are correlated (shared features and scenery, ICP drift), which
    # the white-noise figure ignores: a delete-one-block jackknife over contiguous blocks of intervals
    # sees them. The larger of the two is reported.
    blocks = np.array_split(np.arange(len(idx)), JACKKNIFE_BLOCKS)
    near = lags[np.abs(lags - tau * 1e9) <= 50 * step_ns]
    taus = np.array([peak(np.delete(idx, blk), near)[2] for blk in blocks])
    jack = float(np.sqrt((len(blocks) - 1) / len(blocks) * np.sum((taus - taus.mean()) ** 2)))
    unc = max(unc, jack)
    return TimeOffsetResult(int(round(tau * 1e9)), int(round(min(unc, 1.0) * 1e9)), best, len(idx), lags, c,
                            skipped)


# ---------------------------------------------------------------------------------------------- camera
def _kabsch(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Rotation R minimising sum w |b - R a|^2 for (N, 3) unit vectors."""
    H = (a * (1.0 if w is None else w[:, None])).T @ b
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    return Vt.T @ D @ U.T


def _rotvec(R: np.ndarray) -> np.ndarray:
    r, _ = cv2.Rodrigues(np.asarray(R, dtype=np.float64))
    return r.ravel()


def _expm(w: np.ndarray) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(w, dtype=np.float64).reshape(3, 1))
    return R


def _rotation_with_direction(a: np.ndarray, b: np.ndarray, t: np.ndarray, R0: np.ndarray, scale: float,
                             loss: str, weights: np.ndarray | None = None, iterations: int = 20) -> np.ndarray:
    """R minimising the robust Sampson error of ``b . (t x R a) = 0`` for a fixed unit ``t``.

    a, b: (N, 3) rays with z = 1 in the first and second frame; scale: loss scale on the z = 1 plane;
    loss: "soft_l1" or "cauchy"; weights: (N,) per-track weights or None. Gauss-Newton on
    R = exp(w) R0: with a' = R a, the residual's derivative along w is (t . a') b - (b . a') t."""
    R = R0
    for _ in range(iterations):
        ap = a @ R.T
        ta = np.cross(t, ap)  # E a
        tb = np.cross(t, b) @ R  # -(E^T b)
        e = np.einsum("ij,ij->i", b, ta)
        den = np.sqrt(ta[:, 0] ** 2 + ta[:, 1] ** 2 + tb[:, 0] ** 2 + tb[:, 1] ** 2) + 1e-15
        r = e / den
        J = ((ap @ t)[:, None] * b - np.einsum("ij,ij->i", b, ap)[:, None] * t) / den[:, None]
        z = (r / scale) ** 2
        w = 1.0 / np.sqrt(1.0 + z) if loss == "soft_l1" else 1.0 / (1.0 + z)
        if weights is not None:
            w = w * weights
        A = J.T @ (J * w[:, None]) + 1e-12 * np.eye(3)
        step = -np.linalg.solve(A, J.T @ (w * r))
        R = _expm(step) @ R
        if np.abs(step).max() < 1e-10:
            break
    return R


def _camera_rotation(a: np.ndarray, b: np.ndarray, direction: np.ndarray | None, fx: float) -> np.ndarray:
    """Rotation R_(2 <- 1) between two frames from tracked rays a -> b ((N, 3), z = 1).

    Rotation-only fit (Kabsch) first; with a direction of travel, then the epipolar fit with a soft-L1
    and a Cauchy loss (0.5 and 0.3 px), and finally the same with each track weighted by
    1 / (1 + (parallax / PARALLAX_PX)^2), its displacement [px] left after removing the rotation: near
    points (the road just ahead) have large parallax, and their image patches shear and change scale
    between frames, so they track worse; distant points pin the rotation."""
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    R = _kabsch(an, bn)
    if direction is None:
        return R
    R = _rotation_with_direction(a, b, direction, R, 0.5 / fx, "soft_l1")
    R = _rotation_with_direction(a, b, direction, R, 0.3 / fx, "cauchy")
    _, _, parallax = _epipolar_terms(a, b, R, direction)
    return _rotation_with_direction(a, b, direction, R, 0.3 / fx, "cauchy",
                                    1.0 / (1.0 + (parallax * fx / PARALLAX_PX) ** 2))


def _epipolar_terms(a: np.ndarray, b: np.ndarray, R: np.ndarray, t: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampson residuals of b . (t x R a) = 0 (z = 1 plane units), their derivative along t (N, 3),
    and each track's parallax (displacement after removing R) on the z = 1 plane."""
    ap = a @ R.T
    ta = np.cross(t, ap)
    tb = np.cross(t, b) @ R
    den = np.sqrt(ta[:, 0] ** 2 + ta[:, 1] ** 2 + tb[:, 0] ** 2 + tb[:, 1] ** 2) + 1e-15
    r = np.einsum("ij,ij->i", b, ta) / den
    parallax = np.linalg.norm(b[:, :2] - ap[:, :2] / ap[:, 2:], axis=1)
    return r, np.cross(ap, b) / den[:, None], parallax


def _travel_direction(tracks: Sequence[tuple[np.ndarray, np.ndarray]], fx: float, initial: np.ndarray | None,
                      rounds: int = 4) -> np.ndarray | None:
    """The camera's direction of travel (unit (3,), camera frame, sign-free), shared by all frame pairs.

    Starts from ``initial`` or, without one, from the dominant axis of the pairs' essential-matrix
    translations (``cv2.findEssentialMat`` + ``cv2.recoverPose``); then alternates between each pair's
    rotation for the current direction (:func:`_camera_rotation`) and a Gauss-Newton step of the
    direction on all pairs' robust, parallax-weighted Sampson residuals together. An error of 1 deg in
    the direction turns the parallax of near objects into rotation errors of the order of the signal,
    so the direction is estimated from everything rather than from one pair."""
    if not tracks:
        return None
    if initial is None:
        scatter = np.zeros((3, 3))
        for a, b in tracks:
            E, mask = cv2.findEssentialMat(a[:, :2], b[:, :2], np.eye(3), cv2.RANSAC, 0.999, 0.5 / fx)
            if E is None or E.shape != (3, 3):
                continue
            n, _, t, _ = cv2.recoverPose(E, a[:, :2], b[:, :2], np.eye(3), mask=mask)
            if n >= 8:
                t = t.ravel() / np.linalg.norm(t)
                scatter += np.outer(t, t)
        evals, evecs = np.linalg.eigh(scatter)
        if evals[-1] <= 0:
            return None
        t = evecs[:, -1]
    else:
        t = np.asarray(initial, dtype=np.float64).reshape(3)
        t = t / np.linalg.norm(t)
    scale = 0.3 / fx
    for _ in range(rounds):
        u = np.cross(t, [1.0, 0.0, 0.0] if abs(t[0]) < 0.9 else [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(t, u)
        A = np.zeros((2, 2))
        g = np.zeros(2)
        for a, b in tracks:
            R = _camera_rotation(a, b, t, fx)
            r, dt, par = _epipolar_terms(a, b, R, t)
            w = 1.0 / (1.0 + (r / scale) ** 2) / (1.0 + (par * fx / PARALLAX_PX) ** 2)
            J = np.column_stack([dt @ u, dt @ v])
            A += J.T @ (J * w[:, None])
            g += J.T @ (w * r)
        step = -np.linalg.solve(A + 1e-12 * np.eye(2), g)
        t = t + step[0] * u + step[1] * v
        t /= np.linalg.norm(t)
        if np.abs(step).max() < 1e-6:
            break
    return t


def _track(prev: np.ndarray, cur: np.ndarray, max_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``prev`` tracked into ``cur`` (both (H, W) uint8) -> (p0, p1), (M, 2) float64 [px]."""
    p0 = cv2.goodFeaturesToTrack(prev, max_features, 0.001, 5)
    if p0 is None or len(p0) < 8:
        return np.zeros((0, 2)), np.zeros((0, 2))
    lk = dict(winSize=(21, 21), maxLevel=3,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, s1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)
    pb, sb, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **lk)
    ok = (s1.ravel() == 1) & (sb.ravel() == 1) & (np.linalg.norm((pb - p0).reshape(-1, 2), axis=1) < 0.2)
    return p0.reshape(-1, 2)[ok].astype(np.float64), p1.reshape(-1, 2)[ok].astype(np.float64)


def camera_angular_rates(stamps_ns: Sequence[int], images: Sequence[np.ndarray], camera: CameraModel,
                         up: np.ndarray | None = None, travel_direction: np.ndarray | None = None,
                         below_horizon_deg: float = 2.0,
                         max_features: int = 600, min_tracks: int = 30) -> IntervalRates:
    """The camera's angular velocity between consecutive frames, from tracked features.

    Args:
        stamps_ns: (K,) frame stamps [ns] (camera clock, mid-exposure), increasing.
        images: K frames, (H, W, 3) uint8 RGB or (H, W) uint8, the camera's size.
        camera: intrinsics (pinhole or fisheye); reduce images and model together (``camera.scaled``)
            to save time (full resolution is about twice as precise).
        up: (3,) the ego frame's up axis in the camera frame (``rig.transform(cam, "ego").rotation[:, 2]``);
            tracks more than ``below_horizon_deg`` below the horizon (the road) are then left out.
            None uses every track.
        travel_direction: (3,) the direction the camera moves in, camera frame (the ego x axis:
            ``rig.transform(cam, "ego").rotation[:, 0]``), as the starting point of its estimate; None
            starts from the frame pairs' essential matrices.
        below_horizon_deg: see ``up``.
        max_features: corners detected per frame.
        min_tracks: a frame pair with fewer good tracks is marked unusable (support 0).
    Returns:
        IntervalRates with K - 1 intervals between consecutive frames, omega in the camera optical frame.
    Raises:
        TimeOffsetError: fewer than 3 frames, stamps that do not increase, or frames of the wrong size.
    """
    st = _as_stamps(stamps_ns, "camera")
    if len(st) != len(images):
        raise TimeOffsetError(f"got {len(st)} stamps but {len(images)} images")
    if len(st) < 3:
        raise TimeOffsetError(f"need at least 3 camera frames, got {len(st)}")
    tracks: list[tuple[np.ndarray, np.ndarray]] = []
    prev = None
    for k, img in enumerate(images):
        img = np.asarray(img)
        if img.shape[:2] != (camera.height, camera.width) or img.dtype != np.uint8:
            raise TimeOffsetError(f"frame {k} is {img.shape} {img.dtype}, expected ({camera.height}, "
                                  f"{camera.width}[, 3]) uint8 for this camera model")
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        if prev is not None:
            p0, p1 = _track(prev, gray, max_features)
            a, b = camera.unproject(p0), camera.unproject(p1)
            if up is not None:
                # The road surface: rays more than below_horizon_deg below the horizon (see docstring).
                u = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
                keep = (a @ u) / np.linalg.norm(a, axis=1) > -np.sin(np.radians(below_horizon_deg))
                a, b = a[keep], b[keep]
            tracks.append((a, b))
        prev = gray
    usable = [k for k, (a, _) in enumerate(tracks) if len(a) >= min_tracks]
    direction = _travel_direction([tracks[k] for k in usable], camera.fx, travel_direction)
    K = len(tracks)
    omega = np.full((K, 3), np.nan)
    support = np.zeros(K, dtype=np.int64)
    for k, (a, b) in enumerate(tracks):
        if len(a) < min_tracks:
            continue
        R = _camera_rotation(a, b, direction, camera.fx)
        # Bearings of a static point: b = R_(k+1 <- k) a = exp(-omega dt) a.
        omega[k] = -_rotvec(R) / ((st[k + 1] - st[k]) / 1e9)
        support[k] = len(a)
    return IntervalRates(st[:-1].copy(), st[1:].copy(), omega, support)


def _require_sensors(rig: Rig, *wanted: tuple[str, str]) -> None:
    """Raise TimeOffsetError unless every (sensor id, kind) pair is a sensor of that kind in the rig."""
    for sid, kind in wanted:
        if sid not in rig or rig[sid].kind != kind:
            raise TimeOffsetError(f"rig '{rig.name}' has no {kind} '{sid}' (has: {', '.join(rig.ids(kind)) or 'none'})")


def camera_imu_time_offset(rig: Rig, camera_id: str, imu_id: str, stamps_ns: Sequence[int],
                           images: Sequence[np.ndarray], gyro_stamps_ns: np.ndarray, gyro: np.ndarray,
                           max_offset_ns: int = 200_000_000) -> TimeOffsetResult:
    """Camera clock minus IMU clock, everything else taken from the rig.

    Args:
        rig: gives the camera's intrinsics, and its and the IMU's rotations (for the gyro in the camera
            frame, the horizon and the direction of travel).
        camera_id, imu_id: the sensors.
        stamps_ns, images: the camera's frames (K,) and K images; images may be a uniformly resized copy
            (the intrinsics are scaled to their size).
        gyro_stamps_ns, gyro: (N,) IMU stamps [ns] and (N, 3) angular velocity [rad/s], IMU frame.
        max_offset_ns: search range.
    Returns:
        TimeOffsetResult; ``offset_ns`` is camera clock minus IMU clock.
    Raises:
        TimeOffsetError: see :func:`camera_angular_rates` and :func:`offset_from_rates`; unknown sensors.
    """
    _require_sensors(rig, (camera_id, "camera"), (imu_id, "imu"))
    camera = rig[camera_id].camera
    if len(images):
        h, w = np.asarray(images[0]).shape[:2]
        if (w, h) != (camera.width, camera.height):
            camera = camera.scaled(w / camera.width, h / camera.height)
    cam_from_ego = rig.transform(camera_id, EGO_FRAME).rotation
    rates = camera_angular_rates(stamps_ns, images, camera, up=cam_from_ego[:, 2], travel_direction=cam_from_ego[:, 0])
    return offset_from_rates(rates, gyro_stamps_ns, gyro, rig.transform(camera_id, imu_id).rotation, max_offset_ns)


# ---------------------------------------------------------------------------------------------- LiDAR
def _voxel_mean(points: np.ndarray, times: np.ndarray, voxel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Average points (N, 3) and their times (N,) per voxel -> (M, 3), (M,)."""
    keys = np.floor(points / voxel_m).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    out = np.zeros((len(counts), 3))
    for i in range(3):
        out[:, i] = np.bincount(inv, weights=points[:, i]) / counts
    return out, np.bincount(inv, weights=times) / counts


def lidar_angular_rates(stamps_ns: Sequence[int], sweeps: Sequence[np.ndarray], time_offsets: Sequence[np.ndarray],
                        ground_z_m: float | None = None, voxel_m: float = 0.3, max_distance_m: float = 1.0,
                        min_correspondences: int = 200) -> IntervalRates:
    """The LiDAR's angular velocity between consecutive raw (not deskewed) sweeps, by ICP.

    Args:
        stamps_ns: (K,) sweep stamps [ns] (LiDAR clock, time of the last point), increasing.
        sweeps: K arrays (N_k, 3+) float [m], LiDAR frame (extra columns ignored).
        time_offsets: K arrays (N_k,) float [s], each point's time minus its sweep's stamp.
        ground_z_m: points below this z [m] in the LiDAR frame are dropped: the ground pins no yaw, costs
            time, and with it the simulated drives came out worse (one by 10 ms). For a level LiDAR
            ``-(mount height) + 0.5``; None keeps everything.
        voxel_m: voxel size of the averaging before ICP [m].
        max_distance_m: ICP correspondence distance [m].
        min_correspondences: a sweep pair with fewer ICP correspondences is unusable.
    Returns:
        IntervalRates with K - 1 intervals whose ends are the yaw-information-weighted mean point times
        of the sweeps (module docstring); omega in the LiDAR frame.
    Raises:
        TimeOffsetError: fewer than 3 sweeps, or inconsistent inputs.
    """
    import open3d as o3d  # lazy: heavy import

    st = _as_stamps(stamps_ns, "LiDAR")
    if not (len(st) == len(sweeps) == len(time_offsets)):
        raise TimeOffsetError(f"got {len(st)} stamps, {len(sweeps)} sweeps and {len(time_offsets)} time-offset arrays")
    if len(st) < 3:
        raise TimeOffsetError(f"need at least 3 LiDAR sweeps, got {len(st)}")
    reg = o3d.pipelines.registration
    clouds = []
    for k, (pts, dt) in enumerate(zip(sweeps, time_offsets)):
        P = np.asarray(pts, dtype=np.float64)
        T = np.asarray(dt, dtype=np.float64).reshape(-1)
        if P.ndim != 2 or P.shape[1] < 3 or len(T) != len(P):
            raise TimeOffsetError(f"sweep {k}: points {P.shape} and time offsets {T.shape} do not match")
        keep = np.all(np.isfinite(P[:, :3]), axis=1)
        if ground_z_m is not None:
            keep &= P[:, 2] > ground_z_m
        xyz, times = _voxel_mean(P[keep, :3], T[keep], voxel_m)
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * voxel_m, max_nn=20))
        clouds.append((pc, times))
    K = len(st) - 1
    omega = np.full((K, 3), np.nan)
    support = np.zeros(K, dtype=np.int64)
    start = np.zeros(K, dtype=np.int64)
    end = np.zeros(K, dtype=np.int64)
    mid = st.astype(np.float64) + np.array([np.mean(c[1]) * 1e9 if len(c[1]) else 0.0 for c in clouds])
    init = np.eye(4)
    method = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=0.3))
    criteria = reg.ICPConvergenceCriteria(relative_fitness=1e-7, relative_rmse=1e-7, max_iteration=40)
    for k in range(K):
        src, tgt = clouds[k + 1], clouds[k]
        if len(src[1]) < min_correspondences or len(tgt[1]) < min_correspondences:
            continue
        # source = sweep k+1, target = sweep k: the result maps k+1's frame into k's, i.e.
        # R_(k <- k+1) = exp(omega dt).
        res = reg.registration_icp(src[0], tgt[0], max_distance_m, init, method, criteria)
        corr = np.asarray(res.correspondence_set)
        if len(corr) < min_correspondences:
            init = np.eye(4)
            continue
        T = np.asarray(res.transformation)
        # The interval this rotation spans. Each correspondence saw the motion between its two points'
        # times; the ICP yaw is a linear combination of the correspondences' residuals (the yaw row of
        # the least-squares solution), so each correspondence's share of the yaw is that row's
        # coefficient times its own yaw derivative. The interval ends are the points' times averaged
        # with these shares.
        p = np.asarray(src[0].points)[corr[:, 0]] @ T[:3, :3].T + T[:3, 3]
        n = np.asarray(tgt[0].normals)[corr[:, 1]]
        J = np.concatenate([np.cross(p, n), n], axis=1)
        rows = np.linalg.pinv(J.T @ J) @ J.T
        share = rows[2] * J[:, 2]
        if not abs(share.sum()) > 0.5:
            continue
        start[k] = st[k] + int(round(float(share @ tgt[1][corr[:, 1]] / share.sum()) * 1e9))
        end[k] = st[k + 1] + int(round(float(share @ src[1][corr[:, 0]] / share.sum()) * 1e9))
        if end[k] <= start[k]:
            continue
        omega[k] = _rotvec(T[:3, :3]) / ((end[k] - start[k]) / 1e9)
        support[k] = len(corr)
        init = T  # constant-velocity guess for the next pair
    # Unusable pairs keep nominal ends (sweep stamps plus the mean point time) for a readable result.
    bad = support == 0
    start[bad], end[bad] = np.round(mid[:-1][bad]).astype(np.int64), np.round(mid[1:][bad]).astype(np.int64)
    return IntervalRates(start, end, omega, support)


def lidar_imu_time_offset(rig: Rig, lidar_id: str, imu_id: str, stamps_ns: Sequence[int],
                          sweeps: Sequence[np.ndarray], time_offsets: Sequence[np.ndarray],
                          gyro_stamps_ns: np.ndarray, gyro: np.ndarray,
                          max_offset_ns: int = 200_000_000) -> TimeOffsetResult:
    """LiDAR clock minus IMU clock, everything else taken from the rig.

    Args:
        rig: gives the LiDAR's and the IMU's rotations (gyro into the LiDAR frame) and the LiDAR's
            height (for a level LiDAR, points lower than 0.5 m above the ground are dropped).
        lidar_id, imu_id: the sensors.
        stamps_ns, sweeps, time_offsets: the raw sweeps, as :func:`lidar_angular_rates` takes them.
        gyro_stamps_ns, gyro: (N,) IMU stamps [ns] and (N, 3) angular velocity [rad/s], IMU frame.
        max_offset_ns: search range.
    Returns:
        TimeOffsetResult; ``offset_ns`` is LiDAR clock minus IMU clock.
    Raises:
        TimeOffsetError: see :func:`lidar_angular_rates` and :func:`offset_from_rates`; unknown sensors.
    """
    _require_sensors(rig, (lidar_id, "lidar"), (imu_id, "imu"))
    T = rig.ego_from(lidar_id)
    level = T.rotation[2, 2] > 0.99
    ground_z = -float(T.translation[2]) + 0.5 if level and T.translation[2] > 0.5 else None
    rates = lidar_angular_rates(stamps_ns, sweeps, time_offsets, ground_z_m=ground_z)
    return offset_from_rates(rates, gyro_stamps_ns, gyro, rig.transform(lidar_id, imu_id).rotation, max_offset_ns)


# ---------------------------------------------------------------------------------------------- radar
def radar_static_velocity(directions: np.ndarray, radial_velocity: np.ndarray, inlier_mps: float = 0.4,
                          max_hypotheses: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's velocity over ground in the horizontal plane from the Doppler of static returns.

    A static point in the unit direction ``u`` reads ``radial_velocity = -(v . u)`` (positive =
    receding, as ``drivers.messages.RadarScan``), with ``v = (v_x, v_y, 0)`` the sensor's velocity over
    ground: a ground vehicle does not move up or down, and the few degrees of a radar's elevation field
    fix ``v_z`` poorly. RANSAC over pairs of returns (every pair when there are at most
    ``max_hypotheses``, else that many drawn with ``seed``), pairs closer than 3 deg in direction
    skipped; the hypothesis with most returns within ``inlier_mps`` wins (ties: smaller summed
    residual), then least squares on its inliers, re-selecting them, until the set settles. Moving
    objects and false alarms are the outliers.

    Args:
        directions: (N, 3) float unit directions to the returns, in the frame whose z axis is up (the
            ego frame: ``ego_from_radar.rotation @ u_radar``).
        radial_velocity: (N,) float [m/s], positive = receding.
        inlier_mps: largest Doppler misfit of a static return [m/s] (measurement noise and the azimuth
            error times the speed: about 0.2 m/s at 10 m/s for a 1 deg radar).
        max_hypotheses: most pairs tried.
        seed: random pairs when there are more than ``max_hypotheses``.
    Returns:
        (v (2,) float64 [m/s] x y velocity in the frame of ``directions``, or NaN when fewer than 2
        returns or no usable pair; inliers (N,) bool, the returns taken as static).
    """
    u = np.asarray(directions, dtype=np.float64).reshape(-1, 3)[:, :2]
    vr = np.asarray(radial_velocity, dtype=np.float64).reshape(-1)
    if len(vr) != len(u):
        raise TimeOffsetError(f"got {len(u)} directions but {len(vr)} radial velocities")
    finite = np.all(np.isfinite(u), axis=1) & np.isfinite(vr)
    none = np.full(2, np.nan), np.zeros(len(vr), dtype=bool)
    idx = np.flatnonzero(finite)
    n = len(idx)
    if n < 2:
        return none
    i, j = np.triu_indices(n, 1)
    if len(i) > max_hypotheses:
        pick = np.random.default_rng(seed).choice(len(i), max_hypotheses, replace=False)
        i, j = i[pick], j[pick]
    a, b = u[idx[i]], u[idx[j]]
    det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    ok = np.abs(det) > np.sin(np.radians(3.0)) * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not ok.any():
        return none
    a, b, det = a[ok], b[ok], det[ok]
    # Solve [a; b] v = -[vr_i; vr_j] for each pair (Cramer's rule).
    ra, rb = -vr[idx[i[ok]]], -vr[idx[j[ok]]]
    hyp = np.stack([(ra * b[:, 1] - rb * a[:, 1]) / det, (a[:, 0] * rb - b[:, 0] * ra) / det], axis=1)
    res = np.abs(u[idx] @ hyp.T + vr[idx, None])  # (n, H)
    within = res < inlier_mps
    count = within.sum(axis=0)
    cost = np.where(within, res, inlier_mps).sum(axis=0)
    best = int(np.lexsort((cost, -count))[0])
    inl = within[:, best]
    v = hyp[best]
    for _ in range(10):
        v_new, *_ = np.linalg.lstsq(u[idx][inl], -vr[idx][inl], rcond=None)
        new = np.abs(u[idx] @ v_new + vr[idx]) < inlier_mps
        v = v_new
        if np.array_equal(new, inl) or new.sum() < 2:
            break
        inl = new
    inliers = np.zeros(len(vr), dtype=bool)
    inliers[idx[inl]] = True
    return v, inliers


def radar_angular_rates(stamps_ns: Sequence[int], azimuths: Sequence[np.ndarray], elevations: Sequence[np.ndarray],
                        radial_velocities: Sequence[np.ndarray], ego_from_radar: Transform,
                        window_ns: int = 20_000_000, inlier_mps: float = 0.4, min_static: int = 6,
                        min_spread_deg: float = 5.0) -> IntervalRates:
    """The vehicle's yaw rate at each radar scan, from the Doppler of the static world.

    Per scan, :func:`radar_static_velocity` gives the radar's velocity over ground ``(v_x, v_y)`` in the ego
    frame. A ground vehicle with the ego origin under the rear axle does not slip sideways there, so a
    point at ``r = (r_x, r_y)`` (the radar's lever arm) moves with ``v_x = v - omega r_y`` and
    ``v_y = omega r_x``: the yaw rate is ``omega = v_y / r_x``.

    A scan is one instant (its stamp) while the Doppler is measured over a short coherent processing
    interval around it: each scan becomes an interval of ``window_ns`` centred on its stamp, whose mean
    yaw rate equals the rate at the stamp to second order (and the gyro's mean over it is smooth in the
    offset, which a mean over less than one IMU period is not).

    Args:
        stamps_ns: (K,) scan stamps [ns] (radar clock), increasing.
        azimuths, elevations, radial_velocities: K arrays (N_k,) float per return: azimuth [rad] CCW from
            the radar's +x, elevation [rad] up positive, radial velocity [m/s] positive = receding (as
            ``drivers.messages.RadarScan``).
        ego_from_radar: the radar's mounting (rig); its rotation turns the directions into the ego frame,
            its translation is the lever arm.
        window_ns: length of each scan's interval [ns].
        inlier_mps: Doppler misfit up to which a return counts as static [m/s].
        min_static: a scan with fewer static returns is unusable (support 0): too few to tell the
            static world from movers.
        min_spread_deg: a scan whose static returns' directions (ego x y) have an RMS angle about their
            main axis below this is unusable: returns all in one direction fix only the velocity along it.
    Returns:
        IntervalRates with K intervals ``[stamp - window/2, stamp + window/2]``, omega (K, 3) in the EGO
        frame ``(0, 0, yaw rate)`` [rad/s] (planar motion: only the z component is measured, so
        correlate that axis alone, ``offset_from_rates(..., axes=(2,))``), support = static returns.
    Raises:
        TimeOffsetError: inconsistent inputs, fewer than 3 scans, a transform not into the ego frame, or
            a radar less than 0.5 m ahead of (or behind) the rear axle, whose lateral velocity says
            nothing about the yaw rate.
    """
    st = _as_stamps(stamps_ns, "radar")
    if not (len(st) == len(azimuths) == len(elevations) == len(radial_velocities)):
        raise TimeOffsetError(f"got {len(st)} stamps, {len(azimuths)} azimuth, {len(elevations)} elevation and "
                              f"{len(radial_velocities)} radial-velocity arrays")
    if len(st) < 3:
        raise TimeOffsetError(f"need at least 3 radar scans, got {len(st)}")
    if ego_from_radar.dst != EGO_FRAME:
        raise TimeOffsetError(f"expected an ego_from_<radar> transform, got {ego_from_radar.name}")
    if window_ns <= 0:
        raise TimeOffsetError(f"window_ns must be > 0, got {window_ns}")
    r_x = float(ego_from_radar.translation[0])
    if abs(r_x) < 0.5:
        raise TimeOffsetError(f"the radar is {r_x:+.2f} m ahead of the rear axle (ego origin); its lateral velocity "
                              "gives the yaw rate only from 0.5 m on")
    R = ego_from_radar.rotation
    K = len(st)
    omega = np.full((K, 3), np.nan)
    support = np.zeros(K, dtype=np.int64)
    min_eig = np.sin(np.radians(min_spread_deg)) ** 2
    for k in range(K):
        az = np.asarray(azimuths[k], dtype=np.float64).reshape(-1)
        el = np.asarray(elevations[k], dtype=np.float64).reshape(-1)
        vr = np.asarray(radial_velocities[k], dtype=np.float64).reshape(-1)
        if not (len(az) == len(el) == len(vr)):
            raise TimeOffsetError(f"scan {k}: azimuth, elevation and radial velocity lengths differ: "
                                  f"{len(az)}, {len(el)}, {len(vr)}")
        if len(vr) < min_static:
            continue
        u = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1) @ R.T
        v, inliers = radar_static_velocity(u, vr, inlier_mps=inlier_mps, seed=k)
        n = int(inliers.sum())
        if n < min_static or not np.all(np.isfinite(v)):
            continue
        h = u[inliers, :2]
        # The directions' second moment: its smaller eigenvalue is sin^2 of their RMS angle about the
        # main axis, which is how well the velocity across that axis is fixed.
        if np.linalg.eigvalsh(h.T @ h / n)[0] < min_eig:
            continue
        omega[k] = (0.0, 0.0, v[1] / r_x)
        support[k] = n
    half = window_ns // 2
    return IntervalRates(st - half, st - half + window_ns, omega, support)


def radar_imu_time_offset(rig: Rig, radar_id: str, imu_id: str, stamps_ns: Sequence[int],
                          azimuths: Sequence[np.ndarray], elevations: Sequence[np.ndarray],
                          radial_velocities: Sequence[np.ndarray], gyro_stamps_ns: np.ndarray, gyro: np.ndarray,
                          max_offset_ns: int = 200_000_000, min_static: int = 6) -> TimeOffsetResult:
    """Radar clock minus IMU clock: the yaw rate from the static world's Doppler against the gyro's.

    Args:
        rig: gives the radar's mounting (directions into the ego frame, lever arm) and the IMU's rotation
            (gyro into the ego frame, whose z rate is compared).
        radar_id, imu_id: the sensors.
        stamps_ns, azimuths, elevations, radial_velocities: the scans, as :func:`radar_angular_rates`
            takes them (``RadarScan.stamp_ns``, ``.azimuth``, ``.elevation``, ``.radial_velocity``).
        gyro_stamps_ns, gyro: (N,) IMU stamps [ns] and (N, 3) angular velocity [rad/s], IMU frame.
        max_offset_ns: search range.
        min_static: a scan with fewer static returns is skipped (counted in ``samples_skipped``).
    Returns:
        TimeOffsetResult; ``offset_ns`` is radar clock minus IMU clock.
    Raises:
        TimeOffsetError: unknown sensors; fewer than MIN_INTERVALS scans with enough static returns;
            see :func:`radar_angular_rates` and :func:`offset_from_rates` (a drive without rotation).
    """
    _require_sensors(rig, (radar_id, "radar"), (imu_id, "imu"))
    rates = radar_angular_rates(stamps_ns, azimuths, elevations, radial_velocities, rig.ego_from(radar_id),
                                min_static=min_static)
    usable = int(rates.valid.sum())
    if usable < MIN_INTERVALS:
        raise TimeOffsetError(f"only {usable} of {len(rates.valid)} radar scans have {min_static} or more static "
                              f"returns spread across the view; need at least {MIN_INTERVALS} (a drive past "
                              "roadside structure: poles, walls, parked cars)")
    return offset_from_rates(rates, gyro_stamps_ns, gyro, rig.transform(EGO_FRAME, imu_id).rotation, max_offset_ns,
                             axes=(2,))


# ---------------------------------------------------------------------------------------------- audio
def microphone_time_offset(samples: np.ndarray, first_sample_stamp_ns: int, sample_rate: int, waveform: np.ndarray,
                           emission_ns: int, source_position: np.ndarray, mic_positions: np.ndarray,
                           speed_of_sound_mps: float = SPEED_OF_SOUND_MPS, min_peak: float = 0.3) -> TimeOffsetResult:
    """Microphone clock minus reference clock, from a sound emitted at a known time and place.

    Args:
        samples: (C, S) float audio, one row per microphone (or (S,) for one channel).
        first_sample_stamp_ns: stamp of sample 0 [ns], microphone clock.
        sample_rate: [Hz].
        waveform: (L,) float the emitted sound (click, chirp), sampled at ``sample_rate``; its first
            sample leaves the source at ``emission_ns``.
        emission_ns: emission time [ns], reference clock.
        source_position: (3,) [m] where the sound is emitted, in the frame of ``mic_positions``.
        mic_positions: (C, 3) [m] microphone positions (e.g. the rig's mic_positions mapped to the ego
            frame with ego_from_sensor).
        speed_of_sound_mps: [m/s].
        min_peak: a channel whose normalised matched-filter peak is below this did not hear the sound.
    Returns:
        TimeOffsetResult: median over the channels that heard it of (arrival stamp - propagation delay -
        emission); uncertainty = their spread / sqrt(n) (at least a tenth of a sample); samples_used =
        channels used.
    Raises:
        TimeOffsetError: bad shapes, a waveform longer than the audio, or no channel that heard it.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    w = np.asarray(waveform, dtype=np.float64).reshape(-1)
    mics = np.asarray(mic_positions, dtype=np.float64).reshape(-1, 3)
    if x.ndim != 2 or len(mics) != x.shape[0]:
        raise TimeOffsetError(f"samples {np.shape(samples)} must be (C, S) with C = {len(mics)} microphone positions")
    if sample_rate <= 0 or len(w) < 2 or len(w) > x.shape[1]:
        raise TimeOffsetError(f"need sample_rate > 0 and a waveform of 2..{x.shape[1]} samples, got {sample_rate} Hz, "
                              f"{len(w)} samples")
    n = x.shape[1] + len(w)
    nfft = 1 << int(np.ceil(np.log2(n)))
    W = np.conj(np.fft.rfft(w, nfft))
    energy_w = float(w @ w)
    # Sliding energy of the audio under the waveform, for the normalised response.
    c2 = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
    src = np.asarray(source_position, dtype=np.float64).reshape(3)
    offsets, peaks = [], []
    for ch in range(x.shape[0]):
        xc = np.fft.irfft(np.fft.rfft(x[ch], nfft) * W, nfft)[:x.shape[1] - len(w) + 1]
        e_x = c2[ch, len(w):] - c2[ch, :-len(w)]
        norm = xc / np.sqrt(np.maximum(e_x * energy_w, 1e-30))
        i = int(np.argmax(np.abs(norm)))
        peak = float(abs(norm[i]))
        if peak < min_peak:
            continue
        frac = 0.0
        if 0 < i < len(xc) - 1:
            y0, y1, y2 = np.abs(xc[i - 1]), np.abs(xc[i]), np.abs(xc[i + 1])
            den = y0 - 2 * y1 + y2
            frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
        arrival_ns = first_sample_stamp_ns + (i + frac) * 1e9 / sample_rate
        delay_ns = np.linalg.norm(mics[ch] - src) / speed_of_sound_mps * 1e9
        offsets.append(arrival_ns - delay_ns - emission_ns)
        peaks.append(peak)
    if not offsets:
        raise TimeOffsetError(f"no channel of {x.shape[0]} heard the sound (matched-filter peak below {min_peak})")
    off = np.asarray(offsets)
    floor = 0.1e9 / sample_rate
    unc = max(float(np.std(off, ddof=1) / np.sqrt(len(off))) if len(off) > 1 else 0.0, floor)
    return TimeOffsetResult(int(round(float(np.median(off)))), int(round(unc)), float(max(peaks)), len(off))


# ---------------------------------------------------------------------------------------------- the rig
def rig_with_time_offset(rig: Rig, sensor_id: str, result: TimeOffsetResult, reference_id: str | None = None) -> Rig:
    """``rig`` with ``sensor_id``'s ``time_offset_ns`` set from ``result``.

    Args:
        rig: the rig.
        sensor_id: the sensor whose offset was estimated.
        result: offset of that sensor's clock against the reference's.
        reference_id: the sensor whose clock was the reference (the IMU for rate correlation); its own
            rig offset is added. None: the reference is the rig's reference clock itself.
    Returns:
        A new Rig. Raises TimeOffsetError for unknown sensors.
    """
    for sid in (sensor_id, reference_id):
        if sid is not None and sid not in rig:
            raise TimeOffsetError(f"rig '{rig.name}' has no sensor '{sid}' (has: {', '.join(rig.ids())})")
    base = rig[reference_id].time_offset_ns if reference_id is not None else 0
    try:
        return rig.replace_sensor(dataclasses.replace(rig[sensor_id], time_offset_ns=int(base + result.offset_ns)))
    except RigError as e:
        raise TimeOffsetError(f"cannot update rig: {e}") from e
