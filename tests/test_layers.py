"""Core's modules import only from their own layer or the layers below it.

Each module of ``hat`` belongs to one layer (the table below, the one place layers are
defined). An import from a higher layer fails, naming the importing module, the
imported one and both layers. Imports are read with :mod:`ast`, so imports inside
functions (deferred imports) count like top-level ones: deferring an import hides a
dependency from Python's import machinery, not from the layering.

Within a layer imports are allowed, but the units of the layer (the keys of the table)
must not import each other in a cycle. Separately, module-level imports must form no
cycle at all, and no task plugin under ``plugins/`` imports another plugin.

A new top-level module or package of ``hat`` must be added to ``LAYERS``: an
unclassified module fails too, so that its layer is a decision, not an accident.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "core" / "src"
PLUGINS = ROOT / "plugins"

#: Bottom to top. A module may import from its own layer and from any layer before it.
LAYERS: dict[str, tuple[str, ...]] = {
    # What every other layer uses: errors, printing, ranks, type names, YAML configs and
    # the names of the files in a work directory. Imports nothing above itself.
    "base": (
        "hat",  # the package itself (__version__)
        "hat.errors",
        "hat.console",
        "hat.distributed",
        "hat.registry",
        "hat.config",
        "hat.workdir",
        "hat.workdir_config",
        "hat.extra_options",
    ),
    # Libraries: data, models, quantization, ONNX deployment, nuScenes, metrics. They
    # know no stage, runner, plugin host or command.
    "libraries": (
        "hat.data",
        "hat.models",
        "hat.ops",
        "hat.quant",
        "hat.deploy",
        "hat.nuscenes",
        "hat.metrics",
        "hat.postprocess",
    ),
    # Runners: train, calibrate, predict (torch and ONNX), infer over a model.
    "engine": (
        "hat.engine",
        "hat.inferer",
    ),
    # The plugin system: hook specs, the host that loads plugins, core's own plugin
    # (which registers the libraries' and the engine's types) and the plugin kit.
    "plugin host": (
        "hat.hookspecs",
        "hat.plugins",
        "hat.builtins",
        "hat.plugin_kit",
    ),
    # What a `hat` command does, as a library call: configs of a task, stages, deploy
    # commands, the demo, inference on files.
    "use cases": ("hat.usecases",),
    # The command line and the test helpers plugins use (which drive the CLI).
    "cli": (
        "hat.cli",
        "hat.__main__",
        "hat.testing",
    ),
}

LAYER_ORDER = list(LAYERS)
_UNIT_LAYER = {unit: layer for layer, units in LAYERS.items() for unit in units}


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` (dotted module names) at ``file:line``."""

    importer: str
    imported: str
    where: str
    #: whether the import runs when the importer is imported (not inside a function).
    module_level: bool


def unit_of(module: str) -> str | None:
    """The ``LAYERS`` entry a module belongs to: the longest entry that is it or a parent.

    The bare package (``hat``) is an entry for itself only, not a parent of everything.
    """
    parts = module.split(".")
    for end in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in _UNIT_LAYER:
            return candidate
    return None


def layer_of(module: str) -> str | None:
    unit = unit_of(module)
    return _UNIT_LAYER[unit] if unit is not None else None


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _function_level_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function (run only when it is called)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    inside.add(id(child))
    return inside


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the imports under ``if TYPE_CHECKING:`` (never run; still layered)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        found.add(id(sub))
    return found


def import_edges(src: Path, package: str) -> list[Edge]:
    """Every import of ``package``'s own modules by ``package``'s modules under ``src``."""
    files = sorted((src / package).rglob("*.py"))
    known = {_module_name(f, src) for f in files}
    edges: list[Edge] = []
    for path in files:
        module = _module_name(path, src)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        deferred = _function_level_nodes(tree) | _type_checking_nodes(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                # ``from hat import console`` imports the module hat.console;
                # ``from hat.quant import FloatFunctional`` imports hat.quant.
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in known else source)
            else:
                continue
            for target in targets:
                if target == package or target.startswith(f"{package}."):
                    where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
                    edges.append(Edge(module, target, where, id(node) not in deferred))
    return edges


def upward_imports(edges: Iterable[Edge]) -> list[str]:
    """One message per import from a higher layer or of/by an unclassified module."""
    problems: list[str] = []
    for edge in edges:
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        if low is None or high is None:
            missing = edge.importer if low is None else edge.imported
            problems.append(
                f"{missing} is in no layer ({edge.where}): add it to LAYERS in tests/test_layers.py "
                f"(layers: {', '.join(LAYER_ORDER)})"
            )
        elif LAYER_ORDER.index(high) > LAYER_ORDER.index(low):
            problems.append(
                f"{edge.importer} (layer {low!r}) imports {edge.imported} (layer {high!r}), "
                f"a higher layer, at {edge.where}"
            )
    return sorted(set(problems))


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def same_layer_cycles(edges: Iterable[Edge]) -> list[str]:
    """Units of one layer that import each other in a cycle (any import, deferred too)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        a, b = unit_of(edge.importer), unit_of(edge.imported)
        if a and b and a != b and _UNIT_LAYER[a] == _UNIT_LAYER[b]:
            graph.setdefault(a, set()).add(b)
    return [f"layer {_UNIT_LAYER[c[0]]!r}: {' <-> '.join(c)} import each other" for c in cycles(graph)]


def module_level_cycles(edges: Iterable[Edge]) -> list[str]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.module_level and edge.importer != edge.imported:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    return [" <-> ".join(c) for c in cycles(graph)]


@pytest.fixture(scope="module")
def core_edges() -> list[Edge]:
    return import_edges(SRC, "hat")


def test_no_module_imports_from_a_higher_layer(core_edges: list[Edge]) -> None:
    problems = upward_imports(core_edges)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_every_layer_entry_exists() -> None:
    modules = {_module_name(f, SRC) for f in (SRC / "hat").rglob("*.py")}
    stale = [unit for unit in _UNIT_LAYER if unit not in modules]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_units_of_a_layer_import_each_other_without_cycles(core_edges: list[Edge]) -> None:
    problems = same_layer_cycles(core_edges)
    assert not problems, "\n".join(problems)


def test_no_module_level_import_cycle(core_edges: list[Edge]) -> None:
    problems = module_level_cycles(core_edges)
    assert not problems, "module-level import cycles:\n" + "\n".join(problems)


def _plugin_packages() -> dict[str, Path]:
    """Top-level package name -> its folder, for every plugin under plugins/*/src."""
    return {
        pkg.name: pkg for pkg in sorted(PLUGINS.glob("*/src/*")) if pkg.is_dir() and (pkg / "__init__.py").is_file()
    }


def test_no_plugin_imports_another_plugin() -> None:
    packages = _plugin_packages()
    assert packages, "found no plugin packages under plugins/*/src"
    problems = []
    for name, folder in packages.items():
        others = set(packages) - {name}
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    continue
                for root in roots:
                    if root in others:
                        problems.append(
                            f"plugin {name} imports plugin {root} at {path.relative_to(ROOT)}:{node.lineno}"
                        )
    assert not problems, "plugins depend only on core:\n" + "\n".join(problems)


# -- the checker itself ---------------------------------------------------------------------


def test_an_upward_import_is_reported_with_both_modules_and_layers() -> None:
    edge = Edge("hat.quant.converters", "hat.plugins", "core/src/hat/quant/converters.py:3", False)
    (message,) = upward_imports([edge])
    assert "hat.quant.converters (layer 'libraries')" in message
    assert "hat.plugins (layer 'plugin host')" in message
    assert "converters.py:3" in message


def test_a_downward_or_same_layer_import_is_fine() -> None:
    edges = [
        Edge("hat.cli", "hat.engine.calops", "x:1", False),
        Edge("hat.models.bifpn", "hat.quant", "x:2", True),
        Edge("hat.engine.runner", "hat.distributed", "x:3", True),
    ]
    assert upward_imports(edges) == []


def test_an_unclassified_module_is_reported() -> None:
    (message,) = upward_imports([Edge("hat.newthing", "hat.errors", "x:1", True)])
    assert "hat.newthing is in no layer" in message


def test_a_cycle_between_libraries_is_reported() -> None:
    edges = [
        Edge("hat.models.bifpn", "hat.quant", "x:1", True),
        Edge("hat.quant.fuse", "hat.models.layers", "x:2", False),
    ]
    (message,) = same_layer_cycles(edges)
    assert "hat.models <-> hat.quant" in message


def test_deferred_imports_are_read(tmp_path: Path) -> None:
    package = tmp_path / "hat"
    (package / "quant").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugins.py").write_text("")
    (package / "quant" / "__init__.py").write_text("")
    (package / "quant" / "converters.py").write_text("def f():\n    from hat.plugins import get_host\n")
    (edge,) = import_edges(tmp_path, "hat")
    assert (edge.importer, edge.imported, edge.module_level) == ("hat.quant.converters", "hat.plugins", False)
    assert upward_imports([edge])
