"""The detection networks, their targets and decoding: geometry and round trips that must hold exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.sim import default_rig
from perception.bev import BevGrid
from perception.decode import DecodeConfig, Decoder, Detections3D
from perception.kernels import bev_pool
from perception.models.networks import (BevNet, CameraNet, NetworkConfig, PillarEncoder, camera_bev_torch,
                                        frustum_cell_index)
from perception.train import cell_index_for
from perception.training_data import make_targets


@pytest.fixture(scope="module")
def cfg():
    return NetworkConfig()


def test_front_camera_frustum_lands_ahead_and_rear_camera_behind(cfg):
    idx = cell_index_for(cfg)
    g = cfg.grid
    for k, sign in ((0, 1.0), (1, -1.0)):
        cells = idx[k][idx[k] >= 0]
        x = g.x_min + (cells % g.nx + 0.5) * g.cell
        assert len(cells) > 0.3 * idx[k].size  # most of the frustum lies on the ±51.2 m grid
        assert np.mean(np.sign(x) == sign) > 0.99


def test_frustum_depth_bin_maps_to_its_distance_on_the_optical_axis(cfg):
    rig = default_rig(2)
    idx = frustum_cell_index(cfg, [rig["cam_front"].camera], [rig.ego_from("cam_front")])
    g = cfg.grid
    h, w = cfg.feature_height, cfg.feature_width
    # The feature pixel nearest the principal point looks straight ahead: bin k is depth_centers[k] ahead.
    centre = idx[0, :, h // 2, w // 2]
    cam_x = rig.ego_from("cam_front").translation[0]
    for k in (0, 10, 30):
        cell = centre[k]
        x = g.x_min + (cell % g.nx + 0.5) * g.cell
        assert abs(x - (cam_x + cfg.depth_centers()[k])) <= g.cell


def test_torch_lift_splat_pooling_equals_the_runtime_kernel(cfg):
    rng = np.random.default_rng(0)
    idx = cell_index_for(cfg)
    depth = rng.random((2, cfg.depth_bins, cfg.feature_height, cfg.feature_width)).astype(np.float32)
    feats = rng.standard_normal((2, cfg.camera_channels, cfg.feature_height, cfg.feature_width)).astype(np.float32)
    ref = camera_bev_torch(torch.from_numpy(depth), torch.from_numpy(feats), torch.from_numpy(idx),
                           cfg.grid.n_cells, cfg.grid.ny, cfg.grid.nx)[0].numpy()
    out = np.zeros((cfg.camera_channels, cfg.grid.n_cells), np.float32)
    bev_pool(depth, feats, idx, out)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def test_pillar_encoder_scatters_each_pillar_into_its_cell_and_drops_padding():
    grid = BevGrid(-4.0, 4.0, -4.0, 4.0, -3.0, 5.0, 1.0)
    torch.manual_seed(0)  # random weights, but not ones whose 4 channels all happen to be <= 0 after the ReLU
    enc = PillarEncoder(10, 4, grid).eval()
    pillars = torch.ones(1, 3, 2, 10)
    index = torch.tensor([[grid.ny * 0 + 5, 2 * grid.nx + 7, grid.n_cells]])  # two pillars + padding
    out = enc(pillars, index)[0]
    assert out.shape == (4, grid.ny, grid.nx)
    filled = (out.abs().sum(0) > 0).nonzero().tolist()
    assert sorted(map(tuple, filled)) == [(0, 5), (2, 7)]


def test_network_outputs_match_their_specs(cfg):
    cam, bev = CameraNet(cfg).eval(), BevNet(cfg).eval()
    with torch.inference_mode():
        for net in (cam, bev):
            feeds = net.spec.random_inputs(0)
            outs = net(*[torch.from_numpy(feeds[t.name]) for t in net.spec.inputs])
            net.spec.check_outputs({t.name: o.numpy() for t, o in zip(net.spec.outputs, outs)})
    # the camera depth is a distribution over bins at every pixel
    with torch.inference_mode():
        d, _ = cam(torch.rand(cfg.n_cameras, 3, cfg.image_height, cfg.image_width))
    np.testing.assert_allclose(d.sum(1).numpy(), 1.0, atol=1e-5)


def _maps_from_targets(cfg, t):
    """Perfect head output for the targets: the heatmap itself, regression written at the centre cells."""
    g = cfg.head_grid
    reg = np.zeros((10, g.ny * g.nx), np.float32)
    n = int(t.mask.sum())
    reg[:, t.index[:n]] = t.regression[:n].T
    return t.heatmap, reg.reshape(10, g.ny, g.nx)


def test_decoding_perfect_head_maps_returns_the_ground_truth_boxes(cfg):
    boxes = np.array([[12.3, -4.1, 0.9, 4.5, 1.9, 1.6, 0.3],
                      [-20.2, 7.7, 1.6, 10.0, 2.6, 3.2, -2.8],
                      [5.05, 15.4, 0.9, 0.7, 0.7, 1.8, 1.2],
                      [33.0, -30.0, 0.8, 1.8, 0.6, 1.5, 3.0]], np.float32)
    vel = np.array([[8.0, 0.5], [-3.0, 0.0], [0.0, 1.2], [4.0, -4.0]], np.float32)
    labels = np.array([0, 1, 2, 3])
    t = make_targets(cfg, boxes, vel, labels)
    heat, reg = _maps_from_targets(cfg, t)
    dets = Decoder(cfg.head_grid, cfg.class_names, DecodeConfig(score_threshold=0.99))(heat, reg, 42)
    assert len(dets) == 4 and dets.stamp_ns == 42
    order = np.argsort(dets.labels)
    np.testing.assert_allclose(dets.boxes[order], boxes, atol=1e-4)
    np.testing.assert_allclose(dets.velocities[order], vel, atol=1e-5)
    assert np.all(dets.scores == 1.0)


def test_targets_ignore_boxes_outside_the_grid(cfg):
    boxes = np.array([[70.0, 0.0, 0.9, 4.5, 1.9, 1.6, 0.0]], np.float32)
    t = make_targets(cfg, boxes, np.zeros((1, 2), np.float32), np.array([0]))
    assert t.mask.sum() == 0 and t.heatmap.max() == 0


def test_detections_mask_keeps_siren_events_associated_only_with_kept_boxes():
    from perception.decode import SirenEvent

    d = Detections3D(5, np.zeros((3, 7), np.float32) + 1, np.zeros((3, 2), np.float32),
                     np.array([0.9, 0.2, 0.8], np.float32), np.zeros(3, np.int32), np.array([False, True, False]),
                     siren_events=(SirenEvent(5, 0.1, 0.9, 1), SirenEvent(5, 1.0, 0.7, 2)))
    kept = d[d.scores > 0.5]
    assert len(kept) == 2
    assert [e.detection_index for e in kept.siren_events] == [-1, 1]
    frame = kept.to_frame_boxes()
    assert list(frame.labels) == ["car", "car"] and frame.attributes[0] == {"siren": False}


def test_the_lidar_flag_picks_the_main_path_or_the_lidarless_path_per_sample():
    from dataclasses import replace

    torch.manual_seed(0)
    cfg = replace(NetworkConfig(), lidarless_path=True, lidar_max_pillars=64)
    net = BevNet(cfg).eval()
    feeds = {t.name: torch.from_numpy(v) for t, v in zip(net.spec.inputs, net.spec.random_inputs(0).values())}
    lp, li, rp, ri, cam = (feeds[n].expand(2, *feeds[n].shape[1:]).clone() for n in net.spec.input_names[:5])
    presence = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    with torch.inference_mode():
        heat, reg = net(lp, li, rp, ri, cam, presence)
        # The main path by itself: the same network without the second path, same weights.
        main = BevNet(replace(cfg, lidarless_path=False)).eval()
        main.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("lidarless.")})
        heat_main, reg_main = main(lp, li, rp, ri, cam, presence)
        # The LiDAR-free path by itself, from the camera and radar inputs alone.
        p = net.lidarless
        radar = p.radar(rp, ri)
        flags = presence[:, 1:].view(2, 2, 1, 1).expand(-1, -1, cfg.grid.ny, cfg.grid.nx)
        heat_l, reg_l = p.head(torch.cat([cam, radar, flags], dim=1))
    torch.testing.assert_close(heat[0], heat_main[0], rtol=0, atol=0)
    torch.testing.assert_close(reg[0], reg_main[0], rtol=0, atol=0)
    torch.testing.assert_close(heat[1], heat_l[1], rtol=0, atol=0)
    torch.testing.assert_close(reg[1], reg_l[1], rtol=0, atol=0)
    assert not torch.allclose(heat_main[1], heat_l[1])   # the two paths do differ
    # The LiDAR points cannot reach the output of a frame flagged without LiDAR.
    with torch.inference_mode():
        heat2, _ = net(lp * 0 + 5.0, li, rp, ri, cam, presence)
    torch.testing.assert_close(heat2[1], heat[1], rtol=0, atol=0)
