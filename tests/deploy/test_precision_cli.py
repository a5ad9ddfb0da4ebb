"""Per-layer precision through the CLI on the engine's toy task: calibration, export and
check honour one ``precision`` value; a malformed or a changed one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hat.testing import run_cli

PRECISION = "precision=[{modules: body.0, activation: int16}, {modules: head, activation: float, reason: sensitivity}]"


def test_precision_reaches_calibration_export_and_check(toy_engine_host, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path)]
    code, _, err = run_cli("train", "toy", "--stage", "float", *work)
    assert code == 0, err
    code, _, err = run_cli("train", "toy", "--stage", "calibration", *work, "--set", "precision=[{modules: bdy.*}]")
    assert code == 2 and "precision[0]: modules 'bdy.*' matches no quantizable module" in err, err
    code, _, err = run_cli("train", "toy", "--stage", "calibration", *work, "--set", PRECISION)
    assert code == 0, err

    code, out, err = run_cli("check", "toy", *work)  # the work dir remembers the rules
    assert code == 0, err
    assert "modules not at int8" in out and "sensitivity" in out and "configured" in out
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["opset"] == 21
    assert [(r["module"], r["activation"], r["reason"]) for r in meta["modules_not_int8"]] == [
        ("body.0", "int16", "configured"),
        ("head", "float", "sensitivity"),
    ]
    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    int16 = {t.name for t in graph.initializer if numpy_helper.to_array(t).dtype == np.int16}
    assert int16 and all(t.startswith("/body/0/") for t in int16), int16
    check = json.loads((tmp_path / "export" / "check.json").read_text())
    assert [r["module"] for r in check["modules_not_int8"]] == ["body.0", "head"]
    why = {n["module"]: n["why"] for n in check["non_int8"]}
    assert why.get("body.0") == "configured" and why.get("head") == "sensitivity", why

    # hat validate: onnxruntime (int16 and float layers run as float kernels) agrees with the simulation
    code, _, err = run_cli("validate", "toy", *work)
    assert code == 0, err
    result = json.loads((tmp_path / "validate.json").read_text())
    assert result["within_one_step"]["pred"] >= 0.99
    torch_mse = result["metrics"]["torch_fixed_point"]["mse"]
    assert result["metrics"]["onnxruntime"]["mse"] == pytest.approx(torch_mse, rel=1e-3)

    # hat analyze converts with the same rules (an int16 checkpoint does not load into int8 quantizers)
    code, _, err = run_cli("analyze", "toy", *work)
    assert code == 0, err
    assert (tmp_path / "analysis" / "analysis.json").is_file()

    # the calibrated checkpoint exported under other rules: refused, saying how it was trained
    code, _, err = run_cli("export", "toy", *work, "--set", "precision=[]")
    assert code == 2, err
    assert "calibration-trained with precision" in err and "int16" in err and "(all int8)" in err
    # so is QAT from it, or predicting with it, before any work
    for command in (("train", "toy", "--stage", "qat"), ("predict", "toy", "--stage", "calibration")):
        code, _, err = run_cli(*command, *work, "--set", "precision=[]")
        assert code == 2 and "calibration-trained with precision" in err, (command, err)
    # who chose a precision does not change the grids: the same rules with another reason export
    same = PRECISION.replace("reason: sensitivity", "reason: configured")
    code, _, err = run_cli("export", "toy", *work, "--set", same)
    assert code == 0, err


def test_a_malformed_rule_is_refused_before_any_work(toy_engine_host, tmp_path: Path) -> None:
    code, _, err = run_cli(
        "train",
        "toy",
        "--stage",
        "float",
        "--work-dir",
        str(tmp_path),
        "--set",
        "precision=[{modules: head, activation: int4}]",
    )
    assert code == 2
    assert "precision[0]: activation 'int4' is not one of int8, int16, float" in err and "--set" in err
    assert not any(tmp_path.glob("*.pth.tar"))
