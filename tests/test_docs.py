"""The documentation keeps up with the code: every hook documented and tested, links inside
the repository, the paths the docs name existing, and the worked example a working plugin.

Modelled on datasette's ``test_plugin_hooks_are_documented`` / ``test_plugin_hooks_have_tests``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from hat.hookspecs import HatSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLUGINS_MD = DOCS / "plugins.md"
TESTS = ROOT / "tests"
#: What, in a test module, builds a plugin host that collects the hooks it registers.
HOST_BUILDERS = ("use_host(", "PluginHost(", "host_fixture(", "make_host(")

HOOKS = sorted(name for name in vars(HatSpec) if name.startswith("hat_"))


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _headings(path: Path) -> list[str]:
    """The Markdown heading lines of a file (``#`` lines inside fenced code are not headings)."""
    headings, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6} ", line):
            headings.append(line)
    return headings


def test_every_hook_is_a_hookspec() -> None:
    assert HOOKS, "HatSpec declares no hook"
    for name in HOOKS:
        assert hasattr(getattr(HatSpec, name), "hat_spec"), f"HatSpec.{name} is not marked @hookspec"


# -- (a) every hook has a section in docs/plugins.md -----------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook: str) -> None:
    headings = _headings(PLUGINS_MD)
    assert any(f"`{hook}(" in line for line in headings), (
        f"docs/plugins.md has no section for {hook}: add a heading like '## `{hook}(...)`'"
    )


def test_plugin_hook_sections_name_the_hooks_parameters() -> None:
    """A section's signature is the hookspec's, less ``self``."""
    import inspect

    headings = "\n".join(_headings(PLUGINS_MD))
    for hook in HOOKS:
        params = [p for p in inspect.signature(getattr(HatSpec, hook)).parameters if p != "self"]
        assert f"`{hook}({', '.join(params)})" in headings, f"the {hook} heading must show ({', '.join(params)})"


def test_no_section_documents_a_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^#+ `(hat_\w+)\(", "\n".join(_headings(PLUGINS_MD)), re.M))
    assert documented <= set(HOOKS), f"docs/plugins.md documents unknown hooks: {sorted(documented - set(HOOKS))}"


# -- (b) every hook is implemented by a plugin that a test loads into a host -------------------


def _test_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(TESTS.rglob("*.py")) if path != Path(__file__).resolve()}


def _hookimpls(source: str) -> set[str]:
    """Names of the functions and methods marked ``@hookimpl`` in a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
                if name == "hookimpl":
                    found.add(node.name)
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _loaded_by_a_test(path: Path, sources: dict[Path, str]) -> list[Path]:
    """Test modules and conftests that build a host and are, or import, the module at ``path``."""
    module = _module_name(path)
    users = []
    for other, text in sources.items():
        if not (other.name.startswith("test_") or other.name == "conftest.py"):
            continue
        if not any(builder in text for builder in HOST_BUILDERS):
            continue
        if other == path or re.search(rf"\b(from|import)\s+{re.escape(module)}\b", text):
            users.append(other)
    return users


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook: str) -> None:
    """Some plugin in tests/ implements the hook, and a test module loads that plugin into a host."""
    sources = _test_sources()
    implementers = [path for path, text in sources.items() if hook in _hookimpls(text)]
    assert implementers, f"no test plugin implements {hook} with @hookimpl: add one to a test (see docs/plugins.md)"
    loaded = {impl: _loaded_by_a_test(impl, sources) for impl in implementers}
    assert any(loaded.values()), (
        f"{hook} is implemented in {[str(p.relative_to(ROOT)) for p in implementers]}, "
        "but no test module or conftest loads that plugin into a host (use_host / host_fixture / PluginHost)"
    )


# -- (c) links: the README points at the docs, and nothing points outside the repository ------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_readme_links_the_design_and_the_plugin_guide() -> None:
    links = set(_LINK.findall((ROOT / "README.md").read_text()))
    assert "docs/design.md" in links and "docs/plugins.md" in links, sorted(links)


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository_and_resolve(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text and "/work/shared" not in text, f"{path.name} refers to the shared folder"
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(ROOT), f"{path.name} links {target!r}, outside the repository"
        assert resolved.exists(), f"{path.name} links {target!r}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{path.name} links {target!r}: no such heading"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in _headings(path):
        title = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


_PATH = re.compile(r"`((?:core|plugins|tests|benchmarks|docs)/[\w./*<>-]+)`")
_MODULE = re.compile(r"`(hat(?:\.\w+)+)")


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_the_paths_and_modules_the_docs_name_exist(path: Path) -> None:
    """Modules move between layers; a doc naming a file that moved is wrong."""
    text = path.read_text()
    for name in _PATH.findall(text):
        if "<" in name or "*" in name:  # a pattern: its folder must exist
            name = name.split("<")[0].split("*")[0].rsplit("/", 1)[0]
        assert (ROOT / name.rstrip("/")).exists(), f"{path.name} names {name}, which does not exist"
    src = ROOT / "core" / "src"
    for dotted in set(_MODULE.findall(text)):
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            base = src.joinpath(*parts[:end])
            module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            if module.is_file():
                rest = parts[end:]
                source = module.read_text()
                assert all(re.search(rf"\b{re.escape(attr)}\b", source) for attr in rest[:1]), (
                    f"{path.name} names {dotted}: {'.'.join(parts[:end])} has no {rest[0]}"
                )
                break
        else:
            pytest.fail(f"{path.name} names {dotted}, which is no module of hat")


# -- the worked example of docs/plugins.md is a working plugin ---------------------------------

_FILE_BLOCK = re.compile(r"```\w+\n# file: (\S+)\n(.*?)```", re.S)


def _write_example(dst: Path) -> dict[str, Path]:
    files = {}
    for name, body in _FILE_BLOCK.findall(PLUGINS_MD.read_text()):
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
        files[name] = target
    return files


@pytest.fixture()
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The example's files written to a folder and importable (as if installed editable)."""
    root = tmp_path / "hat-brightness"
    files = _write_example(root)
    monkeypatch.syspath_prepend(str(root / "src"))
    yield root, files
    for module in [m for m in sys.modules if m == "hat_brightness" or m.startswith("hat_brightness.")]:
        del sys.modules[module]


def test_the_worked_example_declares_its_entry_point_and_ships_its_configs(example_plugin) -> None:
    import tomllib

    root, files = example_plugin
    assert {"pyproject.toml", "src/hat_brightness/plugin.py"} <= set(files)
    project = tomllib.loads(files["pyproject.toml"].read_text())
    assert project["project"]["entry-points"]["hat"] == {"brightness": "hat_brightness.plugin"}
    assert project["tool"]["setuptools"]["package-data"]["hat_brightness"] == ["configs/*.yaml"]
    assert list((root / "src" / "hat_brightness" / "configs").glob("*.yaml"))
    plugin_lines = [line for line in files["src/hat_brightness/plugin.py"].read_text().splitlines() if line.strip()]
    assert len(plugin_lines) <= 30, "the example's plugin.py should stay short"


@pytest.mark.slow
def test_the_worked_example_conforms_and_its_demo_runs(example_plugin, tmp_path: Path) -> None:
    import importlib

    from hat.testing import check_plugin, use_host

    plugin = importlib.import_module("hat_brightness.plugin")
    with use_host((plugin, "hat-brightness")) as host:
        assert host.tasks.owners["brightness"] == "hat-brightness"
        assert host.packers.owners["grays"] == "hat-brightness" and host.synth.owners["grays"] == "hat-brightness"
        result = check_plugin(
            "hat_brightness.plugin",
            "hat-brightness",
            host=host,
            demo_overrides=[],
            demo_synth_options={"num_images": 32},
            demo_work_dir=tmp_path / "demo",
        )
    assert result.deploy_models == {"brightness": {"pred": (1, 1)}}
    assert {"BrightnessNet", "BrightnessPostProcess", "BrightnessMAE", "GrayPackData"} <= set(result.registered)
    report = result.demo_report
    assert report is not None and set(report["stages"]) >= {"float", "calibration", "qat", "int_infer"}
    assert all("mae" in metrics for metrics in report["stages"].values())
