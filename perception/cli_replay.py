"""``perception replay`` and ``perception live``: the detection pipeline on a recording or a live rig.

    perception replay recordings/sample_drive.mcap --out runs/sample
    perception live --rig configs/rig_sim.yaml --config configs/pipeline_default.yaml --record live.mcap

Both build the same objects (:func:`perception.pipeline.build_pipeline`) and the same
:class:`~perception.executor.Executor`; only the source and the clock differ. A run folder holds
``detections.jsonl``, ``ground_truth.jsonl`` (when the source carries ground truth), ``latency.json``,
``run.json`` (resolved config, git revision, backend, model hashes, rig, recording, tags) and
``detections.mcap`` (chosen sensor channels plus detections for Foxglove); ``--video`` adds a BEV video.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from perception.decode import Detections3D
from perception.sync import SyncedFrame

ROOT = Path(__file__).resolve().parents[1]
GT_MATCH_NS = 5_000_000


class ReplayError(Exception):
    """A replay or live run cannot start (bad arguments, missing files)."""


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _GroundTruth:
    """Ground truth seen on the source, written re-stamped to the frame it belongs to (nearest LiDAR stamp
    within 5 ms), in frame order, so the results files pair up line by line.

    A frame may leave before its ground truth arrives (ground truth is stamped with the sweep and comes
    after it), so emitted frames wait here for theirs; the source thread calls :meth:`add`, the pipeline
    thread :meth:`frame_emitted`."""

    def __init__(self, path: Path):
        import threading

        self.pending: dict[int, object] = {}
        self.waiting: deque[int] = deque()
        self.path = path
        self.writer = None
        self.frames = 0
        self._lock = threading.Lock()

    def add(self, msg) -> None:
        with self._lock:
            self.pending[msg.stamp_ns] = msg
            if len(self.pending) > 64:
                for k in sorted(self.pending)[:-64]:
                    del self.pending[k]
            self._drain()

    def frame_emitted(self, stamp_ns: int) -> None:
        with self._lock:
            self.waiting.append(int(stamp_ns))
            if len(self.waiting) > 64:  # a source without ground truth: forget the oldest
                self.waiting.popleft()
            self._drain()

    def frame_for(self, stamp_ns: int):
        """FrameBoxes of the ground truth nearest ``stamp_ns`` (re-stamped), or None (not seen yet)."""
        with self._lock:
            k = self._nearest(stamp_ns)
            return None if k is None else self._restamped(k, stamp_ns)

    def _restamped(self, k: int, stamp_ns: int):
        from perception.evaluation.results import frame_from_ground_truth

        return replace(frame_from_ground_truth(self.pending[k]), stamp_ns=int(stamp_ns))

    def _nearest(self, stamp_ns: int) -> int | None:
        if not self.pending:
            return None
        k = min(self.pending, key=lambda s: abs(s - stamp_ns))
        return k if abs(k - stamp_ns) <= GT_MATCH_NS else None

    def _drain(self) -> None:
        from perception.evaluation.results import ResultsWriter

        while self.waiting:
            stamp = self.waiting[0]
            k = self._nearest(stamp)
            if k is None:
                if self.pending and max(self.pending) > stamp + GT_MATCH_NS:
                    self.waiting.popleft()  # ground truth went past this frame: it has none
                    continue
                return
            if self.writer is None:
                self.writer = ResultsWriter(self.path)
            self.writer.write(self._restamped(k, stamp))
            self.frames += 1
            self.waiting.popleft()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Outputs:
    """Every per-frame output of a run (one sink for the executor)."""

    def __init__(self, out: Path, pipeline, gt: _GroundTruth, mcap_sink, video, renderer):
        from perception.evaluation.results import ResultsWriter

        self.results = ResultsWriter(out / "detections.jsonl")
        self.pipeline = pipeline
        self.gt = gt
        self.mcap = mcap_sink
        self.video = video
        self.renderer = renderer
        self.detections = 0
        self.sirens = 0
        self.health = None

    def write(self, frame: SyncedFrame, dets: Detections3D, emit_ns: int) -> None:
        self.results.write(dets.to_frame_boxes())
        self.detections += len(dets)
        self.sirens += len(dets.siren_events)
        self.gt.frame_emitted(frame.stamp_ns)
        if self.mcap is not None:
            self.mcap.write(dets, emit_ns)
        if self.video is not None:
            self.video.write(self._picture(frame, dets, self.gt.frame_for(frame.stamp_ns)))

    def _picture(self, frame: SyncedFrame, dets: Detections3D, gt_frame):
        from perception.align import RadarPoints

        x = self.pipeline.last_inputs
        r = x.radar_points
        speed = np.hypot(r[:, 3], r[:, 4])
        sign = np.sign(r[:, 3] * r[:, 0] + r[:, 4] * r[:, 1])
        radar = RadarPoints(r[:, :3], (speed * sign).astype(np.float32), np.zeros(len(r), np.float32), r[:, 5], r[:, 6])
        shown = dets[dets.scores >= 0.3]
        missing = f" missing: {','.join(sorted(frame.missing))}" if frame.missing else ""
        title = f"frame {frame.seq}  {frame.stamp_ns / 1e9:.2f} s  {len(shown)} detections{missing}"
        return self.renderer.render(x.lidar_points, radar, shown, gt_frame, title)

    def close(self) -> None:
        self.results.close()
        self.gt.close()
        if self.mcap is not None:
            self.mcap.close()
        if self.video is not None:
            self.video.close()


def _progress_bar(total: int | None, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="replay", disable=quiet, file=sys.stderr)


def run_pipeline(messages, rig, config, out: Path, *, recording=None, realtime: bool = False, speed: float = 1.0,
                 drop: frozenset[str] = frozenset(), video: Path | None = None, copy_sensors=None,
                 tags: dict | None = None, source_name: str = "", expected_frames: int | None = None,
                 quiet: bool = False, paced_by_source: bool = False):
    """Run the configured pipeline over ``messages`` and write the run folder ``out``.

    Returns (RunStats, LatencyLog, _Outputs)."""
    from calibration.yamlconf import to_dict
    from perception.executor import Executor
    from perception.pipeline import build_pipeline, resolve_path
    from perception.sync import SyncConfig, Synchronizer
    from perception.timing import LatencyLog

    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(drop) - set(rig.ids()))
    if unknown:
        raise ReplayError(f"--drop {unknown[0]}: no such sensor in the rig (sensors: {', '.join(rig.ids())})")
    pipeline, hashes = build_pipeline(config, rig, drop=frozenset(drop), timing=True)
    sync = Synchronizer(SyncConfig.load(resolve_path(config.sync_config)))
    gt = _GroundTruth(out / "ground_truth.jsonl")
    mcap_sink = None
    if recording is not None:
        from perception.sinks import BackgroundSink, DetectionsMcapSink

        copy = copy_sensors if copy_sensors is not None else [s for s in (config.lidar_id, *config.camera_ids,
                                                                          *config.radar_ids) if s in rig]
        # Copying the sensor channels costs ~15 ms a frame: a thread of its own, off the frame's path.
        mcap_sink = BackgroundSink(DetectionsMcapSink(
            out / "detections.mcap", recording, copy, pipeline.cfg.class_names,
            metadata={"git_revision": _git_revision(), "backend": config.backend}))
    vid = renderer = None
    if video is not None:
        from perception.bev_video import BevRenderer, VideoSink

        renderer = BevRenderer(pipeline.cfg.grid, 6.0, pipeline.cfg.class_names)
        probe = renderer.render(np.zeros((0, 5), np.float32), None, None, None, "")
        vid = VideoSink(video, 10.0, (probe.shape[1], probe.shape[0]))
    outputs = _Outputs(out, pipeline, gt, mcap_sink, vid, renderer)
    latency = LatencyLog(deadline_ms=config.deadline_ms)
    run_info = {
        "recording": source_name, "tags": tags or {}, "git_revision": _git_revision(),
        "backend": config.backend, "device": config.device, "config": to_dict(config), "models": hashes,
        "drop": sorted(drop), "realtime": realtime, "speed": speed, "rig": rig.to_dict(),
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=1, default=str))
    bar = _progress_bar(expected_frames, quiet)

    def progress(stats):
        bar.update(stats.frames - bar.n)

    ex = Executor(messages, sync, pipeline, [outputs], latency, config.deadline_ms, realtime, speed,
                  on_ground_truth=gt.add, progress=progress, paced_by_source=paced_by_source)
    # Per-message sync events (late, unmatched) are counted in the health report written at the end,
    # not logged one by one during a run.
    sync_log = logging.getLogger("perception.sync")
    level = sync_log.level
    sync_log.setLevel(logging.ERROR)
    try:
        stats = ex.run()
    finally:
        sync_log.setLevel(level)
        bar.close()
        latency.write(out / "latency.json")
        health = sync.report()
        (out / "sync_health.json").write_text(json.dumps(health.to_json_dict(), indent=1))
    outputs.health = health
    return stats, latency, outputs, pipeline


def _summary(stats, latency, outputs, out: Path, config) -> str:
    from perception.timing import format_summary_table

    lines = [format_summary_table(latency), "",
             f"frames emitted {stats.frames} in {stats.wall_s:.1f} s wall; detections {outputs.detections} "
             f"(score >= {config.score_threshold}); siren events {outputs.sirens}; backend {config.backend}",
             *([f"the simulated rig rendered slower than real time: the clock waited {stats.source_lag_s:.1f} s "
                f"for it (latency counts from when its data was ready)"] if stats.source_lag_s > 0 else []),
             f"LiDAR pillar budget {outputs.pipeline.cfg.lidar_max_pillars}: full in "
             f"{outputs.pipeline.pillar_overflows} frames (pillars beyond it dropped)",
             "sync: " + ", ".join(f"{r.sensor_id} missing {r.missing} late {r.late}" for r in outputs.health.sensors
                                  if r.role != "unconfigured"),
             f"outputs in {out}/: detections.jsonl, latency.json, run.json, sync_health.json"
             + (", ground_truth.jsonl" if outputs.gt.frames else "")
             + (", detections.mcap" if outputs.mcap is not None else "")]
    return "\n".join(lines)


def _load_config(args):
    from perception.pipeline import PipelineConfig, resolve_path

    path = resolve_path(args.config)
    if not path.exists():
        raise ReplayError(f"no such config: {args.config}")
    cfg = PipelineConfig.load(path)
    if args.backend:
        cfg = replace(cfg, backend=args.backend)
    if getattr(args, "device", None):
        cfg = replace(cfg, device=args.device)
    return cfg


def _copied_sensors(args: argparse.Namespace):
    """Sensors copied into detections.mcap: as asked; by default all in a replay as fast as possible, none in
    a real-time replay, which stands for a live run (no recording to copy from, and the copy costs ~15 ms of
    CPU a frame that a live run does not spend)."""
    if args.copy_sensors is not None:
        return args.copy_sensors
    return [] if args.realtime else None


def cmd_replay(args: argparse.Namespace) -> int:
    from drivers.recording import RecordingReader
    from perception.pipeline import image_reduction_for

    rec = Path(args.recording)
    if not rec.exists():
        raise ReplayError(f"no such recording: {rec}")
    config = _load_config(args)
    reader = RecordingReader(rec)
    if reader.rig is None:
        raise ReplayError(f"{rec} carries no rig.yaml attachment; cannot place its sensors")
    out = Path(args.out) if args.out else Path("runs") / f"replay-{rec.stem}"
    meta = dict(getattr(reader, "metadata", {}) or {})
    tags = {k: meta[k] for k in ("weather",) if k in meta}
    n_lidar = next((c.message_count for c in reader.channels() if c.sensor_id == config.lidar_id and c.primary), None)
    # Camera images are decoded straight at the network's scale (JPEG's own downscaling, about half the
    # cost of a full decode and a resize).
    messages = reader.messages(image_reduction=image_reduction_for(config, reader.rig))
    stats, latency, outputs, _ = run_pipeline(
        messages, reader.rig, config, out, recording=reader, realtime=args.realtime, speed=args.speed,
        drop=frozenset(args.drop or ()), video=Path(args.video) if args.video else None,
        copy_sensors=_copied_sensors(args), tags=tags, source_name=str(rec), expected_frames=n_lidar,
        quiet=args.quiet)
    print(_summary(stats, latency, outputs, out, config))
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from calibration.rig import Rig
    from calibration.yamlconf import load_yaml_file
    from drivers.sim import SimConfig, SimulatedRig

    config = _load_config(args)
    rig = Rig.load(args.rig)
    sim_cfg = load_yaml_file(SimConfig, args.sim_config)
    sim_cfg = replace(sim_cfg, duration_s=args.duration, n_cameras=len(rig.ids("camera")))
    source = SimulatedRig(sim_cfg, rig)
    messages = source.messages()
    recorder = None
    if args.record:
        from drivers.recording import RecordingWriter

        recorder = RecordingWriter(args.record, rig)

        def recorded(it):
            for m in it:
                recorder.write(m)
                yield m

        messages = recorded(messages)
    out = Path(args.out) if args.out else Path("runs") / "live"
    silence = set(args.silence or ())

    def silenced(it):
        # --silence SENSOR@SECONDS: the sensor stops sending at that time (a failing driver).
        cut = {}
        for spec in silence:
            sid, _, t = spec.partition("@")
            cut[sid] = float(t or 0)
        t0 = None
        for m in it:
            t0 = m.stamp_ns if t0 is None else t0
            if m.sensor_id in cut and (m.stamp_ns - t0) / 1e9 >= cut[m.sensor_id]:
                continue
            yield m

    try:
        stats, latency, outputs, _ = run_pipeline(
            silenced(messages), rig, config, out, realtime=True, speed=args.speed, drop=frozenset(args.drop or ()),
            video=Path(args.video) if args.video else None, source_name=f"simulated rig {args.rig}",
            expected_frames=int(args.duration * 10), quiet=args.quiet, paced_by_source=True)
    finally:
        if recorder is not None:
            recorder.close()
    print(_summary(stats, latency, outputs, out, config))
    return 0


def add_replay_parsers(sub) -> None:
    from perception.cli import _default_config

    p = sub.add_parser("replay", help="run the detection pipeline over a recording",
                       description="Replay a recording through sync -> frontend -> networks -> decoding and write "
                                   "detections.jsonl, latency.json, run.json, detections.mcap (Foxglove) and, "
                                   "with --video, a bird's-eye-view video.")
    p.add_argument("recording", help=".mcap recording made by 'perception simulate' or a driver")
    p.add_argument("--config", default=str(_default_config("pipeline_default.yaml")),
                   help="pipeline config YAML (default: configs/pipeline_default.yaml)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the config's backend")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--realtime", action="store_true",
                   help="deliver messages at their stamps on the wall clock; late frames are dropped and counted")
    p.add_argument("--speed", type=float, default=1.0, help="real-time factor with --realtime (default 1)")
    p.add_argument("--drop", nargs="+", metavar="SENSOR", help="treat these sensors as absent (degraded mode)")
    p.add_argument("--out", help="run folder (default runs/replay-<recording name>)")
    p.add_argument("--video", help="also write a bird's-eye-view video (.mp4)")
    p.add_argument("--copy-sensors", nargs="*", metavar="SENSOR",
                   help="sensor channels copied into detections.mcap (default: LiDAR, cameras, radar; none "
                        "with --realtime, which stands for a live run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("live", help="run the detection pipeline live (the simulated rig in real time until "
                                    "sensor drivers are configured)",
                       description="Run the same executor as replay on a live source, in real time.")
    p.add_argument("--rig", default=str(_default_config("rig_sim.yaml")), help="rig YAML (default configs/rig_sim.yaml)")
    p.add_argument("--config", default=str(_default_config("pipeline_default.yaml")), help="pipeline config YAML")
    p.add_argument("--sim-config", default=str(_default_config("sim_default.yaml")),
                   help="simulated rig settings (the live source)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    p.add_argument("--speed", type=float, default=1.0, help="source speed factor (3 or 10 = overload test)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the config's backend")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--drop", nargs="+", metavar="SENSOR", help="treat these sensors as absent")
    p.add_argument("--silence", nargs="+", metavar="SENSOR@S", help="a sensor goes silent S seconds in")
    p.add_argument("--record", help="also record the live input to this .mcap")
    p.add_argument("--out", help="run folder (default runs/live)")
    p.add_argument("--video", help="also write a bird's-eye-view video (.mp4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_live)
