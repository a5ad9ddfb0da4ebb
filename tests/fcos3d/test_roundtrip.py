"""Oracle round trip: ground truth -> targets -> 'perfect' head outputs -> post-process
-> the same camera-frame boxes, each exactly once after NMS."""

from __future__ import annotations

import math

import pytest
import torch

from hat_fcos3d.model import FCOS3DPostProcess, flatten_outputs
from hat_fcos3d.model.coder import wrap_angle
from tests.fcos3d.helpers import (
    IMAGE_HW,
    NUM_ATTRS,
    NUM_CLASSES,
    STRIDES,
    featmap_sizes,
    make_target,
    oracle_outputs,
    random_scene,
)


def scenes_and_outputs(num_images: int = 2, boxes_per_image: int = 6):
    scenes = [random_scene(boxes_per_image, seed=10 + b) for b in range(num_images)]
    intrinsics = torch.stack([s["intrinsic"] for s in scenes])
    targets = make_target()(
        featmap_sizes(),
        [s["gt_boxes_3d"] for s in scenes],
        [s["gt_labels"] for s in scenes],
        [s["gt_attributes"] for s in scenes],
        intrinsics,
        IMAGE_HW,
    )
    for b in range(num_images):  # the oracle can only recover boxes that own points
        assert set(targets["matched"][b][targets["pos_mask"][b]].tolist()) == set(range(boxes_per_image))
    return scenes, intrinsics, targets, oracle_outputs(targets, featmap_sizes())


def match(detections: dict[str, torch.Tensor], scene: dict[str, torch.Tensor]) -> list[int]:
    """For each ground-truth box, the detections within 1 mm of its centre; checks their fields."""
    boxes = scene["gt_boxes_3d"]
    counts = []
    for i, box in enumerate(boxes):
        hits = torch.nonzero((detections["center"] - box[:3]).norm(dim=-1) < 1e-3, as_tuple=True)[0]
        counts.append(len(hits))
        for j in hits.tolist():
            torch.testing.assert_close(detections["size"][j], box[3:6], rtol=1e-5, atol=1e-5)
            assert float(wrap_angle(detections["yaw"][j] - box[6]).abs()) < 1e-4
            velocity = torch.nan_to_num(box[7:9])  # unknown velocities are trained (and decode) as 0
            torch.testing.assert_close(detections["velocity"][j], velocity, rtol=1e-5, atol=1e-5)
            assert int(detections["label"][j]) == int(scene["gt_labels"][i])
            attribute = int(scene["gt_attributes"][i])
            assert int(detections["attribute"][j]) == (NUM_ATTRS - 1 if attribute < 0 else attribute)
            assert float(detections["score"][j]) > 0.99
    return counts


def test_oracle_without_nms_decodes_every_positive_point_to_its_box() -> None:
    scenes, intrinsics, targets, outputs = scenes_and_outputs()
    post = FCOS3DPostProcess(strides=STRIDES, use_rotate_nms=False, max_per_img=0, nms_pre=0)
    detections = post.decode(outputs, intrinsics)
    for b, scene in enumerate(scenes):
        counts = match(detections[b], scene)
        matched = targets["matched"][b][targets["pos_mask"][b]]
        assert counts == [int((matched == i).sum()) for i in range(len(counts))]
        assert len(detections[b]["score"]) == sum(counts)  # nothing else decoded (the background is silent)


def test_oracle_round_trip_with_rotated_nms_recovers_each_box_once() -> None:
    pytest.importorskip("hat.ops.rotated_nms")
    scenes, intrinsics, _, outputs = scenes_and_outputs()
    post = FCOS3DPostProcess(strides=STRIDES, num_classes=NUM_CLASSES, num_attrs=NUM_ATTRS)
    # through the flat, exported form as int_infer would see it (numpy arrays from onnxruntime)
    flat = {k: v.numpy() for k, v in flatten_outputs(outputs).items()}
    result = post(flat, {"intrinsic": intrinsics})
    for b, scene in enumerate(scenes):
        detections = result["detections_cam"][b]
        assert match(detections, scene) == [1] * len(scene["gt_labels"])
        assert len(detections["score"]) == len(scene["gt_labels"])
        assert bool((detections["score"][:-1] >= detections["score"][1:]).all())


def test_postprocess_thresholds_and_caps() -> None:
    _, intrinsics, _, outputs = scenes_and_outputs(num_images=1)
    silent = {k: list(v) for k, v in outputs.items()}
    silent["cls"] = [torch.full_like(m, -20.0) for m in outputs["cls"]]
    empty = FCOS3DPostProcess(strides=STRIDES, use_rotate_nms=False).decode(silent, intrinsics)[0]
    assert all(v.shape[0] == 0 for v in empty.values())
    assert empty["center"].shape == (0, 3) and empty["label"].dtype == torch.long
    capped = FCOS3DPostProcess(strides=STRIDES, use_rotate_nms=False, max_per_img=3).decode(outputs, intrinsics)[0]
    assert capped["score"].shape == (3,)
    few = FCOS3DPostProcess(strides=STRIDES, use_rotate_nms=False, nms_pre=1, max_per_img=0).decode(outputs, intrinsics)
    assert few[0]["score"].shape[0] <= len(STRIDES)


def test_bev_boxes_convention() -> None:
    from hat_fcos3d.model.postprocess import bev_boxes

    # a box heading towards the camera (yaw pi/2: heading (0, 0, -1)) and one heading right (yaw 0)
    center = torch.tensor([[1.0, 0.5, 10.0], [-2.0, 0.0, 5.0]])
    size = torch.tensor([[1.8, 4.5, 1.6], [0.6, 0.8, 1.7]])
    yaw = torch.tensor([math.pi / 2, 0.0])
    bev = bev_boxes(center, size, yaw)
    torch.testing.assert_close(bev[:, :2], torch.tensor([[1.0, 10.0], [-2.0, 5.0]]))
    torch.testing.assert_close(bev[:, 2:4], size[:, :2])
    # BEV heading (cos a, sin a) in (x, z) equals the camera heading (cos yaw, -sin yaw)
    torch.testing.assert_close(torch.stack([torch.cos(bev[:, 4]), torch.sin(bev[:, 4])], -1),
                               torch.stack([torch.cos(yaw), -torch.sin(yaw)], -1))  # fmt: skip


def test_nms_is_class_aware() -> None:
    pytest.importorskip("hat.ops.rotated_nms")
    scenes, intrinsics, targets, outputs = scenes_and_outputs(num_images=1)
    # every positive point also claims class (label + 1) % 10 a little less confidently
    pos = targets["pos_mask"][0]
    second = (targets["labels"][0] + 1) % NUM_CLASSES
    flat_cls = torch.cat([m[0].reshape(NUM_CLASSES, -1).T for m in outputs["cls"]])  # (P, C)
    flat_cls[pos, second[pos]] = 2.0
    start = 0
    for m in outputs["cls"]:
        h, w = m.shape[-2:]
        m[0] = flat_cls[start : start + h * w].T.reshape(NUM_CLASSES, h, w)
        start += h * w
    detections = FCOS3DPostProcess(strides=STRIDES).decode(outputs, intrinsics)[0]
    gt_labels = scenes[0]["gt_labels"]
    assert len(detections["score"]) == 2 * len(gt_labels)  # one box per (object, class)
    assert sorted(detections["label"].tolist()) == sorted(gt_labels.tolist() + ((gt_labels + 1) % 10).tolist())
