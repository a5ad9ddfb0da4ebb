"""A task deployed as two graphs with host code between them (``deploy_graphs`` and an
OnnxPredictor ``chain``), on the engine's toy task: export, compile, calops, int_infer and
validate handle both graphs, and ``deploy_graph`` selects one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hat.config import Config
from hat.engine.deploy_model import deploy_inputs, graph_config, graph_names, graph_of
from hat.errors import ConfigError
from hat.testing import run_cli
from hat.workdir import compile_dir, export_dir

CONFIG = ("--config", "toy_two_graphs")


def _config(data: dict) -> Config:
    return Config(data=data, name="t")


def test_graph_names_select_and_describe_the_graphs() -> None:
    step = {"deploy_model": {"type": "M", "deploy": "step"}, "deploy_inputs": {"hidden": [1, 16]}}
    cfg = _config({"deploy_model": {"type": "M"}, "deploy_inputs": {"x": [1, 4]}, "deploy_graphs": {"step": step}})
    assert graph_names(cfg) == ["model", "step"] and graph_of(cfg) == "model"
    assert list(deploy_inputs(cfg)) == ["x"]
    stepped = graph_config(cfg, "step")
    assert graph_of(stepped) == "step" and graph_names(stepped) == ["step"]
    assert list(deploy_inputs(stepped)) == ["hidden"] and tuple(deploy_inputs(stepped)["hidden"].shape) == (1, 16)
    assert graph_config(cfg, "model") is cfg
    assert export_dir(Path("w"), "step") == Path("w/export/step") and export_dir(Path("w"), "model") == Path("w/export")
    assert compile_dir(Path("w")) == Path("w/compile") and compile_dir(Path("w"), "step") == Path("w/compile/step")

    with pytest.raises(ConfigError, match="no deploy graph of this config"):
        graph_of(_config({**cfg.data, "deploy_graph": "stpe"}))
    with pytest.raises(ConfigError, match="needs deploy_model and deploy_inputs"):
        graph_names(_config({"deploy_graphs": {"step": {"deploy_model": {}}}}))
    with pytest.raises(ConfigError, match="other than 'model'"):
        graph_names(_config({"deploy_graphs": {"model": step}}))


def test_graphs_exported_from_different_models_are_refused() -> None:
    from hat.engine.onnx_predictor import check_exported_together
    from hat.errors import UserError

    same = {"stage": "qat", "source_checkpoint": ["w/qat-checkpoint-best.pth.tar"]}
    check_exported_together({"model": same, "step": dict(same), "outside": None}, "hat export toy")
    other = {"stage": "calibration", "source_checkpoint": ["w/calibration-checkpoint-best.pth.tar"]}
    with pytest.raises(UserError, match="exported from different models") as err:
        check_exported_together({"model": same, "step": other}, "hat export toy")
    assert "hat export toy" in str(err.value.hint)


def test_two_graphs_export_compile_run_and_validate_through_the_chain(toy_engine_host, tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path), *CONFIG]
    for stage in ("float", "calibration"):
        code, _, err = run_cli("train", "toy", "--stage", stage, *work)
        assert code == 0, err
    code, out, err = run_cli("export", "toy", *work)
    assert code == 0, err
    assert "(graph step)" in out
    main = json.loads((tmp_path / "export" / "export.json").read_text())
    step = json.loads((tmp_path / "export" / "step" / "export.json").read_text())
    assert main["graph"] == "model" and step["graph"] == "step"
    assert [i["name"] for i in main["inputs"]] == ["x"] and [i["name"] for i in step["inputs"]] == ["hidden"]
    assert [o["name"] for o in step["outputs"]] == ["next_state"]
    # the step graph's export did not replace the config the work dir remembers
    assert "toy_two_graphs" in (tmp_path / "config.yaml").read_text()

    code, out, err = run_cli("compile", "toy", "--opt", "3", "--runs", "2", *work)
    assert code == 0, err
    assert (tmp_path / "compile" / "perf.json").is_file() and (tmp_path / "compile" / "step" / "perf.json").is_file()
    assert json.loads((tmp_path / "compile" / "step" / "perf.json").read_text())["graph"] == "step"

    code, out, err = run_cli("calops", "toy", *CONFIG, "--json")
    assert code == 0, err
    calops = json.loads(out)
    assert set(calops) == {"model", "step"} and calops["step"]["total_flops"] == 2 * 16 * 2

    code, _, err = run_cli("predict", "toy", "--stage", "int_infer", *work)
    assert code == 0, err
    int_infer = json.loads((tmp_path / "predict" / "int_infer.json").read_text())
    assert int_infer["num_samples"] == 30

    code, out, err = run_cli("validate", "toy", *work)
    assert code == 0, err
    result = json.loads((tmp_path / "validate.json").read_text())
    assert result["graphs"] == ["model", "step"]
    assert set(result["within_one_step"]) == {"pred", "hidden", "step/next_state"}
    assert min(result["within_one_step"].values()) >= 0.99
    torch_mse = result["metrics"]["torch_fixed_point"]["mse"]
    assert result["metrics"]["onnxruntime"]["mse"] == pytest.approx(torch_mse, rel=0.02)
    assert result["metrics"]["onnxruntime"]["mse"] == pytest.approx(int_infer["metrics"]["mse"], rel=1e-6)

    # deploy_graph selects one graph: only the step graph is compiled again
    before = (tmp_path / "compile" / "perf.json").stat().st_mtime_ns
    code, out, err = run_cli("compile", "toy", "--runs", "2", *work, "--set", "deploy_graph=step")
    assert code == 0, err
    assert "(graph step)" in out and (tmp_path / "compile" / "perf.json").stat().st_mtime_ns == before
    code, _, err = run_cli("export", "toy", *work, "--set", "deploy_graph=stpe")
    assert code == 2 and "no deploy graph" in err and "model, step" in err
