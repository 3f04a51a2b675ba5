"""Backends behind one interface: torch and ONNX Runtime agree, start-up and per-call checks name the tensor,
and a missing runtime says what to install. GPU checks carry the ``gpu`` marker."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from perception.backends import BackendUnavailable, open_backend
from perception.export import export_onnx
from perception.models.spec import NetworkSpec, TensorSpec

FP32_RTOL = 1e-4


# ------------------------------------------------------------------------------------------ toy networks
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToyCamera(nn.Module):
    """Camera-style net: conv/BN/ReLU backbone, a coarser branch upsampled bilinearly and concatenated,
    softmax depth head and a feature head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 8, 2), _conv(8, 8))
        self.down = _conv(8, 8, 2)
        self.mix = _conv(16, 8)
        self.depth = nn.Conv2d(8, 6, 1)
        self.features = nn.Conv2d(8, 4, 1)
        self.spec = NetworkSpec(
            "toy_camera",
            (TensorSpec("images", (2, 3, 16, 16), low=0.0, high=1.0),),
            (TensorSpec("depth", (2, 6, 8, 8)), TensorSpec("features", (2, 4, 8, 8))),
        )

    def forward(self, images):
        x = self.stem(images)
        coarse = nn.functional.interpolate(self.down(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.mix(torch.cat([x, coarse], dim=1))
        return torch.softmax(self.depth(x), dim=1), self.features(x)


class ToyPillars(nn.Module):
    """Pillar-style net: per-point Linear/BN/ReLU, max over the pillar's points, index_put of the pillars
    into a zero canvas (last row = padding, dropped), BEV convs with a nearest upsample, sigmoid heatmap."""

    NX = NY = 8
    CH = 8

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, self.CH, bias=False)
        self.norm = nn.BatchNorm1d(self.CH)
        self.bev = _conv(self.CH + 1, 8)
        self.down = _conv(8, 8, 2)
        self.heatmap = nn.Conv2d(16, 3, 1)
        self.regression = nn.Conv2d(16, 4, 1)
        n = self.NX * self.NY
        self.spec = NetworkSpec(
            "toy_pillars",
            (TensorSpec("pillars", (1, 20, 4, 6)), TensorSpec("index", (1, 20), "int64", 0, n + 1),
             TensorSpec("presence", (1, 1), low=0.0, high=1.0)),
            (TensorSpec("heatmap", (1, 3, self.NY, self.NX)), TensorSpec("regression", (1, 4, self.NY, self.NX))),
        )

    def forward(self, pillars, index, presence):
        b, p, m, f = pillars.shape
        x = torch.relu(self.norm(self.linear(pillars.reshape(b * p * m, f)))).reshape(b, p, m, self.CH)
        x = x.max(dim=2).values
        n = self.NX * self.NY + 1
        canvas = torch.zeros(b * n, self.CH, dtype=x.dtype)
        canvas = canvas.index_put((index.reshape(-1),), x.reshape(b * p, self.CH))
        bev = canvas.reshape(b, n, self.CH)[:, :-1].reshape(b, self.NY, self.NX, self.CH).permute(0, 3, 1, 2)
        flags = presence.view(b, 1, 1, 1).expand(-1, 1, self.NY, self.NX)
        x = self.bev(torch.cat([bev * presence.view(b, 1, 1, 1), flags], dim=1))
        up = nn.functional.interpolate(self.down(x), scale_factor=2.0, mode="nearest")
        x = torch.cat([x, up], dim=1)
        return torch.sigmoid(self.heatmap(x)), self.regression(x)


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, so eval-mode BN (folded at export) is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


TOYS = {"camera": ToyCamera, "pillars": ToyPillars}


def parity_inputs(spec: NetworkSpec, seed: int) -> dict[str, np.ndarray]:
    """``spec.random_inputs`` with integer (index) tensors drawn without replacement.

    A scatter with two pillars in one cell has no defined result (torch and ONNX Runtime may keep either),
    and pillarization never produces that except on the dropped padding row; unique draws keep the
    comparison well defined.
    """
    feeds = spec.random_inputs(seed)
    rng = np.random.default_rng(seed + 1000)
    for t in spec.inputs:
        size = int(np.prod(t.shape))
        if np.issubdtype(np.dtype(t.dtype), np.integer) and int(t.high) - int(t.low) >= size:
            feeds[t.name] = (rng.permutation(int(t.high) - int(t.low))[:size] + int(t.low)).reshape(t.shape).astype(t.dtype)
    return feeds


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (elementwise ratios blow up near zero)."""
    return float(np.max(np.abs(got.astype(np.float64) - want)) / max(float(np.max(np.abs(want))), 1e-12))


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """name -> (module, onnx path), exported once for the file."""
    out = tmp_path_factory.mktemp("toys")
    built = {}
    for i, (name, cls) in enumerate(TOYS.items()):
        torch.manual_seed(i)
        module = _randomized(cls(), seed=i)
        built[name] = (module, export_onnx(module, module.spec, out / f"{module.spec.name}.onnx"))
    return built


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", sorted(TOYS))
def test_onnxruntime_matches_torch_on_toy_network(toys, name):
    module, onnx_path = toys[name]
    spec = module.spec
    with open_backend("torch", spec, module=module) as ref, \
            open_backend("onnxruntime", spec, onnx_path=onnx_path, threads=1) as ort:
        assert ref.name == "torch" and ort.name == "onnxruntime"
        for seed in (0, 1):  # a second call must not see the first call's bindings
            feeds = parity_inputs(spec, seed)
            want = {k: v.copy() for k, v in ref(feeds).items()}
            got = ort(feeds)
            assert list(got) == spec.output_names
            for t in spec.outputs:
                assert got[t.name].shape == t.shape and got[t.name].dtype == np.dtype(t.dtype)
                err = relative_error(got[t.name], want[t.name])
                assert err < FP32_RTOL, f"{spec.name}.{t.name} seed {seed}: relative error {err:.2e}"


def test_torch_backend_output_equals_calling_the_module(toys):
    module, _ = toys["pillars"]
    feeds = parity_inputs(module.spec, 3)
    with torch.inference_mode():
        direct = module(*(torch.from_numpy(feeds[n]) for n in module.spec.input_names))
    with open_backend("torch", module.spec, module=module) as backend:
        out = backend(feeds)
    for t, d in zip(module.spec.outputs, direct):
        np.testing.assert_array_equal(out[t.name], d.numpy())


def _default_networks():
    try:
        from perception.models.networks import default_network_modules
    except ImportError:
        pytest.skip("perception.models.networks.default_network_modules() does not exist yet")
    return default_network_modules()


def test_default_networks_match_between_torch_and_onnxruntime(tmp_path):
    for i, module in enumerate(_default_networks()):
        module = _randomized(module, seed=10 + i)
        spec = module.spec
        onnx_path = export_onnx(module, spec, tmp_path / f"{spec.name}.onnx")
        feeds = parity_inputs(spec, 0)
        with open_backend("torch", spec, module=module) as ref, open_backend("onnxruntime", spec, onnx_path=onnx_path) as ort:
            want = {k: v.copy() for k, v in ref(feeds).items()}
            got = ort(feeds)
        for t in spec.outputs:
            err = relative_error(got[t.name], want[t.name])
            assert err < FP32_RTOL, f"{spec.name}.{t.name}: relative error {err:.2e}"


# ------------------------------------------------------------------------------------------ start-up checks
def _with_output(spec: NetworkSpec, index: int, **change) -> NetworkSpec:
    outputs = list(spec.outputs)
    outputs[index] = dataclasses.replace(outputs[index], **change)
    return dataclasses.replace(spec, outputs=tuple(outputs))


def test_graph_output_shape_differing_from_spec_is_refused_naming_the_tensor(toys):
    module, onnx_path = toys["pillars"]
    wrong = _with_output(module.spec, 1, shape=(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"toy_pillars: model output 'regression' is float32\[1, 4, 8, 8\], "
                                         r"spec says float32\[1, 5, 8, 8\]"):
        open_backend("onnxruntime", wrong, onnx_path=onnx_path)


def test_graph_input_dtype_differing_from_spec_is_refused_naming_the_tensor(toys):
    module, onnx_path = toys["pillars"]
    inputs = list(module.spec.inputs)
    inputs[1] = dataclasses.replace(inputs[1], dtype="int32")
    wrong = dataclasses.replace(module.spec, inputs=tuple(inputs))
    with pytest.raises(ValueError, match=r"model input 'index' is int64\[1, 20\], spec says int32"):
        open_backend("onnxruntime", wrong, onnx_path=onnx_path)


def test_spec_tensor_missing_from_graph_is_refused_naming_it(toys):
    module, onnx_path = toys["camera"]
    wrong = _with_output(module.spec, 0, name="depth_probs")
    with pytest.raises(ValueError, match=r"the model has no output 'depth_probs'"):
        open_backend("onnxruntime", wrong, onnx_path=onnx_path)


def test_torch_module_whose_spec_differs_is_refused(toys):
    module, _ = toys["camera"]
    wrong = _with_output(module.spec, 1, shape=(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"output 'features'"):
        open_backend("torch", wrong, module=module)


# ------------------------------------------------------------------------------------------ per-call checks
@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_feed_with_wrong_dtype_is_refused_naming_the_tensor(toys, kind):
    module, onnx_path = toys["pillars"]
    feeds = parity_inputs(module.spec, 0)
    feeds["pillars"] = feeds["pillars"].astype(np.float64)
    with open_backend(kind, module.spec, module=module, onnx_path=onnx_path) as backend, \
            pytest.raises(ValueError, match=r"toy_pillars\.pillars: got float64\[1, 20, 4, 6\], spec says float32"):
        backend(feeds)


def test_missing_feed_is_refused_naming_it(toys):
    module, onnx_path = toys["pillars"]
    feeds = parity_inputs(module.spec, 0)
    del feeds["presence"]
    with open_backend("onnxruntime", module.spec, onnx_path=onnx_path) as backend, \
            pytest.raises(ValueError, match=r"missing \['presence'\]"):
        backend(feeds)


# ------------------------------------------------------------------------------------- unavailable runtimes
def test_tensorrt_unavailable_says_what_to_install(toys, tmp_path):
    if importlib.util.find_spec("tensorrt") and importlib.util.find_spec("pycuda"):
        pytest.skip("tensorrt and pycuda are installed here")
    module, _ = toys["camera"]
    engine = tmp_path / "toy_camera.engine"
    engine.write_bytes(b"not read: the runtime check comes first")
    with pytest.raises(BackendUnavailable) as err:
        open_backend("tensorrt", module.spec, engine_path=engine)
    message = str(err.value)
    assert "pip install tensorrt pycuda" in message
    assert "JetPack" in message


def test_onnxruntime_on_cuda_without_gpu_build_says_what_to_install(toys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    module, onnx_path = toys["camera"]
    with pytest.raises(BackendUnavailable, match=r"pip install onnxruntime-gpu"):
        open_backend("onnxruntime", module.spec, onnx_path=onnx_path, device="cuda")


def test_unknown_backend_kind_lists_the_kinds(toys):
    module, _ = toys["camera"]
    with pytest.raises(ValueError, match=r"unknown backend 'openvino': choose one of torch, onnxruntime, tensorrt"):
        open_backend("openvino", module.spec, module=module)


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(TOYS))
def test_torch_cuda_fp16_stays_close_to_fp32(toys, name):
    module, _ = toys[name]
    spec = module.spec
    feeds = parity_inputs(spec, 0)
    with open_backend("torch", spec, module=module, device="cpu") as ref:
        want = {k: v.copy() for k, v in ref(feeds).items()}
    for fp16, rtol in ((False, 1e-4), (True, 1e-2)):
        gpu_module = copy.deepcopy(module)  # the backend moves its module to the GPU
        with open_backend("torch", spec, module=gpu_module, device="cuda", fp16=fp16) as backend:
            got = backend(feeds)
            for t in spec.outputs:
                assert got[t.name].dtype == np.dtype(t.dtype)
                err = relative_error(got[t.name], want[t.name])
                assert err < rtol, f"{spec.name}.{t.name} fp16={fp16}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(TOYS))
def test_onnxruntime_cuda_matches_cpu(toys, name):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    module, onnx_path = toys[name]
    spec = module.spec
    feeds = parity_inputs(spec, 0)
    with open_backend("onnxruntime", spec, onnx_path=onnx_path) as cpu, \
            open_backend("onnxruntime", spec, onnx_path=onnx_path, device="cuda") as gpu:
        assert gpu.providers[0] == "CUDAExecutionProvider"
        want = {k: v.copy() for k, v in cpu(feeds).items()}
        got = gpu(feeds)
    for t in spec.outputs:
        assert relative_error(got[t.name], want[t.name]) < FP32_RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_tensorrt_engine_matches_onnxruntime(toys, tmp_path, precision, rtol):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt pycuda)")
    pytest.importorskip("pycuda", reason="pycuda is not installed (pip install pycuda)")
    from perception.export import build_engine

    for name in sorted(TOYS):
        module, onnx_path = toys[name]
        spec = module.spec
        engine = build_engine(onnx_path, precision, tmp_path)
        assert build_engine(onnx_path, precision, tmp_path) == engine  # second build: cache hit
        feeds = parity_inputs(spec, 0)
        with open_backend("onnxruntime", spec, onnx_path=onnx_path) as ort, \
                open_backend("tensorrt", spec, engine_path=engine) as trt:
            want = {k: v.copy() for k, v in ort(feeds).items()}
            for _ in range(2):
                got = trt(feeds)
                for t in spec.outputs:
                    err = relative_error(got[t.name], want[t.name])
                    assert err < rtol, f"{spec.name}.{t.name} {precision}: relative error {err:.2e}"
