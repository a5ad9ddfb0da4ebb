"""Ctrl-C says what was interrupted and what next; a demo re-run reuses or replaces its own data."""

from __future__ import annotations

from pathlib import Path

import pytest

from hat.errors import UserError
from hat.testing import run_cli
from hat.usecases.demo import _synthesize


def test_ctrl_c_in_a_command_says_what_was_interrupted_and_how_to_resume(toy_host, monkeypatch, tmp_path) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hat.usecases.stages.train", interrupted)
    result = run_cli("train", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    assert result.code == 130
    assert f"interrupted: hat train toy --stage float --work-dir {tmp_path}" in result.err
    assert "--resume" in result.err and "Traceback" not in result.err
    # nothing was saved here: the message must not promise a checkpoint to resume from
    assert "without it if none was saved yet" in " ".join(result.err.split())


class Generator:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, dst: Path, *, seed: int, size: int = 1) -> None:
        self.calls += 1
        dst.mkdir(parents=True)
        (dst / "frame.txt").write_text(f"seed {seed} size {size}")


def test_a_demo_rerun_reuses_its_own_data_and_replaces_it_when_the_options_change(tmp_path: Path) -> None:
    raw, generate = tmp_path / "raw", Generator()
    _synthesize(generate, raw, "toyset", 0, {"size": 2})
    _synthesize(generate, raw, "toyset", 0, {"size": 2})
    assert generate.calls == 1  # the same data again: reused
    _synthesize(generate, raw, "toyset", 1, {"size": 2})
    assert generate.calls == 2 and (raw / "frame.txt").read_text() == "seed 1 size 2"


def test_a_demo_never_overwrites_a_raw_folder_it_did_not_write(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "mine.jpg").write_text("a user's file")
    with pytest.raises(UserError, match="was not written by `hat demo`"):
        _synthesize(Generator(), raw, "toyset", 0, {})
    assert (raw / "mine.jpg").read_text() == "a user's file"
