"""Failures of the deploy backend that a user acts on, each naming where it happened.

An export or a runtime failure is only actionable if it says which torch module it
came from: a node name like ``/backbone/stage1/conv/Conv`` alone sends people to read
ONNX graphs. Both carry the ONNX node and the module path so the CLI can print them.
"""

from __future__ import annotations

from hat.errors import UserError


class ExportError(UserError):
    """The quantized model cannot be written as a deployable int8 ONNX graph."""

    def __init__(
        self, message: str, *, node: str | None = None, module_path: str | None = None, hint: str | None = None
    ):
        self.node = node
        self.module_path = module_path
        super().__init__(message, where=_where(node, module_path), hint=hint)


class RuntimeFailure(UserError):
    """onnxruntime refused or failed to run a graph (invalid graph, missing kernel, bad shape)."""

    def __init__(
        self, message: str, *, node: str | None = None, module_path: str | None = None, hint: str | None = None
    ):
        self.node = node
        self.module_path = module_path
        super().__init__(message, where=_where(node, module_path), hint=hint)


def _where(node: str | None, module_path: str | None) -> str | None:
    if node is None and not module_path:
        return None
    parts = []
    if module_path:
        parts.append(f"module {module_path}")
    if node is not None:
        parts.append(f"ONNX node {node}")
    return ", ".join(parts)
