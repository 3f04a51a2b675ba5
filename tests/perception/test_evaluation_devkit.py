"""Our detection metrics against the nuScenes devkit's own code, on the same boxes.

Random but realistic scenes (several frames and classes; noise on centre, size, yaw, velocity and
attributes; misses, false positives, duplicates, tied scores, frames without ground truth, a frame without
a prediction line, boxes beyond the class range and with zero LiDAR points) and the boxes of one real
nuScenes keyframe are evaluated twice: by :func:`perception.evaluation.evaluate`, and by the devkit's
``filter_eval_boxes`` + ``DetectionEval.evaluate`` (which calls ``accumulate``, ``calc_ap`` and
``calc_tp``) on ``DetectionBox`` objects. mAP, NDS, per-class AP per threshold, the TP errors and the
101-point curves must agree to 1e-9.

Conversion at the boundary, by name: nuScenes ``size`` is (width, length, height) and ``rotation`` is a
w-first quaternion; a box in our ego frame has ``ego_translation`` equal to its centre.

The devkit is a dev dependency installed without its own pins (it pins numpy < 2):
``pip install --no-deps nuscenes-devkit`` plus pyquaternion, matplotlib, scikit-learn, cachetools.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

try:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.common.loaders import filter_eval_boxes
    from nuscenes.eval.detection.constants import TP_METRICS as DEVKIT_TP_METRICS
    from nuscenes.eval.detection.data_classes import DetectionBox, DetectionConfig
    from nuscenes.eval.detection.evaluate import DetectionEval
except ImportError as e:  # the devkit or one of its imports is missing
    pytest.skip(f"nuscenes-devkit not importable ({e}); install it with `pip install --no-deps "
                f"nuscenes-devkit` and `pip install pyquaternion matplotlib scikit-learn cachetools`",
                allow_module_level=True)

from calibration.importers import load_mmdet3d_nuscenes_info, rig_from_nuscenes, transform_boxes
from perception.evaluation import ClassSpec, EvalConfig, FrameBoxes, evaluate
from perception.evaluation.metrics import TP_METRICS

ATOL = 1e-9
NUSCENES_PKL = Path("mmdet3d") / "demo" / "data" / "nuscenes" / "n015-2018-07-24-11-22-45+0800.pkl"

# Typical (length, width, height) [m] per class.
SIZE_PRIOR = {
    "car": (4.6, 1.9, 1.7), "truck": (8.0, 2.5, 3.2), "bus": (11.0, 2.9, 3.4), "trailer": (10.0, 2.6, 3.8),
    "construction_vehicle": (6.0, 2.8, 3.1), "pedestrian": (0.7, 0.7, 1.75), "motorcycle": (2.1, 0.8, 1.5),
    "bicycle": (1.8, 0.6, 1.3), "traffic_cone": (0.4, 0.4, 1.0), "barrier": (0.5, 2.5, 1.0),
}
NUSCENES_ATTRIBUTES = {
    "vehicle": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "cycle": ("cycle.with_rider", "cycle.without_rider"),
}
ATTRIBUTE_GROUP = {"car": "vehicle", "truck": "vehicle", "bus": "vehicle", "trailer": "vehicle",
                   "construction_vehicle": "vehicle", "pedestrian": "pedestrian", "motorcycle": "cycle",
                   "bicycle": "cycle"}
# The devkit only accepts its own attribute names; our boolean siren maps onto two of them.
SIREN_TO_NUSCENES = {True: "vehicle.moving", False: "vehicle.parked"}


class NoBikeRacks:
    """The one database query ``filter_eval_boxes`` makes is for bicycle-rack annotations around each
    sample; our scenes have none, so every sample answers with no annotations."""

    def get(self, table: str, token: str) -> dict:
        assert table == "sample"
        return {"anns": []}


# ---------------------------------------------------------------------------------------------- scenes
def attribute_values(spec: ClassSpec) -> tuple:
    """The values the class's attribute can take in a scene (empty: the class has none)."""
    if spec.attribute == "siren":
        return (True, False)
    if spec.attribute is not None:
        return NUSCENES_ATTRIBUTES[ATTRIBUTE_GROUP[spec.name]]
    return ()


def random_scene(rng: np.random.Generator, config: EvalConfig, n_frames: int,
                 absent_classes: tuple[str, ...] = (), extra_gt_labels: tuple[str, ...] = ()
                 ) -> tuple[list[FrameBoxes], list[FrameBoxes]]:
    """(predictions in file order, ground truth) for ``n_frames`` frames 100 ms apart.

    Ground truth: Poisson numbers of objects per class out to 65 m, velocities (5 % unknown), LiDAR point
    counts (10 % zero, 20 % not given), attributes (10 % missing). Predictions: each object found with
    probability 0.8 with a per-object centre error of 0.05-1 m (per axis), 8 % size noise, yaw noise with 10 %
    flipped by pi, velocity noise, 75 % right attributes; 10 % near duplicates, 5 % exact duplicates;
    Poisson false positives; scores on a 0.05 grid so many tie. Frame 2 has no ground truth, the last
    frame has no prediction line, frame 1's prediction line is empty, and the prediction lines are
    shuffled (file order breaks score ties).
    """
    specs = [s for s in config.classes if s.name not in absent_classes]
    gt_frames, pred_frames = [], []
    for k in range(n_frames):
        stamp = 1_700_000_000_000_000_000 + k * 100_000_000
        g_boxes, g_vel, g_lab, g_attr, g_pts = [], [], [], [], []
        for spec in specs if k != 2 else []:
            for _ in range(rng.poisson(5.0)):
                r, a = 65.0 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
                lwh = np.array(SIZE_PRIOR[spec.name]) * (1 + 0.1 * rng.standard_normal(3)).clip(0.7, 1.3)
                g_boxes.append([r * math.cos(a), r * math.sin(a), lwh[2] / 2 + 0.1 * rng.standard_normal(),
                                *lwh, rng.uniform(-math.pi, math.pi)])
                v = rng.normal(0, 5.0 if spec.has_velocity else 0.2, 2)
                g_vel.append([math.nan, math.nan] if rng.random() < 0.05 else v)
                g_lab.append(spec.name)
                values = attribute_values(spec)
                g_attr.append({spec.attribute: values[rng.integers(len(values))]}
                              if values and rng.random() > 0.1 else {})
                u = rng.random()
                g_pts.append(0 if u < 0.1 else (-1 if u < 0.3 else int(rng.integers(1, 300))))
        for label in extra_gt_labels:  # classes that are not evaluated (skipped by us, ignored by the devkit)
            g_boxes.append([rng.uniform(-30, 30), rng.uniform(-30, 30), 0.5, 1.0, 1.0, 1.0, 0.0])
            g_vel.append([0.0, 0.0])
            g_lab.append(label)
            g_attr.append({})
            g_pts.append(5)
        gt = FrameBoxes.create(stamp, np.array(g_boxes).reshape(-1, 7), g_lab,
                               velocities=np.array(g_vel).reshape(-1, 2), attributes=g_attr, num_points=g_pts)
        gt_frames.append(gt)

        p_boxes, p_vel, p_lab, p_attr, p_score = [], [], [], [], []

        def add(box, vel, label, attr, score):
            p_boxes.append(box)
            p_vel.append(vel)
            p_lab.append(label)
            p_attr.append(attr)
            p_score.append(score)

        for i in range(len(gt)):
            label = str(gt.labels[i])
            if label not in config.class_names or rng.random() > 0.8:
                continue
            spec = config.spec(label)
            box = gt.boxes[i].copy()
            box[:2] += rng.normal(0, rng.uniform(0.05, 1.0), 2)
            box[2] += rng.normal(0, 0.2)
            box[3:6] *= (1 + 0.08 * rng.standard_normal(3)).clip(0.6, 1.4)
            box[6] += rng.normal(0, 0.2) + (math.pi if rng.random() < 0.1 else 0.0)
            vel = gt.velocities[i] + rng.normal(0, 1.0, 2)
            if np.isnan(vel).any():
                vel = rng.normal(0, 3.0, 2)
            values = attribute_values(spec)
            attr = {}
            if values and rng.random() > 0.05:
                true = gt.attributes[i].get(spec.attribute, values[0])
                attr = {spec.attribute: true if rng.random() < 0.75 else values[rng.integers(len(values))]}
            score = round(float(rng.beta(4, 2)) * 20) / 20
            add(box, vel, label, attr, score)
            if rng.random() < 0.1:
                dup = box.copy()
                dup[:2] += rng.normal(0, 0.3, 2)
                add(dup, vel, label, attr, round(score * rng.uniform(0.5, 1.0) * 20) / 20)
            if rng.random() < 0.05:
                add(box.copy(), vel, label, attr, score)
        for _ in range(rng.poisson(2.0)):
            spec = config.classes[rng.integers(len(config.classes))]
            r, a = 60.0 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
            lwh = np.array(SIZE_PRIOR[spec.name])
            values = attribute_values(spec)
            add([r * math.cos(a), r * math.sin(a), lwh[2] / 2, *lwh, rng.uniform(-math.pi, math.pi)],
                rng.normal(0, 3.0, 2), spec.name, {spec.attribute: values[0]} if values else {},
                round(float(rng.beta(2, 4)) * 20) / 20)
        if k == 1:
            p_boxes, p_vel, p_lab, p_attr, p_score = [], [], [], [], []
        if k != n_frames - 1:
            pred_frames.append(FrameBoxes.create(stamp, np.array(p_boxes).reshape(-1, 7), p_lab,
                                                 velocities=np.array(p_vel).reshape(-1, 2), scores=p_score,
                                                 attributes=p_attr))
    order = rng.permutation(len(pred_frames))
    return [pred_frames[i] for i in order], gt_frames


# ---------------------------------------------------------------------------------------------- devkit
def devkit_attribute(frame: FrameBoxes, i: int, config: EvalConfig) -> str:
    """The devkit's ``attribute_name`` of box ``i`` ('' = none)."""
    label = str(frame.labels[i])
    if label not in config.class_names or config.spec(label).attribute is None:
        return ""
    value = frame.attributes[i].get(config.spec(label).attribute)
    if value is None:
        return ""
    return SIREN_TO_NUSCENES[value] if isinstance(value, bool) else value


def to_devkit_boxes(frames: list[FrameBoxes], config: EvalConfig, extra_tokens: list[str] = ()) -> EvalBoxes:
    """Our frames as devkit EvalBoxes, in the same order; labels the devkit does not know are dropped
    (as its ground-truth loader drops categories that are not detection classes)."""
    from nuscenes.eval.detection.constants import DETECTION_NAMES

    eb = EvalBoxes()
    for f in frames:
        token = str(f.stamp_ns)
        boxes = []
        for i in range(len(f)):
            x, y, z, length, width, height, yaw = (float(v) for v in f.boxes[i])
            if str(f.labels[i]) not in DETECTION_NAMES:
                continue
            boxes.append(DetectionBox(
                sample_token=token,
                translation=(x, y, z),
                size=(width, length, height),  # nuScenes order: w, l, h
                rotation=(math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)),  # w-first quaternion about +z
                velocity=(float(f.velocities[i, 0]), float(f.velocities[i, 1])),
                ego_translation=(x, y, z),  # our boxes are already in the ego frame
                num_pts=int(f.num_points[i]),
                detection_name=str(f.labels[i]),
                detection_score=-1.0 if math.isnan(f.scores[i]) else float(f.scores[i]),
                attribute_name=devkit_attribute(f, i, config),
            ))
        eb.add_boxes(token, boxes)
    for token in extra_tokens:
        eb.add_boxes(token, [])
    return eb


def devkit_evaluate(preds: list[FrameBoxes], gts: list[FrameBoxes], config: EvalConfig):
    """Run the devkit on our frames; returns its (DetectionMetrics, DetectionMetricDataList).

    The devkit's config must name all 10 nuScenes classes; ``class_names`` is then narrowed to ours so
    that only they are evaluated and averaged. Our per-class rule ``attribute=None`` (AAE not evaluated)
    is applied to the devkit's metrics the way the devkit applies its own barrier/cone rule.
    """
    base = config_factory("detection_cvpr_2019")
    class_range = dict(base.class_range)
    class_range.update({c.name: c.range_m for c in config.classes})
    cfg = DetectionConfig(class_range=class_range, dist_fcn="center_distance", dist_ths=list(config.dist_ths_m),
                          dist_th_tp=config.dist_th_tp_m, min_recall=config.min_recall,
                          min_precision=config.min_precision, max_boxes_per_sample=config.max_boxes_per_frame,
                          mean_ap_weight=config.mean_ap_weight)
    cfg.class_names = list(config.class_names)
    gt_tokens = [str(f.stamp_ns) for f in gts]
    pred_tokens = {str(f.stamp_ns) for f in preds}
    ev = DetectionEval.__new__(DetectionEval)  # skips the dataset loading; evaluate() needs only these
    ev.cfg = cfg
    ev.verbose = False
    ev.gt_boxes = filter_eval_boxes(NoBikeRacks(), to_devkit_boxes(gts, config), cfg.class_range)
    ev.pred_boxes = filter_eval_boxes(
        NoBikeRacks(), to_devkit_boxes(preds, config, [t for t in gt_tokens if t not in pred_tokens]),
        cfg.class_range)
    assert set(ev.gt_boxes.sample_tokens) == set(ev.pred_boxes.sample_tokens)  # the devkit's own check
    metrics, md_list = ev.evaluate()
    for spec in config.classes:
        if spec.attribute is None and spec.name not in ("traffic_cone", "barrier"):
            metrics.add_label_tp(spec.name, "attr_err", np.nan)
    return metrics, md_list


def assert_matches_devkit(preds: list[FrameBoxes], gts: list[FrameBoxes], config: EvalConfig) -> dict:
    """Evaluate with both and compare everything; returns a few numbers for the printout."""
    ours = evaluate(preds, gts, config)
    metrics, md_list = devkit_evaluate(preds, gts, config)
    assert TP_METRICS == tuple(DEVKIT_TP_METRICS)
    for c in ours.classes:
        for th, ap, curve in zip(config.dist_ths_m, c.ap_by_threshold, c.curves):
            assert ap == pytest.approx(metrics.get_label_ap(c.name, th), abs=ATOL), (c.name, th)
            md = md_list[(c.name, th)]
            for name in ("recall", "precision", "confidence", *TP_METRICS):
                np.testing.assert_allclose(getattr(curve, name), getattr(md, name), atol=ATOL, rtol=0,
                                           err_msg=f"{c.name} @ {th} m: {name}")
        for m, v in c.tp.as_metrics().items():
            ref = metrics.get_label_tp(c.name, m)
            assert (math.isnan(v) and math.isnan(ref)) or v == pytest.approx(ref, abs=ATOL), (c.name, m, v, ref)
    assert ours.mean_ap == pytest.approx(metrics.mean_ap, abs=ATOL)
    for m, v in ours.tp_errors.as_metrics().items():
        ref = metrics.tp_errors[m]
        assert (math.isnan(v) and math.isnan(ref)) or v == pytest.approx(ref, abs=ATOL), (m, v, ref)
    assert ours.nds == pytest.approx(metrics.nd_score, abs=ATOL)
    return {"mAP": ours.mean_ap, "NDS": ours.nds, "gt": ours.counts.ground_truth_boxes_evaluated,
            "pred": ours.counts.prediction_boxes_evaluated,
            "tp@2m": sum(c.curves[config.dist_ths_m.index(2.0)].num_tp for c in ours.classes)}


# ---------------------------------------------------------------------------------------------- tests
def test_default_config_is_detection_cvpr_2019():
    base = config_factory("detection_cvpr_2019")
    for config in (EvalConfig(), EvalConfig.nuscenes_cvpr_2019()):
        assert list(config.dist_ths_m) == base.dist_ths
        assert config.dist_th_tp_m == base.dist_th_tp
        assert config.min_recall == base.min_recall and config.min_precision == base.min_precision
        assert config.max_boxes_per_frame == base.max_boxes_per_sample
        assert config.mean_ap_weight == base.mean_ap_weight
        assert all(c.range_m == base.class_range[c.name] for c in config.classes)
    assert set(EvalConfig.nuscenes_cvpr_2019().class_names) == set(base.class_range)
    assert EvalConfig().class_names == ("car", "truck", "pedestrian", "bicycle")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes_with_our_four_classes_match_the_devkit(seed):
    rng = np.random.default_rng(seed)
    config = EvalConfig()
    preds, gts = random_scene(rng, config, n_frames=10, absent_classes=("bicycle",) if seed == 1 else (),
                              extra_gt_labels=("traffic_cone", "pole"))
    got = assert_matches_devkit(preds, gts, config)
    print(f"\nseed {seed}, 4 classes: {got}")
    assert got["tp@2m"] > 20  # the scene really exercises the matching


@pytest.mark.parametrize("seed", [10, 11])
def test_random_scenes_with_all_ten_nuscenes_classes_match_the_devkit(seed):
    rng = np.random.default_rng(seed)
    config = EvalConfig.nuscenes_cvpr_2019()
    preds, gts = random_scene(rng, config, n_frames=8)
    got = assert_matches_devkit(preds, gts, config)
    print(f"\nseed {seed}, 10 classes: {got}")
    assert got["tp@2m"] > 50


def test_all_tied_scores_and_stacked_duplicates_match_the_devkit():
    # Every score equal and three predictions on each object: the order (later in the file first) and
    # the nearest-free-object rule decide everything.
    rng = np.random.default_rng(5)
    config = EvalConfig()
    gts, preds = [], []
    for k in range(4):
        stamp = 10_000 + k
        centres = rng.uniform(-20, 20, (6, 2))
        boxes = np.array([[x, y, 0.8, 4.5, 1.9, 1.6, 0.0] for x, y in centres])
        gts.append(FrameBoxes.create(stamp, boxes, ["car"] * 6, attributes=[{"siren": False}] * 6))
        p = np.repeat(boxes, 3, axis=0)
        p[:, :2] += rng.normal(0, 0.6, (18, 2))
        preds.append(FrameBoxes.create(stamp, p, ["car"] * 18, scores=np.full(18, 0.5),
                                       attributes=[{"siren": bool(i % 2)} for i in range(18)]))
    assert_matches_devkit(preds, gts, config)


def test_real_nuscenes_keyframe_boxes_match_the_devkit(realdata):
    # Ground truth: the 69 annotated boxes of a real nuScenes keyframe (real sizes, positions, classes,
    # unknown velocities and zero-point boxes), moved into the ego frame; predictions: noisy copies.
    (sample,) = load_mmdet3d_nuscenes_info(realdata / NUSCENES_PKL)
    rig = rig_from_nuscenes(sample.sensors)
    ego_from_lidar = rig.transform("ego", "lidar_top")
    keep = sample.labels >= 0
    boxes = transform_boxes(sample.boxes[keep], ego_from_lidar)
    vel = np.column_stack([sample.velocities[keep], np.zeros(int(keep.sum()))])
    vel = ego_from_lidar.apply_vectors(vel)[:, :2]
    labels = [sample.class_names[i] for i in sample.labels[keep]]
    config = EvalConfig.nuscenes_cvpr_2019()
    rng = np.random.default_rng(7)
    attrs = [({"attribute_name": attribute_values(config.spec(lb))[0]} if config.spec(lb).attribute else {})
             for lb in labels]
    gts, preds = [], []
    for k in range(3):  # the same real scene judged three times with different detector noise
        stamp = sample.stamp_ns + k
        gts.append(FrameBoxes.create(stamp, boxes, labels, velocities=vel, attributes=attrs,
                                     num_points=sample.num_lidar_pts[keep]))
        found = rng.random(len(boxes)) < 0.85
        p = boxes[found].copy()
        p[:, :2] += rng.normal(0, 0.4, (len(p), 2))
        p[:, 3:6] *= 1 + 0.05 * rng.standard_normal((len(p), 3))
        p[:, 6] += rng.normal(0, 0.15, len(p))
        pv = np.nan_to_num(vel[found]) + rng.normal(0, 0.5, (len(p), 2))
        preds.append(FrameBoxes.create(stamp, p, [labels[i] for i in np.nonzero(found)[0]], velocities=pv,
                                       scores=np.round(rng.uniform(0.1, 1.0, len(p)), 2),
                                       attributes=[attrs[i] for i in np.nonzero(found)[0]]))
    assert np.isnan(vel).any() and (sample.num_lidar_pts[keep] == 0).any()  # the cases worth checking
    got = assert_matches_devkit(preds, gts, config)
    print(f"\nreal nuScenes keyframe x3: {got}")
    assert got["gt"] > 0


def test_distances_exactly_at_the_thresholds_and_equidistant_ground_truth_match_the_devkit():
    # Centre offsets of exactly 0.5, 1, 2 and 4 m (a match needs distance < threshold), two ground-truth
    # cars on one spot and two at equal distance from a prediction (the earlier one in the file wins):
    # their different sizes and sirens make the choice visible in ASE and AAE.
    config = EvalConfig()
    gt_boxes = [[10.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0], [10.0, 0.0, 0.8, 3.6, 1.7, 1.4, 0.0],
                [30.0, 1.0, 0.8, 4.5, 1.9, 1.6, 0.0], [30.0, -1.0, 0.8, 5.2, 2.1, 1.9, 0.0]]
    gt_boxes += [[20.0, 10.0 * k, 0.8, 4.5, 1.9, 1.6, 0.0] for k in range(-2, 3)]
    sirens = [True, False, False, True, False, False, True, False, True]
    pred_boxes = [[10.0, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0], [10.5, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0],
                  [30.0, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0]]
    pred_boxes += [[20.0 + off, 10.0 * k, 0.8, 4.0, 1.8, 1.5, 0.0] for k, off in zip(range(-2, 3), (0.5, 1, 2, 4, 3))]
    gts = [FrameBoxes.create(1, gt_boxes, ["car"] * 9, attributes=[{"siren": s} for s in sirens])]
    preds = [FrameBoxes.create(1, pred_boxes, ["car"] * 8, scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
                               attributes=[{"siren": True}] * 8)]
    got = assert_matches_devkit(preds, gts, config)
    car = evaluate(preds, gts, config).class_result("car")
    # Matches: offsets 0 | +0.5 | +0.5, 1 | +1, 2 | +3 (never the ones exactly at the threshold).
    assert [c.num_tp for c in car.curves] == [1, 3, 5, 7]
    assert got["tp@2m"] == 5
