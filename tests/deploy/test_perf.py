from __future__ import annotations

import json
import re

from hat.deploy import analyze, cpu_model, param_bytes_of, write_perf_report


def test_perf_report_is_complete_and_self_contained(exported, compiled, backend, tmp_path):
    model = exported("float_last")
    inputs = model.numpy_inputs()
    int8 = backend.measure_latency(model.path, inputs, opt_level=3, threads=1, warmup=1, runs=5)
    float_latency = {"median_ms": 2 * int8["median_ms"], "p10_ms": 1.0, "p90_ms": 3.0, "min_ms": 0.5, "runs": 5}
    op_times = backend.profile_op_types(model.path, inputs, opt_level=3, threads=1, runs=3)
    analysis = analyze(compiled("float_last", 3), exported=model.proto, opt_level=3)
    data = write_perf_report(
        tmp_path,
        model_name="stack <test>",
        opt_level=3,
        threads=1,
        int8_latency=int8,
        float_latency=float_latency,
        op_times=op_times,
        analysis=analysis,
        param_bytes=param_bytes_of(model.path),
        flops=analysis.total_flops,
        cpu_info=cpu_model(),
    )
    saved = json.loads((tmp_path / "perf.json").read_text())
    assert saved == json.loads(json.dumps(data))
    for key in (
        "model",
        "opt_level",
        "threads",
        "onnxruntime_version",
        "cpu",
        "latency",
        "op_times_ms",
        "param_bytes",
        "flops",
        "int8_flops_share",
        "non_int8_nodes",
    ):
        assert key in saved, key
    assert saved["latency"]["speedup"] == float_latency["median_ms"] / int8["median_ms"]
    assert saved["latency"]["int8"]["median_ms"] > 0
    assert 0 < saved["int8_flops_share"] < 1
    assert saved["param_bytes"] > 0 and saved["flops"] == analysis.total_flops
    assert "QLinearConv" in saved["op_times_ms"]
    assert any(n["module"] == "layers.2.conv" for n in saved["non_int8_nodes"])

    page = (tmp_path / "perf.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "speed-up" in page and "2.00×" in page
    assert "stack &lt;test&gt;" in page  # escaped
    assert "QLinearConv" in page and "layers.2.conv" in page
    assert "thread" in page and saved["onnxruntime_version"] in page


def test_perf_report_without_a_float_model(exported, tmp_path):
    latency = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "min_ms": 0.8, "runs": 10, "threads": 2}
    data = write_perf_report(
        tmp_path,
        model_name="m",
        opt_level=2,
        threads=2,
        int8_latency=latency,
        float_latency=None,
        op_times={},
        analysis=None,
        param_bytes=10,
        flops=0,
        cpu_info="cpu",
    )
    assert data["latency"]["speedup"] is None
    assert "no speed-up" in (tmp_path / "perf.html").read_text()


def test_param_bytes_count_every_initializer(exported):
    proto = exported("stack").proto
    # int8 weights dominate: 3*32*9 + 2*32*32*9 bytes, plus int32 biases and float scales
    assert param_bytes_of(proto) >= 3 * 32 * 9 + 2 * 32 * 32 * 9 + 3 * 32 * 4
    assert param_bytes_of(exported("stack").path) == param_bytes_of(proto)


def test_cpu_model_is_named():
    assert cpu_model().strip()
