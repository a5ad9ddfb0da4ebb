"""hat-ganet as a user meets it: the plugin contract, the CLI on synthetic CULane, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from hat.testing import check_plugin, run_cli

SMALL = [
    "num_epochs=1",
    "float_trainer.num_steps=4",
    "calibration_steps=2",
    "qat_steps=2",
    "compile.runs=3",
    "compile.warmup=1",
    "batch_size=4",
]
SYNTH = {"num_drivers": 1, "videos_per_driver": 2, "frames_per_video": 12}


def test_the_plugin_conforms(ganet_host) -> None:
    report = check_plugin("hat_ganet.plugin", "hat-ganet", host=ganet_host)
    assert report.deploy_models["ganet_mixvargenet_culane"] == {
        "kpt_heatmap": (1, 1, 40, 100),
        "start_offset": (1, 2, 40, 100),
        "sub_offset": (1, 2, 40, 100),
    }
    assert report.deploy_models["ganet_mixvargenet_culane-tiny"]["kpt_heatmap"] == (1, 1, 20, 50)
    assert {"GANet", "CulaneF1", "GANetPostProcess", "GANetTarget", "LaneInferer"} <= set(report.registered)


def test_synth_and_pack_through_the_cli(ganet_host, tmp_path: Path) -> None:
    raw, data = tmp_path / "raw", tmp_path / "data"
    made = run_cli("synth", "culane", "--dst", str(raw), "--num-drivers", "1", "--frames-per-video", "8")
    assert made.code == 0, made.err
    packed = run_cli("pack", "culane", "--src", str(raw), "--dst", str(data), "--split", "test")
    assert packed.code == 0, packed.err
    assert "packed" in packed.out and (data / "test_lmdb" / "data.mdb").is_file()
    wrong = run_cli("pack", "culane", "--src", str(raw), "--dst", str(data), "--split", "nope")
    assert wrong.code == 2 and "test" in wrong.err and "train" in wrong.err


@pytest.fixture(scope="module")
def demo(ganet_module_host, tmp_path_factory) -> tuple[Path, dict]:
    """The conformance check with the demo: every stage on synthetic CULane, very short."""
    work = tmp_path_factory.mktemp("ganet-demo")
    checked = check_plugin(
        "hat_ganet.plugin",
        "hat-ganet",
        host=ganet_module_host,
        demo_overrides=SMALL,
        demo_synth_options=SYNTH,
        demo_work_dir=work,
    )
    return work, checked.demo_report


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_reports_f1(demo) -> None:
    work, report = demo
    assert json.loads((work / "demo_report.json").read_text()) == report
    assert set(report["stages"]) == {"float", "calibration", "qat", "int_infer"}
    for values in report["stages"].values():
        assert set(values) == {"F1", "precision", "recall"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert report["latency_ms"]["int8_opt3"] > 0 and report["latency_ms"]["float_onnx"] > 0
    assert report["int8_flops_share"] > 0.99
    predicted = json.loads((work / "predict" / "int_infer.json").read_text())["metrics"]
    assert {"F1/normal", "F1/night", "FP/cross"} <= set(predicted)
    # every test frame's prediction as CULane .lines.txt, in the dataset's layout
    lines = sorted((work / "predict" / "int_infer").rglob("*.lines.txt"))
    test_list = (work / "raw" / "list" / "test.txt").read_text().split()
    assert len(lines) == len([f for f in test_list if f.endswith(".jpg")]) > 0
    assert len(list((work / "predict" / "float").rglob("*.lines.txt"))) == len(lines)  # the torch predictor too
    for path in lines:
        for row in path.read_text().splitlines():
            values = [float(v) for v in row.split()]
            assert len(values) % 2 == 0 and len(values) >= 4
    assert len(report["pictures"]) == 3
    for picture in report["pictures"]:
        image = cv2.imread(picture)
        assert image is not None and image.shape == (590, 1640, 3)


@pytest.mark.slow
def test_the_demo_work_dir_serves_every_command_without_flags(demo, ganet_module_host) -> None:
    work, _ = demo
    for args in (("check", "ganet"), ("compile", "ganet"), ("validate", "ganet")):
        result = run_cli(*args, "--work-dir", str(work))
        assert result.code == 0, (args, result.err)
