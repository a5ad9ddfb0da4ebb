"""The motr task as a user runs it: the plugin contract, every stage of the demo (very short),
and the two-graph deploy commands on its work dir."""

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
]
SYNTH = {"num_sequences": 2, "frames_per_sequence": 16, "people_per_sequence": 4}
METRICS = {"MOTA", "IDF1", "IDSW"}


def test_the_plugin_conforms_and_both_graphs_have_their_shapes(motr_host) -> None:
    report = check_plugin("hat_motr.plugin", "hat-motr", host=motr_host)
    assert report.deploy_models["motr_efficientnetb3_mot17"] == {
        "logits": (1, 512, 1),
        "boxes": (1, 512, 4),
        "hidden": (1, 512, 256),
        "query_pos": (1, 512, 256),
    }
    assert report.deploy_models["motr_efficientnetb3_mot17_qim"] == {"next_query_pos": (1, 256, 256)}
    assert report.deploy_models["motr_efficientnetb3_mot17_qim-tiny"] == {"next_query_pos": (1, 16, 64)}
    assert {"MotrModel", "MotrSequenceRunner", "MotrInferer", "MotMetric"} <= set(report.registered)


@pytest.fixture(scope="module")
def demo(motr_module_host, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("motr-demo")
    checked = check_plugin(
        "hat_motr.plugin",
        "hat-motr",
        host=motr_module_host,
        demo_overrides=SMALL,
        demo_synth_options=SYNTH,
        demo_work_dir=work,
    )
    return work, checked.demo_report


@pytest.mark.slow
def test_the_demo_runs_every_stage_with_both_graphs(demo) -> None:
    work, report = demo
    assert json.loads((work / "demo_report.json").read_text()) == report
    assert set(report["stages"]) == {"float", "calibration", "qat", "int_infer"}
    for values in report["stages"].values():
        assert set(values) == METRICS
        assert values["MOTA"] <= 1.0 and 0.0 <= values["IDF1"] <= 1.0 and values["IDSW"] >= 0
    for graph in ("", "qim/"):
        assert (work / "export" / graph / "model.onnx").is_file()
        assert (work / "compile" / graph / "perf.json").is_file()
    predicted = json.loads((work / "predict" / "int_infer.json").read_text())["metrics"]
    assert {"toolkit/MOTA", "MOTA/MOT17-02-FRCNN"} <= set(predicted)
    # every validation sequence's tracks in MOTChallenge format, for outside evaluators
    tracks = sorted((work / "predict" / "int_infer").glob("*.txt"))
    assert [p.stem for p in tracks] == ["MOT17-02-FRCNN", "MOT17-04-FRCNN"]
    pictures = [Path(p) for p in report["pictures"]]
    assert {p.name for p in pictures} >= {"tracks.avi", "tracks_strip.png"}
    frame = cv2.imread(str(next(p for p in pictures if p.name.endswith("_tracks.png"))))
    assert frame is not None and frame.shape == (180, 320, 3)


@pytest.mark.slow
def test_validate_compares_both_graphs_and_the_qim_config_selects_one(demo, motr_module_host) -> None:
    work, _ = demo
    result = run_cli("validate", "motr", "--work-dir", str(work))
    assert result.code == 0, result.err
    validated = json.loads((work / "validate.json").read_text())
    assert validated["graphs"] == ["model", "qim"]
    assert {"logits", "boxes", "hidden", "query_pos"} <= set(validated["within_one_step"])
    for side in ("torch_fixed_point", "onnxruntime"):
        assert set(validated["metrics"][side]) >= METRICS
    check = run_cli("check", "motr", "--work-dir", str(work))
    assert check.code == 0, check.err
    assert "(graph qim)" in check.out and (work / "export" / "qim" / "check.json").is_file()
    calops = run_cli("calops", "motr", "--config", "motr_efficientnetb3_mot17_qim-tiny", "--json")
    assert calops.code == 0, calops.err
    assert json.loads(calops.out)["total_flops"] > 0  # the QIM graph alone: one report
