"""``perception calibrate ...``: the calibration procedures of ``calibration/`` on the command line.

Every procedure prints its own error measure, draws pictures with ``--out`` and writes the rig only when it
succeeded (and only when ``--rig`` is given).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


class CalibrateCliError(Exception):
    """A user-facing error of a calibrate subcommand (printed as one line)."""


# ---------------------------------------------------------------------------------------------- chessboards
def cmd_intrinsics(args: argparse.Namespace) -> int:
    from calibration.intrinsics import calibrate_intrinsics, expand_image_glob, parse_pattern, write_intrinsics_to_rig
    from calibration.pictures import save_intrinsics_pictures

    result = calibrate_intrinsics(expand_image_glob(args.images), parse_pattern(args.pattern), args.square,
                                  args.model, progress=not args.quiet)
    print(result.summary())
    if args.out:
        pics = save_intrinsics_pictures(result, args.out, args.camera)
        print(f"pictures: {', '.join(str(p) for p in vars(pics).values())}")
    if args.rig:
        write_intrinsics_to_rig(args.rig, args.camera, result.camera, create_missing=args.create)
        print(f"wrote intrinsics of '{args.camera}' into {args.rig}")
    return 0


def cmd_stereo(args: argparse.Namespace) -> int:
    from calibration.intrinsics import expand_image_glob, parse_pattern
    from calibration.stereo import calibrate_stereo, save_stereo_pictures, write_stereo_to_rig

    result = calibrate_stereo(expand_image_glob(args.left), expand_image_glob(args.right), parse_pattern(args.pattern),
                              args.square, left_id=args.left_camera, right_id=args.right_camera, model=args.model)
    print(result.summary())
    if args.out:
        print(f"picture: {save_stereo_pictures(result, args.out)}")
    if args.rig:
        write_stereo_to_rig(args.rig, result, create_missing=args.create)
        print(f"wrote '{args.right_camera}' extrinsic (and both intrinsics) into {args.rig}")
    return 0


# ---------------------------------------------------------------------------------------------- overlays
def _recording_frames(path: Path, camera_id: str, lidar_id: str | None, every: int, limit: int):
    """(rig, lidar_id, frames, motion) from one of our recordings: frames are (sweep, nearest camera image,
    ground truth or None); motion is the EgoMotion of the whole drive (IMU + wheel speed), or None when the
    recording has no IMU."""
    from drivers.messages import CameraImage, GroundTruthBoxes, ImuSample, LidarSweep, VehicleSpeed
    from drivers.recording import RecordingReader
    from perception.egomotion import EgoMotion

    with RecordingReader(path) as reader:
        rig = reader.rig
        if rig is None:
            raise CalibrateCliError(f"{path} carries no rig.yaml attachment; pass --rig")
        if camera_id not in rig or rig[camera_id].kind != "camera":
            raise CalibrateCliError(f"{path}: no camera '{camera_id}' (cameras: {', '.join(rig.ids('camera'))})")
        lidar_id = lidar_id or (rig.ids("lidar") or [None])[0]
        if lidar_id is None:
            raise CalibrateCliError(f"{path}: the rig has no LiDAR")
        on_file = {c.sensor_id for c in reader.channels()}
        motion_ids = [s for s in rig.ids("imu")[:1] + rig.ids("vehicle_speed")[:1] if s in on_file]
        wanted = [camera_id, lidar_id] + (["ground_truth"] if "ground_truth" in on_file else []) + motion_ids
        imu_ids = [s for s in motion_ids if rig[s].kind == "imu"]
        motion = EgoMotion(rig.ego_from(imu_ids[0]), history_s=1e6) if imu_ids else None
        sweeps, images, truth = [], [], {}
        for msg in reader.messages(sensors=wanted):
            if isinstance(msg, ImuSample) and motion is not None:
                motion.add_imu(msg)
            elif isinstance(msg, VehicleSpeed) and motion is not None:
                motion.add_speed(msg)
            elif isinstance(msg, LidarSweep):
                sweeps.append(msg)
            elif isinstance(msg, CameraImage):
                images.append(msg)
            elif isinstance(msg, GroundTruthBoxes):
                truth[msg.stamp_ns] = msg
    if not sweeps or not images:
        raise CalibrateCliError(f"{path}: needs both '{lidar_id}' sweeps and '{camera_id}' images")
    stamps = np.array([im.stamp_ns for im in images])
    frames = []
    for sweep in sweeps[::every][:limit]:
        image = images[int(np.argmin(np.abs(stamps - sweep.stamp_ns)))]
        frames.append((sweep, image, truth.get(sweep.stamp_ns)))
    return rig, lidar_id, frames, motion


def cmd_overlay(args: argparse.Namespace) -> int:
    from calibration.overlay import (check_extrinsic, draw_lidar_overlay, overlay_title,
                                     prepare_edge_frame, rings_from_scan_order, write_png)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    edge_frames = []
    if args.kitti:
        from calibration.importers import read_kitti_calib, read_kitti_labels, rig_from_kitti_calib

        root = Path(args.kitti)
        names = args.frame or sorted(p.stem for p in (root / "velodyne").glob("*.bin"))
        if not names:
            raise CalibrateCliError(f"no KITTI frames under {root}/velodyne")
        for name in names:
            image_bgr = _read_image(root / "image_2" / f"{name}.png")
            image = image_bgr[:, :, ::-1].copy()
            rig = rig_from_kitti_calib(root / "calib" / f"{name}.txt", image.shape[1], image.shape[0])
            if args.rig_override:
                rig = _override_camera_pose(rig, "cam2", args.rig_override)
            labels_path = root / "label_2" / f"{name}.txt"
            labels = (read_kitti_labels(labels_path, read_kitti_calib(root / "calib" / f"{name}.txt").rect_from_lidar)
                      if labels_path.exists() else None)
            points = np.fromfile(root / "velodyne" / f"{name}.bin", np.float32).reshape(-1, 4)
            camera = rig["cam2"].camera
            picture = draw_lidar_overlay(image, camera, points, rig.transform("cam2", "lidar"),
                                         overlay_title("cam2", None, f"KITTI {name}"),
                                         labels.boxes if labels else None,
                                         rig.transform("cam2", "lidar") if labels else None,
                                         list(labels.class_names) if labels else None)
            print(f"wrote {write_png(out / f'kitti_{name}.png', picture)}")
            edge_frames.append((prepare_edge_frame(image, camera, points, rings_from_scan_order(points)),
                                rig.transform("cam2", "lidar")))
    else:
        if not args.recording:
            raise CalibrateCliError("give a recording, or --kitti DIR")
        from perception.align import camera_from_ego_at, deskew_sweep

        rig_override = None
        rig, lidar_id, frames, motion = _recording_frames(Path(args.recording), args.camera, args.lidar, args.every,
                                                          args.max_frames)
        if args.rig:
            from calibration.rig import Rig

            rig = Rig.load(args.rig)
        if args.rig_override:
            rig = _override_camera_pose(rig, args.camera, args.rig_override)
            rig_override = args.rig_override
        camera = rig[args.camera].camera
        for sweep, image, truth in frames:
            labels = [truth.class_names[i] for i in truth.labels] if truth is not None else None
            note = f"{lidar_id} sweep {sweep.seq}" + (" (perturbed rig)" if rig_override else "")
            if motion is not None:
                # Points of the sweep's instant, seen from the camera where it was at its exposure: the
                # picture and the check then judge the extrinsic, not the ego motion between the two stamps.
                points = deskew_sweep(sweep, rig.ego_from(lidar_id), motion)
                cam_from_points = camera_from_ego_at(rig.ego_from(args.camera), motion, sweep.stamp_ns,
                                                     image.stamp_ns)
                note += ", deskewed, motion-compensated"
            else:
                points, cam_from_points = sweep.points, rig.transform(args.camera, lidar_id)
            picture = draw_lidar_overlay(image.image, camera, points, cam_from_points,
                                         overlay_title(args.camera, image.stamp_ns, note),
                                         truth.boxes if truth is not None else None,
                                         cam_from_points if (truth is not None and motion is not None)
                                         else (rig.transform(args.camera, "ego") if truth is not None else None),
                                         labels)
            print(f"wrote {write_png(out / f'{args.camera}_{sweep.seq:05d}.png', picture)}")
            edge_frames.append((prepare_edge_frame(image.image, camera, points, sweep.ring), cam_from_points))
    if args.check:
        verdict = check_extrinsic(edge_frames)
        print(verdict.report())
        return 0 if verdict.passed else 1
    return 0


# ---------------------------------------------------------------------------------------------- LiDAR-camera
def simulate_board_session(out: Path, seed: int, n_poses: int) -> int:
    """Write a recording of a simulated chessboard session (one camera image and one LiDAR sweep per pose,
    1 s apart). The attached rig is the TRUE rig with the camera moved by 10 cm and 2 deg, as a rig looks
    before calibration; the true camera extrinsic is kept in the metadata (``true_ego_from_camera``)."""
    import dataclasses

    from calibration.transform import Transform
    from drivers.messages import CameraImage, LidarSweep
    from drivers.recording import RecordingWriter
    from drivers.sim_calib import lidar_camera_scenario

    scenario = lidar_camera_scenario(n_poses=n_poses, seed=seed)
    rig = scenario.rig
    cam = rig[scenario.camera_id]
    error = Transform.from_rpy(cam.sensor_id, cam.sensor_id, *np.radians([1.0, -1.5, 1.0]), [0.06, -0.05, 0.06])
    believed = rig.replace_sensor(dataclasses.replace(cam, ego_from_sensor=cam.ego_from_sensor @ error))
    truth = cam.ego_from_sensor
    t = cam.ego_from_sensor.translation
    metadata = {"scenario": "boards", "seed": str(seed), "target": repr(scenario.target),
                "true_ego_from_camera": " ".join(f"{v:.9f}" for v in [*truth.translation, *truth.rotation_wxyz])}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = 1_700_000_000_000_000_000
    with RecordingWriter(out, believed, metadata=metadata, jpeg_quality=None) as writer:
        for k, shot in enumerate(scenario.shots):
            stamp = t0 + k * 1_000_000_000
            n = len(shot.lidar_points)
            writer.write(LidarSweep(scenario.lidar_id, stamp, k, shot.lidar_points, np.zeros(n, np.float32),
                                    np.zeros(n, np.uint16)))
            writer.write(CameraImage(scenario.camera_id, stamp, k, shot.image))
    print(f"wrote {out}: {n_poses} board poses, camera '{scenario.camera_id}' off by 10 cm / 2 deg in its rig "
          f"(truth in metadata), target {scenario.target}; translation was {np.round(t, 3).tolist()}")
    return 0


def cmd_lidar_camera(args: argparse.Namespace) -> int:
    from calibration.intrinsics import parse_pattern
    from calibration.lidar_camera import ChessboardTarget, calibrate_lidar_camera, rig_with_lidar_camera
    from calibration.registration import transform_error

    # The car is parked: each sweep goes with the image nearest in time (within 50 ms).
    rig, pairs = _paired(args.recording, args.rig, args.lidar, args.camera, 50_000_000)
    cols, rows = parse_pattern(args.pattern)
    target = ChessboardTarget(cols=cols, rows=rows, square_m=args.square, border_m=args.border)
    result = calibrate_lidar_camera([image.image for _, image in pairs], [sweep.points for sweep, _ in pairs],
                                    rig[args.camera].camera, target, rig.transform(args.camera, args.lidar))
    print(result.summary())
    new_rig = rig_with_lidar_camera(rig, result, keep="lidar")
    dt, dr = transform_error(new_rig.ego_from(args.camera), rig.ego_from(args.camera))
    print(f"camera '{args.camera}' moves {dt * 100:.1f} cm and {dr:.2f} deg against the rig it started from")
    if args.rig:
        new_rig.save(args.rig)
        print(f"wrote {args.rig}")
    return 0


# ---------------------------------------------------------------------------------------------- time offsets
# (argparse attribute, flag) of the microphone-only options; the first three are required for a microphone.
_EVENT_OPTIONS = (("event_wav", "--event-wav"), ("event_stamp", "--event-stamp"),
                  ("event_position", "--event-position"), ("speed_of_sound", "--speed-of-sound"))


def cmd_time_offset(args: argparse.Namespace) -> int:
    from calibration.time_offset import (camera_imu_time_offset, lidar_imu_time_offset, radar_imu_time_offset,
                                         rig_with_time_offset)
    from drivers.messages import CameraImage, ImuSample, LidarSweep, RadarScan
    from drivers.recording import RecordingReader

    with RecordingReader(args.recording) as reader:
        rig = _starting_rig(reader, args.rig)
        if args.sensor not in rig or rig[args.sensor].kind not in ("camera", "lidar", "radar", "microphone"):
            raise CalibrateCliError(f"--sensor must be a camera, LiDAR, radar or microphone of the rig (cameras: "
                                    f"{', '.join(rig.ids('camera'))}; LiDARs: {', '.join(rig.ids('lidar'))}; "
                                    f"radars: {', '.join(rig.ids('radar'))}; microphones: "
                                    f"{', '.join(rig.ids('microphone'))})")
        kind = rig[args.sensor].kind
        if kind == "microphone":
            return _microphone_time_offset(args, reader, rig)
        given = [flag for attr, flag in _EVENT_OPTIONS if getattr(args, attr) is not None]
        if given:
            raise CalibrateCliError(f"{', '.join(given)}: only for a microphone; '{args.sensor}' is a {kind}, "
                                    "calibrated against the IMU")
        imu_id = args.imu or (rig.ids("imu") or [""])[0]
        msgs = list(reader.messages(sensors=[args.sensor, imu_id]))
    imu = [m for m in msgs if isinstance(m, ImuSample)]
    data = [m for m in msgs if isinstance(m, (CameraImage, LidarSweep, RadarScan))]
    if not imu or not data:
        raise CalibrateCliError(f"{args.recording}: needs '{args.sensor}' data and '{imu_id}' IMU samples")
    gyro_t = np.array([m.stamp_ns for m in imu], np.int64)
    gyro = np.array([m.angular_velocity for m in imu])
    stamps = [m.stamp_ns for m in data]
    if kind == "camera":
        result = camera_imu_time_offset(rig, args.sensor, imu_id, stamps, [m.image for m in data], gyro_t, gyro)
    elif kind == "lidar":
        result = lidar_imu_time_offset(rig, args.sensor, imu_id, stamps, [m.points for m in data],
                                       [m.time_offset for m in data], gyro_t, gyro)
    else:
        result = radar_imu_time_offset(rig, args.sensor, imu_id, stamps, [m.azimuth for m in data],
                                       [m.elevation for m in data], [m.radial_velocity for m in data], gyro_t, gyro)
    print(result.summary())
    if args.rig:
        rig_with_time_offset(rig, args.sensor, result, reference_id=imu_id).save(args.rig)
        print(f"wrote {args.rig}")
    return 0


def _microphone_time_offset(args: argparse.Namespace, reader, rig) -> int:
    """The microphone path of ``cmd_time_offset``: the known sound event (``--event-*``) against the
    microphone's audio in the recording. The result is microphone clock minus the clock of
    ``--event-stamp``, taken to be the rig's reference clock: it is written as the microphone's
    ``time_offset_ns`` as is (``rig_with_time_offset(..., reference_id=None)``), not added to the IMU's."""
    from calibration.time_offset import SPEED_OF_SOUND_MPS, microphone_time_offset, rig_with_time_offset

    missing = [flag for attr, flag in _EVENT_OPTIONS[:3] if getattr(args, attr) is None]
    if missing:
        raise CalibrateCliError(f"a microphone is calibrated from a known sound event: also give {', '.join(missing)}")
    if args.imu is not None:
        raise CalibrateCliError(f"--imu does not go with a microphone: '{args.sensor}' is timed against the clock "
                                "of --event-stamp")
    speed = SPEED_OF_SOUND_MPS if args.speed_of_sound is None else args.speed_of_sound
    if not (np.isfinite(speed) and speed > 0):
        raise CalibrateCliError(f"--speed-of-sound must be a positive number [m/s], got {speed}")
    source = _parse_event_position(args.event_position)
    waveform, wav_rate = _read_event_wav(args.event_wav)
    audio, first_stamp_ns, rate = _concatenate_audio(list(reader.messages(sensors=[args.sensor])), args.sensor,
                                                     args.recording)
    if wav_rate != rate:
        raise CalibrateCliError(f"{args.event_wav} is sampled at {wav_rate} Hz but '{args.sensor}' recorded "
                                f"{rate} Hz audio; resample the event to {rate} Hz")
    sensor = rig[args.sensor]
    if len(sensor.mic_positions) != audio.shape[0]:
        raise CalibrateCliError(f"'{args.sensor}' recorded {audio.shape[0]} channels but the rig lists "
                                f"{len(sensor.mic_positions)} mic_positions")
    # The rig's mic_positions are in the array's own frame; the source is given in the ego frame.
    mics_ego = sensor.ego_from_sensor.apply(np.asarray(sensor.mic_positions, dtype=np.float64))
    result = microphone_time_offset(audio, first_stamp_ns, rate, waveform, args.event_stamp, source, mics_ego,
                                    speed_of_sound_mps=speed)
    print(result.summary())
    if args.rig:
        rig_with_time_offset(rig, args.sensor, result, reference_id=None).save(args.rig)
        print(f"wrote {args.rig}")
    return 0


def _parse_event_position(text: str) -> np.ndarray:
    """``"X,Y,Z"`` -> (3,) float64 [m] (the sound source in the ego frame). Raises CalibrateCliError."""
    try:
        xyz = np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError:
        xyz = np.zeros(0)
    if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
        raise CalibrateCliError(f"--event-position must be X,Y,Z in metres (ego frame), got '{text}'")
    return xyz


def _read_event_wav(path: str) -> tuple[np.ndarray, int]:
    """The emitted sound from a mono 16-bit PCM WAV file (stdlib ``wave``).

    Args:
        path: the WAV file.
    Returns:
        (waveform (L,) float64 in [-1, 1) (int16 / 32768), sample rate [Hz]).
    Raises:
        CalibrateCliError: unreadable file, not mono, not 16-bit PCM, or fewer than 2 samples.
    """
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(n)
    except FileNotFoundError:
        raise CalibrateCliError(f"--event-wav: no such file {path}") from None
    except (wave.Error, EOFError, OSError) as e:
        raise CalibrateCliError(f"--event-wav {path} is not a readable PCM WAV file ({str(e) or type(e).__name__})") \
            from None
    if channels != 1 or width != 2:
        raise CalibrateCliError(f"--event-wav {path} must be mono 16-bit PCM, got {channels} channels of "
                                f"{8 * width}-bit samples")
    waveform = np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0
    if len(waveform) < 2:
        raise CalibrateCliError(f"--event-wav {path} holds {len(waveform)} samples; the event needs at least 2")
    return waveform, rate


def _concatenate_audio(chunks: list, sensor_id: str, recording: str) -> tuple[np.ndarray, int, int]:
    """One microphone's AudioChunks as one contiguous stream.

    Sample ``k`` of the result is taken to be at ``first_stamp_ns + k / sample_rate`` (microphone clock):
    the chunks must follow each other within one sample period (a stamp off by more means lost or
    repeated audio, and the stream's timing would be wrong after it). The check is between neighbouring
    chunks, so a sample rate that differs slightly from the nominal one (a slow drift of the stamps
    against the sample count) is not caught: record a few seconds around the event, not a long drive.

    Args:
        chunks: drivers.messages.AudioChunk of one sensor (any order; sorted by stamp here).
        sensor_id, recording: for the error messages.
    Returns:
        (samples (C, S) float32, one row per microphone, stamp of sample 0 [ns] microphone clock,
        sample rate [Hz]).
    Raises:
        CalibrateCliError: no chunks, a change of sample rate or channel count, or a gap or overlap of more
            than one sample between two chunks (naming the chunk's stamp).
    """
    from drivers.messages import AudioChunk

    chunks = sorted((c for c in chunks if isinstance(c, AudioChunk)), key=lambda c: c.stamp_ns)
    if not chunks:
        raise CalibrateCliError(f"{recording}: no audio of '{sensor_id}'")
    rate, n_ch = int(chunks[0].sample_rate), chunks[0].samples.shape[0]
    period_ns = 1e9 / rate
    for prev, cur in zip(chunks, chunks[1:]):
        if int(cur.sample_rate) != rate or cur.samples.shape[0] != n_ch:
            raise CalibrateCliError(f"{recording}: '{sensor_id}' audio changes from {n_ch} channels at {rate} Hz to "
                                    f"{cur.samples.shape[0]} at {cur.sample_rate} Hz at stamp {cur.stamp_ns}")
        gap_ns = cur.stamp_ns - (prev.stamp_ns + prev.samples.shape[1] * period_ns)
        if abs(gap_ns) > period_ns:
            what = "gap" if gap_ns > 0 else "overlap"
            raise CalibrateCliError(f"{recording}: '{sensor_id}' audio is not contiguous: a {what} of "
                                    f"{abs(gap_ns) / 1e6:.3f} ms before the chunk stamped {cur.stamp_ns} "
                                    f"(more than one sample, {period_ns / 1e6:.4f} ms)")
    samples = np.concatenate([np.asarray(c.samples, dtype=np.float32) for c in chunks], axis=1)
    return samples, int(chunks[0].stamp_ns), rate


# ---------------------------------------------------------------------------------------------- registration
def _starting_rig(reader, rig_arg: str | None):
    """The rig a procedure starts from: the --rig file when it exists, else the recording's attachment."""
    from calibration.rig import Rig

    rig = Rig.load(rig_arg) if rig_arg and Path(rig_arg).exists() else reader.rig
    if rig is None:
        raise CalibrateCliError(f"{reader.path} carries no rig.yaml attachment; pass --rig")
    return rig


def _paired(recording: str, rig_arg: str | None, a: str, b: str, max_dt_ns: int):
    """(rig, [(message of a, message of b nearest in time)]) from a recording."""
    from drivers.recording import RecordingReader

    with RecordingReader(recording) as reader:
        rig = _starting_rig(reader, rig_arg)
        for sid in (a, b):
            if sid not in rig:
                raise CalibrateCliError(f"rig '{rig.name}' has no sensor '{sid}' (has: {', '.join(rig.ids())})")
        msgs = list(reader.messages(sensors=[a, b]))
    first = [m for m in msgs if m.sensor_id == a]
    second = [m for m in msgs if m.sensor_id == b]
    if not first or not second:
        raise CalibrateCliError(f"{recording}: needs messages of both '{a}' and '{b}'")
    stamps = np.array([m.stamp_ns for m in second])
    pairs = []
    for m in first:
        i = int(np.argmin(np.abs(stamps - m.stamp_ns)))
        if abs(int(stamps[i]) - m.stamp_ns) <= max_dt_ns:
            pairs.append((m, second[i]))
    if not pairs:
        raise CalibrateCliError(f"{recording}: no '{a}' and '{b}' messages within {max_dt_ns / 1e6:.0f} ms of each other")
    return rig, pairs


def cmd_lidar_lidar(args: argparse.Namespace) -> int:
    from calibration.registration import calibrate_lidar_pair

    rig, pairs = _paired(args.recording, args.rig, args.reference, args.other, 20_000_000)
    result = calibrate_lidar_pair(rig, args.reference, args.other, [(a.points, b.points) for a, b in pairs[:args.frames]],
                                  use_rig_guess=not args.no_guess)
    print(result.registration.report())
    print(f"'{args.other}' moves {result.change_translation_m * 100:.1f} cm and {result.change_rotation_deg:.2f} deg "
          "against the rig it started from")
    if args.rig:
        result.rig.save(args.rig)
        print(f"wrote {args.rig}")
    return 0


def cmd_lidar_radar(args: argparse.Namespace) -> int:
    from calibration.registration import calibrate_radar

    rig, pairs = _paired(args.recording, args.rig, args.radar, args.lidar, 60_000_000)
    result = calibrate_radar(rig, args.lidar, args.radar, [(sweep.points, scan) for scan, sweep in pairs])
    print(result.result.report())
    if args.rig:
        result.rig.save(args.rig)
        print(f"wrote {args.rig}")
    return 0


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrateCliError(f"cannot read image {path}")
    return image


def _override_camera_pose(rig, camera_id: str, spec: str):
    """The rig with ``camera_id`` moved by 'dx,dy,dz,droll,dpitch,dyaw' (m, deg) in its own frame; used to
    see what a wrong extrinsic looks like (and that --check catches it)."""
    import dataclasses

    from calibration.transform import Transform

    try:
        dx, dy, dz, rr, rp, ry = (float(v) for v in spec.split(","))
    except ValueError as e:
        raise CalibrateCliError(f"--perturb expects 'dx,dy,dz,droll,dpitch,dyaw' (m, deg), got {spec!r}") from e
    sensor = rig[camera_id]
    step = Transform.from_rpy(camera_id, camera_id, *np.radians([rr, rp, ry]), [dx, dy, dz])
    return rig.replace_sensor(dataclasses.replace(sensor, ego_from_sensor=sensor.ego_from_sensor @ step))


def add_calibrate(sub) -> None:
    """Add ``calibrate`` and its procedures to the top-level subparsers."""
    cal = sub.add_parser("calibrate", help="estimate intrinsics, extrinsics and time offsets into the rig YAML",
                         description="Calibration procedures. Each reports its own error, draws pictures with "
                                     "--out, and writes the rig only when it succeeded.")
    csub = cal.add_subparsers(dest="procedure", metavar="PROCEDURE", required=True)

    p = csub.add_parser("intrinsics", help="camera intrinsics from chessboard images",
                        description="Camera intrinsics (pinhole k1 k2 p1 p2 k3, or fisheye) from chessboard images.")
    p.add_argument("--images", required=True, help="quoted glob of the images, e.g. 'DIR/*.jpg'")
    p.add_argument("--pattern", required=True, help="inner corners COLSxROWS, e.g. 9x6")
    p.add_argument("--square", type=float, required=True, help="square size [m]")
    p.add_argument("--model", choices=["pinhole", "fisheye"], default="pinhole")
    p.add_argument("--camera", required=True, help="camera id in the rig")
    p.add_argument("--rig", help="rig YAML to update (left out: only report)")
    p.add_argument("--create", action="store_true", help="add the camera to the rig if it is not there")
    p.add_argument("--out", help="folder for the coverage and undistortion pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_intrinsics)

    p = csub.add_parser("stereo", help="camera-camera extrinsic from chessboard image pairs",
                        description="Stereo extrinsic (right_from_left) from chessboard pairs matched by number.")
    p.add_argument("--left", required=True, help="quoted glob of the left images")
    p.add_argument("--right", required=True, help="quoted glob of the right images")
    p.add_argument("--pattern", required=True, help="inner corners COLSxROWS, e.g. 9x6")
    p.add_argument("--square", type=float, required=True, help="square size [m]")
    p.add_argument("--model", choices=["pinhole", "fisheye"], default="pinhole")
    p.add_argument("--left-camera", default="cam_left", help="rig id of the left camera")
    p.add_argument("--right-camera", default="cam_right", help="rig id of the right camera")
    p.add_argument("--rig", help="rig YAML to update (left out: only report)")
    p.add_argument("--create", action="store_true", help="add missing cameras to the rig")
    p.add_argument("--out", help="folder for the rectification picture")
    p.set_defaults(func=cmd_stereo)

    p = csub.add_parser("overlay", help="validation pictures: LiDAR points by depth and boxes on camera images",
                        description="Draw LiDAR points coloured by depth (and ground-truth or label boxes) on camera "
                                    "images of a recording, or of KITTI frames; --check scores the extrinsic "
                                    "against image edges (no ground truth needed).")
    p.add_argument("recording", nargs="?", help=".mcap recording (left out with --kitti)")
    p.add_argument("--camera", default="cam_front", help="camera id (recordings)")
    p.add_argument("--lidar", help="LiDAR id (default: the rig's first)")
    p.add_argument("--rig", help="rig YAML to use instead of the recording's")
    p.add_argument("--every", type=int, default=10, help="use every N-th sweep (default 10)")
    p.add_argument("--max-frames", type=int, default=10, help="at most this many pictures (default 10)")
    p.add_argument("--kitti", help="KITTI object folder with calib/, image_2/, velodyne/ (label_2/ optional)")
    p.add_argument("--frame", action="append", help="KITTI frame name, e.g. 000000 (repeatable; default all)")
    p.add_argument("--perturb", dest="rig_override", metavar="DX,DY,DZ,DROLL,DPITCH,DYAW",
                   help="move the camera by this much (m, deg, camera frame) to see a wrong extrinsic")
    p.add_argument("--check", action="store_true",
                   help="score the extrinsic against 12 nearby ones on image edges; exit 1 when one scores better")
    p.add_argument("--out", required=True, help="folder for the PNG pictures")
    p.set_defaults(func=cmd_overlay)

    p = csub.add_parser("lidar-camera", help="LiDAR-camera extrinsic from a chessboard shown at several poses",
                        description="Target-based LiDAR-camera extrinsic: board pose from each image (PnP), board "
                                    "plane from each LiDAR sweep (RANSAC), one joint solve over all poses. The "
                                    "rig's extrinsic is the starting guess (within ~0.5 m and a few degrees).")
    p.add_argument("recording", help=".mcap recording of the parked car and the board (see simulate --scenario boards)")
    p.add_argument("--camera", default="cam_front")
    p.add_argument("--lidar", default="lidar_top")
    p.add_argument("--pattern", default="7x5", help="inner corners COLSxROWS (default 7x5)")
    p.add_argument("--square", type=float, default=0.12, help="square size [m] (default 0.12)")
    p.add_argument("--border", type=float, default=0.08, help="white border around the squares [m] (default 0.08)")
    p.add_argument("--rig", help="rig YAML: read as the starting guess if it exists (else the recording's), and "
                                 "written with the result")
    p.set_defaults(func=cmd_lidar_camera)

    p = csub.add_parser("time-offset", help="clock offset of a camera, LiDAR or radar against the IMU, or of a "
                                            "microphone array from a known sound event",
                        description="Camera, LiDAR, radar: correlates the sensor's angular rate (camera feature "
                                    "motion, LiDAR sweep-to-sweep registration, or the yaw rate from a radar's "
                                    "Doppler of the static world) with the gyro over a drive with turns; reports "
                                    "sensor clock minus IMU clock with an uncertainty, and writes the IMU's rig "
                                    "offset plus it. Microphone: a known sound (--event-wav) emitted at a known "
                                    "time (--event-stamp) from a known place (--event-position) is found in every "
                                    "channel by a matched filter; arrival minus propagation delay minus emission "
                                    "is microphone clock minus the clock of --event-stamp, which is taken to be "
                                    "the rig's reference clock: the result is written as the microphone's "
                                    "time_offset_ns as it is (the IMU is not involved). The audio chunks must be "
                                    "contiguous (within one sample).")
    p.add_argument("recording", help=".mcap recording: a drive with enough rotation (curves), or for a microphone "
                                     "the audio around the sound event")
    p.add_argument("--sensor", required=True, help="camera, LiDAR, radar or microphone id")
    p.add_argument("--imu", help="IMU id (default: the rig's first; not for a microphone)")
    p.add_argument("--event-wav", metavar="FILE.wav",
                   help="microphone only (required): the emitted sound, mono 16-bit PCM WAV at the recording's "
                        "audio sample rate")
    p.add_argument("--event-stamp", type=int, metavar="NS",
                   help="microphone only (required): emission time of the WAV's first sample [ns], on the rig's "
                        "reference clock")
    p.add_argument("--event-position", metavar="X,Y,Z",
                   help="microphone only (required): the sound source [m] in the ego frame (x forward, y left, "
                        "z up); write --event-position=-X,Y,Z when X is negative")
    p.add_argument("--speed-of-sound", type=float, metavar="M/S",
                   help="microphone only: speed of sound [m/s] (default 343, air at 20 C; about 331.3 + 0.606 "
                        "per degree C)")
    p.add_argument("--rig", help="rig YAML: read if it exists (else the recording's), written with the offset")
    p.set_defaults(func=cmd_time_offset)

    p = csub.add_parser("lidar-lidar", help="LiDAR-LiDAR extrinsic by registration (open3d ICP)",
                        description="Mounting of one LiDAR relative to another from simultaneous sweeps "
                                    "(point-to-plane ICP over several frames; global registration with --no-guess).")
    p.add_argument("recording", help=".mcap recording with both LiDARs")
    p.add_argument("--reference", required=True, help="LiDAR whose mounting is trusted")
    p.add_argument("--other", required=True, help="LiDAR to calibrate")
    p.add_argument("--frames", type=int, default=5, help="sweep pairs to stack (default 5)")
    p.add_argument("--no-guess", action="store_true", help="ignore the rig's extrinsic; start from global registration")
    p.add_argument("--rig", help="rig YAML: read if it exists (else the recording's), written with the result")
    p.set_defaults(func=cmd_lidar_lidar)

    p = csub.add_parser("lidar-radar", help="LiDAR-radar extrinsic (x, y, yaw) from corner reflectors",
                        description="Radar mounting in the plane from corner reflectors seen by both sensors in a "
                                    "static scene; z, roll and pitch stay as in the rig.")
    p.add_argument("recording", help=".mcap recording of a static scene with corner reflectors")
    p.add_argument("--lidar", default="lidar_top")
    p.add_argument("--radar", default="radar_front")
    p.add_argument("--rig", help="rig YAML: read if it exists (else the recording's), written with the result")
    p.set_defaults(func=cmd_lidar_radar)
