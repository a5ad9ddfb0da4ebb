"""From ONNX node names back to the torch modules they came from.

The TorchScript exporter names each node after the module scope it ran in
(``/backbone/stage1/conv/Conv``). That is the only link between a graph node and the
user's code, so every message about a node (checker, export and runtime errors) goes
through here to name the module instead.
"""

from __future__ import annotations

import re

import onnx

#: Suffixes onnxruntime appends to names of nodes it creates from a tensor or a node.
_ORT_SUFFIX = re.compile(r"(_nchwc|_token_\d+|/duplicated)+$")


def module_path_of(node_name: str) -> str:
    """``/backbone/stage1/conv/Conv`` -> ``backbone.stage1.conv``; ``""`` for root or unscoped nodes."""
    if not node_name.startswith("/"):
        return ""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def exported_node_name(optimized_name: str, exported_names: set[str]) -> str | None:
    """The exported node an optimized node was made from, judged by its name.

    onnxruntime keeps a fused node's name, sometimes with a suffix (``/m/Conv_token_11``
    after the layout transform, ``/m/MatMul/MatMulAddFusion``): the longest exported
    name that prefixes the optimized one is its origin.
    """
    if optimized_name in exported_names:
        return optimized_name
    best: str | None = None
    for name in exported_names:
        if (
            name
            and optimized_name.startswith(name)
            and _boundary(optimized_name, len(name))
            and (best is None or len(name) > len(best))
        ):
            best = name
    return best


def _boundary(name: str, at: int) -> bool:
    """The prefix ends where a suffix starts (``/m/Conv`` prefixes ``/m/Conv_token_3``, not ``/m/Conv2d``)."""
    return at == len(name) or name[at] in "_/"


class ModuleLocator:
    """Optimized node -> torch module path, through the exported graph when given."""

    def __init__(self, exported: onnx.ModelProto | None):
        self.names: set[str] = set()
        self.tensor_owner: dict[str, onnx.NodeProto] = {}
        if exported is not None:
            for node in exported.graph.node:
                self.names.add(node.name)
                for out in node.output:
                    self.tensor_owner[out] = node

    def __call__(self, node: onnx.NodeProto) -> str:
        """The module of a node of the optimized graph."""
        if not self.names:
            return module_path_of(node.name)
        origin = exported_node_name(node.name, self.names)
        if origin is not None:
            return module_path_of(origin)
        for name in (_ORT_SUFFIX.sub("", node.name), *node.output, *node.input):
            if name in self.tensor_owner:
                return module_path_of(self._matching_producer(self.tensor_owner[name], node).name)
        return module_path_of(node.name)

    def by_name(self, node_name: str) -> str:
        """The module of a node known only by the name an onnxruntime message gives."""
        origin = exported_node_name(node_name, self.names) if self.names else None
        if origin is not None:
            return module_path_of(origin)
        owner = self.tensor_owner.get(_ORT_SUFFIX.sub("", node_name))
        return module_path_of(owner.name if owner is not None else node_name)

    def _matching_producer(self, producer: onnx.NodeProto, node: onnx.NodeProto) -> onnx.NodeProto:
        """The exported node of ``node``'s kind at or just above ``producer``.

        onnxruntime names a fused node after its last output (a Conv fused with the
        ReLU after it is named after the ReLU's output), so the tensor leads to the
        ReLU; the Conv it fused is a step or two upstream.
        """
        kind = _base_kind(node.op_type)
        current: onnx.NodeProto | None = producer
        for _ in range(3):
            if current is None or _base_kind(current.op_type) == kind:
                break
            current = self.tensor_owner.get(current.input[0]) if current.input else None
        return current if current is not None and _base_kind(current.op_type) == kind else producer


def _base_kind(op: str) -> str:
    """``QLinearConv``, ``FusedConv``, NCHWc ``Conv`` -> ``Conv``; ``NhwcMaxPool`` -> ``MaxPool``."""
    for prefix in ("QLinear", "Fused", "Nhwc", "Q"):
        if op.startswith(prefix) and len(op) > len(prefix) and op[len(prefix)].isupper():
            return op[len(prefix) :]
    return op
