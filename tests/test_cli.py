"""End-to-end checks of the command line, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recordings" / "sample_drive.mcap"


def _perception(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _payloads(path: Path) -> list[tuple[str, int, bytes]]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        return [(ch.topic, m.log_time, m.data) for _, ch, m in make_reader(f).iter_messages()]


@pytest.fixture(scope="module")
def two_runs_same_seed(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = d / f"{name}.mcap"
        r = _perception("simulate", "--out", str(out), "--duration", "1.2", "--seed", str(seed),
                        "--weather", "rain", "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append(out)
    return outs


def test_simulate_same_seed_gives_identical_payloads(two_runs_same_seed):
    a, b, _ = two_runs_same_seed
    pa, pb = _payloads(a), _payloads(b)
    assert len(pa) > 100
    assert pa == pb


def test_simulate_different_seed_differs(two_runs_same_seed):
    a, _, c = two_runs_same_seed
    pa, pc = _payloads(a), _payloads(c)
    lidar_a = [p for t, _, p in pa if t.endswith("/points")]
    lidar_c = [p for t, _, p in pc if t.endswith("/points")]
    assert lidar_a and lidar_c and lidar_a != lidar_c


def test_simulated_recording_has_all_five_modalities_and_ground_truth(two_runs_same_seed):
    from drivers.recording import RecordingReader

    with RecordingReader(two_runs_same_seed[0]) as reader:
        schemas = {c.schema_name for c in reader.channels()}
        assert reader.rig is not None
    for needed in ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2", "radar_msgs/msg/RadarScan",
                   "sensor_msgs/msg/Imu"):
        assert needed in schemas
    assert any("Audio" in s for s in schemas)
    assert any("GroundTruth" in s for s in schemas)


def test_info_prints_every_sensor_with_its_rate(two_runs_same_seed):
    r = _perception("info", str(two_runs_same_seed[0]))
    assert r.returncode == 0, r.stderr
    for sensor in ("lidar_top", "cam_front", "cam_rear", "radar_front", "imu", "mic_array", "ground_truth"):
        assert sensor in r.stdout
    imu_line = next(line for line in r.stdout.splitlines() if line.startswith("imu "))
    assert " 200.0" in imu_line or " 199." in imu_line or " 200." in imu_line


def test_info_on_a_truncated_recording_reports_where_it_broke(two_runs_same_seed, tmp_path):
    data = two_runs_same_seed[0].read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = _perception("info", str(cut))
    assert r.returncode == 1
    assert "ERROR" in r.stdout and "lidar_top" in r.stdout


def test_simulate_rejects_a_bad_weather_in_one_line(tmp_path):
    r = _perception("simulate", "--out", str(tmp_path / "x.mcap"), "--weather", "snow")
    assert r.returncode != 0
    assert "invalid choice" in r.stderr


def test_simulate_rejects_an_unknown_config_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    text = (REPO / "configs" / "sim_default.yaml").read_text() + "\nsnowflakes: 3\n"
    cfg.write_text(text)
    r = _perception("simulate", "--out", str(tmp_path / "x.mcap"), "--config", str(cfg))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "snowflakes" in r.stderr
    assert not (tmp_path / "x.mcap").exists()


_FOREIGN_READER = r"""
import sys
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
path = sys.argv[1]
counts = {}
with open(path, "rb") as f:
    reader = make_reader(f, decoder_factories=[DecoderFactory()])
    names = [a.name for a in reader.iter_attachments()]
    assert "rig.yaml" in names, names
    for schema, channel, message, decoded in reader.iter_decoded_messages():
        counts[schema.name] = counts.get(schema.name, 0) + 1
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from pathlib import Path
rb = {}
with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
    for conn, t, raw in r.messages():
        msg = r.deserialize(raw, conn.msgtype)
        rb[conn.msgtype] = rb.get(conn.msgtype, 0) + 1
ours = [m for m in sys.modules if m.split(".")[0] in ("perception", "drivers", "calibration")]
assert not ours, ours
print("MCAP", sorted(counts.items()))
print("ROSBAGS", sorted(rb.items()))
"""


def test_sample_recording_opens_with_standard_readers_without_our_code():
    if not SAMPLE.exists():
        pytest.fail(f"the sample recording {SAMPLE} is missing")
    r = subprocess.run([sys.executable, "-c", _FOREIGN_READER, str(SAMPLE)], capture_output=True, text=True,
                       timeout=600, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    mcap_line = next(line for line in r.stdout.splitlines() if line.startswith("MCAP"))
    rosbags_line = next(line for line in r.stdout.splitlines() if line.startswith("ROSBAGS"))
    for t in ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Imu",
              "radar_msgs/msg/RadarScan"):
        assert t in mcap_line and t in rosbags_line


def test_calibrate_intrinsics_writes_the_rig_and_a_wrong_pattern_leaves_it_untouched(realdata, tmp_path):
    from calibration.rig import Rig

    boards = realdata / "opencv_chessboard"
    rig_path = tmp_path / "rig.yaml"
    rig_path.write_text((REPO / "configs" / "rig_sim.yaml").read_text())
    before = rig_path.read_text()
    bad = _perception("calibrate", "intrinsics", "--images", str(boards / "left*.jpg"), "--pattern", "7x5",
                      "--square", "0.025", "--camera", "cam_front", "--rig", str(rig_path), "--quiet")
    assert bad.returncode != 0 and "9x6" in bad.stderr
    assert rig_path.read_text() == before
    ok = _perception("calibrate", "intrinsics", "--images", str(boards / "left*.jpg"), "--pattern", "9x6",
                     "--square", "0.025", "--camera", "cam_front", "--rig", str(rig_path), "--out",
                     str(tmp_path / "pics"), "--quiet")
    assert ok.returncode == 0, ok.stderr
    cam = Rig.load(rig_path)["cam_front"].camera
    assert cam.width == 640 and abs(cam.fx - 533.1) < 3.0
    assert (tmp_path / "pics" / "cam_front_coverage.png").stat().st_size > 10_000


def test_calibrate_overlay_on_kitti_passes_the_true_rig_and_fails_a_1deg_error(realdata, tmp_path):
    kitti = str(realdata / "kitti_object_vis" / "training")
    good = _perception("calibrate", "overlay", "--kitti", kitti, "--out", str(tmp_path / "good"), "--check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASS" in good.stdout and len(list((tmp_path / "good").glob("kitti_*.png"))) == 3
    bad = _perception("calibrate", "overlay", "--kitti", kitti, "--out", str(tmp_path / "bad"), "--check",
                      "--perturb", "0,0,0,0,1,0")
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_calibrate_overlay_draws_recording_frames_with_ground_truth(tmp_path):
    r = _perception("calibrate", "overlay", str(SAMPLE), "--camera", "cam_rear", "--every", "50", "--out",
                    str(tmp_path))
    assert r.returncode == 0, r.stderr
    pics = sorted(tmp_path.glob("cam_rear_*.png"))
    assert len(pics) == 2
    import cv2

    picture = cv2.imread(str(pics[0]))
    assert picture.shape[1] == 640 and picture.shape[0] > 360  # image plus title and depth legend


def test_calibrate_lidar_camera_recovers_the_simulated_truth_and_writes_the_rig(tmp_path):
    import numpy as np

    from calibration.rig import Rig
    from calibration.transform import Transform
    from drivers.recording import RecordingReader

    rec = tmp_path / "boards.mcap"
    r = _perception("simulate", "--scenario", "boards", "--out", str(rec), "--seed", "4", "--poses", "8")
    assert r.returncode == 0, r.stderr
    with RecordingReader(rec) as reader:
        values = [float(v) for v in reader.metadata["true_ego_from_camera"].split()]
        believed = reader.rig
    truth = Transform.from_quaternion_wxyz("ego", "cam_front", values[3:], values[:3])
    rig_path = tmp_path / "rig.yaml"
    r = _perception("calibrate", "lidar-camera", str(rec), "--rig", str(rig_path))
    assert r.returncode == 0, r.stderr
    from calibration.registration import transform_error

    dt, dr = transform_error(Rig.load(rig_path).ego_from("cam_front"), truth)
    assert dt < 0.02 and dr < 0.2
    start = truth.inverse() @ believed.ego_from("cam_front")
    assert np.linalg.norm(start.translation) > 0.05  # it really started from a wrong rig


def test_calibrate_time_offset_on_the_sample_is_consistent_with_zero_and_refuses_the_imu(tmp_path):
    import re

    r = _perception("calibrate", "time-offset", str(SAMPLE), "--sensor", "lidar_top")
    assert r.returncode == 0, r.stderr
    m = re.search(r"offset ([-+0-9.]+) ms \+- ([0-9.]+) ms", r.stdout)
    assert m, r.stdout
    offset, sigma = float(m.group(1)), float(m.group(2))
    assert abs(offset) <= 3 * sigma  # the sample's clocks have no offset
    bad = _perception("calibrate", "time-offset", str(SAMPLE), "--sensor", "imu",
                      "--rig", str(tmp_path / "r.yaml"))
    assert bad.returncode != 0 and "camera, LiDAR, radar or microphone" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.yaml").exists()


def test_calibrate_time_offset_of_a_radar_writes_its_clock_offset_into_the_rig(tmp_path):
    """60 s of a slalom-like weave, recorded with the radar's clock 45 ms behind the IMU's and a rig that
    believes it is 0: the CLI finds the offset from the Doppler of the static world and writes it."""
    import dataclasses
    import re

    from calibration.rig import Rig
    from drivers.messages import ImuSample, RadarScan
    from drivers.recording import RecordingWriter
    from drivers.sim import SIM_CAMERA, SimConfig, default_rig
    from drivers.sim_calib import time_offset_drive

    base = default_rig(1)
    tiny = dataclasses.replace(base["cam_front"], camera=SIM_CAMERA.scaled(0.1))  # the simulator needs a camera
    rig = Rig("offsets", (tiny, base["imu"], base["radar_front"]))
    config = SimConfig(seed=2, duration_s=60.0, n_cameras=1, max_speed=10.0, traffic_density=0.0, n_sirens=0,
                       camera_rate_hz=1.0, clock_offset_ns={"radar_front": -45_000_000},
                       stamp_jitter_ns={"radar_front": 200_000, "imu": 50_000})
    rec = tmp_path / "weave.mcap"
    with RecordingWriter(rec, rig) as writer:
        for msg in time_offset_drive(config, rig, radius_m=(20.0, 35.0), arc_m=(2.0, 6.0),
                                     transition_m=(3.0, 6.0)).messages():
            if isinstance(msg, (ImuSample, RadarScan)):
                writer.write(msg)
    rig_path = tmp_path / "rig.yaml"
    r = _perception("calibrate", "time-offset", str(rec), "--sensor", "radar_front", "--rig", str(rig_path))
    assert r.returncode == 0, r.stderr
    m = re.search(r"offset ([-+0-9.]+) ms \+- ([0-9.]+) ms", r.stdout)
    assert m and f"wrote {rig_path}" in r.stdout, r.stdout
    offset_ms, sigma_ms = float(m.group(1)), float(m.group(2))
    assert abs(offset_ms + 45.0) < 3.0 and abs(offset_ms + 45.0) < 3 * sigma_ms, r.stdout
    written = Rig.load(rig_path)
    assert written["radar_front"].time_offset_ns == pytest.approx(offset_ms * 1e6, abs=1_000)
    assert written["imu"].time_offset_ns == 0
    assert written.ego_from("radar_front").allclose(rig.ego_from("radar_front"))


# A known sound event for the microphone array: a 30 ms chirp from a loudspeaker 7 m away, the array's clock
# 12.5 ms ahead of the reference clock, 2 s of 4-channel audio at 16 kHz in 100 ms chunks.
MIC_T0_NS = 1_700_000_000_000_000_000  # reference time of the first audio sample
MIC_OFFSET_NS = 12_500_000  # microphone clock minus reference clock
MIC_RATE = 16000
MIC_EMISSION_NS = MIC_T0_NS + 700_000_123  # reference clock
MIC_SOURCE = (6.0, -4.0, 1.2)  # ego frame [m]


def _chirp(t, duration_s: float = 0.03, f0: float = 600.0, f1: float = 5000.0):
    """Linear chirp under a Hann window, zero outside [0, duration]; t [s] since its start."""
    import numpy as np

    inside = (t >= 0) & (t <= duration_s)
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / duration_s * t * t)
    return np.where(inside, np.sin(phase) * np.sin(np.pi * t / duration_s) ** 2, 0.0)


def _write_wav(path: Path, waveform, rate: int) -> Path:
    import wave

    import numpy as np

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(waveform, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _chirp_session(tmp_path: Path, drop_chunk: int | None = None):
    """(recording, chirp WAV, rig): the array turned 90 deg (yaw) on the roof, so its microphones sit where
    only the rig's ego_from_sensor puts them; each channel hears the chirp after its own propagation delay."""
    import dataclasses

    import numpy as np

    from calibration.rig import Rig
    from calibration.transform import Transform
    from drivers.messages import AudioChunk
    from drivers.recording import RecordingWriter
    from drivers.sim import default_rig

    base = default_rig(1)
    turned = Transform.from_rpy("ego", "mic_array", 0.0, 0.0, np.pi / 2, (0.2, 0.0, 1.6))
    mic = dataclasses.replace(base["mic_array"], ego_from_sensor=turned)
    rig = Rig("mic_rig", (base["imu"], mic))
    yaw90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mics_ego = np.array([0.2, 0.0, 1.6]) + np.asarray(mic.mic_positions) @ yaw90.T
    n = np.arange(2 * MIC_RATE)
    t_ref = n / MIC_RATE  # reference time of each sample since MIC_T0_NS [s]
    emission_s = (MIC_EMISSION_NS - MIC_T0_NS) / 1e9
    rng = np.random.default_rng(3)
    audio = rng.normal(0.0, 0.005, (len(mics_ego), len(n)))
    for ch, p in enumerate(mics_ego):
        r = float(np.linalg.norm(p - np.array(MIC_SOURCE)))
        audio[ch] += 2.0 / r * _chirp(t_ref - emission_s - r / 343.0)
    rec = tmp_path / "chirp.mcap"
    chunk = MIC_RATE // 10
    with RecordingWriter(rec, rig) as writer:
        for k in range(len(n) // chunk):
            if k != drop_chunk:
                stamp = MIC_T0_NS + MIC_OFFSET_NS + k * 100_000_000  # microphone clock
                writer.write(AudioChunk("mic_array", stamp, k, audio[:, k * chunk:(k + 1) * chunk].astype(np.float32),
                                        MIC_RATE))
    wav = _write_wav(tmp_path / "chirp.wav", 0.5 * _chirp(np.arange(int(0.03 * MIC_RATE) + 1) / MIC_RATE), MIC_RATE)
    return rec, wav, rig


def _mic_args(rec: Path, wav: Path | None, rig_path: Path) -> list[str]:
    args = ["calibrate", "time-offset", str(rec), "--sensor", "mic_array", "--event-stamp", str(MIC_EMISSION_NS),
            "--event-position", ",".join(str(v) for v in MIC_SOURCE), "--rig", str(rig_path)]
    return args + (["--event-wav", str(wav)] if wav is not None else [])


def test_calibrate_time_offset_of_a_microphone_array_from_a_known_chirp_writes_its_clock_offset(tmp_path, capsys):
    import re

    from calibration.rig import Rig
    from perception.cli import main

    rec, wav, rig = _chirp_session(tmp_path)
    rig_path = tmp_path / "rig.yaml"
    rig.save(rig_path)  # believes the array's clock has no offset
    assert main(_mic_args(rec, wav, rig_path)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    m = re.search(r"offset ([-+0-9.]+) ms \+- ([0-9.]+) ms", out)
    assert m and f"wrote {rig_path}" in out, out
    offset_ms, sigma_ms = float(m.group(1)), float(m.group(2))
    assert abs(offset_ms - MIC_OFFSET_NS / 1e6) < 0.1 and sigma_ms < 0.05, out
    written = Rig.load(rig_path)
    assert abs(written["mic_array"].time_offset_ns - MIC_OFFSET_NS) < 100_000  # within 0.1 ms
    assert written["imu"].time_offset_ns == 0  # the reference is the event's clock, not the IMU's
    assert written.ego_from("mic_array").allclose(rig.ego_from("mic_array"))


def test_calibrate_time_offset_of_a_microphone_without_a_usable_event_or_audio_leaves_the_rig(tmp_path, capsys):
    import numpy as np

    from perception.cli import main

    rec, wav, rig = _chirp_session(tmp_path)
    rig_path = tmp_path / "rig.yaml"
    rig.save(rig_path)
    before = rig_path.read_bytes()
    slow_wav = _write_wav(tmp_path / "chirp_8k.wav", 0.5 * _chirp(np.arange(241) / 8000), 8000)
    gap_dir = tmp_path / "gap"
    gap_dir.mkdir()
    gap_rec, _, _ = _chirp_session(gap_dir, drop_chunk=12)
    gap_stamp = MIC_T0_NS + MIC_OFFSET_NS + 13 * 100_000_000
    cases = [
        (_mic_args(rec, None, rig_path), ["--event-wav"]),
        (_mic_args(rec, slow_wav, rig_path), ["8000 Hz", "16000 Hz"]),
        (_mic_args(gap_rec, wav, rig_path), ["gap", str(gap_stamp)]),
        (["calibrate", "time-offset", str(rec), "--sensor", "imu", "--rig", str(rig_path)],
         ["camera, LiDAR, radar or microphone"]),  # a kind without a method is refused
    ]
    for args, words in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1, (args, err)
        assert all(w in err for w in words) and "Traceback" not in err, (words, err)
        assert rig_path.read_bytes() == before  # a failed calibration leaves the rig alone


def test_calibrate_lidar_radar_recovers_the_radar_mount_from_a_wrong_rig_and_leaves_it_on_bad_input(tmp_path):
    """The parked car in front of corner reflectors for 5 s (LiDAR 10 Hz, radar 13 Hz), the radar really
    4 cm forward, 7 cm right and turned 2 deg from where the rig says."""
    import numpy as np

    from calibration.rig import Rig
    from calibration.transform import Transform
    from drivers.messages import LidarSweep
    from drivers.recording import RecordingWriter
    from drivers.sim import default_rig
    from drivers.sim_calib import ReflectorScene
    from drivers.sim_lidar import simulate_sweep
    from drivers.sim_radar import simulate_scan

    base = default_rig(1)
    believed = Rig("car", (base["lidar_top"], base["radar_front"], base["imu"]))  # radar at (3.7, 0, 0.5), yaw 0
    truth = Transform.from_rpy("ego", "radar_front", 0.0, 0.0, np.radians(2.0), (3.74, -0.07, 0.5))
    scene = ReflectorScene(1)
    t0 = 1_700_000_000_000_000_000
    rng_lidar, rng_radar = np.random.default_rng(1), np.random.default_rng(101)
    sweeps = []
    for k in range(50):
        t = 0.1 * (k + 1)
        res = simulate_sweep(scene, t, 0.1, believed.ego_from("lidar_top"), "clear", rng_lidar)
        sweeps.append(LidarSweep("lidar_top", t0 + int(round(t * 1e9)), k, res.points, res.time_offset, res.ring))
    scans = [simulate_scan(scene, k / 13, truth, "clear", rng_radar, "radar_front", t0 + int(round(k / 13 * 1e9)),
                           k).scan for k in range(65)]
    good, no_radar = tmp_path / "reflectors.mcap", tmp_path / "lidar_only.mcap"
    for path, messages in ((good, sweeps + scans), (no_radar, sweeps)):
        with RecordingWriter(path, believed) as writer:
            for msg in sorted(messages, key=lambda m: m.stamp_ns):
                writer.write(msg)
    rig_path = tmp_path / "rig.yaml"
    believed.save(rig_path)
    before = rig_path.read_bytes()

    bad = _perception("calibrate", "lidar-radar", str(no_radar), "--rig", str(rig_path))
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "radar_front" in bad.stderr and "Traceback" not in bad.stderr
    assert rig_path.read_bytes() == before  # a failed calibration leaves the rig alone

    r = _perception("calibrate", "lidar-radar", str(good), "--rig", str(rig_path))
    assert r.returncode == 0, r.stderr
    assert "1-sigma" in r.stdout and f"wrote {rig_path}" in r.stdout
    est = Rig.load(rig_path).ego_from("radar_front")
    dxy = est.translation[:2] - truth.translation[:2]
    dyaw = np.degrees(np.arctan2(est.rotation[1, 0], est.rotation[0, 0])) - 2.0
    assert np.hypot(*dxy) < 0.05 and abs(dyaw) < 0.3, r.stdout  # the library tests' tolerances
    assert est.translation[2] == pytest.approx(0.5)  # z (and roll, pitch) stay as in the rig
    assert np.hypot(*(believed.ego_from("radar_front").translation[:2] - truth.translation[:2])) > 0.05


def test_calibrate_lidar_lidar_recovers_a_corner_lidar_from_a_wrong_rig(tmp_path):
    import dataclasses

    import numpy as np

    from calibration.rig import Rig, Sensor
    from calibration.transform import Transform
    from drivers.recording import RecordingWriter
    from drivers.sim import SimConfig, SimulatedRig, default_rig

    truth = Transform.from_rpy("ego", "lidar_corner", *np.radians([1.0, 6.0, 40.0]), [3.6, 0.85, 0.75])
    rig = default_rig(1).replace_sensor(Sensor("lidar_corner", "lidar", truth, rate_hz=10.0))
    cfg = dataclasses.replace(SimConfig(), seed=5, duration_s=0.6, max_speed=0.5, traffic_density=0.5,
                              lidar_columns=900, n_cameras=1)
    wrong = truth @ Transform.from_rpy("lidar_corner", "lidar_corner", 0.02, -0.03, 0.04, [0.1, -0.1, 0.05])
    believed = rig.replace_sensor(Sensor("lidar_corner", "lidar", wrong, rate_hz=10.0))
    rec = tmp_path / "two_lidars.mcap"
    with RecordingWriter(rec, believed) as writer:
        for msg in SimulatedRig(cfg, rig).messages():
            if msg.sensor_id in ("lidar_top", "lidar_corner"):
                writer.write(msg)
    rig_path = tmp_path / "rig.yaml"
    r = _perception("calibrate", "lidar-lidar", str(rec), "--reference", "lidar_top", "--other", "lidar_corner",
                    "--rig", str(rig_path))
    assert r.returncode == 0, r.stderr
    from calibration.registration import transform_error

    dt, dr = transform_error(Rig.load(rig_path).ego_from("lidar_corner"), truth)
    assert dt < 0.02 and dr < 0.1
