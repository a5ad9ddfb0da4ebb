"""Fold computations on constants into initializers, so weights reach the graph as int8.

The TorchScript exporter leaves the weight-scale arithmetic (``abs().amax() / 127``)
and the weight's QuantizeLinear in the graph: its own constant folding does not touch
ops that read parameters. onnxruntime's quantizer, and the int8 fusions that expect its
output, want an int8 initializer feeding a DequantizeLinear. Folding everything whose
inputs are constant — except DequantizeLinear, which must stay to mark the int8 weight —
gives exactly that, and evaluates with ONNX's reference implementation so that rounding
(half to even, like torch's fake quantization) follows the ONNX specification.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from hat.deploy.onnx_graph import DEQUANTIZE, constant_node_value, replace_nodes

#: Never evaluated ahead of time: DequantizeLinear marks int8 tensors; the rest are not pure.
_KEEP_OPS = frozenset(
    {DEQUANTIZE, "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
#: A fold may not blow a small constant up into a large one (Expand, Tile, ConstantOfShape).
_MAX_GROWTH_ELEMENTS = 1 << 16


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes and every foldable node on constants into initializers, in place.

    Returns ``model`` for chaining. Nodes of non-default domains are left alone (the
    reference evaluator does not know them).
    """
    graph = model.graph
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded: set[str] = set()
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            values[node.output[0]] = constant_node_value(node)
            folded.add(node.output[0])
            continue
        if _foldable(node, values):
            outputs = _evaluate(node, values, model.opset_import)
            if outputs is not None:
                for name, value in zip(node.output, outputs, strict=True):
                    values[name] = value
                    folded.add(name)
                continue
        keep.append(node)
    replace_nodes(graph, keep)
    used = {name for node in keep for name in node.input} | {o.name for o in graph.output}
    existing = {t.name for t in graph.initializer}
    for name in sorted(folded & used - existing):
        graph.initializer.append(numpy_helper.from_array(np.asarray(values[name]), name))
    return model


def _foldable(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in _KEEP_OPS:
        return False
    inputs = [name for name in node.input if name]
    return bool(inputs) and all(name in values for name in inputs)


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: object) -> list[np.ndarray] | None:
    """The node's outputs, or ``None`` if folding would create an outsized constant."""
    inputs = [name for name in node.input if name]
    initializers = [numpy_helper.from_array(np.asarray(values[name]), name) for name in dict.fromkeys(inputs)]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output]
    graph = helper.make_graph([node], "fold", [], outputs, initializer=initializers)
    results = ReferenceEvaluator(helper.make_model(graph, opset_imports=opset)).run(None, {})
    in_size = sum(int(np.asarray(values[name]).size) for name in inputs)
    out_size = sum(int(np.asarray(r).size) for r in results)
    if out_size > max(2 * in_size, _MAX_GROWTH_ELEMENTS):
        return None
    return [np.asarray(r) for r in results]
