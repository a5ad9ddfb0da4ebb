"""NuscenesMetric: ground truth given back scores (almost) perfectly through the devkit, also via the cameras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hat.data.pack import PackReader
from hat.nuscenes.constants import ATTRIBUTES, DETECTION_CLASSES
from hat.nuscenes.geometry import boxes_from_camera, boxes_to_camera, project_points
from hat.nuscenes.metric import NuscenesMetric, attribute_name
from hat.plugins import PluginHost

pytestmark = pytest.mark.needs_nuscenes


def oracle(sample: dict, keep=None) -> dict:
    """A sample's ground truth as one detection dict (score 1, the true attribute)."""
    boxes = sample["boxes"]
    mask = np.ones(len(boxes["label"]), bool) if keep is None else keep(boxes)
    return {
        "sample_token": sample["sample_token"],
        **{key: boxes[key][mask] for key in ("center", "size", "rotation", "velocity", "label", "attribute")},
        "score": np.ones(int(mask.sum())),
    }


@pytest.fixture(scope="module")
def val_samples(nuscenes_packed: Path) -> list[dict]:
    reader = PackReader(nuscenes_packed / "val_lmdb")
    return [reader[i] for i in range(len(reader))]


def evaluate(nuscenes_dataroot: Path, detections: list[dict], **kwargs) -> dict[str, float]:
    metric = NuscenesMetric(str(nuscenes_dataroot), **kwargs)
    metric.update({}, {"detections": detections})
    return metric.compute()


def test_ground_truth_scores_perfectly(nuscenes_dataroot: Path, val_samples: list[dict]) -> None:
    values = evaluate(nuscenes_dataroot, [oracle(s) for s in val_samples])
    assert values["mAP"] >= 0.99 and values["NDS"] >= 0.95, values
    assert all(values[f"AP/{c}"] >= 0.99 for c in DETECTION_CLASSES)
    assert values["mATE"] < 1e-6 and values["mAOE"] < 1e-6 and values["mAVE"] < 1e-6 and values["mAAE"] < 1e-6


def test_ground_truth_through_each_seeing_camera(nuscenes_dataroot: Path, val_samples: list[dict]) -> None:
    """Each box once, from a camera that sees its centre, round-tripped through that camera's frame."""
    detections = []
    for sample in val_samples:
        boxes = sample["boxes"]
        todo = np.ones(len(boxes["label"]), dtype=bool)
        for camera in sample["cameras"].values():
            cam = boxes_to_camera(boxes, camera["ego2global"], camera["sensor2ego"])
            uv = project_points(np.where(cam["center"][:, 2:] > 0, cam["center"], 1.0), camera["intrinsic"])
            inside = (cam["center"][:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < camera["width"])
            inside &= (uv[:, 1] >= 0) & (uv[:, 1] < camera["height"]) & todo
            todo &= ~inside
            back = boxes_from_camera(
                cam["center"][inside],
                cam["size"][inside],
                cam["yaw"][inside],
                cam["velocity"][inside][:, [0, 2]],
                camera["ego2global"],
                camera["sensor2ego"],
            )
            detections.append(
                {
                    "sample_token": sample["sample_token"],
                    **back,
                    "label": torch.as_tensor(boxes["label"][inside]),  # tensors are accepted too
                    "score": torch.ones(int(inside.sum())),
                    "attribute": boxes["attribute"][inside],
                }
            )
        assert not todo.any()  # the rig sees all around
    values = evaluate(nuscenes_dataroot, detections)
    assert values["mAP"] >= 0.99 and values["NDS"] >= 0.95, values


def test_two_classes_cap_map_at_a_fifth(nuscenes_dataroot: Path, val_samples: list[dict]) -> None:
    two = [DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")]
    values = evaluate(nuscenes_dataroot, [oracle(s, lambda b: np.isin(b["label"], two)) for s in val_samples])
    assert values["mAP"] == pytest.approx(0.2, abs=0.01)
    assert values["AP/car"] >= 0.99 and values["AP/truck"] == 0.0


def test_nothing_detected_scores_zero(nuscenes_dataroot: Path, val_samples: list[dict], tmp_path: Path) -> None:
    empty = [oracle(s, lambda b: np.zeros(len(b["label"]), bool)) for s in val_samples]
    values = evaluate(nuscenes_dataroot, empty, output_dir=str(tmp_path))
    assert values["mAP"] == 0.0 and values["NDS"] == 0.0 and values["mATE"] == 1.0
    results = json.loads((tmp_path / "results_nusc.json").read_text())["results"]
    assert sorted(results) == sorted(s["sample_token"] for s in val_samples) and not any(results.values())
    assert evaluate(nuscenes_dataroot, [])["NDS"] == 0.0  # no update at all: every token still present, empty


def test_results_merge_sort_cap_and_attributes(
    nuscenes_dataroot: Path, val_samples: list[dict], tmp_path: Path
) -> None:
    sample = val_samples[0]
    det = oracle(sample)
    n = len(det["label"])
    det["score"] = np.linspace(0.1, 0.9, n)
    halves = [{k: (v if k == "sample_token" else v[i::2]) for k, v in det.items()} for i in (0, 1)]
    metric = NuscenesMetric(str(nuscenes_dataroot), max_boxes_per_sample=5, output_dir=str(tmp_path))
    metric.update({}, {"detections": halves})
    metric.update({}, {"detections": [{**halves[0], "sample_token": "not-in-the-split"}]})
    results = metric.results([s["sample_token"] for s in val_samples])
    boxes = results[sample["sample_token"]]
    assert len(boxes) == 5 and [b["detection_score"] for b in boxes] == sorted(det["score"], reverse=True)[:5]
    assert all(results[s["sample_token"]] == [] for s in val_samples[1:])
    assert "not-in-the-split" not in results
    metric.compute()
    assert (tmp_path / "metrics_summary.json").is_file() and (tmp_path / "results_nusc.json").is_file()


def test_attribute_names() -> None:
    car, cone, bicycle = (DETECTION_CLASSES.index(c) for c in ("car", "traffic_cone", "bicycle"))
    assert attribute_name(car, ATTRIBUTES.index("vehicle.moving")) == "vehicle.moving"
    assert attribute_name(car, ATTRIBUTES.index("pedestrian.moving")) == "vehicle.parked"  # wrong class: default
    assert attribute_name(car, -1) == attribute_name(car, 8) == "vehicle.parked"
    assert attribute_name(bicycle, 8) == "cycle.without_rider"
    assert attribute_name(cone, ATTRIBUTES.index("vehicle.moving")) == ""


def test_registered_and_bad_arguments(nuscenes_dataroot: Path) -> None:
    host = PluginHost(entry_points=False)
    metric = host.registry.build({"type": "NuscenesMetric", "data_root": str(nuscenes_dataroot)})
    assert isinstance(metric, NuscenesMetric) and metric.eval_set == "mini_val" and metric.name == "NDS"
    assert NuscenesMetric(str(nuscenes_dataroot), version="v1.0-trainval").eval_set == "val"
    with pytest.raises(ValueError, match="unknown nuScenes version"):
        NuscenesMetric(str(nuscenes_dataroot), version="v9")
    with pytest.raises(ValueError, match="do not have 1 rows"):
        metric.update({}, {"detections": [{**oracle_stub(), "score": np.ones(3)}]})


def oracle_stub() -> dict:
    return {
        "sample_token": "t",
        "center": np.zeros((1, 3)),
        "size": np.ones((1, 3)),
        "rotation": np.array([[1.0, 0, 0, 0]]),
        "velocity": np.zeros((1, 2)),
        "label": np.zeros(1, np.int64),
        "score": np.ones(1),
        "attribute": np.full(1, -1),
    }
