"""Per-layer precision in the exported graph: int16 Q/DQ, float islands, onnxruntime, check."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hat.deploy import OnnxRuntimeBackend, export_onnx
from hat.deploy.analysis import FLOAT_COMPUTE, analyze
from hat.deploy.int16_qdq import INT16_OPSET
from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_graph import GraphIndex
from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant.modes import calibration_mode
from hat.quant.prepare import conversion_report, convert, freeze
from hat.quant.qconfig import QConfig


class Chain(nn.Module):
    """QuantStub, conv-ReLU, conv-ReLU (``mid``), a residual add, conv-ReLU, a conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.add = FloatFunctional()
        self.post = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)
        self.dq = DeQuantStub()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.stem(self.q(batch["img"]))
        return self.dq(self.head(self.post(self.add.add(x, self.mid(x)))))


def image(seed: int) -> dict[str, torch.Tensor]:
    return {"img": torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(seed))}


def fixed_point(rules) -> nn.Module:
    torch.manual_seed(0)
    model, _ = convert(Chain().eval(), QConfig.from_params({"precision": rules}))
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for seed in range(4):
            model(image(seed))
    with torch.no_grad():
        model(image(0))  # records each layer's input grid for the biases
    return freeze(model)


def zero_point_types(proto: onnx.ModelProto) -> dict[str, set[str]]:
    """module path -> the types of the zero points of its Q/DQ nodes."""
    index = GraphIndex(proto.graph)
    found: dict[str, set[str]] = {}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = index.constant(node.input[2])
            found.setdefault(module_path_of(node.name), set()).add(zero.dtype.name)
    return found


def run(backend: OnnxRuntimeBackend, path: Path, level: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
    out = backend.run(backend.session(path, threads=1, opt_level=level), feeds)
    return np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0])


def assert_agrees(model: nn.Module, path: Path, backend: OnnxRuntimeBackend) -> None:
    """onnxruntime at opt 0 and 3 within one step of the head's grid of the torch fixed point.

    Why one step: where a layer runs in float (int16, float island), onnxruntime's float
    kernel sums in another order than torch's, so a value a hair from a rounding edge of
    the next quantizer may round the other way: one step of that grid, and, through int8
    layers after it, at most one step at the output here. Everything else is exact.
    """
    step = float(model.head.out_quant.scale)
    for seed in (11, 12):
        inputs = image(seed)
        with torch.no_grad():
            expected = model(inputs).numpy()
        for level in (0, 3):
            got = run(backend, path, level, {k: v.numpy() for k, v in inputs.items()})
            diff = np.abs(got - expected)
            assert diff.max() <= step * 1.01, (level, diff.max() / step)
            assert np.mean(diff < step * 0.01) >= 0.98, level


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()


def test_int16_layer_exports_as_16_bit_qdq_and_runs_in_onnxruntime(backend, tmp_path: Path) -> None:
    model = fixed_point([{"modules": "mid.0", "activation": "int16"}])
    path = tmp_path / "int16.onnx"
    info = export_onnx(model, image(0), path)
    proto = onnx.load(str(path))
    assert info.opset == INT16_OPSET and proto.opset_import[0].version == INT16_OPSET
    types = zero_point_types(proto)
    assert types["mid.0"] == {"int16"}  # its weight and its output: 16-bit
    assert types["mid.0.out_quant"] == {"int16"}
    for module in ("q.quant", "stem.0.out_quant", "add.out_quant", "post.0.out_quant", "head.out_quant"):
        assert types[module] <= {"uint8", "int8"}, module
    assert types["stem.0"] == {"int8", "int32"} and types["head"] == {"int8", "int32"}
    index = GraphIndex(proto.graph)
    mid_conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/mid/0/"))
    assert len(mid_conv.input) == 3 and index.constant(mid_conv.input[2]).dtype == np.float32  # bias stays float
    # the saturation proof counts only the 8-bit kernels (stem, post, head), not the int16 conv
    assert info.saturation["dense_kernels"] == 3 and info.saturation["safe_without_vnni"]
    assert_agrees(model, path, backend)


def test_float_island_stays_float_in_onnxruntime_between_int8_layers(backend, tmp_path: Path) -> None:
    model = fixed_point([{"modules": "mid.0", "activation": "float"}])
    path = tmp_path / "float.onnx"
    info = export_onnx(model, image(0), path)
    proto = onnx.load(str(path))
    assert info.opset == 17
    index = GraphIndex(proto.graph)
    mid_conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/mid/0/"))
    weight = mid_conv.input[1]
    assert weight in index.initializers and index.constant(weight).dtype == np.float32
    assert index.dequantized_from(mid_conv.input[0]) is not None  # it reads the stem's int8 output
    assert "mid.0.out_quant" not in zero_point_types(proto)  # its output is not rounded...
    assert_agrees(model, path, backend)
    compiled = onnx.load(str(backend.compile(path, 3, tmp_path / "float.opt3.onnx")))
    ops = [n.op_type for n in compiled.graph.node]
    # ... yet the add after it runs int8 (the boundary), and so do the three int8 convs
    assert ops.count("QLinearConv") == 3 and "QLinearAdd" in ops, ops
    float_convs = [n for n in compiled.graph.node if n.op_type in ("Conv", "FusedConv")]
    assert [module_path_of(n.name) for n in float_convs] == ["mid.0"]


def test_analysis_says_why_each_float_node_is_float(backend, tmp_path: Path) -> None:
    rules = [
        {"modules": "mid.0", "activation": "int16"},
        {"modules": "post.0", "activation": "float", "reason": "sensitivity"},
    ]
    model = fixed_point(rules)
    path = tmp_path / "mixed.onnx"
    export_onnx(model, image(0), path)
    compiled = backend.compile(path, 3, tmp_path / "mixed.opt3.onnx")
    rows = conversion_report(model).not_int8()
    assert [(r["module"], r["activation"], r["reason"]) for r in rows] == [
        ("mid.0", "int16", "configured"),
        ("post.0", "float", "sensitivity"),
    ]
    result = analyze(compiled, exported=path, opt_level=3, modules_not_int8=rows)
    by_module = {
        n.module: n for n in result.nodes if n.category == FLOAT_COMPUTE and n.op_type in ("Conv", "FusedConv")
    }
    assert by_module["mid.0"].why == "configured" and "int16" in by_module["mid.0"].reason
    assert by_module["post.0"].why == "sensitivity"
    adds = [n for n in result.non_int8() if n.op_type == "Add"]
    assert adds and adds[0].why == "no int8 kernel" and "16-bit" in adds[0].reason  # it reads mid's int16 output
    record = result.to_dict()
    assert [r["module"] for r in record["modules_not_int8"]] == ["mid.0", "post.0"]
    assert {n["why"] for n in record["non_int8"]} <= {"configured", "sensitivity", "no int8 kernel"}


def test_a_float_weight_between_int8_tensors_stays_float(backend, tmp_path: Path) -> None:
    """DQ -> Conv(float weight) -> Q: neither the post-pass nor onnxruntime quantizes the weight."""
    model = fixed_point([{"modules": "post.0", "activation": "int8", "weight": "float"}])
    path = tmp_path / "wfloat.onnx"
    info = export_onnx(model, image(0), path)
    assert info.warnings == []  # the float weight is meant: no warning that onnxruntime may quantize it
    proto = onnx.load(str(path))
    index = GraphIndex(proto.graph)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/post/0/"))
    assert index.dequantized_from(conv.input[1]) is None
    assert all(c.op_type == "QuantizeLinear" for c in index.consumers[conv.output[0]])
    original = copy.deepcopy(model.post[0].module.weight.detach().numpy())
    assert np.array_equal(index.constant(conv.input[1]), original)
    compiled = onnx.load(str(backend.compile(path, 3, tmp_path / "wfloat.opt3.onnx")))
    assert [module_path_of(n.name) for n in compiled.graph.node if n.op_type in ("Conv", "FusedConv")] == ["post.0"]
    assert_agrees(model, path, backend)


def test_a_functional_op_off_int8_is_attributed_through_its_quantizer(backend, tmp_path: Path) -> None:
    """The add of a FloatFunctional has no module in the graph; the Q after it names the module."""
    rules = [{"modules": "add", "activation": "int16"}]
    model = fixed_point(rules)
    path = tmp_path / "add16.onnx"
    export_onnx(model, image(0), path)
    compiled = backend.compile(path, 3, tmp_path / "add16.opt3.onnx")
    result = analyze(compiled, exported=path, opt_level=3, modules_not_int8=conversion_report(model).not_int8())
    adds = [n for n in result.non_int8() if n.op_type == "Add"]
    assert len(adds) == 1 and adds[0].module == "" and adds[0].why == "configured", adds
    assert_agrees(model, path, backend)
