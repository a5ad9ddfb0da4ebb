"""From ONNX node names back to the torch modules they came from.

The TorchScript exporter names each node after the module scope it ran in
(``/backbone/stage1/conv/Conv``). That is the only link between a graph node and the
user's code, so every message about a node (checker, export and runtime errors) goes
through here to name the module instead.
"""

from __future__ import annotations

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
