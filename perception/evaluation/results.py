"""Results files: the JSON Lines files that detections leave in and ground truth is compared from.

Format (DESIGN section 6), one line per frame, in the ego frame at ``stamp_ns``::

    {"stamp_ns": 1700000000100000000,
     "detections": [{"x": 12.1, "y": -3.4, "z": 0.9, "length": 4.5, "width": 1.9, "height": 1.6,
                     "yaw": 0.02, "vx": 8.3, "vy": 0.1, "score": 0.87, "label": "car",
                     "attributes": {"siren": false}}]}

A ground-truth file has the same form without ``score``, and each box may carry ``"num_points"`` (LiDAR
points inside the box; boxes with 0 are not evaluated, as in the nuScenes devkit).

Reading rules (what is an error, what is skipped):

* Errors (:class:`ResultsFileError`, message ``path:line: what``): invalid JSON, a line that is not an
  object, a missing key, a value of the wrong type, a non-finite number (``NaN``/``Infinity`` literals),
  a box size that is not positive, a negative score or ``num_points``, the same ``stamp_ns`` on two
  lines (both line numbers are named).
* Ground-truth ``vx``/``vy`` may be ``null``: the velocity is unknown (nuScenes has such annotations)
  and the box is left out of the velocity error. In predictions they must be numbers, so a detector
  cannot dodge the velocity error by leaving it out.
* ``attributes`` is optional (absent = no attributes); its values are JSON scalars (string, bool,
  number). Keys other than the ones above are ignored, so producers may add fields.
* Blank lines are ignored.
* The one counted, logged skip: an unparsable **last** line with no newline at its end. That is what a
  writer killed mid-line leaves (the sink flushes whole lines), and the frames before it are intact. It
  is counted in :attr:`ResultsFile.truncated_last_line` and logged as a warning; the same damage on any
  other line is an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Mapping, Union

import numpy as np

from drivers.messages import GroundTruthBoxes

log = logging.getLogger(__name__)

AttributeValue = Union[str, bool, int, float]

# The per-box float keys in file order; boxes[:, :7] and velocities[:, :2] follow it.
BOX_KEYS = ("x", "y", "z", "length", "width", "height", "yaw")
VELOCITY_KEYS = ("vx", "vy")


class ResultsFileError(ValueError):
    """A results or ground-truth file is malformed; the message starts with ``path:line:``."""


@dataclass(frozen=True, eq=False)
class FrameBoxes:
    """The boxes of one frame (predictions or ground truth), struct of arrays, ego frame at ``stamp_ns``.

    Args:
        stamp_ns: the frame's stamp [ns].
        boxes: (N, 7) float64: x y z [m] box centre, length (along the heading) width height [m],
            yaw [rad] CCW from ego +x.
        velocities: (N, 2) float64 [m/s] over-ground velocity expressed in the ego frame (vx, vy);
            NaN = unknown (ground truth only).
        scores: (N,) float64 confidence >= 0; NaN for ground truth (which has none).
        labels: (N,) str array, class names.
        attributes: N mappings attribute name -> JSON scalar (e.g. ``{"siren": True}``).
        num_points: (N,) int64 LiDAR points inside the box; -1 = not given.
    """

    stamp_ns: int
    boxes: np.ndarray
    velocities: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    attributes: tuple[Mapping[str, AttributeValue], ...]
    num_points: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.boxes)
        shapes = {
            "boxes": (self.boxes.shape, (n, 7)),
            "velocities": (self.velocities.shape, (n, 2)),
            "scores": (self.scores.shape, (n,)),
            "labels": (self.labels.shape, (n,)),
            "num_points": (self.num_points.shape, (n,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"FrameBoxes(stamp_ns={self.stamp_ns}).{name}: shape {got}, expected {want}")
        if len(self.attributes) != n:
            raise ValueError(f"FrameBoxes(stamp_ns={self.stamp_ns}).attributes: {len(self.attributes)} "
                             f"entries for {n} boxes")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, mask: np.ndarray) -> "FrameBoxes":
        """The boxes selected by a boolean mask or an index array (``frame[frame.scores > 0.3]``)."""
        idx = np.arange(len(self))[mask]
        return FrameBoxes(
            stamp_ns=self.stamp_ns,
            boxes=self.boxes[idx],
            velocities=self.velocities[idx],
            scores=self.scores[idx],
            labels=self.labels[idx],
            attributes=tuple(self.attributes[i] for i in idx),
            num_points=self.num_points[idx],
        )

    @staticmethod
    def create(
        stamp_ns: int,
        boxes: np.ndarray | Iterable,
        labels: Iterable[str],
        velocities: np.ndarray | Iterable | None = None,
        scores: np.ndarray | Iterable | None = None,
        attributes: Iterable[Mapping[str, AttributeValue]] | None = None,
        num_points: np.ndarray | Iterable | None = None,
    ) -> "FrameBoxes":
        """Build a frame from array-likes, converting dtypes; omitted fields get their "absent" value.

        Args:
            boxes: (N, 7) x y z length width height yaw (ego frame [m], [rad]).
            labels: N class names.
            velocities: (N, 2) [m/s]; default zeros.
            scores: (N,); default NaN (ground truth).
            attributes: N mappings; default empty.
            num_points: (N,) int; default -1 (not given).
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        n = len(b)
        return FrameBoxes(
            stamp_ns=int(stamp_ns),
            boxes=b,
            velocities=np.zeros((n, 2)) if velocities is None else np.asarray(velocities, np.float64).reshape(n, 2),
            scores=np.full(n, np.nan) if scores is None else np.asarray(scores, np.float64).reshape(n),
            labels=_label_array(list(labels)),
            attributes=tuple({} for _ in range(n)) if attributes is None else tuple(dict(a) for a in attributes),
            num_points=(np.full(n, -1, np.int64) if num_points is None
                        else np.asarray(num_points, np.int64).reshape(n)),
        )


@dataclass(frozen=True, eq=False)
class ResultsFile:
    """A results or ground-truth file as read.

    Args:
        path: the file.
        frames: one :class:`FrameBoxes` per non-blank line, in file order.
        line_numbers: 1-based line of each frame (for messages that point back into the file).
        is_ground_truth: read with the ground-truth rules (no score needed, unknown velocity allowed).
        truncated_last_line: 1 when an unterminated, unparsable last line was skipped, else 0.
    """

    path: Path
    frames: tuple[FrameBoxes, ...]
    line_numbers: tuple[int, ...]
    is_ground_truth: bool
    truncated_last_line: int

    def where(self, index: int) -> str:
        """``path:line`` of frame ``index``, for error messages."""
        return f"{self.path}:{self.line_numbers[index]}"


def _label_array(labels: list[str]) -> np.ndarray:
    # A unicode array (not object) so ``labels == "car"`` is a vectorised comparison; at least <U1 when empty.
    return np.array(labels, dtype=str) if labels else np.zeros(0, dtype="<U1")


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")


def _number(value: object, where: str, allow_null: bool = False) -> float:
    if value is None and allow_null:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsFileError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except OverflowError:  # an integer beyond float range
        out = math.inf
    if not math.isfinite(out):  # 1e400 parses to inf
        raise ResultsFileError(f"{where}: expected a finite number, got {value!r}")
    return out


def _parse_box(det: object, where: str, is_ground_truth: bool) -> tuple:
    if not isinstance(det, dict):
        raise ResultsFileError(f"{where}: expected an object, got {type(det).__name__}")
    for key in BOX_KEYS + VELOCITY_KEYS + (("label",) if is_ground_truth else ("score", "label")):
        if key not in det:
            raise ResultsFileError(f"{where}: missing key '{key}'")
    box = [_number(det[k], f"{where}.{k}") for k in BOX_KEYS]
    for k, v in zip(("length", "width", "height"), box[3:6]):
        if not v > 0:
            raise ResultsFileError(f"{where}.{k}: box sizes must be > 0, got {v!r}")
    vel = [_number(det[k], f"{where}.{k}", allow_null=is_ground_truth) for k in VELOCITY_KEYS]
    if "score" in det:
        score = _number(det["score"], f"{where}.score")
        if score < 0:
            raise ResultsFileError(f"{where}.score: must be >= 0, got {score!r}")
    else:
        score = math.nan
    label = det["label"]
    if not isinstance(label, str) or not label:
        raise ResultsFileError(f"{where}.label: expected a non-empty class name string, got {label!r}")
    attrs = det.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ResultsFileError(f"{where}.attributes: expected an object, got {type(attrs).__name__}")
    for k, v in attrs.items():
        if not isinstance(v, (str, bool, int, float)):
            raise ResultsFileError(f"{where}.attributes.{k}: expected a string, bool or number, got {v!r}")
    npts = det.get("num_points", -1)
    if "num_points" in det and (isinstance(npts, bool) or not isinstance(npts, int) or npts < 0):
        raise ResultsFileError(f"{where}.num_points: expected an integer >= 0, got {npts!r}")
    return box, vel, score, label, attrs, npts


def _parse_line(obj: object, where: str, is_ground_truth: bool) -> FrameBoxes:
    if not isinstance(obj, dict):
        raise ResultsFileError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    for key in ("stamp_ns", "detections"):
        if key not in obj:
            raise ResultsFileError(f"{where}: missing key '{key}'")
    stamp = obj["stamp_ns"]
    if isinstance(stamp, bool) or not isinstance(stamp, int):
        raise ResultsFileError(f"{where}: stamp_ns: expected an integer [ns], got {stamp!r}")
    dets = obj["detections"]
    if not isinstance(dets, list):
        raise ResultsFileError(f"{where}: detections: expected a list, got {type(dets).__name__}")
    parsed = [_parse_box(d, f"{where}: detections[{i}]", is_ground_truth) for i, d in enumerate(dets)]
    n = len(parsed)
    return FrameBoxes(
        stamp_ns=stamp,
        boxes=np.array([p[0] for p in parsed], dtype=np.float64).reshape(n, 7),
        velocities=np.array([p[1] for p in parsed], dtype=np.float64).reshape(n, 2),
        scores=np.array([p[2] for p in parsed], dtype=np.float64).reshape(n),
        labels=_label_array([p[3] for p in parsed]),
        attributes=tuple(p[4] for p in parsed),
        num_points=np.array([p[5] for p in parsed], dtype=np.int64).reshape(n),
    )


def _read(path: str | Path, is_ground_truth: bool) -> ResultsFile:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ResultsFileError(f"{path}: cannot read: {e.strerror}") from e
    lines = raw.split(b"\n")
    # raw ending in "\n" leaves a final empty element; otherwise the last element is unterminated.
    unterminated_last = len(lines) - 1 if lines[-1] else -1
    frames: list[FrameBoxes] = []
    line_numbers: list[int] = []
    first_line_of: dict[int, int] = {}
    truncated = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as e:
            if i == unterminated_last:
                truncated = 1
                log.warning("%s: skipped an incomplete last line (no newline, not valid JSON: %s); "
                            "the writer was probably interrupted", where, e)
                break
            raise ResultsFileError(f"{where}: not valid JSON: {e}") from e
        frame = _parse_line(obj, where, is_ground_truth)
        if frame.stamp_ns in first_line_of:
            raise ResultsFileError(f"{where}: stamp_ns {frame.stamp_ns} already on line "
                                   f"{first_line_of[frame.stamp_ns]}; one line per frame")
        first_line_of[frame.stamp_ns] = i + 1
        frames.append(frame)
        line_numbers.append(i + 1)
    return ResultsFile(path=path, frames=tuple(frames), line_numbers=tuple(line_numbers),
                       is_ground_truth=is_ground_truth, truncated_last_line=truncated)


def read_predictions(path: str | Path) -> ResultsFile:
    """Read a results (predictions) file: every box needs a ``score``; velocities must be numbers.

    Raises:
        ResultsFileError naming ``path:line`` and the key for malformed input (see the module docstring).
    """
    return _read(path, is_ground_truth=False)


def read_ground_truth(path: str | Path) -> ResultsFile:
    """Read a ground-truth file: ``score`` optional (NaN when absent), ``vx``/``vy`` may be null (unknown).

    Raises:
        ResultsFileError naming ``path:line`` and the key for malformed input (see the module docstring).
    """
    return _read(path, is_ground_truth=True)


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _json_attr(v: object) -> AttributeValue:
    # numpy scalars (np.bool_, np.int32, np.float32) are not JSON-serialisable; plain Python ones are.
    if isinstance(v, np.generic):
        return v.item()
    return v  # type: ignore[return-value]


def frame_to_json(frame: FrameBoxes) -> dict:
    """One frame as the dict of one results-file line (``score`` only where not NaN, ``num_points`` only
    where given, unknown velocities as null)."""
    dets = []
    for i in range(len(frame)):
        d: dict = {k: float(v) for k, v in zip(BOX_KEYS, frame.boxes[i])}
        d["vx"] = _json_float(frame.velocities[i, 0])
        d["vy"] = _json_float(frame.velocities[i, 1])
        if not math.isnan(frame.scores[i]):
            d["score"] = float(frame.scores[i])
        d["label"] = str(frame.labels[i])
        d["attributes"] = {str(k): _json_attr(v) for k, v in frame.attributes[i].items()}
        if frame.num_points[i] >= 0:
            d["num_points"] = int(frame.num_points[i])
        dets.append(d)
    return {"stamp_ns": int(frame.stamp_ns), "detections": dets}


class ResultsWriter:
    """Appends frames to a results file, one line each, flushed per line so a crash loses at most the
    line being written (which the reader then skips, counted).

    Usage: ``with ResultsWriter(path) as w: w.write(frame)``.
    """

    def __init__(self, path: str | Path) -> None:
        """Open ``path`` for writing (truncates an existing file)."""
        self.path = Path(path)
        self._f: IO[str] = open(self.path, "w", encoding="utf-8")
        self.frames_written = 0

    def write(self, frame: FrameBoxes) -> None:
        """Write one frame as one line."""
        self._f.write(json.dumps(frame_to_json(frame), allow_nan=False, separators=(",", ":")) + "\n")
        self._f.flush()
        self.frames_written += 1

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_results_file(path: str | Path, frames: Iterable[FrameBoxes]) -> int:
    """Write ``frames`` to ``path`` (predictions or ground truth: the fields decide). Returns the frame count."""
    with ResultsWriter(path) as w:
        for frame in frames:
            w.write(frame)
        return w.frames_written


def frame_from_ground_truth(gt: GroundTruthBoxes) -> FrameBoxes:
    """Ground truth from a recording's ground-truth message, as a ground-truth results frame.

    Args:
        gt: boxes in the ego frame at ``gt.stamp_ns``; labels index ``gt.class_names``.
    Returns:
        A frame with class-name labels, ``{"siren": bool}`` attributes, the message's ``num_points``,
        and NaN scores.
    """
    n = len(gt)
    labels = [gt.class_names[int(k)] for k in gt.labels]
    return FrameBoxes(
        stamp_ns=int(gt.stamp_ns),
        boxes=np.asarray(gt.boxes, np.float64).reshape(n, 7).copy(),
        velocities=np.asarray(gt.velocities, np.float64).reshape(n, 2).copy(),
        scores=np.full(n, np.nan),
        labels=_label_array(labels),
        attributes=tuple({"siren": bool(s)} for s in np.asarray(gt.siren).reshape(n)),
        num_points=np.asarray(gt.num_points, np.int64).reshape(n).copy(),
    )
