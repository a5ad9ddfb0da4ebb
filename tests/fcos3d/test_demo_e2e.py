"""`hat demo fcos3d`, very small: every step runs, the report is complete, and `hat infer
fcos3d` draws boxes with a calibration file (and says what is wrong without one)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from hat.testing import check_plugin, host_fixture, run_cli

pytestmark = pytest.mark.needs_nuscenes

SMALL = [
    "float_trainer.num_epochs=1",
    "float_trainer.num_steps=4",
    "calibration_steps=2",
    "qat_trainer.num_steps=2",
    "compile.runs=3",
    "compile.warmup=1",
    "batch_size=4",
]
SYNTH = {"samples_per_scene": 2, "objects_per_sample": 10, "image_width": 320}


fcos3d_host = host_fixture("hat_fcos3d.plugin", "hat-fcos3d", scope="module")


@pytest.fixture(scope="module")
def demo(fcos3d_host, tmp_path_factory) -> tuple[Path, dict]:
    """The plugin conformance check, demo included (it runs the demo once for every test here)."""
    work = tmp_path_factory.mktemp("fcos3d-demo")
    checked = check_plugin(
        "hat_fcos3d.plugin",
        "hat-fcos3d",
        host=fcos3d_host,
        demo_overrides=SMALL,
        demo_synth_options=SYNTH,
        demo_work_dir=work,
    )
    return work, checked.demo_report


@pytest.mark.slow
def test_demo_runs_every_step_and_writes_the_report(demo) -> None:
    work, report = demo
    assert json.loads((work / "demo_report.json").read_text()) == report
    assert set(report["stages"]) == {"float", "calibration", "qat", "int_infer"}
    for values in report["stages"].values():
        assert set(values) == {"NDS", "mAP"}
        assert 0.0 <= values["NDS"] <= 1.0 and 0.0 <= values["mAP"] <= 1.0
    assert report["latency_ms"]["int8_opt3"] > 0 and report["latency_ms"]["float_onnx"] > 0
    assert report["int8_flops_share"] > 0.99
    for stage in ("float", "calibration", "qat", "int_infer"):
        predicted = json.loads((work / "predict" / f"{stage}.json").read_text())
        assert {"NDS", "mAP", "mATE", "AP/car", "AP/barrier"} <= set(predicted["metrics"])
    assert len(report["pictures"]) == 3
    for picture in report["pictures"]:
        assert cv2.imread(picture).shape[:2] == (180, 320)


@pytest.mark.slow
def test_infer_needs_a_calibration_file_and_reads_it(demo, capsys, tmp_path: Path) -> None:
    work, _ = demo
    image = next((work / "raw" / "samples" / "CAM_FRONT").glob("*.jpg"))
    calib = work / "raw" / "demo_calib_cam_front.json"
    base = ["infer", "fcos3d", "--config", "fcos3d_efficientnetb0_nuscenes-tiny", "--work-dir", str(work)]
    base += ["--input", str(image), "--save-path", str(tmp_path / "out")]

    code, _, err = run_cli(*base)
    assert code == 2 and "intrinsics" in err and "--calib" in err

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"camera_intrinsic": [[1, 0], [0, 1]]}))
    code, _, err = run_cli(*base, "--calib", str(bad))
    assert code == 2 and "no usable 3x3 camera matrix" in err

    code, _, err = run_cli(*base, "--calib", str(tmp_path / "missing.json"))
    assert code == 2 and "not found" in err

    code, out, err = run_cli(*base, "--calib", str(calib))
    assert code == 0, err
    drawn = tmp_path / "out" / f"{image.stem}_boxes3d.png"
    assert str(drawn) in out and cv2.imread(str(drawn)) is not None
