"""Export: networks to ONNX graphs named by their specs, and ONNX graphs to TensorRT engines.

Flow::

    nn.Module + NetworkSpec ──export_onnx──▶ <name>.onnx ──build_engine (on the target GPU)──▶ <name>.<prec>.<key>.engine
                                              │
                                              └─ unsupported_tensorrt_ops: what TensorRT 10's ONNX parser would refuse

Why the torch.export-based exporter (``dynamo=True``) and opset 18: PyTorch 2.9+ made it the default and
deprecated the TorchScript exporter for removal; its lowest implemented opset is 18 (asking for 17 goes
through a version converter that fails on our graphs, e.g. ReduceMax's ``axes`` input). TensorRT 10 parses
opsets 9..20 and later, ONNX Runtime all of them. Its graph optimizer folds constants and BatchNorm into
the preceding convolution before the file is written.

Engines are specific to the TensorRT version and GPU model, so they are built on the target and cached
under a key over the ONNX bytes, TensorRT version, GPU name and precision (:func:`engine_cache_key`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from perception.backends.base import check_declared_io
from perception.models.spec import NetworkSpec, TensorSpec

DEFAULT_OPSET = 18
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_BACKENDS = ("onnx", "tensorrt")
MANIFEST = "manifest.json"

# ONNX operators TensorRT 10's ONNX parser supports: the rows marked "Y" in the operator support matrix of
# onnx/onnx-tensorrt docs/operators.md for TensorRT 10.15 ("TensorRT 10.15 supports operators in the
# inclusive range of opset 9 to opset 24"), transcribed by hand. Restrictions the matrix lists for single
# operators that our exports could meet are checked separately in unsupported_tensorrt_ops.
TENSORRT_10_15_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "Attention",
    "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand",
    "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU",
    "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not",
    "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RMSNormalization", "RNN", "RoiAlign",
    "RotaryEmbedding", "Round", "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
    "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "TensorScatter", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

# Rows of that matrix that are newer than TensorRT 10.3 (JetPack 6's TensorRT, our oldest target): the
# window functions (10.4) and STFT (10.5) per onnx-tensorrt docs/Changelog.md, and the opset 23/24 operators,
# which arrived after 10.6 had moved the parser to ONNX 1.17 (opset 22).
NEWER_THAN_TENSORRT_10_3 = frozenset({
    "BlackmanWindow", "HammingWindow", "HannWindow", "STFT",
    "Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter",
})

TENSORRT_ONNX_OPS = TENSORRT_10_15_OPS - NEWER_THAN_TENSORRT_10_3


class ExportError(Exception):
    """Export or engine build failed; the message names the network, tensor or operator."""


# ---------------------------------------------------------------------------------------------------- ONNX
def export_onnx(module, spec: NetworkSpec, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Export one network to an ONNX graph with static shapes, named by its spec.

    Args:
        module: ``torch.nn.Module`` whose ``forward(*inputs)`` takes ``spec.inputs`` positionally and returns
            a tuple in ``spec.outputs`` order. It is put in eval mode and moved to the CPU (in place).
        spec: the network's I/O spec: graph input/output names, static shapes and dtypes.
        path: the ``.onnx`` file to write (parent folders are created).
        opset: ONNX opset of the default domain (18 or newer; see the module docstring).
    Returns:
        ``path``, after ``onnx.checker`` (full check) passed, the graph's I/O equals the spec, and ONNX
        Runtime loaded it.
    Raises:
        ExportError: the module's outputs differ from the spec, the exporter failed, or the written graph
            does not have the requested opset or the spec's I/O (the message names the tensor).
    """
    import onnx
    import onnxruntime as ort
    import torch

    path = Path(path)
    module = module.eval().cpu()
    example = tuple(torch.from_numpy(a) for a in spec.random_inputs(seed=0).values())
    with torch.inference_mode():
        result = module(*example)
    _check_module_outputs(spec, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, example, None, input_names=spec.input_names,
                                        output_names=spec.output_names, opset_version=opset, dynamo=True,
                                        optimize=True, verbose=False)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes may export at once
            program.save(tmp, external_data=False)
    except Exception as e:  # the exporter raises many types; one line naming the network is what helps
        raise ExportError(f"{spec.name}: torch.onnx.export failed: {type(e).__name__}: {_first_line(e)}") from e
    model = onnx.load(str(tmp))
    if _tidy(model):
        onnx.save(model, str(tmp))
    os.replace(tmp, path)
    got_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"{spec.name}: asked for opset {opset}, the exporter wrote opset {got_opset} "
                          f"(use opset >= {DEFAULT_OPSET})")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{spec.name}: onnx.checker rejected {path}: {_first_line(e)}") from e
    initializers = {i.name for i in model.graph.initializer}
    check_declared_io(spec, "inputs", [_value_info_spec(v) for v in model.graph.input if v.name not in initializers],
                      spec.inputs)
    check_declared_io(spec, "outputs", [_value_info_spec(v) for v in model.graph.output], spec.outputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from perception.backends.ort_backend import declared_io

    check_declared_io(spec, "inputs", declared_io(session.get_inputs()), spec.inputs)
    check_declared_io(spec, "outputs", declared_io(session.get_outputs()), spec.outputs)
    return path


def _all_nodes(graph):
    """The nodes of ``graph`` (or of a local function) and of every graph nested in them (If/Loop/Scan
    bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def _tidy(model) -> bool:
    """Drop what the exporter leaves that nothing needs; returns whether anything was dropped.

    - Top-level initializers that no node reads (the exporter leaves some around an If, and ONNX Runtime
      warns about each at load).
    - The per-node Python stack traces (``pkg.torch.onnx.stack_trace``): inside an If's branches each
      holds the exporter's whole call stack, 16 kB a node, and made the BEV graph 2.4 times its weights.
    """
    used = {o.name for o in model.graph.output}
    traces = 0
    for node in _all_nodes(model.graph):
        used.update(node.input)
        keep = [(p.key, p.value) for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(node.metadata_props):
            traces += 1
            del node.metadata_props[:]
            for key, value in keep:
                node.metadata_props.add(key=key, value=value)
    initializers = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(initializers)
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(initializers)
    return bool(dropped or traces)


def _check_module_outputs(spec: NetworkSpec, result) -> None:
    import torch

    if isinstance(result, torch.Tensor):
        result = (result,)
    if not isinstance(result, (tuple, list)) or len(result) != len(spec.outputs):
        n = len(result) if isinstance(result, (tuple, list)) else type(result).__name__
        raise ExportError(f"{spec.name}: forward() returned {n} outputs, spec lists {spec.output_names}")
    for t, r in zip(spec.outputs, result):
        dtype = str(r.dtype).removeprefix("torch.")
        if tuple(r.shape) != t.shape or dtype != t.dtype:
            raise ExportError(f"{spec.name}.{t.name}: forward() returned {dtype}{list(r.shape)}, "
                              f"spec says {t.dtype}{list(t.shape)}")


def _value_info_spec(v) -> TensorSpec:
    from onnx import helper

    tt = v.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt.elem_type else "undefined"
    return TensorSpec(v.name, shape, dtype)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs every torchvision op it cannot register and warns about its own internals."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------- TensorRT support
def unsupported_tensorrt_ops(onnx_path: str | os.PathLike) -> list[str]:
    """The operators of a graph that TensorRT 10's ONNX parser would refuse.

    Checks every node (also inside If/Loop/Scan bodies and local functions) against
    :data:`TENSORRT_ONNX_OPS`, plus the matrix's restrictions on operators our networks use:
    ScatterND only with ``reduction=none``, Resize not in ``cubic`` mode nor with antialiasing, MaxPool
    without its ``Indices`` output. Operators of other domains (e.g. ``com.microsoft``) are unsupported
    unless they are local functions of the model.

    Returns:
        sorted, unique descriptions, e.g. ``["Det", "ScatterND(reduction=add)"]``; empty when all pass.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    functions = {(f.domain, f.name): f for f in model.functions}
    found: set[str] = set()
    seen_functions: set[tuple[str, str]] = set()

    def walk(graph) -> None:  # a graph or a local function: both hold nodes
        for node in _all_nodes(graph):
            key = (node.domain, node.op_type)
            if key in functions:
                if key not in seen_functions:
                    seen_functions.add(key)
                    walk(functions[key])
                continue
            if node.domain not in ("", "ai.onnx"):
                found.add(f"{node.domain}.{node.op_type}")
            elif node.op_type not in TENSORRT_ONNX_OPS:
                found.add(node.op_type)
            else:
                problem = _restriction(node)
                if problem:
                    found.add(problem)

    walk(model.graph)
    return sorted(found)


def _restriction(node) -> str | None:
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "ScatterND" and "reduction" in attrs:
        reduction = attrs["reduction"].s.decode()
        if reduction != "none":
            return f"ScatterND(reduction={reduction})"
    if node.op_type == "Resize":
        if "mode" in attrs and attrs["mode"].s.decode() == "cubic":
            return "Resize(mode=cubic)"
        if "antialias" in attrs and attrs["antialias"].i:
            return "Resize(antialias=1)"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "MaxPool(Indices output)"
    return None


# ------------------------------------------------------------------------------------------ TensorRT build
def engine_cache_key(onnx_path: str | os.PathLike, trt_version: str, gpu_name: str, precision: str) -> str:
    """Hex sha256 over the ONNX file's bytes, the TensorRT version, the GPU name and the precision: an
    engine built under one key is valid exactly for that graph, TensorRT version, GPU model and precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    h = hashlib.sha256()
    h.update(Path(onnx_path).read_bytes())
    for part in (trt_version, gpu_name, precision):
        h.update(b"\0")
        h.update(part.encode())
    return h.hexdigest()


def engine_path_for(onnx_path: str | os.PathLike, precision: str, cache_dir: str | os.PathLike, key: str) -> Path:
    """Where :func:`build_engine` puts the engine of a key: ``<cache_dir>/<onnx stem>.<precision>.<key[:16]>.engine``."""
    return Path(cache_dir) / f"{Path(onnx_path).stem}.{precision}.{key[:16]}.engine"


def build_engine(onnx_path: str | os.PathLike, precision: str, cache_dir: str | os.PathLike,
                 calibration_feeds: Iterable[dict[str, np.ndarray]] | None = None,
                 workspace_mib: int = 1024, device: str = "cuda") -> Path:
    """Build (or reuse) a TensorRT engine for this machine's GPU.

    Args:
        onnx_path: the exported graph.
        precision: ``fp32`` | ``fp16`` (TensorRT may pick fp16 kernels) | ``int8`` (int8 where calibrated,
            fp16/fp32 elsewhere).
        cache_dir: folder of engines; an engine whose key (:func:`engine_cache_key`) matches is reused.
        calibration_feeds: int8 only: input dicts (the network's inputs by name, spec shapes and dtypes),
            e.g. 100-500 real frames; read by an IInt8EntropyCalibrator2. Its calibration cache is written
            next to the engine (``.calib``) and reused by later builds of the same key, when no feeds are needed.
        workspace_mib: builder workspace limit [MiB].
        device: ``cuda`` or ``cuda:N``, the GPU to build for.
    Returns:
        the engine file.
    Raises:
        BackendUnavailable: TensorRT or pycuda is missing (the message says what to install).
        ExportError: the parser refused the graph (its errors are in the message) or the build failed.
        ValueError: bad precision, or int8 without calibration feeds and without a calibration cache.
    """
    from perception.backends.trt_backend import cuda_device_index, import_tensorrt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    trt, cuda = import_tensorrt()
    onnx_path = Path(onnx_path)
    gpu = cuda.Device(cuda_device_index(device))
    key = engine_cache_key(onnx_path, trt.__version__, gpu.name(), precision)
    engine_path = engine_path_for(onnx_path, precision, cache_dir, key)
    if engine_path.is_file():
        return engine_path
    calib_path = engine_path.with_suffix(".calib")
    if precision == "int8" and calibration_feeds is None and not calib_path.is_file():
        raise ValueError(f"{onnx_path.name}: int8 needs calibration_feeds (no calibration cache at {calib_path})")
    engine_path.parent.mkdir(parents=True, exist_ok=True)

    ctx = gpu.retain_primary_context()
    ctx.push()
    calibrator = None
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"{onnx_path.name}: TensorRT {trt.__version__} cannot parse the graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            inputs = [network.get_input(i) for i in range(network.num_inputs)]
            specs = [TensorSpec(t.name, tuple(t.shape), np.dtype(trt.nptype(t.dtype)).name) for t in inputs]
            calibrator = _make_calibrator(trt, cuda, specs, calibration_feeds, calib_path)
            config.int8_calibrator = calibrator
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"{onnx_path.name}: TensorRT {trt.__version__} failed to build a {precision} engine "
                              f"(see the TensorRT log above)")
        tmp = engine_path.with_name(f"{engine_path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(serialized)
        os.replace(tmp, engine_path)
    finally:
        if calibrator is not None:
            calibrator.free()
        ctx.pop()
        ctx.detach()
    return engine_path


def _make_calibrator(trt, cuda, inputs: list[TensorSpec], feeds: Iterable[dict[str, np.ndarray]] | None,
                     cache_path: Path):
    """An IInt8EntropyCalibrator2 feeding one dict per batch (the batch is part of the static shapes).

    The class is defined here because its base class exists only once tensorrt is imported.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._iter = iter(feeds) if feeds is not None else iter(())
            self._device = {t.name: cuda.mem_alloc(max(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize, 1))
                            for t in inputs}
            self.batches = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            feed = next(self._iter, None)
            if feed is None:
                return None
            for t in inputs:
                if t.name not in feed:
                    raise ExportError(f"calibration feed {self.batches} has no input '{t.name}'")
                t.check(np.asarray(feed[t.name]), "calibration")
                cuda.memcpy_htod(self._device[t.name], np.ascontiguousarray(feed[t.name]))
            self.batches += 1
            return [int(self._device[n]) for n in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            cache_path.write_bytes(bytes(cache))

        def free(self) -> None:
            for dev in self._device.values():
                dev.free()
            self._device = {}

    return EntropyCalibrator()


# ---------------------------------------------------------------------------------------------- export all
def export_all(modules: Sequence, out_dir: str | os.PathLike, backend: str = "onnx", precision: str = "fp32",
               opset: int = DEFAULT_OPSET,
               calibration: Callable[[NetworkSpec], Iterable[dict[str, np.ndarray]]] | None = None,
               progress: bool = False) -> list[Path]:
    """Export every network of a model into one folder, with a manifest.

    Writes ``<spec.name>.onnx`` per network, for ``tensorrt`` also its engine (built here, so run it on the
    target), and ``manifest.json``: per network the spec, file names and sha256, plus opset, precision and
    the torch / onnx / onnxruntime (/ TensorRT and GPU) versions.

    Args:
        modules: the networks (``spec`` attribute each, distinct ``spec.name``).
        out_dir: output folder (created).
        backend: ``onnx`` (graphs only) | ``tensorrt`` (graphs and engines).
        precision: ``fp32`` for onnx; ``fp32`` | ``fp16`` | ``int8`` for tensorrt.
        opset: ONNX opset.
        calibration: int8 only: given a network's spec, its calibration feeds.
        progress: show a progress bar over the networks.
    Returns:
        per network, in order, what its backend opens: the ``.onnx`` file, or the ``.engine`` for tensorrt.
    """
    import onnx
    import onnxruntime
    import torch
    from tqdm import tqdm

    if backend not in EXPORT_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(EXPORT_BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "onnx" and precision != "fp32":
        raise ValueError(f"ONNX export is fp32; {precision} is a TensorRT build precision (--backend tensorrt)")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration feeds (calibration=) to choose the quantization ranges")
    specs = [m.spec for m in modules]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"network names must be distinct, got {names}")
    trt_info = {}
    if backend == "tensorrt":
        from perception.backends.trt_backend import import_tensorrt

        trt, cuda = import_tensorrt()  # fail before exporting anything
        trt_info = {"tensorrt_version": trt.__version__, "gpu": cuda.Device(0).name()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, results = [], []
    for module, spec in tqdm(list(zip(modules, specs)), desc="export", unit="network", disable=not progress):
        onnx_path = export_onnx(module, spec, out_dir / f"{spec.name}.onnx", opset=opset)
        entry = {"name": spec.name, "onnx": onnx_path.name, "sha256": sha256_file(onnx_path),
                 "spec": dataclasses.asdict(spec)}
        if backend == "tensorrt":
            feeds = calibration(spec) if precision == "int8" else None
            engine = build_engine(onnx_path, precision, out_dir, calibration_feeds=feeds)
            entry["engine"] = engine.name
            entry["engine_sha256"] = sha256_file(engine)
            results.append(engine)
        else:
            results.append(onnx_path)
        entries.append(entry)
    manifest = {"backend": backend, "precision": precision, "opset": opset, "torch_version": torch.__version__,
                "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__, **trt_info,
                "networks": entries}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return results
