"""Make an exported Q/DQ graph look like onnxruntime's own quantizer output.

onnxruntime's int8 fusions (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, int8
MaxPool...) pattern-match the graphs its quantizer writes: int8 weight initializers
feeding DequantizeLinear, int32 biases on the ``s_in * s_w`` grid, and a Q/DQ pair
around every tensor that is int8 on the device. The TorchScript exporter writes the
weight's QuantizeLinear and its scale arithmetic into the graph, keeps biases float,
and leaves shape-only ops (Flatten, Reshape) between a DequantizeLinear and the
compute that reads it. These passes close that gap, exactly: they only fold constants,
re-express values that already lie on an int8/int32 grid, insert requantizations
with the scale a tensor already has, and write int8 activations as the same values
in uint8 (zero point + 128), which onnxruntime's x86 kernels need.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hat.deploy.constant_folding import fold_constants
from hat.deploy.errors import ExportError
from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_graph import (
    DEQUANTIZE,
    QUANTIZE,
    GraphIndex,
    all_names,
    attribute,
    drop_dead_nodes,
    drop_unused_initializers,
    replace_nodes,
    unique_name,
)

#: A bias may miss the int32 grid by this many grid steps (plus float32 rounding).
BIAS_GRID_TOLERANCE = 1e-3
_INT32_MAX = 2**31 - 1

#: Ops whose outputs are a selection or rearrangement of input values: an int8 input
#: gives an int8 output on the same grid, so a Q/DQ with the input's scale is exact.
_VALUE_PRESERVING = frozenset(
    {
        "MaxPool",
        "GlobalMaxPool",
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "DepthToSpace",
        "SpaceToDepth",
        "Slice",
        "Gather",
        "Split",
        "Identity",
        "Expand",
        "Tile",
        "Resize",
        "Pad",
    }
)


def finalize_qdq(model: onnx.ModelProto, *, activations: str = "uint8", dense_weight_max: int = 127) -> onnx.ModelProto:
    """Rewrite ``model`` in place into onnxruntime-quantizer form, check it, and return it.

    ``activations="uint8"`` (the default, as onnxruntime's quantizer writes) re-expresses
    int8 activations as uint8 with the zero point shifted by 128 — the same values; see
    :func:`activations_to_uint8` for why onnxruntime needs it. ``"int8"`` keeps them.
    Raises :class:`ExportError` naming the node and module when a bias is not on the
    int32 grid (the simulation did not round it) or the result fails ``onnx.checker``.
    ``dense_weight_max`` is the deploy target's weight limit for non-depthwise kernels: a
    float weight re-expressed as int8 never gets codes beyond it (see
    :func:`requantize_float_weights`).
    """
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be 'uint8' or 'int8', not {activations!r}")
    fold_constants(model)
    fold_pads_into_convs(model.graph)
    requantize_float_weights(model.graph, dense_weight_max=dense_weight_max)
    fold_weight_transposes(model.graph)
    propagate_qdq(model.graph)
    quantize_biases(model.graph)
    if activations == "uint8":
        activations_to_uint8(model.graph)
    drop_dead_nodes(model.graph)
    drop_unused_initializers(model.graph)
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported int8 graph is not valid ONNX: {exc}") from exc
    model.CopyFrom(inferred)
    return model


# -- pads ----------------------------------------------------------------------------


def fold_pads_into_convs(graph: onnx.GraphProto) -> None:
    """``Conv(Pad(x))`` with zero padding of the spatial axes -> ``Conv(x)`` with those pads.

    torch's conv takes only symmetric padding, so an asymmetric one (a transposed conv's
    output phases) is written as ``F.pad`` + conv. onnxruntime runs a standalone Pad in
    float between the int8 ops; as Conv's own ``pads`` the padding happens inside
    QLinearConv, with the input's zero point: the same values, since 0.0 is on every grid.
    """
    index = GraphIndex(graph)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        amounts = index.constant(pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
        value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        consumers = index.consumers.get(pad.output[0], [])
        if (
            amounts is None
            or value is None
            or mode != "constant"
            or np.any(np.asarray(value) != 0)
            or len(pad.input) > 3  # explicit axes: leave it
            or amounts.size != 8
            or np.any(amounts < 0)
            or np.any(amounts[[0, 1, 4, 5]] != 0)
            or pad.output[0] in index.graph_outputs
            or not consumers
            or any(c.op_type != "Conv" or list(c.input).index(pad.output[0]) != 0 for c in consumers)
            or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for c in consumers for a in c.attribute)
        ):
            continue
        top, left, bottom, right = (int(amounts[i]) for i in (2, 3, 6, 7))
        for conv in consumers:
            pads = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
            merged = [pads[0] + top, pads[1] + left, pads[2] + bottom, pads[3] + right]
            kept = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend([*kept, helper.make_attribute("pads", merged)])
            conv.input[0] = pad.input[0]
    drop_dead_nodes(graph)


# -- weights -------------------------------------------------------------------------


def fold_weight_transposes(graph: onnx.GraphProto) -> None:
    """``Transpose(DQ(int8 W))`` -> ``DQ(int8 W^T)``, so MatMul reads its weight from a DQ.

    The exporter writes ``F.linear`` on a batch of vectors as ``MatMul(x, Transpose(W))``;
    onnxruntime only fuses a MatMul whose inputs come straight from DequantizeLinear.
    """
    index = GraphIndex(graph)
    drop: set[int] = set()
    for node in graph.node:
        if node.op_type != "Transpose":
            continue
        dq = index.dequantized_from(node.input[0])
        if dq is None or len(index.consumers[dq.output[0]]) != 1 or dq.output[0] in index.graph_outputs:
            continue
        weight = index.constant(dq.input[0])
        if weight is None or dq.input[0] not in index.initializers or len(index.consumers[dq.input[0]]) != 1:
            continue
        perm = attribute(node, "perm") or list(reversed(range(weight.ndim)))
        scale = index.constant(dq.input[1])
        if scale is None:
            continue
        name = dq.input[0]
        index.initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), name))
        if scale.size > 1:
            axis = int(attribute(dq, "axis", 1)) % weight.ndim
            _set_attribute(dq, "axis", list(perm).index(axis))
        dq.output[0] = node.output[0]
        drop.add(id(node))
    if drop:
        replace_nodes(graph, [n for n in graph.node if id(n) not in drop])


def requantize_float_weights(graph: onnx.GraphProto, *, dense_weight_max: int = 127) -> list[str]:
    """Float weights that lie on a symmetric per-channel int8 grid -> int8 initializer + DQ.

    The TorchScript tracer evaluates a weight's fake quantization itself when weight and
    scale are both plain constants (non-persistent buffers, say), and the graph then
    holds the float result. Its values are still ``q * s`` per channel, so the grid can
    be recovered exactly (see :func:`_int8_grid`); a weight on no such grid (a layer
    left float on purpose) is left alone. Returns the nodes whose weight was recovered.
    """
    index = GraphIndex(graph)
    taken = all_names(graph)
    recovered: list[str] = []
    additions: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        site = weight_site(node)
        if site is None or index.dequantized_from(node.input[0]) is None:
            continue
        slot, axis = site
        name = node.input[slot] if slot < len(node.input) else ""
        weight = index.constant(name) if name in index.initializers else None
        if weight is None or weight.dtype.kind != "f" or weight.ndim < 2 or len(index.consumers[name]) != 1:
            continue
        limit = 127 if is_depthwise_conv(node, weight) else dense_weight_max
        grid = _int8_grid(weight.astype(np.float64), axis % weight.ndim, max_code=limit)
        if grid is None:
            continue
        q, scale = grid
        q_name = unique_name(taken, f"{name}_quantized")
        s_name = unique_name(taken, f"{name}_scale")
        z_name = unique_name(taken, f"{name}_zero_point")
        out = unique_name(taken, f"{name}_dequantized")
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, q_name),
                numpy_helper.from_array(scale, s_name),
                numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z_name),
            ]
        )
        dq_name = unique_name(taken, f"{node.name}_weight_dq")
        additions[id(node)] = helper.make_node(
            DEQUANTIZE, [q_name, s_name, z_name], [out], name=dq_name, axis=axis % weight.ndim
        )
        node.input[slot] = out
        recovered.append(node.name)
    if additions:
        ordered: list[onnx.NodeProto] = []
        for node in graph.node:
            if id(node) in additions:
                ordered.append(additions[id(node)])
            ordered.append(node)
        replace_nodes(graph, ordered)
    return recovered


def weight_site(node: onnx.NodeProto) -> tuple[int, int] | None:
    """(weight input slot, output-channel axis of the weight) of a conv or matmul."""
    if node.op_type == "Conv":
        return 1, 0
    if node.op_type == "Gemm":
        return 1, 0 if attribute(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return 1, -1
    return None


def is_depthwise_conv(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    """One input and one output channel per group (onnxruntime's exact depthwise kernel)."""
    group = int(attribute(node, "group", 1))
    return node.op_type == "Conv" and group > 1 and weight.shape[0] == group and weight.shape[1] == 1


def _int8_grid(weight: np.ndarray, axis: int, max_code: int = 127) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 values, per-channel scales) if ``weight`` lies on a symmetric int8 grid per channel.

    A channel's values are ``q * s`` with ``|q| <= max_code``; its largest ``|q|`` may be
    below that (a transposed conv rewritten as a conv splits each channel's taps), so
    the finest grid ``max|w| / k`` (largest ``k <= max_code``) holding every value is used:
    it contains the original grid, and a bias on ``s_in * s`` stays on ``s_in * s / j``.
    """
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    if np.any(amax == 0):
        return None
    steps = np.zeros(len(amax), dtype=np.int64)
    for k in range(max_code, 0, -1):
        open_rows = steps == 0
        if not open_rows.any():
            break
        ratio = moved[open_rows] * (k / amax[open_rows])[:, None]
        fits = np.all(np.abs(ratio - np.rint(ratio)) <= 1e-3, axis=1)
        steps[np.flatnonzero(open_rows)[fits]] = k
    if np.any(steps == 0):
        return None
    scale = (amax / steps).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.rint(weight / scale.astype(np.float64).reshape(shape))
    if np.any(np.abs(values) > max_code):
        return None
    return values.astype(np.int8), scale


# -- biases --------------------------------------------------------------------------


def quantize_biases(graph: onnx.GraphProto) -> None:
    """Float biases of int8 Conv/Gemm/Linear-MatMul -> int32 initializers behind a DQ.

    The runtime adds the bias in the int32 accumulator, so it must be an integer
    multiple of ``s_in * s_w[c]``; the simulation rounds it there, and this pass
    re-expresses it exactly (or refuses, naming the module, if it is off the grid).
    """
    index = GraphIndex(graph)
    taken = all_names(graph)
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        target = _bias_site(node, index)
        if target is None:
            continue
        consumer, slot, bias_name, in_scale, w_scale = target
        bias = index.constant(bias_name)
        if bias is None or bias.dtype.kind != "f" or bias.ndim != 1:
            continue
        channels = bias.shape[0]
        if w_scale.size not in (1, channels):
            continue
        step = (np.float32(in_scale) * w_scale.astype(np.float32)).astype(np.float32).reshape(-1)
        step = np.broadcast_to(step, (channels,)) if step.size == 1 and channels > 1 else step
        quantized = _on_grid(bias.astype(np.float64), step.astype(np.float64), consumer)
        base = node.name or bias_name
        q_name = unique_name(taken, f"{bias_name}_quantized")
        s_name = unique_name(taken, f"{bias_name}_quantized_scale")
        z_name = unique_name(taken, f"{bias_name}_quantized_zero_point")
        out_name = unique_name(taken, f"{bias_name}_dequantized")
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, q_name),
                numpy_helper.from_array(np.ascontiguousarray(step, dtype=np.float32), s_name),
                numpy_helper.from_array(np.zeros(step.shape, dtype=np.int32), z_name),
            ]
        )
        dq = helper.make_node(
            DEQUANTIZE, [q_name, s_name, z_name], [out_name], name=unique_name(taken, f"{base}_bias_dq"), axis=0
        )
        consumer.input[slot] = out_name
        new_nodes.setdefault(id(consumer), []).append(dq)
    if new_nodes:
        ordered: list[onnx.NodeProto] = []
        for node in graph.node:
            ordered.extend(new_nodes.get(id(node), []))
            ordered.append(node)
        replace_nodes(graph, ordered)


def _bias_site(
    node: onnx.NodeProto, index: GraphIndex
) -> tuple[onnx.NodeProto, int, str, np.ndarray, np.ndarray] | None:
    """(node holding the bias, input slot, bias tensor, input scale, weight scale) or None."""
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
        scales = _int8_scales(node.input[0], node.input[1], index, weight_channel_axis=0)
        return (node, 2, node.input[2], *scales) if scales else None
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        if attribute(node, "transA", 0) or float(attribute(node, "beta", 1.0)) != 1.0:
            return None
        if float(attribute(node, "alpha", 1.0)) != 1.0:
            return None
        axis = 0 if attribute(node, "transB", 0) else 1
        scales = _int8_scales(node.input[0], node.input[1], index, weight_channel_axis=axis)
        return (node, 2, node.input[2], *scales) if scales else None
    if node.op_type == "MatMul":
        consumers = index.consumers[node.output[0]]
        if len(consumers) != 1 or consumers[0].op_type != "Add" or node.output[0] in index.graph_outputs:
            return None
        add = consumers[0]
        slot = 1 if add.input[0] == node.output[0] else 0
        if not index.is_constant(add.input[slot]):
            return None
        scales = _int8_scales(node.input[0], node.input[1], index, weight_channel_axis=-1)
        return (add, slot, add.input[slot], *scales) if scales else None
    return None


def _int8_scales(
    x: str, w: str, index: GraphIndex, *, weight_channel_axis: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Scales of an int8 activation and an int8 constant weight, or None if either is not."""
    x_dq, w_dq = index.dequantized_from(x), index.dequantized_from(w)
    if x_dq is None or w_dq is None or not (_eight_bit(x_dq, index) and _eight_bit(w_dq, index)):
        return None  # a 16-bit layer runs in float on the device: its bias stays float
    x_scale, w_scale = index.constant(x_dq.input[1]), index.constant(w_dq.input[1])
    weight = index.constant(w_dq.input[0])
    if x_scale is None or w_scale is None or weight is None or x_scale.size != 1:
        return None
    if w_scale.size > 1:
        axis = int(attribute(w_dq, "axis", 1)) % weight.ndim
        if axis != weight_channel_axis % weight.ndim:
            return None
    return x_scale.reshape(()), w_scale.reshape(-1)


def _eight_bit(dq: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether a DequantizeLinear reads 8-bit codes (its zero point's type; none means uint8)."""
    if len(dq.input) < 3 or not dq.input[2]:
        return True
    zero = index.constant(dq.input[2])
    return zero is None or zero.dtype in (np.int8, np.uint8)


def _on_grid(bias: np.ndarray, step: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """``round(bias / step)`` as int32, after checking the bias was on that grid."""
    ratio = bias / step
    # A bias the simulation saturated sits at the int32 limit up to float32 rounding.
    rounded = np.clip(np.rint(ratio), -_INT32_MAX - 1, _INT32_MAX)
    miss = np.abs(ratio - rounded)
    allowed = BIAS_GRID_TOLERANCE + 1e-6 * np.abs(ratio)
    overflow = (miss > allowed) & (np.abs(ratio) > _INT32_MAX)
    if np.any(overflow):
        worst = int(np.argmax(np.where(overflow, np.abs(ratio), 0)))
        raise ExportError(
            f"the bias of {node.op_type} does not fit int32 on the grid s_in * s_w "
            f"(channel {worst}: bias / step = {ratio[worst]:.4g})",
            node=node.name,
            module_path=module_path_of(node.name),
            hint="export the quantized (calibration or QAT) model, whose biases the simulation saturates",
        )
    if np.any(miss > allowed):
        worst = int(np.argmax(miss - allowed))
        raise ExportError(
            f"the bias of {node.op_type} is not on the int32 grid s_in * s_w "
            f"(channel {worst}: bias / step = {ratio[worst]:.4f})",
            node=node.name,
            module_path=module_path_of(node.name),
            hint="export the quantized (calibration or QAT) model, whose biases the simulation rounds",
        )
    return rounded.astype(np.int32)


# -- activations ---------------------------------------------------------------------


def propagate_qdq(graph: onnx.GraphProto) -> None:
    """Requantize the output of value-preserving ops that read an int8 tensor.

    ``DQ -> MaxPool -> Flatten -> Gemm`` leaves Gemm reading a float tensor, so it
    stays float; ``DQ -> MaxPool -> Q -> DQ -> Flatten -> Q -> DQ -> Gemm`` (same scale
    throughout, which is exact since these ops only move values) fuses into int8
    kernels, and onnxruntime drops the redundant pairs around the movement ops. A
    graph output gets the same treatment (its name moves to the new DequantizeLinear),
    so a final Resize or MaxPool runs int8 too.
    """
    index = GraphIndex(graph)
    taken = all_names(graph)
    renamed: dict[str, str] = {}
    producer: dict[str, onnx.NodeProto] = {}
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != QUANTIZE:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
        ordered.append(node)
        for name in node.output:
            producer[name] = node
        dq = producer.get(node.input[0]) if node.input else None
        if dq is None or dq.op_type != DEQUANTIZE or not _propagates(node, dq, index):
            continue
        for slot, name in enumerate(node.output):
            is_output = name in index.graph_outputs
            if not is_output and not any(c.op_type != QUANTIZE for c in index.consumers.get(name, [])):
                continue
            q_out = unique_name(taken, f"{name}_quantized")
            if is_output:  # the op now writes a new tensor; the graph output becomes the DQ's
                source = unique_name(taken, f"{name}_float")
                node.output[slot] = source
                producer[source] = node
                dq_out = name
            else:
                source = name
                dq_out = unique_name(taken, f"{name}_requantized")
                renamed[name] = dq_out
            ordered.append(
                helper.make_node(QUANTIZE, [source, *dq.input[1:]], [q_out], name=unique_name(taken, f"{node.name}_q"))
            )
            second = helper.make_node(
                DEQUANTIZE, [q_out, *dq.input[1:]], [dq_out], name=unique_name(taken, f"{node.name}_dq")
            )
            ordered.append(second)
            producer[dq_out] = second
    replace_nodes(graph, ordered)


def activations_to_uint8(graph: onnx.GraphProto) -> None:
    """Int8 activation Q/DQ pairs -> uint8 with zero point + 128 (identical values).

    Measured with onnxruntime 1.20 and 1.31 on x86: its CPU provider fuses Q/DQ groups
    into QLinearConv (and QLinearAdd, ...) only with uint8 activations. It rewrites a
    signed int8 Q -> DQ pair as uint8 itself, but only when the Q feeds a single DQ, so
    every tensor read by two ops (a residual, a branch) left its producer and its
    consumers in float. Writing uint8 activations, as onnxruntime's own quantizer does
    by default, fuses them all. Weights stay int8 (the fast u8 x s8 kernels).
    """
    index = GraphIndex(graph)
    taken = all_names(graph)
    shifted: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type != QUANTIZE or len(node.input) < 3 or not node.input[2] or index.is_constant(node.input[0]):
            continue
        zero = index.constant(node.input[2])
        consumers = index.consumers.get(node.output[0], [])
        if zero is None or zero.dtype != np.int8 or zero.size != 1 or node.output[0] in index.graph_outputs:
            continue
        if not consumers or not all(_dequantizes_with(c, zero, index) for c in consumers):
            continue
        original = node.input[2]
        if original not in shifted:
            shifted[original] = unique_name(taken, f"{original}_uint8")
            value = (zero.astype(np.int16) + 128).astype(np.uint8)
            graph.initializer.append(numpy_helper.from_array(value, shifted[original]))
        for target in (node, *consumers):
            target.input[2] = shifted[original]


def _dequantizes_with(node: onnx.NodeProto, zero: np.ndarray, index: GraphIndex) -> bool:
    """A DequantizeLinear whose zero point equals ``zero`` (so it can shift along with its Q)."""
    if node.op_type != DEQUANTIZE or len(node.input) < 3 or not node.input[2]:
        return False
    value = index.constant(node.input[2])
    return value is not None and value.dtype == zero.dtype and value.size == 1 and value.item() == zero.item()


def _propagates(node: onnx.NodeProto, dq: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type not in _VALUE_PRESERVING or node.domain not in ("", "ai.onnx"):
        return False
    scale = index.constant(dq.input[1])
    if scale is None or scale.size != 1:
        return False
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return False
    if node.op_type == "Resize" and attribute(node, "mode", b"nearest") not in (b"nearest", "nearest"):
        return False
    if node.op_type == "Pad":
        mode = attribute(node, "mode", b"constant")
        if mode in (b"constant", "constant") and len(node.input) > 2 and node.input[2]:
            value = index.constant(node.input[2])
            if value is None or np.any(value != 0):
                return False
    return True


def _set_attribute(node: onnx.NodeProto, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))
