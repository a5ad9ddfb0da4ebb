"""The plugin kit: one-call registration, the configs helper, and the conformance check."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from hat.errors import PluginError
from hat.plugin_kit import package_configs
from hat.registry import Registry
from hat.testing import PluginDoesNotConform, check_plugin, run_cli, use_host

PLUGIN = """
from hat.hookspecs import TaskSpec, hookimpl
from hat.plugin_kit import package_configs

@hookimpl
def hat_register(registry):
    registry.add_package("{name}", skip={skip})

@hookimpl
def hat_tasks():
    return [TaskSpec(name="{name}", summary="kit test", default_config="{name}_cfg", dataset="none")]

@hookimpl
def hat_configs():
    return package_configs("{name}")
"""
MODEL = """
import torch
from hat.registry import register_type

@register_type()
class KitNet(torch.nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 1)

    def forward(self, batch):
        return {"out": self.conv(batch["img"])}
"""
CONFIG = """
model: {type: KitNet}
deploy_model: {type: KitNet, width: 4}
deploy_inputs: {img: [1, 3, 8, 8]}
"""


def make_package(root: Path, name: str, *, skip: tuple[str, ...] = (), extra: dict[str, str] | None = None) -> None:
    """A plugin package on disk: plugin.py, a nested model module, one config."""
    package = root / name
    (package / "model").mkdir(parents=True)
    (package / "configs").mkdir()
    (package / "__init__.py").write_text("")
    (package / "model" / "__init__.py").write_text("")
    (package / "model" / "net.py").write_text(textwrap.dedent(MODEL))
    (package / "plugin.py").write_text(PLUGIN.format(name=name, skip=list(skip)))
    (package / "configs" / f"{name}_cfg.yaml").write_text(CONFIG)
    for file, text in (extra or {}).items():
        (package / file).write_text(textwrap.dedent(text))


@pytest.fixture()
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("kit_")]:
        del sys.modules[name]


def test_add_package_registers_marked_types_of_every_submodule(on_path: Path) -> None:
    make_package(on_path, "kit_one")
    registry = Registry()
    assert registry.add_package("kit_one", owner="hat-kit-one") == 1
    assert registry.entries()[0].name == "KitNet" and registry.entries()[0].owner == "hat-kit-one"


def test_a_submodule_that_fails_to_import_is_named_and_can_be_skipped(on_path: Path) -> None:
    make_package(on_path, "kit_broken", extra={"needs_extra.py": "import not_installed_anywhere\n"})
    with pytest.raises(PluginError) as err:
        Registry().add_package("kit_broken")
    assert "kit_broken.needs_extra" in str(err.value) and "not_installed_anywhere" in str(err.value)
    assert "skip=['needs_extra']" in err.value.render()
    assert Registry().add_package("kit_broken", skip=["needs_extra"]) == 1


def test_package_configs_finds_the_yaml_files_and_refuses_a_package_without_them(on_path: Path) -> None:
    make_package(on_path, "kit_cfg")
    assert package_configs("kit_cfg") == {"kit_cfg_cfg": on_path / "kit_cfg" / "configs" / "kit_cfg_cfg.yaml"}
    (on_path / "kit_empty").mkdir()
    (on_path / "kit_empty" / "__init__.py").write_text("")
    with pytest.raises(PluginError, match="has no configs"):
        package_configs("kit_empty")


def test_a_kit_plugin_loads_conforms_and_runs_through_the_cli(on_path: Path) -> None:
    import importlib

    make_package(on_path, "kit_ok")
    with use_host((importlib.import_module("kit_ok.plugin"), "hat-kit-ok")) as host:
        report = check_plugin("kit_ok.plugin", "hat-kit-ok", host=host)
        assert report.deploy_models == {"kit_ok_cfg": {"out": (1, 4, 8, 8)}}
        assert report.registered == ["KitNet"]
        listed = run_cli("list", "--json")
    assert listed.code == 0, listed.err
    assert '"kit_ok"' in listed.out and "hat-kit-ok" in listed.out


def test_the_conformance_check_lists_every_problem(on_path: Path) -> None:
    import importlib

    # the model module is skipped, so KitNet is marked but never registered, and the
    # config cannot build its deploy model
    make_package(on_path, "kit_bad", skip=("model",))
    plugin = importlib.import_module("kit_bad.plugin")
    with use_host((plugin, "hat-kit-bad")) as host, pytest.raises(PluginDoesNotConform) as err:
        check_plugin("kit_bad.plugin", "hat-kit-bad", host=host)
    text = str(err.value)
    assert "type 'KitNet' is marked in kit_bad but not registered by hat-kit-bad" in text
    assert "config 'kit_bad_cfg'" in text and "unknown type 'KitNet'" in text
