"""FCOS3D follows core's post-process contract: one FCOS3DPostProcess for every stage,
int_infer and `hat infer`; the model's eval outputs are export's flat per-level maps;
the inferer is core's, with ``--calib`` declared by its own signature."""

from __future__ import annotations

from pathlib import Path

import torch

from hat.extra_options import declared_options, parse_extra_options
from hat.inferer import ImageInferer
from hat.testing import host_fixture, run_cli
from hat.usecases.infer import describe_infer_options
from hat_fcos3d.infer import FCOS3DInferer
from hat_fcos3d.model import FCOS3DPostProcess
from tests.post_process_contract import check_post_process_contract

fcos3d_host = host_fixture("hat_fcos3d.plugin", "hat-fcos3d")


def test_predictors_and_inferer_decode_export_outputs_with_one_post_process(fcos3d_host, tmp_path: Path) -> None:
    intrinsic = torch.tensor([[120.0, 0.0, 128.0], [0.0, 120.0, 64.0], [0.0, 0.0, 1.0]])
    batch = {
        "img": torch.randn(2, 3, 128, 256, generator=torch.Generator().manual_seed(0)),
        "intrinsic": intrinsic.expand(2, 3, 3).clone(),
    }
    predictions = check_post_process_contract(
        fcos3d_host, "fcos3d", "fcos3d_efficientnetb0_nuscenes-tiny", batch, tmp_path
    )
    assert len(predictions["detections_cam"]) == 2


def test_inferer_is_cores_and_declares_calib() -> None:
    inferer = FCOS3DInferer([], FCOS3DPostProcess())
    assert isinstance(inferer, ImageInferer) and inferer.suffix == "boxes3d"
    options = declared_options(inferer)
    assert list(options) == ["calib"] and options["calib"].default is None
    assert parse_extra_options(["--calib", "cam.json"], inferer, "fcos3d") == {"calib": Path("cam.json")}


def test_hat_list_shows_the_infer_options(fcos3d_host) -> None:
    assert describe_infer_options("fcos3d", fcos3d_host) == "--calib PATH"


def test_unknown_infer_option_exits_2_naming_the_tasks_options(fcos3d_host, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    base = ["infer", "fcos3d", "--config", "fcos3d_efficientnetb0_nuscenes-tiny", "--work-dir", str(tmp_path)]
    base += ["--input", str(image), "--save-path", str(tmp_path / "out")]
    result = run_cli(*base, "--calb", "cam.json")
    assert result.code == 2
    assert "`hat infer fcos3d` has no option '--calb'" in result.err
    assert "did you mean --calib?" in result.err and "its options: --calib PATH" in result.err
    result = run_cli(*base, "--calib")
    assert result.code == 2 and "--calib needs a value" in result.err
