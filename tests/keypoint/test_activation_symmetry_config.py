"""The top-level activation_symmetry reaches calibration and QAT, and a value they would not use is refused."""

from __future__ import annotations

import pytest

from hat.errors import ConfigError
from hat.usecases.stages import load_stage_config

TINY = "keypoint_efficientnetb0_carfusion-tiny"


def test_one_top_level_value_sets_calibration_and_qat(keypoint_host, tmp_path) -> None:
    cfg = load_stage_config(
        "keypoint", config_ref=TINY, overrides=["activation_symmetry=asymmetric"], work_dir=tmp_path, host=keypoint_host
    ).config
    for stage in ("calibration_trainer", "qat_trainer"):
        assert cfg[stage]["model_convert_pipeline"]["qconfig_params"]["activation_symmetry"] == "asymmetric"
    # the task's own qconfig_calibration keys are kept beside it
    assert cfg["qconfig_calibration"]["activation_calibration_observer"] == "percentile"


def test_an_unknown_value_is_refused_where_it_was_set(keypoint_host, tmp_path) -> None:
    with pytest.raises(ConfigError, match="activation_symmetry must be one of symmetric, asymmetric") as info:
        load_stage_config(
            "keypoint", config_ref=TINY, overrides=["activation_symmetry=asym"], work_dir=tmp_path, host=keypoint_host
        )
    assert "--set activation_symmetry=asym" in str(info.value.where)


def test_a_value_the_stages_would_not_use_is_refused(keypoint_host, tmp_path) -> None:
    """As with a work dir's config.yaml written before the key: its qconfig sections lack the link."""
    overrides = ["activation_symmetry=asymmetric", "qconfig_qat={activation_qat_qkwargs: {averaging_constant: 0}}"]
    with pytest.raises(ConfigError, match="qconfig_qat quantizes 'symmetric'") as info:
        load_stage_config("keypoint", config_ref=TINY, overrides=overrides, work_dir=tmp_path, host=keypoint_host)
    assert "--set qconfig_qat.activation_symmetry=asymmetric" in info.value.hint
