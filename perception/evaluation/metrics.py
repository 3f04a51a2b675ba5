"""Detection accuracy: the nuScenes detection protocol (mAP, TP errors, NDS) on results files.

This is the algorithm of the nuScenes devkit (``nuscenes/eval/detection/algo.py``, ``data_classes.py``,
``evaluate.py`` and the ``detection_cvpr_2019`` config), reimplemented on our struct-of-arrays frames and
checked against the devkit's own functions in ``tests/perception/test_evaluation_devkit.py``. Step by step:

1. **Frames.** Every ground-truth line is one evaluated frame (the devkit's sample). A ground-truth frame
   with no prediction line counts as a frame where nothing was detected (its objects are misses): a
   real-time system that drops a frame loses that recall. The count is logged and reported. A prediction
   line whose ``stamp_ns`` has no ground-truth line is an :class:`EvaluationError`: there is nothing to
   score it against, and it usually means the two files do not belong together (the devkit likewise
   refuses sample sets that differ). More than ``max_boxes_per_frame`` predictions in one frame is an
   error, as in the devkit.
   Several runs evaluated as one set (:func:`evaluate_many`) identify a frame by (run, ``stamp_ns``),
   so runs whose stamps collide stay apart.
2. **Labels.** A prediction label that is not an evaluated class is an error (the devkit asserts on
   unknown detection names). A ground-truth label that is not an evaluated class is skipped, counted and
   logged (the devkit's ground-truth loader drops categories outside the detection classes).
3. **Filter** (devkit ``filter_eval_boxes``), for predictions and ground truth alike: keep a box when its
   distance from the ego origin in the ground plane, ``sqrt(x^2 + y^2)``, is ``< range_m`` of its class,
   then drop boxes whose ``num_points`` is exactly 0 (-1 = not given, kept). The devkit's bike-rack
   filter has no counterpart: our data has no bike-rack annotations.
4. **Match** (devkit ``accumulate``), per class and distance threshold: predictions of the class across
   all frames are sorted by descending score; ties go to the prediction that comes **later** in the
   prediction file (the devkit sorts ``(score, index)`` pairs ascending and reverses the list). Each
   prediction takes the nearest not-yet-matched ground-truth box of its class in its frame (centre
   distance in the ground plane; on equal distance the earlier ground-truth box), and is a true positive
   when that distance is ``< dist_th``.
5. **Precision/recall** at 101 recall points with ``np.interp``, without a precision envelope, exactly
   as the devkit. ``AP = mean(max(precision - min_precision, 0))`` over the recall bins above
   ``min_recall``, divided by ``1 - min_precision``. One consequence: when every object was found, the
   false positives ranked after the last true positive sit at recall 1 too, and ``np.interp`` gives the
   recall-1 bin the last of their precisions, so even low-scored duplicates cost a little AP.
6. **TP errors** at ``dist_th_tp``: per true positive, ATE = centre distance, ASE = 1 - IoU of the boxes
   aligned in centre and yaw, AOE = smallest yaw difference (period ``yaw_period_rad`` of the class),
   AVE = L2 velocity difference, AAE = 1 - (attribute equal). Each is turned into a running mean over
   the true positives in score order (NaN entries skipped; all NaN, e.g. no ground truth of the class
   carries its attribute, -> 1), interpolated onto the recall points by confidence, and averaged from
   the first recall bin above ``min_recall`` to the last bin with non-zero confidence (the maximum
   recall reached). When that last bin lies below the first, the error is 1.0; so is every error of a
   class with no true positive at all.
7. **Per-class rules** (the devkit hard-codes them for traffic_cone and barrier; here they are fields of
   :class:`ClassSpec`): ``yaw_period_rad=None`` -> AOE is NaN (cones), ``pi`` for classes whose heading is
   defined only up to 180 degrees (barriers); ``has_velocity=False`` -> AVE NaN; ``attribute=None`` ->
   AAE NaN. NaN errors are left out of the class means.
8. **Summary**: class AP = mean over the distance thresholds; mAP = mean over classes; each mean TP error
   is the NaN-ignoring mean over classes; ``NDS = (mean_ap_weight * mAP + sum over the 5 errors of
   max(0, 1 - err)) / (mean_ap_weight + 5)``.

A class with **no ground truth** (after filtering) gets AP 0 and all (non-NaN-ruled) TP errors 1.0, and
still counts in mAP and the means: that is the devkit's behaviour, so evaluate with a config that lists
only the classes the data can contain. It is logged as a warning.

**Attributes (AAE).** Each class names at most one attribute key (``ClassSpec.attribute``). By default
``car`` and ``truck`` use ``"siren"`` (an emergency vehicle sounding its siren; the sirens the microphones
hear are carried by cars and trucks), pedestrians and bicycles have none. A ground-truth box without the
key is left out of AAE (the devkit's rule for annotations missing their attribute); a prediction without
it counts as wrong. Values compare by JSON equality, with booleans never equal to numbers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Sequence, Union

import numpy as np

from calibration.yamlconf import to_dict
from perception.evaluation.results import (
    AttributeValue,
    FrameBoxes,
    ResultsFile,
    read_ground_truth,
    read_predictions,
)

log = logging.getLogger(__name__)

NUM_RECALL_POINTS = 101  # devkit DetectionMetricData.nelem
TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")  # devkit order (sums follow it)
TP_SHORT_NAMES = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE", "attr_err": "AAE"}
NUSCENES_ATTRIBUTE_KEY = "attribute_name"  # the attribute key the nuScenes config evaluates


class EvaluationError(ValueError):
    """Predictions and ground truth cannot be evaluated together; the message says where and why."""


@dataclass(frozen=True)
class ClassSpec:
    """One evaluated class and its nuScenes rules.

    Args:
        name: the class name as it appears in ``label``.
        range_m: boxes at ground-plane distance >= this from the ego origin are not evaluated [m].
        yaw_period_rad: periodicity of the heading for AOE [rad]: 2 pi for most classes, pi when the
            heading is defined only up to 180 degrees (nuScenes barrier); None: AOE not evaluated (NaN,
            nuScenes traffic_cone).
        has_velocity: False: AVE not evaluated (NaN; static classes such as cones and barriers).
        attribute: the key in ``attributes`` whose value AAE compares; None: AAE not evaluated (NaN).
    """

    name: str
    range_m: float
    yaw_period_rad: float | None = 2.0 * math.pi
    has_velocity: bool = True
    attribute: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("class name must not be empty")
        if not self.range_m > 0:
            raise ValueError(f"class {self.name}: range_m must be > 0, got {self.range_m}")
        if self.yaw_period_rad is not None and not self.yaw_period_rad > 0:
            raise ValueError(f"class {self.name}: yaw_period_rad must be > 0 or null, got {self.yaw_period_rad}")


DEFAULT_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("car", 50.0, attribute="siren"),
    ClassSpec("truck", 50.0, attribute="siren"),
    ClassSpec("pedestrian", 40.0),
    ClassSpec("bicycle", 40.0),
)


@dataclass(frozen=True)
class EvalConfig:
    """Detection evaluation settings; defaults are nuScenes ``detection_cvpr_2019`` on our four classes.

    Args:
        classes: the evaluated classes, in report order (nuScenes ranges: car/truck 50 m,
            pedestrian/bicycle 40 m).
        dist_ths_m: centre-distance matching thresholds [m] averaged into AP.
        dist_th_tp_m: the threshold whose matches give the TP errors [m]; one of ``dist_ths_m``.
        min_recall: recall bins at or below this are left out of AP and the TP errors.
        min_precision: precision below this counts as 0; AP is normalised by ``1 - min_precision``.
        max_boxes_per_frame: more predictions in one frame is an error (as the devkit's loader).
        mean_ap_weight: weight of mAP in NDS against the 5 TP scores.
    """

    classes: tuple[ClassSpec, ...] = DEFAULT_CLASSES
    dist_ths_m: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    dist_th_tp_m: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_frame: int = 500
    mean_ap_weight: int = 5

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names:
            raise ValueError("classes must not be empty")
        dup = [n for n, k in Counter(names).items() if k > 1]
        if dup:
            raise ValueError(f"class {dup[0]!r} listed twice")
        if not self.dist_ths_m or any(not t > 0 for t in self.dist_ths_m):
            raise ValueError(f"dist_ths_m must be positive distances, got {self.dist_ths_m}")
        if self.dist_th_tp_m not in self.dist_ths_m:
            raise ValueError(f"dist_th_tp_m {self.dist_th_tp_m} must be one of dist_ths_m {self.dist_ths_m}")
        if not 0 <= self.min_recall <= 1:
            raise ValueError(f"min_recall must be in [0, 1], got {self.min_recall}")
        if not 0 <= self.min_precision < 1:
            raise ValueError(f"min_precision must be in [0, 1), got {self.min_precision}")
        if self.max_boxes_per_frame < 1:
            raise ValueError(f"max_boxes_per_frame must be >= 1, got {self.max_boxes_per_frame}")
        if self.mean_ap_weight < 0:
            raise ValueError(f"mean_ap_weight must be >= 0, got {self.mean_ap_weight}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The evaluated class names, in order."""
        return tuple(c.name for c in self.classes)

    def spec(self, name: str) -> ClassSpec:
        """The :class:`ClassSpec` of class ``name`` (KeyError if it is not evaluated)."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"class {name!r} is not evaluated (classes: {', '.join(self.class_names)})")

    @staticmethod
    def nuscenes_cvpr_2019() -> "EvalConfig":
        """The full nuScenes ``detection_cvpr_2019`` config: its 10 classes with their ranges and the
        devkit's rules (traffic_cone: no AOE/AVE/AAE; barrier: heading period pi, no AVE/AAE). Attributes
        are read from the key ``"attribute_name"`` (values such as ``"vehicle.moving"``)."""
        key = NUSCENES_ATTRIBUTE_KEY
        return EvalConfig(classes=(
            ClassSpec("car", 50.0, attribute=key),
            ClassSpec("truck", 50.0, attribute=key),
            ClassSpec("bus", 50.0, attribute=key),
            ClassSpec("trailer", 50.0, attribute=key),
            ClassSpec("construction_vehicle", 50.0, attribute=key),
            ClassSpec("pedestrian", 40.0, attribute=key),
            ClassSpec("motorcycle", 40.0, attribute=key),
            ClassSpec("bicycle", 40.0, attribute=key),
            ClassSpec("traffic_cone", 30.0, yaw_period_rad=None, has_velocity=False),
            ClassSpec("barrier", 30.0, yaw_period_rad=math.pi, has_velocity=False),
        ))


@dataclass(frozen=True, eq=False)
class MetricCurve:
    """Accumulated matches of one class at one distance threshold (the devkit's DetectionMetricData).

    Args:
        class_name, dist_th_m: what was matched, at which centre-distance threshold [m].
        recall: (101,) float64, 0..1 in steps of 0.01.
        precision: (101,) float64 precision at each recall (0 past the maximum recall reached).
        confidence: (101,) float64 score at each recall (0 past the maximum recall reached).
        trans_err, vel_err, scale_err, orient_err, attr_err: (101,) float64 running-mean TP errors at
            each recall ([m], [m/s], 1 - IoU, [rad], 1 - accuracy).
        num_tp: true positives matched at this threshold.
    """

    class_name: str
    dist_th_m: float
    recall: np.ndarray
    precision: np.ndarray
    confidence: np.ndarray
    trans_err: np.ndarray
    vel_err: np.ndarray
    scale_err: np.ndarray
    orient_err: np.ndarray
    attr_err: np.ndarray
    num_tp: int = 0

    @staticmethod
    def no_predictions(class_name: str, dist_th_m: float) -> "MetricCurve":
        """The curve of a class with no ground truth or no true positive (devkit ``no_predictions``)."""
        n = NUM_RECALL_POINTS
        return MetricCurve(class_name, dist_th_m, np.linspace(0, 1, n), np.zeros(n), np.zeros(n),
                           np.ones(n), np.ones(n), np.ones(n), np.ones(n), np.ones(n))

    @property
    def max_recall_ind(self) -> int:
        """Index of the last recall point with non-zero confidence (0 when there is none)."""
        nz = np.nonzero(self.confidence)[0]
        return int(nz[-1]) if len(nz) else 0

    def tp_error(self, metric: str) -> np.ndarray:
        """The (101,) curve of TP metric ``metric`` (one of :data:`TP_METRICS`)."""
        return getattr(self, metric)


def calc_ap(curve: MetricCurve, min_recall: float, min_precision: float) -> float:
    """Average precision of one curve (devkit ``calc_ap``): mean clipped precision above ``min_recall``,
    normalised by ``1 - min_precision``."""
    prec = np.copy(curve.precision)
    prec = prec[round(100 * min_recall) + 1:]  # +1: the bin at min_recall itself is excluded
    prec -= min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def calc_tp(curve: MetricCurve, min_recall: float, metric: str) -> float:
    """Mean TP error of one curve (devkit ``calc_tp``) over the recall bins from just above ``min_recall``
    to the maximum recall reached; 1.0 when the maximum recall is not above ``min_recall``."""
    first_ind = round(100 * min_recall) + 1
    last_ind = curve.max_recall_ind
    if last_ind < first_ind:
        return 1.0
    return float(np.mean(curve.tp_error(metric)[first_ind: last_ind + 1]))


def cummean(x: np.ndarray) -> np.ndarray:
    """Running mean of ``x`` ignoring NaN (devkit ``cummean``): all NaN -> ones; a prefix of only NaN -> 0."""
    if np.sum(np.isnan(x)) == len(x):
        return np.ones(len(x))
    sum_vals = np.nancumsum(x.astype(float))
    count_vals = np.cumsum(~np.isnan(x))
    return np.divide(sum_vals, count_vals, out=np.zeros_like(sum_vals), where=count_vals != 0)


def angle_diff(x: float, y: float, period: float) -> float:
    """Signed smallest angle from ``y`` to ``x`` [rad] for headings with the given period (devkit)."""
    diff = (x - y + period / 2) % period - period / 2
    if diff > np.pi:
        diff = diff - (2 * np.pi)
    return diff


def _same_attribute(gt: AttributeValue, pred: AttributeValue | None) -> bool:
    if pred is None:
        return False
    if isinstance(gt, bool) or isinstance(pred, bool):  # True == 1 in Python; not here
        return isinstance(gt, bool) and isinstance(pred, bool) and gt == pred
    return gt == pred


@dataclass(frozen=True, eq=False)
class _ClassBoxes:
    """The filtered boxes of one class: predictions (in file order) or ground truth.

    frame: (M,) int index into the evaluated ground-truth frames; xy: (M, 2) [m]; wlh: (M, 3) width
    length height [m] (the devkit's size order, which fixes the float rounding of the IoU); yaw: (M,);
    vel: (M, 2); score: (M,); attr: M attribute values (None where the box lacks the key).
    """

    frame: np.ndarray
    xy: np.ndarray
    wlh: np.ndarray
    yaw: np.ndarray
    vel: np.ndarray
    score: np.ndarray
    attr: tuple


@dataclass(frozen=True, eq=False)
class _Candidates:
    """For each prediction of a class: the ground-truth boxes of that class in its frame (indices, in
    file order) and their centre distances [m], as Python lists for a fast greedy loop."""

    gt: list[list[int]]
    dist: list[list[float]]


def _candidates(gt: _ClassBoxes, pred: _ClassBoxes) -> _Candidates:
    gt_of_frame: dict[int, np.ndarray] = {}
    order = np.argsort(gt.frame, kind="stable")  # stable: file order within a frame
    frames, starts = np.unique(gt.frame[order], return_index=True)
    for f, a, b in zip(frames.tolist(), starts.tolist(), [*starts[1:].tolist(), len(order)]):
        gt_of_frame[f] = order[a:b]
    cand: list[list[int]] = [[] for _ in range(len(pred.frame))]
    dist: list[list[float]] = [[] for _ in range(len(pred.frame))]
    for f in np.unique(pred.frame).tolist():
        g = gt_of_frame.get(f)
        if g is None:
            continue
        p = np.nonzero(pred.frame == f)[0]
        dx = gt.xy[g, 0][None, :] - pred.xy[p, 0][:, None]
        dy = gt.xy[g, 1][None, :] - pred.xy[p, 1][:, None]
        rows = np.sqrt(dx * dx + dy * dy).tolist()  # the devkit's centre distance, in the ground plane
        g_list = g.tolist()
        for k, row in zip(p.tolist(), rows):
            cand[k] = g_list
            dist[k] = row
    return _Candidates(cand, dist)


def accumulate(gt: _ClassBoxes, pred: _ClassBoxes, spec: ClassSpec, dist_th: float,
               candidates: _Candidates | None = None) -> MetricCurve:
    """Greedy matching of one class at one threshold and its interpolated curves (devkit ``accumulate``).

    ``candidates`` (from :func:`_candidates`) can be shared between the thresholds of one class.
    """
    npos = len(gt.frame)
    if npos == 0:
        return MetricCurve.no_predictions(spec.name, dist_th)
    if candidates is None:
        candidates = _candidates(gt, pred)

    # Descending score; ties: later index first (devkit: sorted((score, i))[::-1]).
    sortind = np.lexsort((np.arange(len(pred.score)), pred.score))[::-1]

    tp_flags = np.zeros(len(sortind), dtype=np.int64)
    match_pred: list[int] = []
    match_gt: list[int] = []
    match_dist: list[float] = []
    taken = [False] * npos
    for rank, k in enumerate(sortind.tolist()):
        # The nearest ground truth not yet taken; strict '<' keeps the earlier one on equal distance.
        best, best_j = math.inf, -1
        for j, d in zip(candidates.gt[k], candidates.dist[k]):
            if d < best and not taken[j]:
                best, best_j = d, j
        if best < dist_th:
            taken[best_j] = True
            tp_flags[rank] = 1
            match_pred.append(k)
            match_gt.append(best_j)
            match_dist.append(best)

    if not match_pred:
        return MetricCurve.no_predictions(spec.name, dist_th)

    mp = np.array(match_pred)
    mg = np.array(match_gt)
    trans_err = np.array(match_dist)
    dv = pred.vel[mp] - gt.vel[mg]
    vel_err = np.sqrt(dv[:, 0] * dv[:, 0] + dv[:, 1] * dv[:, 1])
    # Scale IoU of the boxes aligned in centre and yaw, products in (w, l, h) order as the devkit.
    sa, sr = gt.wlh[mg], pred.wlh[mp]
    mn = np.minimum(sa, sr)
    inter = mn[:, 0] * mn[:, 1] * mn[:, 2]
    union = sa[:, 0] * sa[:, 1] * sa[:, 2] + sr[:, 0] * sr[:, 1] * sr[:, 2] - inter
    scale_err = 1 - inter / union
    # The devkit measures AOE with period 2 pi for classes whose AOE it later discards (cones).
    period = spec.yaw_period_rad if spec.yaw_period_rad is not None else 2 * np.pi
    orient_err = np.array([abs(angle_diff(gt.yaw[g], pred.yaw[p], period)) for p, g in zip(mp, mg)])
    attr_err = np.array([
        np.nan if gt.attr[g] is None else 1.0 - float(_same_attribute(gt.attr[g], pred.attr[p]))
        for p, g in zip(mp, mg)
    ])
    match_conf = pred.score[mp]

    tp = np.cumsum(tp_flags).astype(float)
    fp = np.cumsum(1 - tp_flags).astype(float)
    conf = pred.score[sortind]
    prec = tp / (fp + tp)
    rec = tp / float(npos)

    rec_interp = np.linspace(0, 1, NUM_RECALL_POINTS)
    prec = np.interp(rec_interp, rec, prec, right=0)
    conf = np.interp(rec_interp, rec, conf, right=0)

    def resample(err: np.ndarray) -> np.ndarray:
        # Running mean in score order, then onto the recall points by confidence (np.interp needs
        # increasing x, hence the reversals).
        return np.interp(conf[::-1], match_conf[::-1], cummean(err)[::-1])[::-1]

    return MetricCurve(
        class_name=spec.name,
        dist_th_m=dist_th,
        recall=rec_interp,
        precision=prec,
        confidence=conf,
        trans_err=resample(trans_err),
        vel_err=resample(vel_err),
        scale_err=resample(scale_err),
        orient_err=resample(orient_err),
        attr_err=resample(attr_err),
        num_tp=len(match_pred),
    )


@dataclass(frozen=True)
class TpErrors:
    """The five true-positive errors: ATE [m], ASE (1 - IoU), AOE [rad], AVE [m/s], AAE (1 - accuracy).
    NaN where a metric is not evaluated."""

    ate: float
    ase: float
    aoe: float
    ave: float
    aae: float

    @staticmethod
    def from_metrics(values: dict[str, float]) -> "TpErrors":
        """From a dict keyed by :data:`TP_METRICS` names."""
        return TpErrors(values["trans_err"], values["scale_err"], values["orient_err"], values["vel_err"],
                        values["attr_err"])

    def as_metrics(self) -> dict[str, float]:
        """Dict keyed by :data:`TP_METRICS` names, in that order."""
        return {"trans_err": self.ate, "scale_err": self.ase, "orient_err": self.aoe, "vel_err": self.ave,
                "attr_err": self.aae}


@dataclass(frozen=True)
class ClassResult:
    """Metrics of one class.

    Args:
        name: class name; range_m: its detection range [m].
        num_gt, num_predictions: boxes evaluated after filtering.
        ap_by_threshold: AP at each of ``config.dist_ths_m``, in that order.
        ap: mean of ``ap_by_threshold``.
        tp: TP errors at ``config.dist_th_tp_m`` (NaN where the class's rules leave one out).
        curves: the :class:`MetricCurve` per distance threshold, in ``dist_ths_m`` order (for plots).
    """

    name: str
    range_m: float
    num_gt: int
    num_predictions: int
    ap_by_threshold: tuple[float, ...]
    ap: float
    tp: TpErrors
    curves: tuple[MetricCurve, ...] = field(repr=False, compare=False)


@dataclass(frozen=True)
class EvalCounts:
    """What was read, filtered and skipped.

    Args:
        ground_truth_frames, prediction_frames: lines read (frames).
        ground_truth_frames_without_predictions: evaluated as frames with no detections.
        ground_truth_boxes, prediction_boxes: boxes read.
        ground_truth_boxes_evaluated, prediction_boxes_evaluated: left after label/range/points filtering.
        ground_truth_boxes_unknown_label: ground-truth boxes skipped because their label is not evaluated.
        ground_truth_boxes_out_of_range, prediction_boxes_out_of_range: beyond their class range.
        ground_truth_boxes_without_points, prediction_boxes_without_points: ``num_points == 0``.
        truncated_last_lines: incomplete last lines skipped by the readers (both files).
    """

    ground_truth_frames: int
    prediction_frames: int
    ground_truth_frames_without_predictions: int
    ground_truth_boxes: int
    prediction_boxes: int
    ground_truth_boxes_evaluated: int
    prediction_boxes_evaluated: int
    ground_truth_boxes_unknown_label: int
    ground_truth_boxes_out_of_range: int
    prediction_boxes_out_of_range: int
    ground_truth_boxes_without_points: int
    prediction_boxes_without_points: int
    truncated_last_lines: int = 0


def _json_number(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


@dataclass(frozen=True)
class EvalResult:
    """The outcome of one evaluation.

    Args:
        config: the settings used.
        mean_ap: mAP, mean over classes of the class AP.
        nds: nuScenes detection score.
        tp_errors: per TP metric, the NaN-ignoring mean over classes (nuScenes mATE ... mAAE).
        tp_scores: per TP metric, ``max(0, 1 - error)`` (0 for a metric NaN in every class).
        classes: per-class results, in ``config.classes`` order.
        counts: frames and boxes read, filtered, skipped.
    """

    config: EvalConfig
    mean_ap: float
    nds: float
    tp_errors: TpErrors
    tp_scores: TpErrors
    classes: tuple[ClassResult, ...]
    counts: EvalCounts

    def class_result(self, name: str) -> ClassResult:
        """The :class:`ClassResult` of class ``name``."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"class {name!r} was not evaluated")

    def to_json_dict(self) -> dict:
        """The accuracy part of ``metrics.json``: JSON-ready (NaN -> null), keys ``mAP``, ``NDS``,
        ``tp_errors`` / ``tp_scores`` (``ATE`` ``ASE`` ``AOE`` ``AVE`` ``AAE``), ``per_class`` (``AP``,
        ``AP_by_dist_th`` keyed by the threshold in metres as a string, the five errors, ``num_gt``,
        ``num_predictions``, ``range_m``), ``class_range_m``, ``eval_config`` and ``eval_counts``."""
        short = TP_SHORT_NAMES
        per_class = {}
        for c in self.classes:
            entry: dict = {"AP": c.ap,
                           "AP_by_dist_th": {str(t): ap for t, ap in zip(self.config.dist_ths_m, c.ap_by_threshold)}}
            entry.update({short[m]: _json_number(v) for m, v in c.tp.as_metrics().items()})
            entry.update({"num_gt": c.num_gt, "num_predictions": c.num_predictions, "range_m": c.range_m})
            per_class[c.name] = entry
        return {
            "mAP": self.mean_ap,
            "NDS": self.nds,
            "tp_errors": {short[m]: _json_number(v) for m, v in self.tp_errors.as_metrics().items()},
            "tp_scores": {short[m]: _json_number(v) for m, v in self.tp_scores.as_metrics().items()},
            "per_class": per_class,
            "class_range_m": {c.name: c.range_m for c in self.config.classes},
            "eval_config": to_dict(self.config),
            "eval_counts": to_dict(self.counts),
        }


Frames = Union[ResultsFile, Sequence[FrameBoxes]]


def _frames_and_where(frames: Frames, what: str) -> tuple[tuple[FrameBoxes, ...], list[str], int]:
    if isinstance(frames, ResultsFile):
        return frames.frames, [frames.where(i) for i in range(len(frames.frames))], frames.truncated_last_line
    fs = tuple(frames)
    return fs, [f"{what} frame stamp_ns={f.stamp_ns}" for f in fs], 0


def _in_range_and_points(frame: FrameBoxes, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks (in range, has points) for boxes whose labels are all evaluated; ``ranges`` per box [m]."""
    x, y = frame.boxes[:, 0], frame.boxes[:, 1]
    in_range = np.sqrt(x * x + y * y) < ranges
    return in_range, frame.num_points != 0


def _class_boxes(frames: list[FrameBoxes], frame_index: list[int], name: str, attr_key: str | None) -> _ClassBoxes:
    parts = [(fi, f, np.nonzero(f.labels == name)[0]) for fi, f in zip(frame_index, frames)]
    parts = [(fi, f, idx) for fi, f, idx in parts if len(idx)]
    if not parts:
        return _ClassBoxes(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)),
                           np.zeros(0), ())
    boxes = np.concatenate([f.boxes[idx] for _, f, idx in parts])
    attrs = tuple(
        (f.attributes[i].get(attr_key) if attr_key is not None else None) for _, f, idx in parts for i in idx
    )
    return _ClassBoxes(
        frame=np.concatenate([np.full(len(idx), fi, np.int64) for fi, _, idx in parts]),
        xy=boxes[:, 0:2].copy(),
        wlh=boxes[:, [4, 3, 5]].copy(),
        yaw=boxes[:, 6].copy(),
        vel=np.concatenate([f.velocities[idx] for _, f, idx in parts]),
        score=np.concatenate([f.scores[idx] for _, f, idx in parts]),
        attr=attrs,
    )


def evaluate(predictions: Frames, ground_truth: Frames, config: EvalConfig = EvalConfig()) -> EvalResult:
    """Run the nuScenes detection protocol (see the module docstring) on predictions against ground truth.

    Args:
        predictions: a :class:`ResultsFile` from :func:`read_predictions` (errors then name file and line)
            or a sequence of :class:`FrameBoxes` with scores, in file order (the order breaks score ties).
        ground_truth: likewise, from :func:`read_ground_truth` or frames.
        config: classes, ranges, thresholds.
    Returns:
        :class:`EvalResult` with mAP, NDS, per-class AP and TP errors, curves and counts.
    Raises:
        EvaluationError: a prediction frame with no ground-truth frame, duplicate stamps, too many boxes
            in a frame, a prediction label that is not evaluated, a prediction without a score.
    """
    pred_frames, pred_where, pred_trunc = _frames_and_where(predictions, "prediction")
    gt_frames, gt_where, gt_trunc = _frames_and_where(ground_truth, "ground-truth")
    return _evaluate_keyed(pred_frames, pred_where, [f.stamp_ns for f in pred_frames],
                           gt_frames, gt_where, [f.stamp_ns for f in gt_frames], pred_trunc + gt_trunc, config)


FrameKey = Hashable


def _evaluate_keyed(pred_frames: Sequence[FrameBoxes], pred_where: list[str], pred_keys: list[FrameKey],
                    gt_frames: Sequence[FrameBoxes], gt_where: list[str], gt_keys: list[FrameKey],
                    truncated_last_lines: int, config: EvalConfig) -> EvalResult:
    """:func:`evaluate` with frames identified by ``*_keys`` (the stamp for one run; (run, stamp) for
    several, so that runs whose stamps collide stay apart). ``*_where`` name each frame in messages."""
    class_names = config.class_names
    range_of = {c.name: c.range_m for c in config.classes}

    gt_index: dict[FrameKey, int] = {}
    for i, (f, key) in enumerate(zip(gt_frames, gt_keys)):
        if key in gt_index:
            raise EvaluationError(f"{gt_where[i]}: stamp_ns {f.stamp_ns} repeats {gt_where[gt_index[key]]}")
        gt_index[key] = i
    seen: dict[FrameKey, int] = {}
    unmatched: list[int] = []
    for i, (f, key) in enumerate(zip(pred_frames, pred_keys)):
        if key in seen:
            raise EvaluationError(f"{pred_where[i]}: stamp_ns {f.stamp_ns} repeats {pred_where[seen[key]]}")
        seen[key] = i
        if key not in gt_index:
            unmatched.append(i)
        if len(f) > config.max_boxes_per_frame:
            raise EvaluationError(f"{pred_where[i]}: {len(f)} predictions in one frame; at most "
                                  f"{config.max_boxes_per_frame} allowed (max_boxes_per_frame)")
        unknown = sorted(set(f.labels.tolist()) - set(class_names))
        if unknown:
            raise EvaluationError(f"{pred_where[i]}: label {unknown[0]!r} is not an evaluated class "
                                  f"(classes: {', '.join(class_names)})")
        bad = ~np.isfinite(f.scores) | (f.scores < 0)
        if bad.any():
            raise EvaluationError(f"{pred_where[i]}: prediction {int(np.argmax(bad))} has score "
                                  f"{f.scores[bad][0]!r}; scores must be finite and >= 0")
    if unmatched:
        i = unmatched[0]
        raise EvaluationError(
            f"{pred_where[i]}: {len(unmatched)} prediction frame(s) have no ground-truth frame with the same "
            f"stamp_ns (first: {pred_frames[i].stamp_ns}); predictions and ground truth must cover the same "
            f"frames")
    without_pred = len(gt_frames) - len(pred_frames)
    if without_pred:
        log.warning("%d of %d ground-truth frames have no prediction line; they are evaluated as frames "
                    "with no detections", without_pred, len(gt_frames))

    # Filter ground truth: unknown labels (counted skip), range, zero points.
    gt_kept: list[FrameBoxes] = []
    unknown_labels: Counter[str] = Counter()
    gt_out_of_range = gt_no_points = 0
    for f in gt_frames:
        known = np.isin(f.labels, class_names)
        if not known.all():
            unknown_labels.update(f.labels[~known].tolist())
            f = f[known]
        ranges = np.array([range_of[str(lb)] for lb in f.labels], dtype=np.float64)
        in_range, has_points = _in_range_and_points(f, ranges)
        gt_out_of_range += int((~in_range).sum())
        gt_no_points += int((in_range & ~has_points).sum())
        gt_kept.append(f[in_range & has_points])
    if unknown_labels:
        log.warning("skipped %d ground-truth boxes whose labels are not evaluated classes: %s",
                    sum(unknown_labels.values()), dict(unknown_labels))

    pred_kept: list[FrameBoxes] = []
    pred_out_of_range = pred_no_points = 0
    for f in pred_frames:
        ranges = np.array([range_of[str(lb)] for lb in f.labels], dtype=np.float64)
        in_range, has_points = _in_range_and_points(f, ranges)
        pred_out_of_range += int((~in_range).sum())
        pred_no_points += int((in_range & ~has_points).sum())
        pred_kept.append(f[in_range & has_points])
    pred_frame_index = [gt_index[key] for key in pred_keys]

    classes: list[ClassResult] = []
    for spec in config.classes:
        gt_c = _class_boxes(gt_kept, list(range(len(gt_kept))), spec.name, spec.attribute)
        pred_c = _class_boxes(pred_kept, pred_frame_index, spec.name, spec.attribute)
        if len(gt_c.frame) == 0:
            log.warning("class %s has no ground truth within %.0f m: AP 0 and TP errors 1 (devkit rule)",
                        spec.name, spec.range_m)
        cands = _candidates(gt_c, pred_c)
        curves = tuple(accumulate(gt_c, pred_c, spec, th, cands) for th in config.dist_ths_m)
        aps = tuple(calc_ap(c, config.min_recall, config.min_precision) for c in curves)
        tp_curve = curves[config.dist_ths_m.index(config.dist_th_tp_m)]
        errs = {}
        for m in TP_METRICS:
            skip = ((m == "orient_err" and spec.yaw_period_rad is None)
                    or (m == "vel_err" and not spec.has_velocity)
                    or (m == "attr_err" and spec.attribute is None))
            errs[m] = math.nan if skip else calc_tp(tp_curve, config.min_recall, m)
        classes.append(ClassResult(
            name=spec.name, range_m=spec.range_m, num_gt=len(gt_c.frame), num_predictions=len(pred_c.frame),
            ap_by_threshold=aps, ap=float(np.mean(aps)), tp=TpErrors.from_metrics(errs), curves=curves,
        ))

    mean_ap = float(np.mean([c.ap for c in classes]))
    mean_errs: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN, which is the answer
        for m in TP_METRICS:
            mean_errs[m] = float(np.nanmean([c.tp.as_metrics()[m] for c in classes]))
    # max(0.0, 1 - NaN) is 0.0: a metric no class evaluates scores 0, as in the devkit.
    scores = {m: max(0.0, 1.0 - mean_errs[m]) for m in TP_METRICS}
    total = float(config.mean_ap_weight * mean_ap + np.sum(list(scores.values())))
    nds = total / float(config.mean_ap_weight + len(scores))

    counts = EvalCounts(
        ground_truth_frames=len(gt_frames),
        prediction_frames=len(pred_frames),
        ground_truth_frames_without_predictions=without_pred,
        ground_truth_boxes=sum(len(f) for f in gt_frames),
        prediction_boxes=sum(len(f) for f in pred_frames),
        ground_truth_boxes_evaluated=sum(len(f) for f in gt_kept),
        prediction_boxes_evaluated=sum(len(f) for f in pred_kept),
        ground_truth_boxes_unknown_label=sum(unknown_labels.values()),
        ground_truth_boxes_out_of_range=gt_out_of_range,
        prediction_boxes_out_of_range=pred_out_of_range,
        ground_truth_boxes_without_points=gt_no_points,
        prediction_boxes_without_points=pred_no_points,
        truncated_last_lines=truncated_last_lines,
    )
    return EvalResult(config=config, mean_ap=mean_ap, nds=nds, tp_errors=TpErrors.from_metrics(mean_errs),
                      tp_scores=TpErrors.from_metrics(scores), classes=tuple(classes), counts=counts)


def evaluate_files(predictions_path: str | Path, ground_truth_path: str | Path,
                   config: EvalConfig = EvalConfig()) -> EvalResult:
    """Read a results file and a ground-truth file and evaluate them (see :func:`evaluate`).

    Raises:
        ResultsFileError (malformed file, names ``path:line``) or EvaluationError (the files do not fit
        together, names ``path:line`` of the offending frame).
    """
    return evaluate(read_predictions(predictions_path), read_ground_truth(ground_truth_path), config)


def evaluate_many(runs: Sequence[tuple[Frames, Frames]], config: EvalConfig = EvalConfig()) -> EvalResult:
    """Evaluate several runs (drives, recordings) together as one data set, keeping their frames apart.

    A frame is identified by (run index, ``stamp_ns``), so runs whose stamps collide (simulated drives all
    start at the same stamp) are never matched against each other's ground truth. The runs are
    concatenated in order: predictions of run 0 in file order, then run 1, ...; that order breaks score
    ties as file order does in :func:`evaluate`. For a single run the result equals :func:`evaluate`.

    Args:
        runs: (predictions, ground truth) per run, each a :class:`ResultsFile` or a sequence of
            :class:`FrameBoxes` (as :func:`evaluate` takes them).
        config: classes, ranges, thresholds.
    Returns:
        One :class:`EvalResult` over all runs; its counts are sums over the runs.
    Raises:
        EvaluationError: as :func:`evaluate`, naming the run's file and line (or ``run i`` for frames
            given as sequences); ValueError for an empty ``runs``.
    """
    if not runs:
        raise ValueError("evaluate_many: no runs given")
    pred_frames: list[FrameBoxes] = []
    pred_where: list[str] = []
    pred_keys: list[FrameKey] = []
    gt_frames: list[FrameBoxes] = []
    gt_where: list[str] = []
    gt_keys: list[FrameKey] = []
    truncated = 0
    for run, (predictions, ground_truth) in enumerate(runs):
        for frames, all_frames, all_where, all_keys, what in (
                (predictions, pred_frames, pred_where, pred_keys, "prediction"),
                (ground_truth, gt_frames, gt_where, gt_keys, "ground-truth")):
            fs, where, trunc = _frames_and_where(frames, what)
            truncated += trunc
            if not isinstance(frames, ResultsFile):
                where = [f"run {run}: {w}" for w in where]
            all_frames.extend(fs)
            all_where.extend(where)
            all_keys.extend((run, f.stamp_ns) for f in fs)
    return _evaluate_keyed(pred_frames, pred_where, pred_keys, gt_frames, gt_where, gt_keys, truncated, config)
