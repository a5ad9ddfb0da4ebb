"""Deployment backend: int8 ONNX export, onnxruntime compilation, the checker, perf reports.

The quantized torch model (fake-quant simulation) is exported with Q/DQ pairs and
rewritten into the form onnxruntime fuses into int8 kernels (:mod:`onnx_export`,
:mod:`qdq_finalize`); :mod:`ort_backend` compiles, runs and measures it;
:mod:`analysis` says which nodes do not run int8 and why; :mod:`perf` writes the report.
"""

from __future__ import annotations

from hat.deploy.analysis import AnalysisResult, NodeReport, analyze
from hat.deploy.compare import share_within_one_step
from hat.deploy.compile_backend import CompileBackend
from hat.deploy.errors import ExportError, RuntimeFailure
from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_export import ActivationQuant, ExportInfo, export_float_onnx, export_onnx
from hat.deploy.ort_backend import OnnxRuntimeBackend
from hat.deploy.perf import cpu_model, param_bytes_of, write_perf_report
from hat.deploy.qdq_finalize import finalize_qdq

__all__ = [
    "ActivationQuant",
    "AnalysisResult",
    "CompileBackend",
    "ExportError",
    "ExportInfo",
    "NodeReport",
    "OnnxRuntimeBackend",
    "RuntimeFailure",
    "analyze",
    "cpu_model",
    "export_float_onnx",
    "export_onnx",
    "finalize_qdq",
    "module_path_of",
    "param_bytes_of",
    "share_within_one_step",
    "write_perf_report",
]
