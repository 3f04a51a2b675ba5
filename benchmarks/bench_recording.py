"""Recording write speed: our RecordingWriter against the reference `mcap` + `mcap_ros2` writer.

Both write the same drive-sized stream (LiDAR sweeps, radar scans, IMU samples; camera JPEG encoding is
left out because both sides would call the same cv2.imencode) into one .mcap file with zstd chunks; ours
also with lz4 chunks (its default). Prints a table with the median of several runs, the file size and the
ratio reference / this.

    python benchmarks/bench_recording.py [--runs 5] [--sweeps 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from calibration.rig import Rig
from drivers import ros_msgs
from drivers.messages import ImuSample, LidarSweep, RadarScan
from drivers.recording import RecordingWriter
from drivers.sim import default_rig


def make_stream(n_sweeps: int, seed: int = 0) -> list:
    """(LiDAR 10 Hz with 35k points, radar 13 Hz with 200 returns, IMU 200 Hz) for n_sweeps / 10 seconds."""
    rng = np.random.default_rng(seed)
    msgs = []
    t0 = 1_700_000_000_000_000_000
    for k in range(n_sweeps):
        n = 35_000
        pts = np.round(rng.uniform(-60, 60, (n, 4)).astype(np.float32) * 256) / 256
        pts[:, 3] = np.round(rng.uniform(0, 1, n) * 255) / 255
        msgs.append(LidarSweep("lidar_top", t0 + k * 100_000_000, k, pts.astype(np.float32),
                               -np.repeat(np.linspace(0.1, 0, 1800, dtype=np.float32), 20)[:n],
                               np.tile(np.arange(32, dtype=np.uint16), n // 32 + 1)[:n]))
    for k in range(int(n_sweeps * 1.3)):
        m = 200
        f = rng.uniform(-1, 1, (5, m)).astype(np.float32)
        msgs.append(RadarScan("radar_front", t0 + k * 76_923_077, k, np.abs(f[0]) * 100, f[1], f[2] * 0.1,
                              f[3] * 20, f[4] * 10))
    for k in range(n_sweeps * 20):
        msgs.append(ImuSample("imu", t0 + k * 5_000_000, k, rng.normal(0, 0.01, 3), rng.normal(0, 0.1, 3) + [0, 0, 9.81]))
    msgs.sort(key=lambda m: m.stamp_ns)
    return msgs


def write_ours(path: Path, rig: Rig, msgs: list, compression: str) -> None:
    with RecordingWriter(path, rig, compression=compression) as w:
        for m in msgs:
            w.write(m)


def write_reference(path: Path, msgs: list) -> None:
    """The `mcap_ros2` writer with message dicts (its serializer), zstd chunks of the same size."""
    from mcap.writer import CompressionType
    from mcap_ros2.writer import Writer

    types = {LidarSweep: "sensor_msgs/msg/PointCloud2", RadarScan: "radar_msgs/msg/RadarScan",
             ImuSample: "sensor_msgs/msg/Imu"}
    with open(path, "wb") as f:
        w = Writer(f, chunk_size=1 << 20, compression=CompressionType.ZSTD)
        schemas = {t: w.register_msgdef(name, ros_msgs.SCHEMAS[name]) for t, name in types.items()}
        for m in msgs:
            header = {"stamp": {"sec": m.stamp_ns // 10**9, "nanosec": m.stamp_ns % 10**9}, "frame_id": m.sensor_id}
            if isinstance(m, LidarSweep):
                rec = np.zeros(len(m), ros_msgs.SWEEP_DTYPE)
                for i, name in enumerate(("x", "y", "z", "intensity")):
                    rec[name] = m.points[:, i]
                rec["t"], rec["ring"] = m.time_offset, m.ring
                fields = [{"name": n, "offset": ros_msgs.SWEEP_DTYPE.fields[n][1],
                           "datatype": 4 if n == "ring" else 7, "count": 1} for n in ros_msgs.SWEEP_DTYPE.names]
                body = {"header": header, "height": 1, "width": len(m), "fields": fields, "is_bigendian": False,
                        "point_step": rec.itemsize, "row_step": rec.nbytes, "data": rec.tobytes(), "is_dense": True}
            elif isinstance(m, RadarScan):
                body = {"header": header, "returns": [
                    {"range": float(r), "azimuth": float(a), "elevation": float(e), "doppler_velocity": float(v),
                     "amplitude": float(c)}
                    for r, a, e, v, c in zip(m.range_m, m.azimuth, m.elevation, m.radial_velocity, m.rcs)]}
            else:
                vec = lambda v: {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}  # noqa: E731
                body = {"header": header, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0},
                        "orientation_covariance": [-1.0] + [0.0] * 8, "angular_velocity": vec(m.angular_velocity),
                        "angular_velocity_covariance": [0.0] * 9, "linear_acceleration": vec(m.linear_acceleration),
                        "linear_acceleration_covariance": [0.0] * 9}
            w.write_message(f"/{m.sensor_id}", schemas[type(m)], body, log_time=m.stamp_ns,
                            publish_time=m.stamp_ns, sequence=m.seq)
        w.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sweeps", type=int, default=50, help="LiDAR sweeps (10 per simulated second)")
    args = ap.parse_args()
    msgs = make_stream(args.sweeps)
    rig = default_rig(2)
    raw_mb = sum(m.points.nbytes + m.time_offset.nbytes + m.ring.nbytes if isinstance(m, LidarSweep) else 0
                 for m in msgs) / 1e6
    writers = {"ours, zstd (RecordingWriter)": lambda p: write_ours(p, rig, msgs, "zstd"),
               "ours, lz4 (default)": lambda p: write_ours(p, rig, msgs, "lz4"),
               "reference (mcap_ros2 Writer)": lambda p: write_reference(p, msgs)}
    times: dict[str, list[float]] = {name: [] for name in writers}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.runs):
            for name, fn in writers.items():
                p = Path(d) / "x.mcap"
                t = time.perf_counter()
                fn(p)
                times[name].append(time.perf_counter() - t)
                sizes[name] = p.stat().st_size
                p.unlink()
    ref = statistics.median(times["reference (mcap_ros2 Writer)"])
    print(f"{len(msgs)} messages ({args.sweeps} sweeps of 35k points, {raw_mb:.0f} MB of point data), "
          f"median of {args.runs} runs")
    print(f"{'writer':<32}{'median s':>10}{'min s':>8}{'msgs/s':>10}{'file MB':>9}{'ratio ref/this':>16}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<32}{med:>10.3f}{min(ts):>8.3f}{len(msgs) / med:>10.0f}{sizes[name] / 1e6:>9.1f}"
              f"{ref / med:>16.2f}")


if __name__ == "__main__":
    main()
