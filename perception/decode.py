"""Where detections leave: :class:`Detections3D`, and decoding of the head's BEV maps into boxes.

Decoding (CenterPoint style): per-class heatmap peaks (3x3 local maxima above a score threshold, top K),
box attributes read at each peak, then NMS in BEV per class (circle NMS on box centres with a per-class
radius, as CenterPoint does for nuScenes). The kernels are numba functions with a plain numpy reference
each (:mod:`perception.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivers.messages import CLASS_NAMES
from perception.evaluation.results import FrameBoxes


@dataclass(frozen=True)
class SirenEvent:
    """A siren heard in one frame.

    Args:
        stamp_ns: the frame's stamp [ns].
        bearing_rad: direction of arrival in the ego frame, CCW from +x [rad], in (-pi, pi].
        probability: siren detector output in [0, 1].
        detection_index: index of the vehicle detection it was associated with, or -1 (bearing only).
    """

    stamp_ns: int
    bearing_rad: float
    probability: float
    detection_index: int = -1


@dataclass(frozen=True, eq=False)
class Detections3D:
    """The detections of one frame, struct of arrays, in the ego frame at ``stamp_ns``.

    Args:
        stamp_ns: stamp of the frame they came from [ns].
        boxes: (N, 7) float32: x y z [m] box centre, length width height [m], yaw [rad] CCW from +x.
        velocities: (N, 2) float32 over-ground velocity in the ego frame [m/s].
        scores: (N,) float32 in [0, 1].
        labels: (N,) int32 index into ``class_names``.
        siren: (N,) bool, a siren heard from this vehicle's direction (late audio fusion).
        class_names: names for ``labels``.
        siren_events: sirens heard in this frame (associated or bearing-only).
        track_ids: (N,) int64 track identity from the tracker (-1: none), or None before tracking.
    """

    stamp_ns: int
    boxes: np.ndarray
    velocities: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    siren: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    siren_events: tuple[SirenEvent, ...] = field(default=())
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        for name, want in (("boxes", (n, 7)), ("velocities", (n, 2)), ("scores", (n,)), ("labels", (n,)),
                           ("siren", (n,))):
            got = getattr(self, name).shape
            if got != want:
                raise ValueError(f"Detections3D.{name}: shape {got}, expected {want}")
        if self.track_ids is not None and self.track_ids.shape != (n,):
            raise ValueError(f"Detections3D.track_ids: shape {self.track_ids.shape}, expected {(n,)}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, mask: np.ndarray) -> "Detections3D":
        """Detections selected by a boolean mask or index array (``dets[dets.scores > 0.3]``); siren events
        keep their association only where the associated detection is kept."""
        idx = np.arange(len(self))[mask]
        remap = {int(old): new for new, old in enumerate(idx)}
        events = tuple(SirenEvent(e.stamp_ns, e.bearing_rad, e.probability, remap.get(e.detection_index, -1))
                       for e in self.siren_events)
        return Detections3D(self.stamp_ns, self.boxes[idx], self.velocities[idx], self.scores[idx],
                            self.labels[idx], self.siren[idx], self.class_names, events,
                            None if self.track_ids is None else self.track_ids[idx])

    @staticmethod
    def empty(stamp_ns: int, class_names: tuple[str, ...] = CLASS_NAMES) -> "Detections3D":
        """No detections."""
        return Detections3D(stamp_ns, np.zeros((0, 7), np.float32), np.zeros((0, 2), np.float32),
                            np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, bool), class_names)

    def to_frame_boxes(self) -> FrameBoxes:
        """As a results-file frame (labels as names, ``{"siren": bool}`` attributes)."""
        return FrameBoxes.create(self.stamp_ns, self.boxes, [self.class_names[int(k)] for k in self.labels],
                                 velocities=self.velocities, scores=self.scores,
                                 attributes=[{"siren": bool(s)} for s in self.siren])


# Circle-NMS radius per class [m] (CenterPoint's nuScenes values for car, truck, pedestrian, bicycle).
NMS_RADIUS = {"car": 4.0, "truck": 12.0, "pedestrian": 0.175, "bicycle": 0.85}


@dataclass(frozen=True)
class DecodeConfig:
    """Peak picking and NMS.

    Args:
        score_threshold: lowest heatmap score kept.
        top_k: most peaks kept over all classes before NMS.
        max_detections: most detections kept after NMS.
        nms: circle-NMS on (radius per class name, NMS_RADIUS by default); off keeps every peak.
    """

    score_threshold: float = 0.05
    top_k: int = 300
    max_detections: int = 200
    nms: bool = True


class Decoder:
    """CenterPoint decoding of one frame's head output into :class:`Detections3D`.

    Args:
        head_grid: the head's BEV grid (cell (iy, ix) -> ego x, y).
        class_names: heatmap channel order.
        config: thresholds.
    """

    def __init__(self, head_grid, class_names: tuple[str, ...], config: DecodeConfig = DecodeConfig()):
        self.grid = head_grid
        self.class_names = tuple(class_names)
        self.config = config
        self.radius = np.array([NMS_RADIUS.get(n, 1.0) if config.nms else 0.0 for n in class_names], np.float32)

    def __call__(self, heatmap: np.ndarray, regression: np.ndarray, stamp_ns: int) -> Detections3D:
        """heatmap (K, H, W) float32 probabilities, regression (10, H, W) float32 -> detections."""
        from perception.kernels import circle_nms, heatmap_peaks

        c = self.config
        labels, iy, ix, scores = heatmap_peaks(heatmap, c.score_threshold, c.top_k)
        if len(labels) == 0:
            return Detections3D.empty(stamp_ns, self.class_names)
        r = regression[:, iy, ix].T.astype(np.float32)                       # (N, 10)
        g = self.grid
        boxes = np.empty((len(labels), 7), np.float32)
        boxes[:, 0] = g.x_min + (ix + r[:, 0]) * g.cell
        boxes[:, 1] = g.y_min + (iy + r[:, 1]) * g.cell
        boxes[:, 2] = r[:, 2]
        boxes[:, 3:6] = np.exp(np.clip(r[:, 3:6], -3.0, 3.5))
        boxes[:, 6] = np.arctan2(r[:, 6], r[:, 7])
        vel = np.ascontiguousarray(r[:, 8:10])
        keep = circle_nms(np.ascontiguousarray(boxes[:, :2]), scores, labels, self.radius)[: c.max_detections]
        return Detections3D(stamp_ns, boxes[keep], vel[keep], scores[keep].astype(np.float32),
                            labels[keep].astype(np.int32), np.zeros(len(keep), bool), self.class_names)
