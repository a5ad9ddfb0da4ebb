"""Registry: building objects from type dicts, and the errors a user sees."""

from __future__ import annotations

import pytest
import torch

from hat.errors import ConfigError, PluginError
from hat.registry import Registry, register_type


@register_type("Leaf")
class Leaf:
    def __init__(self, value: int = 0):
        self.value = value


@register_type()
class Node:
    def __init__(self, children: list, meta: dict | None = None, leaf: Leaf | None = None):
        self.children = children
        self.meta = meta
        self.leaf = leaf


@register_type("Holder", lazy_args=("later",))
class Holder:
    def __init__(self, later: dict, scale: float = 1.0):
        self.later = later
        self.scale = scale


@pytest.fixture()
def registry() -> Registry:
    reg = Registry()
    reg.add(Leaf)
    reg.add(Node)
    reg.add(Holder)
    reg.add(torch.optim.AdamW, "AdamW")
    reg.add(torch.optim.Adam, "Adam")
    return reg


def test_builds_recursively_through_dicts_and_lists(registry: Registry) -> None:
    obj = registry.build(
        {
            "type": "Node",
            "children": [{"type": "Leaf", "value": 1}, {"type": "Leaf", "value": 2}, 3],
            "meta": {"plain": {"leaf": {"type": "Leaf", "value": 4}}},
            "leaf": {"type": "Leaf"},
        }
    )
    assert isinstance(obj, Node)
    assert [c.value if isinstance(c, Leaf) else c for c in obj.children] == [1, 2, 3]
    assert obj.meta["plain"]["leaf"].value == 4
    assert obj.leaf.value == 0


def test_lazy_args_stay_config_and_extra_kwargs_reach_the_top(registry: Registry) -> None:
    holder = registry.build({"type": "Holder", "later": {"type": "Leaf", "value": 9}})
    assert holder.later == {"type": "Leaf", "value": 9}
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = registry.build({"type": "AdamW", "lr": 0.01, "weight_decay": 0.05}, params=params)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.05


def test_unknown_type_names_path_and_closest_names(registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        registry.build({"type": "Node", "children": [{"type": "Lef"}]}, path="model")
    text = err.value.render()
    assert "unknown type 'Lef' at model.children.0.type" in text
    assert "Leaf" in text


def test_unknown_and_missing_keys_are_named(registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        registry.build({"type": "Leaf", "valeu": 3}, path="x")
    assert "unknown key 'valeu'" in err.value.message and "x.valeu" in err.value.message
    assert "value" in err.value.hint
    with pytest.raises(ConfigError, match="missing required key.*children"):
        registry.build({"type": "Node"})


def test_locate_gives_file_and_line(registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        registry.build({"type": "Nope"}, path="a", locate=lambda p: "cfg.yaml:7" if p == "a.type" else None)
    assert err.value.where == "cfg.yaml:7"


def test_duplicate_names_name_both_owners() -> None:
    reg = Registry()
    reg.scoped("hat-one").add(Leaf, "Thing")
    reg.scoped("hat-one").add(Leaf, "Thing")  # the same object again is harmless
    with pytest.raises(PluginError) as err:
        reg.scoped("hat-two").add(Node, "Thing")
    assert "hat-one" in err.value.message and "hat-two" in err.value.message


def test_subclass_does_not_inherit_the_mark() -> None:
    class Sub(Leaf):
        pass

    import types

    module = types.ModuleType("fake")
    Sub.__module__ = "fake"
    module.Sub = Sub
    reg = Registry()
    assert reg.add_marked(module) == 0


def test_constructor_value_error_becomes_a_config_error_with_path() -> None:
    @register_type("Picky")
    class Picky:
        def __init__(self, size: int = 1):
            if size < 1:
                raise ValueError("size must be >= 1")

    reg = Registry()
    reg.add(Picky)
    with pytest.raises(ConfigError, match=r"cannot build 'Picky' at a.b: size must be >= 1"):
        reg.build({"x": {"type": "Picky", "size": 0}}["x"], path="a.b")
