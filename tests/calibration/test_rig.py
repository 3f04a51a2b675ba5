"""Rig: YAML round trip, lookups, transforms between sensors, and validation messages."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from calibration.rig import Rig, RigError
from calibration.yamlconf import ConfigError

# Camera looking forward: optical z -> ego x, optical x -> ego -y, optical y -> ego -z.
CAMERA_FORWARD_WXYZ = [0.5, -0.5, 0.5, -0.5]

RIG = {
    "name": "test_rig",
    "sensors": [
        {"id": "lidar_top", "kind": "lidar", "translation": [1.2, 0.0, 1.9], "rotation_wxyz": [1, 0, 0, 0],
         "time_offset_ns": 0, "rate_hz": 10.0},
        {"id": "cam_front", "kind": "camera", "translation": [1.5, 0.1, 1.6], "rotation_wxyz": CAMERA_FORWARD_WXYZ,
         "time_offset_ns": -2500000, "rate_hz": 30.0,
         "intrinsics": {"model": "pinhole", "width": 640, "height": 360, "fx": 400.0, "fy": 400.0,
                        "cx": 319.5, "cy": 179.5, "distortion": [-0.1, 0.01, 0.0, 0.0, 0.0]}},
        {"id": "radar_front", "kind": "radar", "translation": [3.6, 0.0, 0.5],
         "rotation_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
        {"id": "imu", "kind": "imu", "translation": [0.0, 0.0, 0.3], "rotation_wxyz": [1, 0, 0, 0]},
        {"id": "mic_array", "kind": "microphone", "translation": [0.0, 0.0, 1.8], "rotation_wxyz": [1, 0, 0, 0],
         "mic_positions": [[0.1, 0.1, 0], [0.1, -0.1, 0], [-0.1, 0.1, 0], [-0.1, -0.1, 0]]},
    ],
}


def rig_dict() -> dict:
    return copy.deepcopy(RIG)


def test_yaml_save_and_load_round_trip(tmp_path):
    rig = Rig.from_dict(rig_dict())
    path = tmp_path / "rig.yaml"
    rig.save(path)
    assert not (tmp_path / "rig.yaml.tmp").exists()
    back = Rig.load(path)
    assert back.name == "test_rig"
    assert back.ids() == rig.ids()
    for a, b in zip(rig.sensors, back.sensors):
        assert a.kind == b.kind
        assert a.ego_from_sensor.allclose(b.ego_from_sensor, atol=1e-12)
        assert a.camera == b.camera
        assert a.time_offset_ns == b.time_offset_ns
        assert a.rate_hz == b.rate_hz
        if a.mic_positions is None:
            assert b.mic_positions is None
        else:
            np.testing.assert_array_equal(a.mic_positions, b.mic_positions)
    # The file is plain YAML other tools can read.
    assert yaml.safe_load(path.read_text())["sensors"][1]["intrinsics"]["fx"] == 400.0


def test_ids_and_of_kind_keep_file_order():
    rig = Rig.from_dict(rig_dict())
    assert rig.ids() == ["lidar_top", "cam_front", "radar_front", "imu", "mic_array"]
    assert rig.ids("camera") == ["cam_front"]
    assert [s.sensor_id for s in rig.of_kind("lidar")] == ["lidar_top"]
    assert rig.of_kind("vehicle_speed") == []
    assert "imu" in rig and "cam_back" not in rig


def test_unknown_sensor_lookup_names_the_rig_and_what_it_has():
    rig = Rig.from_dict(rig_dict())
    with pytest.raises(KeyError) as err:
        rig["cam_back"]
    assert "test_rig" in str(err.value) and "cam_back" in str(err.value) and "cam_front" in str(err.value)


def test_transform_between_two_sensors_maps_a_point_seen_by_the_lidar_into_the_camera():
    rig = Rig.from_dict(rig_dict())
    cam_from_lidar = rig.transform("cam_front", "lidar_top")
    assert cam_from_lidar.name == "cam_front_from_lidar_top"
    # A point 10 m ahead of the camera, at the camera's height and lateral offset, in the LiDAR frame.
    p_ego = np.array([[11.5, 0.1, 1.6]])
    p_lidar = p_ego - np.array([1.2, 0.0, 1.9])
    p_cam = cam_from_lidar.apply(p_lidar)
    np.testing.assert_allclose(p_cam, [[0.0, 0.0, 10.0]], atol=1e-12)
    uv, valid = rig["cam_front"].camera.project(p_cam)
    assert valid[0]
    np.testing.assert_allclose(uv, [[319.5, 179.5]], atol=1e-9)
    # A point up and to the left in ego is up (-y) and left (-x) in the optical frame.
    p_cam2 = rig.transform("cam_front", "ego").apply(np.array([[11.5, 1.1, 2.6]]))
    np.testing.assert_allclose(p_cam2, [[-1.0, -1.0, 10.0]], atol=1e-12)


def test_transform_to_and_from_ego_matches_the_sensor_pose():
    rig = Rig.from_dict(rig_dict())
    assert rig.transform("ego", "radar_front").allclose(rig.ego_from("radar_front"))
    assert rig.transform("radar_front", "ego").allclose(rig.ego_from("radar_front").inverse())
    both = rig.transform("cam_front", "radar_front") @ rig.transform("radar_front", "cam_front")
    np.testing.assert_allclose(both.matrix, np.eye(4), atol=1e-12)


def test_replace_sensor_returns_a_new_validated_rig():
    rig = Rig.from_dict(rig_dict())
    moved = Rig.from_dict({"name": "x", "sensors": [dict(RIG["sensors"][2], translation=[3.7, 0.0, 0.5])]})
    new = rig.replace_sensor(moved["radar_front"])
    assert new.ego_from("radar_front").translation[0] == 3.7
    assert rig.ego_from("radar_front").translation[0] == 3.6
    assert new.ids() == rig.ids()


def expect_error(data: dict, *fragments: str) -> str:
    with pytest.raises(ConfigError) as err:
        Rig.from_dict(data, "rig.yaml")
    msg = str(err.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_non_orthonormal_rotation_matrix_is_named():
    d = rig_dict()
    d["sensors"][2]["rotation_matrix"] = [[1, 0, 0], [0, 1.05, 0], [0, 0, 1]]
    expect_error(d, "rig.yaml", "radar_front", "rotation_matrix", "not orthonormal")


def test_reflecting_rotation_matrix_is_named():
    d = rig_dict()
    d["sensors"][2]["rotation_matrix"] = [[1, 0, 0], [0, -1, 0], [0, 0, 1]]
    expect_error(d, "radar_front", "reflection", "not right-handed")


def test_non_unit_quaternion_is_named():
    d = rig_dict()
    d["sensors"][0]["rotation_wxyz"] = [1, 0, 0, 0.2]
    expect_error(d, "lidar_top", "rotation_wxyz is not a unit quaternion", "1.0198")


def test_camera_without_intrinsics_is_named():
    d = rig_dict()
    del d["sensors"][1]["intrinsics"]
    expect_error(d, "rig.yaml", "cam_front", "camera has no intrinsics")


def test_intrinsics_on_a_lidar_are_refused():
    d = rig_dict()
    d["sensors"][0]["intrinsics"] = d["sensors"][1]["intrinsics"]
    expect_error(d, "lidar_top", "intrinsics given for a lidar")


def test_bad_intrinsics_are_named_with_the_sensor():
    d = rig_dict()
    d["sensors"][1]["intrinsics"]["distortion"] = [0.1, 0.2]
    expect_error(d, "cam_front", "needs 5 coefficients, got 2")


def test_microphone_without_positions_is_named():
    d = rig_dict()
    del d["sensors"][4]["mic_positions"]
    expect_error(d, "mic_array", "mic_positions")


def test_unknown_key_is_named():
    d = rig_dict()
    d["sensors"][3]["mounting_height"] = 0.3
    msg = expect_error(d, "rig.yaml", "sensors[3]", "unknown key 'mounting_height'")
    assert "allowed:" in msg and "translation" in msg


def test_unknown_top_level_key_is_named():
    d = rig_dict()
    d["vehicle"] = "car"
    expect_error(d, "unknown key 'vehicle'")


def test_duplicate_sensor_id_is_named():
    d = rig_dict()
    d["sensors"].append(copy.deepcopy(d["sensors"][0]))
    expect_error(d, "rig.yaml", "duplicate sensor id 'lidar_top'")


@pytest.mark.parametrize("key", ["id", "kind", "translation"])
def test_missing_required_key_is_named(key):
    d = rig_dict()
    del d["sensors"][1][key]
    expect_error(d, "sensors[1]", f"missing required key '{key}'")


def test_both_rotation_forms_are_refused():
    d = rig_dict()
    d["sensors"][0]["rotation_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    expect_error(d, "lidar_top", "exactly one of rotation_wxyz or rotation_matrix")


def test_missing_rotation_is_refused():
    d = rig_dict()
    del d["sensors"][3]["rotation_wxyz"]
    expect_error(d, "'imu'", "exactly one of rotation_wxyz or rotation_matrix")


def test_unknown_sensor_kind_is_named():
    d = rig_dict()
    d["sensors"][2]["kind"] = "sonar"
    expect_error(d, "sensors[2].kind", "must be one of", "'sonar'")


def test_wrong_translation_length_is_named():
    d = rig_dict()
    d["sensors"][0]["translation"] = [1.0, 2.0]
    expect_error(d, "sensors[0].translation", "expected 3 items, got 2")


def test_invalid_yaml_and_missing_file_give_rig_errors(tmp_path):
    with pytest.raises(RigError, match="not valid YAML"):
        Rig.from_yaml("name: [unclosed", "broken.yaml")
    with pytest.raises(RigError, match="cannot read rig file"):
        Rig.load(tmp_path / "absent.yaml")
