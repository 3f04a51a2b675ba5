"""The ``perception`` command line: one entry point, one subcommand per job.

Errors are one clear line on stderr and a non-zero exit (set PERCEPTION_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

EXIT_ERROR = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.scenario == "boards":
        from perception.cli_calibrate import simulate_board_session

        return simulate_board_session(Path(args.out), args.seed if args.seed is not None else 0, args.poses)
    from tqdm import tqdm

    from calibration.yamlconf import load_yaml_file
    from drivers.recording import RecordingWriter
    from drivers.sim import SimConfig, SimulatedRig, default_rig

    config = load_yaml_file(SimConfig, args.config)
    overrides = {"seed": args.seed, "duration_s": args.duration, "weather": args.weather,
                 "lidar_columns": args.lidar_columns}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.duration_s <= 0:
        raise CliError(f"--duration must be positive, got {config.duration_s:g}")
    sim = SimulatedRig(config, default_rig(config.n_cameras))
    rig = sim.rig  # carries the rates actually simulated
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "command": " ".join(["perception", "simulate", *sys.argv[2:]]),
        "seed": str(config.seed),
        "weather": config.weather,
        "duration_s": f"{config.duration_s:g}",
    }
    counts: dict[str, int] = {}
    span_ns = int(config.duration_s * 1e9)
    with RecordingWriter(out, rig, metadata=metadata, jpeg_quality=args.jpeg_quality, compression=args.compression,
                         compression_level=args.compression_level) as writer, tqdm(
        total=round(config.duration_s, 1), unit="sim s", desc="simulate", disable=args.quiet,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim s [{elapsed}<{remaining}]",
    ) as bar:
        t0 = None
        for msg in sim.messages():
            writer.write(msg)
            counts[msg.sensor_id] = counts.get(msg.sensor_id, 0) + 1
            t0 = msg.stamp_ns if t0 is None else t0
            done = min(max(msg.stamp_ns - t0, 0), span_ns) / 1e9
            if done - bar.n >= 0.1:
                bar.update(round(done - bar.n, 1))
        bar.update(max(0.0, round(config.duration_s - bar.n, 1)))
    size_mb = out.stat().st_size / 1e6
    total = sum(counts.values())
    print(f"wrote {out} ({size_mb:.1f} MB, {total} messages, {len(counts)} channels, seed {config.seed}, "
          f"weather {config.weather})")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from perception.info import recording_info

    if args.sync and args.topics:
        raise CliError("--sync works on our .mcap recordings; convert the bag first")
    if args.sync and not Path(args.sync_config).exists():
        raise CliError(f"sync config not found: {args.sync_config}")

    if args.topics:
        from perception.info import bag_info

        report = bag_info(Path(args.recording), Path(args.topics))
    else:
        report = recording_info(Path(args.recording))
    print(report.format())
    errors = list(report.errors)
    if args.sync:
        from perception.info import sync_view

        view = sync_view(Path(args.recording), Path(args.sync_config))
        print(view.format())
        errors += view.errors
    return 0 if not errors else 1


def _cmd_train(args: argparse.Namespace) -> int:
    config = Path(args.config)
    if not config.exists():
        raise FileNotFoundError(f"no such config: {config}")
    if config.name.startswith("train_siren"):
        from perception.train_siren import main_train_siren

        path = main_train_siren(config, Path(args.out))
    else:
        from perception.train import TrainConfig, train

        path = train(TrainConfig.load(config), Path(args.out), progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def _benchmarks() -> dict[str, Path]:
    """name -> script for every benchmarks/bench_*.py (and accuracy.py) next to the package."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    found = {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))}
    if (folder / "accuracy.py").exists():
        found["accuracy"] = folder / "accuracy.py"
    return found


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    scripts = _benchmarks()
    if args.name not in scripts:
        raise CliError(f"no benchmark {args.name!r}; available: {', '.join(scripts) or 'none (no benchmarks/ folder)'}")
    sys.argv = [str(scripts[args.name]), *args.args]
    try:
        runpy.run_path(str(scripts[args.name]), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check every subcommand has --help)."""
    parser = argparse.ArgumentParser(
        prog="perception",
        description="Real-time camera/LiDAR/radar/IMU/audio fusion perception.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("simulate", help="simulate a drive with all sensors and ground truth into an MCAP recording",
                       description="Simulate a drive (deterministic by seed) and record it as one .mcap file.")
    p.add_argument("--out", required=True, help="output .mcap file")
    p.add_argument("--duration", type=float, help="seconds to simulate (default: from --config)")
    p.add_argument("--seed", type=int, help="random seed (default: from --config)")
    p.add_argument("--weather", choices=["clear", "rain", "fog", "night"], help="weather (default: from --config)")
    p.add_argument("--config", default=str(_default_config("sim_default.yaml")),
                   help="simulation config YAML (default: configs/sim_default.yaml)")
    p.add_argument("--lidar-columns", type=int, help="LiDAR azimuth columns per revolution (default: from --config)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of camera images (default 90)")
    p.add_argument("--compression", choices=["lz4", "zstd", "none"], default="lz4",
                   help="chunk compression: lz4 (default; fastest to write and replay) or zstd (about a quarter "
                        "smaller files)")
    p.add_argument("--compression-level", type=int, default=1,
                   help="zstd level with --compression zstd, 1 (fast) .. 19 (small); default 1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--scenario", choices=["drive", "boards"], default="drive",
                   help="drive (default), or boards: a parked car shown a chessboard at several poses, for "
                        "'perception calibrate lidar-camera'; its rig.yaml holds a wrong camera extrinsic")
    p.add_argument("--poses", type=int, default=10, help="board poses for --scenario boards (default 10)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("info", help="summarise a recording: channels, counts, rates, gaps, clock jumps",
                       description="Read a recording without running perception and summarise every channel.")
    p.add_argument("recording", help=".mcap recording (or, with --topics, a ROS 1 .bag / ROS 2 bag)")
    p.add_argument("--topics", help="topic->sensor map YAML for reading a foreign ROS bag "
                                    "(see configs/bag_topics_example.yaml)")
    p.add_argument("--sync", action="store_true",
                   help="also show how frames would be formed: complete vs partial, observed per-sensor offsets")
    p.add_argument("--sync-config", default=str(_default_config("sync_sim.yaml")),
                   help="sync config YAML for --sync (default: configs/sync_sim.yaml)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train the detection networks (or the siren detector) on simulated drives",
                       description="Train on simulated drives in every weather: seeded, resumable (rerun the same "
                                   "command to continue from OUT/last.pt), with periodic validation mAP. "
                                   "The shipped fused model takes four runs in turn: train_lidar_only, "
                                   "train_fusion, train_camera_radar, train_fusion_lidarless "
                                   "(recordings/models/README.md); train_lidar_only, train_camera_only and "
                                   "train_camera_radar are also the baselines, train_siren.yaml the siren "
                                   "detector.")
    p.add_argument("--config", required=True, help="training config YAML (configs/train_*.yaml)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, history.json, model.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ (prints a table of medians and ratios)",
                       description="Run benchmarks/bench_NAME.py (or accuracy.py) with the given arguments. "
                                   "Names: " + ", ".join(_benchmarks()))
    p.add_argument("name", help="benchmark name, e.g. pipeline, pillarize, kernels, recording, accuracy")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    p.set_defaults(func=_cmd_bench)

    from perception.cli_replay import add_replay_parsers

    add_replay_parsers(sub)

    from perception.cli_export import add_export_parser

    add_export_parser(sub)

    from perception.cli_eval import add_eval_parser

    add_eval_parser(sub)

    from perception.cli_calibrate import add_calibrate

    add_calibrate(sub)
    return parser


def _default_config(name: str) -> Path:
    """configs/NAME next to the package (source checkout), else relative to the working directory."""
    here = Path(__file__).resolve().parents[1] / "configs" / name
    return here if here.exists() else Path("configs") / name


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"perception {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI contract is one line, not a traceback
        if os.environ.get("PERCEPTION_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Our own errors (and their subclasses, e.g. TimeOffsetError) speak for themselves; others get their name.
        known = any(c.__name__ in {"CliError", "ConfigError", "RigError", "RecordingError", "CalibrationError",
                                   "FileNotFoundError", "BagError", "CalibrateCliError", "OverlayError", "EvalCliError",
                                   "ReplayError", "BackendUnavailable", "ExportError"} for c in type(e).__mro__)
        prefix = "" if known else f"{type(e).__name__}: "
        print(f"perception {args.command}: error: {prefix}{msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
