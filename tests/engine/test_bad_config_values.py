"""Bad config values through `hat train`: exit 2 naming the key path and where it was set.

One table of bad values, as a user types them (``--set``) or writes them (a YAML file on
top of the task's config); a new plugin adds rows for its own keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hat.testing import run_cli

BAD_VALUES = [
    # (--set, what the message says, where it points)
    ("train_loader.batch_size=0", "data_loader.batch_size: batch_size should be a positive integer", "--set"),
    ("train_loader.batch_size=-4", "batch_size should be a positive integer", "--set"),
    ("train_loader.num_workers=-1", "num_workers option should be non-negative", "--set"),
    ("seed=abc", "seed must be a non-negative integer, got 'abc'", "--set seed=abc"),
    ("float_trainer.num_epochs=abc", "float_trainer.num_epochs must be int | None, got 'abc'", "--set"),
    ("float_trainer.optimizer.lr=fast", "float_trainer.optimizer.lr must be float", "--set"),
]


@pytest.mark.parametrize(("setting", "what", "where"), BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_a_bad_value_is_one_message_naming_the_key_and_the_set(
    toy_engine_host, tmp_path: Path, setting: str, what: str, where: str
) -> None:
    result = run_cli("train", "toy", "--stage", "float", "--work-dir", str(tmp_path / "w"), "--set", setting)
    assert result.code == 2, result.err
    assert what in result.err
    assert f"where: {where}" in result.err
    assert "Traceback" not in result.err and "the work failed" not in result.err
    assert not list((tmp_path / "w").glob("*.pth.tar"))  # refused before any work was saved


def test_a_bad_value_in_a_yaml_file_points_at_its_line_not_at_the_base(toy_engine_host, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: toy_engine\nfloat_trainer:\n  optimizer:\n    lr: fast\n")
    result = run_cli("train", "toy", "--stage", "float", "--config", str(mine), "--work-dir", str(tmp_path / "w"))
    assert result.code == 2
    assert "float_trainer.optimizer.lr must be float" in result.err
    assert f"where: {mine}:4" in result.err


def test_a_value_set_through_a_reference_points_at_where_it_was_set(tmp_path: Path) -> None:
    """``num_epochs: ${epochs}``: an error about num_epochs names the line of ``epochs``."""
    from hat.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\ntrainer:\n  num_epochs: ${epochs}\n")
    assert load_config(path).locate("trainer.num_epochs") == f"{path}:1"
    assert load_config(path, overrides=["epochs=abc"]).locate("trainer.num_epochs") == "--set epochs=abc"
