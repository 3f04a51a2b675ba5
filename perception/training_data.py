"""Training data: simulated drives run through the same sync and frontend as replay, cached per drive.

A drive is simulated (:mod:`drivers.sim`), synchronised with ``configs/sync_sim.yaml`` and prepared by
:class:`~perception.frontend.Frontend`, exactly as ``perception replay`` prepares a recording; the
frontend's outputs and the ground truth at each LiDAR stamp are stored in one ``.npz`` per drive (no
pickles; plain arrays). Each drive gets its own ``start_stamp_ns`` so frames of different drives never
share a stamp.

:class:`DriveDataset` turns cached frames into network inputs (pillarization with the runtime's kernel,
camera images as float tensors) and CenterPoint targets, with optional y-mirror augmentation (the default
rig is mirror-symmetric: cameras on the centre line, principal point centred).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.yamlconf import load_yaml_file
from drivers.messages import GroundTruthBoxes
from drivers.sim import SimConfig, SimulatedRig
from perception.frontend import Frontend, FrontendConfig
from perception.models.networks import NetworkConfig, N_REGRESSION
from perception.executor import arrival_order
from perception.sync import SyncConfig, Synchronizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DRIVE_STAMP_SPACING_NS = 10**13  # 10 000 s between the starts of two cached drives
GT_MATCH_NS = 5_000_000


@dataclass(frozen=True)
class DriveSpec:
    """One simulated drive of a data set."""

    seed: int
    duration_s: float
    weather: str
    lidar_columns: int
    index: int  # gives the drive's start stamp

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + DATA_VERSION
        return f"drive_s{self.seed}_{self.weather}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"


DATA_VERSION = "v4-radar5"  # v2: frames formed in arrival order with the newest-before-the-sweep camera/radar
# policy; v3: the emergency vehicle's lane is clear of the traffic it would drive through; v4: five radars all
# round (drivers.sim.RADAR_LAYOUT) instead of one ahead


def simulate_drive(spec: DriveSpec, out_dir: Path) -> Path:
    """Simulate, synchronise and prepare one drive; write ``<key>.npz`` into ``out_dir`` (skipped when it
    exists). Returns the file."""
    out = Path(out_dir) / f"{spec.key()}.npz"
    if out.exists():
        return out
    base = load_yaml_file(SimConfig, CONFIGS / "sim_default.yaml")
    cfg = dataclasses.replace(base, seed=spec.seed, duration_s=spec.duration_s, weather=spec.weather,
                              lidar_columns=spec.lidar_columns,
                              start_stamp_ns=base.start_stamp_ns + spec.index * DRIVE_STAMP_SPACING_NS)
    sim = SimulatedRig.from_config(cfg)
    sync = Synchronizer(SyncConfig.load(CONFIGS / "sync_sim.yaml"))
    frontend = Frontend(sim.rig, FrontendConfig())
    gts: dict[int, GroundTruthBoxes] = {}
    frames = []

    def take(fs):
        for f in fs:
            frames.append(frontend(f))

    for now, msg in arrival_order(sim.messages()):  # as replay and live feed the synchroniser
        if isinstance(msg, GroundTruthBoxes):
            gts[msg.stamp_ns] = msg
            continue
        take(sync.push(msg, now))
    take(sync.flush())
    gt_stamps = np.array(sorted(gts), np.int64)
    arrays: dict[str, list] = {k: [] for k in ("lidar", "radar", "gt_boxes", "gt_vel", "gt_labels", "gt_npts", "gt_siren")}
    stamps, images, cam_present, lidar_present, radar_present = [], [], [], [], []
    lidar_off, radar_off, gt_off = [0], [0], [0]
    for fi in frames:
        j = int(np.argmin(np.abs(gt_stamps - fi.stamp_ns))) if len(gt_stamps) else -1
        if j < 0 or abs(int(gt_stamps[j]) - fi.stamp_ns) > GT_MATCH_NS:
            continue  # no ground truth for this frame: not usable for training
        gt = gts[int(gt_stamps[j])]
        stamps.append(fi.stamp_ns)
        arrays["lidar"].append(fi.lidar_points.astype(np.float16))
        arrays["radar"].append(fi.radar_points)
        images.append(fi.images)
        cam_present.append(fi.camera_present)
        lidar_present.append(fi.lidar_present)
        radar_present.append(fi.radar_present)
        arrays["gt_boxes"].append(gt.boxes.astype(np.float32))
        arrays["gt_vel"].append(gt.velocities.astype(np.float32))
        arrays["gt_labels"].append(gt.labels.astype(np.int32))
        arrays["gt_npts"].append(gt.num_points.astype(np.int32))
        arrays["gt_siren"].append(gt.siren.astype(bool))
        lidar_off.append(lidar_off[-1] + len(fi.lidar_points))
        radar_off.append(radar_off[-1] + len(fi.radar_points))
        gt_off.append(gt_off[-1] + len(gt))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.npz")  # two runs may simulate the same drive at once
    np.savez(tmp, stamps=np.array(stamps, np.int64), images=np.stack(images),
             cam_present=np.stack(cam_present), lidar_present=np.array(lidar_present),
             radar_present=np.array(radar_present),
             lidar=np.concatenate(arrays["lidar"]), lidar_off=np.array(lidar_off, np.int64),
             radar=np.concatenate(arrays["radar"]), radar_off=np.array(radar_off, np.int64),
             gt_boxes=np.concatenate(arrays["gt_boxes"]).reshape(-1, 7),
             gt_vel=np.concatenate(arrays["gt_vel"]).reshape(-1, 2),
             gt_labels=np.concatenate(arrays["gt_labels"]), gt_npts=np.concatenate(arrays["gt_npts"]),
             gt_siren=np.concatenate(arrays["gt_siren"]), gt_off=np.array(gt_off, np.int64),
             weather=np.array(spec.weather), seed=np.array(spec.seed))
    tmp.rename(out)
    return out


@dataclass(frozen=True, eq=False)
class Drive:
    """A cached drive loaded into memory (arrays as stored by :func:`simulate_drive`)."""

    path: Path
    weather: str
    stamps: np.ndarray
    images: np.ndarray
    cam_present: np.ndarray
    lidar_present: np.ndarray
    radar_present: np.ndarray
    lidar: np.ndarray
    lidar_off: np.ndarray
    radar: np.ndarray
    radar_off: np.ndarray
    gt_boxes: np.ndarray
    gt_vel: np.ndarray
    gt_labels: np.ndarray
    gt_npts: np.ndarray
    gt_siren: np.ndarray
    gt_off: np.ndarray

    @staticmethod
    def load(path: Path) -> "Drive":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        weather = str(d.pop("weather"))
        d.pop("seed")
        return Drive(Path(path), weather, **d)

    def __len__(self) -> int:
        return len(self.stamps)

    def lidar_points(self, i: int) -> np.ndarray:
        return self.lidar[self.lidar_off[i]:self.lidar_off[i + 1]].astype(np.float32)

    def radar_points(self, i: int) -> np.ndarray:
        return self.radar[self.radar_off[i]:self.radar_off[i + 1]]

    def gt(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = slice(self.gt_off[i], self.gt_off[i + 1])
        return self.gt_boxes[s], self.gt_vel[s], self.gt_labels[s], self.gt_npts[s], self.gt_siren[s]


def gaussian_radius(length_cells: np.ndarray, width_cells: np.ndarray, min_overlap: float = 0.1) -> np.ndarray:
    """CornerNet's radius (as CenterPoint uses it) for a box of the given size in cells."""
    h, w = length_cells, width_cells
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return np.minimum(np.minimum(r1, r2), r3)


@dataclass(frozen=True, eq=False)
class Targets:
    """CenterPoint targets of one frame: heatmap (K, H, W) float32, and for up to ``max_objects`` objects
    the flat head-cell index (int64), regression target (10,) and a mask."""

    heatmap: np.ndarray
    index: np.ndarray
    regression: np.ndarray
    mask: np.ndarray


def make_targets(cfg: NetworkConfig, boxes: np.ndarray, vel: np.ndarray, labels: np.ndarray,
                 max_objects: int = 128, min_radius: int = 1) -> Targets:
    """Targets on the head grid for boxes (N, 7) ego frame, velocities (N, 2), labels (N,)."""
    g = cfg.head_grid
    k = len(cfg.class_names)
    heat = np.zeros((k, g.ny, g.nx), np.float32)
    index = np.zeros(max_objects, np.int64)
    reg = np.zeros((max_objects, N_REGRESSION), np.float32)
    mask = np.zeros(max_objects, np.float32)
    fx = (boxes[:, 0] - g.x_min) / g.cell
    fy = (boxes[:, 1] - g.y_min) / g.cell
    inside = (fx >= 0) & (fx < g.nx) & (fy >= 0) & (fy < g.ny)
    radii = np.maximum(gaussian_radius(boxes[:, 3] / g.cell, boxes[:, 4] / g.cell), 0).astype(int)
    radii = np.maximum(radii, min_radius)
    n = 0
    for j in np.flatnonzero(inside):
        if n >= max_objects:
            break
        ix, iy = int(fx[j]), int(fy[j])
        r = int(radii[j])
        sigma = (2 * r + 1) / 6.0
        ys, xs = np.arange(-r, r + 1), np.arange(-r, r + 1)
        gauss = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma * sigma)).astype(np.float32)
        y0, y1 = max(0, iy - r), min(g.ny, iy + r + 1)
        x0, x1 = max(0, ix - r), min(g.nx, ix + r + 1)
        c = int(labels[j])
        heat[c, y0:y1, x0:x1] = np.maximum(heat[c, y0:y1, x0:x1],
                                           gauss[y0 - iy + r:y1 - iy + r, x0 - ix + r:x1 - ix + r])
        index[n] = iy * g.nx + ix
        b = boxes[j]
        reg[n] = (fx[j] - ix, fy[j] - iy, b[2], math.log(b[3]), math.log(b[4]), math.log(b[5]),
                  math.sin(b[6]), math.cos(b[6]), vel[j, 0], vel[j, 1])
        mask[n] = 1.0
        n += 1
    return Targets(heat, index, reg, mask)
