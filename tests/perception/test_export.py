"""Export: ONNX graphs named by the spec, TensorRT operator support, engine cache keys, the manifest, and
the ``perception export`` command's arguments and errors."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from perception.backends import BackendUnavailable
from perception.cli_export import add_export_parser, run_export
from perception.export import (
    TENSORRT_ONNX_OPS,
    ExportError,
    build_engine,
    engine_cache_key,
    export_all,
    export_onnx,
    unsupported_tensorrt_ops,
)
from perception.models.spec import NetworkSpec, TensorSpec

HAS_TENSORRT = bool(importlib.util.find_spec("tensorrt") and importlib.util.find_spec("pycuda"))


class ToyScatter(nn.Module):
    """Pillar scatter (index_put into a zero canvas, padding row dropped) followed by a conv and a sigmoid."""

    def __init__(self, name: str = "toy_scatter", accumulate: bool = False):
        super().__init__()
        self.linear = nn.Linear(5, 4)
        self.conv = nn.Conv2d(4, 2, 3, padding=1)
        self.accumulate = accumulate
        self.spec = NetworkSpec(
            name,
            (TensorSpec("points", (1, 12, 3, 5)), TensorSpec("cell", (1, 12), "int64", 0, 17)),
            (TensorSpec("score", (1, 2, 4, 4)),),
        )

    def forward(self, points, cell):
        x = torch.relu(self.linear(points)).max(dim=2).values.reshape(12, 4)
        canvas = torch.zeros(17, 4).index_put((cell.reshape(-1),), x, accumulate=self.accumulate)
        bev = canvas[:-1].reshape(1, 4, 4, 4).permute(0, 3, 1, 2)
        return (torch.sigmoid(self.conv(bev)),)


class ToyDeterminant(nn.Module):
    """Exports to ONNX ``Det``, which TensorRT's ONNX parser does not support."""

    spec = NetworkSpec("toy_det", (TensorSpec("matrices", (2, 3, 3)),), (TensorSpec("det", (2, 1)),))

    def forward(self, matrices):
        return (torch.linalg.det(matrices).unsqueeze(-1),)


@pytest.fixture(scope="module")
def scatter_onnx(tmp_path_factory):
    torch.manual_seed(0)
    module = ToyScatter().eval()
    return module, export_onnx(module, module.spec, tmp_path_factory.mktemp("scatter") / "toy_scatter.onnx")


# --------------------------------------------------------------------------------------------- ONNX graph
def test_exported_graph_is_named_by_the_spec_with_static_shapes(scatter_onnx):
    _, path = scatter_onnx
    model = onnx.load(str(path))
    inputs = [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
              for v in model.graph.input]
    outputs = [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
               for v in model.graph.output]
    assert inputs == [("points", [1, 12, 3, 5], onnx.TensorProto.FLOAT), ("cell", [1, 12], onnx.TensorProto.INT64)]
    assert outputs == [("score", [1, 2, 4, 4], onnx.TensorProto.FLOAT)]
    assert all(d.HasField("dim_value") for v in model.graph.input for d in v.type.tensor_type.shape.dim)
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    assert "ScatterND" in {n.op_type for n in model.graph.node}


def test_module_returning_a_wrong_shape_is_refused_naming_the_output(tmp_path):
    module = ToyScatter().eval()
    module.spec = NetworkSpec("toy_scatter", module.spec.inputs, (TensorSpec("score", (1, 3, 4, 4)),))
    with pytest.raises(ExportError, match=r"toy_scatter\.score: forward\(\) returned float32\[1, 2, 4, 4\], "
                                          r"spec says float32\[1, 3, 4, 4\]"):
        export_onnx(module, module.spec, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------------------------ TensorRT op support
def test_scatter_network_has_no_op_tensorrt_refuses(scatter_onnx):
    _, path = scatter_onnx
    assert unsupported_tensorrt_ops(path) == []


def test_determinant_is_reported_as_unsupported_by_tensorrt(tmp_path):
    module = ToyDeterminant()
    path = export_onnx(module, module.spec, tmp_path / "det.onnx")
    assert unsupported_tensorrt_ops(path) == ["Det"]


def test_accumulating_scatter_is_reported_as_a_tensorrt_restriction(tmp_path):
    module = ToyScatter("toy_scatter_add", accumulate=True).eval()
    path = export_onnx(module, module.spec, tmp_path / "scatter_add.onnx")
    assert unsupported_tensorrt_ops(path) == ["ScatterND(reduction=add)"]


def test_ops_of_other_domains_and_inside_subgraphs_are_checked(tmp_path):
    h = onnx.helper
    then_branch = h.make_graph([h.make_node("Det", ["m"], ["d_then"])], "then", [],
                               [h.make_tensor_value_info("d_then", onnx.TensorProto.FLOAT, [2])])
    else_branch = h.make_graph([h.make_node("Identity", ["v"], ["d_else"])], "else", [],
                               [h.make_tensor_value_info("d_else", onnx.TensorProto.FLOAT, [2])])
    graph = h.make_graph(
        [h.make_node("If", ["c"], ["d"], then_branch=then_branch, else_branch=else_branch),
         h.make_node("FusedGemm", ["v", "v"], ["g"], domain="com.microsoft")],
        "g",
        [h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         h.make_tensor_value_info("m", onnx.TensorProto.FLOAT, [2, 3, 3]),
         h.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [2])],
        [h.make_tensor_value_info("d", onnx.TensorProto.FLOAT, [2]),
         h.make_tensor_value_info("g", onnx.TensorProto.FLOAT, [2])])
    path = tmp_path / "hand.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)]), path)
    assert unsupported_tensorrt_ops(path) == ["Det", "com.microsoft.FusedGemm"]


def test_ops_inside_a_local_function_are_checked_and_the_call_itself_is_not_refused(tmp_path):
    h = onnx.helper
    func = h.make_function("local", "Block", ["x"], ["y"], [h.make_node("Det", ["x"], ["y"])],
                           [h.make_opsetid("", 18)])
    graph = h.make_graph([h.make_node("Block", ["m"], ["d"], domain="local")], "g",
                         [h.make_tensor_value_info("m", onnx.TensorProto.FLOAT, [2, 3, 3])],
                         [h.make_tensor_value_info("d", onnx.TensorProto.FLOAT, [2])])
    path = tmp_path / "function.onnx"
    onnx.save(h.make_model(graph, functions=[func], opset_imports=[h.make_opsetid("", 18),
                                                                     h.make_opsetid("local", 1)]), path)
    assert unsupported_tensorrt_ops(path) == ["Det"]


def test_unread_initializers_and_stack_traces_are_dropped_and_what_an_if_branch_reads_is_kept():
    from perception.export import _tidy

    h = onnx.helper
    add = h.make_node("Add", ["v", "w_then"], ["d_then"])
    h.set_metadata_props(add, {"pkg.torch.onnx.stack_trace": "File ...", "namespace": "bev"})
    then_branch = h.make_graph([add], "then", [],
                               [h.make_tensor_value_info("d_then", onnx.TensorProto.FLOAT, [2])])
    else_branch = h.make_graph([h.make_node("Identity", ["v"], ["d_else"])], "else", [],
                               [h.make_tensor_value_info("d_else", onnx.TensorProto.FLOAT, [2])])
    weights = [onnx.numpy_helper.from_array(np.ones(2, np.float32), name) for name in ("w_then", "w_unused")]
    graph = h.make_graph([h.make_node("If", ["c"], ["d"], then_branch=then_branch, else_branch=else_branch)], "g",
                         [h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                          h.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [2])],
                         [h.make_tensor_value_info("d", onnx.TensorProto.FLOAT, [2])], initializer=weights)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    assert _tidy(model)
    assert [i.name for i in model.graph.initializer] == ["w_then"]
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    kept = then.node[0].metadata_props
    assert [(p.key, p.value) for p in kept] == [("namespace", "bev")]  # the stack trace is gone
    assert not _tidy(model)
    onnx.checker.check_model(model, full_check=True)


def test_the_bev_network_runs_only_the_path_its_lidar_flag_picks_in_the_exported_graph(tmp_path):
    from perception.models.networks import BevNet, NetworkConfig

    torch.manual_seed(0)
    net = BevNet(NetworkConfig(lidarless_path=True, lidar_max_pillars=256)).eval()
    path = export_onnx(net, net.spec, tmp_path / "bev.onnx")
    model = onnx.load(str(path))
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(ifs) == 1 and not any(n.op_type == "Conv" for n in model.graph.node)  # the paths are the branches
    assert unsupported_tensorrt_ops(path) == []


def test_supported_op_list_holds_the_ops_our_networks_use_and_not_the_refused_ones():
    assert {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "Gemm", "MatMul", "ReduceMax", "ScatterND",
            "Sigmoid", "Softmax", "Concat", "Reshape", "Transpose", "Resize", "Slice", "Expand"} <= TENSORRT_ONNX_OPS
    # Refused by the matrix ("N"), and STFT: newer than TensorRT 10.3.
    assert not {"Det", "Unique", "BitShift", "MaxUnpool", "STFT"} & TENSORRT_ONNX_OPS


def test_default_networks_export_without_ops_tensorrt_refuses(tmp_path):
    try:
        from perception.models.networks import default_network_modules
    except ImportError:
        pytest.skip("perception.models.networks.default_network_modules() does not exist yet")
    for module in default_network_modules():
        path = export_onnx(module.eval(), module.spec, tmp_path / f"{module.spec.name}.onnx")
        assert unsupported_tensorrt_ops(path) == [], module.spec.name


# ------------------------------------------------------------------------------------------- engine cache
def test_engine_cache_key_changes_with_graph_tensorrt_gpu_and_precision(tmp_path):
    a = tmp_path / "a.onnx"
    b = tmp_path / "b.onnx"
    a.write_bytes(b"graph one")
    b.write_bytes(b"graph two")
    key = engine_cache_key(a, "10.3.0", "Orin", "fp16")
    assert key == engine_cache_key(a, "10.3.0", "Orin", "fp16")
    assert len(key) == 64 and int(key, 16) >= 0
    others = {engine_cache_key(b, "10.3.0", "Orin", "fp16"), engine_cache_key(a, "10.4.0", "Orin", "fp16"),
              engine_cache_key(a, "10.3.0", "NVIDIA H100", "fp16"), engine_cache_key(a, "10.3.0", "Orin", "fp32")}
    assert key not in others and len(others) == 4
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):
        engine_cache_key(a, "10.3.0", "Orin", "bf16")


def test_build_engine_without_tensorrt_says_what_to_install(scatter_onnx, tmp_path):
    if HAS_TENSORRT:
        pytest.skip("tensorrt and pycuda are installed here")
    _, path = scatter_onnx
    with pytest.raises(BackendUnavailable, match=r"pip install tensorrt pycuda.*JetPack"):
        build_engine(path, "fp16", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ export all
def test_export_all_writes_one_graph_per_network_and_a_manifest(tmp_path):
    modules = [ToyScatter("first").eval(), ToyScatter("second").eval()]
    paths = export_all(modules, tmp_path / "models", backend="onnx", precision="fp32")
    assert paths == [tmp_path / "models" / "first.onnx", tmp_path / "models" / "second.onnx"]
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["opset"] == 18 and manifest["torch_version"] == torch.__version__
    assert manifest["backend"] == "onnx" and manifest["precision"] == "fp32"
    assert [n["name"] for n in manifest["networks"]] == ["first", "second"]
    for entry, path in zip(manifest["networks"], paths):
        assert entry["onnx"] == path.name
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["spec"]["inputs"][1] == {"name": "cell", "shape": [1, 12], "dtype": "int64", "low": 0, "high": 17}
        assert [o["name"] for o in entry["spec"]["outputs"]] == ["score"]


def test_export_all_refuses_reduced_precision_for_onnx(tmp_path):
    with pytest.raises(ValueError, match="ONNX export is fp32; fp16 is a TensorRT build precision"):
        export_all([ToyScatter()], tmp_path, backend="onnx", precision="fp16")
    assert list(tmp_path.iterdir()) == []


def test_export_all_refuses_duplicate_network_names(tmp_path):
    with pytest.raises(ValueError, match=r"network names must be distinct, got \['same', 'same'\]"):
        export_all([ToyScatter("same"), ToyScatter("same")], tmp_path)


def test_export_all_for_tensorrt_fails_before_writing_without_tensorrt(tmp_path):
    if HAS_TENSORRT:
        pytest.skip("tensorrt and pycuda are installed here")
    with pytest.raises(BackendUnavailable, match="pip install tensorrt pycuda"):
        export_all([ToyScatter()], tmp_path / "out", backend="tensorrt", precision="fp16")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------ CLI
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="perception")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_export_command_defaults_to_fp32_onnx():
    args = _parse(["export", "--checkpoint", "model.pt", "--out", "models"])
    assert (args.backend, args.precision, args.opset, args.func) == ("onnx", "fp32", 18, run_export)


def test_export_command_rejects_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        _parse(["export", "--checkpoint", "m.pt", "--out", "o", "--precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_export_command_names_a_missing_checkpoint(tmp_path):
    args = _parse(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.pt"):
        run_export(args)


def test_export_command_refuses_fp16_onnx(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    args = _parse(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--precision", "fp16"])
    with pytest.raises(ExportError, match="--precision fp16 applies to --backend tensorrt"):
        run_export(args)
    assert not (tmp_path / "o").exists()

