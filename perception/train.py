"""``perception train``: train the detection networks on simulated drives.

    perception train --config configs/train_fusion.yaml --out runs/fusion

Seeded and reproducible (same config, same machine, same thread count -> same weights): drives are
simulated by our simulator in every weather and cached (:mod:`perception.training_data`), the networks
are trained with AdamW and a one-cycle schedule for a fixed number of steps, validated every
``val_every`` steps with the nuScenes-protocol mAP/NDS on held-out validation drives, and checkpointed
(resumable: rerunning the same command continues from ``OUT/last.pt``). Checkpoints carry the network
config and load with ``torch.load(weights_only=True)``.

Modality dropout: each training sample drops LiDAR, cameras and radar independently with probability
``modality_dropout`` (never all of those in ``modalities``), so the one fused model serves every degraded
mode. A single-modality baseline is the same network with ``modalities`` restricted and no dropout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.yamlconf import load_yaml_file, to_dict
from perception.training_data import DriveSpec

log = logging.getLogger(__name__)
MODALITIES = ("lidar", "camera", "radar")


@dataclass(frozen=True)
class TrainConfig:
    """A training run (``configs/train_*.yaml``; flat and complete).

    Args:
        name: run name, written into the checkpoint.
        seed: initialisation, sampling and augmentation seed.
        modalities: sensors the network may see (a baseline restricts them).
        modality_dropout: per-sample probability of dropping each present modality (0 for baselines).
        lidar_dropout: the probability for the LiDAR alone, when it should differ (None: modality_dropout):
            a higher one gives the camera and radar paths more samples of their own.
        train_seeds, train_duration_s: simulated training drives (one per seed).
        val_seeds, val_duration_s: validation drives (seeds never used for training).
        weathers: drive i gets weathers[i % len]; lidar_columns: drive i gets lidar_columns[(i // len(weathers)) % len].
        data_cache: folder of cached drives (shared by every run with the same drive settings).
        steps, batch_size, lr, weight_decay: optimisation (AdamW, one-cycle learning rate).
        val_every, checkpoint_every: steps between validations and between checkpoints.
        threads: torch CPU threads.
        flip: random y-mirror augmentation.
        lidar_channels, bev_channels, lidar_max_pillars: network sizes (``NetworkConfig``): the BEV
            backbone's cost grows with bev_channels squared, so they size the model to the frame budget.
        velocity_weight: L1 weight of the vx, vy regression (the other box terms weigh 1).
        depth_weight: weight of the camera depth loss (BEVDepth's depth supervision): cross-entropy of the
            camera network's depth distribution against the nearest LiDAR point in each feature cell, from
            the frame's own points (used as a training target even when the LiDAR input is dropped);
            0 trains the depth distribution through the detection loss alone.
        init_from: checkpoint whose weights start the run (same network sizes), e.g. the LiDAR-only
            baseline, so the fused model starts from a trained LiDAR path; None starts from random weights.
            A checkpoint without the LiDAR-free path may start a run with one (that path then comes from
            ``init_lidarless_from`` or starts random).
        lidarless_path: give the BEV network its second path for the frames without LiDAR
            (``NetworkConfig.lidarless_path``).
        init_lidarless_from: a camera+radar baseline's checkpoint (same sizes): its camera network, radar
            encoder, fuser (the camera and radar inputs), backbone and head start the camera network and the
            LiDAR-free path, after ``init_from``; the validation also reports the mAP without LiDAR.
        train_only_lidarless: train the LiDAR-free path alone; the camera network, the encoders and the main
            path keep the weights (and batch-norm statistics) they start with.
    """

    name: str = "fusion"
    seed: int = 0
    modalities: tuple[str, ...] = MODALITIES
    modality_dropout: float = 0.25
    lidar_dropout: float | None = None
    train_seeds: tuple[int, ...] = tuple(range(100, 114))
    train_duration_s: float = 16.0
    val_seeds: tuple[int, ...] = (900, 901)
    val_duration_s: float = 8.0
    weathers: tuple[str, ...] = ("clear", "rain", "fog", "night")
    lidar_columns: tuple[int, ...] = (1800, 900)
    data_cache: str = ".cache/sim_drives"
    steps: int = 500
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    val_every: int = 250
    checkpoint_every: int = 50
    threads: int = 2
    flip: bool = True
    lidar_channels: int = 32
    bev_channels: int = 48
    lidar_max_pillars: int = 12000
    velocity_weight: float = 0.2
    depth_weight: float = 0.0
    init_from: str | None = None
    lidarless_path: bool = False
    init_lidarless_from: str | None = None
    train_only_lidarless: bool = False

    def __post_init__(self) -> None:
        if (self.init_lidarless_from is not None or self.train_only_lidarless) and not self.lidarless_path:
            raise ValueError("TrainConfig.init_lidarless_from and train_only_lidarless need lidarless_path: true")
        bad = set(self.modalities) - set(MODALITIES)
        if bad or not self.modalities:
            raise ValueError(f"TrainConfig.modalities: {sorted(bad)} unknown; choose from {MODALITIES}")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"TrainConfig.modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.lidar_dropout is not None and not 0 <= self.lidar_dropout < 1:
            raise ValueError(f"TrainConfig.lidar_dropout must be in [0, 1) or null, got {self.lidar_dropout}")

    def dropout_of(self) -> dict[str, float]:
        """Per-modality dropout probability."""
        p = {m: self.modality_dropout for m in MODALITIES}
        if self.lidar_dropout is not None:
            p["lidar"] = self.lidar_dropout
        return p

    @staticmethod
    def load(path: str | Path) -> "TrainConfig":
        return load_yaml_file(TrainConfig, path)


def drive_specs(seeds, duration_s: float, weathers, lidar_columns, first_index: int) -> list[DriveSpec]:
    """The drives of a data set: seed i gets weathers[i % W] and lidar_columns[(i // W) % L]."""
    w = len(weathers)
    return [DriveSpec(int(s), float(duration_s), weathers[i % w], int(lidar_columns[(i // w) % len(lidar_columns)]),
                      first_index + i) for i, s in enumerate(seeds)]


def train_drives(cfg: TrainConfig) -> list[DriveSpec]:
    return drive_specs(cfg.train_seeds, cfg.train_duration_s, cfg.weathers, cfg.lidar_columns, 0)


def val_drives(cfg: TrainConfig) -> list[DriveSpec]:
    return drive_specs(cfg.val_seeds, cfg.val_duration_s, cfg.weathers, cfg.lidar_columns, 1000)


def _simulate_one(args) -> str:
    from perception.training_data import simulate_drive
    spec, out = args
    logging.getLogger("perception.sync").setLevel(logging.ERROR)
    return str(simulate_drive(spec, Path(out)))


def generate_drives(specs: list[DriveSpec], cache: Path, workers: int = 2, progress: bool = True) -> list[Path]:
    """Simulate and cache the drives that are not cached yet (``workers`` processes). Returns the files in
    ``specs`` order."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    todo = [(s, str(cache)) for s in specs if not (cache / f"{s.key()}.npz").exists()]
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as ex:
            for _ in tqdm(ex.map(_simulate_one, todo), total=len(todo), desc="simulating drives",
                          disable=not progress, unit="drive"):
                pass
    return [cache / f"{s.key()}.npz" for s in specs]


# ---------------------------------------------------------------------------------------------- batches
@dataclass(frozen=True, eq=False)
class Batch:
    """Network inputs and targets of B samples (numpy; converted to torch in the loop)."""

    lidar_pillars: np.ndarray   # (B, P, M, 10)
    lidar_index: np.ndarray     # (B, P) int64
    radar_pillars: np.ndarray   # (B, Pr, Mr, 12)
    radar_index: np.ndarray     # (B, Pr) int64
    images: np.ndarray          # (B*Ncam, 3, H, W) float32 [0, 1]
    camera_present: np.ndarray  # (B, Ncam) float32
    presence: np.ndarray        # (B, 3) float32
    heatmap: np.ndarray         # (B, K, Hh, Wh)
    target_index: np.ndarray    # (B, O) int64
    target_regression: np.ndarray  # (B, O, 10)
    target_mask: np.ndarray     # (B, O)
    depth_target: np.ndarray | None = None  # (B*Ncam, h, w) int64 depth bin, -1 where no target


class SampleBuilder:
    """Turns a cached frame into one sample (pillarization by the runtime kernel, targets)."""

    def __init__(self, net_cfg, modalities: tuple[str, ...], dropout: dict[str, float] | None, flip: bool,
                 depth: "DepthTargets | None" = None):
        from perception.kernels import Pillarizer  # noqa: F401  (fails early when the kernels are missing)

        self.cfg = net_cfg
        self.modalities = modalities
        self.dropout = dict(dropout or {})  # modality -> probability of dropping it per training sample
        self.flip = flip
        self.depth = depth  # makes depth-bin targets for the camera network when set

    def build(self, drives, items, rng: np.random.Generator, train: bool) -> Batch:
        from perception.kernels import pillarize
        from perception.models.networks import LIDAR_POINT_COLUMNS, PILLAR_EXTRA, RADAR_POINT_COLUMNS
        from perception.training_data import make_targets

        c = self.cfg
        b = len(items)
        lp = np.zeros((b, c.lidar_max_pillars, c.lidar_max_points, LIDAR_POINT_COLUMNS + PILLAR_EXTRA), np.float32)
        li = np.zeros((b, c.lidar_max_pillars), np.int64)
        rp = np.zeros((b, c.radar_max_pillars, c.radar_max_points, RADAR_POINT_COLUMNS + PILLAR_EXTRA), np.float32)
        ri = np.zeros((b, c.radar_max_pillars), np.int64)
        lnp = np.zeros(c.lidar_max_pillars, np.int32)
        rnp = np.zeros(c.radar_max_pillars, np.int32)
        images = np.zeros((b, c.n_cameras, 3, c.image_height, c.image_width), np.float32)
        cam_present = np.zeros((b, c.n_cameras), np.float32)
        presence = np.zeros((b, 3), np.float32)
        depth = (None if self.depth is None else
                 np.full((b, c.n_cameras, c.feature_height, c.feature_width), -1, np.int64))
        targets = []
        for k, (d, i) in enumerate(items):
            drive = drives[d]
            use = {m: m in self.modalities for m in MODALITIES}
            if train and any(self.dropout.values()):
                drop = {m: use[m] and rng.random() < self.dropout.get(m, 0.0) for m in MODALITIES}
                if all(drop[m] or not use[m] for m in MODALITIES):
                    drop = {m: False for m in MODALITIES}
                use = {m: use[m] and not drop[m] for m in MODALITIES}
            flip = train and self.flip and rng.random() < 0.5
            if use["lidar"] and drive.lidar_present[i]:
                pts = drive.lidar_points(i)
                if flip:
                    pts[:, 1] *= -1
                pillarize(pts, c.grid, lp[k], li[k], lnp)
                presence[k, 0] = 1
            else:
                li[k] = c.grid.n_cells
            if use["radar"] and drive.radar_present[i]:
                r = drive.radar_points(i).copy()
                if flip:
                    r[:, 1] *= -1
                    r[:, 4] *= -1
                pillarize(r, c.grid, rp[k], ri[k], rnp)
                presence[k, 2] = 1
            else:
                ri[k] = c.grid.n_cells
            if use["camera"] and drive.cam_present[i].any():
                img = drive.images[i]
                if flip:
                    img = img[:, :, ::-1]
                images[k] = img.transpose(0, 3, 1, 2) / np.float32(255.0)
                cam_present[k] = drive.cam_present[i]
                presence[k, 1] = 1
                if depth is not None and drive.lidar_present[i]:
                    dt = self.depth(drive.lidar_points(i))
                    dt[drive.cam_present[i] == 0] = -1
                    depth[k] = dt[:, :, ::-1] if flip else dt
            boxes, vel, labels, npts, _ = drive.gt(i)
            keep = npts > 0
            boxes, vel, labels = boxes[keep].copy(), vel[keep].copy(), labels[keep]
            if flip:
                boxes[:, 1] *= -1
                boxes[:, 6] *= -1
                vel[:, 1] *= -1
            targets.append(make_targets(c, boxes, vel, labels))
        return Batch(lp, li, rp, ri, images.reshape(b * c.n_cameras, 3, c.image_height, c.image_width),
                     cam_present, presence, np.stack([t.heatmap for t in targets]),
                     np.stack([t.index for t in targets]), np.stack([t.regression for t in targets]),
                     np.stack([t.mask for t in targets]),
                     None if depth is None else depth.reshape(b * c.n_cameras, c.feature_height, c.feature_width))


class DepthTargets:
    """Depth-bin targets of the camera network from LiDAR points (BEVDepth's depth supervision).

    Each ego-frame point is projected into every camera; a feature cell's target is the depth bin (along the
    optical axis, ``NetworkConfig.depth_centers``) of its nearest point, -1 where no point falls.
    """

    def __init__(self, net_cfg, cameras, ego_from_cameras):
        self.cfg = net_cfg
        self.cameras = list(cameras)
        self.cam_from_ego = [T.inverse() for T in ego_from_cameras]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """points (N, >=3) ego frame -> (Ncam, h, w) int64."""
        c = self.cfg
        h, w, s = c.feature_height, c.feature_width, c.feature_stride
        out = np.full((len(self.cameras), h * w), -1, np.int64)
        xyz = np.asarray(points[:, :3], np.float32)
        for k, (cam, T) in enumerate(zip(self.cameras, self.cam_from_ego)):
            # depth first, on every point; the full transform and projection only for those in the bins
            r = T.rotation.astype(np.float32)
            bins = np.rint((xyz @ r[2] + np.float32(T.translation[2]) - c.depth_min) / c.depth_step)
            near = (bins >= 0) & (bins < c.depth_bins)
            p = xyz[near].astype(np.float64) @ T.rotation.T + T.translation
            bins = bins[near].astype(np.int64)
            uv, _ = cam.project(p)
            ix = np.floor(((uv[:, 0] + 0.5) * c.image_scale) / s).astype(np.int64)
            iy = np.floor(((uv[:, 1] + 0.5) * c.image_scale - c.crop_top) / s).astype(np.int64)
            ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
            cell, z, bins = iy[ok] * w + ix[ok], p[ok, 2], bins[ok]
            order = np.lexsort((z, cell))            # by cell, nearest first
            first = np.ones(len(order), bool)
            first[1:] = cell[order][1:] != cell[order][:-1]
            out[k, cell[order][first]] = bins[order][first]
        return out.reshape(len(self.cameras), h, w)


def depth_targets_for(net_cfg, rig=None) -> DepthTargets:
    """Depth targets for the frontend's cameras on ``rig`` (default rig when None)."""
    return DepthTargets(net_cfg, *_frontend_cameras(net_cfg, rig))


def _frontend_cameras(net_cfg, rig=None) -> tuple[list, list]:
    """(camera models, ego_from_camera transforms) of the frontend's cameras on ``rig`` (default rig when
    None), in the network's camera order."""
    from drivers.sim import default_rig
    from perception.frontend import FrontendConfig

    rig = rig or default_rig(net_cfg.n_cameras)
    ids = FrontendConfig().camera_ids[: net_cfg.n_cameras]
    return [rig[c].camera for c in ids], [rig.ego_from(c) for c in ids]


# ---------------------------------------------------------------------------------------------- model
class Detector:
    """The two networks plus the static lift geometry, as trained (torch)."""

    def __init__(self, net_cfg, cell_index: np.ndarray):
        import torch

        from perception.models.networks import BevNet, CameraNet

        self.cfg = net_cfg
        self.camera = CameraNet(net_cfg)
        self.bev = BevNet(net_cfg)
        self.cell_index = torch.from_numpy(cell_index)

    def parameters(self):
        return list(self.camera.parameters()) + list(self.bev.parameters())

    def train(self, mode: bool = True) -> None:
        self.camera.train(mode)
        self.bev.train(mode)

    def forward(self, batch: Batch):
        """(heatmap, regression) of the BEV network."""
        heat, reg, _ = self.forward_with_depth(batch)
        return heat, reg

    def forward_with_depth(self, batch: Batch):
        """(heatmap, regression, camera depth distribution (B*Ncam, D, h, w) or None when no camera ran)."""
        import torch

        t = torch.from_numpy
        cam_bev, depth = self.camera_bev_and_depth(batch)
        heat, reg = self.bev(t(batch.lidar_pillars), t(batch.lidar_index), t(batch.radar_pillars),
                             t(batch.radar_index), cam_bev, t(batch.presence))
        return heat, reg, depth

    def camera_bev(self, batch: Batch):
        """(B, C, ny, nx) pooled camera features of the batch (lift-splat, present cameras only)."""
        return self.camera_bev_and_depth(batch)[0]

    def camera_bev_and_depth(self, batch: Batch):
        import torch

        from perception.models.networks import camera_bev_torch

        c = self.cfg
        t = torch.from_numpy
        if not batch.presence[:, 1].any():
            # No camera in the whole batch: the BEV net zeroes camera features anyway (presence 0), so the
            # camera network's output cannot matter; skip it (LiDAR-only runs train ~2x faster).
            return torch.zeros(len(batch.presence), c.camera_channels, c.grid.ny, c.grid.nx), None
        depth, feats = self.camera(t(batch.images))
        masked = depth * t(batch.camera_present).reshape(-1, 1, 1, 1)
        return camera_bev_torch(masked, feats, self.cell_index, c.grid.n_cells, c.grid.ny, c.grid.nx), depth

    def state_dict(self) -> dict:
        return {"camera": self.camera.state_dict(), "bev": self.bev.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.camera.load_state_dict(sd["camera"])
        self.bev.load_state_dict(sd["bev"])


CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # offset x y, z, log size l w h, sin, cos; then vx vy


def detection_loss(heat_pred, reg_pred, batch: Batch, velocity_weight: float = 0.2):
    """CenterNet focal loss on the heatmap + weighted L1 on the regression at object centres (the box terms
    weigh 1, vx and vy ``velocity_weight``). Returns (total, heatmap part, regression part) torch scalars."""
    import torch

    t = torch.from_numpy
    gt = t(batch.heatmap)
    p = heat_pred.clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg_w = torch.pow(1 - gt, 4)
    pos_loss = (torch.log(p) * torch.pow(1 - p, 2) * pos).sum()
    neg_loss = (torch.log(1 - p) * torch.pow(p, 2) * neg_w * (1 - pos)).sum()
    n_pos = pos.sum().clamp(min=1.0)
    hm = -(pos_loss + neg_loss) / n_pos
    b, r = reg_pred.shape[:2]
    idx = t(batch.target_index).unsqueeze(1).expand(-1, r, -1)
    pred = reg_pred.reshape(b, r, -1).gather(2, idx).permute(0, 2, 1)     # (B, O, 10)
    mask = t(batch.target_mask).unsqueeze(2)
    w = torch.tensor(CODE_WEIGHTS + (velocity_weight, velocity_weight))
    l1 = (torch.abs(pred - t(batch.target_regression)) * mask * w).sum() / mask.sum().clamp(min=1.0)
    return hm + 0.25 * l1, hm, l1


def depth_loss(depth_pred, target: np.ndarray):
    """Mean cross-entropy of the depth distribution (B*Ncam, D, h, w) at the cells with a target bin."""
    import torch

    tgt = torch.from_numpy(target)
    valid = tgt >= 0
    if not bool(valid.any()):
        return depth_pred.sum() * 0.0
    p = depth_pred.permute(0, 2, 3, 1)[valid]                       # (N, D)
    return -torch.log(p.gather(1, tgt[valid].unsqueeze(1)).clamp(min=1e-6)).mean()


# ---------------------------------------------------------------------------------------------- evaluation
def predict_drive(det: Detector, drive, builder: SampleBuilder, decoder, batch_size: int = 4):
    """Detections of every frame of a cached drive (eval mode). Returns a list of Detections3D."""
    import torch

    det.train(False)
    out = []
    with torch.inference_mode():
        for s in range(0, len(drive), batch_size):
            items = [(0, i) for i in range(s, min(len(drive), s + batch_size))]
            batch = builder.build([drive], items, np.random.default_rng(0), train=False)
            heat, reg = det.forward(batch)
            heat, reg = heat.numpy(), reg.numpy()
            for k, (_, i) in enumerate(items):
                out.append(decoder(heat[k], reg[k], int(drive.stamps[i])))
    return out


def ground_truth_frames(drive) -> list:
    """The drive's ground truth as results-file frames (class names, num_points, siren attribute)."""
    from drivers.messages import CLASS_NAMES
    from perception.evaluation.results import FrameBoxes

    frames = []
    for i in range(len(drive)):
        boxes, vel, labels, npts, siren = drive.gt(i)
        frames.append(FrameBoxes.create(int(drive.stamps[i]), boxes, [CLASS_NAMES[int(k)] for k in labels],
                                        velocities=vel, num_points=npts,
                                        attributes=[{"siren": bool(s)} for s in siren]))
    return frames


def validate(det: Detector, drives, builder: SampleBuilder, decoder):
    """nuScenes-protocol EvalResult over the given drives (their stamps never collide)."""
    from perception.evaluation.metrics import evaluate

    preds, gts = [], []
    for d in drives:
        preds += [x.to_frame_boxes() for x in predict_drive(det, d, builder, decoder)]
        gts += ground_truth_frames(d)
    return evaluate(preds, gts)


# ---------------------------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, peak: float) -> float:
    """One-cycle: 10 % linear warm-up from peak/10, cosine down to peak/100."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (0.1 + 0.9 * step / warm)
    f = (step - warm) / max(1, total - warm)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * f)))


def load_checkpoint_file(path: str | Path) -> dict:
    """A checkpoint as a plain dict (``torch.load(weights_only=True)``: no code is unpickled)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def detector_from_checkpoint(path: str | Path, rig=None, lidar_max_pillars: int | None = None,
                             bev_range_m: float | None = None):
    """(Detector in eval mode, NetworkConfig, checkpoint dict) from a checkpoint file; the lift geometry
    comes from ``rig`` (default: the simulated rig the networks were trained on).

    ``lidar_max_pillars`` replaces the checkpoint's LiDAR pillar budget: a buffer size of the exported
    graph, not a weight, so the network computes the same for every frame whose pillars fit.
    ``bev_range_m`` replaces the half-width of the checkpoint's square BEV grid (same cell size): the
    networks are convolutional and see no absolute position (a pillar's features are relative to its own
    cell), so the same weights run on a larger grid and detect beyond the range they were trained on, at
    the cost of the larger grid's compute."""
    from dataclasses import replace

    from perception.models.networks import NetworkConfig

    ck = load_checkpoint_file(path)
    net_cfg = NetworkConfig.from_dict(json.loads(ck["network_config"]))
    if lidar_max_pillars is not None:
        if lidar_max_pillars < 1:
            raise ValueError(f"lidar_max_pillars must be >= 1, got {lidar_max_pillars}")
        net_cfg = replace(net_cfg, lidar_max_pillars=int(lidar_max_pillars))
    if bev_range_m is not None:
        g = net_cfg.grid
        # The backbone halves the head grid once more and upsamples back: cells a multiple of 2 * head_stride.
        step = 2 * net_cfg.head_stride * g.cell
        n = 2 * bev_range_m / step
        if bev_range_m <= 0 or abs(n - round(n)) > 1e-6:
            raise ValueError(f"bev_range_m must be a positive multiple of {step / 2:g} m (the grid's {g.cell:g} m "
                             f"cells times {net_cfg.head_stride} for the head and 2 for the backbone, per side), "
                             f"got {bev_range_m}")
        r = float(bev_range_m)
        net_cfg = replace(net_cfg, grid=replace(g, x_min=-r, x_max=r, y_min=-r, y_max=r))
    det = Detector(net_cfg, cell_index_for(net_cfg, rig))
    det.load_state_dict(ck["model"])
    det.train(False)
    return det, net_cfg, ck


def _same_sizes(net_cfg, path: str | Path, what: str) -> dict:
    """The checkpoint at ``path``, checked to have ``net_cfg``'s sizes (the LiDAR-free path aside)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist; train that run first")
    ck = load_checkpoint_file(p)
    theirs = json.loads(ck["network_config"])
    mine = json.loads(json.dumps(net_cfg.to_dict()))
    diff = sorted(k for k in set(theirs) | set(mine) if k != "lidarless_path" and theirs.get(k) != mine.get(k))
    if diff:
        raise ValueError(f"{what}: {p} has other network sizes ({', '.join(diff)})")
    return ck


def _init_weights(det: Detector, net_cfg, path: str | Path) -> None:
    """Start ``det`` from the weights of another run's checkpoint made with the same network sizes (one
    without the LiDAR-free path may start a network with one: that path keeps its initial weights)."""
    ck = _same_sizes(net_cfg, path, "init_from")
    det.camera.load_state_dict(ck["model"]["camera"])
    missing, unexpected = det.bev.load_state_dict(ck["model"]["bev"], strict=False)
    if unexpected or any(not k.startswith("lidarless.") for k in missing):
        raise ValueError(f"init_from: {path} does not fit this network (missing {missing}, unexpected {unexpected})")
    log.info("starting from the weights of %s (step %s)", path, ck.get("step"))


def _init_lidarless(det: Detector, net_cfg, path: str | Path) -> None:
    """Start the camera network and the LiDAR-free path from a camera+radar baseline's checkpoint. The
    baseline's fuser saw zeros for the LiDAR features and flag; the path's fuser takes its weights over the
    camera and radar features and flags, so at the start the path computes what the baseline computed."""
    ck = _same_sizes(net_cfg, path, "init_lidarless_from")
    theirs = ck["model"]["bev"]
    det.camera.load_state_dict(ck["model"]["camera"])
    # The baseline's fuser inputs: LiDAR, camera and radar features, then the LiDAR, camera and radar flags.
    flags = net_cfg.lidar_channels + net_cfg.camera_channels + net_cfg.radar_channels
    keep = [*range(net_cfg.lidar_channels, flags), flags + 1, flags + 2]
    path_sd = {}
    for k in det.bev.lidarless.state_dict():
        v = theirs[k]
        path_sd[k] = v[:, keep] if k == "fuser.0.weight" else v
    det.bev.lidarless.load_state_dict(path_sd)
    log.info("LiDAR-free path and camera network from %s (step %s)", path, ck.get("step"))


def cell_index_for(net_cfg, rig=None) -> np.ndarray:
    """The frustum -> BEV cell geometry of the frontend's cameras on ``rig`` (default rig when None)."""
    from perception.models.networks import frustum_cell_index

    return frustum_cell_index(net_cfg, *_frontend_cameras(net_cfg, rig))


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Train (or resume) a run; returns the final checkpoint ``OUT/model.pt``."""
    import torch
    from tqdm import tqdm

    from perception.decode import DecodeConfig, Decoder
    from perception.models.networks import NetworkConfig
    from perception.training_data import Drive

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net_cfg = NetworkConfig(lidar_channels=cfg.lidar_channels, bev_channels=cfg.bev_channels,
                            lidar_max_pillars=cfg.lidar_max_pillars, lidarless_path=cfg.lidarless_path)
    cache = Path(cfg.data_cache)
    train_files = generate_drives(train_drives(cfg), cache, workers=cfg.threads, progress=progress)
    val_files = generate_drives(val_drives(cfg), cache, workers=cfg.threads, progress=progress)
    drives = [Drive.load(p) for p in train_files]
    vals = [Drive.load(p) for p in val_files]
    det = Detector(net_cfg, cell_index_for(net_cfg))
    depth = depth_targets_for(net_cfg) if cfg.depth_weight > 0 and "camera" in cfg.modalities else None
    builder = SampleBuilder(net_cfg, cfg.modalities, cfg.dropout_of(), cfg.flip, depth)
    eval_builder = SampleBuilder(net_cfg, cfg.modalities, None, False)
    without_lidar = tuple(m for m in cfg.modalities if m != "lidar")
    lidarless_builder = (SampleBuilder(net_cfg, without_lidar, None, False)
                         if cfg.lidarless_path and "lidar" in cfg.modalities and without_lidar else None)
    decoder = Decoder(net_cfg.head_grid, net_cfg.class_names, DecodeConfig())
    trained = det.parameters()
    if cfg.train_only_lidarless:
        for p in trained:
            p.requires_grad_(False)
        trained = list(det.bev.lidarless.parameters())
        for p in trained:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    items = [(d, i) for d, drive in enumerate(drives) for i in range(len(drive))]
    history: list[dict] = []
    step = 0
    elapsed = 0.0
    last = out / "last.pt"
    if last.exists():
        ck = load_checkpoint_file(last)
        if ck["train_config"] != json.dumps(to_dict(cfg), sort_keys=True):
            raise ValueError(f"{last} was made with a different training config; use another --out")
        det.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        step, elapsed, history = int(ck["step"]), float(ck["elapsed_s"]), json.loads(ck["history"])
        log.info("resuming %s at step %d", last, step)
    else:
        if cfg.init_from is not None:
            _init_weights(det, net_cfg, cfg.init_from)
        if cfg.init_lidarless_from is not None:
            _init_lidarless(det, net_cfg, cfg.init_lidarless_from)

    def save(path: Path, final: bool) -> None:
        ck = {"network_config": json.dumps(net_cfg.to_dict(), sort_keys=True),
              "train_config": json.dumps(to_dict(cfg), sort_keys=True),
              "model": det.state_dict(), "step": step, "elapsed_s": elapsed, "history": json.dumps(history)}
        if not final:
            ck["optimizer"] = opt.state_dict()
            ck["torch_rng"] = torch.get_rng_state()
        tmp = path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, path)

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.name}", unit="step", disable=not progress)
    while step < cfg.steps:
        t0 = time.perf_counter()
        # The sample order depends only on (seed, step): resuming gives the same batches.
        rng = np.random.default_rng([cfg.seed, step])
        pick = rng.integers(0, len(items), cfg.batch_size)
        batch = builder.build(drives, [items[j] for j in pick], rng, train=True)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        if cfg.train_only_lidarless:   # the rest stays as it started, batch-norm statistics included
            det.train(False)
            det.bev.lidarless.train(True)
        else:
            det.train(True)
        heat, reg, depth_pred = det.forward_with_depth(batch)
        loss, hm, l1 = detection_loss(heat, reg, batch, cfg.velocity_weight)
        dl = None
        if depth_pred is not None and batch.depth_target is not None:
            dl = depth_loss(depth_pred, batch.depth_target)
            loss = loss + cfg.depth_weight * dl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 10.0)
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", hm=f"{hm.item():.3f}", reg=f"{l1.item():.3f}",
                        **({} if dl is None else {"depth": f"{dl.item():.3f}"}))
        if step % cfg.val_every == 0 or step == cfg.steps:
            res = validate(det, vals, eval_builder, decoder)
            entry = {"step": step, "elapsed_s": round(elapsed, 1), "mAP": res.mean_ap, "NDS": res.nds,
                     "AP": {c.name: c.ap for c in res.classes}}
            line = (f"step {step}: val mAP {res.mean_ap:.4f} NDS {res.nds:.4f} "
                    + " ".join(f"{c.name}={c.ap:.3f}" for c in res.classes))
            if lidarless_builder is not None:
                entry["mAP_no_lidar"] = validate(det, vals, lidarless_builder, decoder).mean_ap
                line += f"; without LiDAR mAP {entry['mAP_no_lidar']:.4f}"
            history.append(entry)
            bar.write(line)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(last, final=False)
    bar.close()
    final = out / "model.pt"
    save(final, final=True)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return final


def int8_calibration(checkpoint: str | Path, n_frames: int = 64, progress: bool = True):
    """INT8 calibration feeds for TensorRT, made from the simulated validation drives (the frames the
    networks see at run time: same frontend, same pillarization, camera BEV pooled by the checkpoint's own
    camera network). Returns ``spec -> iterable of feeds`` as :func:`perception.export.export_all` takes it."""
    import torch

    from perception.training_data import Drive

    det, net_cfg, _ = detector_from_checkpoint(checkpoint)
    cfg = TrainConfig()
    drives = [Drive.load(p) for p in generate_drives(val_drives(cfg), Path(cfg.data_cache), progress=progress)]
    builder = SampleBuilder(net_cfg, MODALITIES, None, False)
    # With the path for frames without LiDAR, every fourth frame goes without it, so that path (the other
    # branch of the graph's If) is calibrated too.
    lidarless = SampleBuilder(net_cfg, ("camera", "radar"), None, False) if net_cfg.lidarless_path else builder
    picks = [(k % len(drives), (k * 7) % len(drives[k % len(drives)])) for k in range(n_frames)]

    def feeds(spec):
        for k, (d, i) in enumerate(picks):
            b = (lidarless if k % 4 == 3 else builder).build([drives[d]], [(0, i)], np.random.default_rng(0),
                                                             train=False)
            if spec.name == "camera":
                yield {"images": b.images}
                continue
            with torch.inference_mode():
                cam_bev = det.camera_bev(b).numpy()
            yield {"lidar_pillars": b.lidar_pillars, "lidar_index": b.lidar_index, "radar_pillars": b.radar_pillars,
                   "radar_index": b.radar_index, "camera_bev": cam_bev, "presence": b.presence}

    return feeds
