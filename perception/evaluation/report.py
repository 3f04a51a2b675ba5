"""Evaluation of replay runs: run folders in, ``metrics.json`` + ``report.html`` + PNG plots out.

A run folder is what ``perception replay --out`` writes:

* ``detections.jsonl`` (required): the results file (DESIGN section 6);
* ``ground_truth.jsonl`` (required here): the recording's ground truth in the same form;
* ``latency.json`` (optional): stage and end-to-end latency and frame counts (:mod:`perception.timing`);
* ``run.json`` (optional): at least ``{"recording": str, "tags": {"weather": "fog", ...}}``.

Several runs are evaluated as one data set with :func:`~perception.evaluation.metrics.evaluate_many`,
which keeps their frames apart even when their stamps collide. Breakdowns:

* ``by_range``: ground truth and predictions both restricted to one band of centre distance from the
  ego origin in the ground plane, ``sqrt(x^2 + y^2)`` (the distance the nuScenes range filter uses):
  ``0-20`` is [0, 20) m, ``20-40`` [20, 40) m, ``40+`` [40, inf) m. The class ranges still apply on top
  (pedestrians and bicycles end at 40 m). A prediction just across a band edge from its object counts
  as a false positive in one band and the object as a miss in the other.
* ``by_sector``: the same by the bearing of the centre from the ego origin, ``atan2(y, x)`` in the ego
  frame (x forward, y left): ``front`` [-45, 45) deg, ``left`` [45, 135), ``rear`` the rest,
  ``right`` [-135, -45). Where sensors cover the vehicle unevenly (a front radar, front and rear cameras),
  this shows where a fused model gains on a LiDAR-only one.
* ``by_tag``: for every tag key of the runs' ``run.json``, one evaluation per value over the runs that
  carry it (runs without the key are not in that key's breakdown).

Subset rule: the headline numbers follow the devkit, where a configured class with no ground truth scores
AP 0 and still counts in mAP. In a breakdown (a range band, a tag value, a single run) that would mostly
measure which classes the subset happens to contain (no pedestrian exists beyond 40 m), so a breakdown is
evaluated over the classes that have ground truth in it (listed in ``classes_without_ground_truth``
otherwise). AP and TP errors are per class, so leaving a class out changes no other class's numbers.

Latency statistics of several runs pool their frames (percentiles over all frames of all runs); frame
counts are summed.

Nothing here imports model code; matplotlib (Agg, no display) is imported only to draw the plots.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception.evaluation import metrics as metrics_module
from perception.evaluation.metrics import (
    TP_METRICS,
    TP_SHORT_NAMES,
    EvalConfig,
    EvalResult,
    evaluate_many,
)
from perception.evaluation.results import FrameBoxes, ResultsFile, read_ground_truth, read_predictions
from perception.timing import LatencyLog, LatencyStats

DETECTIONS_FILE = "detections.jsonl"
GROUND_TRUTH_FILE = "ground_truth.jsonl"
LATENCY_FILE = "latency.json"
RUN_FILE = "run.json"

RANGE_BANDS_M: tuple[tuple[str, float, float], ...] = (("0-20", 0.0, 20.0), ("20-40", 20.0, 40.0),
                                                       ("40+", 40.0, math.inf))
"""(name, lower bound inclusive [m], upper bound exclusive [m]) of the ``by_range`` bands."""

SECTORS_DEG: tuple[tuple[str, float, float], ...] = (("front", -45.0, 45.0), ("left", 45.0, 135.0),
                                                     ("rear", 135.0, -135.0), ("right", -135.0, -45.0))
"""(name, from inclusive [deg], to exclusive [deg]) of the ``by_sector`` breakdown: bearings in [-180, 180),
counter-clockwise from ``from`` to ``to`` (``rear`` wraps through 180)."""

PR_CURVE_DIST_TH_M = 2.0  # the PR curves are drawn at this threshold (the TP-error threshold of nuScenes)


class RunDirError(ValueError):
    """A run folder is missing a file or holds a malformed ``run.json``; the message names the folder."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True, eq=False)
class RunData:
    """One run folder as read.

    Args:
        dir: the folder.
        recording: the recording it replayed (``run.json``), else the folder name.
        tags: (key, value) pairs from ``run.json``, sorted by key; values as strings.
        predictions: ``detections.jsonl``.
        ground_truth: ``ground_truth.jsonl``.
        latency: ``latency.json``, or None when the folder has none.
    """

    dir: Path
    recording: str
    tags: tuple[tuple[str, str], ...]
    predictions: ResultsFile
    ground_truth: ResultsFile
    latency: LatencyLog | None

    @property
    def name(self) -> str:
        """A short label for tables: the folder name."""
        return self.dir.name or str(self.dir)

    def tag(self, key: str) -> str | None:
        """The value of tag ``key``, or None."""
        return dict(self.tags).get(key)


def _tag_value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _read_run_json(path: Path, default_recording: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunDirError(f"{path}: cannot read: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    recording = obj.get("recording", default_recording)
    if not isinstance(recording, str):
        raise RunDirError(f"{path}: recording: expected a string, got {recording!r}")
    tags = obj.get("tags", {})
    if not isinstance(tags, dict):
        raise RunDirError(f"{path}: tags: expected an object {{key: value}}, got {type(tags).__name__}")
    for k, v in tags.items():
        if not isinstance(v, (str, bool, int, float)):
            raise RunDirError(f"{path}: tags.{k}: expected a string, number or bool, got {v!r}")
    return recording, tuple(sorted((str(k), _tag_value(v)) for k, v in tags.items()))


def load_run(run_dir: str | Path) -> RunData:
    """Read one run folder.

    Raises:
        RunDirError: not a folder, no ``detections.jsonl``, no ``ground_truth.jsonl``, bad ``run.json``.
        ResultsFileError / LatencyFileError: a malformed results or latency file (naming file and line/key).
    """
    d = Path(run_dir)
    if not d.exists():
        raise RunDirError(f"run folder {d} does not exist")
    if not d.is_dir():
        raise RunDirError(f"{d} is not a folder (expected the output folder of 'perception replay --out')")
    if not (d / DETECTIONS_FILE).is_file():
        raise RunDirError(f"{d}: no {DETECTIONS_FILE} (expected the output folder of 'perception replay --out')")
    if not (d / GROUND_TRUTH_FILE).is_file():
        raise RunDirError(f"{d}: no {GROUND_TRUTH_FILE}: the recording had no ground truth, so there is nothing "
                          f"to evaluate against")
    recording, tags = d.resolve().name, ()
    if (d / RUN_FILE).is_file():
        recording, tags = _read_run_json(d / RUN_FILE, recording)
    latency = LatencyLog.read(d / LATENCY_FILE) if (d / LATENCY_FILE).is_file() else None
    return RunData(dir=d, recording=recording, tags=tags, predictions=read_predictions(d / DETECTIONS_FILE),
                   ground_truth=read_ground_truth(d / GROUND_TRUTH_FILE), latency=latency)


# ---------------------------------------------------------------------------------------------- evaluating
@dataclass(frozen=True)
class SubsetResult:
    """The evaluation of one breakdown subset (a range band, a tag value, one run).

    Args:
        name: the subset's name (``"0-20"``, ``"fog"``, a run folder name).
        runs: names of the runs it covers.
        result: the evaluation over the classes with ground truth in the subset; None when no class has any.
        classes_without_ground_truth: configured classes left out because the subset has no ground truth
            of them.
    """

    name: str
    runs: tuple[str, ...]
    result: EvalResult | None
    classes_without_ground_truth: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """One run's identity and its own numbers (subset rule), for the runs table."""

    name: str
    dir: str
    recording: str
    tags: tuple[tuple[str, str], ...]
    ground_truth_frames: int
    prediction_frames: int
    subset: SubsetResult
    latency: LatencyLog | None


@dataclass(frozen=True)
class EvalReport:
    """Everything ``metrics.json`` and ``report.html`` show.

    Args:
        overall: all runs together, all configured classes (devkit rule).
        by_range: one :class:`SubsetResult` per band of :data:`RANGE_BANDS_M`.
        by_sector: one :class:`SubsetResult` per sector of :data:`SECTORS_DEG`.
        by_tag: (tag key, one :class:`SubsetResult` per value, sorted) per key, sorted.
        runs: per run.
        latency: the runs' latency logs merged (frames pooled, counts summed); None when no run has one.
        runs_with_latency: how many runs had a ``latency.json``.
    """

    overall: EvalResult
    by_range: tuple[SubsetResult, ...]
    by_sector: tuple[SubsetResult, ...]
    by_tag: tuple[tuple[str, tuple[SubsetResult, ...]], ...]
    runs: tuple[RunSummary, ...]
    latency: LatencyLog | None
    runs_with_latency: int

    @property
    def config(self) -> EvalConfig:
        """The headline evaluation's settings."""
        return self.overall.config


def _ground_plane_distance(frame: FrameBoxes) -> np.ndarray:
    x, y = frame.boxes[:, 0], frame.boxes[:, 1]
    return np.sqrt(x * x + y * y)


def _in_band(frame: FrameBoxes, lo: float, hi: float) -> FrameBoxes:
    d = _ground_plane_distance(frame)
    return frame[(d >= lo) & (d < hi)]


def _in_sector(frame: FrameBoxes, lo_deg: float, hi_deg: float) -> FrameBoxes:
    az = np.degrees(np.arctan2(frame.boxes[:, 1], frame.boxes[:, 0]))
    az = np.where(az >= 180.0, az - 360.0, az)  # [-180, 180)
    inside = (az >= lo_deg) & (az < hi_deg) if lo_deg < hi_deg else (az >= lo_deg) | (az < hi_deg)
    return frame[inside]


def _classes_with_ground_truth(gt_runs: Sequence[Sequence[FrameBoxes]], config: EvalConfig) -> set[str]:
    """Classes with at least one ground-truth box the evaluation would keep (in class range, points != 0)."""
    found: set[str] = set()
    for frames in gt_runs:
        for f in frames:
            if not len(f):
                continue
            d = _ground_plane_distance(f)
            for spec in config.classes:
                if spec.name not in found and np.any((f.labels == spec.name) & (d < spec.range_m)
                                                     & (f.num_points != 0)):
                    found.add(spec.name)
    return found


def evaluate_subset(name: str, runs: Sequence[tuple[str, Sequence[FrameBoxes], Sequence[FrameBoxes]]],
                    config: EvalConfig) -> SubsetResult:
    """Evaluate (run name, predictions, ground truth) triples together over the classes that have ground
    truth in them (the subset rule in the module docstring); predictions of the other classes are left
    out (they could only change the AP of a class that is not reported)."""
    present = _classes_with_ground_truth([gt for _, _, gt in runs], config)
    kept = tuple(c for c in config.classes if c.name in present)
    missing = tuple(c.name for c in config.classes if c.name not in present)
    names = tuple(n for n, _, _ in runs)
    if not kept:
        return SubsetResult(name, names, None, missing)
    sub_config = EvalConfig(classes=kept, dist_ths_m=config.dist_ths_m, dist_th_tp_m=config.dist_th_tp_m,
                            min_recall=config.min_recall, min_precision=config.min_precision,
                            max_boxes_per_frame=config.max_boxes_per_frame, mean_ap_weight=config.mean_ap_weight)
    kept_names = [c.name for c in kept]
    # The other classes' ground truth is all out of range or pointless (else the class would be kept);
    # dropping it keeps the evaluation from logging it as unknown labels.
    pairs = [([f[np.isin(f.labels, kept_names)] for f in pred], [f[np.isin(f.labels, kept_names)] for f in gt])
             for _, pred, gt in runs]
    with _quiet_metrics_log():  # its warnings (frames without predictions...) repeat the headline evaluation's
        result = evaluate_many(pairs, sub_config)
    return SubsetResult(name, names, result, missing)


@contextmanager
def _quiet_metrics_log():
    logger = logging.getLogger(metrics_module.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_runs(runs: Sequence[RunData], config: EvalConfig = EvalConfig(), progress: bool = False) -> EvalReport:
    """Evaluate runs together and broken down by range band, tag value and run.

    Args:
        runs: from :func:`load_run`; at least one.
        config: classes and thresholds of the headline evaluation (the breakdowns use its classes that
            have ground truth in them).
        progress: show a progress bar over the evaluations.
    Raises:
        EvaluationError: predictions and ground truth of a run do not fit together (naming file and line).
    """
    from tqdm import tqdm

    if not runs:
        raise ValueError("evaluate_runs: no runs given")
    tag_keys = sorted({k for r in runs for k, _ in r.tags})
    tag_groups = [(k, sorted({r.tag(k) for r in runs if r.tag(k) is not None})) for k in tag_keys]
    n_jobs = 1 + len(RANGE_BANDS_M) + len(SECTORS_DEG) + sum(len(v) for _, v in tag_groups) + len(runs)
    with tqdm(total=n_jobs, desc="evaluate", unit="eval", disable=not progress) as bar:
        overall = evaluate_many([(r.predictions, r.ground_truth) for r in runs], config)
        bar.update()

        def restricted(bounds, keep) -> list[SubsetResult]:
            # one subset per (name, lo, hi): predictions and ground truth both kept where keep(frame, lo, hi)
            out = []
            for name, lo, hi in bounds:
                triples = [(r.name, [keep(f, lo, hi) for f in r.predictions.frames],
                            [keep(f, lo, hi) for f in r.ground_truth.frames]) for r in runs]
                out.append(evaluate_subset(name, triples, config))
                bar.update()
            return out

        by_range = restricted(RANGE_BANDS_M, _in_band)
        by_sector = restricted(SECTORS_DEG, _in_sector)

        by_tag = []
        for key, values in tag_groups:
            subsets = []
            for value in values:
                members = [r for r in runs if r.tag(key) == value]
                subsets.append(evaluate_subset(value, [(r.name, r.predictions.frames, r.ground_truth.frames)
                                                       for r in members], config))
                bar.update()
            by_tag.append((key, tuple(subsets)))

        summaries = []
        for r in runs:
            subset = evaluate_subset(r.name, [(r.name, r.predictions.frames, r.ground_truth.frames)], config)
            bar.update()
            summaries.append(RunSummary(name=r.name, dir=str(r.dir), recording=r.recording, tags=r.tags,
                                        ground_truth_frames=len(r.ground_truth.frames),
                                        prediction_frames=len(r.predictions.frames), subset=subset,
                                        latency=r.latency))

    logs = [r.latency for r in runs if r.latency is not None]
    return EvalReport(overall=overall, by_range=tuple(by_range), by_sector=tuple(by_sector), by_tag=tuple(by_tag),
                      runs=tuple(summaries),
                      latency=LatencyLog.merged(logs) if logs else None, runs_with_latency=len(logs))


# ---------------------------------------------------------------------------------------------- metrics.json
def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _subset_json(s: SubsetResult) -> dict:
    out: dict = {"runs": list(s.runs), "classes_without_ground_truth": list(s.classes_without_ground_truth)}
    if s.result is None:
        out.update({"mAP": None, "NDS": None, "tp_errors": None, "per_class": {}})
        return out
    full = s.result.to_json_dict()
    out.update({"mAP": full["mAP"], "NDS": full["NDS"], "tp_errors": full["tp_errors"],
                "per_class": full["per_class"], "eval_counts": full["eval_counts"]})
    return out


def latency_json(log: LatencyLog | None, runs_with_latency: int) -> dict | None:
    """The ``latency_ms`` object of ``metrics.json``: end-to-end and per-stage stats [ms]; None without logs."""
    if log is None:
        return None
    s = log.summary()
    return {"percentile_method": "numpy linear", "runs_with_latency": runs_with_latency,
            "deadline_ms": log.deadline_ms, **s.as_dict()}


def metrics_json(report: EvalReport) -> dict:
    """The ``metrics.json`` object.

    Keys: ``mAP``, ``NDS``, ``mATE`` ``mASE`` ``mAOE`` ``mAVE`` ``mAAE``, ``tp_errors``, ``tp_scores``,
    ``per_class`` (``AP``, ``AP_by_dist_th``, ``ATE`` .. ``AAE``, ``num_gt``, ``num_predictions``,
    ``range_m``), ``class_range_m``, ``eval_config``, ``eval_counts``; ``latency_ms`` (``end_to_end`` and
    ``stages`` -> ``{count, p50, p95, p99, max, mean}`` [ms], or null without latency files); ``frames``
    (``total``, ``emitted``, ``partial``, ``dropped``, ``deadline_missed`` summed over the runs with a
    latency file, or null); ``by_range`` (band -> ``min_m``, ``max_m`` (null = unbounded), ``mAP``, ``NDS``,
    ``tp_errors``, ``per_class``, ``classes_without_ground_truth``, ``runs``); ``by_sector`` (sector ->
    ``from_deg``, ``to_deg`` and the same fields as a band); ``by_tag`` (key -> value -> same fields as a
    band); ``runs`` (per run: ``name``, ``dir``, ``recording``, ``tags``, frame numbers, ``mAP``, ``NDS``,
    ``frames``, ``latency_ms``); ``breakdown_rule``. NaN is written as null.
    """
    out = report.overall.to_json_dict()
    head = {"mAP": out.pop("mAP"), "NDS": out.pop("NDS")}
    head.update({f"m{TP_SHORT_NAMES[m]}": out["tp_errors"][TP_SHORT_NAMES[m]] for m in TP_METRICS})
    head.update(out)
    head["latency_ms"] = latency_json(report.latency, report.runs_with_latency)
    head["frames"] = None if report.latency is None else report.latency.counts.as_dict()
    head["by_range"] = {}
    for (band, lo, hi), s in zip(RANGE_BANDS_M, report.by_range):
        head["by_range"][band] = {"min_m": lo, "max_m": _num(hi), **_subset_json(s)}
    head["by_sector"] = {name: {"from_deg": lo, "to_deg": hi, **_subset_json(s)}
                         for (name, lo, hi), s in zip(SECTORS_DEG, report.by_sector)}
    head["by_tag"] = {key: {s.name: _subset_json(s) for s in subsets} for key, subsets in report.by_tag}
    head["runs"] = [{
        "name": r.name, "dir": r.dir, "recording": r.recording, "tags": dict(r.tags),
        "ground_truth_frames": r.ground_truth_frames, "prediction_frames": r.prediction_frames,
        "mAP": None if r.subset.result is None else r.subset.result.mean_ap,
        "NDS": None if r.subset.result is None else r.subset.result.nds,
        "classes_without_ground_truth": list(r.subset.classes_without_ground_truth),
        "frames": None if r.latency is None else r.latency.counts.as_dict(),
        "latency_ms": latency_json(r.latency, 1 if r.latency is not None else 0),
    } for r in report.runs]
    head["breakdown_rule"] = ("headline: every configured class counts (AP 0 without ground truth, nuScenes "
                              "devkit); by_range, by_sector, by_tag and runs: only the classes with ground truth "
                              "in the subset")
    return head


# ---------------------------------------------------------------------------------------------- plots
@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: ``metrics.json``, ``report.html`` and the PNGs (all in one folder)."""

    metrics_json: Path
    report_html: Path
    plots: tuple[Path, ...]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display, Agg on savefig

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _pr_curves(result: EvalResult, score_threshold: float, path: Path) -> Path:
    th = PR_CURVE_DIST_TH_M if PR_CURVE_DIST_TH_M in result.config.dist_ths_m else result.config.dist_th_tp_m
    ti = result.config.dist_ths_m.index(th)
    n = len(result.classes)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, result.classes):
        curve = c.curves[ti]
        reached = curve.confidence > 0
        ax.plot(curve.recall[reached], curve.precision[reached], color="C0", lw=1.8)
        above = np.nonzero(curve.confidence >= score_threshold)[0]
        if len(above) and c.num_gt:
            i = int(above[-1])
            ax.plot([curve.recall[i]], [curve.precision[i]], "o", color="C3",
                    label=f"score \u2265 {score_threshold:g}: P {curve.precision[i]:.2f} R {curve.recall[i]:.2f}")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(f"{c.name}  AP@{th:g}m {c.ap_by_threshold[ti]:.3f}  (GT {c.num_gt})", fontsize=10)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    fig.suptitle(f"precision-recall at {th:g} m centre distance")
    fig.savefig(path)
    return path


def _ap_by_threshold(result: EvalResult, path: Path) -> Path:
    ths = result.config.dist_ths_m
    names = [c.name for c in result.classes]
    fig = _figure(max(5.0, 1.4 * len(names) + 2), 3.6)
    ax = fig.subplots()
    width = 0.8 / len(ths)
    x = np.arange(len(names))
    for k, th in enumerate(ths):
        ax.bar(x + (k - (len(ths) - 1) / 2) * width, [c.ap_by_threshold[k] for c in result.classes], width,
               label=f"{th:g} m")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP")
    ax.set_title("AP per class and distance threshold")
    ax.legend(title="threshold", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


def _ap_by_range(report: EvalReport, path: Path) -> Path:
    names = list(report.config.class_names)
    bands = [b for b, _, _ in RANGE_BANDS_M]
    fig = _figure(max(5.0, 1.4 * len(bands) + 3), 3.6)
    ax = fig.subplots()
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(bands))
    for k, name in enumerate(names + ["mAP"]):
        vals = []
        for s in report.by_range:
            if s.result is None:
                vals.append(np.nan)
            elif name == "mAP":
                vals.append(s.result.mean_ap)
            else:
                vals.append(s.result.class_result(name).ap if name in s.result.config.class_names else np.nan)
        ax.bar(x + (k - len(names) / 2) * width, vals, width, label=name,
               color="k" if name == "mAP" else f"C{k}", alpha=0.85)
    ax.set_xticks(x, [f"{b} m" for b in bands])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP")
    ax.set_title("AP by distance from the ego (no bar: no ground truth in the band)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


def _latency_hist(log: LatencyLog, path: Path) -> Path | None:
    e2e = log.end_to_end_ms()
    if not len(e2e):
        return None
    st = LatencyStats.of(e2e)
    fig = _figure(6.0, 3.4)
    ax = fig.subplots()
    ax.hist(e2e, bins=min(60, max(10, len(e2e) // 5)), color="C0", alpha=0.8)
    for v, label, color in ((st.p50, "p50", "C2"), (st.p99, "p99", "C1")):
        ax.axvline(v, color=color, ls="--", label=f"{label} {v:.1f} ms")
    if log.deadline_ms is not None:
        ax.axvline(log.deadline_ms, color="C3", lw=2, label=f"deadline {log.deadline_ms:g} ms")
    ax.set_xlabel("end-to-end latency [ms] (emit time - frame stamp)")
    ax.set_ylabel("frames")
    ax.set_title(f"end-to-end latency, {st.count} frames")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _latency_stages(log: LatencyLog, path: Path) -> Path | None:
    stages = log.summary().stages
    if not stages:
        return None
    names = [n for n, _ in stages][::-1]  # first stage at the top
    p50 = [s.p50 for _, s in stages][::-1]
    p99 = [s.p99 for _, s in stages][::-1]
    fig = _figure(6.0, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))
    ax.barh(y + 0.2, p50, 0.4, label="p50", color="C2")
    ax.barh(y - 0.2, p99, 0.4, label="p99", color="C1")
    ax.set_yticks(y, names)
    ax.set_xlabel("stage time [ms]")
    ax.set_title("per-stage latency")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------- html
def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    return f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _subset_rows(subsets: Sequence[SubsetResult], class_names: Sequence[str], label: str) -> tuple[list, list]:
    header = [label, "runs", "mAP", "NDS"] + [f"AP {html.escape(n)}" for n in class_names] + ["GT boxes"]
    rows = []
    for s in subsets:
        r = s.result
        cells = [html.escape(s.name), str(len(s.runs)), _fmt(None if r is None else r.mean_ap),
                 _fmt(None if r is None else r.nds)]
        for n in class_names:
            cells.append(_fmt(r.class_result(n).ap) if r is not None and n in r.config.class_names else "&ndash;")
        cells.append(str(0 if r is None else r.counts.ground_truth_boxes_evaluated))
        rows.append(cells)
    return header, rows


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
table.headline td { font-size: 1.1em; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


def report_html(report: EvalReport, plots: dict[str, Path], score_threshold: float) -> str:
    """The report page; ``plots`` maps a plot's role to its file (linked by file name, relative)."""
    r = report.overall
    cfg = r.config
    names = list(cfg.class_names)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>perception eval</title><style>{_CSS}</style>",
             "</head><body>",
             f"<h1>Detection evaluation: {len(report.runs)} run(s)</h1>"]

    # Headline.
    lat = report.latency.summary().end_to_end if report.latency is not None else None
    head = ["mAP", "NDS"] + [f"m{TP_SHORT_NAMES[m]}" for m in TP_METRICS] + ["e2e p50 [ms]", "e2e p99 [ms]"]
    cells = [_fmt(r.mean_ap), _fmt(r.nds)] + [_fmt(v) for v in r.tp_errors.as_metrics().values()]
    cells += [_fmt(None if lat is None else lat.p50, 1), _fmt(None if lat is None else lat.p99, 1)]
    parts.append(_table(head, [cells], "headline"))
    parts.append(f"<p class='note'>nuScenes detection protocol; AP averaged over centre-distance thresholds "
                 f"{', '.join(f'{t:g}' for t in cfg.dist_ths_m)} m; TP errors at {cfg.dist_th_tp_m:g} m "
                 f"(ATE m, ASE 1-IoU, AOE rad, AVE m/s, AAE 1-accuracy). Classes without ground truth score "
                 f"AP 0 here (devkit rule). {r.counts.ground_truth_frames} ground-truth frames, "
                 f"{r.counts.prediction_frames} prediction frames, "
                 f"{r.counts.ground_truth_boxes_evaluated} ground-truth boxes evaluated.</p>")

    # Per class.
    rows = []
    for c in r.classes:
        rows.append([html.escape(c.name), _fmt(c.ap)] + [_fmt(a) for a in c.ap_by_threshold]
                    + [_fmt(v) for v in c.tp.as_metrics().values()] + [str(c.num_gt), str(c.num_predictions),
                                                                        f"{c.range_m:g}"])
    parts.append("<h2>Per class</h2>")
    parts.append(_table(["class", "AP"] + [f"AP@{t:g}m" for t in cfg.dist_ths_m]
                        + [TP_SHORT_NAMES[m] for m in TP_METRICS] + ["GT", "pred", "range [m]"], rows))
    for role in ("pr_curves", "ap_by_threshold"):
        if role in plots:
            parts.append(f"<img src='{html.escape(plots[role].name)}' alt='{role}'>")
    parts.append(f"<p class='note'>Red dot: the operating point at score &ge; {score_threshold:g}.</p>")

    # Breakdowns.
    parts.append("<h2>By distance from the ego</h2>")
    header, rows = _subset_rows(report.by_range, names, "band [m]")
    parts.append(_table(header, rows))
    if "ap_by_range" in plots:
        parts.append(f"<img src='{html.escape(plots['ap_by_range'].name)}' alt='ap_by_range'>")
    parts.append("<p class='note'>Ground truth and predictions both restricted to the band of centre distance "
                 "in the ground plane; mAP over the classes with ground truth in the band.</p>")
    parts.append("<h2>By bearing from the ego</h2>")
    header, rows = _subset_rows(report.by_sector, names, "sector")
    parts.append(_table(header, rows))
    parts.append("<p class='note'>Bearing of the box centre in the ego frame: front [-45, 45) deg, left [45, 135), "
                 "rear the rest, right [-135, -45); restricted as the distance bands are.</p>")
    parts.append("<h2>By tag</h2>")
    if not report.by_tag:
        parts.append("<p class='note'>No run carries tags (run.json).</p>")
    for key, subsets in report.by_tag:
        header, rows = _subset_rows(subsets, names, html.escape(key))
        parts.append(_table(header, rows))

    # Latency and frames.
    parts.append("<h2>Latency and frames</h2>")
    if report.latency is None:
        parts.append("<p class='note'>No run has a latency.json.</p>")
    else:
        s = report.latency.summary()
        rows = [[html.escape(n), str(st.count), _fmt(st.p50, 2), _fmt(st.p95, 2), _fmt(st.p99, 2), _fmt(st.max, 2),
                 _fmt(st.mean, 2)] for n, st in s.stages]
        if s.end_to_end is not None:
            e = s.end_to_end
            rows.append(["<b>end-to-end</b>", str(e.count), _fmt(e.p50, 2), _fmt(e.p95, 2), _fmt(e.p99, 2),
                         _fmt(e.max, 2), _fmt(e.mean, 2)])
        parts.append(_table(["stage", "frames", "p50", "p95", "p99", "max", "mean"], rows))
        parts.append(f"<p class='note'>[ms]; percentiles: numpy linear, over the frames of "
                     f"{report.runs_with_latency} run(s) pooled.</p>")
        for role in ("latency_hist", "latency_stages"):
            if role in plots:
                parts.append(f"<img src='{html.escape(plots[role].name)}' alt='{role}'>")
        c = report.latency.counts
        deadline = "none" if report.latency.deadline_ms is None else f"{report.latency.deadline_ms:g} ms"
        parts.append(_table(["total", "emitted", "partial", "dropped", "deadline missed", "deadline"],
                            [[str(c.total), str(c.emitted), str(c.partial), str(c.dropped), str(c.deadline_missed),
                              deadline]]))

    # Runs.
    parts.append("<h2>Runs</h2>")
    tag_keys = sorted({k for run in report.runs for k, _ in run.tags})
    rows = []
    for run in report.runs:
        tags = dict(run.tags)
        res = run.subset.result
        lat_run = run.latency.summary().end_to_end if run.latency is not None else None
        rows.append([html.escape(run.name), html.escape(run.recording)]
                    + [html.escape(tags.get(k, "")) for k in tag_keys]
                    + [str(run.ground_truth_frames), str(run.prediction_frames),
                       _fmt(None if res is None else res.mean_ap), _fmt(None if res is None else res.nds),
                       _fmt(None if lat_run is None else lat_run.p50, 1)])
    parts.append(_table(["run", "recording"] + [html.escape(k) for k in tag_keys]
                        + ["GT frames", "pred frames", "mAP", "NDS", "e2e p50 [ms]"], rows))
    parts.append("<p class='note'>Per-run mAP/NDS over the classes with ground truth in the run.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(report: EvalReport, out_dir: str | Path, score_threshold: float = 0.3) -> ReportFiles:
    """Write ``metrics.json``, ``report.html`` and its PNG plots into ``out_dir`` (created if needed).

    Args:
        score_threshold: the score whose operating point is marked on the PR curves.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics_json(report), indent=1, allow_nan=False) + "\n", encoding="utf-8")

    plots: dict[str, Path] = {
        "pr_curves": _pr_curves(report.overall, score_threshold, out / "pr_curves.png"),
        "ap_by_threshold": _ap_by_threshold(report.overall, out / "ap_by_threshold.png"),
        "ap_by_range": _ap_by_range(report, out / "ap_by_range.png"),
    }
    if report.latency is not None:
        for role, draw in (("latency_hist", _latency_hist), ("latency_stages", _latency_stages)):
            p = draw(report.latency, out / f"{role}.png")
            if p is not None:
                plots[role] = p
    html_path = out / "report.html"
    html_path.write_text(report_html(report, plots, score_threshold), encoding="utf-8")
    return ReportFiles(metrics_path, html_path, tuple(plots.values()))
