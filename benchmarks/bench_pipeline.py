"""The detection pipeline's latency on this machine: per stage and end to end, and each network on
ONNX Runtime vs torch.

    .venv/bin/python benchmarks/bench_pipeline.py [--recording recordings/sample_drive.mcap] [--realtime]
        [--config configs/pipeline_default.yaml]

1. Replays the recording through the full pipeline with each backend (torch = the reference, onnxruntime =
   the CPU default), 2 threads, and prints per-stage p50/p95/p99/max [ms], end-to-end latency and frame
   counts. With --realtime the onnxruntime run is real time (messages delivered at their stamps; frames that
   cannot make the 100 ms deadline are dropped and counted).
2. Sums the stages that are not networks (align = frame preparation incl. deskew and accumulation,
   pillarize, bev_pool, decode) per frame, then adds the frame's share of message decoding (MCAP chunk
   decompression, CDR), timed message by message in a separate pass over the recording and given to
   the frame whose LiDAR sweep is the first at or after the message: the <= 15 ms target. JPEG decoding
   is where the run does it: as fast as possible, the frontend decodes only the images its frames use,
   inside ``align``; in real time the source thread decodes every image as it arrives, so with --realtime
   the separate pass times the decoding of every image too.
3. Times each network alone on fixed inputs (median of 30 runs) on torch and onnxruntime: ratio torch/ORT.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETWORK_STAGES = ("camera_net", "bev_net", "siren")


def replay(recording: Path, config: Path, backend: str, realtime: bool, out: Path, image_reduction: int):
    import logging

    from drivers.recording import RecordingReader
    from perception.cli_replay import run_pipeline
    from perception.pipeline import PipelineConfig

    logging.getLogger("perception").setLevel(logging.ERROR)
    cfg = dataclasses.replace(PipelineConfig.load(config), backend=backend)
    reader = RecordingReader(recording)
    messages = reader.messages(image_reduction=image_reduction)
    stats, latency, outputs, pipeline = run_pipeline(messages, reader.rig, cfg, out, recording=None,
                                                     realtime=realtime, quiet=True, source_name=str(recording))
    return latency


def non_network_ms(latency) -> np.ndarray:
    per_frame = []
    for f in latency.frames:  # one FrameTiming per emitted frame
        per_frame.append(sum(ms for name, ms in f.stages if name not in NETWORK_STAGES))
    return np.array(per_frame)


def message_decode_ms(recording: Path, image_reduction: int, decode_images: bool) -> dict[int, float]:
    """Per LiDAR sweep stamp: milliseconds spent reading and decoding the messages up to it (since the
    previous sweep), timed around each message the reader yields (and, with ``decode_images``, around the
    decoding of each camera image's pixels)."""
    from drivers.messages import CameraImage, LidarSweep
    from drivers.recording import RecordingReader

    reader = RecordingReader(recording)
    spent: list[tuple[int, float]] = []
    sweeps: list[int] = []
    it = reader.messages(image_reduction=image_reduction)
    while True:
        t0 = time.perf_counter()
        msg = next(it, None)
        if decode_images and isinstance(msg, CameraImage):
            msg.image
        dt = (time.perf_counter() - t0) * 1e3
        if msg is None:
            break
        spent.append((msg.stamp_ns, dt))
        if isinstance(msg, LidarSweep):
            sweeps.append(msg.stamp_ns)
    sweeps.sort()
    stamps = np.array(sweeps, np.int64)
    out = dict.fromkeys(sweeps, 0.0)
    for stamp, dt in spent:
        k = int(np.searchsorted(stamps, stamp, side="left"))
        if k < len(stamps):
            out[sweeps[k]] += dt
    return out


def time_networks(config: Path, threads: int = 2, runs: int = 30):
    import torch

    from perception.backends import open_backend
    from perception.export import export_onnx
    from perception.pipeline import PipelineConfig, resolve_path
    from perception.train import detector_from_checkpoint

    cfg = PipelineConfig.load(config)
    det, _, _ = detector_from_checkpoint(resolve_path(cfg.checkpoint), None, cfg.lidar_max_pillars, cfg.bev_range_m)
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for module in (det.camera, det.bev):
            spec = module.spec
            feeds = spec.random_inputs(0)
            if "lidar_index" in feeds:  # one pillar per cell, as the pillarizer guarantees
                rng = np.random.default_rng(0)
                for k in ("lidar_index", "radar_index"):
                    n = feeds[k].shape[1]
                    feeds[k][0] = rng.choice(int(spec.inputs[[t.name for t in spec.inputs].index(k)].high), n, replace=False)
            variants = [(spec.name, feeds)]
            if "presence" in feeds:
                feeds["presence"][:] = 1.0  # every sensor present, as in the replay
                if getattr(module, "lidarless", None) is not None:  # the path that runs for frames without LiDAR
                    without = dict(feeds, presence=np.array([[0.0, 1.0, 1.0]], np.float32))
                    variants.append((f"{spec.name} (no LiDAR)", without))
            path = export_onnx(module, spec, Path(tmp) / f"{spec.name}.onnx")
            backends = {kind: open_backend(kind, spec, module=module if kind == "torch" else None,
                                           onnx_path=path if kind == "onnxruntime" else None, threads=threads)
                        for kind in ("torch", "onnxruntime")}
            for name, f in variants:
                times = {}
                for kind, b in backends.items():
                    for _ in range(3):
                        b(f)
                    t = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        b(f)
                        t.append((time.perf_counter() - t0) * 1e3)
                    times[kind] = statistics.median(t)
                rows.append((name, times["torch"], times["onnxruntime"]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recording", default=str(ROOT / "recordings" / "sample_drive.mcap"))
    ap.add_argument("--realtime", action="store_true", help="run the onnxruntime replay in real time")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline_default.yaml"), help="pipeline config")
    args = ap.parse_args()
    from drivers.recording import RecordingReader
    from perception.pipeline import PipelineConfig, image_reduction_for
    from perception.timing import format_summary_table

    rec = Path(args.recording)
    # Camera images decoded as `perception replay` decodes them (at the network's scale).
    reduction = image_reduction_for(PipelineConfig.load(args.config),
                                    RecordingReader(rec).rig)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for backend in ("torch", "onnxruntime"):
            rt = args.realtime and backend == "onnxruntime"
            latency = replay(rec, Path(args.config), backend, rt, Path(tmp) / backend, reduction)
            results[backend] = latency
            print(f"\n== {backend}{' (real time)' if rt else ''}: {rec.name}")
            print(format_summary_table(latency))
            nn_free = non_network_ms(latency)
            print(f"non-network stages per frame: median {np.median(nn_free):.1f} ms, p95 "
                  f"{np.percentile(nn_free, 95):.1f} ms, max {nn_free.max():.1f} ms")
            if backend == "onnxruntime":
                dec = message_decode_ms(rec, reduction, decode_images=rt)
                unmatched = sum(f.stamp_ns not in dec for f in latency.frames)
                if unmatched:
                    print(f"warning: {unmatched} frames have no LiDAR sweep with their stamp; their decoding is "
                          "not counted")
                per = np.array([dec.get(f.stamp_ns, 0.0) for f in latency.frames])
                both = nn_free + per
                print(f"message decoding per frame{' (every camera image decoded)' if rt else ''}: median "
                      f"{np.median(per):.1f} ms, "
                      f"p95 {np.percentile(per, 95):.1f} ms")
                print(f"non-network incl. message decoding: median {np.median(both):.1f} ms, p95 "
                      f"{np.percentile(both, 95):.1f} ms, max {both.max():.1f} ms (target <= 15 ms)")
    e2e = {k: v.summary().end_to_end for k, v in results.items()}
    print(f"\nend-to-end p50: torch {e2e['torch'].p50:.1f} ms, onnxruntime {e2e['onnxruntime'].p50:.1f} ms, "
          f"ratio torch/onnxruntime {e2e['torch'].p50 / e2e['onnxruntime'].p50:.2f}")
    print("\nnetwork          torch [ms]   onnxruntime [ms]   torch/ORT   (median of 30, 2 threads)")
    for name, t_torch, t_ort in time_networks(Path(args.config)):
        print(f"{name:14s} {t_torch:11.2f} {t_ort:18.2f} {t_torch / t_ort:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
