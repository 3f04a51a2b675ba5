"""Results files and the nuScenes detection metrics: hand-made cases with known answers, file errors,
edge cases, and the sample drive's ground truth end to end. (Agreement with the nuScenes devkit on random
scenes is checked in test_evaluation_devkit.py.)"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.yamlconf import ConfigError, from_dict
from drivers.messages import GroundTruthBoxes
from perception.evaluation import (
    ClassSpec,
    EvalConfig,
    EvaluationError,
    FrameBoxes,
    ResultsFileError,
    ResultsWriter,
    evaluate,
    evaluate_files,
    frame_from_ground_truth,
    read_ground_truth,
    read_predictions,
    write_results_file,
)

REPO = Path(__file__).resolve().parents[2]
SIZES = {"car": (4.5, 1.9, 1.6), "truck": (8.0, 2.5, 3.2), "pedestrian": (0.7, 0.7, 1.75),
         "bicycle": (1.8, 0.6, 1.3), "barrier": (0.5, 2.5, 1.0), "traffic_cone": (0.4, 0.4, 1.0)}


def scene(labels: list[str], stamp: int = 1_000, spacing: float = 3.0) -> FrameBoxes:
    """Ground truth: one box per label, 3 m apart on a line in front of the ego, yaw 0.3, velocity (2, 1),
    ``siren`` False for cars and trucks."""
    boxes = [[5.0 + spacing * i, 2.0, 0.8, *SIZES[lb], 0.3] for i, lb in enumerate(labels)]
    return FrameBoxes.create(stamp, boxes, labels, velocities=[[2.0, 1.0]] * len(labels),
                             attributes=[{"siren": False} if lb in ("car", "truck") else {} for lb in labels])


def as_predictions(gt: FrameBoxes, scores: list[float] | None = None) -> FrameBoxes:
    """The ground truth itself as predictions (scores 0.9, 0.89, ... unless given)."""
    n = len(gt)
    return FrameBoxes(gt.stamp_ns, gt.boxes.copy(), gt.velocities.copy(),
                      np.array(scores if scores is not None else [0.9 - 0.01 * i for i in range(n)]),
                      gt.labels.copy(), tuple(dict(a) for a in gt.attributes), np.full(n, -1, np.int64))


ALL4 = ["car", "truck", "pedestrian", "bicycle"] * 3


# ---------------------------------------------------------------------------------------------- metrics
def test_perfect_predictions_give_ap_1_zero_errors_and_nds_1():
    gt = scene(ALL4)
    r = evaluate([as_predictions(gt)], [gt])
    for c in r.classes:
        assert c.ap_by_threshold == pytest.approx((1.0,) * 4)
        assert (c.tp.ate, c.tp.ase, c.tp.aoe, c.tp.ave) == pytest.approx((0.0, 0.0, 0.0, 0.0), abs=1e-12)
        assert c.num_gt == 3 and c.num_predictions == 3
    assert r.class_result("car").tp.aae == 0.0
    assert math.isnan(r.class_result("pedestrian").tp.aae)  # no attribute for pedestrians: not evaluated
    assert r.mean_ap == pytest.approx(1.0)
    assert r.nds == pytest.approx(1.0)


def test_shift_of_0_7_m_misses_only_the_half_metre_threshold():
    gt = scene(ALL4)
    pred = as_predictions(gt)
    pred.boxes[:, 0] += 0.7
    r = evaluate([pred], [gt])
    for c in r.classes:
        assert c.ap_by_threshold[0] == 0.0
        assert c.ap_by_threshold[1:] == pytest.approx((1.0, 1.0, 1.0))
        assert c.ap == pytest.approx(0.75)
        assert c.tp.ate == pytest.approx(0.7)
    assert r.mean_ap == pytest.approx(0.75)
    # NDS = (5 * 0.75 + (1 - 0.7) + 1 + 1 + 1 + 1) / 10
    assert r.nds == pytest.approx((5 * 0.75 + 0.3 + 4) / 10)


def test_pedestrian_yaw_off_by_pi_gives_aoe_pi():
    gt = scene(["pedestrian"] * 4)
    pred = as_predictions(gt)
    pred.boxes[:, 6] += math.pi
    r = evaluate([pred], [gt])
    ped = r.class_result("pedestrian")
    assert ped.tp.aoe == pytest.approx(math.pi)
    assert ped.ap == pytest.approx(1.0) and ped.tp.ate == pytest.approx(0.0)


def test_yaw_difference_wraps_around():
    gt = scene(["car"] * 3)
    pred = as_predictions(gt)
    pred.boxes[:, 6] += 2 * math.pi - 0.1  # the same heading 0.1 rad clockwise
    assert evaluate([pred], [gt]).class_result("car").tp.aoe == pytest.approx(0.1)


def test_barrier_heading_reversed_is_no_orientation_error_with_the_nuscenes_config():
    config = EvalConfig.nuscenes_cvpr_2019()
    gt = scene(["barrier"] * 3)
    pred = as_predictions(gt)
    pred.boxes[:, 6] += math.pi + 0.2
    barrier = evaluate([pred], [gt], config).class_result("barrier")
    assert barrier.tp.aoe == pytest.approx(0.2)  # period pi
    assert math.isnan(barrier.tp.ave) and math.isnan(barrier.tp.aae)


def test_traffic_cone_has_no_orientation_velocity_or_attribute_error_and_is_left_out_of_the_means():
    config = EvalConfig(classes=(ClassSpec("car", 50.0, attribute="siren"),
                                 ClassSpec("traffic_cone", 30.0, yaw_period_rad=None, has_velocity=False)))
    gt = scene(["car", "traffic_cone", "car", "traffic_cone"])
    pred = as_predictions(gt)
    cone = np.nonzero(gt.labels == "traffic_cone")[0]
    pred.boxes[cone, 6] += 1.0
    pred.velocities[cone] += 10.0
    r = evaluate([pred], [gt], config)
    tp = r.class_result("traffic_cone").tp
    assert math.isnan(tp.aoe) and math.isnan(tp.ave) and math.isnan(tp.aae)
    assert r.tp_errors.aoe == pytest.approx(0.0) and r.tp_errors.ave == pytest.approx(0.0)
    assert r.nds == pytest.approx(1.0)


def test_half_length_prediction_gives_scale_error_one_half():
    gt = scene(["truck"] * 3)
    pred = as_predictions(gt)
    pred.boxes[:, 3] /= 2  # aligned IoU = (l/2 w h) / (l w h)
    assert evaluate([pred], [gt]).class_result("truck").tp.ase == pytest.approx(0.5)


def test_velocity_error_is_the_l2_norm_of_the_difference():
    gt = scene(["car"] * 3)
    pred = as_predictions(gt)
    pred.velocities[:] += [0.3, -0.4]
    assert evaluate([pred], [gt]).class_result("car").tp.ave == pytest.approx(0.5)


def test_wrong_siren_gives_attribute_error_1_and_a_missing_one_counts_as_wrong():
    gt = scene(["car"] * 4)
    pred = as_predictions(gt)
    wrong = FrameBoxes(pred.stamp_ns, pred.boxes, pred.velocities, pred.scores, pred.labels,
                       ({"siren": True}, {}, {"siren": 1}, {"siren": True}), pred.num_points)
    assert evaluate([wrong], [gt]).class_result("car").tp.aae == pytest.approx(1.0)


def test_ground_truth_without_the_attribute_is_left_out_of_aae():
    gt = scene(["car"] * 4)
    gt = FrameBoxes(gt.stamp_ns, gt.boxes, gt.velocities, gt.scores, gt.labels,
                    ({"siren": False}, {}, {}, {}), gt.num_points)
    pred = as_predictions(gt)
    pred = FrameBoxes(pred.stamp_ns, pred.boxes, pred.velocities, pred.scores, pred.labels,
                      ({"siren": False}, {"siren": True}, {"siren": True}, {}), pred.num_points)
    assert evaluate([pred], [gt]).class_result("car").tp.aae == 0.0  # only the first box is judged


def test_class_without_ground_truth_gets_ap_0_and_tp_errors_1_as_in_the_devkit(caplog):
    gt = scene(["car"] * 3)
    pred = as_predictions(gt)
    with caplog.at_level(logging.WARNING):
        r = evaluate([pred], [gt], EvalConfig(classes=DEFAULT_TWO))
    truck = r.class_result("truck")
    assert truck.ap == 0.0 and truck.num_gt == 0
    assert (truck.tp.ate, truck.tp.ase, truck.tp.aoe, truck.tp.ave, truck.tp.aae) == (1.0,) * 5
    assert r.mean_ap == pytest.approx(0.5)
    assert r.tp_errors.ate == pytest.approx(0.5)  # mean of car 0 and truck 1
    assert "truck has no ground truth" in caplog.text


DEFAULT_TWO = (ClassSpec("car", 50.0, attribute="siren"), ClassSpec("truck", 50.0, attribute="siren"))


def test_lower_scored_duplicates_are_false_positives_that_lower_only_the_last_recall_bin():
    gt = scene(["car"] * 5)
    pred = as_predictions(gt)
    dup = FrameBoxes.create(gt.stamp_ns, np.vstack([pred.boxes, pred.boxes]), ["car"] * 10,
                            velocities=np.vstack([pred.velocities] * 2), scores=[0.9] * 5 + [0.5] * 5,
                            attributes=list(pred.attributes) * 2)
    car = evaluate([dup], [gt]).class_result("car")
    assert [c.num_tp for c in car.curves] == [5, 5, 5, 5]  # each object matched once
    # All 5 true positives rank above the duplicates, so precision is 1 up to recall 1; but the devkit
    # interpolates without a precision envelope, and np.interp at recall 1 (reached again by every later
    # false positive) takes the last precision, 5/10. AP = (89 * 1 + (0.5 - 0.1) / 0.9) / 90.
    assert car.curves[0].precision[99] == 1.0 and car.curves[0].precision[100] == 0.5
    assert car.ap == pytest.approx((89 + 0.4 / 0.9) / 90)


def test_matching_is_greedy_by_score_not_by_distance():
    gt = scene(["car"])
    boxes = np.repeat(gt.boxes, 2, axis=0)
    boxes[0, 0] += 0.3  # higher score, farther away: takes the object
    pred = FrameBoxes.create(gt.stamp_ns, boxes, ["car", "car"], velocities=np.repeat(gt.velocities, 2, axis=0),
                             scores=[0.95, 0.9], attributes=[{"siren": False}] * 2)
    car = evaluate([pred], [gt]).class_result("car")
    assert car.tp.ate == pytest.approx(0.3)
    assert [c.num_tp for c in car.curves] == [1, 1, 1, 1]  # the nearer one is a false positive


def test_tied_scores_give_the_object_to_the_later_prediction_in_the_file():
    # The devkit sorts (score, index) pairs and reverses them, so among equal scores the later one wins.
    gt = scene(["car"])
    boxes = np.repeat(gt.boxes, 2, axis=0)
    boxes[0, 0] += 0.2
    boxes[1, 0] += 0.4
    pred = FrameBoxes.create(gt.stamp_ns, boxes, ["car", "car"], velocities=np.repeat(gt.velocities, 2, axis=0),
                             scores=[0.5, 0.5], attributes=[{"siren": False}] * 2)
    assert evaluate([pred], [gt]).class_result("car").tp.ate == pytest.approx(0.4)


def test_predictions_in_a_frame_without_ground_truth_are_false_positives():
    # One object found at score 0.8 after a false positive at 0.9 in an empty frame: precision rises
    # linearly 0 -> 0.5 over recall 0 -> 1, so AP = mean over r = 0.11..1 of max(0.5 r - 0.1, 0) / 0.9
    # = (0.5 * 48.4 - 8) / 90 / 0.9 = 0.2 at every threshold.
    gt1 = scene(["car"], stamp=1)
    gt2 = FrameBoxes.create(2, np.zeros((0, 7)), [])
    fp = FrameBoxes.create(2, [[10.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0]], ["car"], scores=[0.9],
                           attributes=[{"siren": False}])
    car = evaluate([as_predictions(gt1, [0.8]), fp], [gt1, gt2]).class_result("car")
    assert car.ap_by_threshold == pytest.approx((0.2,) * 4)


def test_ground_truth_frame_without_a_prediction_line_counts_as_misses(caplog):
    gt1, gt2 = scene(["car"], stamp=1), scene(["car"], stamp=2)
    with caplog.at_level(logging.WARNING):
        r = evaluate([as_predictions(gt1)], [gt1, gt2], EvalConfig(classes=DEFAULT_TWO[:1]))
    # precision 1 up to recall 0.5, nothing beyond: 40 of the 90 recall bins above 0.1.
    assert r.class_result("car").ap == pytest.approx(40 / 90)
    assert r.counts.ground_truth_frames_without_predictions == 1
    assert "1 of 2 ground-truth frames have no prediction line" in caplog.text


def test_recall_not_above_min_recall_gives_ap_0_and_tp_errors_1():
    gt = scene(["car"] * 20, spacing=2.0)
    pred = as_predictions(gt)[np.arange(2)]  # 2 of 20 found perfectly: recall 0.1
    car = evaluate([pred], [gt], EvalConfig(classes=DEFAULT_TWO[:1])).class_result("car")
    assert car.ap == 0.0
    assert car.tp.ate == 1.0 and car.tp.ase == 1.0


def test_empty_predictions_give_map_0_and_nds_0(tmp_path):
    gt = scene(ALL4)
    write_results_file(tmp_path / "gt.jsonl", [gt])
    (tmp_path / "pred.jsonl").write_text("")
    r = evaluate_files(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl")
    assert r.mean_ap == 0.0 and r.nds == 0.0
    assert r.counts.prediction_frames == 0 and r.counts.ground_truth_frames_without_predictions == 1


def test_class_range_filters_ground_truth_and_predictions_by_distance_from_the_ego():
    # Cars at 49.9 m count, at 50.0 m (the range itself) and beyond do not; a pedestrian at 45 m is
    # beyond its 40 m. A false positive at 60 m costs nothing.
    boxes = [[49.9, 0.0, 0.8, *SIZES["car"], 0.0], [30.0, 40.0, 0.8, *SIZES["car"], 0.0],
             [0.0, -45.0, 0.9, *SIZES["pedestrian"], 0.0], [10.0, 0.0, 0.8, *SIZES["car"], 0.0]]
    gt = FrameBoxes.create(1, boxes, ["car", "car", "pedestrian", "car"], attributes=[{"siren": False}] * 4)
    pred = FrameBoxes.create(1, [boxes[0], boxes[3], [60.0, 0.0, 0.8, *SIZES["car"], 0.0]], ["car"] * 3,
                             scores=[0.5, 0.6, 0.9], attributes=[{"siren": False}] * 3)
    r = evaluate([pred], [gt])
    car = r.class_result("car")
    assert car.num_gt == 2 and car.num_predictions == 2
    assert car.ap == pytest.approx(1.0)
    assert r.class_result("pedestrian").num_gt == 0
    assert r.counts.ground_truth_boxes_out_of_range == 2 and r.counts.prediction_boxes_out_of_range == 1


def test_ground_truth_with_zero_lidar_points_is_not_evaluated():
    gt = scene(["car"] * 3)
    gt = FrameBoxes(gt.stamp_ns, gt.boxes, gt.velocities, gt.scores, gt.labels, gt.attributes,
                    np.array([0, 12, -1]))
    pred = as_predictions(gt)[np.array([1, 2])]  # the zero-point box is not found: no miss
    r = evaluate([pred], [gt])
    assert r.class_result("car").num_gt == 2 and r.class_result("car").ap == pytest.approx(1.0)
    assert r.counts.ground_truth_boxes_without_points == 1


def test_ground_truth_labels_outside_the_classes_are_skipped_and_counted(caplog):
    gt = scene(["car", "car"])
    gt = FrameBoxes.create(gt.stamp_ns, np.vstack([gt.boxes, [[20.0, -5.0, 2.5, 0.3, 0.3, 5.0, 0.0]]]),
                           ["car", "car", "pole"], velocities=np.vstack([gt.velocities, [[0.0, 0.0]]]),
                           attributes=list(gt.attributes) + [{}])
    with caplog.at_level(logging.WARNING):
        r = evaluate([as_predictions(gt)[np.array([0, 1])]], [gt])
    assert r.counts.ground_truth_boxes_unknown_label == 1
    assert r.class_result("car").ap == pytest.approx(1.0)
    assert "'pole': 1" in caplog.text


def test_prediction_label_outside_the_classes_is_an_error_naming_file_and_line(tmp_path):
    gt = scene(["car"])
    pred = as_predictions(gt)
    pred = FrameBoxes(pred.stamp_ns, pred.boxes, pred.velocities, pred.scores, np.array(["Car"]),
                      pred.attributes, pred.num_points)
    write_results_file(tmp_path / "gt.jsonl", [gt])
    write_results_file(tmp_path / "pred.jsonl", [pred])
    with pytest.raises(EvaluationError, match=r"pred\.jsonl:1: label 'Car' is not an evaluated class"):
        evaluate_files(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl")


def test_prediction_frame_without_ground_truth_is_an_error(tmp_path):
    gt = scene(["car"], stamp=5)
    write_results_file(tmp_path / "gt.jsonl", [gt])
    write_results_file(tmp_path / "pred.jsonl", [as_predictions(gt), as_predictions(scene(["car"], stamp=6))])
    with pytest.raises(EvaluationError, match=r"pred\.jsonl:2: 1 prediction frame\(s\) have no ground-truth"):
        evaluate_files(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl")


def test_more_than_max_boxes_per_frame_is_an_error():
    gt = scene(["car"] * 3)
    with pytest.raises(EvaluationError, match="3 predictions in one frame; at most 2"):
        evaluate([as_predictions(gt)], [gt], EvalConfig(max_boxes_per_frame=2))


def test_negative_score_from_memory_is_an_error():
    gt = scene(["car"])
    with pytest.raises(EvaluationError, match="scores must be finite and >= 0"):
        evaluate([as_predictions(gt, [-0.1])], [gt])


def test_metrics_json_is_strict_json_with_map_nds_per_class_and_ranges():
    gt = scene(ALL4)
    d = evaluate([as_predictions(gt)], [gt]).to_json_dict()
    text = json.dumps(d, allow_nan=False)  # NaN became null
    back = json.loads(text)
    assert back["mAP"] == pytest.approx(1.0) and back["NDS"] == pytest.approx(1.0)
    assert back["per_class"]["car"]["AP_by_dist_th"]["0.5"] == pytest.approx(1.0)
    assert back["per_class"]["pedestrian"]["AAE"] is None
    assert back["class_range_m"] == {"car": 50.0, "truck": 50.0, "pedestrian": 40.0, "bicycle": 40.0}
    assert set(back["tp_errors"]) == {"ATE", "ASE", "AOE", "AVE", "AAE"}
    assert back["eval_counts"]["ground_truth_boxes"] == 12


def test_eval_config_loads_from_yaml_mapping_and_rejects_bad_values():
    cfg = from_dict(EvalConfig, {"classes": [{"name": "car", "range_m": 50, "attribute": "siren"},
                                             {"name": "traffic_cone", "range_m": 30, "yaw_period_rad": None,
                                              "has_velocity": False}],
                                 "dist_ths_m": [1.0, 2.0], "dist_th_tp_m": 2.0})
    assert cfg.class_names == ("car", "traffic_cone") and cfg.spec("traffic_cone").yaw_period_rad is None
    with pytest.raises(ConfigError, match="dist_th_tp_m 3.0 must be one of"):
        from_dict(EvalConfig, {"dist_th_tp_m": 3.0})
    with pytest.raises(ConfigError, match="class 'car' listed twice"):
        from_dict(EvalConfig, {"classes": [{"name": "car", "range_m": 50}, {"name": "car", "range_m": 40}]})


# ---------------------------------------------------------------------------------------------- files
def test_results_file_round_trips_with_unknown_velocity_as_null(tmp_path):
    gt = FrameBoxes.create(7, [[1.5, -2.25, 0.5, 4.0, 2.0, 1.5, 0.1]], ["car"], velocities=[[np.nan, np.nan]],
                           attributes=[{"siren": np.bool_(True)}], num_points=[42])
    path = tmp_path / "gt.jsonl"
    write_results_file(path, [gt])
    line = json.loads(path.read_text())
    assert line["detections"][0]["vx"] is None and "score" not in line["detections"][0]
    back = read_ground_truth(path).frames[0]
    np.testing.assert_array_equal(back.boxes, gt.boxes)
    assert np.isnan(back.velocities).all() and back.num_points.tolist() == [42]
    assert back.attributes == ({"siren": True},) and back.labels.tolist() == ["car"]

    pred = as_predictions(scene(ALL4))
    write_results_file(tmp_path / "pred.jsonl", [pred])
    got = read_predictions(tmp_path / "pred.jsonl").frames[0]
    np.testing.assert_array_equal(got.boxes, pred.boxes)  # floats written with repr: exact
    np.testing.assert_array_equal(got.scores, pred.scores)
    assert got.labels.tolist() == pred.labels.tolist() and got.num_points.tolist() == [-1] * 12


GOOD = {"x": 1.0, "y": 2.0, "z": 0.5, "length": 4.0, "width": 2.0, "height": 1.5, "yaw": 0.0, "vx": 0.0,
        "vy": 0.0, "score": 0.5, "label": "car", "attributes": {"siren": False}}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def line(stamp: int, **changes) -> str:
    det = {**GOOD, **changes}
    det = {k: v for k, v in det.items() if v is not ...}  # ... removes the key
    return json.dumps({"stamp_ns": stamp, "detections": [det]})


@pytest.mark.parametrize("bad, message", [
    ('{"stamp_ns": 2, "detections": [', r"p\.jsonl:2: not valid JSON"),
    (line(2, yaw=...), r"p\.jsonl:2: detections\[0\]: missing key 'yaw'"),
    (line(2, x="1.0"), r"p\.jsonl:2: detections\[0\]\.x: expected a number, got '1.0'"),
    (line(2, score=True), r"detections\[0\]\.score: expected a number, got True"),
    (line(2, width=0.0), r"detections\[0\]\.width: box sizes must be > 0"),
    (line(2, score=-0.5), r"detections\[0\]\.score: must be >= 0"),
    (line(2, vx=None), r"detections\[0\]\.vx: expected a number, got None"),
    (line(2, score=...), r"detections\[0\]: missing key 'score'"),
    (line(2, label=3), r"detections\[0\]\.label: expected a non-empty class name"),
    (line(2, attributes=[1]), r"detections\[0\]\.attributes: expected an object"),
    (line(2, attributes={"a": {"b": 1}}), r"detections\[0\]\.attributes\.a: expected a string, bool or number"),
    (line(2, num_points=-3), r"detections\[0\]\.num_points: expected an integer >= 0"),
    (line(2).replace('"x": 1.0', '"x": NaN'), r"p\.jsonl:2: not valid JSON: non-finite number NaN"),
    (line(2).replace('"x": 1.0', '"x": 1e400'), r"detections\[0\]\.x: expected a finite number"),
    ('{"stamp_ns": "2", "detections": []}', r"p\.jsonl:2: stamp_ns: expected an integer"),
    ('{"stamp_ns": 2}', r"p\.jsonl:2: missing key 'detections'"),
    ('[1, 2]', r"p\.jsonl:2: expected a JSON object per line, got list"),
    (line(1), r"p\.jsonl:2: stamp_ns 1 already on line 1"),
])
def test_malformed_prediction_lines_are_errors_naming_file_line_and_key(tmp_path, bad, message):
    path = write_lines(tmp_path / "p.jsonl", line(1), bad, line(3))
    with pytest.raises(ResultsFileError, match=message):
        read_predictions(path)


def test_ground_truth_needs_no_score_and_may_have_unknown_velocity(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", line(1, score=..., vx=None, vy=None, num_points=3))
    frame = read_ground_truth(path).frames[0]
    assert np.isnan(frame.scores[0]) and np.isnan(frame.velocities[0]).all() and frame.num_points[0] == 3


def test_interrupted_last_line_is_skipped_counted_and_logged(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n" + line(2) + "\n" + line(3)[:40])
    with caplog.at_level(logging.WARNING):
        f = read_predictions(path)
    assert [fr.stamp_ns for fr in f.frames] == [1, 2] and f.truncated_last_line == 1
    assert "p.jsonl:3: skipped an incomplete last line" in caplog.text
    # The same damage followed by a newline (or anywhere else) is an error.
    path.write_text(line(1) + "\n" + line(3)[:40] + "\n")
    with pytest.raises(ResultsFileError, match=r"p\.jsonl:2: not valid JSON"):
        read_predictions(path)


def test_blank_lines_are_ignored_and_line_numbers_stay_true(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", "", line(1), "   ", line(2))
    f = read_predictions(path)
    assert f.line_numbers == (2, 4) and f.where(1).endswith("p.jsonl:4")


def test_missing_file_is_a_results_file_error(tmp_path):
    with pytest.raises(ResultsFileError, match="nope.jsonl: cannot read"):
        read_predictions(tmp_path / "nope.jsonl")


def test_writer_flushes_each_line_so_a_reader_sees_frames_while_it_is_open(tmp_path):
    gt = scene(["car", "pedestrian"])
    path = tmp_path / "p.jsonl"
    with ResultsWriter(path) as w:
        w.write(as_predictions(gt))
        assert len(read_predictions(path).frames) == 1
        w.write(as_predictions(scene(["car"], stamp=2000)))
    assert w.frames_written == 2 and len(read_predictions(path).frames) == 2


def test_boolean_mask_selects_boxes():
    pred = as_predictions(scene(["car", "pedestrian", "truck"]))
    sel = pred[pred.scores > 0.895]
    assert sel.labels.tolist() == ["car"] and sel.attributes == ({"siren": False},) and len(sel) == 1


def test_ground_truth_message_becomes_a_frame_with_class_names_sirens_and_points():
    msg = GroundTruthBoxes("ground_truth", 99, 0, np.array([[3.0, 1.0, 0.8, 4.4, 1.8, 1.5, 0.2]] * 2),
                           np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([1, 2], np.int32), np.array([7, 8], np.int32),
                           np.array([True, False]), np.array([120, 0], np.int32))
    f = frame_from_ground_truth(msg)
    assert f.stamp_ns == 99 and f.labels.tolist() == ["truck", "pedestrian"]
    assert f.attributes == ({"siren": True}, {"siren": False}) and f.num_points.tolist() == [120, 0]
    assert np.isnan(f.scores).all()


def test_evaluation_imports_no_model_code():
    code = ("import sys, perception.evaluation; bad = [m for m in ('torch', 'perception.models') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------- end to end
def test_sample_drive_ground_truth_against_a_noisy_detector_end_to_end(tmp_path):
    from drivers.recording import RecordingReader

    path = REPO / "recordings" / "sample_drive.mcap"
    if not path.exists():
        pytest.skip(f"{path} not present")
    reader = RecordingReader(path)
    gt_frames = [frame_from_ground_truth(m) for m in reader.messages(sensors=["ground_truth"])]
    reader.close()
    assert len(gt_frames) == 100
    write_results_file(tmp_path / "gt.jsonl", gt_frames)

    # The visible ground truth as predictions (objects without LiDAR points are not evaluated, so a
    # detection of one would be a false positive).
    visible = [f[f.num_points != 0] for f in gt_frames]
    write_results_file(tmp_path / "perfect.jsonl", [as_predictions(f) for f in visible])
    perfect = evaluate_files(tmp_path / "perfect.jsonl", tmp_path / "gt.jsonl")
    # No truck comes within 50 m in this drive: the devkit rule gives it AP 0, so mAP is 3/4 ...
    assert perfect.class_result("truck").num_gt == 0
    assert [c.ap for c in perfect.classes] == pytest.approx([1.0, 0.0, 1.0, 1.0])
    assert perfect.mean_ap == pytest.approx(0.75)
    # ... and a config with the classes the drive contains scores it perfect (predictions of classes
    # outside the config are an error, so the truck detections beyond 50 m are left out of the file).
    three = EvalConfig(classes=tuple(c for c in EvalConfig().classes if c.name != "truck"))
    visible = [f[f.labels != "truck"] for f in visible]
    write_results_file(tmp_path / "perfect.jsonl", [as_predictions(f) for f in visible])
    perfect = evaluate_files(tmp_path / "perfect.jsonl", tmp_path / "gt.jsonl", three)
    assert perfect.mean_ap == pytest.approx(1.0) and perfect.nds == pytest.approx(1.0)
    assert perfect.class_result("car").num_gt > 100
    assert perfect.counts.ground_truth_boxes_without_points > 0  # the recording has unseen objects

    # A detector with 0.3 m centre noise that misses 20 % and drops every tenth frame.
    rng = np.random.default_rng(0)
    noisy = []
    for k, f in enumerate(visible):
        if k % 10 == 9:
            continue
        p = as_predictions(f, list(rng.uniform(0.2, 1.0, len(f))))
        p.boxes[:, :2] += rng.normal(0, 0.3, (len(f), 2))
        noisy.append(p[rng.random(len(f)) < 0.8])
    write_results_file(tmp_path / "noisy.jsonl", noisy)
    r = evaluate_files(tmp_path / "noisy.jsonl", tmp_path / "gt.jsonl", three)
    assert r.counts.ground_truth_frames_without_predictions == 10
    assert 0.2 < r.mean_ap < perfect.mean_ap
    assert r.tp_errors.ate == pytest.approx(0.3 * math.sqrt(math.pi / 2), rel=0.25)  # Rayleigh mean
    print(f"\nsample drive: noisy detector mAP {r.mean_ap:.3f} NDS {r.nds:.3f} mATE {r.tp_errors.ate:.3f}")
