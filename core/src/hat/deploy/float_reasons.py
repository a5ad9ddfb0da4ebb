"""Why onnxruntime left a node float, told from the graph around it.

A list of float nodes is only useful with the fix attached: a ReLU that sits between
a conv and its quantizer (fold it into the quantizer), a layer whose weight was never
quantized, an op the CPU provider has no int8 kernel for, signed activations read by
two ops. Each reason names the tensor or the neighbouring op it is about.
"""

from __future__ import annotations

import numpy as np
import onnx

from hat.deploy.onnx_graph import DEQUANTIZE, QUANTIZE, GraphIndex, attribute

#: Float ops for which onnxruntime's CPU provider has an int8 form it fuses Q/DQ into.
HAS_INT8_FORM = frozenset(
    {
        "Conv",
        "FusedConv",
        "MatMul",
        "FusedMatMul",
        "Gemm",
        "FusedGemm",
        "Add",
        "Mul",
        "Concat",
        "AveragePool",
        "GlobalAveragePool",
        "Sigmoid",
        "LeakyRelu",
        "Softmax",
        "ReduceMean",
        "Where",
        "Relu",
        "Clip",
    }
)
#: Nodes onnxruntime inserts to change layout; the checker looks through them.
_LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})


def _unfused_reason(opt_level: int | None) -> str:
    if opt_level is not None and opt_level < 2:
        return f"optimization level {opt_level} does not fuse Q/DQ into int8 kernels (level 2 does)"
    return ""


def compute_reason(node: onnx.NodeProto, index: GraphIndex, opt_level: int | None) -> str:
    """Why a float compute node (Conv, MatMul, Add, Softmax, ...) did not become int8."""
    op = node.op_type
    if op == "ConvTranspose":
        return "onnxruntime's CPU provider has no int8 ConvTranspose (export it as Conv + DepthToSpace)"
    if op not in HAS_INT8_FORM:
        return f"op type {op} has no int8 kernel in onnxruntime's CPU provider"
    reasons = []
    for slot in _data_inputs(node, index):
        name = node.input[slot]
        source = _producer(name, index)
        if source is not None and source.op_type == DEQUANTIZE:
            if _is_16_bit(source, index):
                what = "weight" if source.input[0] in index.initializers else "input"
                reasons.append(f"{what} {name} is 16-bit: onnxruntime has no int16 {_base_op(op)} kernel")
            continue
        if source is None and name in index.initializers:
            reasons.append(f"weight {name} is a float initializer, not int8")
        elif source is None:
            reasons.append(f"input {name} is a float graph input, not quantized")
        else:
            reasons.append(f"input {name} is not dequantized from int8 (it comes from {source.op_type} {source.name})")
    activation = attribute(node, "activation")
    consumers = _consumers(node.output[0], index)
    if activation and consumers and all(c.op_type == QUANTIZE for c in consumers):
        act = activation.decode() if isinstance(activation, bytes) else str(activation)
        reasons.append(f"a {act} sits between the {_base_op(op)} and its QuantizeLinear (fused into {op})")
    elif not consumers:
        reasons.append("output is a graph output, not quantized")
    elif not any(c.op_type == QUANTIZE for c in consumers):
        between = [c for c in consumers if any(q.op_type == QUANTIZE for q in _consumers(c.output[0], index))]
        if len(consumers) == 1 and between:
            reasons.append(f"a {between[0].op_type} sits between the {_base_op(op)} and its QuantizeLinear")
        else:
            followers = ", ".join(sorted({c.op_type for c in consumers}))
            reasons.append(f"output is not quantized (followed by {followers})")
    if not reasons:
        reasons.append(_unfused_reason(opt_level) or _signed_activation_reason(node, index))
    return "; ".join(reasons)


def _signed_activation_reason(node: onnx.NodeProto, index: GraphIndex) -> str:
    """Why a fully quantized group was not fused: signed int8 activations, or unknown."""
    for slot in _data_inputs(node, index):
        dq = _producer(node.input[slot], index)
        if dq is None or dq.op_type != DEQUANTIZE or dq.input[0] in index.initializers:
            continue
        zero = index.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if zero is not None and zero.dtype == np.int8:
            return (
                f"activation {node.input[slot]} is signed int8: onnxruntime's x86 int8 kernels take uint8 "
                "activations and convert a signed Q/DQ pair only when its QuantizeLinear feeds one "
                "DequantizeLinear (export with uint8 activations)"
            )
    return "inputs and output are quantized, but onnxruntime did not fuse this group"


def data_reason(node: onnx.NodeProto, index: GraphIndex, opt_level: int | None) -> str:
    """Why a data-movement node (MaxPool, Resize, Reshape, ...) runs on float values."""
    name = node.input[0]
    source = _producer(name, index)
    consumers = _consumers(node.output[0], index)
    if (
        source is not None
        and source.op_type == DEQUANTIZE
        and consumers
        and all(c.op_type == QUANTIZE for c in consumers)
    ):
        before = _quant_params(source, index)
        after = {_quant_params(c, index) for c in consumers}
        if after != {before}:
            return "the quantizers before and after it differ (scale or zero point), so it runs on dequantized values"
        return _unfused_reason(opt_level) or "quantized on both sides, but onnxruntime did not fuse it"
    if source is not None and source.op_type == DEQUANTIZE:
        if not consumers:
            return "its output is a graph output that is not requantized, so it runs on dequantized values"
        if not any(c.op_type == QUANTIZE for c in consumers):
            followers = ", ".join(sorted({c.op_type for c in consumers}))
            return f"its output is not requantized (followed by {followers}), so it runs on dequantized values"
    origin = f"{source.op_type} {source.name}" if source is not None else "a float graph input or weight"
    return f"runs on float data: input {name} comes from {origin}"


def _data_inputs(node: onnx.NodeProto, index: GraphIndex) -> list[int]:
    """Input slots that carry tensors to be multiplied or added (not biases, not scalars)."""
    op = node.op_type
    if op in ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Add", "Mul"):
        slots = [0, 1]
    elif op == "Concat":
        slots = list(range(len(node.input)))
    elif op == "Where":
        slots = [1, 2]
    else:
        slots = [0]
    slots = [s for s in slots if s < len(node.input) and node.input[s]]
    if op in ("Add", "Mul"):  # a constant operand is a bias or a scale, not a second tensor
        slots = [s for s in slots if not _is_small_constant(node.input[s], index)]
    return slots


def _is_16_bit(dq: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether a DequantizeLinear reads 16-bit codes (an int16 layer's tensor, ``precision: int16``)."""
    zero = index.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    return zero is not None and zero.dtype in (np.int16, np.uint16)


def _is_small_constant(name: str, index: GraphIndex) -> bool:
    value = index.constant(name)
    return value is not None and value.size <= 1


def _producer(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The node producing ``name``, looking through onnxruntime's layout reorders."""
    node = index.producer.get(name)
    while node is not None and node.op_type in _LAYOUT_OPS and node.input:
        node = index.producer.get(node.input[0])
    return node


def _consumers(name: str, index: GraphIndex) -> list[onnx.NodeProto]:
    found = []
    for node in index.consumers.get(name, []):
        if node.op_type in _LAYOUT_OPS:
            found.extend(_consumers(node.output[0], index))
        else:
            found.append(node)
    return found


def _quant_params(node: onnx.NodeProto, index: GraphIndex) -> tuple[float, int]:
    scale = index.constant(node.input[1])
    zero = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    return (
        float(scale.reshape(-1)[0]) if scale is not None else float("nan"),
        int(zero.reshape(-1)[0]) if zero is not None else 0,
    )


def _base_op(op: str) -> str:
    return {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul"}.get(op, op)
