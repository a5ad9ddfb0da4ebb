"""`hat demo keypoint`, very small: every step of the chain runs and the report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from hat.testing import check_plugin, run_cli

SMALL = [
    "float_trainer.num_epochs=1",
    "calibration_steps=2",
    "qat_trainer.num_steps=2",
    "compile.runs=3",
    "compile.warmup=1",
    "batch_size=8",
    "num_workers=0",
]


@pytest.mark.slow
def test_demo_runs_every_step_and_writes_the_report(keypoint_host, tmp_path: Path) -> None:
    """The plugin conformance check with its demo: every step of the chain, then the report."""
    report = check_plugin(
        "hat_keypoint.plugin",
        "hat-keypoint",
        host=keypoint_host,
        demo_overrides=SMALL,
        demo_synth_options={"num_sequences": 1, "frames_per_sequence": 6},
        demo_work_dir=tmp_path,
    ).demo_report
    on_disk = json.loads((tmp_path / "demo_report.json").read_text())
    assert on_disk == report
    assert set(report["stages"]) == {"float", "calibration", "qat", "int_infer"}
    for values in report["stages"].values():
        assert set(values) == {"PCK@0.1", "MeanKeypointDist"}
        assert 0.0 <= values["PCK@0.1"] <= 1.0
    # the int8 ONNX model reproduces the QAT simulation it was exported from
    assert report["stages"]["int_infer"]["MeanKeypointDist"] == pytest.approx(
        report["stages"]["qat"]["MeanKeypointDist"], rel=0.05, abs=0.5
    )
    assert report["latency_ms"]["int8_opt3"] > 0 and report["latency_ms"]["float_onnx"] > 0
    assert report["int8_flops_share"] > 0.99
    assert report["wall_s"] > 0
    for stage in ("float", "calibration", "qat", "int_infer"):
        assert (tmp_path / "predict" / f"{stage}.json").is_file()
    for name in ("model.onnx", "model.float.onnx", "export.json"):
        assert (tmp_path / "export" / name).is_file()
    assert (tmp_path / "compile" / "perf.html").is_file()
    assert len(report["pictures"]) == 3
    for picture in report["pictures"]:
        assert cv2.imread(picture) is not None
    # issue 11: the demo's work dir serves every later command as it is, with no further flags
    # (its config.yaml stands in for --config and the demo's data_root)
    crops = tmp_path / "raw" / "demo_crops"
    for args in (
        ("check", "keypoint"),
        ("compile", "keypoint"),
        ("validate", "keypoint"),
        ("infer", "keypoint", "--input", str(crops), "--save-path", str(tmp_path / "again")),
    ):
        result = run_cli(*args, "--work-dir", str(tmp_path))
        assert result.code == 0, (args, result.err)
    assert json.loads((tmp_path / "validate.json").read_text())
    assert len(list((tmp_path / "again").glob("*_keypoints.png"))) == len(list(crops.iterdir())) > 0
