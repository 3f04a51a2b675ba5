"""``perception train`` on two tiny simulated drives: reproducible weights, safe checkpoints, validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from perception.train import TrainConfig, load_checkpoint_file, train


def _tiny(tmp_path) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), name="tiny", train_seeds=(7,), train_duration_s=1.2, val_seeds=(8,),
                               val_duration_s=0.8, data_cache=str(tmp_path / "cache"), steps=2, batch_size=2,
                               val_every=2, checkpoint_every=1)


def test_same_config_gives_the_same_weights_and_a_checkpoint_that_loads_without_code(tmp_path):
    cfg = _tiny(tmp_path)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    ck_a, ck_b = load_checkpoint_file(a), load_checkpoint_file(b)  # weights_only=True inside
    for part in ("camera", "bev"):
        for name, tensor in ck_a["model"][part].items():
            assert torch.equal(tensor, ck_b["model"][part][name]), f"{part}.{name} differs between runs"
    assert ck_a["step"] == 2 and json.loads(ck_a["train_config"])["name"] == "tiny"
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert history[-1]["step"] == 2 and 0.0 <= history[-1]["mAP"] <= 1.0


def test_rerunning_a_finished_run_resumes_instead_of_starting_over(tmp_path):
    cfg = _tiny(tmp_path)
    train(cfg, tmp_path / "run", progress=False)
    first = load_checkpoint_file(tmp_path / "run" / "model.pt")
    again = load_checkpoint_file(train(cfg, tmp_path / "run", progress=False))
    assert again["step"] == 2
    # Resumed at the end: no step ran again, so the accumulated step time is exactly the first run's
    # (a run started over would have measured its own, different wall time).
    assert again["elapsed_s"] == first["elapsed_s"]
    for name, tensor in first["model"]["bev"].items():
        assert torch.equal(tensor, again["model"]["bev"][name])


def test_a_different_config_in_the_same_run_folder_is_refused(tmp_path):
    import pytest

    cfg = _tiny(tmp_path)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different training config"):
        train(dataclasses.replace(cfg, lr=1e-3), tmp_path / "run", progress=False)


def test_a_run_can_start_from_another_runs_weights_of_the_same_sizes(tmp_path):
    import pytest

    base = _tiny(tmp_path)
    first = load_checkpoint_file(train(base, tmp_path / "base", progress=False))
    # Zero steps: the new run's weights are exactly the ones it started from.
    warm = dataclasses.replace(base, name="warm", steps=0, init_from=str(tmp_path / "base" / "model.pt"))
    start = load_checkpoint_file(train(warm, tmp_path / "warm", progress=False))
    for part in ("camera", "bev"):
        for name, tensor in first["model"][part].items():
            assert torch.equal(tensor, start["model"][part][name]), f"{part}.{name} not taken over"
    with pytest.raises(ValueError, match="other network sizes \\(bev_channels\\)"):
        train(dataclasses.replace(warm, bev_channels=16), tmp_path / "other", progress=False)
    with pytest.raises(FileNotFoundError, match="train that run first"):
        train(dataclasses.replace(warm, init_from=str(tmp_path / "missing.pt")), tmp_path / "none", progress=False)


def test_lidar_dropout_drops_the_lidar_alone_at_its_own_rate(tmp_path):
    import numpy as np

    from perception.models.networks import NetworkConfig
    from perception.train import SampleBuilder, generate_drives, train_drives
    from perception.training_data import Drive

    cfg = dataclasses.replace(_tiny(tmp_path), modality_dropout=0.0, lidar_dropout=0.5)
    assert cfg.dropout_of() == {"lidar": 0.5, "camera": 0.0, "radar": 0.0}
    drive = Drive.load(generate_drives(train_drives(cfg), tmp_path / "cache", workers=1, progress=False)[0])
    frames = [i for i in range(len(drive)) if drive.lidar_present[i] and drive.radar_present[i]]
    net_cfg = NetworkConfig(lidar_channels=cfg.lidar_channels, bev_channels=cfg.bev_channels,
                            lidar_max_pillars=cfg.lidar_max_pillars)
    builder = SampleBuilder(net_cfg, cfg.modalities, cfg.dropout_of(), flip=False)
    rng = np.random.default_rng(0)
    presence = np.concatenate([builder.build([drive], [(0, frames[k % len(frames)]) for k in range(8)], rng,
                                             train=True).presence for _ in range(8)])
    lidar_kept = presence[:, 0].mean()
    assert 0.3 < lidar_kept < 0.7, lidar_kept  # 64 samples at p = 0.5
    assert presence[:, 2].min() == 1.0  # radar never dropped
    # Evaluation samples never drop anything.
    assert builder.build([drive], [(0, frames[0])], rng, train=False).presence[0, 0] == 1.0
    with pytest.raises(ValueError, match="lidar_dropout"):
        dataclasses.replace(cfg, lidar_dropout=1.0)


def test_depth_targets_put_the_nearest_point_of_a_feature_cell_in_its_depth_bin():
    import numpy as np

    from drivers.sim import default_rig
    from perception.frontend import FrontendConfig
    from perception.models.networks import NetworkConfig
    from perception.train import depth_targets_for

    cfg = NetworkConfig()
    targets = depth_targets_for(cfg)
    rig = default_rig(cfg.n_cameras)
    front = FrontendConfig().camera_ids[0]
    cam, ego_from_cam = rig[front].camera, rig.ego_from(front)
    # Two points on the front camera's optical axis at 10 m and 20 m (the nearer one hides the other), one
    # behind the camera (the rear camera's business) and one beyond the last bin: in the front camera only
    # the 10 m one gives a target.
    near = cfg.depth_min + 7 * cfg.depth_step                      # bin 7's centre, 10.4 m
    axis = np.array([[0.0, 0.0, near], [0.0, 0.0, 20.0], [0.0, 0.0, -5.0], [0.0, 0.0, 200.0]])
    pts = np.zeros((4, 5), np.float32)
    pts[:, :3] = ego_from_cam.apply(axis)
    out = targets(pts)
    assert out.shape == (cfg.n_cameras, cfg.feature_height, cfg.feature_width)
    u, v = cam.cx, cam.cy  # the principal point, in the feature cell the network sees it in
    iy = int(((v + 0.5) * cfg.image_scale - cfg.crop_top) // cfg.feature_stride)
    ix = int(((u + 0.5) * cfg.image_scale) // cfg.feature_stride)
    assert out[0, iy, ix] == 7
    assert (out[0] >= 0).sum() == 1
    # The geometry agrees with the lift: that bin of that cell lands in the BEV cell of the point, or next to
    # it (the feature cell's centre ray is a few pixels off the principal point).
    from perception.train import cell_index_for

    cell = int(cell_index_for(cfg)[0, out[0, iy, ix], iy, ix])
    p = ego_from_cam.apply(axis[:1])[0]
    g = cfg.grid
    assert abs(cell % g.nx - int((p[0] - g.x_min) // g.cell)) <= 1
    assert abs(cell // g.nx - int((p[1] - g.y_min) // g.cell)) <= 1


def test_depth_supervised_training_runs_and_reports_the_depth_loss(tmp_path):
    import numpy as np

    from perception.models.networks import NetworkConfig
    from perception.train import SampleBuilder, depth_loss, depth_targets_for, generate_drives, train_drives
    from perception.training_data import Drive

    cfg = dataclasses.replace(_tiny(tmp_path), depth_weight=1.0)
    drive = Drive.load(generate_drives(train_drives(cfg), tmp_path / "cache", workers=1, progress=False)[0])
    net_cfg = NetworkConfig(lidar_channels=cfg.lidar_channels, bev_channels=cfg.bev_channels,
                            lidar_max_pillars=cfg.lidar_max_pillars)
    i = next(k for k in range(len(drive)) if drive.lidar_present[k] and drive.cam_present[k].all())
    # Flipped samples get the mirrored targets (the rig is mirror-symmetric).
    plain = SampleBuilder(net_cfg, ("camera",), None, flip=False, depth=depth_targets_for(net_cfg))
    a = plain.build([drive], [(0, i)], np.random.default_rng(0), train=False).depth_target
    assert a.shape == (net_cfg.n_cameras, net_cfg.feature_height, net_cfg.feature_width)
    assert (a >= 0).mean() > 0.2                      # the LiDAR covers a good part of both images
    flip = SampleBuilder(net_cfg, ("camera",), None, flip=True, depth=depth_targets_for(net_cfg))
    mirrored = 0
    for seed in range(8):
        b = flip.build([drive], [(0, i)], np.random.default_rng(seed), train=True).depth_target
        assert np.array_equal(b, a) or np.array_equal(b, a[:, :, ::-1])
        mirrored += not np.array_equal(b, a)
    assert 0 < mirrored < 8
    # A uniform depth distribution costs log(D); the right bin with probability 1 costs nothing.
    d = net_cfg.depth_bins
    uniform = torch.full((net_cfg.n_cameras, d, net_cfg.feature_height, net_cfg.feature_width), 1.0 / d)
    assert float(depth_loss(uniform, a)) == pytest.approx(np.log(d), rel=1e-5)
    exact = torch.zeros_like(uniform)
    ok = a >= 0
    exact.permute(0, 2, 3, 1)[torch.from_numpy(ok)] = torch.nn.functional.one_hot(
        torch.from_numpy(a[ok]), d).float()
    assert float(depth_loss(exact, a)) == pytest.approx(0.0, abs=1e-6)
    ck = load_checkpoint_file(train(cfg, tmp_path / "run", progress=False))
    assert json.loads(ck["train_config"])["depth_weight"] == 1.0


def test_the_lidarless_path_starts_as_the_camera_radar_baseline_and_the_main_path_as_the_fused_run(tmp_path):
    import numpy as np

    from perception.train import SampleBuilder, detector_from_checkpoint, generate_drives, train_drives
    from perception.training_data import Drive

    base = _tiny(tmp_path)
    fused = train(base, tmp_path / "fused", progress=False)
    cam_radar = train(dataclasses.replace(base, name="cr", seed=1, modalities=("camera", "radar"),
                                          modality_dropout=0.0), tmp_path / "cr", progress=False)
    both = dataclasses.replace(base, name="both", steps=0, init_from=str(fused), lidarless_path=True,
                               init_lidarless_from=str(cam_radar))
    composed = train(both, tmp_path / "both", progress=False)

    drive = Drive.load(generate_drives(train_drives(base), tmp_path / "cache", workers=1, progress=False)[0])
    i = next(k for k in range(len(drive)) if drive.lidar_present[k] and drive.radar_present[k]
             and drive.cam_present[k].all())

    def outputs(ckpt, modalities):
        det, net_cfg, _ = detector_from_checkpoint(ckpt)
        batch = SampleBuilder(net_cfg, modalities, None, False).build([drive], [(0, i)], np.random.default_rng(0),
                                                                      train=False)
        with torch.inference_mode():
            return det.forward(batch)

    # Without LiDAR the composed model computes what the camera+radar baseline computes.
    for got, want in zip(outputs(composed, ("camera", "radar")), outputs(cam_radar, ("camera", "radar"))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # With LiDAR (and no camera, whose network now comes from the baseline) it computes what the fused run did.
    for got, want in zip(outputs(composed, ("lidar", "radar")), outputs(fused, ("lidar", "radar"))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Training the second path alone leaves every other weight and batch-norm statistic as it started, and
    # the run reports its validation without LiDAR too.
    run = dataclasses.replace(both, name="both2", steps=2, train_only_lidarless=True, lidar_dropout=0.9)
    after = load_checkpoint_file(train(run, tmp_path / "both2", progress=False))["model"]
    start = load_checkpoint_file(composed)["model"]
    changed = {f"{part}.{k}" for part in ("camera", "bev") for k, v in start[part].items()
               if not torch.equal(v, after[part][k])}
    assert changed and all(k.startswith("bev.lidarless.") for k in changed), sorted(changed)[:5]
    history = json.loads((tmp_path / "both2" / "history.json").read_text())
    assert 0.0 <= history[-1]["mAP_no_lidar"] <= 1.0
    with pytest.raises(ValueError, match="need lidarless_path"):
        dataclasses.replace(base, init_lidarless_from=str(cam_radar))
    with pytest.raises(ValueError, match="need lidarless_path"):
        dataclasses.replace(base, train_only_lidarless=True)
    with pytest.raises(FileNotFoundError, match="train that run first"):
        train(dataclasses.replace(both, init_lidarless_from=str(tmp_path / "missing.pt")), tmp_path / "x",
              progress=False)
