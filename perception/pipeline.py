"""Where data is fused: the straight-line :class:`Pipeline` and :func:`build_pipeline`.

``Pipeline.__call__(frame) -> Detections3D`` runs one stage per line, each timed by a
:class:`~perception.timing.StageTimer` (a no-op when timing is off):

    align (frontend) -> pillarize -> camera_net -> bev_pool -> bev_net -> decode -> siren

Static geometry (the camera frustum -> BEV cell plan) is computed once from the rig at construction; every
per-frame buffer (pillars, pooled camera features) is allocated once and reused.
``build_pipeline`` is the one function that turns a config into objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from calibration.rig import Rig
from calibration.yamlconf import load_yaml_file
from perception.decode import DecodeConfig, Decoder, Detections3D
from perception.frontend import FrameInputs, Frontend, FrontendConfig
from perception.models.networks import LIDAR_POINT_COLUMNS, RADAR_POINT_COLUMNS, NetworkConfig
from perception.sync import SyncedFrame
from perception.timing import StageTimer

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a replay or live run needs besides the rig (``configs/pipeline_*.yaml``, flat).

    Args:
        checkpoint: detector checkpoint (``perception train`` output); relative paths are tried against the
            working directory, then the project folder.
        siren_checkpoint: siren detector checkpoint, or null for no audio.
        backend: ``torch`` | ``onnxruntime`` | ``tensorrt``.
        device: ``cpu`` | ``cuda``.
        precision: ``fp32`` | ``fp16`` (GPU backends).
        threads: CPU threads for the networks.
        model_cache: where ONNX files / TensorRT engines made from the checkpoint are kept.
        sync_config: synchroniser config.
        lidar_id, camera_ids, radar_ids, imu_id, microphone_id: sensors used (microphone_id null: no audio).
        lidar_max_pillars: LiDAR pillars the networks take per frame (null: the checkpoint's training
            value). A buffer size, not a weight: the fewer, the cheaper the pillar encoder; pillars beyond it
            are dropped, and such frames are counted and logged (``Pipeline.pillar_overflows``).
        bev_range_m: half-width of the square BEV grid [m] (null: the checkpoint's, +-51.2 m for the shipped
            model). The same weights run on a larger grid (the networks see no absolute position): 60.8
            covers a 60 m circle, for a bigger BEV network cost (``perception bench pipeline``). A multiple
            of 1.6 m for 0.8 m cells.
        lidar_sweeps: deskewed sweeps accumulated.
        score_threshold, top_k, max_detections: decoding.
        siren_threshold: siren probability above which a siren is reported.
        siren_level_at_1m_db: the siren's level at 1 m on the microphones' scale [dB re full scale, mean
            square]: its SPL at 1 m minus the microphones' full-scale SPL. The siren stage gives the siren
            only to a vehicle whose range agrees with the level heard (within siren_level_tolerance_db; see
            :mod:`perception.audio_stage`); null switches that check off.
        tracking: velocity and heading of the detections from frame-to-frame tracks
            (:mod:`perception.tracking`); false keeps the detection head's.
        deadline_ms: per-frame deadline from the frame's stamp (executor).
    """

    checkpoint: str = "recordings/models/fusion.pt"
    siren_checkpoint: Optional[str] = "recordings/models/siren.pt"
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16"] = "fp32"
    threads: int = 2
    model_cache: str = ".cache/models"
    sync_config: str = "configs/sync_sim.yaml"
    lidar_id: str = "lidar_top"
    camera_ids: tuple[str, ...] = FrontendConfig.camera_ids
    radar_ids: tuple[str, ...] = FrontendConfig.radar_ids
    imu_id: str = "imu"
    microphone_id: Optional[str] = "mic_array"
    lidar_max_pillars: Optional[int] = None
    bev_range_m: Optional[float] = None
    lidar_sweeps: int = 3
    score_threshold: float = 0.05
    top_k: int = 300
    max_detections: int = 200
    siren_threshold: float = 0.5
    siren_level_at_1m_db: Optional[float] = -12.0
    siren_level_tolerance_db: float = 6.0
    tracking: bool = True
    deadline_ms: float = 100.0

    @staticmethod
    def load(path: str | Path) -> "PipelineConfig":
        return load_yaml_file(PipelineConfig, path)


def resolve_path(p: str | Path) -> Path:
    """A config path: as given when it exists, else relative to the project folder."""
    p = Path(p)
    if p.exists() or p.is_absolute():
        return p
    return ROOT / p


class Pipeline:
    """SyncedFrame -> Detections3D. Construct with :func:`build_pipeline`.

    Args:
        frontend: frame preparation (stateful: frames in stamp order).
        net_cfg: network sizes (buffers are sized from it).
        camera_net, bev_net: backends (named numpy tensors in and out).
        cell_index: (Ncam, D, h, w) int64 static lift geometry.
        decoder: heatmap -> boxes.
        siren: optional audio stage ``(frame, dets) -> dets``.
        timer: stage timer (disabled: no cost).
        tracker: optional :class:`perception.tracking.Tracker` (velocity, heading and track identities),
            run before the siren stage, which follows each vehicle by its track identity.
    """

    def __init__(self, frontend: Frontend, net_cfg: NetworkConfig, camera_net, bev_net, cell_index: np.ndarray,
                 decoder: Decoder, siren=None, timer: StageTimer | None = None, tracker=None):
        from perception.kernels import BevPoolPlan, Pillarizer

        self.frontend = frontend
        self.cfg = net_cfg
        self.camera_net = camera_net
        self.bev_net = bev_net
        self.cell_index = cell_index
        self.decoder = decoder
        self.siren = siren
        self.timer = timer or StageTimer(False)
        self.tracker = tracker
        self._prev_stamp_ns: int | None = None
        c = net_cfg
        g = c.grid
        self._lidar_pillarizer = Pillarizer(g, LIDAR_POINT_COLUMNS, c.lidar_max_pillars, c.lidar_max_points)
        self._radar_pillarizer = Pillarizer(g, RADAR_POINT_COLUMNS, c.radar_max_pillars, c.radar_max_points)
        # The pillarizers own their output buffers; the feeds are (1, ...) views of them (no copy per frame).
        self._feeds = {
            "lidar_pillars": self._lidar_pillarizer.features[None],
            "lidar_index": self._lidar_pillarizer.index[None],
            "radar_pillars": self._radar_pillarizer.features[None],
            "radar_index": self._radar_pillarizer.index[None],
            "camera_bev": np.zeros((1, c.camera_channels, g.ny, g.nx), np.float32),
            "presence": np.zeros((1, 3), np.float32),
        }
        self._images = np.zeros((c.n_cameras, 3, c.image_height, c.image_width), np.float32)
        self._depth = np.zeros((c.n_cameras, c.depth_bins, c.feature_height, c.feature_width), np.float32)
        self._pool_plan = BevPoolPlan(cell_index, g.n_cells)  # frustum sorted by cell once (static geometry)
        self.last_inputs: FrameInputs | None = None
        self.pillar_overflows = 0  # frames whose LiDAR filled every pillar (more may have been dropped)

    def __call__(self, frame: SyncedFrame) -> Detections3D:
        lap = self.timer.start(frame.stamp_ns)
        x = self.frontend(frame)
        lap("align")
        f, c = self._feeds, self.cfg
        if self._lidar_pillarizer(x.lidar_points) >= c.lidar_max_pillars:
            self._pillars_full(frame.stamp_ns)
        self._radar_pillarizer(x.radar_points)
        f["presence"][0] = x.presence()
        lap("pillarize")
        np.multiply(x.images.transpose(0, 3, 1, 2), np.float32(1 / 255.0), out=self._images)
        cam = self.camera_net({"images": self._images})
        lap("camera_net")
        np.multiply(cam["depth"], x.camera_present.astype(np.float32)[:, None, None, None], out=self._depth)
        self._pool_plan(self._depth, cam["features"], f["camera_bev"][0].reshape(self.cfg.camera_channels, -1))
        lap("bev_pool")
        out = self.bev_net(f)
        lap("bev_net")
        dets = self.decoder(out["heatmap"][0], out["regression"][0], frame.stamp_ns)
        lap("decode")
        if self.tracker is not None:
            dets = self.tracker(dets, self._motion_since_previous(frame.stamp_ns), x.radar_points)
            lap("track")
        if self.siren is not None:
            dets = self.siren(frame, dets)
            lap("siren")
        self.last_inputs = x
        return dets

    def _motion_since_previous(self, stamp_ns: int):
        """Ground-plane ego motion from the previous frame's ego frame into this one's, or None (first frame,
        or the pose history does not cover both stamps)."""
        from perception.tracking import planar_motion

        prev, self._prev_stamp_ns = self._prev_stamp_ns, stamp_ns
        if prev is None:
            return None
        try:
            return planar_motion(*self.frontend.motion.relative(stamp_ns, prev))
        except ValueError:
            return None

    def warm_up(self) -> None:
        """Run every stateless stage once on empty inputs (kernel dispatch, network first-run set-up), so the
        first real frame runs at steady-state speed instead of missing its deadline. Leaves no state behind:
        the frontend, the tracks and the siren stage are not touched, and the next frame overwrites every buffer."""
        from perception.align import warm_up_kernels

        c = self.cfg
        f = self._feeds
        warm_up_kernels()
        self._lidar_pillarizer(np.zeros((1, LIDAR_POINT_COLUMNS), np.float32))
        self._radar_pillarizer(np.zeros((1, RADAR_POINT_COLUMNS), np.float32))
        f["presence"][0] = 0.0
        self._images[:] = 0.0
        cam = self.camera_net({"images": self._images})
        np.multiply(cam["depth"], 0.0, out=self._depth)
        self._pool_plan(self._depth, cam["features"], f["camera_bev"][0].reshape(c.camera_channels, -1))
        out = self.bev_net(f)
        self.decoder(out["heatmap"][0], out["regression"][0], 0)
        if self.tracker is not None:
            self.tracker.warm_up()

    def _pillars_full(self, stamp_ns: int) -> None:
        self.pillar_overflows += 1
        if self.pillar_overflows == 1:
            log.warning("frame %d filled all %d LiDAR pillars; pillars beyond are dropped (raise lidar_max_pillars "
                        "in the pipeline config); further such frames are counted", stamp_ns,
                        self.cfg.lidar_max_pillars)

    @property
    def last_missing(self) -> frozenset[str]:
        """Sensors missing from the last frame, those dropped on purpose included."""
        return self.last_inputs.missing if self.last_inputs is not None else frozenset()


def checkpoint_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def open_networks(config: PipelineConfig, rig: Rig | None):
    """(camera backend, bev backend, NetworkConfig, cell_index, model hashes) for the configured backend.

    ONNX files for onnxruntime/tensorrt are exported from the checkpoint once and cached under
    ``model_cache/<checkpoint sha256[:16]>-p<LiDAR pillars>-r<grid range>-n<network code sha256[:8]>/``: the
    last part is a hash of ``perception/models/networks.py``, so a change to the graphs re-exports them.
    """
    from perception.backends import open_backend
    from perception.train import detector_from_checkpoint

    ckpt = resolve_path(config.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} not found (train one with: perception train --config "
                                f"configs/train_fusion.yaml --out DIR)")
    det, net_cfg, _ = detector_from_checkpoint(ckpt, rig, config.lidar_max_pillars, config.bev_range_m)
    cell_index = det.cell_index.numpy()  # the lift geometry the detector was built with (rig above)
    digest = checkpoint_hash(ckpt)
    hashes = {"checkpoint": digest}
    if config.backend == "torch":
        cam = open_backend("torch", det.camera.spec, module=det.camera, device=config.device, threads=config.threads)
        bev = open_backend("torch", det.bev.spec, module=det.bev, device=config.device, threads=config.threads)
        return cam, bev, net_cfg, cell_index, hashes
    from perception.export import export_onnx

    import perception.models.networks as networks

    code = hashlib.sha256(Path(networks.__file__).read_bytes()).hexdigest()
    folder = (resolve_cache(config.model_cache)
              / f"{digest[:16]}-p{net_cfg.lidar_max_pillars}-r{net_cfg.grid.x_max:g}-n{code[:8]}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for module in (det.camera, det.bev):
        path = folder / f"{module.spec.name}.onnx"
        if not path.exists():
            export_onnx(module, module.spec, path)
        paths[module.spec.name] = path
        hashes[module.spec.name + ".onnx"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if config.backend == "onnxruntime":
        cam = open_backend("onnxruntime", det.camera.spec, onnx_path=paths["camera"], device=config.device,
                           threads=config.threads)
        bev = open_backend("onnxruntime", det.bev.spec, onnx_path=paths["bev"], device=config.device,
                           threads=config.threads)
        return cam, bev, net_cfg, cell_index, hashes
    from perception.export import build_engine

    engines = {n: build_engine(p, config.precision, folder) for n, p in paths.items()}
    cam = open_backend("tensorrt", det.camera.spec, engine_path=engines["camera"], device="cuda")
    bev = open_backend("tensorrt", det.bev.spec, engine_path=engines["bev"], device="cuda")
    return cam, bev, net_cfg, cell_index, hashes


def image_reduction_for(config: PipelineConfig, rig: Rig) -> int:
    """The ``image_reduction`` for RecordingReader.messages that hands this pipeline's cameras their images
    at network scale (2 for the half-size default), or 1 where the scale is not 1/2, 1/4 or 1/8 or a camera's
    size does not divide by it (the frontend then resizes full images, as for live cameras)."""
    from perception.models.networks import NetworkConfig
    from perception.train import load_checkpoint_file

    ckpt = resolve_path(config.checkpoint)
    if not ckpt.exists():
        return 1
    scale = NetworkConfig.from_dict(json.loads(load_checkpoint_file(ckpt)["network_config"])).image_scale
    r = int(round(1.0 / scale)) if scale > 0 else 0
    if r not in (2, 4, 8) or abs(scale * r - 1.0) > 1e-9:
        return 1
    for cid in config.camera_ids:
        cam = rig[cid].camera if cid in rig else None
        if cam is None or cam.width % r or cam.height % r:
            return 1
    return r


def resolve_cache(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def build_pipeline(config: PipelineConfig, rig: Rig, drop: frozenset[str] = frozenset(),
                   timing: bool = True) -> tuple[Pipeline, dict]:
    """The one place config becomes objects. Returns the pipeline and the model hashes (for run.json).

    Also limits numpy's (and OpenCV's) BLAS to one thread, process-wide: the pipeline's matrix products are
    small, and an idle OpenBLAS worker busy-waits after each call, taking a core from the networks (measured
    on the 2-core target, realtime replay of the sample drive: end-to-end p95 80-85 ms with the default
    BLAS threads, 67-74 ms with one).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    cam, bev, net_cfg, cell_index, hashes = open_networks(config, rig)
    if len(config.camera_ids) != net_cfg.n_cameras:
        raise ValueError(f"pipeline config lists {len(config.camera_ids)} cameras, the network takes {net_cfg.n_cameras}")
    fe_cfg = FrontendConfig(config.lidar_id, tuple(config.camera_ids), tuple(config.radar_ids), config.imu_id,
                            config.lidar_sweeps, 0.3, net_cfg.image_height, net_cfg.image_width,
                            net_cfg.image_scale, net_cfg.crop_top)
    frontend = Frontend(rig, fe_cfg, drop)
    decoder = Decoder(net_cfg.head_grid, net_cfg.class_names,
                      DecodeConfig(config.score_threshold, config.top_k, config.max_detections))
    siren = None
    if config.siren_checkpoint and config.microphone_id and config.microphone_id in rig \
            and config.microphone_id not in drop:
        siren = build_siren_stage(config, rig)
        hashes["siren"] = checkpoint_hash(resolve_path(config.siren_checkpoint))
    tracker = None
    if config.tracking:
        from perception.tracking import Tracker

        tracker = Tracker(net_cfg.class_names)
    pipeline = Pipeline(frontend, net_cfg, cam, bev, cell_index, decoder, siren, StageTimer(timing), tracker)
    pipeline.warm_up()
    return pipeline, hashes


def build_siren_stage(config: PipelineConfig, rig: Rig):
    """The late audio fusion stage (siren probability + bearing -> siren attribute / bearing-only event)."""
    from perception.audio_stage import SirenStage

    return SirenStage.from_checkpoint(resolve_path(config.siren_checkpoint), rig, config.microphone_id,
                                      config.siren_threshold, level_at_1m_db=config.siren_level_at_1m_db,
                                      level_tolerance_db=config.siren_level_tolerance_db)
