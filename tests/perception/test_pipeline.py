"""The straight-line pipeline: the LiDAR pillar budget is a buffer size, not a weight."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from drivers.recording import RecordingReader
from perception.executor import arrival_order
from perception.pipeline import PipelineConfig, build_pipeline
from perception.sync import SyncConfig, Synchronizer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "recordings" / "sample_drive.mcap"


@pytest.fixture(scope="module")
def frames():
    reader = RecordingReader(SAMPLE)
    sync = Synchronizer(SyncConfig.load(ROOT / "configs" / "sync_sim.yaml"))
    out = []
    for now, msg in arrival_order(reader.messages()):
        out += sync.push(msg, now)
        if len(out) >= 8:
            break
    return reader.rig, out[:8]


def _config(tmp_path, **changes) -> PipelineConfig:
    """The default pipeline config without audio, its model cache in ``tmp_path``, with ``changes``."""
    return dataclasses.replace(PipelineConfig.load(ROOT / "configs" / "pipeline_default.yaml"),
                               model_cache=str(tmp_path), siren_checkpoint=None, **changes)


def _run(config: PipelineConfig, rig, frames):
    pipeline, _ = build_pipeline(config, rig, timing=False)
    return pipeline, [pipeline(f) for f in frames]


def test_a_smaller_pillar_budget_gives_the_same_detections_when_the_pillars_fit(frames, tmp_path):
    rig, fs = frames
    base = _config(tmp_path)
    full, a = _run(dataclasses.replace(base, lidar_max_pillars=12000), rig, fs)
    small, b = _run(dataclasses.replace(base, lidar_max_pillars=None), rig, fs)  # the checkpoint's 6000
    assert full.cfg.lidar_max_pillars == 12000 and small.cfg.lidar_max_pillars == 6000
    assert small.pillar_overflows == 0
    # One exported model folder per size, keyed by the network code too (a changed graph is re-exported).
    code = hashlib.sha256((ROOT / "perception" / "models" / "networks.py").read_bytes()).hexdigest()[:8]
    assert sorted(p.name.split("-")[1:] for p in tmp_path.iterdir()) == [["p12000", "r60.8", f"n{code}"],
                                                                          ["p6000", "r60.8", f"n{code}"]]
    assert sum(len(d) for d in a) > 50
    for da, db in zip(a, b):
        assert len(da) == len(db)
        np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-4)
        np.testing.assert_allclose(da.scores, db.scores, atol=1e-5)
        assert (da.labels == db.labels).all()


def test_frames_that_fill_the_pillar_budget_are_counted(frames, tmp_path, caplog):
    rig, fs = frames
    cfg = _config(tmp_path, lidar_max_pillars=500)
    pipeline, dets = _run(cfg, rig, fs)
    assert pipeline.pillar_overflows == len(fs)  # ~1900 pillars a frame do not fit in 500
    assert sum("filled all 500 LiDAR pillars" in r.message for r in caplog.records) == 1  # logged once
    assert len(dets) == len(fs)


@pytest.mark.parametrize("changes, message", [
    ({"lidar_max_pillars": 0}, "lidar_max_pillars must be >= 1"),
    ({"bev_range_m": 60.0}, "bev_range_m must be a positive multiple of 1.6 m"),  # off the backbone's steps
])
def test_a_network_size_the_checkpoint_cannot_take_is_refused(tmp_path, frames, changes, message):
    rig, _ = frames
    with pytest.raises(ValueError, match=message):
        build_pipeline(_config(tmp_path, **changes), rig)


def test_warm_up_leaves_no_state_behind(frames, tmp_path):
    """build_pipeline warms every stateless stage up; doing it again between frames changes nothing."""
    rig, fs = frames
    cfg = _config(tmp_path)
    a = build_pipeline(cfg, rig, timing=False)[0]
    b = build_pipeline(cfg, rig, timing=False)[0]
    for k, f in enumerate(fs):
        da = a(f)
        if k == 3:
            b.warm_up()
        db = b(f)
        assert len(da) == len(db) > 0
        np.testing.assert_array_equal(da.boxes, db.boxes)
        np.testing.assert_array_equal(da.scores, db.scores)


def test_cameras_decoded_at_network_scale_give_the_network_nearly_the_same_images(tmp_path):
    from perception.pipeline import image_reduction_for

    config = _config(tmp_path)
    reader = RecordingReader(SAMPLE)
    assert image_reduction_for(config, reader.rig) == 2  # 640x360 cameras, half-size network images
    runs = []
    for reduction in (1, 2):
        pipeline, _ = build_pipeline(config, reader.rig, timing=False)
        images = []
        sync = Synchronizer(SyncConfig.load(ROOT / "configs" / "sync_sim.yaml"))
        for now, msg in arrival_order(reader.messages(image_reduction=reduction)):
            for frame in sync.push(msg, now):
                pipeline(frame)
                images.append(pipeline.last_inputs.images.copy())
            if len(images) >= 4:
                break
        runs.append(np.stack(images[:4]))
    full, half = runs
    assert full.shape == half.shape and full.any()
    # JPEG's own 1/2 downscaling against a full decode shrunk by area averaging: a grey level or so apart.
    assert np.abs(full.astype(int) - half.astype(int)).mean() < 1.5


def test_tracking_changes_only_velocities_and_headings(frames, tmp_path):
    rig, fs = frames
    base = _config(tmp_path)
    assert base.tracking  # the default
    tracked, a = _run(base, rig, fs)
    head, b = _run(dataclasses.replace(base, tracking=False), rig, fs)
    assert tracked.tracker is not None and head.tracker is None
    for k, (da, db) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(da.boxes[:, :6], db.boxes[:, :6])
        np.testing.assert_array_equal(da.scores, db.scores)
        if k < 2:  # no track has its 3 updates yet: the head's velocities
            np.testing.assert_array_equal(da.velocities, db.velocities)
    assert not np.array_equal(a[-1].velocities, b[-1].velocities)


def test_an_undecodable_camera_image_makes_that_camera_missing_in_its_frame(frames, tmp_path, caplog):
    from drivers.messages import CameraImage

    rig, fs = frames
    cfg = _config(tmp_path)
    pipeline, _ = build_pipeline(cfg, rig, timing=False)
    good = fs[2].messages["cam_front"]
    broken = CameraImage(good.sensor_id, good.stamp_ns, good.seq, None, b"\xff\xd8\xff not a JPEG after all")
    seen = []
    for k, f in enumerate(fs[:5]):
        if k == 2:
            f = dataclasses.replace(f, messages={**f.messages, "cam_front": broken})
        dets = pipeline(f)
        x = pipeline.last_inputs
        seen.append((pipeline.last_missing, x.camera_present.copy(), bool(x.images[0].any()), len(dets)))
    assert [m for m, _, _, _ in seen] == [frozenset()] * 2 + [frozenset({"cam_front"})] + [frozenset()] * 2
    assert seen[2][1].tolist() == [False, True] and not seen[2][2]  # zeros for the missing camera
    assert all(p.all() and pixels for k, (_, p, pixels, _) in enumerate(seen) if k != 2)
    assert pipeline.frontend.undecodable_images == 1
    assert all(n > 0 for _, _, _, n in seen)  # the frame still gets detections (LiDAR, radar, the other camera)
    assert sum("camera 'cam_front' image seq" in r.message and "counts as missing" in r.message
               for r in caplog.records) == 1


def test_a_larger_bev_range_runs_the_same_weights_and_keeps_the_near_detections(frames, tmp_path):
    rig, fs = frames
    base = _config(tmp_path, tracking=False, bev_range_m=None)
    near, a = _run(base, rig, fs)  # the checkpoint's grid
    far, b = _run(dataclasses.replace(base, bev_range_m=60.8), rig, fs)
    assert (near.cfg.grid.nx, far.cfg.grid.nx) == (128, 152) and far.cfg.grid.x_max == 60.8
    beyond = 0
    for da, db in zip(a, b):
        # Well inside the old grid (farther from its edge than the backbone's reach) nothing changes.
        ka = (np.abs(da.boxes[:, :2]) < 25).all(axis=1) & (da.scores >= 0.3)
        kb = (np.abs(db.boxes[:, :2]) < 25).all(axis=1) & (db.scores >= 0.3)
        assert ka.sum() == kb.sum() > 0
        np.testing.assert_allclose(da.boxes[ka], db.boxes[kb], atol=1e-3)
        np.testing.assert_allclose(da.scores[ka], db.scores[kb], atol=1e-4)
        assert (np.abs(da.boxes[:, :2]) < 51.2).all()
        beyond += int((np.abs(db.boxes[:, :2]) >= 51.2).any(axis=1).sum())
    assert beyond > 0  # and it detects out there
