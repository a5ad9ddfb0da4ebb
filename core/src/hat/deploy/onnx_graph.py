"""Small read/write helpers over an ONNX graph that every deploy pass needs.

The passes (folding, bias quantization, Q/DQ propagation) and the checker all ask the
same questions — who produces this tensor, who consumes it, is it a constant — so the
answers live here once instead of being re-derived with ad-hoc loops in each pass.
An index is a snapshot: a pass that rewrites the graph builds a fresh one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
MS_DOMAIN = "com.microsoft"


class GraphIndex:
    """Producers, consumers and initializers of a graph, looked up by tensor name."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}

    def is_constant(self, name: str) -> bool:
        """True for an initializer or the output of a Constant node."""
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx")

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or ``None`` when it is computed at run time."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return constant_node_value(node)
        return None

    def dequantized_from(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that produces ``name``, if any."""
        node = self.producer.get(name)
        if node is not None and node.op_type == DEQUANTIZE:
            return node
        return None


def constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value a Constant node holds, whichever of its attribute forms it uses."""
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    raise ValueError(f"Constant node {node.name!r} uses the unsupported attribute {attr.name!r}")


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """A node attribute's Python value, or ``default`` when the node does not set it."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def unique_name(taken: set[str], base: str) -> str:
    """``base`` or ``base_1``, ``base_2``... — whichever is not yet in ``taken``; records it."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every node and tensor name in the graph, so new ones can be made unique."""
    names = {t.name for t in graph.initializer}
    names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def replace_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> None:
    """Make ``nodes`` the graph's node list (in that order)."""
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove initializers nothing reads; returns how many went."""
    used = {name for node in graph.node for name in node.input}
    used.update(o.name for o in graph.output)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes whose outputs nothing reads (after folding left them behind)."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            keep.append(node)
            needed.update(name for name in node.input if name)
    dropped = len(graph.node) - len(keep)
    if dropped:
        replace_nodes(graph, reversed(keep))
    return dropped
