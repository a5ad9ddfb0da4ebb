"""`hat analyze` on the engine's toy task: the files it writes, the torch vs onnxruntime comparison, its errors."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hat.plugins import PluginHost
from hat.testing import run_cli, use_host

LAYERS = {"quant", "body.0", "head"}  # the toy regressor's QuantStub and two linears


@pytest.fixture(scope="module")
def toy_host() -> Iterator[PluginHost]:
    from tests.engine.toy_task import DIST, ToyEnginePlugin

    with use_host((ToyEnginePlugin(), DIST)) as host:
        yield host


@pytest.fixture(scope="module")
def calibrated(toy_host: PluginHost, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy work dir with float and calibration checkpoints (made once; tests work on copies)."""
    from hat.usecases import stages

    work = tmp_path_factory.mktemp("toy") / "work"
    cfg = stages.load_stage_config("toy", work_dir=work, host=toy_host)
    stages.train(cfg, "float", host=toy_host)
    stages.train(cfg, "calibration", host=toy_host)
    return work


@pytest.fixture()
def work(calibrated: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(calibrated, copy)
    return copy


def _strict_json(path: Path) -> dict:
    """The file as JSON that any parser reads: no NaN or Infinity constants."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_analyze_writes_every_layer_to_json_and_a_self_contained_page(toy_host, work: Path) -> None:
    code, out, err = run_cli("analyze", "toy", "--work-dir", str(work), "--batches", "2", "--top", "2")
    assert code == 0, err
    record = _strict_json(work / "analysis" / "analysis.json")
    assert record["task"] == "toy" and record["stage"] == "calibration"
    assert record["batches"] == 2 and record["samples"] == 30
    assert "only_quantized.output_sqnr_db" in record["ranking"]
    layers = record["layers"]
    assert {layer["name"] for layer in layers} == LAYERS
    assert [layer["rank"] for layer in layers] == [1, 2, 3]
    keys = [layer["only_quantized"]["output_sqnr_db"] for layer in layers]
    assert keys == sorted(keys)  # ranked by the output SQNR with only that layer quantized, worst first
    for layer in layers:
        assert isinstance(layer["sqnr_db"], float) and 10 < layer["sqnr_db"] < 80
        assert set(layer["only_float"]) == {"output_sqnr_db"}  # no metric without --metric
    model = record["model"]
    assert isinstance(model["output_sqnr_db"], float) and set(model["outputs_sqnr_db"]) == {"pred"}
    assert model["float_reference_gap"] < 1e-4  # quantizers off = the float model
    # no export in this work dir: the comparison is skipped, naming the command that makes one
    assert record["divergence"]["command"] == f"hat export toy --work-dir {work}"
    assert "not compared" in out and f"hat export toy --work-dir {work}" in out
    # the table shows the top 2 of 3
    assert out.count("QLinear") + out.count("QuantInput") == 2

    page = (work / "analysis" / "analysis.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "http" not in page and "<script" not in page and "src=" not in page and "<link" not in page
    assert all(name in page for name in LAYERS)
    assert f"hat export toy --work-dir {work}" in page


def test_with_an_export_every_tensor_is_compared_and_a_divergence_is_found(
    toy_host, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hat.deploy import tensor_probe
    from hat.usecases import analyze, deploy, stages

    cfg = stages.load_stage_config("toy", work_dir=work, host=toy_host)
    deploy.export(cfg, host=toy_host)
    code, out, err = run_cli("analyze", "toy", "--work-dir", str(work), "--batches", "1")
    assert code == 0, err
    found = _strict_json(work / "analysis" / "analysis.json")["divergence"]
    assert found["stage"] == "calibration" and found["opt"] == 3 and found["samples"] == 16
    assert [t["layer"] for t in found["compared"]] == ["quant", "body.0", "head"]
    assert found["first_divergence"] is None and all(t["max_steps"] <= 1 for t in found["compared"])
    assert found["local"]["first_divergence"] is None
    assert "agree within one step" in out

    # onnxruntime's body.0 output moved 5 steps: that layer is named, not the head after it
    real = tensor_probe.run_exposed

    def shifted(model, inputs):
        values = real(model, inputs)
        name = "/body/0/out_quant/QuantizeLinear_output_0"
        codes = values[name].astype(np.int64)
        values[name] = np.where(codes < 250, codes + 5, codes - 5).astype(values[name].dtype)
        return values

    monkeypatch.setattr(tensor_probe, "run_exposed", shifted)
    pred = analyze._int_infer_predictor(cfg, toy_host)
    inputs = analyze._samples(cfg, pred, toy_host, 1)[0][0]
    found = analyze.divergence(cfg, inputs, host=toy_host)
    first = found["first_divergence"]
    assert first["layer"] == "body.0" and first["max_steps"] == 5 and first["share_beyond_one_step"] == 1.0
    local = {t["layer"]: t for t in found["local"]["compared"]}
    assert found["local"]["first_divergence"]["layer"] == "body.0" and local["body.0"]["max_steps"] == 5


def test_metric_mode_records_the_task_metric_for_every_run(toy_host, work: Path) -> None:
    code, out, err = run_cli("analyze", "toy", "--work-dir", str(work), "--batches", "1", "--metric")
    assert code == 0, err
    record = _strict_json(work / "analysis" / "analysis.json")
    metric = record["model"]["metric"]
    assert metric["name"] == "mse" and metric["higher_is_better"] is False
    assert metric["float"] > 0 and metric["quantized"] > 0
    assert "metric_loss" in record["ranking"]
    losses = [layer["only_quantized"]["metric_loss"] for layer in record["layers"]]
    assert losses == sorted(losses, reverse=True)
    for layer in record["layers"]:
        run = layer["only_quantized"]
        assert run["metric_loss"] == pytest.approx(run["metric"] - metric["float"])  # lower is better
    assert f"mse, float {metric['float']:.4f}" in out and f"; mse {metric['quantized']:.4f}" in out


def test_a_work_dir_without_calibration_is_refused_with_the_command_to_run(toy_host, work: Path) -> None:
    for path in work.glob("calibration-checkpoint-*"):
        path.unlink()
    code, out, err = run_cli("analyze", "toy", "--work-dir", str(work))
    assert code == 2
    assert "nothing to analyze: no calibration or qat checkpoint" in err
    assert f"hat train toy --stage calibration --work-dir {work}" in err
    assert "Traceback" not in err and not (work / "analysis").exists()
    code, _, err = run_cli("analyze", "toy", "--work-dir", str(work), "--stage", "float")
    assert code == 2 and "cannot analyze stage 'float'" in err


def test_a_missing_qat_checkpoint_names_the_file(toy_host, work: Path) -> None:
    code, _, err = run_cli("analyze", "toy", "--work-dir", str(work), "--stage", "qat")
    assert code == 2 and "qat-checkpoint-best.pth.tar" in err and "hat train toy --stage qat" in err


def test_infinite_sqnr_is_written_as_a_string_json_can_hold() -> None:
    from hat.quant.sensitivity_html import format_db
    from hat.usecases.analyze import json_number

    assert json_number(math.inf) == "inf" and json_number(-math.inf) == "-inf"
    assert json_number(math.nan) is None and json_number(12.5) == 12.5
    assert format_db("inf") == "∞" and format_db(12.34) == "12.3" and format_db(None) == "n/a"


def test_the_ranking_is_data_a_caller_can_use_without_files(toy_host, work: Path) -> None:
    from hat.usecases import stages
    from hat.usecases.analyze import sensitivity

    cfg = stages.load_stage_config("toy", work_dir=work, host=toy_host)
    measured = sensitivity(cfg, batches=2, host=toy_host)
    ranked = measured.report.ranked()
    assert measured.stage == "calibration" and {layer.name for layer in ranked} == LAYERS
    assert not (work / "analysis").exists()
    code, _, err = run_cli("analyze", "toy", "--work-dir", str(work), "--batches", "2")
    assert code == 0, err
    written = _strict_json(work / "analysis" / "analysis.json")["layers"]
    assert [layer["name"] for layer in written] == [layer.name for layer in ranked]
