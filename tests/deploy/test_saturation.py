"""The static saturation proof, the int8 kernel probe, and export's use of the target.

Nothing here depends on the CPU: the proof reads weights, and the probe test only
checks that the probe's verdict matches what a full-range conv does on this machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from hat.deploy import export_onnx
from hat.deploy.errors import ExportError
from hat.deploy.int8_kernels import Int8Kernels, probe_int8_kernels, target_warning
from hat.deploy.saturation import DENSE, DEPTHWISE, FLOAT, check_saturation, worst_pair
from hat.quant.target import TARGETS
from tests.deploy import models_for_tests as m

C = 16


def _qdq_conv(weight: np.ndarray, *, group: int = 1, input_dtype=np.uint8, quantized_input: bool = True):
    """x (uint8 codes) -> DQ -> Conv(DQ(int8 weight)) -> Q -> DQ, as export writes it."""
    cout = weight.shape[0]
    inits = [
        numpy_helper.from_array(weight.astype(np.int8), "w"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, input_dtype), "x_zero"),
        numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"], axis=0)]
    if quantized_input:
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["x"]))
        elem = TensorProto.UINT8 if input_dtype == np.uint8 else TensorProto.INT8
        graph_input = helper.make_tensor_value_info("xq", elem, [1, weight.shape[1] * group, 8, 8])
    else:
        graph_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1] * group, 8, 8])
    nodes += [
        helper.make_node("Conv", ["x", "wf"], ["y"], name="/block/conv/Conv", pads=[1, 1, 1, 1], group=group),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [graph_input], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weights(low: int, high: int, shape=(C, C, 3, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, shape)


def test_a_portable_range_conv_is_proven_safe() -> None:
    report = check_saturation(_qdq_conv(_weights(-64, 64)))
    (kernel,) = report.kernels
    assert kernel.kind == DENSE and kernel.activation_max == 255 and kernel.module == "block.conv"
    assert report.safe and kernel.bound <= 255 * 128
    assert report.summary()["safe_without_vnni"] is True


def test_a_full_range_conv_is_proven_unsafe_with_its_worst_pair() -> None:
    weight = _weights(-50, 50)
    weight[3, 5, 1, 1], weight[3, 9, 0, 2] = 127, 100  # one channel with a bad same-sign pair
    report = check_saturation(_qdq_conv(weight))
    assert not report.safe
    (kernel,) = report.unsafe()
    assert kernel.pair == [127, 100] and kernel.bound == 255 * 227
    assert report.summary()["unsafe"][0]["node"] == "/block/conv/Conv"


def test_opposite_signs_do_not_make_a_pair_unsafe() -> None:
    weight = np.zeros((2, 4, 1, 1), dtype=np.int64)
    weight[0, :, 0, 0] = [127, -127, 60, -60]  # the same-sign pairs: 127 + 60
    weight[1, :, 0, 0] = [127, -127, 0, 0]
    assert worst_pair(weight, 0) == [127, 60]
    weight[0, :, 0, 0] = [127, -127, 1, -1]
    assert check_saturation(_qdq_conv(weight)).safe  # 255 * 128 <= 32767


def test_depthwise_and_float_input_convs_are_exempt() -> None:
    depthwise = check_saturation(_qdq_conv(_weights(-127, 127, (C, 1, 3, 3)), group=C))
    assert [k.kind for k in depthwise.kernels] == [DEPTHWISE] and depthwise.safe
    grouped = check_saturation(_qdq_conv(_weights(-127, 127, (C, 4, 3, 3), seed=1), group=4))
    assert [k.kind for k in grouped.kernels] == [DENSE] and not grouped.safe  # a GEMM per group
    floating = check_saturation(_qdq_conv(_weights(-127, 127), quantized_input=False))
    assert [k.kind for k in floating.kernels] == [FLOAT] and floating.safe


def test_int8_activations_are_bounded_by_128() -> None:
    report = check_saturation(_qdq_conv(_weights(-127, 127), input_dtype=np.int8))
    assert report.kernels[0].activation_max == 128


def _run_opt3(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"xq": x})[0]


def _exact(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the Q/DQ conv computes in exact arithmetic (the torch simulation's answer)."""
    acc = torch.nn.functional.conv2d(
        torch.tensor(x, dtype=torch.float64), torch.tensor(weight, dtype=torch.float64), padding=1
    )
    return np.clip(np.rint(acc.numpy() * 0.02 * 0.01 / 0.5) + 128, 0, 255) - 128


def test_the_probe_tells_whether_full_range_weights_run_exactly_here() -> None:
    kernels = probe_int8_kernels()
    x = np.random.default_rng(1).integers(0, 256, (1, C, 8, 8)).astype(np.uint8)
    portable, full = _weights(-64, 64, seed=2), _weights(-127, 127, seed=2)
    steps = lambda w: np.abs(_run_opt3(_qdq_conv(w), x) / 0.5 - _exact(w, x))  # noqa: E731
    assert steps(portable).max() <= 1  # the portable range is exact whatever the probe says
    if kernels.exact_pairs:
        assert steps(full).max() <= 1
    else:
        assert (steps(full) > 1).mean() > 0.05  # uniform codes saturate often without VNNI
    assert kernels.to_dict()["isa"] == kernels.isa


def test_a_vnni_model_warns_only_where_the_kernels_saturate() -> None:
    vnni, portable = TARGETS["vnni"].to_dict(), TARGETS["portable"].to_dict()
    saturating, exact = Int8Kernels(exact_pairs=False), Int8Kernels(exact_pairs=True, cpu_flags=["avx512_vnni"])
    assert "deploy_target=portable" in target_warning(vnni, saturating)
    assert target_warning(vnni, exact) is None
    assert target_warning(portable, saturating) is None and target_warning(None, saturating) is None


def test_export_refuses_a_model_that_would_saturate_on_the_portable_target(tmp_path: Path) -> None:
    full_range = m.QuantConvStack()
    for layer in full_range.layers:
        layer.weight_max = 127  # quantized for the vnni target
    model = m.calibrated(full_range)
    inputs = m.example_input(seed=7)
    with pytest.raises(ExportError, match="saturate on CPUs without VNNI"):
        export_onnx(model, inputs, tmp_path / "portable.onnx")
    assert not (tmp_path / "portable.onnx").exists()
    info = export_onnx(model, inputs, tmp_path / "vnni.onnx", target=TARGETS["vnni"])
    assert info.deploy_target["name"] == "vnni" and info.saturation["safe_without_vnni"] is False
    assert len(info.saturation["unsafe"]) >= 2  # the first conv has only 27 taps, the others 288
    safe = export_onnx(m.calibrated(m.QuantConvStack()), inputs, tmp_path / "ok.onnx")
    assert safe.deploy_target["name"] == "portable" and safe.saturation["safe_without_vnni"] is True
