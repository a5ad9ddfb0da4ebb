from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from hat.deploy import analyze, export_onnx
from hat.deploy.analysis import FLOAT_COMPUTE, INT8_COMPUTE, INT8_DATA

#: 2 x MACs of QuantConvStack at 16x16: a 3->32 and two 32->32 3x3 convs.
STACK_FLOPS = 2 * 16 * 16 * 32 * 9 * (3 + 32 + 32)


@pytest.mark.parametrize("level", [2, 3])
def test_a_fully_quantized_model_runs_int8(compiled, exported, level):
    result = analyze(compiled("net", level), exported=exported("net").proto, opt_level=level)
    assert result.non_int8() == []
    assert result.int8_flops_share == 1.0
    categories = {n.op_type: n.category for n in result.nodes}
    assert categories["QLinearConv"] == INT8_COMPUTE
    assert categories["DepthToSpace"] == INT8_DATA
    assert categories["NhwcMaxPool" if level == 3 else "MaxPool"] == INT8_DATA


def test_int8_share_of_a_conv_stack(compiled, exported):
    result = analyze(compiled("stack", 3), exported=exported("stack").proto, opt_level=3)
    assert result.int8_flops_share >= 0.99
    assert result.total_flops == STACK_FLOPS


@pytest.mark.parametrize("level", [0, 2, 3])
def test_flops_do_not_depend_on_layout(compiled, level):
    assert analyze(compiled("stack", level)).total_flops == STACK_FLOPS


def test_one_float_conv_lowers_the_int8_share(compiled, exported):
    result = analyze(compiled("float_last", 2), exported=exported("float_last").proto, opt_level=2)
    assert 0 < result.int8_flops_share < 1
    [node] = result.non_int8()
    assert node.category == FLOAT_COMPUTE
    assert node.module == "layers.2.conv"
    assert "float initializer" in node.reason
    assert node.flops == 2 * 16 * 16 * 32 * 9 * 32


@pytest.mark.parametrize("level", [2, 3])
def test_a_relu_between_conv_and_quantizer_is_reported(compiled, exported, level):
    result = analyze(compiled("relu", level), exported=exported("relu").proto, opt_level=level)
    floats = result.non_int8()
    assert [n.module for n in floats] == ["layers.0", "layers.1", "layers.2"]
    assert all(n.op_type in ("FusedConv", "Conv") for n in floats)
    assert all("a Relu sits between the Conv and its QuantizeLinear" in n.reason for n in floats)
    assert result.int8_flops_share == 0


def test_an_unfused_relu_is_reported_at_level_1(compiled, exported):
    result = analyze(compiled("relu", 1), exported=exported("relu").proto, opt_level=1)
    conv = next(n for n in result.non_int8() if n.op_type == "Conv")
    assert "a Relu sits between the Conv and its QuantizeLinear" in conv.reason


@pytest.mark.parametrize("level", [2, 3])
def test_a_transposed_conv_has_no_int8_kernel(compiled, exported, level):
    result = analyze(compiled("deconv", level), exported=exported("deconv").proto, opt_level=level)
    [node] = result.non_int8()
    assert node.op_type == "ConvTranspose"
    assert "no int8 ConvTranspose" in node.reason
    assert node.flops == 2 * 8 * 8 * 3 * 8 * 16  # input pixels x weight elements
    assert result.int8_flops_share == 0


def test_below_level_2_nothing_is_fused(compiled, exported):
    result = analyze(compiled("stack", 1), exported=exported("stack").proto, opt_level=1)
    assert len(result.non_int8()) == 3
    assert all("optimization level 1" in n.reason for n in result.non_int8())


def test_result_serializes_and_renders(compiled, exported):
    result = analyze(compiled("relu", 2), exported=exported("relu").proto, opt_level=2)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["int8_flops_share"] == 0 and len(data["non_int8"]) == 3
    assert data["op_types"]["FusedConv"] == 3
    console = Console(width=200, record=True)
    console.print(result.render_table())
    text = console.export_text()
    assert "layers.1" in text and "sits between" in text


def test_signed_int8_activations_read_twice_are_diagnosed(exported, backend, tmp_path):
    """onnxruntime's x86 kernels fuse only uint8 activations: why export writes them as uint8."""
    net = exported("net")
    path = tmp_path / "signed.onnx"
    export_onnx(net.model, net.inputs(), path, activations="int8")
    optimized = backend.compile(path, 2, tmp_path / "signed.opt2.onnx")
    result = analyze(optimized, exported=path, opt_level=2)
    assert result.int8_flops_share < 0.5
    reasons = {n.module: n.reason for n in result.non_int8()}
    assert "signed int8" in reasons["backbone.stage2.conv_a"]

    signed = backend.run(backend.session(path, threads=1, opt_level=0), net.numpy_inputs())
    unsigned = backend.run(backend.session(net.path, threads=1, opt_level=0), net.numpy_inputs())
    for name, value in signed.items():
        np.testing.assert_array_equal(value, unsigned[name])  # same values, only the encoding differs
