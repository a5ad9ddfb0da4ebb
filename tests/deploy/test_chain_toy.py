"""The whole chain on the engine's toy task, through the CLI: float -> calibration -> qat ->
export -> check -> compile -> int_infer -> validate, and the errors of doing it out of order."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from hat.testing import run_cli


@pytest.mark.slow
def test_chain_runs_from_the_cli_and_int8_matches_the_simulation(toy_engine_host, capsys, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path)]
    for stage in ("float", "calibration", "qat"):
        code, _, err = run_cli("train", "toy", "--stage", stage, *work)
        assert code == 0, err
    predicted = {}
    for stage in ("float", "calibration", "qat"):
        code, _, err = run_cli("predict", "toy", "--stage", stage, *work)
        assert code == 0, err
        predicted[stage] = json.loads((tmp_path / "predict" / f"{stage}.json").read_text())["metrics"]["mse"]
    # calibration keeps the float model's accuracy (mse within 5%); QAT trains further
    assert predicted["calibration"] <= 1.05 * predicted["float"]

    code, out, err = run_cli("export", "toy", *work)
    assert code == 0, err
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["stage"] == "qat" and meta["source_checkpoint"][-1].endswith("qat-checkpoint-best.pth.tar")
    assert meta["deploy_target"]["name"] == "portable" and meta["deploy_target"]["dense_weight_range"] == [-64, 64]
    assert meta["saturation"]["safe_without_vnni"] is True
    graph = onnx.load(str(tmp_path / "export" / "model.onnx"))
    onnx.checker.check_model(graph)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert (tmp_path / "export" / "model.float.onnx").is_file()

    code, _, err = run_cli("predict", "toy", "--stage", "int_infer", *work)
    assert code == 0, err
    int_infer = json.loads((tmp_path / "predict" / "int_infer.json").read_text())
    assert int_infer["num_samples"] == 30
    assert int_infer["metrics"]["mse"] == pytest.approx(predicted["qat"], rel=0.02)

    code, out, err = run_cli("check", "toy", *work)
    assert code == 0, err
    assert "0 node(s) not int8" in out and "100.0%" in out
    assert "saturation: safe on every x86 CPU" in out and "deploy target portable" in out
    check = json.loads((tmp_path / "export" / "check.json").read_text())
    assert check["saturation"]["safe_without_vnni"] is True and check["saturation"]["dense_kernels"] >= 2
    compiled_ops = {n["op_type"] for n in check["nodes"]}
    assert compiled_ops & {"QGemm", "QLinearMatMul"}, compiled_ops  # the linears run as int8 kernels

    code, out, err = run_cli("compile", "toy", "--opt", "2", "--runs", "5", *work)
    assert code == 0, err
    perf = json.loads((tmp_path / "compile" / "perf.json").read_text())
    assert perf["opt_level"] == 2 and perf["latency"]["int8"]["median_ms"] > 0
    assert perf["latency"]["float"]["median_ms"] > 0 and perf["int8_flops_share"] == pytest.approx(1.0)
    assert (tmp_path / "compile" / "model.opt2.onnx").is_file() and (tmp_path / "compile" / "perf.html").is_file()
    assert perf["deploy_target"]["name"] == "portable" and isinstance(perf["int8_kernels"]["exact_pairs"], bool)
    assert "warning" not in err  # a portable model runs exactly everywhere

    code, out, err = run_cli("validate", "toy", *work)
    assert code == 0, err
    result = json.loads((tmp_path / "validate.json").read_text())
    assert result["within_one_step"]["pred"] >= 0.99
    torch_mse = result["metrics"]["torch_fixed_point"]["mse"]
    assert result["metrics"]["onnxruntime"]["mse"] == pytest.approx(torch_mse, rel=0.02)
    assert torch_mse == pytest.approx(predicted["qat"], rel=1e-4)
    assert result["deploy_target"]["name"] == "portable" and "deploy target portable" in out

    # the same checkpoint exported for another target: refused, naming both and the fix
    code, _, err = run_cli("export", "toy", *work, "--set", "deploy_target=vnni")
    assert code == 2, err
    assert "'portable'" in err and "'vnni'" in err and "--set deploy_target=portable" in err
    code, _, err = run_cli("export", "toy", *work, "--set", "deploy_target=avx9")
    assert code == 2 and "unknown deploy_target 'avx9'" in err and "portable, vnni" in err


def test_deploy_commands_out_of_order_name_the_command_to_run(toy_engine_host, capsys, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path)]
    code, _, err = run_cli("export", "toy", *work)
    assert code == 2 and "never calibrated" in err and "hat train toy --stage calibration" in err
    for args in (("compile", "toy"), ("validate", "toy"), ("predict", "toy", "--stage", "int_infer")):
        code, _, err = run_cli(*args, *work)
        assert code == 2 and "hat export toy" in err, (args, err)
    code, _, err = run_cli("export", "toy", "--stage", "float", *work)
    assert code == 2 and "cannot export stage 'float'" in err


def test_a_vnni_target_is_recorded_and_warned_about_only_where_pairs_saturate(
    toy_engine_host, capsys, tmp_path: Path
) -> None:
    from hat.deploy.int8_kernels import probe_int8_kernels

    work = ["--work-dir", str(tmp_path), "--set", "deploy_target=vnni"]
    for stage in ("float", "calibration"):
        code, _, err = run_cli("train", "toy", "--stage", stage, *work)
        assert code == 0, err
    code, _, err = run_cli("export", "toy", *work)
    assert code == 0, err
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["deploy_target"]["name"] == "vnni" and meta["deploy_target"]["needs_vnni"] is True
    assert meta["deploy_target"]["dense_weight_range"] == [-127, 127]

    code, out, err = run_cli("compile", "toy", "--opt", "3", "--runs", "2", *work)
    assert code == 0, err
    perf = json.loads((tmp_path / "compile" / "perf.json").read_text())
    assert perf["deploy_target"]["name"] == "vnni" and "deploy target vnni" in out
    saturating = not probe_int8_kernels().exact_pairs
    assert ("exact only with VNNI" in err) == saturating, err  # the warning, on exactly the machines it concerns

    code, out, err = run_cli("check", "toy", *work)
    assert code == 0, err  # a vnni model may have unsafe pairs: allowed for that target, and said
    assert "deploy target vnni" in out or "as deploy target vnni allows" in out
