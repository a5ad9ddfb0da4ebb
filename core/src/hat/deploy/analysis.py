"""The model checker's engine: which nodes of an optimized graph run int8, and why not.

A regression to float kernels is silent — the model still runs, just slower and not
as deployed. So the checker reads the graph onnxruntime actually runs (saved at an
optimization level) and sorts every node into int8 compute, int8 data movement, Q/DQ,
float compute, float data movement or shape arithmetic; for every float node it says
why onnxruntime left it float, in terms of the graph around it, and which torch
module it came from. Handed the modules the config keeps off int8 (the conversion
report's :meth:`~hat.quant.prepare.ConversionReport.not_int8`), it says for each float
node whether that was configured, chosen by sensitivity, or is for want of an int8
kernel, and lists those modules too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hat.deploy.float_reasons import compute_reason, data_reason
from hat.deploy.flops import node_flops
from hat.deploy.node_names import ModuleLocator, module_path_of
from hat.deploy.onnx_graph import DEQUANTIZE, QUANTIZE, GraphIndex
from hat.deploy.tensor_probe import TensorMeta, probe_tensors
from hat.quant.precision import NO_INT8_KERNEL

INT8_COMPUTE = "int8_compute"
INT8_DATA = "int8_data"
QDQ = "qdq"
FLOAT_COMPUTE = "float_compute"
FLOAT_DATA = "float_data"
SHAPE = "shape"

#: Kernels that compute on 8-bit integers (onnxruntime default and com.microsoft domains).
INT8_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QLinearConvTranspose",
        "QAttention",
        "QEmbedLayerNormalization",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
    }
)
#: Ops that only move or select values: int8 in, int8 out.
DATA_MOVEMENT = frozenset(
    {
        "MaxPool",
        "NhwcMaxPool",
        "GlobalMaxPool",
        "DepthToSpace",
        "SpaceToDepth",
        "Resize",
        "Upsample",
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Expand",
        "Tile",
        "Pad",
        "Identity",
        "ReorderInput",
        "ReorderOutput",
    }
)
_EIGHT_BIT = ("int8", "uint8")


@dataclass
class NodeReport:
    """One node of the optimized graph: what it is, where it came from, what it costs."""

    name: str
    op_type: str
    domain: str
    category: str
    module: str
    flops: int
    reason: str | None = None
    #: Why a float node is float: configured | sensitivity (a precision rule) | no int8 kernel.
    why: str | None = None

    @property
    def runs_int8(self) -> bool:
        return self.category in (INT8_COMPUTE, INT8_DATA, QDQ)


@dataclass
class AnalysisResult:
    """Every node classified, with FLOPs and the share of them that runs in int8 kernels."""

    nodes: list[NodeReport]
    opt_level: int | None = None
    total_flops: int = 0
    int8_flops: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: Every module not at int8 (``ConversionReport.not_int8`` rows), when the caller knows them.
    modules_not_int8: list[dict[str, str]] = field(default_factory=list)

    @property
    def int8_flops_share(self) -> float | None:
        return self.int8_flops / self.total_flops if self.total_flops else None

    def non_int8(self) -> list[NodeReport]:
        """Float compute and float data-movement nodes: what the checker lists."""
        return [n for n in self.nodes if n.category in (FLOAT_COMPUTE, FLOAT_DATA)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "opt_level": self.opt_level,
            "total_flops": self.total_flops,
            "int8_flops": self.int8_flops,
            "int8_flops_share": self.int8_flops_share,
            "counts": dict(self.counts),
            "op_types": dict(Counter(n.op_type for n in self.nodes)),
            "non_int8": [asdict(n) for n in self.non_int8()],
            "modules_not_int8": list(self.modules_not_int8),
            "nodes": [asdict(n) for n in self.nodes],
        }

    def render_table(self) -> Any:
        """A rich Table of the nodes that do not run int8, with module and reason."""
        from rich.table import Table

        share = self.int8_flops_share
        title = "nodes not running int8" + (f" (int8 share of FLOPs: {share:.1%})" if share is not None else "")
        table = Table(title=title)
        for column in ("node", "op", "module", "MFLOPs", "why", "reason"):
            table.add_column(column, overflow="fold")
        for node in self.non_int8():
            table.add_row(
                node.name,
                node.op_type,
                node.module or "-",
                f"{node.flops / 1e6:.2f}",
                node.why or "",
                node.reason or "",
            )
        return table

    def render_modules_table(self) -> Any:
        """A rich Table of the modules not at int8: their precision and why."""
        from rich.table import Table

        table = Table(title="modules not at int8")
        for column in ("module", "kind", "activation", "weight", "why"):
            table.add_column(column, overflow="fold")
        for row in self.modules_not_int8:
            why = row["reason"] + (f": {row['detail']}" if row.get("detail") else "")
            table.add_row(row["module"], row["kind"], row["activation"], row["weight"], why)
        return table


def analyze(
    optimized: onnx.ModelProto | Path,
    *,
    exported: onnx.ModelProto | Path | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    opt_level: int | None = None,
    modules_not_int8: Sequence[Mapping[str, str]] = (),
) -> AnalysisResult:
    """Classify every node of an optimized model (as onnxruntime saved it).

    ``exported`` (the model before optimization) maps nodes onnxruntime renamed or
    created back to torch modules; without it, node names alone are used. ``inputs``
    feeds the one run that measures tensor types and shapes (zeros by default).
    ``modules_not_int8``: the modules the config keeps off int8 (see the module doc).
    """
    model = _load(optimized)
    reference = _load(exported) if exported is not None else None
    meta = probe_tensors(model, inputs)
    index = GraphIndex(model.graph)
    locate = ModuleLocator(reference)
    reports = []
    for node in model.graph.node:
        category = _category(node, meta)
        reason = None
        why = None
        module = locate(node)
        if category == FLOAT_COMPUTE:
            reason = compute_reason(node, index, opt_level)
        elif category == FLOAT_DATA:
            reason = data_reason(node, index, opt_level)
        if reason is not None:
            why, reason = _why(_owners(node, module, index), reason, modules_not_int8)
        reports.append(
            NodeReport(
                name=node.name,
                op_type=node.op_type,
                domain=node.domain or "ai.onnx",
                category=category,
                module=module,
                flops=node_flops(node, meta),
                reason=reason,
                why=why,
            )
        )
    total = sum(r.flops for r in reports)
    int8 = sum(r.flops for r in reports if r.category == INT8_COMPUTE)
    return AnalysisResult(
        nodes=reports,
        opt_level=opt_level,
        total_flops=total,
        int8_flops=int8,
        counts=dict(Counter(r.category for r in reports)),
        modules_not_int8=[dict(row) for row in modules_not_int8],
    )


def _owners(node: onnx.NodeProto, module: str, index: GraphIndex) -> list[str]:
    """Module paths a float node may belong to: its own, then those of the quantizers it feeds.

    An op a module calls from a method rather than ``forward`` (a FloatFunctional's add)
    has no module of its own in the graph, but the QuantizeLinear after it is named after
    that module's output quantizer.
    """
    feeds = [c for name in node.output for c in index.consumers.get(name, []) if c.op_type == QUANTIZE]
    return [path for path in (module, *(module_path_of(c.name) for c in feeds)) if path]


def _why(modules: Sequence[str], reason: str, modules_not_int8: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(why, reason) of a float node: a precision rule's reason when its module (or a parent) has one."""
    owner = None
    for module in modules:
        for row in modules_not_int8:
            path = row["module"]
            if (module == path or module.startswith(path + ".")) and (
                owner is None or len(path) > len(owner["module"])
            ):
                owner = row
        if owner is not None:
            break
    if owner is None or owner["reason"] == NO_INT8_KERNEL:
        return NO_INT8_KERNEL, reason
    return owner["reason"], f"precision: activation {owner['activation']}, weight {owner['weight']} ({owner['reason']})"


def _load(model: onnx.ModelProto | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


# -- classification --------------------------------------------------------------------


def _category(node: onnx.NodeProto, meta: Mapping[str, TensorMeta]) -> str:
    if node.op_type in (QUANTIZE, DEQUANTIZE):
        return QDQ
    if node.op_type in INT8_KERNELS:
        return INT8_COMPUTE
    data = next((meta[name].dtype for name in node.input if name and name in meta), None)
    if node.op_type in DATA_MOVEMENT:
        if data in _EIGHT_BIT:
            return INT8_DATA
        return FLOAT_DATA if data is None or data.startswith("float") else SHAPE
    values = [meta[name].dtype for name in (*node.input, *node.output) if name and name in meta]
    if any(dtype.startswith("float") for dtype in values):
        return FLOAT_COMPUTE
    if any(dtype in _EIGHT_BIT for dtype in values):
        return INT8_COMPUTE
    return SHAPE
