"""The one interface every inference backend implements: named numpy tensors in, named numpy tensors out.

A backend is opened for one network and checked at start-up against that network's
:class:`~perception.models.spec.NetworkSpec` (names, static shapes, dtypes of what the model itself
declares: the torch module's ``spec``, the ONNX graph's inputs and outputs, the TensorRT engine's I/O
tensors). Every call checks the feeds against the spec (a dict walk and a few tuple compares); the outputs
are checked on the first call only, since after start-up they come from buffers sized from the spec.
"""

from __future__ import annotations

import abc
from typing import Literal

import numpy as np

from perception.models.spec import NetworkSpec, TensorSpec

BackendKind = Literal["torch", "onnxruntime", "tensorrt"]


class BackendUnavailable(RuntimeError):
    """The backend's runtime is not installed (or has no device) on this machine; the message says what to install."""


class Backend(abc.ABC):
    """One network, ready to run.

    Attributes:
        spec: the network's I/O spec; feeds must match it exactly.
        name: the backend kind (``torch`` | ``onnxruntime`` | ``tensorrt``).

    Not thread-safe: one caller at a time. The arrays returned by a call are the backend's own output
    buffers and are overwritten by the next call; copy what must outlive it.
    """

    name: str

    def __init__(self, spec: NetworkSpec):
        self.spec = spec
        self._outputs_checked = False

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network once.

        Args:
            feeds: one array per ``spec.inputs`` name, with exactly that tensor's shape and dtype.
        Returns:
            one array per ``spec.outputs`` name (shape and dtype of the spec), valid until the next call.
        Raises:
            ValueError: naming the network and tensor when a feed is missing, extra, or of the wrong
                shape or dtype.
        """
        self.spec.check_inputs(feeds)
        outputs = self._run(feeds)
        if not self._outputs_checked:
            self.spec.check_outputs(outputs)
            self._outputs_checked = True
        return outputs

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on feeds already checked against the spec."""

    def close(self) -> None:
        """Release device memory and sessions (idempotent). The backend is unusable afterwards."""

    def __enter__(self):  # -> the backend itself
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r})"


def check_declared_io(spec: NetworkSpec, what: str, declared: list[TensorSpec],
                      expected: tuple[TensorSpec, ...], ordered: bool = True) -> None:
    """Start-up check: what a model declares must equal the spec, in names, order, shapes and dtypes.

    Args:
        spec: the network's spec (for the message).
        what: ``inputs`` or ``outputs``.
        declared: the model's own declaration (only ``name``, ``shape``, ``dtype`` are compared; a dynamic
            dimension is given as -1 and never equals a spec dimension).
        expected: ``spec.inputs`` or ``spec.outputs``.
        ordered: also require the spec's order (ONNX graphs; a TensorRT engine's I/O is bound by name).
    Raises:
        ValueError: naming the first tensor that differs.
    """
    got = {t.name: t for t in declared}
    want_names = [t.name for t in expected]
    for t in expected:
        if t.name not in got:
            raise ValueError(f"{spec.name}: the model has no {what[:-1]} '{t.name}' "
                             f"(model {what}: {[d.name for d in declared]}, spec: {want_names})")
        d = got[t.name]
        if tuple(d.shape) != tuple(t.shape) or not _same_dtype(d.dtype, t.dtype):
            shape = ["?" if s < 0 else s for s in d.shape]
            raise ValueError(f"{spec.name}: model {what[:-1]} '{t.name}' is {d.dtype}{shape}, "
                             f"spec says {t.dtype}{list(t.shape)}")
    extra = [d.name for d in declared if d.name not in want_names]
    if extra:
        raise ValueError(f"{spec.name}: model {what[:-1]} '{extra[0]}' is not in the spec (spec {what}: {want_names})")
    if ordered and [d.name for d in declared] != want_names:
        raise ValueError(f"{spec.name}: model {what} are in the order {[d.name for d in declared]}, "
                         f"spec says {want_names}")


def _same_dtype(a: str, b: str) -> bool:
    try:
        return np.dtype(a) == np.dtype(b)
    except TypeError:  # a type numpy does not know (e.g. an ONNX string tensor)
        return False
