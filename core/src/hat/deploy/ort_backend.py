"""The onnxruntime compilation backend: optimize, run, time and profile on the CPU.

``--opt 0..3`` is onnxruntime's graph optimization level: 0 none, 1 basic (constant
folding, redundant node removal), 2 extended (Q/DQ groups fused into int8 kernels such
as QLinearConv, QLinearAdd, QGemm), 3 all (plus layout transforms: NCHWc for float
convs, NHWC for int8 ones). Every onnxruntime failure is re-raised as
:class:`RuntimeFailure` naming the node and, when it can be traced, the torch module.

One onnxruntime optimizer is always off: ``WeightBiasQuantization`` (from level 1)
quantizes, with scales of its own, the float weight of a conv or matmul that reads a
DequantizeLinear and feeds a QuantizeLinear. That is exactly the shape of a layer HAT
keeps float on purpose (``precision: float`` between int8 layers, see
:mod:`hat.quant.precision`); onnxruntime would run it as int8, unlike the simulation.
A HAT export never relies on it: every weight meant to be int8 is already int8.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from hat.deploy.errors import RuntimeFailure
from hat.deploy.latency import latency_summary
from hat.deploy.node_names import ModuleLocator

#: ``--opt N`` -> onnxruntime's level.
OPT_LEVELS = (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
)
_PROVIDERS = ["CPUExecutionProvider"]
#: onnxruntime optimizers HAT turns off (see the module docstring).
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
#: Where onnxruntime's messages name a node.
_NODE_IN_MESSAGE = (
    re.compile(r"node with name '([^']+)'"),
    re.compile(r"Name:\s*'([^']+)'"),
    re.compile(r"Node \(([^)]+)\)"),
    re.compile(r"In Node, \(\"([^\"]+)\""),
)


class OnnxRuntimeBackend:
    """CPU onnxruntime; one instance can compile, run and measure any number of models."""

    name = "onnxruntime"

    def compile(self, onnx_path: Path, opt_level: int, out_path: Path) -> Path:
        """Write ``onnx_path`` as onnxruntime optimizes it at ``opt_level`` to ``out_path``.

        At level 3 the result holds layout transforms chosen for this CPU: run it on
        the machine that compiled it.
        """
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        options = _options(opt_level, threads=1)
        options.optimized_model_filepath = str(tmp)
        try:
            _create(Path(onnx_path), options)
            tmp.replace(out_path)
        finally:
            tmp.unlink(missing_ok=True)
        return out_path

    def session(self, path: Path, *, threads: int, opt_level: int) -> ort.InferenceSession:
        """An inference session with ``threads`` intra-op threads, sequential execution."""
        return _create(Path(path), _options(opt_level, threads=threads))

    def run(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        try:
            outputs = session.run(names, inputs)
        except Exception as exc:
            raise _failure(exc, getattr(session, "_hat_path", None)) from exc
        return dict(zip(names, outputs, strict=True))

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
        """Wall time of ``runs`` single runs after ``warmup`` runs: median, p10, p90, min (ms)."""
        if runs < 1:
            raise ValueError("runs must be >= 1")
        session = self.session(path, threads=threads, opt_level=opt_level)
        for _ in range(warmup):
            self.run(session, inputs)
        times = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            start = time.perf_counter()
            session.run(None, inputs)
            times[i] = (time.perf_counter() - start) * 1000.0
        return latency_summary(times, threads=threads)

    def profile_op_types(
        self, path: Path, inputs: dict[str, np.ndarray], *, opt_level: int, threads: int, runs: int = 20
    ) -> dict[str, float]:
        """Milliseconds per run spent in each op type, from onnxruntime's profiler.

        Sums the kernel time (``dur``) of every node event by ``args.op_name`` over
        ``runs`` runs, after a warm-up run whose events are left out, and divides by
        ``runs``; sorted by time, largest first. The profile file is deleted.
        """
        with tempfile.TemporaryDirectory(prefix="hat-profile-") as tmp:
            options = _options(opt_level, threads=threads)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "ort")
            session = _create(Path(path), options)
            self.run(session, inputs)
            for _ in range(runs):
                session.run(None, inputs)
            profile = Path(session.end_profiling())
            events = json.loads(profile.read_text())
            profile.unlink(missing_ok=True)
        return _op_times(events, runs)


def _op_times(events: list[dict[str, Any]], runs: int) -> dict[str, float]:
    """Per-run milliseconds by op type from a profile's events, the first (warm-up) run left out."""
    run_events = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    warm_end = run_events[0]["ts"] + run_events[0]["dur"] if run_events else -1
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if event.get("ts", 0) <= warm_end:
            continue
        totals[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0) / 1000.0
    return dict(sorted(((op, ms / runs) for op, ms in totals.items()), key=lambda kv: -kv[1]))


def _options(opt_level: int, *, threads: int) -> ort.SessionOptions:
    if opt_level not in range(len(OPT_LEVELS)):
        raise ValueError(f"opt_level must be 0..3, not {opt_level}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: level 3 warns on every save of a layout-transformed model
    return options


def _create(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    if not path.is_file():
        raise RuntimeFailure(f"no ONNX model at {path}")
    try:
        session = ort.InferenceSession(
            str(path), options, providers=_PROVIDERS, disabled_optimizers=DISABLED_OPTIMIZERS
        )
    except Exception as exc:
        raise _failure(exc, path) from exc
    session._hat_path = path  # type: ignore[attr-defined]
    return session


def _failure(exc: Exception, path: Path | None) -> RuntimeFailure:
    """An onnxruntime exception as a RuntimeFailure naming the node and its torch module."""
    message = str(exc).strip()
    node = next((m.group(1) for pattern in _NODE_IN_MESSAGE if (m := pattern.search(message))), None)
    module = locate_module(node, path) if node else None
    return RuntimeFailure(f"onnxruntime failed: {message}", node=node, module_path=module)


def locate_module(node_name: str, model_path: Path | None) -> str | None:
    """The torch module an onnxruntime node name comes from, or None if it cannot be told.

    Fused nodes keep their first node's name (possibly with a suffix); nodes onnxruntime
    makes itself are named after a tensor (``y_nchwc``): both are traced back through
    the names in the model that was loaded.
    """
    exported = None
    if model_path is not None and Path(model_path).is_file():
        try:
            exported = onnx.load(str(model_path), load_external_data=False)
        except Exception:  # locating is best effort; the message still names the node
            exported = None
    return ModuleLocator(exported).by_name(node_name) or None
