"""Camera models against OpenCV: projection, unprojection, undistortion, scaling and validation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.camera import CameraModel

W, H = 1280, 800


def random_camera(rng: np.random.Generator, model: str) -> CameraModel:
    """A camera with realistic intrinsics and distortion (values seen on automotive lenses)."""
    fx = rng.uniform(300, 1500)
    fy = fx * rng.uniform(0.98, 1.02)
    cx = W / 2 + rng.uniform(-30, 30)
    cy = H / 2 + rng.uniform(-30, 30)
    if model == "pinhole":
        dist = (
            rng.uniform(-0.35, 0.15), rng.uniform(-0.1, 0.15),
            rng.uniform(-2e-3, 2e-3), rng.uniform(-2e-3, 2e-3), rng.uniform(-0.03, 0.03),
        )
    else:
        dist = (rng.uniform(-0.05, 0.05), rng.uniform(-0.02, 0.02), rng.uniform(-5e-3, 5e-3),
                rng.uniform(-5e-3, 5e-3))
    return CameraModel(model, W, H, fx, fy, cx, cy, dist)


def random_points(rng: np.random.Generator, n: int, max_tan: float) -> np.ndarray:
    """(n, 3) points in front of the camera whose ray x/z, y/z lies within +-max_tan."""
    z = rng.uniform(0.5, 60.0, n)
    xy = rng.uniform(-max_tan, max_tan, (n, 2)) * z[:, None]
    return np.column_stack([xy, z])


@pytest.mark.parametrize("seed", range(10))
def test_pinhole_projection_matches_cv2_project_points(seed):
    rng = np.random.default_rng(seed)
    cam = random_camera(rng, "pinhole")
    P = random_points(rng, 500, 0.8)
    uv, valid = cam.project(P)
    ref, _ = cv2.projectPoints(P, np.zeros(3), np.zeros(3), cam.K, cam.dist_array)
    assert valid.all()
    assert np.abs(uv - ref.reshape(-1, 2)).max() < 1e-6


@pytest.mark.parametrize("seed", range(10))
def test_fisheye_projection_matches_cv2_fisheye_project_points(seed):
    rng = np.random.default_rng(seed)
    cam = random_camera(rng, "fisheye")
    P = random_points(rng, 500, 3.0)  # rays up to ~77 degrees off axis
    uv, valid = cam.project(P)
    ref, _ = cv2.fisheye.projectPoints(P.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.dist_array)
    assert valid.all()
    assert np.abs(uv - ref.reshape(-1, 2)).max() < 1e-6


coef = lambda lo, hi: st.floats(lo, hi, allow_nan=False)  # noqa: E731


@st.composite
def camera_and_rays(draw):
    """A camera and normalised rays (x/z, y/z) within the range where its distortion is invertible."""
    model = draw(st.sampled_from(["pinhole", "fisheye"]))
    if model == "pinhole":
        dist = (draw(coef(-0.35, 0.15)), draw(coef(-0.1, 0.15)), draw(coef(-2e-3, 2e-3)),
                draw(coef(-2e-3, 2e-3)), draw(coef(-0.03, 0.03)))
        max_tan = 0.5
    else:
        dist = (draw(coef(-0.05, 0.05)), draw(coef(-0.02, 0.02)), draw(coef(-5e-3, 5e-3)), draw(coef(-5e-3, 5e-3)))
        max_tan = 2.5
    f = draw(coef(200.0, 1500.0))
    cam = CameraModel(model, W, H, f, f * draw(coef(0.98, 1.02)), draw(coef(600.0, 680.0)),
                      draw(coef(360.0, 440.0)), dist)
    rays = draw(st.lists(st.tuples(coef(-max_tan, max_tan), coef(-max_tan, max_tan)), min_size=1, max_size=20))
    depth = draw(st.lists(coef(0.1, 100.0), min_size=len(rays), max_size=len(rays)))
    xy = np.asarray(rays, dtype=np.float64)
    z = np.asarray(depth)
    return cam, np.column_stack([xy * z[:, None], z])


@settings(max_examples=200, deadline=None)
@given(camera_and_rays())
def test_unproject_of_projection_is_the_ray_scaled_to_unit_depth(case):
    cam, P = case
    uv, valid = cam.project(P)
    assert valid.all()
    rays = cam.unproject(uv)
    np.testing.assert_allclose(rays, P / P[:, 2:3], atol=1e-8)


def test_points_behind_or_on_the_camera_plane_are_invalid_and_nan():
    cam = CameraModel("pinhole", W, H, 800, 800, 640, 400, (-0.2, 0.05, 0, 0, 0))
    P = np.array([[0.0, 0, 5], [1, 1, -5], [0.1, 0.1, 0.0], [0, 0, 1e-9], [0.5, -0.2, 3]])
    uv, valid = cam.project(P)
    assert valid.tolist() == [True, False, False, False, True]
    assert np.isnan(uv[~valid]).all()
    assert np.isfinite(uv[valid]).all()
    np.testing.assert_allclose(uv[0], [640, 400])
    assert not cam.in_image(uv)[~valid].any()


def test_in_image_uses_pixel_edges_and_margin():
    cam = CameraModel("pinhole", 640, 480, 500, 500, 319.5, 239.5)
    uv = np.array([[-0.5, -0.5], [639.5, 479.5], [-0.51, 10], [10, 479.6], [np.nan, 5], [320, 240]])
    assert cam.in_image(uv).tolist() == [True, True, False, False, False, True]
    assert cam.in_image(uv, margin=1.0).tolist() == [False, False, False, False, False, True]


def _line_rows(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns where a bright line is present and its intensity-weighted row there."""
    img = image.astype(np.float64)
    weight = img.sum(axis=0)
    cols = np.nonzero(weight > 3 * 255)[0]
    rows = (img[:, cols] * np.arange(img.shape[0])[:, None]).sum(axis=0) / weight[cols]
    return cols, rows


def _straightness(cols: np.ndarray, rows: np.ndarray) -> float:
    """Max distance [px] of the line centre from its best straight-line fit."""
    fit = np.polyfit(cols, rows, 1)
    return float(np.abs(np.polyval(fit, cols) - rows).max())


@pytest.mark.parametrize(
    "cam",
    [
        CameraModel("pinhole", 640, 480, 400, 400, 319.5, 239.5, (-0.30, 0.08, 0.0, 0.0, 0.0)),
        CameraModel("fisheye", 640, 480, 250, 250, 319.5, 239.5, (0.05, -0.01, 0.002, -0.001)),
    ],
    ids=["pinhole", "fisheye"],
)
def test_undistort_makes_a_distorted_straight_line_straight(cam):
    # A straight 3D line (constant y/z) drawn through the distorted model bows; undistortion must
    # bring it back onto the row where an ideal pinhole with the same K sees it.
    ray_y = -0.3
    x = np.linspace(-1.2, 1.2, 4000)
    P = np.column_stack([x * 4.0, np.full_like(x, ray_y * 4.0), np.full_like(x, 4.0)])
    uv, valid = cam.project(P)
    keep = valid & cam.in_image(uv, margin=2)
    distorted = np.zeros((cam.height, cam.width), np.uint8)
    pts = np.round(uv[keep] * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(distorted, [pts], False, 255, thickness=3, lineType=cv2.LINE_AA, shift=4)

    cols_d, rows_d = _line_rows(distorted)
    assert _straightness(cols_d, rows_d) > 10.0  # the drawn line really is curved

    undistorted = cam.undistort(distorted)
    cols, rows = _line_rows(undistorted[:, 40:-40])
    assert len(cols) > 300
    assert _straightness(cols, rows) < 0.75
    expected_row = cam.cy + cam.fy * ray_y
    assert np.abs(rows - expected_row).max() < 0.75

    if cam.model == "pinhole":
        ref = cv2.undistort(distorted, cam.K, cam.dist_array)
    else:
        ref = cv2.fisheye.undistortImage(distorted, cam.K, cam.dist_array, Knew=cam.K)
    assert np.abs(undistorted.astype(int) - ref.astype(int)).mean() < 0.5


def test_undistort_rejects_an_image_of_another_size():
    cam = CameraModel("pinhole", 640, 480, 400, 400, 319.5, 239.5)
    with pytest.raises(ValueError, match="image is 320x240 but the camera is 640x480"):
        cam.undistort(np.zeros((240, 320), np.uint8))


@pytest.mark.parametrize("model", ["pinhole", "fisheye"])
@pytest.mark.parametrize("sx, sy", [(0.5, 0.5), (2.0, 2.0), (0.25, 0.5)])
def test_scaled_camera_projects_onto_the_resized_image(model, sx, sy):
    rng = np.random.default_rng(7)
    cam = random_camera(rng, model)
    small = cam.scaled(sx, sy)
    assert (small.width, small.height) == (round(W * sx), round(H * sy))
    assert small.distortion == cam.distortion
    P = random_points(rng, 200, 0.5)
    uv, _ = cam.project(P)
    uv_small, _ = small.project(P)
    # Pixel centres: (u + 0.5) scales with the image, as cv2.resize maps them.
    expected = np.column_stack([(uv[:, 0] + 0.5) * sx - 0.5, (uv[:, 1] + 0.5) * sy - 0.5])
    np.testing.assert_allclose(uv_small, expected, atol=1e-9)
    # The image corners stay the image corners.
    corners = np.array([[-0.5, -0.5], [W - 0.5, H - 0.5]])
    rays = cam.unproject(corners)
    back, _ = small.project(rays)
    np.testing.assert_allclose(back, [[-0.5, -0.5], [small.width - 0.5, small.height - 0.5]], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="pinhole", distortion=(0.1, 0.2)), "pinhole distortion needs 5 coefficients, got 2"),
        (dict(model="fisheye", distortion=(0.1, 0.2, 0, 0, 0)), "fisheye distortion needs 4 coefficients, got 5"),
        (dict(model="equidistant"), "camera model must be 'pinhole' or 'fisheye', got 'equidistant'"),
        (dict(fx=0.0), "focal lengths must be positive, got fx=0.0"),
        (dict(fy=-400.0), "focal lengths must be positive"),
        (dict(width=0), "image size must be positive, got 0x480"),
    ],
    ids=["pinhole_coeffs", "fisheye_coeffs", "model_name", "zero_fx", "negative_fy", "zero_width"],
)
def test_constructor_rejects_bad_intrinsics(kwargs, message):
    args = dict(model="pinhole", width=640, height=480, fx=400.0, fy=400.0, cx=319.5, cy=239.5)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        CameraModel(**args)
    assert message in str(err.value)


def test_no_distortion_given_means_zeros_of_the_right_length():
    assert CameraModel("pinhole", 640, 480, 400, 400, 320, 240).distortion == (0.0,) * 5
    assert CameraModel("fisheye", 640, 480, 400, 400, 320, 240).distortion == (0.0,) * 4


def test_project_and_unproject_reject_wrong_shapes():
    cam = CameraModel("pinhole", 640, 480, 400, 400, 319.5, 239.5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cam.project(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        cam.unproject(np.zeros((4, 3)))
