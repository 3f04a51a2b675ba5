"""``perception eval RUN_DIR [RUN_DIR ...] --out DIR``: accuracy, latency and frame counts of replay runs.

Reads the run folders ``perception replay --out`` writes (``detections.jsonl``, ``ground_truth.jsonl``,
optional ``latency.json`` and ``run.json``), evaluates them together and broken down by range and tag
(:mod:`perception.evaluation.report`), writes ``metrics.json``, ``report.html`` and PNG plots into
``--out`` and prints the headline numbers. Imports no model code.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class EvalCliError(Exception):
    """A user-facing error of ``perception eval`` (printed as one line)."""


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``); its
    ``func`` default is :func:`run_eval`."""
    p = subparsers.add_parser(
        "eval", help="evaluate replay runs: mAP/NDS, latency, frame counts -> metrics.json + report.html",
        description="Evaluate the output folders of 'perception replay --out' (detections.jsonl against "
                    "ground_truth.jsonl, with the nuScenes detection protocol), together and broken down by "
                    "distance band and by run.json tag; write metrics.json, report.html and PNG plots.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folder(s) holding detections.jsonl and ground_truth.jsonl "
                        "(optional latency.json, run.json)")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.html and the plots")
    p.add_argument("--score-threshold-plot", type=float, default=0.3, metavar="SCORE",
                   help="score whose operating point is marked on the PR curves (default 0.3)")
    p.add_argument("--classes", help="comma-separated classes to evaluate (default: car,truck,pedestrian,bicycle); "
                                     "detections and ground truth of the other classes are left out; a listed "
                                     "class without ground truth scores AP 0 in the headline mAP")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.set_defaults(func=run_eval)
    return p


def _config(classes_arg: str | None):
    from perception.evaluation.metrics import DEFAULT_CLASSES, EvalConfig

    if not classes_arg:
        return EvalConfig()
    names = [n.strip() for n in classes_arg.split(",") if n.strip()]
    known = {c.name: c for c in DEFAULT_CLASSES}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise EvalCliError(f"--classes: unknown class {unknown[0] if unknown else classes_arg!r} "
                           f"(known: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise EvalCliError(f"--classes: a class is listed twice in {classes_arg!r}")
    return EvalConfig(classes=tuple(known[n] for n in names))


def _only_classes(run, names: tuple[str, ...]):
    """``run`` with its predictions of the other known classes left out (--classes); a label that is no
    known class at all stays, so that the evaluation still reports it."""
    import dataclasses

    import numpy as np

    from perception.evaluation.metrics import DEFAULT_CLASSES

    others = [c.name for c in DEFAULT_CLASSES if c.name not in names]
    pred = run.predictions
    frames = tuple(f[~np.isin(f.labels, others)] for f in pred.frames)
    return dataclasses.replace(run, predictions=dataclasses.replace(pred, frames=frames))


def _summary(result) -> str:
    from perception.evaluation.metrics import TP_METRICS, TP_SHORT_NAMES

    errs = "  ".join(f"m{TP_SHORT_NAMES[m]} {v:.3f}" for m, v in result.tp_errors.as_metrics().items()
                     if not math.isnan(v))  # NaN: a metric no class evaluates
    lines = [f"mAP {result.mean_ap:.4f}  NDS {result.nds:.4f}  {errs}",
             f"{'class':<12} {'AP':>6} " + " ".join(f"{'AP@' + format(t, 'g'):>7}" for t in result.config.dist_ths_m)
             + " " + " ".join(f"{TP_SHORT_NAMES[m]:>6}" for m in TP_METRICS) + f" {'GT':>6}"]
    for c in result.classes:
        errs_c = " ".join(f"{v:>6.3f}" if not math.isnan(v) else f"{'-':>6}" for v in c.tp.as_metrics().values())
        lines.append(f"{c.name:<12} {c.ap:>6.3f} " + " ".join(f"{a:>7.3f}" for a in c.ap_by_threshold)
                     + f" {errs_c} {c.num_gt:>6}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``perception eval`` with parsed ``args``; returns the exit code (0).

    Raises:
        EvalCliError: one line naming what is wrong (a missing run folder or file, a malformed file,
            files that do not fit together, a bad option).
    """
    from tqdm import tqdm

    from perception.evaluation.metrics import EvaluationError
    from perception.evaluation.report import RunDirError, evaluate_runs, load_run, write_report
    from perception.evaluation.results import ResultsFileError
    from perception.timing import LatencyFileError, format_summary_table

    if not args.score_threshold_plot >= 0:
        raise EvalCliError(f"--score-threshold-plot must be >= 0, got {args.score_threshold_plot:g}")
    config = _config(args.classes)
    dirs = [Path(d) for d in args.run_dirs]
    seen: dict[Path, str] = {}
    for d, given in zip(dirs, args.run_dirs):
        key = d.resolve()
        if key in seen:
            raise EvalCliError(f"run folder {given} is given twice (also as {seen[key]})")
        seen[key] = given
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalCliError(f"--out {out} exists and is not a folder")

    progress = len(dirs) > 1 and not args.quiet
    try:
        runs = [load_run(d) for d in tqdm(dirs, desc="read runs", unit="run", disable=not progress)]
        if args.classes:
            runs = [_only_classes(r, config.class_names) for r in runs]
        report = evaluate_runs(runs, config, progress=progress)
    except (RunDirError, ResultsFileError, EvaluationError, LatencyFileError) as e:
        raise EvalCliError(str(e).strip().splitlines()[0]) from e
    files = write_report(report, out, args.score_threshold_plot)

    if not args.quiet:
        print(_summary(report.overall))
        if report.latency is not None:
            print(format_summary_table(report.latency))
    print(f"wrote {files.metrics_json}, {files.report_html} and {len(files.plots)} plots "
          f"({len(runs)} run(s), {report.overall.counts.ground_truth_frames} frames)")
    return 0
