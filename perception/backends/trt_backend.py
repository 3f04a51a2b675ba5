"""TensorRT backend: a serialized engine run through TensorRT 10's name-based API.

Everything is allocated once at construction: one device buffer and one page-locked host buffer per I/O
tensor, the execution context with every tensor address set (``context.set_tensor_address``), and one
CUDA stream. A call copies the feeds into the page-locked buffers, queues host-to-device copies,
``execute_async_v3`` and device-to-host copies on that stream, and waits for it: nothing is allocated
per frame on the device or the host.

``tensorrt`` and ``pycuda`` are imported only here, when a TensorRT backend is opened or an engine built;
a machine without them gets :class:`BackendUnavailable` saying what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.backends.base import Backend, BackendUnavailable, check_declared_io
from perception.models.spec import NetworkSpec, TensorSpec

INSTALL_HINT = ("`pip install tensorrt pycuda` (x86 with an NVIDIA driver and CUDA 12), or on Jetson install "
                "JetPack 6 (it ships TensorRT 10 for the system Python) and then `pip install pycuda`")


def import_tensorrt():
    """``(tensorrt, pycuda.driver)``, both imported and CUDA initialised.

    Raises:
        BackendUnavailable: a package is missing, TensorRT is older than 10, or CUDA finds no device;
            the message says what to install.
    """
    missing = []
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        missing.append("tensorrt")
    try:
        import pycuda.driver as cuda
    except ImportError:
        cuda = None
        missing.append("pycuda")
    if missing:
        raise BackendUnavailable(f"the TensorRT backend needs the Python package(s) {', '.join(missing)}, "
                                 f"not installed here: {INSTALL_HINT}")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} found, the TensorRT backend needs TensorRT 10 or "
                                 f"newer (name-based tensor API): {INSTALL_HINT}")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise BackendUnavailable("TensorRT is installed but CUDA sees no GPU on this machine")
    except cuda.Error as e:
        raise BackendUnavailable(f"TensorRT is installed but CUDA could not start ({e}); check the NVIDIA driver") from e
    return trt, cuda


def cuda_device_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:N`` -> N; anything else is a ValueError (TensorRT runs on a GPU only)."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        raise ValueError(f"the TensorRT backend runs on a GPU: device must be 'cuda[:N]', got {device!r}")
    return int(index or 0)


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (``perception.export.build_engine``).

    Args:
        spec: the network's I/O spec; the engine's I/O tensors must equal it (names, static shapes, dtypes)
            or construction raises ValueError naming the tensor.
        engine_path: the ``.engine`` file, built on this GPU model with this TensorRT version.
        device: ``cuda`` or ``cuda:N``.
    """

    name = "tensorrt"

    def __init__(self, spec: NetworkSpec, engine_path: str | os.PathLike, device: str = "cuda"):
        super().__init__(spec)
        trt, cuda = import_tensorrt()
        index = cuda_device_index(device)
        path = Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"{spec.name}: TensorRT engine not found: {path}")
        self._cuda = cuda
        self._buffers: list = []
        # The primary context is the one the CUDA runtime (and so TensorRT) uses; pushing it around each
        # call lets the backend be called from any thread.
        self._ctx = cuda.Device(index).retain_primary_context()
        self._ctx.push()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ValueError(f"{spec.name}: TensorRT {trt.__version__} could not load {path} (an engine runs "
                                 f"only with the TensorRT version and GPU model it was built with: rebuild it)")
            declared_in, declared_out = engine_io(trt, self._engine)
            check_declared_io(spec, "inputs", declared_in, spec.inputs, ordered=False)
            check_declared_io(spec, "outputs", declared_out, spec.outputs, ordered=False)
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._host: dict[str, np.ndarray] = {}
            self._device: dict[str, object] = {}
            for t in spec.inputs + spec.outputs:
                host = cuda.pagelocked_empty(t.shape, np.dtype(t.dtype))
                dev = cuda.mem_alloc(max(host.nbytes, 1))
                self._buffers.append(dev)
                self._host[t.name] = host
                self._device[t.name] = dev
                if not self._context.set_tensor_address(t.name, int(dev)):
                    raise ValueError(f"{spec.name}: TensorRT refused the address of tensor '{t.name}'")
        except BaseException:
            self._ctx.pop()
            self.close()
            raise
        self._ctx.pop()
        self._outputs = {t.name: self._host[t.name] for t in spec.outputs}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        self._ctx.push()
        try:
            for t in self.spec.inputs:
                host = self._host[t.name]
                np.copyto(host, feeds[t.name])
                cuda.memcpy_htod_async(self._device[t.name], host, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"{self.spec.name}: TensorRT execute_async_v3 failed (see the TensorRT log above)")
            for t in self.spec.outputs:
                cuda.memcpy_dtoh_async(self._host[t.name], self._device[t.name], self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return dict(self._outputs)

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
            for dev in self._buffers:
                dev.free()
            self._buffers = []
            # Destroy in reverse order of creation while the context is current.
            for attr in ("_context", "_engine", "_runtime", "_stream"):
                if hasattr(self, attr):
                    delattr(self, attr)
        finally:
            ctx.pop()
            ctx.detach()
            self._ctx = None


def engine_io(trt, engine) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An engine's (inputs, outputs) as TensorSpecs, in the engine's I/O tensor order (-1: dynamic dim)."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        t = TensorSpec(name, shape, dtype)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(t)
    return inputs, outputs
