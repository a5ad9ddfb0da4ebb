"""The first tensor where onnxruntime parts from the torch fixed-point model (hat.deploy.divergence)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from hat.deploy import OnnxRuntimeBackend, export_onnx
from hat.deploy.divergence import (
    Activation,
    DivergenceReport,
    ForcedActivations,
    TorchActivations,
    activations_of,
    channels_last_tensors,
    compare_sample,
    layer_of,
    optimized_tensors,
)
from hat.deploy.tensor_probe import run_exposed
from hat.quant import DeQuantStub, QuantStub
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


def _graph(nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [])


def test_channels_last_is_followed_through_the_layout_transform() -> None:
    graph = _graph(
        [
            _node("QuantizeLinear", ["x", "s", "z"], ["q"], "/quant/QuantizeLinear"),
            _node("Transpose", ["q"], ["t"], "Transpose", perm=[0, 2, 3, 1]),
            _node("QLinearConv", ["t"], ["/a/Conv"], "/a/Conv_token_1", channels_last=1),
            _node("QLinearAdd", ["/a/Conv", "t"], ["/b/Add"], "/b/Add"),
            _node("Transpose", ["/b/Add"], ["back"], "Transpose_2", perm=[0, 3, 1, 2]),
            _node("Relu", ["back"], ["r"], "/c/Relu"),
            _node("Reshape", ["/b/Add", "shape"], ["flat"], "/d/Reshape"),
        ]
    )
    assert channels_last_tensors(graph) == {"t", "/a/Conv", "/b/Add"}


def test_optimized_nodes_lead_back_to_the_quantizer_of_their_origin() -> None:
    exported = helper.make_model(
        _graph(
            [
                _node("QuantizeLinear", ["x", "s", "z"], ["xq"], "/quant/quant/QuantizeLinear"),
                _node("DequantizeLinear", ["xq", "s", "z"], ["xd"], "/quant/quant/DequantizeLinear"),
                _node("Conv", ["xd", "w"], ["/a/Conv_output_0"], "/a/Conv"),
                _node("QuantizeLinear", ["/a/Conv_output_0", "s", "z"], ["aq"], "/a/out_quant/QuantizeLinear"),
            ]
        )
    )
    optimized = helper.make_model(
        _graph(
            [
                _node("QuantizeLinear", ["x", "s", "z"], ["xq"], "/quant/quant/QuantizeLinear"),
                _node("QLinearConv", ["xq"], ["/a/Conv"], "/a/Conv_token_7", channels_last=1),
                _node("Transpose", ["/a/Conv"], ["out"], "Transpose_token_9", perm=[0, 3, 1, 2]),
            ]
        )
    )
    assert optimized_tensors(exported, optimized) == {
        "/quant/quant/QuantizeLinear": ["xq"],
        "/a/out_quant/QuantizeLinear": ["/a/Conv"],
    }


def _activation(node: str, module: str, scale: float = 0.5, zero_point: int = 0) -> Activation:
    return Activation(node=node, module=module, scale=scale, zero_point=zero_point)


def test_the_first_tensor_beyond_one_step_is_reported_in_graph_order() -> None:
    ref_a = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2) * 0.5  # codes 0..7, C = H = W
    ref_b = np.full((1, 3), 1.0, dtype=np.float32)  # codes 2
    ref_c = np.full((1, 3), 1.0, dtype=np.float32)
    acts = [_activation("qa", "a.out_quant"), _activation("qb", "b.out_quant"), _activation("qc", "c")]
    candidates = {"qa": ["ta"], "qb": ["tb"], "qc": ["tc"]}
    torch_values = {"a.out_quant": [ref_a], "b.out_quant": [ref_b], "c": [ref_c]}
    ort = {
        "ta": np.ascontiguousarray(np.arange(8).reshape(1, 2, 2, 2).transpose(0, 2, 3, 1)).astype(np.uint8),
        "tb": np.array([[2, 6, 3]], dtype=np.uint8),  # 4 steps off on one element of three
        "tc": np.array([[9, 9, 9]], dtype=np.uint8),  # worse, but later
    }
    report = DivergenceReport(compared=[])
    compare_sample(acts, candidates, ort, torch_values, report, channels_last={"ta"})
    assert [t.layer for t in report.compared] == ["a", "b", "c"]
    assert report.compared[0].max_steps == 0  # NHWC data compared as NHWC, though the shapes look alike
    first = report.first
    assert first is not None and first.layer == "b" and first.tensor == "tb"
    assert first.max_steps == 4 and first.share_beyond_one_step == pytest.approx(1 / 3)
    # read as NCHW, the same values would differ: the layout matters
    report_nchw = DivergenceReport(compared=[])
    compare_sample(acts[:1], candidates, ort, torch_values, report_nchw)
    assert report_nchw.compared[0].max_steps > 1
    assert report.to_dict()["first_divergence"]["layer"] == "b"


def test_tensors_that_cannot_be_compared_are_listed_with_why() -> None:
    acts = [_activation("qa", "a.out_quant"), _activation("qb", "b.out_quant"), _activation("qc", "c.out_quant")]
    torch_values = {"a.out_quant": [np.zeros((1, 2), np.float32)], "c.out_quant": [np.zeros((1, 2), np.float32)]}
    ort = {"ta": np.zeros((1, 2), np.float32), "tc": np.zeros((1, 3), np.uint8)}
    report = DivergenceReport(compared=[])
    compare_sample(acts, {"qa": ["ta"], "qb": ["tb"], "qc": ["tc"]}, ort, torch_values, report)
    reasons = {item["node"]: item["reason"] for item in report.not_compared}
    assert report.compared == [] and report.first is None
    assert "no integer tensor" in reasons["qa"] and "no torch module output" in reasons["qb"]
    assert "shapes differ" in reasons["qc"]
    assert layer_of("x.y.out_quant") == "x.y" and layer_of("quant.quant") == "quant" and layer_of("pool") == "pool"


class ConvNet(nn.Module):
    """Two conv-ReLUs whose outputs are 8x8x8: channels-last and NCHW have the same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.dequant = DeQuantStub()

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.dequant(self.body(self.quant(data["img"])))


def _exported_convnet(tmp_path: Path) -> tuple[nn.Module, dict, onnx.ModelProto, onnx.ModelProto, dict]:
    """The fixed-point ConvNet, its input, the exported and the opt-3 graph, export.json's record."""
    torch.manual_seed(0)
    model, _ = convert(copy.deepcopy(ConvNet().eval()), QConfig())
    model.eval()
    batches = [{"img": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    with torch.no_grad(), calibration_mode(model):
        for batch in batches:
            model(batch)
    inputs = {"img": batches[0]["img"][:1]}
    with torch.no_grad():
        model(inputs)  # records each layer's input grid, which freezing puts the bias on
    fixed = freeze(model)
    info = export_onnx(fixed, inputs, tmp_path / "model.onnx")
    compiled = OnnxRuntimeBackend().compile(info.path, 3, tmp_path / "model.opt3.onnx")
    optimized = onnx.load(str(compiled))
    exported = onnx.load(str(info.path))
    return fixed, inputs, exported, optimized, info.to_dict()


def test_a_faithful_export_agrees_within_one_step_at_opt_3(tmp_path: Path) -> None:
    fixed, inputs, exported, optimized, info = _exported_convnet(tmp_path)
    capture = TorchActivations(fixed)
    with torch.no_grad():
        fixed(dict(inputs))
    capture.close()
    report = DivergenceReport(compared=[])
    activations = activations_of(info)
    compare_sample(
        activations,
        optimized_tensors(exported, optimized),
        run_exposed(optimized, {"img": inputs["img"].numpy()}),
        capture.values,
        report,
        channels_last_tensors(optimized.graph),
    )
    layers = [t.layer for t in report.compared]
    assert layers[:3] == ["quant", "body.0", "body.2"], report.not_compared
    assert report.first is None and max(t.max_steps for t in report.compared) <= 1


def test_fed_onnxruntime_inputs_only_the_layer_that_computes_differently_diverges(tmp_path: Path) -> None:
    fixed, inputs, exported, optimized, info = _exported_convnet(tmp_path)
    with torch.no_grad():  # torch's first conv now computes something else than the exported one
        bias = fixed.body[0].frozen_bias
        bias += 0.3 * bias.abs().max()
    activations = activations_of(info)
    candidates = optimized_tensors(exported, optimized)
    ort_values = run_exposed(optimized, {"img": inputs["img"].numpy()})
    channels_last = channels_last_tensors(optimized.graph)
    reports = {}
    for kind, make_capture in (  # one after the other: the hooks of both must not be on at once
        ("free", lambda: TorchActivations(fixed)),
        ("local", lambda: ForcedActivations(fixed, activations, candidates, ort_values, channels_last)),
    ):
        capture = make_capture()
        with torch.no_grad():
            fixed(dict(inputs))
        capture.close()
        reports[kind] = DivergenceReport(compared=[])
        compare_sample(activations, candidates, ort_values, capture.values, reports[kind], channels_last)
    free = {t.layer: t.max_steps for t in reports["free"].compared}
    local = {t.layer: t.max_steps for t in reports["local"].compared}
    assert free["body.0"] > 1 and free["body.2"] > 1  # free-running, the second conv inherits the first's error
    assert local["body.0"] == free["body.0"] and local["body.2"] <= 1  # fed onnxruntime's input, it agrees
    assert reports["local"].first is not None and reports["local"].first.layer == "body.0"
