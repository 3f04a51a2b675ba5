"""Evaluation: results files in and out, and the nuScenes detection metrics on them.

``perception eval`` reads run folders (detections.jsonl + ground_truth.jsonl each) and evaluates them
together with :func:`evaluate_many`, frames keyed by (run, stamp); nothing here imports
model code (or torch), so evaluation runs on any machine that has the files.
"""

from perception.evaluation.metrics import (
    ClassResult,
    ClassSpec,
    EvalConfig,
    EvalCounts,
    EvalResult,
    EvaluationError,
    MetricCurve,
    TpErrors,
    evaluate,
    evaluate_files,
    evaluate_many,
)
from perception.evaluation.results import (
    FrameBoxes,
    ResultsFile,
    ResultsFileError,
    ResultsWriter,
    frame_from_ground_truth,
    read_ground_truth,
    read_predictions,
    write_results_file,
)

__all__ = [
    "ClassResult",
    "ClassSpec",
    "EvalConfig",
    "EvalCounts",
    "EvalResult",
    "EvaluationError",
    "FrameBoxes",
    "MetricCurve",
    "ResultsFile",
    "ResultsFileError",
    "ResultsWriter",
    "TpErrors",
    "evaluate",
    "evaluate_files",
    "evaluate_many",
    "frame_from_ground_truth",
    "read_ground_truth",
    "read_predictions",
    "write_results_file",
]
