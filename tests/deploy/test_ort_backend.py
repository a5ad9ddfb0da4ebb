from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from hat.deploy import CompileBackend, RuntimeFailure, share_within_one_step


def _op_types(proto: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(n.domain or "ai.onnx", n.op_type) for n in proto.graph.node}


def test_the_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, CompileBackend)
    assert backend.name == "onnxruntime"


@pytest.mark.parametrize("name", ["net", "tokens", "stack", "concat_up", "buffer_weight"])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_onnxruntime_agrees_with_the_torch_simulation_within_one_step(exported, backend, name, level):
    model = exported(name)
    session = backend.session(model.path, threads=1, opt_level=level)
    for seed in (100, 101):
        inputs = model.inputs(seed)
        with torch.no_grad():
            reference = model.model(inputs)
        reference = reference if isinstance(reference, dict) else {"output": reference}
        outputs = backend.run(session, {k: v.numpy() for k, v in inputs.items()})
        for out in model.info.outputs:
            expected = reference[out["name"]].numpy()
            assert np.unique(np.rint(expected / out["scale"])).size > 5, "degenerate test output"
            assert share_within_one_step(expected, outputs[out["name"]], out["scale"]) >= 0.99, out["name"]


def test_share_within_one_step_counts_steps_in_the_quantized_domain():
    reference = np.array([0.0, 0.1, 0.2, 0.3])
    assert share_within_one_step(reference, reference + 0.1, 0.1) == 1.0
    assert share_within_one_step(reference, reference + np.array([0, 0, 0.2, 0.3]), 0.1) == 0.5


def test_level_2_fuses_qdq_into_int8_kernels(compiled):
    ops = _op_types(compiled("net", 2))
    assert ("ai.onnx", "QLinearConv") in ops
    assert ("com.microsoft", "QLinearAdd") in ops
    assert ("com.microsoft", "QGemm") in ops
    assert ("com.microsoft", "QLinearGlobalAveragePool") in ops
    assert ("ai.onnx", "Conv") not in ops and ("ai.onnx", "Gemm") not in ops and ("ai.onnx", "Add") not in ops
    # Q/DQ only remain at the graph's edges: the input's quantizer and the outputs' dequantizers
    assert sum(n.op_type == "QuantizeLinear" for n in compiled("net", 2).graph.node) == 1
    assert sum(n.op_type == "DequantizeLinear" for n in compiled("net", 2).graph.node) == 2


def test_level_3_uses_the_nhwc_int8_forms(compiled):
    ops = _op_types(compiled("net", 3))
    assert ("com.microsoft", "QLinearConv") in ops
    assert ("com.microsoft", "NhwcMaxPool") in ops
    assert ("ai.onnx", "Transpose") in ops
    assert not any(op in ("Conv", "FusedConv") for _, op in ops)


def test_level_0_keeps_the_qdq_graph(compiled, exported):
    # onnxruntime still gives every consumer its own DequantizeLinear, but fuses nothing
    assert {n.op_type for n in compiled("net", 0).graph.node} == {n.op_type for n in exported("net").proto.graph.node}


@pytest.mark.parametrize("level", [2, 3])
def test_concat_and_nearest_upsampling_run_int8(compiled, level):
    proto = compiled("concat_up", level)
    ops = _op_types(proto)
    assert ("com.microsoft", "QLinearConcat") in ops
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert resize.input[0] not in dequantized  # it reads the int8 tensor itself
    assert not any(op in ("Conv", "Concat", "FusedConv") for _, op in ops)


def test_a_linear_on_tokens_runs_as_qgemm(compiled):
    ops = _op_types(compiled("tokens", 2))
    assert ("com.microsoft", "QGemm") in ops
    assert ("ai.onnx", "MatMul") not in ops and ("ai.onnx", "Gemm") not in ops


def test_compile_writes_the_optimized_model(exported, backend, tmp_path):
    out = backend.compile(exported("stack").path, 2, tmp_path / "compile" / "model.opt2.onnx")
    assert out == tmp_path / "compile" / "model.opt2.onnx" and out.is_file()
    assert not list(out.parent.glob(".*"))
    with pytest.raises(ValueError, match="0..3"):
        backend.compile(exported("stack").path, 4, tmp_path / "x.onnx")


def _model(nodes, initializers, inputs, outputs):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_invalid_graph_names_the_node_and_module(backend, tmp_path):
    bad = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="/neck/fpn/Reshape")],
        [numpy_helper.from_array(np.array([5, -1], np.int64), "shape")],
        [("x", TensorProto.FLOAT, [2, 3])],
        [("y", TensorProto.FLOAT, None)],
    )
    onnx.save(bad, tmp_path / "bad.onnx")
    with pytest.raises(RuntimeFailure) as err:
        backend.session(tmp_path / "bad.onnx", threads=1, opt_level=0)
    assert err.value.node == "/neck/fpn/Reshape"
    assert err.value.module_path == "neck.fpn"


@pytest.mark.parametrize("level", [0, 3])
def test_a_failing_kernel_names_the_node_and_module(backend, tmp_path, level):
    bad = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="/backbone/conv/Conv")],
        [numpy_helper.from_array(np.zeros((4, 5, 3, 3), np.float32), "w")],
        [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [("y", TensorProto.FLOAT, None)],
    )
    onnx.save(bad, tmp_path / "bad.onnx")
    session = backend.session(tmp_path / "bad.onnx", threads=1, opt_level=level)
    with pytest.raises(RuntimeFailure) as err:
        backend.run(session, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert err.value.node  # at level 3 onnxruntime's own name for the NCHWc conv
    assert err.value.module_path == "backbone.conv"


def test_a_missing_model_is_a_runtime_failure(backend, tmp_path):
    with pytest.raises(RuntimeFailure, match="no ONNX model"):
        backend.session(tmp_path / "missing.onnx", threads=1, opt_level=2)


def test_latency_numbers_are_sane(exported, backend):
    model = exported("stack")
    result = backend.measure_latency(model.path, model.numpy_inputs(), opt_level=2, threads=1, warmup=2, runs=15)
    assert set(result) == {"median_ms", "p10_ms", "p90_ms", "min_ms", "runs", "threads"}
    assert 0 < result["min_ms"] <= result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["runs"] == 15 and result["threads"] == 1


def test_profile_reports_time_by_op_type(exported, backend):
    model = exported("stack")
    times = backend.profile_op_types(model.path, model.numpy_inputs(), opt_level=2, threads=1, runs=5)
    assert "QLinearConv" in times
    assert "Conv" not in times
    assert all(ms >= 0 for ms in times.values()) and times["QLinearConv"] > 0
    assert list(times.values()) == sorted(times.values(), reverse=True)
