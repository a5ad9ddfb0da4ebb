"""The synthetic dataroot: the devkit loads it, and it has what training and evaluation need."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from hat.errors import UserError
from hat.nuscenes.constants import CAMERAS, CLASS_ATTRIBUTES, DETECTION_CLASSES, LIDAR
from hat.nuscenes.devkit import TABLES
from hat.nuscenes.synth import MINI_TRAIN, MINI_VAL, generate_nuscenes

pytestmark = pytest.mark.needs_nuscenes


def test_all_tables_and_the_real_mini_scene_names(nuscenes_dataroot: Path, nusc, nuscenes_synth_options) -> None:
    from nuscenes.utils.splits import create_splits_scenes

    assert sorted(p.stem for p in (nuscenes_dataroot / "v1.0-mini").glob("*.json")) == sorted(TABLES)
    names = [s["name"] for s in nusc.scene]
    splits = create_splits_scenes()
    assert sorted(names) == sorted(splits["mini_train"] + splits["mini_val"])
    assert set(MINI_TRAIN) == set(splits["mini_train"]) and set(MINI_VAL) == set(splits["mini_val"])
    assert len(nusc.sample) == 10 * nuscenes_synth_options["samples_per_scene"]
    for record in nusc.map:
        assert (nuscenes_dataroot / record["filename"]).is_file()
    assert {log["token"] for log in nusc.log} == {t for m in nusc.map for t in m["log_tokens"]}


def test_every_class_in_every_split_under_real_category_names(nusc) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    for split in ("mini_train", "mini_val"):
        scenes = {s["token"] for s in nusc.scene if s["name"] in splits[split]}
        names = Counter(
            category_to_detection_name(a["category_name"])
            for a in nusc.sample_annotation
            if nusc.get("sample", a["sample_token"])["scene_token"] in scenes
        )
        assert set(names) == set(DETECTION_CLASSES), (split, names)


def test_key_frames_sensors_and_images(nuscenes_dataroot: Path, nusc, nuscenes_synth_options) -> None:
    width = nuscenes_synth_options["image_width"]
    height = round(width * 9 / 16)
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, LIDAR}
        for channel in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][channel])
            assert sd["is_key_frame"] and (sd["width"], sd["height"]) == (width, height)
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            assert 1.4 < calib["translation"][2] < 1.7  # cameras about 1.5 m above the ground
            assert np.asarray(calib["camera_intrinsic"]).shape == (3, 3)
        image = cv2.imread(str(nuscenes_dataroot / nusc.get("sample_data", sample["data"]["CAM_FRONT"])["filename"]))
        assert image.shape == (height, width, 3)
        assert (nuscenes_dataroot / nusc.get("sample_data", sample["data"][LIDAR])["filename"]).is_file()


def test_prev_next_chains_and_velocities(nusc) -> None:
    for scene in nusc.scene:
        tokens, token = [], scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
        assert len(tokens) == scene["nbr_samples"] and tokens[-1] == scene["last_sample_token"]
        first = nusc.get("sample", tokens[0])
        for channel in (*CAMERAS, LIDAR):  # each sensor's key frames chain through the scene
            sd, count = nusc.get("sample_data", first["data"][channel]), 1
            while sd["next"]:
                sd, count = nusc.get("sample_data", sd["next"]), count + 1
            assert count == len(tokens)
    for instance in nusc.instance:
        ann, count = nusc.get("sample_annotation", instance["first_annotation_token"]), 1
        while ann["next"]:
            ann, count = nusc.get("sample_annotation", ann["next"]), count + 1
        assert count == instance["nbr_annotations"] and ann["token"] == instance["last_annotation_token"]
    speeds = np.array([np.linalg.norm(nusc.box_velocity(a["token"])[:2]) for a in nusc.sample_annotation])
    assert np.isfinite(speeds).all()
    assert (speeds > 0.5).mean() > 0.1 and (speeds == 0).mean() > 0.1  # some move, some are parked


def test_attributes_points_and_ranges(nusc) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    for ann in nusc.sample_annotation:
        cls = category_to_detection_name(ann["category_name"])
        assert len(ann["attribute_tokens"]) <= 1 and ann["num_lidar_pts"] >= 1
        names = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        if cls in ("barrier", "traffic_cone"):
            assert names == []
        else:
            assert len(names) == 1 and names[0] in CLASS_ATTRIBUTES[cls]
        sample = nusc.get("sample", ann["sample_token"])
        ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"][LIDAR])["ego_pose_token"])
        dist = np.linalg.norm(np.subtract(ann["translation"][:2], ego["translation"][:2]))
        assert dist <= {"barrier": 30, "traffic_cone": 30, "pedestrian": 40, "bicycle": 40, "motorcycle": 40}.get(
            cls, 50
        )


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed_and_refuses_a_used_dst(tmp_path: Path) -> None:
    tiny = {"samples_per_scene": 2, "objects_per_sample": 10, "image_width": 64}
    generate_nuscenes(tmp_path / "a", seed=1, **tiny)
    generate_nuscenes(tmp_path / "b", seed=1, **tiny)
    generate_nuscenes(tmp_path / "c", seed=2, **tiny)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    with pytest.raises(UserError, match="already exists"):
        generate_nuscenes(tmp_path / "a", seed=1, **tiny)
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")] == []  # no leftovers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples_per_scene": 1}, "samples_per_scene"),
        ({"objects_per_sample": 5}, "one object of every detection class"),
        ({"image_width": 10}, "image_width"),
        ({"version": "v1.0-test"}, "cannot synthesize"),
    ],
)
def test_bad_options_are_user_errors(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate_nuscenes(tmp_path / "x", seed=0, **options)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
