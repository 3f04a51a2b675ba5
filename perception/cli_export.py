"""``perception export``: a checkpoint's networks to ONNX graphs (and TensorRT engines, built on the target).

    perception export --checkpoint runs/train/model.pt --out models/ [--backend onnx|tensorrt] [--precision fp32|fp16|int8]

Writes ``<network>.onnx`` per network, the engines for ``--backend tensorrt``, and ``manifest.json``
(specs, sha256, opset, versions); prints one line per network and whether TensorRT 10 would parse it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perception.export import (
    DEFAULT_OPSET,
    EXPORT_BACKENDS,
    MANIFEST,
    PRECISIONS,
    ExportError,
)


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``perception`` parser's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "export", help="export a checkpoint's networks to ONNX (and build TensorRT engines)",
        description="Export every network of a checkpoint to an ONNX graph named by its I/O spec, write "
                    "manifest.json, and with --backend tensorrt build the engines on this machine's GPU.")
    p.add_argument("--checkpoint", required=True, help="trained checkpoint (.pt) from 'perception train'")
    p.add_argument("--out", required=True, help="output folder for the .onnx files, engines and manifest.json")
    p.add_argument("--backend", choices=EXPORT_BACKENDS, default="onnx",
                   help="onnx: graphs only (default); tensorrt: also build engines (needs TensorRT 10 and a GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="engine precision for --backend tensorrt (default fp32); ONNX graphs are always fp32")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--calibration-frames", type=int, default=64,
                   help="int8: frames from simulated validation drives used for the calibration cache (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``perception export``; returns the exit code (errors are raised as one-line exceptions)."""
    from perception.export import export_all, unsupported_tensorrt_ops

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if args.backend == "onnx" and args.precision != "fp32":
        raise ExportError(f"--precision {args.precision} applies to --backend tensorrt; ONNX graphs are fp32")
    try:
        from perception.models.networks import load_checkpoint
    except ImportError as e:
        raise ExportError(f"this installation cannot read checkpoints ({e})") from e
    modules = load_checkpoint(checkpoint)
    out = Path(args.out)
    calibration = None
    if args.precision == "int8":
        # Calibration frames: simulated validation drives through the runtime's own frontend (cached).
        from perception.train import int8_calibration

        calibration = int8_calibration(checkpoint, args.calibration_frames, progress=not args.quiet)
    paths = export_all(modules, out, backend=args.backend, precision=args.precision, opset=args.opset,
                       calibration=calibration, progress=not args.quiet)
    for module, path in zip(modules, paths):
        onnx_path = out / f"{module.spec.name}.onnx"
        refused = unsupported_tensorrt_ops(onnx_path)
        verdict = "TensorRT 10: all operators supported" if not refused else f"TensorRT 10 refuses: {', '.join(refused)}"
        print(f"{module.spec.name}: {path} ({path.stat().st_size / 1e6:.1f} MB; {verdict})")
    print(f"wrote {out / MANIFEST}")
    return 0
