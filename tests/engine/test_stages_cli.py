"""train / predict / calops on the toy task, through the CLI, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hat.engine.checkpoint_io import load_checkpoint
from hat.testing import run_cli


class NotData:
    """Pickled by reference: loading it needs this module's code, which weights_only refuses."""


def test_float_then_calibration_then_predict(toy_engine_host, capsys, tmp_path: Path) -> None:
    work = str(tmp_path / "w")
    code, out, err = run_cli("train", "toy", "--stage", "float", "--work-dir", work)
    assert code == 0, err
    best = load_checkpoint(tmp_path / "w" / "float-checkpoint-best.pth.tar")
    last = load_checkpoint(tmp_path / "w" / "float-checkpoint-last.pth.tar")
    assert last["epoch"] == 4 and last["global_step"] == 32 and last["step_in_epoch"] == 0
    assert best["metrics"]["mse"] <= last["metrics"]["mse"]
    assert last["config"]["float_trainer"]["num_epochs"] == 4

    log = [json.loads(line) for line in (tmp_path / "w" / "logs" / "float.jsonl").read_text().splitlines()]
    validations = [r for r in log if r["event"] == "validation"]
    steps = [r for r in log if r["event"] == "step"]
    assert len(validations) == 4 and len(steps) == 16  # log_freq 2 over 32 steps
    assert validations[-1]["mse"] < 0.5 * validations[0]["mse"], "training must reduce the validation error"
    assert {"loss", "lr", "samples_per_s", "eta_s"} <= set(steps[0])

    code, out, err = run_cli("train", "toy", "--stage", "calibration", "--work-dir", work)
    assert code == 0, err
    calib = load_checkpoint(tmp_path / "w" / "calibration-checkpoint-best.pth.tar")
    assert calib["stage"] == "calibration" and calib["global_step"] == 4
    # the calibration model holds the float weights (BN-free Linear: unchanged) plus its quantizer scales
    assert torch.equal(calib["model"]["body.0.module.weight"], best["model"]["body.0.weight"])
    assert calib["model"]["body.0.out_quant.calibrated"] and calib["model"]["body.0.out_quant.scale"] > 0
    assert calib["metrics"]["mse"] <= 1.05 * best["metrics"]["mse"]

    code, out, err = run_cli("predict", "toy", "--stage", "float", "--work-dir", work)
    assert code == 0, err
    result = json.loads((tmp_path / "w" / "predict" / "float.json").read_text())
    assert set(result) == {"stage", "config", "metrics", "num_samples"}
    assert result["stage"] == "float" and result["config"] == "toy_engine" and result["num_samples"] == 30
    assert result["metrics"]["mse"] == pytest.approx(best["metrics"]["mse"], rel=1e-9)
    assert "mse" in out


def test_missing_prerequisite_fails_before_work(toy_engine_host, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "toy", "--stage", "calibration", "--work-dir", str(tmp_path))
    assert code == 2
    flat = " ".join(err.split())
    assert f"{tmp_path}/float-checkpoint-best.pth.tar" in flat
    assert f"run `hat train toy --stage float --work-dir {tmp_path}` first" in flat
    assert not (tmp_path / "logs").exists(), "nothing may run before the prerequisite check"
    code, _, err = run_cli("predict", "toy", "--stage", "float", "--work-dir", str(tmp_path))
    assert code == 2 and "--stage float" in err


def test_stage_without_runner_lists_what_exists(toy_engine_host, capsys, tmp_path: Path) -> None:
    partial = tmp_path / "float_only.yaml"
    partial.write_text("float_trainer: {type: distributed_data_parallel_trainer}\n")
    code, _, err = run_cli("train", "toy", "--config", str(partial), "--stage", "qat", "--work-dir", str(tmp_path))
    assert code == 2 and "qat_trainer" in err and "float_trainer" in err
    code, _, err = run_cli("train", "toy", "--stage", "int_infer", "--work-dir", str(tmp_path))
    assert code == 2 and "cannot train stage 'int_infer'" in err


def test_same_seed_same_weights(toy_engine_host, capsys, tmp_path: Path) -> None:
    weights = []
    for run in ("a", "b"):
        code, _, err = run_cli("train", "toy", "--work-dir", str(tmp_path / run), "--set", "float_trainer.num_epochs=2")
        assert code == 0, err
        weights.append(load_checkpoint(tmp_path / run / "float-checkpoint-last.pth.tar")["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    code, _, err = run_cli(
        "train",
        "toy",
        "--work-dir",
        str(tmp_path / "c"),
        "--set",
        "float_trainer.num_epochs=2",
        "--set",
        "seed=4",
    )
    other = load_checkpoint(tmp_path / "c" / "float-checkpoint-last.pth.tar")["model"]
    assert not torch.equal(weights[0]["body.0.weight"], other["body.0.weight"])


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(toy_engine_host, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "toy", "--work-dir", str(tmp_path), "--set", "float_trainer.model.nan_at_step=10")
    assert code == 1
    flat = " ".join(err.split())
    assert "non-finite loss at step 10: loss=nan" in flat
    assert "float-checkpoint-last.pth.tar" in flat and "Traceback" not in err
    kept = load_checkpoint(tmp_path / "float-checkpoint-last.pth.tar")
    assert kept["global_step"] == 8 and kept["epoch"] == 1  # the end of epoch 1, before the bad step
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_corrupt_and_foreign_checkpoints_are_clear_errors(toy_engine_host, capsys, tmp_path: Path) -> None:
    (tmp_path / "float-checkpoint-best.pth.tar").write_bytes(b"not a checkpoint at all")
    code, _, err = run_cli("predict", "toy", "--work-dir", str(tmp_path))
    assert code == 2 and "corrupt or not a plain-data checkpoint" in " ".join(err.split())

    torch.save({"model": NotData()}, tmp_path / "float-checkpoint-best.pth.tar")  # loading it would run code
    code, _, err = run_cli("predict", "toy", "--work-dir", str(tmp_path))
    assert code == 2 and "HAT never loads code" in " ".join(err.split())

    torch.save({"body.0.weight": torch.zeros(3, 3)}, tmp_path / "float-checkpoint-best.pth.tar")
    code, _, err = run_cli("predict", "toy", "--work-dir", str(tmp_path))
    flat = " ".join(err.split())
    assert code == 2 and "does not fit the model" in flat and "shape mismatch" in flat


def test_resume_without_checkpoint_is_a_user_error(toy_engine_host, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "toy", "--work-dir", str(tmp_path), "--resume")
    assert code == 2 and "nothing to resume" in err


def test_calops_counts_the_deploy_model(toy_engine_host, capsys) -> None:
    code, out, err = run_cli("calops", "toy", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["total_flops"] == 2 * 4 * 16 + 2 * 16 * 1  # two Linear layers, FLOPs = 2 x MACs
    assert report["total_params"] == (4 * 16 + 16) + (16 + 1)
    assert "2 x MACs" in report["flops_definition"]
    code, out, _ = run_cli("calops", "toy", "--set", "deploy_inputs.x=[1, 0]")
    assert code == 2


def test_config_show_fills_in_the_work_dir_like_the_stage_commands(toy_engine_host, capsys) -> None:
    import yaml

    code, out, err = run_cli("config", "show", "toy")
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["work_dir"] == "hat-work/toy_engine" and shown["task"] == "toy"
    pipeline = shown["calibration_trainer"]["model_convert_pipeline"]
    assert pipeline["converters"][0]["checkpoint_path"] == "hat-work/toy_engine/float-checkpoint-best.pth.tar"
