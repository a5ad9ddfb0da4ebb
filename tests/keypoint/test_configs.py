"""The plugin's configs resolve, show, and build the model they describe."""

from __future__ import annotations

import pytest
import torch
import yaml

from hat.cli import main
from hat.engine.deploy_model import build_deploy_model
from hat.usecases.stages import load_stage_config


@pytest.mark.parametrize("name", ["keypoint_efficientnetb0_carfusion", "keypoint_efficientnetb0_carfusion-tiny"])
def test_config_builds_the_deploy_model_at_its_input(keypoint_host, name: str) -> None:
    stage_cfg = load_stage_config("keypoint", config_ref=name, host=keypoint_host)
    model, inputs = build_deploy_model(stage_cfg.config, keypoint_host.registry)
    with torch.no_grad():
        heatmap = model(inputs)["heatmap"]
    assert heatmap.shape == (1, 12, inputs["img"].shape[2] // 4, inputs["img"].shape[3] // 4)
    for key in ("float_trainer", "calibration_trainer", "qat_trainer", "int_infer_predictor", "infer"):
        assert key in stage_cfg.config


def test_config_show_keypoint(keypoint_host, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "show", "keypoint", "--quiet"])
    assert exit_info.value.code in (0, None)
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["float_trainer"]["optimizer"] == {"type": "AdamW", "lr": 1e-3, "weight_decay": 5e-2}
    assert shown["calibration_trainer"]["num_steps"] == 100
    assert shown["qconfig_calibration"]["activation_calibration_qkwargs"] == {"percentile": 99.975}


def test_one_top_level_value_sets_every_stages_backends(keypoint_host, tmp_path) -> None:
    stage_cfg = load_stage_config(
        "keypoint",
        config_ref="keypoint_efficientnetb0_carfusion-tiny",
        overrides=["quant_backend=vendor_q", "compile.backend=vendor_c"],
        work_dir=tmp_path,
        host=keypoint_host,
    )
    cfg = stage_cfg.config
    pipelines = [key for key in cfg.data if key.endswith(("_trainer", "_predictor")) and key != "int_infer_predictor"]
    assert len(pipelines) == 6
    for key in pipelines:
        assert cfg[key]["model_convert_pipeline"]["quant_backend"] == "vendor_q", key
    assert cfg["compile"]["backend"] == "vendor_c"
