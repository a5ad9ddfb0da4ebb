"""FLOPs of a node from its tensor shapes: 2 x multiply-accumulates for convs and matmuls.

Only the ops that dominate perception models are counted (conv, transposed conv,
matmul, gemm, in float, int8 and fused forms); everything else counts 0. The count is
layout-independent: a conv's MACs are (output elements / output channels) x weight
elements, which holds for NCHW, onnxruntime's NHWC int8 convs and (up to channel
padding) its NCHWc float convs.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import onnx

from hat.deploy.onnx_graph import attribute
from hat.deploy.tensor_probe import TensorMeta

#: op type -> (index of the activation input, index of the weight input)
_CONV_LIKE = {"Conv": (0, 1), "FusedConv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_LIKE = {
    "MatMul": (0, 1),
    "FusedMatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "MatMulIntegerToFloat": (0, 1),
    "QLinearMatMul": (0, 3),
    "DynamicQuantizeMatMul": (0, 1),
}
_GEMM_LIKE = {"Gemm": (0, 1), "FusedGemm": (0, 1), "QGemm": (0, 3)}


def node_flops(node: onnx.NodeProto, meta: Mapping[str, TensorMeta]) -> int:
    """2 x MACs of ``node`` (0 for ops that are not convs or matmuls, or unknown shapes)."""

    def shape(i: int) -> tuple[int, ...] | None:
        if i >= len(node.input) or not node.input[i] or node.input[i] not in meta:
            return None
        return meta[node.input[i]].shape

    out = meta.get(node.output[0]).shape if node.output and node.output[0] in meta else None
    op = node.op_type
    if op in _CONV_LIKE:
        w = shape(_CONV_LIKE[op][1])
        if out is None or w is None or not w or w[0] == 0:
            return 0
        return 2 * (prod(out) // w[0]) * prod(w)
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None or not w or w[0] == 0:
            return 0
        return 2 * (prod(x) // w[0]) * prod(w)
    if op in _MATMUL_LIKE:
        a = shape(_MATMUL_LIKE[op][0])
        if out is None or not a:
            return 0
        k = a[-2] if attribute(node, "transA", 0) and len(a) > 1 else a[-1]
        return 2 * prod(out) * k
    if op in _GEMM_LIKE:
        a = shape(_GEMM_LIKE[op][0])
        if out is None or a is None or len(a) != 2:
            return 0
        k = a[0] if attribute(node, "transA", 0) else a[1]
        return 2 * prod(out) * k
    return 0
