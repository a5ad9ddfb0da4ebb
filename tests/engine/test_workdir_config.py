"""A work dir remembers the config that made it; later commands use it, or refuse another model."""

from __future__ import annotations

from pathlib import Path

import yaml

from hat.testing import run_cli
from hat.workdir_config import FILE_NAME, META_KEY

TRAIN = ["--set", "float_trainer.num_epochs=1", "--set", "model.hidden=8"]


def test_a_later_command_without_config_uses_the_work_dirs(toy_engine_host, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path)]
    trained = run_cli("train", "toy", "--stage", "float", *work, *TRAIN)
    assert trained.code == 0, trained.err
    stored = yaml.safe_load((tmp_path / FILE_NAME).read_text())
    assert stored[META_KEY] == {"task": "toy", "config": "toy_engine", "command": "hat train toy --stage float"}
    assert stored["model"]["hidden"] == 8 and "work_dir" not in stored
    # stored before interpolation: a later --set still reaches every place the value is used
    assert stored["float_trainer"]["model"] == "${model}"

    # model.hidden=8 is not repeated: the checkpoint (hidden 8) only loads if the stored config is used
    predicted = run_cli("predict", "toy", "--stage", "float", *work, quiet=False)
    assert predicted.code == 0, predicted.err
    assert "using the config this work dir was made with: toy_engine" in predicted.err
    assert (tmp_path / "predict" / "float.json").is_file()


def test_a_config_with_another_model_is_refused_before_any_work(toy_engine_host, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path)]
    assert run_cli("train", "toy", "--stage", "float", *work, *TRAIN).code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    refused = run_cli("predict", "toy", "--stage", "float", "--config", "toy_engine", *work)
    assert refused.code == 2
    assert "builds a different model from the one work dir" in refused.err
    assert "model.hidden is 16 here, 8 in the work dir" in refused.err
    assert "leave out --config" in refused.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # the same model with other settings is fine
    same = run_cli("predict", "toy", "--stage", "float", "--config", "toy_engine", "--set", "model.hidden=8", *work)
    assert same.code == 0, same.err


def test_a_work_dir_of_another_task_is_refused(toy_engine_host, tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text(yaml.safe_dump({META_KEY: {"task": "keypoint", "config": "k"}, "seed": 0}))
    refused = run_cli("predict", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    assert refused.code == 2 and "was made by task 'keypoint', not 'toy'" in refused.err


def test_an_unreadable_stored_config_says_what_to_do(toy_engine_host, tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("model: [unclosed\n")
    refused = run_cli("predict", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    assert refused.code == 2 and "the work dir's config cannot be read" in refused.err and "--config" in refused.err
