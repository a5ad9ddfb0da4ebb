"""Config loading: inheritance, interpolation, overrides, and where errors point."""

from __future__ import annotations

from pathlib import Path

import pytest

from hat.config import deep_merge, load_config, parse_override
from hat.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_deep_merges_maps_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "a: {x: 1, y: 2}\nitems: [1, 2, 3]\nname: base\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\na: {y: 20, z: 30}\nitems: [9]\n")
    cfg = load_config(child)
    assert cfg.data == {"a": {"x": 1, "y": 20, "z": 30}, "items": [9], "name": "base"}
    assert "_base_" not in cfg.data


def test_base_by_config_name_and_list_of_bases(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere / "one.yaml", "a: 1\nb: 1\n")
    write(tmp_path / "two.yaml", "b: 2\nc: 2\n")
    child = write(tmp_path / "child.yaml", "_base_: [one, two.yaml]\nc: 3\n")
    cfg = load_config(child, named={"one": elsewhere / "one.yaml"})
    assert cfg.data == {"a": 1, "b": 2, "c": 3}
    assert cfg.locate("a").endswith("one.yaml:1")
    assert cfg.locate("c").endswith("child.yaml:2")


def test_interpolation_keeps_types_and_substitutes_text(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        "data_root: /data\nsize: [128, 128]\nepochs: 3\n"
        "loader: {path: '${data_root}/train_lmdb', size: '${size}'}\n"
        "trainer: {num_epochs: '${epochs}'}\n",
    )
    cfg = load_config(path)
    assert cfg["loader"] == {"path": "/data/train_lmdb", "size": [128, 128]}
    assert cfg["trainer"]["num_epochs"] == 3


def test_override_applies_before_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data_root: /data\nloader: {path: '${data_root}/x', n: 1}\nlst: [1, 2]\n")
    cfg = load_config(path, overrides=["data_root=/other", "loader.n=5", "lst.1=7", "loader.flag=true"])
    assert cfg["loader"] == {"path": "/other/x", "n": 5, "flag": True}
    assert cfg["lst"] == [1, 7]
    assert cfg.locate("loader.n") == "--set loader.n=5"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nokey", "expected KEY.PATH=VALUE"),
        ("loadr.n=1", "no key loadr"),
        ("lst.5=1", "not an index"),
        ("loader.n.deeper=1", "is a int, not a map"),
    ],
)
def test_bad_overrides(tmp_path: Path, item: str, message: str) -> None:
    path = write(tmp_path / "c.yaml", "loader: {n: 1}\nlst: [1, 2]\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides=[item])


def test_override_values_are_yaml_scalars() -> None:
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=text") == (["a"], "text")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.where.startswith(str(path) + ":")
    assert err.value.where.rsplit(":", 1)[1] in {"3", "4"}


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.yaml", "a: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_unknown_reference_and_cycles(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data_root: /d\nx: '${data_rot}/y'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data_rot" in err.value.message and "x" in err.value.message
    assert "data_root" in err.value.hint
    assert err.value.where.endswith("c.yaml:2")
    loop = write(tmp_path / "loop.yaml", "a: '${b}'\nb: '${a}'\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(loop)
    write(tmp_path / "p.yaml", "_base_: q.yaml\n")
    write(tmp_path / "q.yaml", "_base_: p.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(tmp_path / "p.yaml")


def test_missing_base_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "a: 1\n_base_: nowhere\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, named={"somewhere": tmp_path / "x.yaml"})
    assert err.value.where.endswith("c.yaml:2")


def test_top_level_must_be_a_map(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(write(tmp_path / "l.yaml", "- 1\n- 2\n"))


def test_deep_merge_does_not_alias_inputs() -> None:
    base = {"a": {"b": [1]}}
    merged = deep_merge(base, {"a": {"c": 1}})
    merged["a"]["b"].append(2)
    assert base == {"a": {"b": [1]}}


def test_override_through_a_reference_changes_only_that_use(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        "model: {type: M, depth: 2}\nalias: '${model}'\na: {model: '${model}'}\nb: {model: '${alias}'}\n",
    )
    cfg = load_config(path, overrides=["a.model.depth=5", "b.model.depth=7"])
    assert cfg["a"]["model"] == {"type": "M", "depth": 5}
    assert cfg["b"]["model"] == {"type": "M", "depth": 7}
    assert cfg["model"] == {"type": "M", "depth": 2} and cfg["alias"] == {"type": "M", "depth": 2}


def test_scientific_notation_is_a_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", "lr: 1e-3\nwd: 5e-2\nn: 10\nname: 1e\n"))
    assert cfg.data == {"lr": 1e-3, "wd": 5e-2, "n": 10, "name": "1e"}


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "seed: 0\nmodel:\n  width: 4\n  depth: 2\n  width: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "duplicate key 'width' (first at line 3)" in str(err.value)
    assert err.value.where == f"{path}:5"


def test_an_alias_bomb_is_refused_quickly_with_a_clear_error(tmp_path: Path) -> None:
    """Seven levels of ten aliases: 10**7 values from under 1 KB (it took 48 s and 4 GB
    before; now the node graph is counted, not expanded)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    assert path.stat().st_size < 1024
    with pytest.raises(ConfigError, match="expands to more than 100000 values") as err:
        load_config(path)
    assert err.value.where.startswith(f"{path}:")


def test_a_config_file_over_the_size_bound_is_refused_before_parsing(tmp_path: Path) -> None:
    """A megabyte of YAML is no config (issue 12, item 18: bound the config's size too)."""
    from hat.config import MAX_CONFIG_CHARS

    path = write(tmp_path / "huge.yaml", "seed: 0\n" + "# padding\n" * (MAX_CONFIG_CHARS // 10))
    with pytest.raises(ConfigError, match=f"more than a config can be \\({MAX_CONFIG_CHARS}\\)") as err:
        load_config(path)
    assert err.value.where == str(path) and "the config you meant" in err.value.hint
