from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hat.deploy import ExportError, export_float_onnx, export_onnx, module_path_of
from hat.deploy.onnx_graph import GraphIndex
from tests.deploy import models_for_tests as m


def _index(proto: onnx.ModelProto) -> GraphIndex:
    return GraphIndex(proto.graph)


def test_exported_graph_passes_the_checker_and_names_inputs_and_outputs(exported):
    net = exported("net")
    onnx.checker.check_model(net.proto, full_check=True)
    assert [i.name for i in net.proto.graph.input] == ["img"]
    assert [o.name for o in net.proto.graph.output] == ["heatmap", "logits"]
    assert net.info.input_names == ["img"]
    assert net.info.output_names == ["heatmap", "logits"]
    assert net.info.inputs[0]["shape"] == [1, 3, 16, 16]
    assert net.info.outputs[0]["shape"] == [1, 4, 16, 16]
    assert net.info.outputs[1]["shape"] == [1, 10]
    assert net.info.opset == 17
    assert all(o["scale"] > 0 for o in net.info.outputs)


def test_a_single_tensor_output_is_named_output(exported):
    assert [o.name for o in exported("stack").proto.graph.output] == ["output"]


def test_weights_are_int8_initializers_behind_a_dequantize(exported):
    proto = exported("net").proto
    index = _index(proto)
    assert not any(n.op_type == "Constant" for n in proto.graph.node)
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[0] not in index.initializers, f"{node.name} quantizes a constant"
    compute = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 5
    for node in compute:
        dq = index.dequantized_from(node.input[1])
        assert dq is not None, node.name
        assert numpy_helper.to_array(index.initializers[dq.input[0]]).dtype == np.int8


def test_weight_values_match_the_simulation(exported):
    net = exported("net")
    index = _index(net.proto)
    conv = next(n for n in net.proto.graph.node if n.name == "/backbone/stage2/conv_a/Conv")
    dq = index.dequantized_from(conv.input[1])
    q = index.constant(dq.input[0]).astype(np.float32)
    scale = index.constant(dq.input[1]).reshape(-1, 1, 1, 1)
    expected, _ = m.quantize_weight(net.model.backbone.stage2.conv_a.conv.weight.detach())
    np.testing.assert_allclose(q * scale, expected.numpy(), rtol=0, atol=1e-7)


def test_biases_are_int32_on_the_input_times_weight_scale_grid(exported):
    proto = exported("net").proto
    index = _index(proto)
    for node in (n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")):
        bias_dq = index.dequantized_from(node.input[2])
        assert bias_dq is not None, node.name
        assert numpy_helper.to_array(index.initializers[bias_dq.input[0]]).dtype == np.int32
        assert not index.constant(bias_dq.input[2]).any()
        s_in = index.constant(index.dequantized_from(node.input[0]).input[1])
        s_w = index.constant(index.dequantized_from(node.input[1]).input[1])
        np.testing.assert_allclose(index.constant(bias_dq.input[1]), s_in * s_w, rtol=1e-6)
    assert exported("net").info.int32_initializers == 10  # 5 biases and their 5 zero points


def test_activations_are_uint8_with_shifted_zero_points(exported):
    info = exported("net").info
    assert info.activations, "no activation quantizers recorded"
    by_module = {a.module: a for a in info.activations}
    assert by_module["backbone.stage1.conv.out_quant"].zero_point == 0  # after a ReLU: int8 -128
    assert by_module["backbone.stage2.conv_b.out_quant"].zero_point == 128  # symmetric: int8 0
    assert all(a.scale > 0 for a in info.activations)
    index = _index(exported("net").proto)
    for node in (n for n in exported("net").proto.graph.node if n.op_type == "QuantizeLinear"):
        assert index.constant(node.input[2]).dtype == np.uint8


def test_export_info_serializes(exported, tmp_path):
    info = exported("net").info
    info.write_json(tmp_path / "export.json", source_checkpoint="ckpt.pt")
    data = json.loads((tmp_path / "export.json").read_text())
    assert data["outputs"][1]["name"] == "logits"
    assert data["source_checkpoint"] == "ckpt.pt"
    assert data["int8_initializers"] == info.int8_initializers > 0
    assert {"tensor", "scale", "zero_point", "node", "module"} <= set(data["activations"][0])


def test_node_names_map_back_to_torch_modules(exported):
    net = exported("net")
    modules = dict(net.model.named_modules())
    convs = [n.name for n in net.proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(module_path_of(n) for n in convs) == [
        "backbone.stage1.conv",
        "backbone.stage2.conv_a",
        "backbone.stage2.conv_b",
        "head.fc",
        "head.up",
    ]
    assert all(module_path_of(n) in modules for n in convs)


def test_module_path_of():
    assert module_path_of("/backbone/stage1/conv/Conv") == "backbone.stage1.conv"
    assert module_path_of("/layers/0/Conv_token_3") == "layers.0"
    assert module_path_of("/Add") == ""
    assert module_path_of("Transpose_token_4") == ""


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv(x).relu()


class _Containers(nn.Module):
    """Calls that skip their parent's forward, lists, dicts and a module called twice."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stage = _Block()
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.seq = nn.Sequential(_Block(), _Block())
        self.heads = nn.ModuleDict({"a": _Block()})
        self.shared = _Block()

    def forward(self, data):
        x = self.backbone.stage(data["img"])
        for layer in self.layers:
            x = layer.conv(x)
        x = self.heads["a"](self.seq(x))
        return {"y": self.shared(self.shared(x))}


def test_node_names_use_full_module_paths_for_containers_and_shared_modules(tmp_path):
    info = export_float_onnx(_Containers(), {"img": torch.randn(1, 4, 4, 4)}, tmp_path / "f.onnx")
    proto = onnx.load(str(info.path))
    convs = [module_path_of(n.name) for n in proto.graph.node if n.op_type == "Conv"]
    assert convs == [
        "backbone.stage.conv",
        "layers.0.conv",
        "layers.1.conv",
        "seq.0.conv",
        "seq.1.conv",
        "heads.a.conv",
        "shared.conv",
        "shared.conv",
    ]
    assert len({n.name for n in proto.graph.node}) == len(proto.graph.node)
    assert "layers.1.conv.weight" in {t.name for t in proto.graph.initializer}


def test_a_bias_off_the_int32_grid_names_its_module(tmp_path):
    model = m.calibrated(m.QuantConvStack())
    model.layers[1].round_bias = False
    with pytest.raises(ExportError) as err:
        export_onnx(model, m.example_input(), tmp_path / "bad.onnx")
    assert err.value.module_path == "layers.1"
    assert "int32 grid" in str(err.value)
    assert not (tmp_path / "bad.onnx").exists()


def test_exporting_an_unquantized_model_says_so(tmp_path):
    with pytest.raises(ExportError, match="not quantized"):
        export_onnx(_Containers(), {"img": torch.randn(1, 4, 4, 4)}, tmp_path / "float.onnx")


class _Unsupported(nn.Module):
    def forward(self, x):
        return torch.linalg.inv(x)


def test_an_op_the_exporter_cannot_handle_names_the_module(tmp_path):
    model = nn.Module()
    model.block = nn.Module()
    model.block.inner = _Unsupported()
    model.forward = lambda data: model.block.inner(data["img"]) + 1
    with pytest.raises(ExportError) as err:
        export_float_onnx(model, {"img": torch.randn(2, 2)}, tmp_path / "x.onnx")
    assert "linalg_inv" in str(err.value)
    assert err.value.module_path == "block.inner"


def test_float_export_has_no_quantizers_and_the_same_names(exported, tmp_path):
    float_model = copy.deepcopy(exported("net").model)
    for module in float_model.modules():
        if isinstance(module, m.ActQuant):
            module.calibrating = True  # the test models' float path
    info = export_float_onnx(float_model, exported("net").inputs(), tmp_path / "model.float.onnx")
    proto = onnx.load(str(info.path))
    assert info.output_names == ["heatmap", "logits"]
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in proto.graph.node}
    assert info.int8_initializers == 0 and not info.activations


def test_linear_on_tokens_reads_its_weight_from_a_dequantize(exported):
    proto = exported("tokens").proto
    index = _index(proto)
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    dq = index.dequantized_from(matmul.input[1])
    weight = index.constant(dq.input[0])
    assert weight.dtype == np.int8 and weight.shape == (32, 32)
    assert onnx.helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert index.dequantized_from(add.input[0]) or index.dequantized_from(add.input[1])


def test_a_weight_the_tracer_folded_to_float_is_recovered_as_int8(exported):
    model = exported("buffer_weight")
    index = _index(model.proto)
    conv = next(n for n in model.proto.graph.node if n.op_type == "Conv")
    dq = index.dequantized_from(conv.input[1])
    assert dq is not None
    q = index.constant(dq.input[0])
    scale = index.constant(dq.input[1]).reshape(-1, 1, 1, 1)
    assert q.dtype == np.int8
    np.testing.assert_allclose(q * scale, model.model.weight.numpy(), rtol=1e-6, atol=0)
    assert index.dequantized_from(conv.input[2]) is not None  # the bias followed onto the int32 grid


def test_a_float_weight_between_int8_tensors_is_flagged(tmp_path, exported):
    model = m.calibrated(m.QuantConvStack(float_weight_layer=1))
    info = export_onnx(model, m.example_input(), tmp_path / "w.onnx")
    [warning] = info.warnings
    assert "module layers.1.conv" in warning and "float weight" in warning
    assert exported("net").info.warnings == []
