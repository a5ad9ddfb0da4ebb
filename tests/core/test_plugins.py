"""Plugin loading: in-process plugins, real entry points, HAT_PLUGINS, duplicate names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hat.errors import PluginError
from hat.hookspecs import TaskSpec, hookimpl
from hat.plugins import CORE_DIST, PluginHost, get_host, set_host
from tests.core.plugin_for_tests import DIST, ToyPlugin


def test_core_registers_through_the_same_hooks() -> None:
    host = PluginHost(entry_points=False)
    assert [p.distribution for p in host.plugins] == [CORE_DIST]
    for name in ("AdamW", "SGD", "CosineAnnealingLR", "DataLoader", "Resize", "ToTensor", "PackedDataset"):
        assert name in host.registry, name
    assert host.registry.entries()[0].owner == CORE_DIST


def test_in_process_plugin_contributes_everything(toy_host: PluginHost) -> None:
    assert toy_host.task("toy").default_config == "toy-tiny"
    assert toy_host.tasks.owners["toy"] == DIST
    assert {n for n, owner in toy_host.configs.owners.items() if owner == DIST} == {"toy_base", "toy-tiny"}
    assert toy_host.configs.owners["hat_stages"] == CORE_DIST  # the shared stage config
    assert toy_host.packer("toyset").dataset == "toyset"
    assert callable(toy_host.synth_generator("toyset"))
    assert "ToyThing" in toy_host.registry
    assert get_host() is toy_host


def test_unknown_names_suggest_close_ones(toy_host: PluginHost) -> None:
    with pytest.raises(PluginError) as err:
        toy_host.task("tyo")
    assert "toy" in err.value.hint
    with pytest.raises(PluginError, match="unknown dataset 'nothing'"):
        toy_host.packer("nothing")


class OtherPlugin:
    __name__ = "other"

    @hookimpl
    def hat_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="toy", summary="clash", default_config="x", dataset="y")]


class TypeClash:
    __name__ = "typeclash"

    @hookimpl
    def hat_register(self, registry) -> None:
        from tests.core.plugin_for_tests import ToyThing

        class Impostor:
            pass

        registry.add(Impostor, "ToyThing")
        assert ToyThing  # the real one is registered by the other plugin


@pytest.mark.parametrize(("second", "kind"), [(OtherPlugin(), "task 'toy'"), (TypeClash(), "type name 'ToyThing'")])
def test_duplicate_names_fail_naming_both_distributions(second: object, kind: str) -> None:
    with pytest.raises(PluginError) as err:
        PluginHost(entry_points=False, extra=[(ToyPlugin(), DIST), (second, "hat-other")])
    assert kind in err.value.message
    assert DIST in err.value.message and "hat-other" in err.value.message


def _fake_distribution(site: Path, dist: str, ep_name: str, module: str, body: str) -> None:
    """A real installed distribution as importlib.metadata sees it: dist-info + module."""
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[hat]\n{ep_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


PLUGIN_BODY = """
from hat.hookspecs import TaskSpec, hookimpl

@hookimpl
def hat_tasks():
    return [TaskSpec(name="{task}", summary="from an entry point", default_config="c", dataset="d")]
"""


@pytest.fixture()
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _fake_distribution(tmp_path, "hat-alpha", "alpha", "hat_alpha_fake", PLUGIN_BODY.format(task="alpha_task"))
    _fake_distribution(tmp_path, "hat-beta", "beta", "hat_beta_fake", PLUGIN_BODY.format(task="beta_task"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _task_names(host: PluginHost) -> set[str]:
    return {n for n in host.tasks.items if n.endswith("_task")}


def test_entry_points_load_with_distribution_and_version(installed: Path) -> None:
    host = PluginHost(restrict="alpha,hat-beta")
    assert _task_names(host) == {"alpha_task", "beta_task"}
    info = {p.name: p for p in host.plugins}
    assert info["alpha"].distribution == "hat-alpha" and info["alpha"].version == "1.2.3"
    assert host.tasks.owners["beta_task"] == "hat-beta"


def test_hat_plugins_restricts_and_empty_means_none(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAT_PLUGINS", "alpha")
    assert _task_names(PluginHost()) == {"alpha_task"}
    monkeypatch.setenv("HAT_PLUGINS", "")
    host = PluginHost()
    assert _task_names(host) == set()
    assert [p.distribution for p in host.plugins] == [CORE_DIST]


def test_hat_plugins_naming_a_missing_plugin_is_an_error(installed: Path) -> None:
    with pytest.raises(PluginError) as err:
        PluginHost(restrict="alpha,gamma")
    assert "gamma" in err.value.message and "alpha" in err.value.hint


def test_broken_plugin_names_its_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "hat-broken", "broken", "hat_broken_fake", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        PluginHost(restrict="broken")
    assert "hat-broken" in err.value.message and "boom" in err.value.message


def test_duplicate_task_across_installed_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "hat-one", "one", "hat_one_fake", PLUGIN_BODY.format(task="same_task"))
    _fake_distribution(tmp_path, "hat-two", "two", "hat_two_fake", PLUGIN_BODY.format(task="same_task"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        PluginHost(restrict="one,two")
    assert "hat-one" in err.value.message and "hat-two" in err.value.message


def test_host_is_created_lazily_once() -> None:
    previous = set_host(None)
    try:
        import os

        os.environ["HAT_PLUGINS"] = ""
        first = get_host()
        assert get_host() is first
    finally:
        os.environ.pop("HAT_PLUGINS", None)
        set_host(previous)


class MisspeltHook:
    __name__ = "misspelt"

    @hookimpl
    def hat_config(self) -> dict[str, Path]:  # the hook is hat_configs
        return {"never": Path("never.yaml")}


def test_a_misspelt_hook_is_an_error_naming_the_distribution_and_the_hook() -> None:
    with pytest.raises(PluginError) as err:
        PluginHost(entry_points=False, extra=[(MisspeltHook(), "hat-misspelt")])
    message = err.value.render()
    assert "hat-misspelt" in message and "'hat_config'" in message and "not a HAT hook" in message
    assert "did you mean hat_configs" in message
