"""The performance report of a compiled model: ``perf.json`` and a self-contained ``perf.html``.

Numbers without their conditions mislead: a latency means nothing without the thread
count, the optimization level, the runtime version and the CPU, and an int8 latency
means little without the float latency next to it. The report always carries all of
them, and the share of FLOPs that really runs in int8 kernels, with the nodes that do
not. The HTML page needs no network: styles and bars are inline.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from hat.deploy.analysis import AnalysisResult
from hat.deploy.files import atomic_write_text
from hat.deploy.perf_html import render_perf_html
from hat.workdir import PERF_HTML, PERF_JSON

LATENCY_KEYS = ("median_ms", "p10_ms", "p90_ms", "min_ms", "runs", "threads")


def write_perf_report(
    out_dir: Path,
    *,
    model_name: str,
    opt_level: int,
    threads: int,
    int8_latency: Mapping[str, float],
    float_latency: Mapping[str, float] | None,
    op_times: Mapping[str, float],
    analysis: AnalysisResult | None,
    param_bytes: int,
    flops: int,
    cpu_info: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/perf.json`` and ``out_dir/perf.html``; returns the JSON data.

    ``extra`` adds keys (the deploy target, this machine's int8 kernels) to the JSON.

    ``int8_latency``/``float_latency`` are :meth:`OnnxRuntimeBackend.measure_latency`
    results; ``op_times`` is milliseconds per run by op type; ``cpu_info`` defaults to
    the CPU model of this machine.
    """
    data = perf_data(
        model_name=model_name,
        opt_level=opt_level,
        threads=threads,
        int8_latency=int8_latency,
        float_latency=float_latency,
        op_times=op_times,
        analysis=analysis,
        param_bytes=param_bytes,
        flops=flops,
        cpu_info=cpu_info if cpu_info is not None else cpu_model(),
    )
    data.update(extra or {})
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / PERF_JSON, json.dumps(data, indent=2))
    atomic_write_text(out_dir / PERF_HTML, render_perf_html(data))
    return data


def perf_data(
    *,
    model_name: str,
    opt_level: int,
    threads: int,
    int8_latency: Mapping[str, float],
    float_latency: Mapping[str, float] | None,
    op_times: Mapping[str, float],
    analysis: AnalysisResult | None,
    param_bytes: int,
    flops: int,
    cpu_info: str,
) -> dict[str, Any]:
    """The report as plain data (what ``perf.json`` holds)."""
    int8 = {k: int8_latency[k] for k in LATENCY_KEYS if k in int8_latency}
    floats = {k: float_latency[k] for k in LATENCY_KEYS if k in float_latency} if float_latency else None
    speedup = None
    if floats and int8.get("median_ms"):
        speedup = float(floats["median_ms"]) / float(int8["median_ms"])
    return {
        "model": model_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opt_level": opt_level,
        "threads": threads,
        "batch_size": 1,
        "onnxruntime_version": ort.__version__,
        "cpu": cpu_info,
        "latency": {"int8": int8, "float": floats, "speedup": speedup},
        "op_times_ms": {op: float(ms) for op, ms in sorted(op_times.items(), key=lambda kv: -kv[1])},
        "param_bytes": int(param_bytes),
        "flops": int(flops),
        "int8_flops": analysis.int8_flops if analysis is not None else None,
        "int8_flops_share": analysis.int8_flops_share if analysis is not None else None,
        "node_counts": dict(analysis.counts) if analysis is not None else None,
        "non_int8_nodes": (
            [
                {"name": n.name, "op_type": n.op_type, "module": n.module, "flops": n.flops, "reason": n.reason}
                for n in analysis.non_int8()
            ]
            if analysis is not None
            else []
        ),
    }


def param_bytes_of(model: onnx.ModelProto | Path) -> int:
    """Bytes of all initializers of the deployable model (weights, biases, scales)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return int(sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
