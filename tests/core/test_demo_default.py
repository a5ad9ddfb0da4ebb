"""`hat demo` with no task runs the quickest installed demo, not a task named in core."""

from __future__ import annotations

from hat.cli import _quickest_demo
from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl
from hat.testing import run_cli, use_host


class Tasks:
    def __init__(self, name: str, specs: list[TaskSpec]) -> None:
        self.__name__ = name
        self.specs = specs

    @hookimpl
    def hat_tasks(self) -> list[TaskSpec]:
        return self.specs


def spec(name: str, seconds: float | None) -> TaskSpec:
    recipe = DemoRecipe(config=f"{name}-tiny", dataset="d", metrics=("m",), expected_seconds=seconds)
    return TaskSpec(name=name, summary="", default_config=name, dataset="d", demo=recipe)


def test_the_quickest_demo_is_the_default_whatever_the_names() -> None:
    plugins = Tasks("slow", [spec("aaa_slow", 900), spec("unknown_time", None)]), Tasks("fast", [spec("zzz", 60)])
    with use_host((plugins[0], "hat-slow"), (plugins[1], "hat-fast")) as host:
        assert _quickest_demo(host) == "zzz"
    with use_host((Tasks("only", [spec("unknown_time", None)]), "hat-only")) as host:
        assert _quickest_demo(host) == "unknown_time"


def test_no_demo_installed_is_one_clear_message() -> None:
    no_demo = TaskSpec(name="plain", summary="", default_config="plain", dataset="d")
    with use_host((Tasks("plain", [no_demo]), "hat-plain")):
        result = run_cli("demo")
    assert result.code == 2 and "no installed task has a demo" in result.err and "pip install" in result.err
