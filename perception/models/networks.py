"""The detection networks: camera backbone with depth (lift), and the BEV network (LiDAR pillars, radar
pillars, pooled camera features -> ConvFuser -> CenterPoint head).

Two exported graphs, joined by one kernel outside the graph::

    images ──▶ CameraNet ──▶ depth, features ──▶ bev_pool (numba, perception.kernels) ──▶ camera_bev ─┐
    LiDAR points ──▶ pillarize (numba) ──▶ lidar_pillars, lidar_index ────────────────────────────────┼▶ BevNet ▶ heatmap, regression
    radar points ──▶ pillarize (numba) ──▶ radar_pillars, radar_index ────────────────────────────────┘

Why two graphs: lift-splat's pooling is a scatter-add over ~70k frustum points with static indices. In a
graph it is a ScatterElements(add) that TensorRT and ONNX Runtime handle unevenly; outside it is a 1 ms
numba loop over a precomputed plan. The pillar scatter (one pillar per cell, no sums) stays inside the
BEV graph as a plain ScatterND. Shapes are static; a batch dimension of 1 is part of every spec (training
runs the same modules with a larger batch).

BevNet takes a ``presence`` vector (LiDAR, cameras, radar): a missing modality's features are zeroed and
the flags are fed to the fuser as constant channels, so one network trained with random modality dropout
serves every degraded mode (the single-modality baselines are the same network trained with a fixed set).
With ``NetworkConfig.lidarless_path`` the BEV network also has a second fuser, backbone and head over the
cameras and radar alone (with its own radar encoder), and the LiDAR presence flag picks which path's output
comes out: the features of a frame without LiDAR differ so much from those with it that one backbone serves
one of the two modes well and the other poorly (MetaBEV's modality experts make the same point). For one
frame (the runtime) only the picked path runs: ``torch.cond``, exported as an ONNX ``If`` (which TensorRT
supports); a training batch runs both and mixes them by the flag (the same output for flags 0 and 1).

Regression channels at each head cell (CenterPoint): 0-1 centre offset within the cell [cells], 2 z [m],
3-5 log(length, width, height) [log m], 6-7 sin, cos of yaw, 8-9 vx, vy [m/s] over ground, ego frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from drivers.messages import CLASS_NAMES
from perception.bev import BevGrid
from perception.models.spec import NetworkSpec, TensorSpec

LIDAR_POINT_COLUMNS = 5   # x y z intensity lag
RADAR_POINT_COLUMNS = 7   # x y z vx vy rcs lag
PILLAR_EXTRA = 5          # pillarize() appends 3 offsets from the pillar mean and 2 from the cell centre
N_REGRESSION = 10
PRESENCE = ("lidar", "camera", "radar")


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the networks and of their inputs (carried inside every checkpoint).

    Args:
        grid: the BEV grid of the pillar scatter and camera pooling (default ±51.2 m at 0.8 m: 128x128).
        n_cameras: cameras in the camera batch, in ``camera_ids`` order of the frontend.
        image_height, image_width: network image size [px] (the 640x360 camera image at half resolution,
            4 sky rows cropped off the top so the size divides by the feature stride).
        image_scale, crop_top: how the network image is cut from the camera image (x' = scale*x,
            y' = scale*y - crop_top).
        feature_stride: camera feature map stride [px].
        depth_min, depth_step, depth_bins: depth bin centres depth_min + k*depth_step [m], along the optical axis.
        camera_channels, lidar_channels, radar_channels, bev_channels: feature widths.
        lidar_max_pillars, lidar_max_points, radar_max_pillars, radar_max_points: pillarization limits.
        head_stride: head cells per BEV cell edge (2: the head grid has 1.6 m cells).
        class_names: detected classes (heatmap channel order).
        lidarless_path: a second fuser, backbone and head over cameras and radar only, used for the frames
            without LiDAR (see the module notes).
    """

    grid: BevGrid = field(default_factory=BevGrid)
    n_cameras: int = 2
    image_height: int = 176
    image_width: int = 320
    image_scale: float = 0.5
    crop_top: int = 4
    feature_stride: int = 8
    depth_min: float = 2.0
    depth_step: float = 1.2
    depth_bins: int = 40
    camera_channels: int = 32
    lidar_channels: int = 32
    radar_channels: int = 16
    bev_channels: int = 48
    lidar_max_pillars: int = 12000
    lidar_max_points: int = 16
    radar_max_pillars: int = 512
    radar_max_points: int = 8
    head_stride: int = 2
    class_names: tuple[str, ...] = CLASS_NAMES
    lidarless_path: bool = False

    @property
    def feature_height(self) -> int:
        return self.image_height // self.feature_stride

    @property
    def feature_width(self) -> int:
        return self.image_width // self.feature_stride

    @property
    def head_grid(self) -> BevGrid:
        return self.grid.downsampled(self.head_stride)

    def depth_centers(self) -> np.ndarray:
        """(D,) depth bin centres [m]."""
        return self.depth_min + self.depth_step * np.arange(self.depth_bins)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @staticmethod
    def from_dict(d: dict) -> "NetworkConfig":
        d = dict(d)
        d["grid"] = BevGrid(**d["grid"])
        d["class_names"] = tuple(d["class_names"])
        d.setdefault("lidarless_path", False)   # checkpoints made before the LiDAR-free path existed
        return NetworkConfig(**d)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CameraNet(nn.Module):
    """Image backbone -> per-pixel depth distribution and context features (LSS "lift").

    Input ``images`` (Ncam, 3, H, W) float32 RGB in [0, 1]; outputs ``depth`` (Ncam, D, h, w) softmax over
    depth bins and ``features`` (Ncam, C, h, w), h = H / stride, w = W / stride.
    """

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.camera_channels
        self.backbone = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 16),
            _conv(16, 32, 2), _conv(32, 32),
            _conv(32, 64, 2), _conv(64, 64), _conv(64, 64),
        )
        self.depth_head = nn.Conv2d(64, cfg.depth_bins, 1)
        self.feature_head = nn.Conv2d(64, c, 1)
        self.register_buffer("mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.spec = NetworkSpec(
            "camera",
            (TensorSpec("images", (cfg.n_cameras, 3, cfg.image_height, cfg.image_width), low=0.0, high=1.0),),
            (TensorSpec("depth", (cfg.n_cameras, cfg.depth_bins, cfg.feature_height, cfg.feature_width)),
             TensorSpec("features", (cfg.n_cameras, c, cfg.feature_height, cfg.feature_width))),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone((images - self.mean) / self.std)
        return torch.softmax(self.depth_head(x), dim=1), self.feature_head(x)


class PillarEncoder(nn.Module):
    """PointPillars' pillar feature net: per-point linear + BN + ReLU, max over the pillar's points,
    scattered into a (C, ny, nx) canvas by the pillar's cell index (index n_cells = padding, dropped)."""

    def __init__(self, in_features: int, channels: int, grid: BevGrid):
        super().__init__()
        self.linear = nn.Linear(in_features, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)
        self.channels = channels
        self.grid = grid

    def forward(self, pillars: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """pillars (B, P, M, F), index (B, P) int64 -> (B, C, ny, nx)."""
        b, p, m, f = pillars.shape
        x = self.linear(pillars.reshape(b * p * m, f))
        x = torch.relu(self.norm(x)).reshape(b, p, m, self.channels)
        x = x.max(dim=2).values                                     # (B, P, C)
        n = self.grid.n_cells + 1
        flat = (index + torch.arange(b, device=index.device).unsqueeze(1) * n).reshape(-1)
        canvas = torch.zeros(b * n, self.channels, dtype=x.dtype, device=x.device)
        canvas = canvas.index_put((flat,), x.reshape(b * p, self.channels))
        canvas = canvas.reshape(b, n, self.channels)[:, :-1]
        return canvas.reshape(b, self.grid.ny, self.grid.nx, self.channels).permute(0, 3, 1, 2)


class BevBackbone(nn.Module):
    """ConvFuser over stacked BEV features (at the head resolution), a two-scale BEV backbone and the
    CenterPoint head (heatmap per class after sigmoid, regression)."""

    def __init__(self, cin: int, cfg: NetworkConfig, **encoders: nn.Module):
        super().__init__()
        for name, m in encoders.items():   # made and registered before the layers: the order of the seeded init
            setattr(self, name, m)
        c = cfg.bev_channels
        self.fuser = _conv(cin, c, cfg.head_stride)
        self.block1 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.block2 = nn.Sequential(_conv(c, 2 * c, 2), _conv(2 * c, 2 * c), _conv(2 * c, 2 * c))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.shared = _conv(2 * c, c)
        self.heatmap = nn.Conv2d(c, len(cfg.class_names), 1)
        self.regression = nn.Conv2d(c, N_REGRESSION, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.block1(self.fuser(x))
        x2 = self.up2(self.block2(x1))
        x = self.shared(torch.cat([x1, x2], dim=1))
        return torch.sigmoid(self.heatmap(x)), self.regression(x)


class LidarlessPath(BevBackbone):
    """The BEV path of the frames without LiDAR: its own radar encoder, then a fuser over [camera, radar,
    camera and radar presence flags], backbone and head."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__(cfg.camera_channels + cfg.radar_channels + 2, cfg,
                         radar=PillarEncoder(RADAR_POINT_COLUMNS + PILLAR_EXTRA, cfg.radar_channels, cfg.grid))


class BevNet(BevBackbone):
    """LiDAR and radar pillar encoders, then the ConvFuser over [LiDAR, camera, radar, presence] BEV
    features, backbone and head; with ``cfg.lidarless_path`` also the :class:`LidarlessPath`, whose output
    replaces the main one where the LiDAR presence flag is 0."""

    def __init__(self, cfg: NetworkConfig):
        g = cfg.grid
        super().__init__(cfg.lidar_channels + cfg.camera_channels + cfg.radar_channels + len(PRESENCE), cfg,
                         lidar=PillarEncoder(LIDAR_POINT_COLUMNS + PILLAR_EXTRA, cfg.lidar_channels, g),
                         radar=PillarEncoder(RADAR_POINT_COLUMNS + PILLAR_EXTRA, cfg.radar_channels, g))
        self.cfg = cfg
        self.lidarless = LidarlessPath(cfg) if cfg.lidarless_path else None
        k = len(cfg.class_names)
        hg = cfg.head_grid
        self.spec = NetworkSpec(
            "bev",
            (TensorSpec("lidar_pillars", (1, cfg.lidar_max_pillars, cfg.lidar_max_points, LIDAR_POINT_COLUMNS + PILLAR_EXTRA)),
             TensorSpec("lidar_index", (1, cfg.lidar_max_pillars), "int64", 0, g.n_cells + 1),
             TensorSpec("radar_pillars", (1, cfg.radar_max_pillars, cfg.radar_max_points, RADAR_POINT_COLUMNS + PILLAR_EXTRA)),
             TensorSpec("radar_index", (1, cfg.radar_max_pillars), "int64", 0, g.n_cells + 1),
             TensorSpec("camera_bev", (1, cfg.camera_channels, g.ny, g.nx)),
             TensorSpec("presence", (1, len(PRESENCE)), low=0.0, high=1.0)),
            (TensorSpec("heatmap", (1, k, hg.ny, hg.nx)),
             TensorSpec("regression", (1, N_REGRESSION, hg.ny, hg.nx))),
        )

    def forward(self, lidar_pillars, lidar_index, radar_pillars, radar_index, camera_bev, presence):
        args = (lidar_pillars, lidar_index, radar_pillars, radar_index, camera_bev, presence)
        if self.lidarless is None:
            return self._main(*args)
        if presence.shape[0] == 1 and not self.training:
            # One frame (the runtime): only the path its LiDAR flag picks runs; in the exported graph an If.
            if torch.compiler.is_exporting():
                return torch.cond(presence[0, 0] > 0.5, self._main, self._lidarless, args)
            return self._main(*args) if bool(presence[0, 0] > 0.5) else self._lidarless(*args)
        lidar_on = presence[:, 0].view(-1, 1, 1, 1)
        heat, reg = self._main(*args)
        heat_l, reg_l = self._lidarless(*args)
        return lidar_on * heat + (1 - lidar_on) * heat_l, lidar_on * reg + (1 - lidar_on) * reg_l

    def _main(self, lidar_pillars, lidar_index, radar_pillars, radar_index, camera_bev, presence):
        lidar = self.lidar(lidar_pillars, lidar_index) * presence[:, 0].view(-1, 1, 1, 1)
        radar = self.radar(radar_pillars, radar_index) * presence[:, 2].view(-1, 1, 1, 1)
        camera = camera_bev * presence[:, 1].view(-1, 1, 1, 1)
        flags = presence.view(-1, len(PRESENCE), 1, 1).expand(-1, -1, lidar.shape[2], lidar.shape[3])
        return self.head(torch.cat([lidar, camera, radar, flags], dim=1))

    def _lidarless(self, lidar_pillars, lidar_index, radar_pillars, radar_index, camera_bev, presence):
        radar = self.lidarless.radar(radar_pillars, radar_index) * presence[:, 2].view(-1, 1, 1, 1)
        camera = camera_bev * presence[:, 1].view(-1, 1, 1, 1)
        flags = presence[:, 1:].view(-1, 2, 1, 1).expand(-1, -1, radar.shape[2], radar.shape[3])
        return self.lidarless.head(torch.cat([camera, radar, flags], dim=1))


def camera_bev_torch(depth: torch.Tensor, features: torch.Tensor, cell_index: torch.Tensor, n_cells: int,
                     ny: int, nx: int) -> torch.Tensor:
    """Differentiable lift-splat sum pooling (training; the runtime uses the numba kernel).

    Args:
        depth: (B*Ncam, D, h, w); features: (B*Ncam, C, h, w); cell_index: (Ncam, D, h, w) int64, -1 outside.
    Returns:
        (B, C, ny, nx).
    """
    bn, d, h, w = depth.shape
    n_cam = cell_index.shape[0]
    b = bn // n_cam
    c = features.shape[1]
    # (B, Ncam, D, h, w, C) frustum features, flattened per batch item.
    frustum = (depth.unsqueeze(2) * features.unsqueeze(1)).reshape(b, n_cam, d, c, h, w)
    frustum = frustum.permute(0, 1, 2, 4, 5, 3).reshape(b, -1, c)
    idx = cell_index.reshape(-1)
    valid = idx >= 0
    idx_v = idx[valid]
    out = torch.zeros(b, n_cells, c, dtype=features.dtype, device=features.device)
    out.index_add_(1, idx_v, frustum[:, valid])
    return out.reshape(b, ny, nx, c).permute(0, 3, 1, 2)


def frustum_cell_index(cfg: NetworkConfig, cameras, ego_from_cameras) -> np.ndarray:
    """Static lift geometry: the BEV cell of every (camera, depth bin, feature pixel).

    Args:
        cfg: network sizes.
        cameras: ``CameraModel`` per camera at full camera resolution.
        ego_from_cameras: ``Transform`` ego_from_<camera> per camera.
    Returns:
        (Ncam, D, h, w) int64 linear cell index into ``cfg.grid``, -1 where the point leaves the grid.
    """
    g = cfg.grid
    h, w = cfg.feature_height, cfg.feature_width
    s = cfg.feature_stride
    iy, ix = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # feature cell centre -> network pixel -> camera pixel (pixel centres at integer coordinates)
    u_net = ix * s + (s - 1) / 2.0
    v_net = iy * s + (s - 1) / 2.0
    u = (u_net + 0.5) / cfg.image_scale - 0.5
    v = (v_net + cfg.crop_top + 0.5) / cfg.image_scale - 0.5
    depths = cfg.depth_centers()
    out = np.full((len(cameras), cfg.depth_bins, h, w), -1, np.int64)
    for k, (cam, T) in enumerate(zip(cameras, ego_from_cameras)):
        rays = cam.unproject(np.stack([u.ravel(), v.ravel()], axis=1))          # (hw, 3), z = 1
        pts = rays[None, :, :] * depths[:, None, None]                            # (D, hw, 3)
        ego = T.apply(pts.reshape(-1, 3)).reshape(cfg.depth_bins, h * w, 3)
        cx = np.floor((ego[..., 0] - g.x_min) / g.cell).astype(np.int64)
        cy = np.floor((ego[..., 1] - g.y_min) / g.cell).astype(np.int64)
        ok = (cx >= 0) & (cx < g.nx) & (cy >= 0) & (cy < g.ny) & (ego[..., 2] >= g.z_min) & (ego[..., 2] < g.z_max)
        out[k] = np.where(ok, cy * g.nx + cx, -1).reshape(cfg.depth_bins, h, w)
    return out


def default_network_modules() -> list[nn.Module]:
    """The default-sized networks with the shipped model's LiDAR-free path (random weights, eval mode), for
    export and parity tests."""
    cfg = NetworkConfig(lidarless_path=True)
    return [CameraNet(cfg).eval(), BevNet(cfg).eval()]


def load_checkpoint(path) -> list[nn.Module]:
    """The networks of a ``perception train`` checkpoint (eval mode), loaded with ``weights_only=True``."""
    from perception.train import detector_from_checkpoint

    det, _, _ = detector_from_checkpoint(path)
    return [det.camera.eval(), det.bev.eval()]
