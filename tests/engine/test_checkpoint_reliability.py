"""Checkpoint reliability (issue 12), through the CLI on the toy task: what a user hits.

Each case checks the exit code, the message's what / where / next, that no traceback is
shown, and what is left on disk.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from hat.engine import checkpoint_io
from hat.engine.checkpoint_io import load_checkpoint
from hat.testing import run_cli
from tests.engine.toy_task import ToyRegressor


def _train(work: Path, *settings: str, quiet: bool = True, resume: bool = False):
    extra = [arg for setting in settings for arg in ("--set", setting)]
    args = ["train", "toy", "--stage", "float", "--work-dir", str(work), *extra]
    return run_cli(*args, *(["--resume"] if resume else []), quiet=quiet)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _temp_files(work: Path) -> list[str]:
    return sorted(p.name for p in work.glob(".*.tmp-*"))


# -- 4: -best holds exactly the weights that scored -------------------------------------------

STEP_VALIDATION = (
    "float_trainer.callbacks.2={type: Validation, data_loader: '${val_loader}', val_interval: 3, interval_by: step}"
)
STEP_CHECKPOINT = (
    "float_trainer.callbacks.3={{type: Checkpoint, monitor_metric_key: mse, mode: {mode}, save_interval: 5, "
    "interval_by: step}}"
)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_step_interval_best_checkpoint_holds_the_weights_that_scored(
    toy_engine_host, capsys, tmp_path: Path, mode: str
) -> None:
    # Validation every 3 steps, saves every 5. The early validations swing (lr warmup), so
    # with mode max the best is one no save step matches (the bug wrote it at the next
    # save, with that step's weights); with min, the final validation at the loop end.
    code, _, err = _train(tmp_path, STEP_VALIDATION, STEP_CHECKPOINT.format(mode=mode))
    assert code == 0, err
    log = [json.loads(line) for line in (tmp_path / "logs" / "float.jsonl").read_text().splitlines()]
    validations = [r for r in log if r["event"] == "validation"]
    assert [r["step"] for r in validations] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 32]
    chosen = (max if mode == "max" else min)(validations, key=lambda r: r["mse"])
    if mode == "max":
        assert chosen["step"] % 5 != 0, "the case needs a best validation between two saves"
    else:
        assert chosen["step"] == 32

    best = load_checkpoint(tmp_path / "float-checkpoint-best.pth.tar")
    assert best["global_step"] == chosen["step"], "-best must be saved at the validation that chose it"
    assert best["metrics"]["mse"] == chosen["mse"]
    assert best["callbacks"]["Checkpoint"]["best"] == chosen["mse"]

    # re-evaluate the stored weights with the predictor: exactly the stored metric
    code, _, err = run_cli("predict", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    assert code == 0, err
    predicted = json.loads((tmp_path / "predict" / "float.json").read_text())
    assert predicted["metrics"]["mse"] == best["metrics"]["mse"]

    last = load_checkpoint(tmp_path / "float-checkpoint-last.pth.tar")
    assert last["global_step"] == 32 and last["metrics"]["mse"] == validations[-1]["mse"]
    assert _temp_files(tmp_path) == []


# -- 9: LoadCheckpoint says how many tensors loaded, and refuses none -------------------------


def _pipeline(checkpoint: Path) -> str:
    return (
        "float_trainer.model_convert_pipeline={type: ModelConvertPipeline, converters: "
        f"[{{type: LoadCheckpoint, checkpoint_path: '{checkpoint}', allow_miss: true, ignore_extra: true}}]}}"
    )


def test_load_checkpoint_matching_no_tensor_is_refused(toy_engine_host, capsys, tmp_path: Path) -> None:
    foreign = tmp_path / "pretrained.pth"
    torch.save({"backbone.conv.weight": torch.zeros(8, 3, 3, 3), "backbone.conv.bias": torch.zeros(8)}, foreign)
    work = tmp_path / "w"
    code, out, err = _train(work, _pipeline(foreign))
    flat = _flat(err)
    total = len(ToyRegressor().state_dict())
    assert code == 2, err
    assert f"0 of {total} model tensors are in the checkpoint" in flat
    assert str(foreign) in flat and "where:" in err
    assert "body.0.weight" in flat and "backbone.conv.weight" in flat  # model keys vs checkpoint keys
    assert "next:" in err and "Traceback" not in err + out
    assert not list(work.glob("*.pth.tar")), "nothing may be trained from scratch"


def test_load_checkpoint_says_how_many_tensors_loaded(toy_engine_host, capsys, tmp_path: Path) -> None:
    source = ToyRegressor().state_dict()
    partial = tmp_path / "partial.pth"
    torch.save(
        {"body.0.weight": source["body.0.weight"], "body.0.bias": source["body.0.bias"], "x": torch.ones(1)}, partial
    )
    code, out, err = _train(tmp_path / "w", _pipeline(partial), "float_trainer.num_epochs=1", quiet=False)
    assert code == 0, err
    assert f"loaded 2 of {len(source)} tensors from {partial}" in _flat(err)


# -- 10: --resume from another model's checkpoint ---------------------------------------------


def test_resume_from_another_models_checkpoint_is_a_clear_error(toy_engine_host, capsys, tmp_path: Path) -> None:
    code, _, err = _train(tmp_path, "model.hidden=8", "float_trainer.num_epochs=1")
    assert code == 0, err
    last = tmp_path / "float-checkpoint-last.pth.tar"
    before = last.read_bytes()
    code, out, err = _train(tmp_path, "model.hidden=16", "float_trainer.num_epochs=1", resume=True)
    flat = _flat(err)
    assert code == 2, err
    assert "cannot resume" in flat and "does not fit the model" in flat and "shape mismatch" in flat
    assert "body.0.weight: checkpoint (8, 4) vs model (16, 4)" in flat
    assert f"where: {last}" in flat and "next:" in err and "without --resume" in flat
    assert "Traceback" not in err + out and "size mismatch" not in err
    assert len(err.strip().splitlines()) < 15
    assert last.read_bytes() == before, "the checkpoint must be left as it was"


# -- 15: an unreadable checkpoint is not "corrupt" --------------------------------------------


def test_unreadable_checkpoint_says_permissions_not_corrupt(
    toy_engine_host, capsys, tmp_path: Path, monkeypatch
) -> None:
    code, _, err = _train(tmp_path, "float_trainer.num_epochs=1")
    assert code == 0, err
    best = tmp_path / "float-checkpoint-best.pth.tar"
    real_load = torch.load

    def denied(f, *args, **kwargs):  # tests run as root, which chmod cannot lock out
        if Path(f) == best:
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", denied)
    code, out, err = run_cli("predict", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    flat = _flat(err)
    assert code == 2, err
    assert f"cannot read checkpoint {best}: permission denied" in flat
    assert f"chmod u+r {best}" in flat and "where:" in err
    assert "corrupt" not in flat and "re-create" not in flat and "Traceback" not in err + out
    monkeypatch.undo()
    assert load_checkpoint(best)["global_step"] == 8, "the file itself is untouched"


# -- 17: the next run removes temp files of killed saves --------------------------------------


def test_next_run_removes_stale_temp_files_of_killed_saves(toy_engine_host, capsys, tmp_path: Path) -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        last = "float-checkpoint-last.pth.tar"
        dead_tmp = tmp_path / f".{last}.tmp-{done.pid}"  # a save killed mid-write
        own_tmp = tmp_path / f".float-checkpoint-best.pth.tar.tmp-{os.getpid()}"  # an earlier run in this process
        live_tmp = tmp_path / f".{last}.tmp-{live.pid}"  # another process saving right now
        other = tmp_path / ".notes.tmp-draft"
        for path in (dead_tmp, own_tmp, live_tmp, other):
            path.write_bytes(b"\0" * 4096)
        code, out, err = _train(tmp_path, "float_trainer.num_epochs=1", quiet=False)
        assert code == 0, err
        assert not dead_tmp.exists() and not own_tmp.exists()
        assert live_tmp.exists(), "another live process's temp file must never be removed"
        assert other.exists(), "only checkpoint temp files are removed"
        shown = _flat(out + err)
        assert f"removed {dead_tmp.name}" in shown and f"removed {own_tmp.name}" in shown
        assert live_tmp.name not in shown
        assert load_checkpoint(tmp_path / last)["global_step"] == 8
    finally:
        live.kill()
        live.wait()


# -- the rename is made durable: the directory is fsynced after it -----------------------------


def test_checkpoint_rename_is_followed_by_a_directory_fsync(
    toy_engine_host, capsys, tmp_path: Path, monkeypatch
) -> None:
    events: list[tuple[str, object]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("replace", Path(dst)))

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(info.st_mode) else "fsync-file", (info.st_dev, info.st_ino)))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = _train(tmp_path, "float_trainer.num_epochs=1")
    monkeypatch.undo()
    assert code == 0, err
    work = os.stat(tmp_path)
    renames = [i for i, (kind, dst) in enumerate(events) if kind == "replace" and str(dst).endswith(".pth.tar")]
    assert len(renames) >= 2  # -best and -last
    for i in renames:
        assert events[i + 1] == ("fsync-dir", (work.st_dev, work.st_ino)), events[i : i + 2]


# -- 14: a full disk during a save ------------------------------------------------------------

DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        ),
    ],
    ids=["enospc", "torch-enforce-fail"],
)
def test_disk_full_during_a_save_names_the_file_and_keeps_the_previous(
    toy_engine_host, capsys, tmp_path: Path, monkeypatch, failure: Exception
) -> None:
    real_save = torch.save
    saved_last = []

    def save(obj, handle, *args, **kwargs):
        if ".float-checkpoint-last.pth.tar.tmp-" in str(getattr(handle, "name", "")):
            if saved_last:  # the second -last (end of epoch 2) finds the disk full
                handle.write(b"PK\x03\x04 partial")
                raise failure
            saved_last.append(True)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    if isinstance(failure, RuntimeError):  # torch's message does not say why: the free space does
        monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda _: DiskUsage(10**9, 10**9, 0))
    code, out, err = _train(tmp_path)
    monkeypatch.undo()
    last = tmp_path / "float-checkpoint-last.pth.tar"
    flat = _flat(err)
    assert code == 2, err
    assert f"cannot write checkpoint {last}: the disk is full" in flat
    assert f"where: {last}" in flat and "next:" in err and "--resume" in flat
    assert "Traceback" not in err + out
    kept = load_checkpoint(last)  # the previous one, whole
    assert kept["global_step"] == 8 and kept["epoch"] == 1
    assert _temp_files(tmp_path) == [], "the partial temp file is removed"
