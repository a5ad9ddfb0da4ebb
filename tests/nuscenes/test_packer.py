"""`hat pack nuscenes`: one record per sample of the split, in the documented layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hat.data.dataset import decode_image
from hat.data.pack import PackReader
from hat.data.packer import run_pack
from hat.errors import UserError
from hat.nuscenes.constants import ATTRIBUTES, CAMERAS, DETECTION_CLASSES, LIDAR
from hat.nuscenes.geometry import transform_matrix
from hat.nuscenes.packer import NuscenesPacker
from hat.nuscenes.synth import generate_nuscenes

pytestmark = pytest.mark.needs_nuscenes

BOX_FIELDS = {
    "center": (np.float64, 3),
    "size": (np.float64, 3),
    "rotation": (np.float64, 4),
    "velocity": (np.float64, 2),
    "label": (np.int64, None),
    "attribute": (np.int64, None),
    "num_lidar_pts": (np.int64, None),
}


def split_sample_tokens(nusc, split: str) -> list[str]:
    from nuscenes.utils.splits import create_splits_scenes

    names = set(create_splits_scenes()[split])
    return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in names]


@pytest.mark.parametrize(("split", "devkit_split"), [("train", "mini_train"), ("val", "mini_val")])
def test_sample_count_equals_the_devkit_count(nuscenes_packed: Path, nusc, split: str, devkit_split: str) -> None:
    reader = PackReader(nuscenes_packed / f"{split}_lmdb")
    expected = split_sample_tokens(nusc, devkit_split)
    assert len(reader) == len(expected) > 0
    assert sorted(reader[i]["sample_token"] for i in range(len(reader))) == sorted(expected)
    assert reader.meta["version"] == "v1.0-mini" and reader.meta["split"] == split
    assert reader.meta["devkit_split"] == devkit_split and reader.meta["classes"] == list(DETECTION_CLASSES)


def test_records_follow_the_layout(nuscenes_packed: Path, nusc) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    reader = PackReader(nuscenes_packed / "val_lmdb")
    for index in range(len(reader)):
        record = reader[index]
        assert set(record) == {"sample_token", "scene_name", "timestamp", "lidar_ego2global", "cameras", "boxes"}
        sample = nusc.get("sample", record["sample_token"])
        assert record["timestamp"] == sample["timestamp"] and record["scene_name"].startswith("scene-")
        assert record["lidar_ego2global"].dtype == np.float64 and record["lidar_ego2global"].shape == (4, 4)
        lidar_pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"][LIDAR])["ego_pose_token"])
        np.testing.assert_allclose(
            record["lidar_ego2global"], transform_matrix(lidar_pose["rotation"], lidar_pose["translation"])
        )
        assert list(record["cameras"]) == list(CAMERAS)
        for channel, camera in record["cameras"].items():
            sd = nusc.get("sample_data", sample["data"][channel])
            assert camera["sample_data_token"] == sd["token"] and camera["filename"] == sd["filename"]
            image = decode_image(camera["image"])
            assert image.shape == (camera["height"], camera["width"], 3)
            for key, shape in (("intrinsic", (3, 3)), ("sensor2ego", (4, 4)), ("ego2global", (4, 4))):
                assert camera[key].dtype == np.float64 and camera[key].shape == shape
            pose = nusc.get("ego_pose", sd["ego_pose_token"])  # each camera's own pose, a few ms off the lidar's
            np.testing.assert_allclose(camera["ego2global"], transform_matrix(pose["rotation"], pose["translation"]))
            assert pose["timestamp"] == sd["timestamp"] != lidar_pose["timestamp"]
        boxes = record["boxes"]
        n = len(boxes["label"])
        categories = {t: nusc.get("sample_annotation", t)["category_name"] for t in sample["anns"]}
        anns = [t for t, name in categories.items() if category_to_detection_name(name)]
        assert n == len(anns) > 0 and boxes["annotation_token"] == anns
        for key, (dtype, width) in BOX_FIELDS.items():
            assert boxes[key].dtype == dtype and boxes[key].shape == ((n, width) if width else (n,)), key
        assert len(boxes["instance_token"]) == n
        assert ((boxes["label"] >= 0) & (boxes["label"] < len(DETECTION_CLASSES))).all()
        assert ((boxes["attribute"] >= -1) & (boxes["attribute"] < len(ATTRIBUTES))).all()
        assert (boxes["num_lidar_pts"] >= 1).all()
        for i, token in enumerate(anns):
            ann = nusc.get("sample_annotation", token)
            np.testing.assert_allclose(boxes["center"][i], ann["translation"])
            np.testing.assert_allclose(boxes["velocity"][i], nusc.box_velocity(token)[:2])
            assert DETECTION_CLASSES[boxes["label"][i]] == category_to_detection_name(ann["category_name"])
            names = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            assert (ATTRIBUTES[boxes["attribute"][i]] if boxes["attribute"][i] >= 0 else None) == (
                names[0] if names else None
            )
        no_attribute = np.isin(boxes["label"], [DETECTION_CLASSES.index(c) for c in ("barrier", "traffic_cone")])
        assert (boxes["attribute"][no_attribute] == -1).all()


def test_workers_write_the_same_pack(nuscenes_dataroot: Path, nuscenes_packed: Path, tmp_path: Path) -> None:
    run_pack(NuscenesPacker(nuscenes_dataroot, "val"), tmp_path, num_workers=2)
    ours, reference = PackReader(tmp_path / "val_lmdb"), PackReader(nuscenes_packed / "val_lmdb")
    assert [ours.raw(i) for i in range(len(ours))] == [reference.raw(i) for i in range(len(reference))]


def test_trainval_version_uses_the_train_and_val_scene_lists(tmp_path: Path) -> None:
    from nuscenes.utils.splits import create_splits_scenes

    root = tmp_path / "raw"
    generate_nuscenes(root, seed=3, version="v1.0-trainval", samples_per_scene=2, objects_per_sample=10, image_width=64)
    splits = create_splits_scenes()
    for split, scenes in (("train", 8), ("val", 2)):
        summary = run_pack(NuscenesPacker(root, split, version="v1.0-trainval"), tmp_path / "packed")
        assert summary.num_samples == 2 * scenes
        reader = PackReader(summary.path)
        assert {reader[i]["scene_name"] for i in range(len(reader))} <= set(splits[split])
    with pytest.raises(UserError, match="missing") as error:  # the mini tables are not there
        NuscenesPacker(root, "val").records()
    assert "pass --version v1.0-trainval" in str(error.value)


def test_bad_version_split_and_dataroot(tmp_path: Path, nuscenes_dataroot: Path) -> None:
    with pytest.raises(UserError, match="unknown nuScenes version"):
        NuscenesPacker(nuscenes_dataroot, "val", version="v2")
    with pytest.raises(UserError, match="has no split 'test'"):
        NuscenesPacker(nuscenes_dataroot, "test")
    with pytest.raises(UserError, match="missing attribute.json"):
        run_pack(NuscenesPacker(tmp_path, "val"), tmp_path / "out")
    assert not (tmp_path / "out" / "val_lmdb").exists()
