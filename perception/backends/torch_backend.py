"""PyTorch backend: the training module itself, in eval mode under ``torch.inference_mode``.

The reference the other backends are compared against. Inputs are copied into tensors allocated once on
the device and results into host buffers allocated once (page-locked on CUDA), so a call allocates no
input/output memory; intermediate activations come from PyTorch's caching allocator.
"""

from __future__ import annotations

import numpy as np

from perception.backends.base import Backend, BackendUnavailable
from perception.models.spec import NetworkSpec


class TorchBackend(Backend):
    """Runs a ``torch.nn.Module`` whose ``forward(*inputs)`` takes ``spec.inputs`` positionally and returns
    a tuple in ``spec.outputs`` order.

    Args:
        spec: the network's I/O spec; when the module carries a ``spec`` attribute it must equal this one.
        module: the network (put into eval mode; moved to ``device``, and to half precision with ``fp16``).
        device: ``cpu`` or ``cuda`` / ``cuda:N``.
        fp16: run the module in float16 (CUDA only): float inputs are cast to float16 on the device and
            outputs cast back to the spec's dtypes.
        threads: torch intra-op threads on CPU (``torch.set_num_threads``, process-wide); None leaves it.
    """

    name = "torch"

    def __init__(self, spec: NetworkSpec, module, device: str = "cpu", fp16: bool = False,
                 threads: int | None = None):
        super().__init__(spec)
        import torch

        declared = getattr(module, "spec", None)
        if declared is not None and declared != spec:
            raise ValueError(f"{spec.name}: the module's spec differs from the one given: "
                             f"{_first_difference(declared, spec)}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend on '{device}': this torch build sees no CUDA device "
                                     f"(torch {torch.__version__}); install a CUDA build of torch or use device='cpu'")
        if fp16 and dev.type != "cuda":
            raise ValueError("fp16 needs device='cuda' (half-precision convolutions on CPU are slow and not our target)")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.device = dev
        self.fp16 = fp16
        self._module = module.eval().to(dev)
        if fp16:
            self._module = self._module.half()
        pin = dev.type == "cuda"
        self._inputs = []
        for t in spec.inputs:
            dtype = _torch_dtype(torch, t.dtype)
            if fp16 and dtype.is_floating_point:
                dtype = torch.float16
            self._inputs.append(torch.empty(t.shape, dtype=dtype, device=dev))
        self._outputs = {t.name: torch.empty(t.shape, dtype=_torch_dtype(torch, t.dtype), pin_memory=pin)
                         for t in spec.outputs}
        self._output_arrays = {name: buf.numpy() for name, buf in self._outputs.items()}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            for buf, t in zip(self._inputs, self.spec.inputs):
                buf.copy_(torch.from_numpy(np.ascontiguousarray(feeds[t.name])), non_blocking=True)
            result = self._module(*self._inputs)
            if isinstance(result, torch.Tensor):
                result = (result,)
            if len(result) != len(self.spec.outputs):
                raise ValueError(f"{self.spec.name}: the module returned {len(result)} tensors, "
                                 f"spec lists {len(self.spec.outputs)} outputs {self.spec.output_names}")
            for t, r in zip(self.spec.outputs, result):
                out = self._outputs[t.name]
                if tuple(r.shape) != tuple(out.shape):
                    raise ValueError(f"{self.spec.name}.{t.name}: the module returned shape {list(r.shape)}, "
                                     f"spec says {list(t.shape)}")
                out.copy_(r, non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        return dict(self._output_arrays)

    def close(self) -> None:
        self._inputs = []


def _torch_dtype(torch, name: str):
    return {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
            "bool": torch.bool}[name]


def _first_difference(a: NetworkSpec, b: NetworkSpec) -> str:
    if a.name != b.name:
        return f"name '{a.name}' vs '{b.name}'"
    for what, x, y in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        if [t.name for t in x] != [t.name for t in y]:
            return f"{what} names {[t.name for t in x]} vs {[t.name for t in y]}"
        for s, t in zip(x, y):
            if s != t:
                return f"{what} '{s.name}': {s} vs {t}"
    return "specs differ"
