"""ONNX Runtime backend: an exported graph on the CPU (default) or CUDA execution provider.

Inputs are bound in place (``IOBinding.bind_cpu_input`` wraps the numpy buffer, no copy) and outputs are
bound once at construction to numpy buffers sized from the spec, so a call allocates no input/output
memory. With the CUDA provider ONNX Runtime copies the bound host inputs to the device and the results
back into the same host buffers; its device arena is allocated on the first run and reused afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.backends.base import Backend, BackendUnavailable, check_declared_io
from perception.models.spec import NetworkSpec, TensorSpec

# ONNX Runtime's type strings for the dtypes a TensorSpec may carry.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


class OrtBackend(Backend):
    """Runs an ONNX graph with ONNX Runtime.

    Args:
        spec: the network's I/O spec; the graph's inputs and outputs must equal it (names, order, static
            shapes, dtypes) or construction raises ValueError naming the tensor.
        onnx_path: the exported graph (``perception.export.export_onnx``).
        device: ``cpu`` (CPUExecutionProvider) or ``cuda`` / ``cuda:N`` (CUDAExecutionProvider, then CPU for
            any node it does not take).
        threads: intra-op threads; None lets ONNX Runtime use one per physical core. On the 2-core target
            give 1 or 2 so the network leaves room for the other stages.
        spin: let idle intra-op threads busy-wait between ops (ONNX Runtime's default). Off by default:
            spinning threads take CPU from the pipeline's other stages on a small machine for a gain of a
            few tens of microseconds per op.
    """

    name = "onnxruntime"

    def __init__(self, spec: NetworkSpec, onnx_path: str | os.PathLike, device: str = "cpu",
                 threads: int | None = None, spin: bool = False):
        super().__init__(spec)
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"{spec.name}: ONNX file not found: {path}")
        kind, _, index = device.partition(":")
        if kind == "cpu":
            providers: list = ["CPUExecutionProvider"]
        elif kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                    f"(providers: {ort.get_available_providers()}): `pip install onnxruntime-gpu` "
                    f"(in place of onnxruntime), or on Jetson the onnxruntime-gpu wheel built for your JetPack")
            providers = [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        check_declared_io(spec, "inputs", declared_io(self._session.get_inputs()), spec.inputs)
        check_declared_io(spec, "outputs", declared_io(self._session.get_outputs()), spec.outputs)
        self.providers = tuple(self._session.get_providers())
        self._binding = self._session.io_binding()
        # Outputs go to host buffers even with the CUDA provider: ORT copies them back in its run.
        self._outputs = {t.name: np.empty(t.shape, dtype=t.dtype) for t in spec.outputs}
        for name, buf in self._outputs.items():
            self._binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for t in self.spec.inputs:
            self._binding.bind_cpu_input(t.name, np.ascontiguousarray(feeds[t.name]))
        self._session.run_with_iobinding(self._binding)
        self._binding.clear_binding_inputs()  # drop the references to the caller's arrays
        return dict(self._outputs)

    def close(self) -> None:
        self._binding = None
        self._session = None


def declared_io(args) -> list[TensorSpec]:
    """ONNX Runtime's ``NodeArg`` list as TensorSpecs (a dynamic or symbolic dimension becomes -1)."""
    out = []
    for a in args:
        shape = tuple(d if isinstance(d, int) else -1 for d in a.shape)
        out.append(TensorSpec(a.name, shape, ORT_DTYPES.get(a.type, a.type)))
    return out
