"""The CLI as users run it: the installed `hat` executable, and in-process with a toy plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hat.cli import main
from hat.data.pack import PackReader

HAT = Path(sys.executable).parent / "hat"


def run_hat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HAT_PLUGINS": "", "COLUMNS": "200", **(env or {})}
    return subprocess.run([str(HAT), *args], capture_output=True, text=True, env=full_env, timeout=120)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the real executable ----------------------------------------------------------------------


def test_executable_help_and_version() -> None:
    assert HAT.exists(), f"hat is not installed next to {sys.executable}"
    result = run_hat("--help")
    assert result.returncode == 0
    for command in ("list", "config", "synth", "pack"):
        assert command in result.stdout
    version = run_hat("--version")
    assert version.returncode == 0 and version.stdout.startswith("hat-core ")


def test_executable_list_with_no_plugins() -> None:
    result = run_hat("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [p["distribution"] for p in listing["plugins"]] == ["hat-core"]
    assert listing["tasks"] == [] and listing["types"] > 20
    table = run_hat("list")
    assert table.returncode == 0 and "Plugins" in table.stdout and "hat-core" in table.stdout


def test_executable_bad_input_is_one_message_and_exit_2(tmp_path: Path) -> None:
    result = run_hat("config", "show", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing.yaml" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    unknown = run_hat("pack", "nosuchdata", "--src", str(tmp_path), "--dst", str(tmp_path), "--split", "train")
    assert unknown.returncode == 2 and "unknown dataset 'nosuchdata'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    debug = run_hat("config", "show", str(tmp_path / "missing.yaml"), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_executable_usage_error_is_exit_2() -> None:
    result = run_hat("pack", "toyset")  # required options missing
    assert result.returncode == 2


# -- in process, with the toy plugin ------------------------------------------------------------


def test_list_shows_the_toy_plugin(toy_host, capsys) -> None:
    code, out, _ = run_main(capsys, "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert {
        "name": "toy",
        "dataset": "toyset",
        "default_config": "toy-tiny",
        "summary": "a test task",
        "infer_options": None,  # its config has no infer section
        "plugin": "hat-toy-tests",
    } in listing["tasks"]
    toyset = next(d for d in listing["datasets"] if d["name"] == "toyset")
    assert toyset["pack"] and toyset["synth"] and toyset["pack_options"] == "--scale 1"


def test_config_show_resolves_task_name_and_overrides(toy_host, capsys) -> None:
    code, out, _ = run_main(capsys, "config", "show", "toy", "--set", "data_root=/data", "--set", "model.size=8")
    assert code == 0
    import yaml

    shown = yaml.safe_load(out)
    assert shown["float_trainer"] == {"num_epochs": 1, "data_path": "/data/train_lmdb"}
    assert shown["model"] == {"type": "ToyThing", "size": 8}
    code, _, err = run_main(capsys, "config", "show", "toy", "--set", "modle.size=8")
    assert code == 2 and "modle" in err and "model" in err


def test_config_show_unknown_name_suggests(toy_host, capsys) -> None:
    code, _, err = run_main(capsys, "config", "show", "toy-tiyn")
    assert code == 2 and "toy-tiny" in err


def test_synth_then_pack_round_trip(toy_host, capsys, tmp_path: Path) -> None:
    raw, data = tmp_path / "raw", tmp_path / "data"
    code, _, err = run_main(capsys, "synth", "toyset", "--dst", str(raw), "--num-files", "2", "--seed", "3")
    assert code == 0, err
    assert sorted(p.name for p in (raw / "train").iterdir()) == ["000.txt", "001.txt"]
    code, out, err = run_main(
        capsys, "pack", "toyset", "--src", str(raw), "--dst", str(data), "--split", "train", "--scale", "2", "--quiet"
    )
    assert code == 0, err
    reader = PackReader(data / "train_lmdb")
    assert len(reader) == 8 and reader.meta["dataset"] == "toyset" and reader.meta["split"] == "train"
    first_line = (raw / "train" / "000.txt").read_text().splitlines()[0]
    assert reader[0]["values"].tolist() == [2 * int(v) for v in first_line.split(",")]
    code, _, err = run_main(capsys, "pack", "toyset", "--src", str(raw), "--dst", str(data), "--split", "train")
    assert code == 2 and "--overwrite" in err
    code, _, _ = run_main(
        capsys, "pack", "toyset", "--src", str(raw), "--dst", str(data), "--split", "train", "--overwrite", "--quiet"
    )
    assert code == 0


def test_pack_bad_record_names_file_and_line(toy_host, capsys, tmp_path: Path) -> None:
    raw, data = tmp_path / "raw", tmp_path / "data"
    (raw / "train").mkdir(parents=True)
    (raw / "train" / "a.txt").write_text("1,2\n3,4\n")
    (raw / "train" / "b.txt").write_text("5,6\nseven,8\n")
    args = ["pack", "toyset", "--src", str(raw), "--dst", str(data), "--split", "train", "--quiet"]
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert "b.txt:2" in err.replace("\n", "") and "--skip-bad" in err
    assert not (data / "train_lmdb").exists()
    code, out, err = run_main(capsys, *args, "--skip-bad")
    assert code == 0 and "skipped 1 bad record" in err
    assert len(PackReader(data / "train_lmdb")) == 2


def test_dataset_option_errors(toy_host, capsys, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "synth", "toyset", "--dst", str(tmp_path), "--num-filez", "2")
    assert code == 2 and "--num-files" in err
    code, _, err = run_main(capsys, "synth", "toyset", "--dst", str(tmp_path), "--num-files", "many")
    assert code == 2 and "expects int" in err
