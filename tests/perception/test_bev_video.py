"""BEV pictures: where things land in the image (x forward = up, y left = left), and video / PNG output."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from drivers.messages import CLASS_NAMES
from perception.align import RadarPoints
from perception.bev import BevGrid
from perception.bev_video import BACKGROUND_BGR, GT_BGR, RADAR_BGR, BevRenderer, VideoSink, write_png
from perception.decode import Detections3D, SirenEvent
from perception.evaluation.results import FrameBoxes
from perception.sinks import CLASS_COLORS_RGB, SIREN_RGB, SinkError

GRID = BevGrid(-20.0, 20.0, -20.0, 20.0, -3.0, 5.0, 0.8)
PPM = 10.0  # 400 x 400 px map


def _bgr(rgb) -> tuple[int, int, int]:
    return round(rgb[2] * 255), round(rgb[1] * 255), round(rgb[0] * 255)


CAR_BGR = _bgr(CLASS_COLORS_RGB["car"])
SIREN_BGR = _bgr(SIREN_RGB)


@pytest.fixture(scope="module")
def renderer() -> BevRenderer:
    return BevRenderer(GRID, PPM, CLASS_NAMES)


def _px(r: BevRenderer, x: float, y: float) -> tuple[int, int]:
    """(row, col) of ego point (x, y), written out from the documented layout rather than to_pixels."""
    return int(r.title_h + (20.0 - x) * PPM), int((20.0 - y) * PPM)


def _has(img: np.ndarray, rc: tuple[int, int], bgr: tuple[int, int, int], reach: int = 1) -> bool:
    r, c = rc
    patch = img[r - reach:r + reach + 1, c - reach:c + reach + 1].reshape(-1, 3)
    return bool((patch == np.array(bgr, np.uint8)).all(axis=1).any())


def _dets(boxes, labels, siren=None, events=(), velocities=None) -> Detections3D:
    b = np.asarray(boxes, np.float32).reshape(-1, 7)
    n = len(b)
    vel = np.zeros((n, 2), np.float32) if velocities is None else np.asarray(velocities, np.float32)
    return Detections3D(0, b, vel,
                        np.full(n, 0.8, np.float32), np.asarray(labels, np.int32),
                        np.zeros(n, bool) if siren is None else np.asarray(siren, bool), CLASS_NAMES, tuple(events))


def test_box_ahead_and_left_is_drawn_up_and_left_of_the_ego(renderer):
    # a car 10 m ahead, 5 m to the left, heading forward: 4 m long (x 8..12), 2 m wide (y 4..6)
    img = renderer.render(None, None, _dets([[10, 5, 0.8, 4, 2, 1.6, 0]], [0]), None, "t")
    assert img.shape == (renderer.size[1], renderer.size[0], 3) and img.dtype == np.uint8
    assert _has(img, _px(renderer, 12, 5), CAR_BGR)  # front edge
    assert _has(img, _px(renderer, 8, 5), CAR_BGR)  # rear edge
    assert _has(img, _px(renderer, 10, 6), CAR_BGR)  # left side
    assert _has(img, _px(renderer, 10, 4), CAR_BGR)  # right side
    assert _has(img, _px(renderer, 11, 5), CAR_BGR)  # heading tick, centre to front
    assert not _has(img, _px(renderer, 9, 5), CAR_BGR)  # no tick behind the centre
    ego_row, ego_col = _px(renderer, 0, 0)
    front_row, left_col = _px(renderer, 12, 6)
    assert front_row < ego_row and left_col < ego_col  # forward is up, left is left
    for mirrored in ((-10, 6), (10, -6), (-12, 5)):
        assert not _has(img, _px(renderer, *mirrored), CAR_BGR), mirrored


def test_heading_tick_follows_yaw(renderer):
    # yaw +90 deg: the car faces +y (left); the tick runs from the centre (y -5) towards y -3
    img = renderer.render(None, None, _dets([[-10, -5, 0.8, 4, 2, 1.6, math.pi / 2]], [0]), None, "t")
    assert _has(img, _px(renderer, -10, -4), CAR_BGR)
    assert not _has(img, _px(renderer, -10, -6), CAR_BGR)
    assert _has(img, _px(renderer, -10, -7), CAR_BGR) and _has(img, _px(renderer, -11, -5), CAR_BGR)  # outline


def test_ground_truth_is_a_thin_white_outline_and_sirens_turn_boxes_red(renderer):
    gt = FrameBoxes.create(0, [[5, -8, 0.8, 4, 2, 1.6, 0]], ["car"])
    dets = _dets([[-8, 8, 0.8, 4, 2, 1.6, 0]], [0], siren=[True],
                 events=[SirenEvent(0, math.atan2(8, -8), 0.9, 0), SirenEvent(0, math.pi / 2, 0.7, -1)])
    img = renderer.render(None, None, dets, gt, "t")
    assert _has(img, _px(renderer, 7, -8), GT_BGR, reach=0)
    assert not _has(img, _px(renderer, 7, -8), CAR_BGR)
    assert _has(img, _px(renderer, -6, 8), SIREN_BGR)  # the siren car's front edge, in red
    assert not _has(img, _px(renderer, -6, 8), CAR_BGR)
    # bearing-only siren to the left: a red ray from the ego along +y, nothing to the right
    assert _has(img, _px(renderer, 0, 12), SIREN_BGR)
    assert not _has(img, _px(renderer, 0, -12), SIREN_BGR, reach=3)


def test_points_land_where_they_are_and_the_highest_wins_a_pixel(renderer):
    empty = renderer.render(None, None, None, None, "t")
    low, high = [5.0, -3.0, 0.0], [5.0, -3.0, 2.5]
    img = renderer.render(np.array([low, [30.0, 0.0, 1.0], [np.nan, 0.0, 0.0]]), None, None, None, "t")
    rc = _px(renderer, 5.0, -3.0)
    assert tuple(img[rc]) != tuple(empty[rc]) and tuple(empty[rc]) == BACKGROUND_BGR
    assert (img != empty).any(axis=2).sum() == 1  # the point outside the grid and the NaN one draw nothing
    only_high = renderer.render(np.array([high]), None, None, None, "t")
    both = renderer.render(np.array([high, low, [5.05, -3.05, 1.0]], np.float32), None, None, None, "t")
    assert tuple(both[rc]) == tuple(only_high[rc]) != tuple(img[rc])


def test_radar_returns_get_arrows_along_their_line_of_sight(renderer):
    radar = RadarPoints(np.array([[10.0, 0.0, 0.5], [0.0, 10.0, 0.5]], np.float32),
                        np.array([4.0, -4.0], np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                        np.zeros(2, np.float32))
    img = renderer.render(None, radar, None, None, "t")
    assert _has(img, _px(renderer, 10, 0), RADAR_BGR, reach=0)
    assert _has(img, _px(renderer, 13, 0), RADAR_BGR)  # receding: the arrow points away from the ego
    assert not _has(img, _px(renderer, 7, 0), RADAR_BGR)
    assert _has(img, _px(renderer, 0, 7), RADAR_BGR)  # approaching: towards the ego
    assert not _has(img, _px(renderer, 0, 13), RADAR_BGR)


def test_render_with_empty_inputs_shows_rings_and_legend_only(renderer):
    a = renderer.render(None, None, None, None, "")
    b = renderer.render(np.zeros((0, 4), np.float32),
                        RadarPoints(*(np.zeros((0, 3), np.float32),) + (np.zeros(0, np.float32),) * 4),
                        Detections3D.empty(0), FrameBoxes.create(0, np.zeros((0, 7)), []), "")
    np.testing.assert_array_equal(a, b)
    ring_top = _px(renderer, 10.0, 0.0)  # the 10 m ring crosses the +x axis there
    assert tuple(a[ring_top]) != BACKGROUND_BGR
    assert tuple(a[_px(renderer, 5.0, 15.0)]) == BACKGROUND_BGR
    with pytest.raises(ValueError, match=r"points must be \(N, >=3\)"):
        renderer.render(np.zeros((5, 2)), None, None, None, "")


def test_video_round_trip_keeps_frame_count_and_content(renderer, tmp_path):
    path = tmp_path / "bev.mp4"
    frames = [renderer.render(None, None, _dets([[k * 2.0, 0, 0.8, 4, 2, 1.6, 0]], [0]), None, f"frame {k}")
              for k in range(6)]
    with VideoSink(path, 10.0, renderer.size) as video:
        for f in frames:
            video.write(f)
        with pytest.raises(ValueError, match="expected"):
            video.write(frames[0][:-1])
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
    read = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        read.append(f)
    cap.release()
    assert len(read) == len(frames)
    for got, want in zip(read, frames):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 6  # lossy codec, same picture
    # frames stay in order: each frame's box is closest to its own frame
    errors = [[np.abs(g.astype(int) - w.astype(int)).mean() for w in frames] for g in read]
    assert [int(np.argmin(e)) for e in errors] == list(range(len(frames)))


def test_png_is_lossless_and_bad_folders_raise(renderer, tmp_path):
    img = renderer.render(np.array([[3.0, 1.0, 1.0]]), None, None, None, "png")
    write_png(tmp_path / "frame.png", img)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "frame.png")), img)
    with pytest.raises(SinkError, match="cannot write PNG"):
        write_png(tmp_path / "missing" / "frame.png", img)
    with pytest.raises(SinkError, match="cannot open video"):
        VideoSink(tmp_path / "missing" / "bev.mp4", 10.0, renderer.size)
