"""The data side of fcos3d against the devkit: packed samples -> camera items -> targets ->
'perfect' head outputs -> post-process -> global boxes -> DetectionEval. A perfect model
must score a perfect mAP, which checks every frame change on the way (global -> ego ->
camera, resize, projection, and back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hat.data.collate import ListCollate
from hat.data.transforms import Normalize, Pad, ToTensor
from hat.nuscenes.constants import CAMERAS
from hat.nuscenes.geometry import project_points
from hat_fcos3d.dataset import NuscenesMonoDataset
from hat_fcos3d.metrics import NuscenesMonoMetric
from hat_fcos3d.model import FCOS3DPostProcess
from hat_fcos3d.transforms import RandomFlipCamera, ResizeCamera
from tests.fcos3d.helpers import NUM_ATTRS, NUM_CLASSES, STRIDES, make_target, oracle_outputs

pytestmark = pytest.mark.needs_nuscenes

COLLATE = ListCollate(
    list_keys=["gt_boxes_3d", "gt_labels", "gt_attributes"],
    keep_keys=["sample_token", "camera", "sensor2ego", "ego2global", "img_shape", "ori_shape", "pad_shape", "flipped"],
)


def test_items_are_one_camera_of_one_sample_with_visible_boxes(nuscenes_packed) -> None:
    dataset = NuscenesMonoDataset(str(nuscenes_packed / "val_lmdb"))
    assert len(dataset) == len(dataset.reader) * len(CAMERAS)
    cameras = [dataset[i]["camera"] for i in range(len(CAMERAS))]
    assert cameras == list(CAMERAS)
    assert len({dataset[i]["sample_token"] for i in range(len(CAMERAS))}) == 1
    seen = 0
    for i in range(len(dataset)):
        item = dataset[i]
        h, w = item["img"].shape[:2]
        boxes = item["gt_boxes_3d"]
        assert boxes.shape[1] == 9 and len(item["gt_labels"]) == len(boxes) == len(item["gt_attributes"])
        if len(boxes):
            assert (boxes[:, 2] >= 0.5).all()
            uv = project_points(boxes[:, :3], item["intrinsic"])
            assert ((uv >= 0) & (uv < [w, h])).all()
        seen += len(boxes)
    assert seen > 0


def test_resize_and_flip_keep_projections_on_the_same_pixels(nuscenes_packed) -> None:
    dataset = NuscenesMonoDataset(str(nuscenes_packed / "val_lmdb"))
    item = next(dataset[i] for i in range(len(dataset)) if len(dataset[i]["gt_boxes_3d"]) >= 2)
    rng = np.random.default_rng(0)
    before = project_points(item["gt_boxes_3d"][:, :3], item["intrinsic"])
    h, w = item["img"].shape[:2]
    resized = ResizeCamera((90, 128))(item, rng)
    sx, sy = resized["img"].shape[1] / w, resized["img"].shape[0] / h
    after = project_points(resized["gt_boxes_3d"][:, :3], resized["intrinsic"])
    np.testing.assert_allclose(after, before * [sx, sy], rtol=1e-4, atol=1e-3)

    flipped = RandomFlipCamera(p=1.0)(resized, rng)
    width = resized["img"].shape[1]
    mirrored = project_points(flipped["gt_boxes_3d"][:, :3], flipped["intrinsic"])
    np.testing.assert_allclose(mirrored[:, 0], width - after[:, 0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mirrored[:, 1], after[:, 1], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(flipped["img"], resized["img"][:, ::-1])
    back = RandomFlipCamera(p=1.0)(flipped, rng)  # flipping twice is the identity
    np.testing.assert_allclose(back["gt_boxes_3d"], resized["gt_boxes_3d"], atol=1e-5)
    np.testing.assert_allclose(back["intrinsic"], resized["intrinsic"], atol=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_oracle_detections_score_a_perfect_map_in_the_devkit(nuscenes_dataroot, nuscenes_packed, flip) -> None:
    # 4x the synthetic resolution: every box, even a far traffic cone, then covers a point
    # of the stride-8 grid, as FCOS assignment needs.
    size = (720, 1280)
    transforms = [ResizeCamera(size), Pad(size=size), ToTensor(), Normalize(128.0, 128.0)]
    if flip:  # a mirrored image with mirrored boxes is a scene as valid as the original
        transforms.insert(0, RandomFlipCamera(p=1.0))
    dataset = NuscenesMonoDataset(str(nuscenes_packed / "val_lmdb"), transforms)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, collate_fn=COLLATE)
    target = make_target()
    post = FCOS3DPostProcess(strides=STRIDES, num_classes=NUM_CLASSES, num_attrs=NUM_ATTRS, nms_pre=0)
    metric = NuscenesMonoMetric(str(nuscenes_dataroot), "v1.0-mini")
    sizes = [(size[0] // s + (size[0] % s > 0), size[1] // s + (size[1] % s > 0)) for s in STRIDES]
    for batch in loader:
        targets = target(
            sizes, batch["gt_boxes_3d"], batch["gt_labels"], batch["gt_attributes"], batch["intrinsic"], size
        )
        outputs = {"detections_cam": post.decode(oracle_outputs(targets, sizes), batch["intrinsic"])}
        if flip:  # undo the mirror on the detections: the metric compares with unmirrored ground truth
            for det in outputs["detections_cam"]:
                det["center"][:, 0] *= -1
                det["yaw"] = torch.atan2(torch.sin(torch.pi - det["yaw"]), torch.cos(torch.pi - det["yaw"]))
                det["velocity"][:, 0] *= -1
        metric.update(batch, outputs)
    result = metric.compute()
    assert result["mAP"] >= 0.99, result
    assert result["NDS"] >= 0.95, result
