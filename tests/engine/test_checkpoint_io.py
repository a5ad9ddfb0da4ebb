"""checkpoint_io: atomic saves (a crash mid-save keeps the old file), data-only loads, RNG state as data."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hat.engine.checkpoint_io import FORMAT, FORMAT_VERSION, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from hat.errors import UserError
from tests.engine.subprocess_toy import REPO

# -- atomicity --------------------------------------------------------------------------------

#: Runs in a child process: patch torch.save so that it writes the first half of the real
#: serialized payload B to the handle, then dies (os._exit) or announces itself and waits
#: to be SIGKILLed. ``save_checkpoint`` is then called on the path that holds checkpoint A.
CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    import torch
    from hat.engine import checkpoint_io

    path, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3]
    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        if mode == "exit":
            os._exit(9)
        # Written beside the marker, then renamed: the parent polls for the marker and
        # must never see it exist before its content does.
        with open(marker + ".part", "w") as m:
            m.write(str(len(data)))
        os.replace(marker + ".part", marker)
        time.sleep(120)  # the parent SIGKILLs us here, mid-write
        os._exit(3)

    torch.save = dying_save
    payload = {"tag": "B", "weights": torch.full((256, 1024), 2.0)}
    checkpoint_io.save_checkpoint(path, payload)
    sys.exit(4)  # not reached: the patched save never returns
    """
)


def _child(path: Path, mode: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(marker)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _save_a(path: Path) -> dict:
    payload = {"tag": "A", "weights": torch.arange(12.0).reshape(3, 4), "epoch": 3}
    save_checkpoint(path, payload)
    return payload


def _assert_still_a(path: Path, payload_a: dict) -> None:
    loaded = load_checkpoint(path)
    assert loaded["tag"] == "A" and loaded["epoch"] == 3
    assert torch.equal(loaded["weights"], payload_a["weights"])
    assert loaded["format"] == FORMAT and loaded["format_version"] == FORMAT_VERSION


def _leftover_temp_files(directory: Path, path: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p != path]


def test_process_dying_mid_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "float-checkpoint-last.pth.tar"
    payload_a = _save_a(path)
    size_a = path.stat().st_size

    child = _child(path, "exit", tmp_path / "unused")
    _, err = child.communicate(timeout=60)
    assert child.returncode == 9, err.decode()

    assert path.stat().st_size == size_a
    _assert_still_a(path, payload_a)
    # what the dying save had written went to a temp file, not to the checkpoint's name
    leftovers = _leftover_temp_files(tmp_path, path)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{path.name}.tmp-"), leftovers
    assert leftovers[0].stat().st_size > 0
    with pytest.raises(UserError, match="corrupt"):  # had it been written in place, A would be lost
        load_checkpoint(leftovers[0])

    # the next save (e.g. after a resume) still works and replaces A
    save_checkpoint(path, {"tag": "C"})
    assert load_checkpoint(path)["tag"] == "C"


def test_sigkill_mid_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "float-checkpoint-last.pth.tar"
    payload_a = _save_a(path)
    marker = tmp_path.parent / f"{tmp_path.name}-in-save"
    child = _child(path, "sleep", marker)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()[1].decode()
            assert time.monotonic() < deadline, "the child never entered torch.save"
            time.sleep(0.02)
        full_size = int(marker.read_text())
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    _assert_still_a(path, payload_a)
    leftovers = _leftover_temp_files(tmp_path, path)
    assert len(leftovers) == 1, leftovers
    # the kill really happened mid-write: half of B's bytes were on disk, under another name
    assert leftovers[0].stat().st_size == full_size // 2 > path.stat().st_size


def test_an_exception_in_save_removes_the_temp_file_and_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pth.tar"
    payload_a = _save_a(path)

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"tag": "B"})
    monkeypatch.undo()
    _assert_still_a(path, payload_a)
    assert _leftover_temp_files(tmp_path, path) == []


def test_save_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ckpt.pth.tar"
    save_checkpoint(path, {"tag": "x"})
    assert load_checkpoint(path)["tag"] == "x"


# -- loading is data only ---------------------------------------------------------------------

CODE_RAN: list[str] = []


def _side_effect() -> str:
    CODE_RAN.append("ran")
    return "ran"


class Executes:
    """Unpickling this calls ``_side_effect``: code, which a checkpoint must never run."""

    def __reduce__(self):
        return (_side_effect, ())


class PlainObject:
    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("obj", [Executes(), PlainObject()], ids=["reduce", "plain-class"])
def test_checkpoint_holding_an_object_is_refused_without_running_code(tmp_path: Path, obj) -> None:
    path = tmp_path / "evil.pth.tar"
    torch.save({"format": FORMAT, "format_version": 1, "model": {"w": torch.zeros(2)}, "extra": obj}, path)
    CODE_RAN.clear()
    with pytest.raises(UserError) as info:
        load_checkpoint(path, made_by="hat train toy --stage float")
    text = str(info.value)
    assert "never loads code" in text
    assert "not a plain-data checkpoint" in text and str(path) in text
    assert "hat train toy --stage float" in text
    assert CODE_RAN == [], "loading must not have executed the pickled callable"


def test_raw_state_dict_loads_as_model(tmp_path: Path) -> None:
    state = torch.nn.Linear(3, 2).state_dict()
    torch.save(state, tmp_path / "raw.pth")
    loaded = load_checkpoint(tmp_path / "raw.pth")
    assert set(loaded) == {"model"}
    assert set(loaded["model"]) == {"weight", "bias"}
    assert all(torch.equal(loaded["model"][k], state[k]) for k in state)


def test_state_dict_wrapper_loads_as_model(tmp_path: Path) -> None:
    state = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 7, "arch": "resnet"}, tmp_path / "wrapped.pth")
    loaded = load_checkpoint(tmp_path / "wrapped.pth")
    assert set(loaded) == {"model"}
    assert all(torch.equal(loaded["model"][k], state[k]) for k in state)


def test_hat_checkpoint_round_trip_keeps_everything(tmp_path: Path) -> None:
    payload = {
        "stage": "float",
        "model": {"w": torch.randn(4, 4)},
        "epoch": 2,
        "metrics": {"mse": 0.25},
        "config": {"a": [1, 2, {"b": None}], "c": "text"},
    }
    save_checkpoint(tmp_path / "c.pth.tar", payload)
    loaded = load_checkpoint(tmp_path / "c.pth.tar")
    assert loaded["stage"] == "float" and loaded["epoch"] == 2
    assert loaded["metrics"] == {"mse": 0.25} and loaded["config"] == payload["config"]
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pth.tar"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "model": {}}, path)
    with pytest.raises(UserError, match="newer HAT") as info:
        load_checkpoint(path)
    assert "upgrade hat-core" in str(info.value)


def test_missing_file_names_the_command_that_makes_it(tmp_path: Path) -> None:
    path = tmp_path / "float-checkpoint-best.pth.tar"
    with pytest.raises(UserError) as info:
        load_checkpoint(path, made_by=f"hat train toy --stage float --work-dir {tmp_path}")
    text = str(info.value)
    assert f"checkpoint not found: {path}" in text
    assert f"run `hat train toy --stage float --work-dir {tmp_path}` first" in text
    with pytest.raises(UserError, match="check the path"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "payload", [[1, 2, 3], {}, {"model": "not tensors", "epoch": 1}], ids=["list", "empty", "mixed"]
)
def test_foreign_payloads_are_refused(tmp_path: Path, payload) -> None:
    torch.save(payload, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="not a HAT checkpoint or a state dict"):
        load_checkpoint(tmp_path / "foreign.pth")


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pth.tar"
    save_checkpoint(path, {"model": {"w": torch.randn(64, 64)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or not a plain-data checkpoint"):
        load_checkpoint(path)


# -- RNG state ---------------------------------------------------------------------------------


def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
        np.random.rand(4).tolist(),
        float(np.random.standard_normal()),
        torch.rand(5),
        torch.randn(3),
    )


def _same(a: tuple, b: tuple) -> bool:
    return (
        a[0] == b[0]
        and a[1] == b[1]
        and a[2] == b[2]
        and a[3] == b[3]
        and torch.equal(a[4], b[4])
        and torch.equal(a[5], b[5])
    )


def test_rng_round_trip_restores_python_numpy_and_torch() -> None:
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    # leave a cached Gaussian in python's and numpy's generators: part of the state too
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    state = capture_rng()
    first = _draw()
    second = _draw()
    assert not _same(first, second), "the draws must move the generators"
    restore_rng(state)
    assert _same(_draw(), first)


def test_rng_state_survives_weights_only_load() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # odd count: numpy holds a cached Gaussian
    state = capture_rng()
    expected = _draw()

    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert not _same(_draw(), expected)
    restore_rng(loaded)
    assert _same(_draw(), expected)


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "c.pth.tar", {"rng": capture_rng()})
    expected = _draw()
    _draw()
    restore_rng(load_checkpoint(tmp_path / "c.pth.tar")["rng"])
    assert _same(_draw(), expected)
