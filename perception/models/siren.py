"""The siren network: a small CNN on one window of log-mel features -> probability that a siren sounds.

Input ``log_mel`` (1, 1, N_MELS, N_FRAMES) float32 [dB re full scale^2] as :func:`perception.audio.log_mel`
makes it; output ``siren_prob`` (1, 1) float32 after a sigmoid. Level invariance is built into the
graph: the window is clamped to TOP_DB below its loudest cell and standardised (mean 0, standard
deviation 1, with a 1 dB floor so digital silence stays flat instead of amplifying rounding), so the
recording gain never matters and the export needs no separate preprocessing.

Layers: four 3x3 conv blocks (batch norm, ReLU; 2x2 max pooling after the first three), then the mean
over time, keeping the 8 frequency rows (where in the spectrum a tone sits matters: sirens live at
0.3-2 kHz), and a linear layer on the flattened (channels x 8) vector. About 50k parameters with the
default widths.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from perception.audio import N_FRAMES, N_MELS, SIREN_INPUT, SIREN_NETWORK, SIREN_OUTPUT, SirenNetwork
from perception.models.spec import NetworkSpec, TensorSpec

TOP_DB = 80.0
DEFAULT_CHANNELS = (16, 32, 48, 64)

SIREN_SPEC = NetworkSpec(
    SIREN_NETWORK,
    inputs=(TensorSpec(SIREN_INPUT, (1, 1, N_MELS, N_FRAMES), "float32", low=-100.0, high=0.0),),
    outputs=(TensorSpec(SIREN_OUTPUT, (1, 1), "float32", low=0.0, high=1.0),),
)


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SirenNet(nn.Module):
    """Siren / no siren from one log-mel window.

    Args:
        channels: widths of the four conv blocks.
    forward: (B, 1, N_MELS, N_FRAMES) float32 [dB] -> (B, 1) float32 probability (sigmoid applied);
    :meth:`logits` gives the pre-sigmoid value for training.
    """

    spec = SIREN_SPEC

    def __init__(self, channels: tuple[int, ...] = DEFAULT_CHANNELS):
        super().__init__()
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"SirenNet: channels must be 4 positive widths, got {channels}")
        self.channels = tuple(int(c) for c in channels)
        c1, c2, c3, c4 = self.channels
        self.features = nn.Sequential(_block(1, c1, True), _block(c1, c2, True), _block(c2, c3, True),
                                      _block(c3, c4, False))
        self.rows = N_MELS // 8
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c4 * self.rows, 1))

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) dB -> clamped to TOP_DB below each window's maximum, then standardised."""
        peak = x.amax(dim=(2, 3), keepdim=True)
        x = torch.maximum(x, peak - TOP_DB)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
        return (x - mean) / (std + 1.0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N_MELS, N_FRAMES) dB -> (B, 1) logits."""
        h = self.features(self.normalize(x))  # (B, C, N_MELS / 8, N_FRAMES / 8)
        h = h.mean(dim=3).flatten(1)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_network(model: SirenNet, num_threads: int | None = None) -> SirenNetwork:
    """The torch backend behind the named-array interface: ``{"log_mel": ...} -> {"siren_prob": ...}``,
    checked against SIREN_SPEC on both sides. Runs in eval mode without gradients on the CPU.

    Args:
        model: the network.
        num_threads: None leaves torch's thread setting alone. A number sets torch's intra-op threads for
            each call and restores the previous value after it; that setting is process-wide, so use it
            only where nothing else runs torch at the same time (offline scoring, tests). One thread is the
            fastest for this ~10 MFLOP window (~1.5 ms); two threads on busy cores can stall for 100+ ms
            waiting for each other. Inside a pipeline prefer :func:`onnxruntime_network`, whose thread
            count belongs to its session.
    """
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"torch_network: num_threads must be >= 1 or None, got {num_threads}")
    model = model.eval()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        SIREN_SPEC.check_inputs(feeds)
        previous = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            with torch.inference_mode():
                prob = model(torch.from_numpy(np.ascontiguousarray(feeds[SIREN_INPUT]))).numpy()
        finally:
            if num_threads is not None:
                torch.set_num_threads(previous)
        out = {SIREN_OUTPUT: prob.astype(np.float32)}
        SIREN_SPEC.check_outputs(out)
        return out

    return run


def onnxruntime_network(model: SirenNet, num_threads: int = 1) -> SirenNetwork:
    """The same network exported to ONNX (in memory) and run by an ONNX Runtime CPU session with its own
    ``num_threads`` intra-op threads (nothing process-wide changes). Checks SIREN_SPEC at start-up
    (the session's tensor names and shapes) and on every call."""
    import io

    import onnxruntime as ort

    buffer = io.BytesIO()
    export_siren_onnx(model, buffer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    got = [(i.name, tuple(i.shape)) for i in session.get_inputs()]
    want = [(t.name, t.shape) for t in SIREN_SPEC.inputs]
    if got != want:
        raise ValueError(f"siren ONNX graph inputs {got} do not match the spec {want}")

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        SIREN_SPEC.check_inputs(feeds)
        out = dict(zip(SIREN_SPEC.output_names, session.run(SIREN_SPEC.output_names, feeds)))
        SIREN_SPEC.check_outputs(out)
        return out

    return run


def load_siren_model(path: str | Path) -> SirenNet:
    """A SirenNet from a checkpoint ``{"config": {...}, "state_dict": ..., "val": {...}}`` written by
    :func:`perception.train_siren.train_siren` (loaded with ``weights_only=True``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"siren weights not found: {path}")
    ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a siren checkpoint (expected keys 'config' and 'state_dict')")
    channels = tuple(ckpt["config"].get("channels", DEFAULT_CHANNELS))
    model = SirenNet(channels)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit SirenNet{channels}: {e}") from e
    return model.eval()


def export_siren_onnx(model: SirenNet, path: str | Path | BinaryIO, opset: int = 17) -> str | Path | BinaryIO:
    """Write ``model`` as ONNX with SIREN_SPEC's names and static shapes.

    Args:
        model: the network; path: a file path, or a binary buffer to write the graph into.
    Returns:
        ``path`` (a Path when a string was given).
    """
    if isinstance(path, (str, Path)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        target: str | BinaryIO = str(path)
    else:
        target = path
    example = torch.from_numpy(SIREN_SPEC.random_inputs(0)[SIREN_INPUT])
    # The TorchScript exporter: this graph is plain convolutions with static shapes, which it exports in
    # well under a second with ONNX Runtime matching torch to float rounding (the torch.export-based
    # exporter takes ~6 s here for the same graph). Its deprecation notice is not for us to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), target, input_names=SIREN_SPEC.input_names,
                          output_names=SIREN_SPEC.output_names, opset_version=opset, dynamo=False)
    return path
