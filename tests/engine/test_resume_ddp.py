"""Resume after SIGKILL, and DDP under torchrun, with the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hat.engine.checkpoint_io import load_checkpoint
from tests.engine.subprocess_toy import REPO, run_toy


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path: Path) -> None:
    straight = run_toy("train", "toy", "--work-dir", str(tmp_path / "straight"), "--quiet")
    assert straight.returncode == 0, straight.stderr

    killed = run_toy("train", "toy", "--work-dir", str(tmp_path / "killed"), "--quiet", env={"HAT_TEST_KILL": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = load_checkpoint(tmp_path / "killed" / "float-checkpoint-last.pth.tar")
    assert mid["epoch"] == 2 and mid["global_step"] == 16, "killed right after epoch 2's checkpoint"

    resumed = run_toy("train", "toy", "--work-dir", str(tmp_path / "killed"), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    final_straight = load_checkpoint(tmp_path / "straight" / "float-checkpoint-last.pth.tar")
    final_resumed = load_checkpoint(tmp_path / "killed" / "float-checkpoint-last.pth.tar")
    assert final_resumed["global_step"] == final_straight["global_step"] == 32
    for key, value in final_straight["model"].items():
        assert torch.equal(value, final_resumed["model"][key]), f"{key} differs after resume"
    assert torch.equal(
        final_straight["optimizer"]["state"][0]["momentum_buffer"],
        final_resumed["optimizer"]["state"][0]["momentum_buffer"],
    )
    assert final_resumed["metrics"]["mse"] == final_straight["metrics"]["mse"]
    # best selection survived the resume: the same best checkpoint in both runs
    best_straight = load_checkpoint(tmp_path / "straight" / "float-checkpoint-best.pth.tar")
    best_resumed = load_checkpoint(tmp_path / "killed" / "float-checkpoint-best.pth.tar")
    assert best_straight["global_step"] == best_resumed["global_step"]


@pytest.mark.slow
def test_resume_mid_epoch_from_a_step_checkpoint(tmp_path: Path) -> None:
    """Checkpoints every 5 steps, killed at step 13: resumed from step 10, mid-epoch 2."""
    every5 = ["--set", "float_trainer.callbacks.3={type: Checkpoint, save_interval: 5, interval_by: step}"]
    straight = run_toy("train", "toy", "--work-dir", str(tmp_path / "a"), "--quiet", *every5)
    assert straight.returncode == 0, straight.stderr
    killed = run_toy(
        "train",
        "toy",
        "--work-dir",
        str(tmp_path / "b"),
        "--quiet",
        *every5,
        "--set",
        "float_trainer.callbacks.4={type: KillSwitch, step: 13}",
        env={"HAT_TEST_KILL": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = load_checkpoint(tmp_path / "b" / "float-checkpoint-last.pth.tar")
    assert (mid["global_step"], mid["epoch"], mid["step_in_epoch"]) == (10, 1, 2)
    resumed = run_toy("train", "toy", "--work-dir", str(tmp_path / "b"), "--resume", "--quiet", *every5)
    assert resumed.returncode == 0, resumed.stderr
    a = weights(tmp_path / "a" / "float-checkpoint-last.pth.tar")
    b = weights(tmp_path / "b" / "float-checkpoint-last.pth.tar")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# SGD without momentum or weight decay and no BN: 2 ranks x batch B must equal 1 process x batch 2B.
PLAIN_SGD = [
    "--set",
    "float_trainer.optimizer={type: SGD, lr: 0.05}",
    "--set",
    "float_trainer.batch_processor.grad_clip_norm=null",
    "--set",
    "float_trainer.num_epochs=2",
    "--set",
    "float_trainer.callbacks=[{type: StatsMonitor, log_freq: 1}, "
    "{type: Validation, data_loader: '${val_loader}'}, {type: Checkpoint, monitor_metric_key: mse, mode: min}]",
]


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_on_the_combined_batches(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "tests.engine.run_toy",
            "train",
            "toy",
            "--work-dir",
            str(tmp_path / "ddp"),
            "--quiet",
            *PLAIN_SGD,
            "--set",
            "train_loader.batch_size=4",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_toy(
        "train",
        "toy",
        "--work-dir",
        str(tmp_path / "single"),
        "--quiet",
        *PLAIN_SGD,
        "--set",
        "train_loader.batch_size=8",
    )
    assert single.returncode == 0, single.stderr

    ddp_ckpt = load_checkpoint(tmp_path / "ddp" / "float-checkpoint-last.pth.tar")
    single_ckpt = load_checkpoint(tmp_path / "single" / "float-checkpoint-last.pth.tar")
    assert ddp_ckpt["global_step"] == single_ckpt["global_step"] == 16
    for key, value in single_ckpt["model"].items():
        torch.testing.assert_close(ddp_ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # validation metrics are reduced over ranks: the same as one process over the whole set
    assert ddp_ckpt["metrics"]["mse"] == pytest.approx(single_ckpt["metrics"]["mse"], rel=1e-5)

    # only rank 0 wrote: one log line per step and validation, no stray temp files
    log = [json.loads(line) for line in (tmp_path / "ddp" / "logs" / "float.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, 17))
    assert len([r for r in log if r["event"] == "validation"]) == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "config.yaml",  # written once, by rank 0, like the checkpoints
        "float-checkpoint-best.pth.tar",
        "float-checkpoint-last.pth.tar",
        "logs",
    ]
