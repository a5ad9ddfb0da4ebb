"""Which int8 arithmetic this machine's onnxruntime uses: exact (VNNI-class) or saturating pairs.

Asked of onnxruntime itself rather than guessed from CPU flags: one ``MatMulInteger``
with every activation 255 and every weight 127 runs through the same u8 x s8 GEMM as
QLinearConv and QLinearMatMul. Summed exactly (VNNI: ``vpdpbusd``) each output is
``255 * 127 * K``; with ``vpmaddubsw`` (AVX2, AVX-512 without VNNI) each pair clips at
32767 first. The CPU flags are reported beside it, for the record.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_K = 64
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8")


@dataclass(frozen=True)
class Int8Kernels:
    #: True when the u8 x s8 GEMM sums pairs of products without 16-bit saturation.
    exact_pairs: bool
    #: The VNNI-related flags /proc/cpuinfo lists (empty where none or not Linux).
    cpu_flags: list[str] = field(default_factory=list)

    @property
    def isa(self) -> str:
        return "VNNI (exact u8 x s8 sums)" if self.exact_pairs else "no VNNI (u8 x s8 pairs saturate at 16 bits)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "isa": self.isa}


@functools.lru_cache(maxsize=1)
def probe_int8_kernels() -> Int8Kernels:
    """Run the probe once per process."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((_K, 8), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "int8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, _K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"a": np.full((4, _K), 255, np.uint8)})[0]
    exact = bool(np.all(out == 255 * 127 * _K))
    return Int8Kernels(exact_pairs=exact, cpu_flags=_cpu_flags())


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in _VNNI_FLAGS if f in flags]
    return []


def target_warning(deploy_target: dict[str, Any] | None, kernels: Int8Kernels) -> str | None:
    """A warning when a model exported for a VNNI-only target runs on a machine without VNNI."""
    if not deploy_target or not deploy_target.get("needs_vnni") or kernels.exact_pairs:
        return None
    return (
        f"this model was exported for deploy target {deploy_target.get('name')!r}, which is exact only with VNNI, "
        f"and this machine's onnxruntime has {kernels.isa}: its int8 results will differ from the torch "
        "simulation; re-run calibration/qat and export with --set deploy_target=portable for this machine"
    )
