"""From a synchronised frame to the detector's inputs (the "align" half of the pipeline).

:class:`Frontend` keeps the state that spans frames — ego motion from IMU and wheel speed, the last LiDAR
sweeps, the last radar scans — and turns each :class:`~perception.sync.SyncedFrame` into
:class:`FrameInputs`: accumulated deskewed LiDAR points, radar returns with over-ground velocity, network
images, and which modalities are present. Everything is in the ego frame at the frame's stamp.

Camera images are not motion-compensated: the lift geometry (frustum -> BEV cell) is static, computed once
from the rig. At 15 m/s a camera exposed 30 ms before the LiDAR stamp sees the world 0.45 m shifted; the
camera branch's 0.8 m cells absorb that (BEVFusion makes the same choice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from calibration.rig import Rig
from drivers.messages import CameraImage, ImageDecodeError, ImuSample, LidarSweep, RadarScan
from perception.align import RadarAccumulator, SweepAccumulator, deskew_sweep, raw_sweep_in_ego
from perception.egomotion import EgoMotion
from perception.sync import SyncedFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendConfig:
    """Which sensors feed the detector and how their data is prepared.

    Args:
        lidar_id: the LiDAR (the sync reference).
        camera_ids: cameras in network order (must match the network's n_cameras).
        radar_ids: radars whose returns are pooled.
        imu_id: IMU for ego motion (wheel speed is used when the frame carries it).
        lidar_sweeps: deskewed sweeps accumulated (the current one included).
        radar_max_age_s: radar scans older than this are not used.
        image_height, image_width, image_scale, crop_top: the network image (see NetworkConfig).
    """

    lidar_id: str = "lidar_top"
    camera_ids: tuple[str, ...] = ("cam_front", "cam_rear")
    radar_ids: tuple[str, ...] = ("radar_front", "radar_front_left", "radar_front_right", "radar_back_left",
                                  "radar_back_right")
    imu_id: str = "imu"
    lidar_sweeps: int = 3
    radar_max_age_s: float = 0.3
    image_height: int = 176
    image_width: int = 320
    image_scale: float = 0.5
    crop_top: int = 4


@dataclass(frozen=True, eq=False)
class FrameInputs:
    """What the networks see of one frame, ego frame at ``stamp_ns``.

    Args:
        stamp_ns: the frame's stamp [ns]; seq: the frame counter.
        lidar_points: (N, 5) float32 x y z [m], intensity [0, 1], lag [s] (sweep age).
        radar_points: (R, 7) float32 x y z [m], vx vy [m/s] (over-ground radial velocity along the ray,
            as a vector), rcs [dBsm], lag [s].
        images: (Ncam, H, W, 3) uint8 RGB network images; a missing camera is all zeros.
        camera_present: (Ncam,) bool.
        lidar_present, radar_present: the modality contributed data to this frame.
        missing: the frame's missing sensors (from the synchroniser).
    """

    stamp_ns: int
    seq: int
    lidar_points: np.ndarray
    radar_points: np.ndarray
    images: np.ndarray
    camera_present: np.ndarray
    lidar_present: bool
    radar_present: bool
    missing: frozenset[str]

    def presence(self) -> np.ndarray:
        """(3,) float32 flags in networks.PRESENCE order (LiDAR, cameras, radar)."""
        return np.array([self.lidar_present, bool(self.camera_present.any()), self.radar_present], np.float32)


class Frontend:
    """Stateful frame preparation; feed frames in stamp order.

    Args:
        rig: sensor mounts and intrinsics.
        config: which sensors and how.
        drop: sensor ids treated as absent (degraded-mode runs and modality-dropout evaluation).
    """

    def __init__(self, rig: Rig, config: FrontendConfig, drop: frozenset[str] = frozenset()):
        for sid in (config.lidar_id, config.imu_id, *config.camera_ids, *config.radar_ids):
            if sid not in rig:
                raise ValueError(f"Frontend: sensor {sid!r} is not in rig {rig.name!r} (has {rig.ids()})")
        self.rig = rig
        self.config = config
        self.drop = frozenset(drop)
        self.motion = EgoMotion(rig.ego_from(config.imu_id), history_s=2.0)
        self.sweeps = SweepAccumulator(config.lidar_sweeps, max_age_s=0.1 * config.lidar_sweeps + 0.05)
        self.radar = RadarAccumulator(config.radar_max_age_s)
        self._ego_from = {sid: rig.ego_from(sid) for sid in (config.lidar_id, *config.radar_ids)}
        # Each camera's image at network scale; an image that arrives at that size already (decoded
        # reduced, RecordingReader.messages(image_reduction=...)) is not resized again.
        self._scaled_size = {cid: (int(round(rig[cid].camera.height * config.image_scale)),
                                   int(round(rig[cid].camera.width * config.image_scale)))
                             for cid in config.camera_ids if rig[cid].camera is not None}
        # Frames whose ego motion did not cover the data yet (start of a drive): used without motion
        # compensation, counted.
        self.uncompensated = 0
        # Camera images whose bytes could not be decoded: the camera counts as missing in that frame.
        self.undecodable_images = 0

    def _image(self, msg: CameraImage) -> np.ndarray:
        c = self.config
        if msg.image.shape[:2] == self._scaled_size.get(msg.sensor_id):
            small = msg.image
        else:
            h0 = int(round(msg.image.shape[0] * c.image_scale))
            w0 = int(round(msg.image.shape[1] * c.image_scale))
            small = cv2.resize(msg.image, (w0, h0), interpolation=cv2.INTER_AREA)
        out = small[c.crop_top:c.crop_top + c.image_height, :c.image_width]
        if out.shape != (c.image_height, c.image_width, 3):
            raise ValueError(f"camera {msg.sensor_id}: image {msg.image.shape} does not give a "
                             f"{c.image_height}x{c.image_width} network image")
        return out

    def __call__(self, frame: SyncedFrame) -> FrameInputs:
        """Prepare one frame (frames must come in stamp order)."""
        c = self.config
        for m in frame.speed:
            self.motion.add_speed(m)
        for m in frame.imu:
            if m.sensor_id == c.imu_id:
                self.motion.add_imu(m)
        stamp = frame.stamp_ns

        sweep = frame.messages.get(c.lidar_id)
        lidar_ok = isinstance(sweep, LidarSweep) and c.lidar_id not in self.drop
        if lidar_ok:
            try:
                pts = deskew_sweep(sweep, self._ego_from[c.lidar_id], self.motion)
            except ValueError:
                pts = raw_sweep_in_ego(sweep, self._ego_from[c.lidar_id])
                self.uncompensated += 1
            self.sweeps.add(sweep.stamp_ns, pts)
            try:
                lidar = self.sweeps.accumulate(stamp, self.motion)
            except ValueError:
                lidar = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], axis=1)
                self.uncompensated += 1
        else:
            lidar = np.zeros((0, 5), np.float32)

        radar_ok = False
        for rid in c.radar_ids:
            scan = frame.messages.get(rid)
            if isinstance(scan, RadarScan) and rid not in self.drop:
                self.radar.add(scan, self._ego_from[rid])
                radar_ok = True
        radar = np.zeros((0, 7), np.float32)
        if radar_ok:
            try:
                radar = _radar_columns(self.radar.accumulate(stamp, self.motion))
            except ValueError:
                radar_ok = False
                self.uncompensated += 1

        images = np.zeros((len(c.camera_ids), c.image_height, c.image_width, 3), np.uint8)
        present = np.zeros(len(c.camera_ids), bool)
        broken: set[str] = set()
        for k, cid in enumerate(c.camera_ids):
            msg = frame.messages.get(cid)
            if isinstance(msg, CameraImage) and cid not in self.drop:
                try:
                    images[k] = self._image(msg)  # a recording's JPEG is decoded here, on first read
                except ImageDecodeError as e:
                    self.undecodable_images += 1
                    broken.add(cid)
                    if self.undecodable_images == 1 or self.undecodable_images % 100 == 0:
                        log.warning("%s; the camera counts as missing in this frame (%d undecodable images so "
                                    "far)", e, self.undecodable_images)
                    continue
                present[k] = True
        missing = frozenset(frame.missing) | (self.drop & ({c.lidar_id, *c.camera_ids, *c.radar_ids})) | broken
        return FrameInputs(stamp, frame.seq, lidar, radar, images, present, lidar_ok and len(lidar) > 0,
                           radar_ok, missing)


def _radar_columns(r) -> np.ndarray:
    """RadarPoints -> (R, 7) x y z vx vy rcs lag, the over-ground radial speed as a vector along the ray."""
    out = np.empty((len(r), 7), np.float32)
    out[:, :3] = r.xyz
    rng = np.maximum(np.linalg.norm(r.xyz[:, :2], axis=1), 1e-3)
    out[:, 3] = r.v_radial_ground * r.xyz[:, 0] / rng
    out[:, 4] = r.v_radial_ground * r.xyz[:, 1] / rng
    out[:, 5] = r.rcs
    out[:, 6] = r.lag
    return out
