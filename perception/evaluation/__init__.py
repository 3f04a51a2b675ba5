"""Evaluation: results files in and out, and the nuScenes detection metrics on them.

``perception eval`` reads two results files and calls :func:`evaluate_files`; nothing here imports
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
    "frame_from_ground_truth",
    "read_ground_truth",
    "read_predictions",
    "write_results_file",
]
