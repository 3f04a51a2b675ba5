"""Detection accuracy of the fused model and the single-modality baselines on held-out simulated drives.

    .venv/bin/python benchmarks/accuracy.py --fused recordings/models/fusion.pt \
        --lidar-only runs/lidar_only/model.pt --camera-only runs/camera_only/model.pt \
        --camera-radar runs/camera_radar/model.pt --out runs/accuracy [--drives 16] [--bev-range 60.8]

Test drives: seeds 9000-9007 (never used for training or validation), 10 s each, two per weather (clear,
rain, fog, night), LiDAR at 1800 and 900 columns; ``--drives 16`` adds seeds 9008-9015 in the same pattern
(four per weather: two drives per weather cannot resolve a difference of a point between weathers). They
are simulated, synchronised and prepared by the same code as training and replay (cached under
.cache/sim_drives). Each (model, mode) is run over every drive with the torch networks, written as run
folders (detections.jsonl, ground_truth.jsonl, run.json with the weather tag) and evaluated by the same
code as ``perception eval`` (nuScenes protocol); the fused model is also run with each modality removed
and with the cameras or the radar alone (the degraded modes). Prints one table by weather and range, one
by bearing (front, left, rear, right of the ego), and writes ``summary.json``, ``summary.png`` (mAP of
every model and mode, overall and per weather) plus a full ``perception eval`` report per (model, mode).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perception.evaluation.report import evaluate_runs, load_run, metrics_json, write_report  # noqa: E402
from perception.evaluation.results import write_results_file  # noqa: E402
from perception.train import (SampleBuilder, TrainConfig, detector_from_checkpoint, drive_specs,  # noqa: E402
                              generate_drives, ground_truth_frames, predict_drive)
from perception.decode import DecodeConfig, Decoder  # noqa: E402
from perception.training_data import Drive  # noqa: E402

FIRST_TEST_SEED = 9000
MODES = {"all": ("lidar", "camera", "radar"), "no_camera": ("lidar", "radar"),
         "no_radar": ("lidar", "camera"), "no_lidar": ("camera", "radar"),
         "only_cam": ("camera",), "only_radar": ("radar",)}


def run_model(name: str, ckpt: Path, modes: dict, drives, out: Path, bev_range_m: float | None = None) -> dict:
    import torch

    torch.set_num_threads(2)
    det, net_cfg, _ = detector_from_checkpoint(ckpt, None, None, bev_range_m)
    decoder = Decoder(net_cfg.head_grid, net_cfg.class_names, DecodeConfig())
    results = {}
    for mode, mods in modes.items():
        builder = SampleBuilder(net_cfg, mods, None, False)
        dirs = []
        for d in drives:
            run_dir = out / f"{name}_{mode}" / d.path.stem
            run_dir.mkdir(parents=True, exist_ok=True)
            dets = predict_drive(det, d, builder, decoder)
            write_results_file(run_dir / "detections.jsonl", [x.to_frame_boxes() for x in dets])
            write_results_file(run_dir / "ground_truth.jsonl", ground_truth_frames(d))
            (run_dir / "run.json").write_text(json.dumps({"recording": d.path.name, "tags": {"weather": d.weather}}))
            dirs.append(run_dir)
        report = evaluate_runs([load_run(p) for p in dirs])
        write_report(report, out / f"{name}_{mode}" / "report")
        m = metrics_json(report)
        results[mode] = {"mAP": m["mAP"], "NDS": m["NDS"], "mAVE": m["mAVE"],
                         "AP": {k: v["AP"] for k, v in m["per_class"].items()},
                         "by_weather": {w: v["mAP"] for w, v in m["by_tag"].get("weather", {}).items()},
                         "by_range": {b: v["mAP"] for b, v in m["by_range"].items()},
                         "by_sector": {b: v["mAP"] for b, v in m["by_sector"].items()}}
        print(f"{name:13s} {mode:10s} mAP {m['mAP']:.4f} NDS {m['NDS']:.4f} mAVE {m['mAVE'] or float('nan'):.3f}  "
              + " ".join(f"{w}={v:.3f}" for w, v in results[mode]["by_weather"].items() if v is not None), flush=True)
    return results


def plot_summary(summary: dict, weathers, path: Path) -> Path:
    """Grouped bars: mAP over all drives and per weather, one bar per (model, mode)."""
    import numpy as np
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display, Agg on savefig

    rows = [(f"{model} {mode}" if model == "fused" else model, r) for model, modes in summary.items()
            for mode, r in modes.items()]
    groups = ["all drives", *weathers]
    fig = Figure(figsize=(max(7.0, 1.1 * len(groups) * len(rows) / 3), 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.85 / len(rows)
    x = np.arange(len(groups))
    for k, (label, r) in enumerate(rows):
        values = [r["mAP"]] + [r["by_weather"].get(w) or 0.0 for w in weathers]
        bars = ax.bar(x + (k - (len(rows) - 1) / 2) * width, values, width, label=label, color=f"C{k % 10}")
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, groups)
    ax.set_ylabel("mAP (nuScenes protocol)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=3, loc="upper left")
    ax.set_title("held-out drives: the fused model in each mode and the single-modality baselines")
    fig.savefig(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fused", help="the fused model (all four modes); leave out to score baselines only")
    ap.add_argument("--lidar-only")
    ap.add_argument("--camera-only")
    ap.add_argument("--camera-radar")
    ap.add_argument("--out", default="runs/accuracy")
    ap.add_argument("--drives", type=int, default=8, help="test drives: seeds 9000 on (at most 100)")
    ap.add_argument("--bev-range", type=float, default=None,
                    help="run every model on this BEV grid half-width [m] (the pipeline's bev_range_m)")
    args = ap.parse_args()
    if not 1 <= args.drives <= 100:
        raise SystemExit(f"--drives must be in [1, 100], got {args.drives}")
    logging.getLogger("perception").setLevel(logging.ERROR)
    cfg = TrainConfig()
    specs = drive_specs(range(FIRST_TEST_SEED, FIRST_TEST_SEED + args.drives), 10.0, cfg.weathers, cfg.lidar_columns,
                        2000)
    drives = [Drive.load(p) for p in generate_drives(specs, ROOT / cfg.data_cache)]
    out = Path(args.out)
    summary = {"fused": run_model("fused", Path(args.fused), MODES, drives, out, args.bev_range)} if args.fused else {}
    for key, mods in (("lidar_only", ("lidar",)), ("camera_only", ("camera",)), ("camera_radar", ("camera", "radar"))):
        path = getattr(args, key)
        if path:
            summary[key] = run_model(key, Path(path), {"own": mods}, drives, out, args.bev_range)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_summary(summary, cfg.weathers, out / "summary.png")
    print("\nmodel         mode       mAP     NDS     mAVE   " + "  ".join(f"{w:>6s}" for w in cfg.weathers)
          + "   0-20   20-40    40+")
    for model, modes in summary.items():
        for mode, r in modes.items():
            row = [r["by_weather"].get(w) for w in cfg.weathers] + [r["by_range"].get(b) for b in ("0-20", "20-40", "40+")]
            print(f"{model:13s} {mode:10s} {r['mAP']:.4f}  {r['NDS']:.4f}  {r['mAVE'] or float('nan'):.3f}  "
                  + "  ".join("  -   " if v is None else f"{v:.3f}" for v in row))
    sectors = ("front", "left", "rear", "right")
    print("\nmodel         mode       " + "  ".join(f"{s:>6s}" for s in sectors) + "   (mAP by bearing)")
    for model, modes in summary.items():
        for mode, r in modes.items():
            print(f"{model:13s} {mode:10s} " + "  ".join("  -   " if r["by_sector"].get(s) is None
                                                          else f"{r['by_sector'][s]:.3f}" for s in sectors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
