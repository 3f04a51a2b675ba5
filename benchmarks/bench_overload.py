"""Overload: the real-time executor fed faster than the pipeline can run, against the same run at recorded
speed (the reference), with the process memory sampled throughout.

The sample drive is played ``--loops`` times back to back (stamps shifted by the drive's length, so the
clock runs on) through ``perception replay --realtime`` at each ``--speeds`` factor. Per speed it prints the
frame counts (total, emitted, dropped, deadline missed), end-to-end latency of the emitted frames on the
source clock (p50/p99/max) and on the wall clock (the part of it that is waiting and processing, divided by
the speed), and the resident memory (RSS) after the first loop, at the end and its maximum. Flat memory
means the end is no higher than after the first loop, up to the per-frame latency records.

3x (a frame every 33 ms) overloads the 2-core CI machine; a faster CPU keeps up with it and only counts
late frames, so 10x (a frame every 10 ms) is run too: there every CPU must drop frames.

    .venv/bin/python benchmarks/bench_overload.py [--speeds 1 3 10] [--loops 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Resident set size of this process [MB] (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def looped(reader, loops: int, image_reduction: int = 1):
    """The recording's messages ``loops`` times, each pass shifted by the drive's span plus 0.1 s."""
    first = last = None
    for m in reader.messages(image_reduction=image_reduction):
        first = m.stamp_ns if first is None else first
        last = m.stamp_ns
    span = last - first + 100_000_000
    for k in range(loops):
        for m in reader.messages(image_reduction=image_reduction):
            yield m if k == 0 else dataclasses.replace(m, stamp_ns=m.stamp_ns + k * span)


def run(recording: Path, speed: float, loops: int, out: Path) -> dict:
    from drivers.recording import RecordingReader
    from perception.cli_replay import run_pipeline
    from perception.pipeline import PipelineConfig, image_reduction_for

    logging.getLogger("perception").setLevel(logging.ERROR)
    cfg = PipelineConfig.load(ROOT / "configs" / "pipeline_default.yaml")
    reader = RecordingReader(recording)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.wait(0.25):
            samples.append((time.perf_counter() - t0, rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    messages = looped(reader, loops, image_reduction_for(cfg, reader.rig))  # decoded as perception replay does
    stats, latency, _, _ = run_pipeline(messages, reader.rig, cfg, out, realtime=True, speed=speed,
                                        quiet=True, source_name=str(recording))
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    c = latency.counts
    e2e = np.array([f.end_to_end_ms for f in latency.frames if f.end_to_end_ms is not None])
    one_loop = wall / loops
    after_first = [m for t, m in samples if t >= one_loop] or [samples[-1][1]]
    return {"speed": speed, "total": c.total, "emitted": c.emitted, "dropped": c.dropped,
            "missed": c.deadline_missed, "p50": np.percentile(e2e, 50), "p99": np.percentile(e2e, 99),
            "max": e2e.max(), "rss_first": after_first[0], "rss_end": samples[-1][1],
            "rss_max": max(m for _, m in samples), "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recording", default=str(ROOT / "recordings" / "sample_drive.mcap"))
    ap.add_argument("--speeds", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--loops", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.speeds:
            rows.append(run(Path(args.recording), s, args.loops, Path(tmp) / f"x{s:g}"))
            print(f"speed {s:g}x done in {rows[-1]['wall']:.1f} s", file=sys.stderr)
    ref = rows[0]
    print(f"\n{Path(args.recording).name} x{args.loops} loops, real time; reference: speed {ref['speed']:g}x\n")
    print("speed  frames  emitted  dropped  missed   e2e p50   p99     max [ms, source clock]   "
          "wall p99 [ms]   RSS after loop 1 / end / max [MB]   end growth vs ref")
    for r in rows:
        growth = (r["rss_end"] - r["rss_first"]) - (ref["rss_end"] - ref["rss_first"])
        print(f"{r['speed']:4g}x  {r['total']:6d}  {r['emitted']:7d}  {r['dropped']:7d}  {r['missed']:6d}  "
              f"{r['p50']:8.1f} {r['p99']:7.1f} {r['max']:7.1f}                      {r['p99'] / r['speed']:8.1f}"
              f"         {r['rss_first']:7.1f} / {r['rss_end']:7.1f} / {r['rss_max']:7.1f}          "
              f"{growth:+7.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
