"""Give exported ONNX nodes the full module path of the torch module they ran in.

The TorchScript exporter names a node after the chain of module *calls* it ran in,
each shortened to its last name atom: ``model.backbone.stage1.conv`` called from the
root without ``backbone.forward`` becomes ``/stage1/conv/Conv``, and a second call of
a shared module becomes ``/shared_1/...``. Such names cannot be looked up in the model.
This pass resolves every scope chain against the model's module tree and rewrites node
names as ``/backbone/stage1/conv/Conv`` (the full path, ``.`` written as ``/``), so that
:func:`hat.deploy.node_names.module_path_of` gives a real ``named_modules()`` key.
"""

from __future__ import annotations

import re

import onnx
from torch import nn

from hat.deploy.onnx_graph import unique_name

_REPEAT_SUFFIX = re.compile(r"_(\d+)$")


class CallRecorder:
    """Records which module called which while the exporter traces, to resolve short names.

    Several modules can share a short name (``layers.0.conv``, ``layers.1.conv``); the
    one the exporter meant is the one that was actually called from that scope.
    """

    def __init__(self, root: nn.Module):
        self.root = root
        self.edges: dict[str, list[str]] = {}
        self._names = {id(m): name for name, m in root.named_modules()}
        self._stack: list[str] = []
        self._handles: list[object] = []

    def __enter__(self) -> CallRecorder:
        for module in self.root.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()  # type: ignore[attr-defined]
        self._handles.clear()

    def _enter(self, module: nn.Module, _args: object) -> None:
        name = self._names.get(id(module), "")
        parent = self._stack[-1] if self._stack else None
        if parent is not None and name not in self.edges.setdefault(parent, []):
            self.edges[parent].append(name)
        self._stack.append(name)

    def _leave(self, _module: nn.Module, _args: object, _output: object) -> None:
        if self._stack:
            self._stack.pop()


def rename_to_module_paths(
    graph: onnx.GraphProto, root: nn.Module, *, strip: str, keep: set[str], calls: CallRecorder | None = None
) -> None:
    """Rewrite node names (and the ``<node>_output_<i>`` tensors named after them) in place.

    ``root`` is the module that was exported; ``strip`` is the name of its child that
    holds the user's model (dropped from every path and parameter name); names in
    ``keep`` (graph inputs and outputs) never change; ``calls``, recorded during the
    export, settles which of several same-named modules a scope means.
    """
    tree = _ModuleTree(root, calls.edges if calls is not None else {})
    taken: set[str] = set()
    node_renames: dict[str, str] = {}
    for node in graph.node:
        new = _full_name(node.name, tree, strip)
        node_renames[node.name] = unique_name(taken, new) if new is not None else unique_name(taken, node.name)

    tensor_renames: dict[str, str] = {}
    for node in graph.node:
        old, new = node.name, node_renames[node.name]
        for name in node.output:
            if name and name not in keep and name.startswith(f"{old}_output_"):
                tensor_renames[name] = new + name[len(old) :]
    param = f"{strip}."
    for tensor in graph.initializer:
        if tensor.name.startswith(param) and tensor.name not in keep:
            tensor_renames[tensor.name] = tensor.name[len(param) :]

    every_tensor = {t.name for t in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    renamed = {tensor_renames.get(n, n) for n in every_tensor}
    if len(renamed) != len(every_tensor):
        tensor_renames = {}  # two tensors would share a name: keep the exporter's tensor names
    for node in graph.node:
        node.name = node_renames[node.name]
        node.input[:] = [tensor_renames.get(n, n) for n in node.input]
        node.output[:] = [tensor_renames.get(n, n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = tensor_renames.get(tensor.name, tensor.name)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = tensor_renames.get(value.name, value.name)


class _ModuleTree:
    """Qualified module names, searchable by the exporter's shortened names."""

    def __init__(self, root: nn.Module, edges: dict[str, list[str]]):
        self.names = [name for name, _ in root.named_modules() if name]
        self.edges = edges

    def child(self, parent: str, short: str, occurrence: int = 0) -> str | None:
        """The module called from ``parent`` (else the nearest under it) whose short name is ``short``.

        ``occurrence`` is the exporter's repeat suffix (``conv_1`` -> 1): the second
        same-named scope is the second such module called, or the same module again.
        """
        called = [name for name in self.edges.get(parent, []) if _unqualified(name) == short]
        if called:
            return called[min(occurrence, len(called) - 1)]
        prefix = f"{parent}." if parent else ""
        best: str | None = None
        for name in self.names:
            nearer = best is None or name.count(".") < best.count(".")
            if name.startswith(prefix) and _unqualified(name) == short and nearer:
                best = name
        return best


def _unqualified(qualified: str) -> str:
    """The exporter's short name: the last name atom, together with any numeric atoms after it."""
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def _full_name(node_name: str, tree: _ModuleTree, strip: str) -> str | None:
    """``/model/stage1/conv/Conv`` -> ``/backbone/stage1/conv/Conv``; None if not a scoped name."""
    if not node_name.startswith("/"):
        return None
    *scopes, op = node_name[1:].split("/")
    path = ""
    for short in scopes:
        found = tree.child(path, short)
        repeat = _REPEAT_SUFFIX.search(short)
        if found is None and repeat:
            found = tree.child(path, short[: repeat.start()], int(repeat.group(1)))
        path = found if found is not None else (f"{path}.{short}" if path else short)
    if path == strip:
        path = ""
    elif path.startswith(f"{strip}."):
        path = path[len(strip) + 1 :]
    else:
        return None  # a node of the export wrapper itself
    return "/" + "/".join([*(path.split(".") if path else []), op])
