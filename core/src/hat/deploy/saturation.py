"""Static proof that an int8 model cannot saturate onnxruntime's non-VNNI x86 kernels.

Without VNNI, onnxruntime's u8 x s8 GEMM (every conv that is not depthwise, every
matmul and Gemm) adds each pair of adjacent products in a saturating 16-bit lane
(``vpmaddubsw``). Which two weights end up adjacent depends on the kernel's packing,
so the proof takes the worst pair any packing could make: in every output channel, the
two largest weights of one sign. With activation codes up to ``a`` (255 for uint8), a
channel is safe when ``a * (|w1| + |w2|) <= 32767``; a pair of opposite signs partly
cancels and is never worse than its larger weight alone. A model is safe when every
channel of every such kernel is. This needs no particular CPU, so ``hat check`` gives
the same answer on every machine; a timing or agreement test would not.

Depthwise convs are exempt (onnxruntime's depthwise kernel widens to 16 bits and
accumulates in 32), and so is a conv or matmul whose input is not an int8 tensor
(onnxruntime runs it in float).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_graph import GraphIndex
from hat.deploy.qdq_finalize import is_depthwise_conv, weight_site
from hat.quant.target import INT16_MAX, UINT8_MAX

#: What each checked node is.
DENSE, DEPTHWISE, FLOAT = "dense", "depthwise", "float"


@dataclass
class KernelBound:
    """One conv / matmul: its worst pair of weight codes and the largest sum it can make."""

    node: str
    op_type: str
    module: str
    kind: str
    activation_max: int = 0
    #: The two weight codes of the worst pair (same sign), or [] where not applicable.
    pair: list[int] = field(default_factory=list)
    bound: int = 0

    @property
    def safe(self) -> bool:
        return self.kind != DENSE or self.bound <= INT16_MAX


@dataclass
class SaturationReport:
    kernels: list[KernelBound]

    @property
    def safe(self) -> bool:
        return all(k.safe for k in self.kernels)

    def unsafe(self) -> list[KernelBound]:
        return sorted((k for k in self.kernels if not k.safe), key=lambda k: -k.bound)

    def worst_bound(self) -> int:
        return max((k.bound for k in self.kernels if k.kind == DENSE), default=0)

    def summary(self) -> dict[str, Any]:
        """What ``export.json`` and ``check.json`` record."""
        unsafe = self.unsafe()
        return {
            "safe_without_vnni": self.safe,
            "limit": INT16_MAX,
            "worst_pair_bound": self.worst_bound(),
            "dense_kernels": sum(k.kind == DENSE for k in self.kernels),
            "depthwise_kernels": sum(k.kind == DEPTHWISE for k in self.kernels),
            "unsafe": [{**asdict(k), "safe": False} for k in unsafe],
        }


def check_saturation(model: onnx.ModelProto) -> SaturationReport:
    """Bound every int8 conv, matmul and Gemm of an exported Q/DQ graph (before onnxruntime)."""
    index = GraphIndex(model.graph)
    kernels = []
    for node in model.graph.node:
        site = weight_site(node)
        if site is None:
            continue
        slot, axis = site
        weight = _int8_weight(node, slot, index)
        if weight is None:
            continue
        bound = KernelBound(node.name, node.op_type, module_path_of(node.name), FLOAT)
        activation_max = _activation_max(node, index)
        if activation_max is None:
            kernels.append(bound)
            continue
        if is_depthwise_conv(node, weight):
            bound.kind = DEPTHWISE
            kernels.append(bound)
            continue
        bound.kind = DENSE
        bound.activation_max = activation_max
        bound.pair = worst_pair(weight, axis % weight.ndim)
        bound.bound = activation_max * sum(abs(v) for v in bound.pair)
        kernels.append(bound)
    return SaturationReport(kernels)


def worst_pair(weight: np.ndarray, axis: int) -> list[int]:
    """The two same-sign codes of one output channel with the largest |sum|, over all channels."""
    per_channel = np.moveaxis(weight.astype(np.int64), axis, 0).reshape(weight.shape[axis], -1)
    best: list[int] = []
    best_sum = -1
    for sign in (1, -1):
        values = np.sort(np.clip(per_channel * sign, 0, None), axis=1)[:, ::-1][:, :2]
        sums = values.sum(axis=1)
        channel = int(np.argmax(sums))
        if int(sums[channel]) > best_sum:
            best_sum = int(sums[channel])
            best = [int(v) * sign for v in values[channel] if v]
    return best


def _int8_weight(node: onnx.NodeProto, slot: int, index: GraphIndex) -> np.ndarray | None:
    """The int8 codes behind the node's weight DequantizeLinear, if it has one."""
    if slot >= len(node.input):
        return None
    dq = index.dequantized_from(node.input[slot])
    if dq is None:
        return None
    codes = index.constant(dq.input[0])
    if codes is None or codes.dtype != np.int8:
        return None  # uint8 weights use onnxruntime's exact U8U8 kernel
    return codes


def _activation_max(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    """The largest code the kernel's data input can hold; None if that input is not 8-bit."""
    dq = index.dequantized_from(node.input[0])
    if dq is None or index.is_constant(dq.input[0]):
        return None
    zero = index.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if zero is None or zero.dtype == np.uint8:
        return UINT8_MAX
    if zero.dtype == np.int8:
        return 128
    return None
