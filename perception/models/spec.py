"""One I/O spec per network: tensor names, static shapes and dtypes.

The same :class:`NetworkSpec` names the ONNX graph at export, is checked by every backend at start-up
(a mismatch is an error naming the tensor), and generates random inputs for parity tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor.

    Args:
        name: the tensor's name in the ONNX graph and in the backend's input/output dicts.
        shape: static shape (no dynamic axes; batch is part of the shape).
        dtype: numpy dtype name, ``float32`` | ``float16`` | ``int64`` | ``int32`` | ``bool``.
        low, high: range for random inputs (integers: ``[low, high)``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = -1.0
    high: float = 1.0

    def check(self, array: np.ndarray, network: str) -> None:
        """ValueError naming network and tensor unless ``array`` has this shape and dtype."""
        if tuple(array.shape) != self.shape or array.dtype != np.dtype(self.dtype):
            raise ValueError(f"{network}.{self.name}: got {array.dtype}{list(array.shape)}, "
                             f"spec says {self.dtype}{list(self.shape)}")

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A random array of this shape and dtype in [low, high)."""
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(int(self.low), int(self.high), size=self.shape).astype(self.dtype)
        if self.dtype == "bool":
            return rng.random(self.shape) < 0.5
        return rng.uniform(self.low, self.high, size=self.shape).astype(self.dtype)


@dataclass(frozen=True)
class NetworkSpec:
    """Inputs and outputs of one network, in graph order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """ValueError unless ``feeds`` has exactly the spec's inputs with their shapes and dtypes."""
        _check_names(self.name, "inputs", set(feeds), self.input_names)
        for t in self.inputs:
            t.check(feeds[t.name], self.name)

    def check_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """ValueError unless ``outputs`` has exactly the spec's outputs with their shapes and dtypes."""
        _check_names(self.name, "outputs", set(outputs), self.output_names)
        for t in self.outputs:
            t.check(outputs[t.name], self.name)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs for parity tests."""
        rng = np.random.default_rng(seed)
        return {t.name: t.random(rng) for t in self.inputs}


def _check_names(network: str, what: str, got: set[str], want: list[str]) -> None:
    if got != set(want):
        missing = sorted(set(want) - got)
        extra = sorted(got - set(want))
        raise ValueError(f"{network} {what}: missing {missing}, unexpected {extra} (spec: {want})")
