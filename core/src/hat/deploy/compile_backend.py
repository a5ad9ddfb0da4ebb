"""What a compilation backend provides, so runtimes other than onnxruntime can plug in.

``hat compile``, ``hat check``, ``int_infer``, ``hat validate`` and ``hat infer`` only
talk to a backend through these methods; a plugin registers a factory under
``hat_compile_backends`` and the config's ``compile: {backend: NAME}`` picks it for all
of them (``int_infer_predictor.backend`` may name another for int_infer alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CompileBackend(Protocol):
    """Compile an ONNX model for a runtime, run it, and measure it."""

    name: str

    def compile(self, onnx_path: Path, opt_level: int, out_path: Path) -> Path:
        """Optimize ``onnx_path`` at ``opt_level`` (0..3) and write the result to ``out_path``."""
        ...

    def session(self, path: Path, *, threads: int, opt_level: int) -> Any:
        """A loaded model ready for :meth:`run`."""
        ...

    def run(self, session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch of inputs by name."""
        ...

    def measure_latency(
        self,
        path: Path,
        inputs: dict[str, np.ndarray],
        *,
        opt_level: int,
        threads: int,
        warmup: int = 10,
        runs: int = 100,
    ) -> dict[str, float | int]:
        """``median_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``, ``runs``, ``threads``."""
        ...

    def profile_op_types(
        self, path: Path, inputs: dict[str, np.ndarray], *, opt_level: int, threads: int, runs: int = 20
    ) -> dict[str, float]:
        """Milliseconds per run spent in each op type."""
        ...


DEFAULT_BACKEND = "onnxruntime"


def builtin_compile_backends() -> dict[str, Any]:
    """The compilation backends core ships, by name: what core's ``hat_compile_backends``
    contributes, and the table a runner uses when its caller hands it none."""
    from hat.deploy.ort_backend import OnnxRuntimeBackend

    return {OnnxRuntimeBackend.name: OnnxRuntimeBackend}


def compile_backend_name(config: dict[str, Any]) -> str:
    """The backend a config's ``compile.backend`` names (onnxruntime by default)."""
    return str((config.get("compile") or {}).get("backend") or DEFAULT_BACKEND)
