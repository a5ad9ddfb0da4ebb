"""Keypoint follows core's post-process contract: one KeypointPostProcess for every stage,
int_infer and `hat infer`; the model's eval outputs are export's; the inferer is core's."""

from __future__ import annotations

from pathlib import Path

import torch

from hat.extra_options import declared_options
from hat.inferer import ImageInferer
from hat.testing import run_cli
from hat_keypoint.infer import KeypointInferer
from hat_keypoint.model import KeypointPostProcess
from tests.post_process_contract import check_post_process_contract


def test_predictors_and_inferer_decode_export_outputs_with_one_post_process(keypoint_host, tmp_path: Path) -> None:
    batch = {"img": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    predictions = check_post_process_contract(
        keypoint_host, "keypoint", "keypoint_efficientnetb0_carfusion-tiny", batch, tmp_path
    )
    assert predictions["pred_keypoints"].shape == (2, 12, 2) and predictions["pred_scores"].shape == (2, 12)


def test_inferer_is_cores_with_no_task_options() -> None:
    inferer = KeypointInferer([], KeypointPostProcess())
    assert isinstance(inferer, ImageInferer) and inferer.suffix == "keypoints"
    assert declared_options(inferer) == {}


def test_infer_refuses_another_tasks_option(keypoint_host, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    result = run_cli(
        "infer", "keypoint", "--work-dir", str(tmp_path), "--input", str(image), "--save-path", str(tmp_path / "o"),
        "--calib", "cam.json",
    )  # fmt: skip
    assert result.code == 2
    assert "`hat infer keypoint` has no option '--calib'" in result.err and "its options: none" in result.err
