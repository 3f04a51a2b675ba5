"""Inference backends behind one interface: named numpy tensors in, named numpy tensors out.

``open_backend(kind, spec, ...)`` is the only place a backend name becomes a class (one if-chain below).
Each backend module imports its runtime lazily, so ``import perception.backends`` needs neither torch's
CUDA, onnxruntime-gpu nor TensorRT; asking for a runtime this machine lacks raises
:class:`BackendUnavailable` with what to install.
"""

from __future__ import annotations

import os

from perception.backends.base import (
    Backend,
    BackendKind,
    BackendUnavailable,
    check_declared_io,
)
from perception.models.spec import NetworkSpec

BACKEND_KINDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["BACKEND_KINDS", "Backend", "BackendKind", "BackendUnavailable", "check_declared_io", "open_backend"]


def open_backend(kind: BackendKind, spec: NetworkSpec, module=None, onnx_path: str | os.PathLike | None = None,
                 engine_path: str | os.PathLike | None = None, device: str | None = None,
                 threads: int | None = None, fp16: bool = False) -> Backend:
    """Open one network on one backend, checked against its spec.

    Args:
        kind: ``torch`` | ``onnxruntime`` | ``tensorrt``.
        spec: the network's I/O spec (``module.spec`` of the network).
        module: the ``torch.nn.Module`` (torch only).
        onnx_path: the exported ``.onnx`` graph (onnxruntime only).
        engine_path: the serialized ``.engine`` (tensorrt only).
        device: ``cpu`` | ``cuda`` | ``cuda:N``; None: ``cpu`` for torch and onnxruntime, ``cuda`` for tensorrt.
        threads: CPU intra-op threads (torch, onnxruntime); None: the runtime's default.
        fp16: run the torch module in half precision (torch on CUDA only; a TensorRT engine's precision is
            chosen when it is built).
    Returns:
        the backend; call it with ``{input name: array}``, close it (or use ``with``) to free device memory.
    Raises:
        ValueError: unknown kind, a missing model argument, or the model's I/O differs from the spec (the
            message names the tensor).
        BackendUnavailable: the runtime (or its GPU support) is not installed; the message says what to install.
    """
    if kind == "torch":
        if module is None:
            raise ValueError(f"{spec.name}: the torch backend needs module=")
        from perception.backends.torch_backend import TorchBackend

        return TorchBackend(spec, module, device=device or "cpu", fp16=fp16, threads=threads)
    if fp16:
        raise ValueError(f"fp16= applies to the torch backend only; a {kind} model's precision is fixed at export/build")
    if kind == "onnxruntime":
        if onnx_path is None:
            raise ValueError(f"{spec.name}: the onnxruntime backend needs onnx_path=")
        from perception.backends.ort_backend import OrtBackend

        return OrtBackend(spec, onnx_path, device=device or "cpu", threads=threads)
    if kind == "tensorrt":
        if engine_path is None:
            raise ValueError(f"{spec.name}: the tensorrt backend needs engine_path=")
        from perception.backends.trt_backend import TensorRTBackend

        return TensorRTBackend(spec, engine_path, device=device or "cuda")
    raise ValueError(f"unknown backend {kind!r}: choose one of {', '.join(BACKEND_KINDS)}")
