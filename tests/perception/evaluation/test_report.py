"""``perception eval`` on run folders written here: headline metrics, runs with colliding stamps, range and
tag breakdowns, latency merging, report.html and its plots, and the one-line errors."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perception.cli_eval import EvalCliError, add_eval_parser
from perception.evaluation.metrics import EvalConfig, evaluate, evaluate_files, evaluate_many
from perception.evaluation.results import FrameBoxes, read_ground_truth, read_predictions, write_results_file
from perception.timing import FrameTiming, LatencyLog

REPO = Path(__file__).resolve().parents[3]
SIZES = {"car": (4.5, 1.9, 1.6), "truck": (8.0, 2.5, 3.2), "pedestrian": (0.7, 0.7, 1.75), "bicycle": (1.8, 0.6, 1.3)}
ALL4 = ["car", "truck", "pedestrian", "bicycle"]
STAMP0 = 1_700_000_000_000_000_000  # every simulated drive starts here: stamps of different runs collide


def gt_frame(stamp: int, xy: list[tuple[float, float]], labels: list[str]) -> FrameBoxes:
    """Ground truth: boxes at ``xy`` with their class sizes, yaw 0.3, velocity (2, 1), siren False for
    cars and trucks."""
    boxes = [[x, y, 0.8, *SIZES[lb], 0.3] for (x, y), lb in zip(xy, labels)]
    return FrameBoxes.create(stamp, boxes, labels, velocities=[[2.0, 1.0]] * len(labels),
                             attributes=[{"siren": False} if lb in ("car", "truck") else {} for lb in labels])


def as_predictions(gt: FrameBoxes, scores: list[float] | None = None) -> FrameBoxes:
    """The ground truth itself as predictions (scores 0.9, 0.89, ... unless given)."""
    n = len(gt)
    return FrameBoxes.create(gt.stamp_ns, gt.boxes.copy(), gt.labels.tolist(), velocities=gt.velocities.copy(),
                             scores=scores if scores is not None else [0.9 - 0.01 * i for i in range(n)],
                             attributes=gt.attributes)


def write_run(d: Path, predictions: list[FrameBoxes], ground_truth: list[FrameBoxes] | None,
              tags: dict | None = None, latency: LatencyLog | None = None) -> Path:
    """A run folder as ``perception replay --out`` writes it."""
    d.mkdir(parents=True, exist_ok=True)
    write_results_file(d / "detections.jsonl", predictions)
    if ground_truth is not None:
        write_results_file(d / "ground_truth.jsonl", ground_truth)
    if tags is not None:
        (d / "run.json").write_text(json.dumps({"recording": f"{d.name}.mcap", "tags": tags}))
    if latency is not None:
        latency.write(d / "latency.json")
    return d


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="perception")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def eval_metrics(out: Path, *run_dirs: Path, extra: tuple[str, ...] = ("--quiet",)) -> dict:
    assert run_eval(*map(str, run_dirs), "--out", str(out), *extra) == 0
    return json.loads((out / "metrics.json").read_text())


def two_per_class_scene(stamp: int) -> FrameBoxes:
    """Two boxes of each class, 10 m apart, all within 40 m."""
    labels = ALL4 * 2
    xy = [(5.0 + 10.0 * (i % 4), -6.0 if i < 4 else 6.0) for i in range(8)]
    return gt_frame(stamp, xy, labels)


# ---------------------------------------------------------------------------------------------- headline
def test_perfect_predictions_give_map_1_and_nds_1(tmp_path):
    gts = [two_per_class_scene(STAMP0 + k * 100_000_000) for k in range(3)]
    run = write_run(tmp_path / "run", [as_predictions(g) for g in gts], gts)
    m = eval_metrics(tmp_path / "out", run)
    assert m["mAP"] == pytest.approx(1.0)
    # every TP error 0 (AAE of pedestrians/bicycles not evaluated): NDS = (5 * 1 + 5 * (1 - 0)) / 10
    assert m["NDS"] == pytest.approx(1.0)
    for name in ALL4:
        assert m["per_class"][name]["AP_by_dist_th"] == pytest.approx({"0.5": 1.0, "1.0": 1.0, "2.0": 1.0, "4.0": 1.0})
        assert m["per_class"][name]["num_gt"] == 6


def test_known_errors_give_the_hand_computed_nds(tmp_path):
    gts = [two_per_class_scene(STAMP0 + k * 100_000_000) for k in range(2)]
    preds = []
    for g in gts:
        p = as_predictions(g)
        p.boxes[:, 0] += 0.3          # ATE 0.3 m: still a match at the 0.5 m threshold, so AP stays 1
        p.boxes[:, 5] *= 0.5          # half the height: aligned IoU 0.5, ASE 0.5
        p.boxes[:, 6] += 0.2          # AOE 0.2 rad
        p.velocities[:] += (0.3, 0.4)  # AVE 0.5 m/s
        p = FrameBoxes.create(p.stamp_ns, p.boxes, p.labels.tolist(), p.velocities, p.scores,
                              [{"siren": True} if "siren" in a else {} for a in g.attributes])  # AAE 1
        preds.append(p)
    run = write_run(tmp_path / "run", preds, gts)
    m = eval_metrics(tmp_path / "out", run)
    assert m["mAP"] == pytest.approx(1.0)
    assert (m["mATE"], m["mASE"], m["mAOE"], m["mAVE"], m["mAAE"]) == pytest.approx((0.3, 0.5, 0.2, 0.5, 1.0))
    # NDS = (5 * mAP + (1 - 0.3) + (1 - 0.5) + (1 - 0.2) + (1 - 0.5) + max(0, 1 - 1)) / 10 = 7.5 / 10
    assert m["NDS"] == pytest.approx(0.75)


def test_single_run_equals_evaluate_files(tmp_path):
    rng = np.random.default_rng(3)
    gts, preds = [], []
    for k in range(6):
        g = two_per_class_scene(STAMP0 + k * 100_000_000)
        p = as_predictions(g, scores=list(rng.random(len(g))))
        p.boxes[:, :2] += rng.normal(0, 0.8, (len(g), 2))
        gts.append(g)
        preds.append(p[rng.random(len(g)) < 0.8])
    run = write_run(tmp_path / "run", preds, gts)
    m = eval_metrics(tmp_path / "out", run)
    ref = evaluate_files(run / "detections.jsonl", run / "ground_truth.jsonl").to_json_dict()
    assert 0.1 < ref["mAP"] < 0.95  # a case where the numbers mean something
    for key in ("mAP", "NDS", "tp_errors", "tp_scores", "per_class", "eval_counts"):
        assert m[key] == ref[key]
    many = evaluate_many([(read_predictions(run / "detections.jsonl"), read_ground_truth(run / "ground_truth.jsonl"))])
    assert many.to_json_dict() == ref


# ---------------------------------------------------------------------------------------------- several runs
def test_runs_with_colliding_stamps_are_kept_apart(tmp_path):
    # Run A's car is at (10, 0) but A predicted one at (30, 5); run B's car is at (30, 5), found by B.
    # Apart: A's prediction (0.9) is a false positive ranked above B's true positive (0.8). Merged by stamp,
    # A's prediction would take B's car and rank a true positive first: a different AP.
    gt_a, gt_b = gt_frame(STAMP0, [(10.0, 0.0)], ["car"]), gt_frame(STAMP0, [(30.0, 5.0)], ["car"])
    pred_a = as_predictions(gt_frame(STAMP0, [(30.0, 5.0)], ["car"]), [0.9])
    pred_b = as_predictions(gt_b, [0.8])
    a = write_run(tmp_path / "a", [pred_a], [gt_a])
    b = write_run(tmp_path / "b", [pred_b], [gt_b])
    m = eval_metrics(tmp_path / "out", a, b, extra=("--quiet", "--classes", "car"))

    def shifted(f: FrameBoxes) -> FrameBoxes:  # the reference: the same frames under distinct stamps
        return FrameBoxes(f.stamp_ns + 1, f.boxes, f.velocities, f.scores, f.labels, f.attributes, f.num_points)

    def both(x: FrameBoxes, y: FrameBoxes) -> FrameBoxes:  # what merging by stamp would make of them
        return FrameBoxes(STAMP0, np.r_[x.boxes, y.boxes], np.r_[x.velocities, y.velocities],
                          np.r_[x.scores, y.scores], np.r_[x.labels, y.labels], x.attributes + y.attributes,
                          np.r_[x.num_points, y.num_points])

    cars = EvalConfig(classes=EvalConfig().classes[:1])
    apart = evaluate([pred_a, shifted(pred_b)], [gt_a, shifted(gt_b)], cars)
    merged = evaluate([both(pred_a, pred_b)], [both(gt_a, gt_b)], cars)
    assert merged.mean_ap != pytest.approx(apart.mean_ap)  # merging would change the result ...
    assert m["mAP"] == pytest.approx(apart.mean_ap)         # ... and the runs were kept apart
    assert m["per_class"]["car"]["num_gt"] == 2 and m["eval_counts"]["ground_truth_frames"] == 2


def test_box_at_30_m_is_only_in_the_20_40_band(tmp_path):
    # The truck is at x = 18 m but 30 m away (18, 24): the band goes by ground-plane distance, not x.
    gt = gt_frame(STAMP0, [(5.0, 0.0), (18.0, 24.0)], ["car", "truck"])
    run = write_run(tmp_path / "run", [as_predictions(gt)], [gt])
    bands = eval_metrics(tmp_path / "out", run)["by_range"]
    assert list(bands) == ["0-20", "20-40", "40+"]
    assert list(bands["0-20"]["per_class"]) == ["car"]
    assert list(bands["20-40"]["per_class"]) == ["truck"]
    assert bands["20-40"]["per_class"]["truck"]["num_gt"] == 1
    assert bands["20-40"]["per_class"]["truck"]["AP"] == pytest.approx(1.0)
    assert bands["20-40"]["classes_without_ground_truth"] == ["car", "pedestrian", "bicycle"]
    assert bands["40+"]["mAP"] is None and bands["40+"]["max_m"] is None
    assert (bands["20-40"]["min_m"], bands["20-40"]["max_m"]) == (20.0, 40.0)


def test_by_sector_splits_by_bearing_with_the_rear_wrapping_through_180_degrees(tmp_path):
    # Cars ahead, on the left, behind (both sides of 180 deg) and on the right; the sector edges belong to
    # the sector counter-clockwise of them (45 deg is left, -45 deg is front, -135 deg is right).
    xy = [(20.0, 0.0), (10.0, 10.0), (0.0, 15.0), (-20.0, 0.5), (-20.0, -0.5), (10.0, -10.0), (-10.0, -10.0),
          (0.0, -15.0)]
    gt = gt_frame(STAMP0, xy, ["car"] * len(xy))
    pred = as_predictions(gt)
    pred.boxes[6, 0] += 1.5  # the car at -135 deg is found 1.5 m off: a TP at 2 m, a miss at 0.5 and 1 m
    run = write_run(tmp_path / "run", [pred], [gt])
    sectors = eval_metrics(tmp_path / "out", run)["by_sector"]
    assert list(sectors) == ["front", "left", "rear", "right"]
    assert {k: v["per_class"]["car"]["num_gt"] for k, v in sectors.items()} == {"front": 2, "left": 2, "rear": 2,
                                                                                "right": 2}
    assert (sectors["rear"]["from_deg"], sectors["rear"]["to_deg"]) == (135.0, -135.0)
    for name in ("front", "left", "rear"):
        assert sectors[name]["mAP"] == pytest.approx(1.0)
    # Right: the displaced car is a miss at the 0.5 m threshold and a hit at 4 m.
    ap = sectors["right"]["per_class"]["car"]["AP_by_dist_th"]
    assert ap["0.5"] < 1.0 and ap["4.0"] == pytest.approx(1.0)
    assert sectors["right"]["mAP"] < 1.0


def test_by_tag_evaluates_each_weather_over_its_runs(tmp_path):
    gts = [two_per_class_scene(STAMP0)]
    fog = write_run(tmp_path / "fog1", [as_predictions(g) for g in gts], gts, tags={"weather": "fog", "seed": 1})
    clear = write_run(tmp_path / "clear1", [FrameBoxes.create(STAMP0, np.zeros((0, 7)), [])], gts,
                      tags={"weather": "clear", "seed": 2})
    m = eval_metrics(tmp_path / "out", fog, clear)
    weather = m["by_tag"]["weather"]
    assert sorted(weather) == ["clear", "fog"]
    assert weather["fog"]["mAP"] == pytest.approx(1.0) and weather["fog"]["runs"] == ["fog1"]
    assert weather["clear"]["mAP"] == 0.0 and weather["clear"]["runs"] == ["clear1"]
    assert m["by_tag"]["seed"]["1"]["runs"] == ["fog1"]
    assert [(r["name"], r["recording"], r["tags"]["weather"]) for r in m["runs"]] == [
        ("fog1", "fog1.mcap", "fog"), ("clear1", "clear1.mcap", "clear")]
    # Half the objects found, all at precision 1: of the 90 recall bins above 0.1, the 40 up to recall 0.5
    # have precision 1 (clipped by 0.1 and renormalised by 0.9: 1), the rest 0.
    assert m["mAP"] == pytest.approx(40 / 90)


def test_classes_option_leaves_the_other_classes_out(tmp_path):
    gt = two_per_class_scene(STAMP0)
    pred = as_predictions(gt)
    pred.boxes[gt.labels != "car", 0] += 3.0  # every class but car is missed at every threshold
    m = eval_metrics(tmp_path / "out", write_run(tmp_path / "run", [pred], [gt]), extra=("--quiet", "--classes", "car"))
    assert list(m["per_class"]) == ["car"]
    assert m["mAP"] == pytest.approx(1.0)
    assert m["eval_counts"]["prediction_boxes"] == 2  # the other classes' predictions were left out


# ---------------------------------------------------------------------------------------------- latency, report
def latency_log(e2e_ms: list[float], dropped: int) -> LatencyLog:
    log = LatencyLog(deadline_ms=50.0)
    for i, e in enumerate(e2e_ms):
        log.add(FrameTiming(STAMP0 + i, (("align", 1.0 + i), ("model", 20.0 + i)), e), partial=i == 0)
    log.add_dropped(dropped)
    return log


def test_report_links_pngs_that_exist_and_metrics_pool_latency(tmp_path):
    gts = [two_per_class_scene(STAMP0 + k * 100_000_000) for k in range(3)]
    preds = [as_predictions(g) for g in gts]
    a = write_run(tmp_path / "a", preds, gts, tags={"weather": "rain"}, latency=latency_log([30.0, 40.0, 60.0], 1))
    b = write_run(tmp_path / "b", preds, gts, tags={"weather": "fog"}, latency=latency_log([35.0, 45.0, 70.0], 2))
    out = tmp_path / "out"
    m = eval_metrics(out, a, b)

    pooled = np.array([30.0, 40.0, 60.0, 35.0, 45.0, 70.0])
    e2e = m["latency_ms"]["end_to_end"]
    assert (e2e["p50"], e2e["p95"], e2e["p99"], e2e["max"]) == pytest.approx(
        tuple(np.percentile(pooled, [50, 95, 99])) + (70.0,))
    assert m["latency_ms"]["stages"]["model"]["max"] == 22.0
    # deadline 50 ms: the 60 and 70 ms frames missed it
    assert m["frames"] == {"total": 9, "emitted": 6, "partial": 2, "dropped": 3, "deadline_missed": 2}

    page = (out / "report.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert set(srcs) == {"pr_curves.png", "ap_by_threshold.png", "ap_by_range.png", "latency_hist.png",
                         "latency_stages.png"}
    for src in srcs:
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in ("Per class", "By distance from the ego", "By tag", "Latency and frames", "Runs"):
        assert f"<h2>{heading}</h2>" in page
    assert "<td>fog</td>" in page and "<td>rain</td>" in page


def test_runs_without_latency_files_report_none(tmp_path):
    gts = [two_per_class_scene(STAMP0)]
    run = write_run(tmp_path / "run", [as_predictions(g) for g in gts], gts)
    m = eval_metrics(tmp_path / "out", run)
    assert m["latency_ms"] is None and m["frames"] is None
    assert "latency_hist.png" not in (tmp_path / "out" / "report.html").read_text()


def test_progress_bar_shows_for_several_runs_only_without_quiet(tmp_path, capsys):
    gts = [two_per_class_scene(STAMP0)]
    a = write_run(tmp_path / "a", [as_predictions(g) for g in gts], gts)
    b = write_run(tmp_path / "b", [as_predictions(g) for g in gts], gts)
    eval_metrics(tmp_path / "out", a, b, extra=())
    captured = capsys.readouterr()
    assert "evaluate" in captured.err and "mAP 1.0000" in captured.out
    eval_metrics(tmp_path / "out2", a, b)
    assert "evaluate" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- errors
def good_run(d: Path) -> Path:
    gts = [two_per_class_scene(STAMP0)]
    return write_run(d, [as_predictions(g) for g in gts], gts)


def test_missing_run_folder_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(EvalCliError) as e:
        run_eval(str(good_run(tmp_path / "ok")), str(missing), "--out", str(tmp_path / "out"))
    assert str(missing) in str(e.value) and "\n" not in str(e.value)


def test_run_without_ground_truth_is_an_error_naming_the_file(tmp_path):
    d = write_run(tmp_path / "run", [two_per_class_scene(STAMP0)], None)
    with pytest.raises(EvalCliError, match="ground_truth.jsonl") as e:
        run_eval(str(d), "--out", str(tmp_path / "out"))
    assert str(d) in str(e.value)


def test_run_without_detections_is_an_error_naming_the_file(tmp_path):
    d = good_run(tmp_path / "run")
    (d / "detections.jsonl").unlink()
    with pytest.raises(EvalCliError, match=f"{re.escape(str(d))}: no detections.jsonl"):
        run_eval(str(d), "--out", str(tmp_path / "out"))


def test_malformed_detections_name_file_and_line(tmp_path):
    d = good_run(tmp_path / "run")
    with open(d / "detections.jsonl", "a") as f:
        f.write('{"stamp_ns": 5}\n')
    with pytest.raises(EvalCliError, match=r"detections.jsonl:2: missing key 'detections'"):
        run_eval(str(d), "--out", str(tmp_path / "out"))


def test_same_run_folder_twice_is_an_error(tmp_path):
    d = good_run(tmp_path / "run")
    with pytest.raises(EvalCliError, match="given twice"):
        run_eval(str(d), str(tmp_path / "run" / ".." / "run"), "--out", str(tmp_path / "out"))


def test_eval_imports_no_model_code(tmp_path):
    d = good_run(tmp_path / "run")
    code = ("import argparse, sys\n"
            "from perception.cli_eval import add_eval_parser\n"
            "p = argparse.ArgumentParser(); add_eval_parser(p.add_subparsers(dest='command'))\n"
            f"a = p.parse_args(['eval', {str(d)!r}, '--out', {str(tmp_path / 'out')!r}, '--quiet'])\n"
            "assert a.func(a) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'onnx', 'spconv')"
            " or m.startswith('perception.models') or m.startswith('perception.backends')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "metrics.json").exists()


def test_perception_eval_command_reports_a_missing_run_in_one_line(tmp_path):
    from perception.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "eval" not in sub.choices:
        pytest.skip("'perception eval' is not wired into perception/cli.py yet")
    missing = tmp_path / "no_such_run"
    out = subprocess.run([sys.executable, "-m", "perception.cli", "eval", str(missing), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(missing) in lines[0]
