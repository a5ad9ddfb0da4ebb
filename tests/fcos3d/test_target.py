"""FCOS3DTarget: regress ranges, centre sampling, ambiguity, centerness and code weights."""

from __future__ import annotations

import math

import torch

from hat_fcos3d.model.coder import boxes_2d_from_3d, project_points
from hat_fcos3d.model.target import level_points
from tests.fcos3d.helpers import IMAGE_HW, STRIDES, featmap_sizes, intrinsic, make_target, random_scene


def level_of_points() -> torch.Tensor:
    return torch.cat([torch.full((h * w,), i) for i, (h, w) in enumerate(featmap_sizes())])


def run(boxes: torch.Tensor, labels=None, attributes=None, target=None, boxes_2d=None) -> dict[str, torch.Tensor]:
    target = target or make_target()
    n = boxes.shape[0]
    labels = torch.zeros(n, dtype=torch.long) if labels is None else labels
    out = target(
        featmap_sizes(),
        [boxes],
        [labels],
        None if attributes is None else [attributes],
        intrinsic()[None],
        IMAGE_HW,
        None if boxes_2d is None else [boxes_2d],
    )
    return {k: v[0] for k, v in out.items()}


def box_facing_camera(center, size=(1.8, 4.5, 1.6), yaw=0.0, velocity=(1.0, 2.0)) -> torch.Tensor:
    return torch.tensor([[*center, *size, yaw, *velocity]], dtype=torch.float32)


def test_points_layout() -> None:
    points = level_points([(2, 3)], [16])[0]
    assert points.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]


def test_big_boxes_go_to_coarse_levels_small_to_fine() -> None:
    levels = level_of_points()
    near = run(box_facing_camera((0.0, 0.0, 6.0)))  # 4.5 m long at 6 m: ~225 px wide
    far = run(box_facing_camera((0.0, 0.0, 40.0)))  # ~34 px wide
    assert int(near["pos_mask"].sum()) > 0 and int(far["pos_mask"].sum()) > 0
    assert set(levels[near["pos_mask"]].tolist()) <= {2, 3}
    assert set(levels[far["pos_mask"]].tolist()) == {0}
    # and the regress range holds for every positive: max distance to the 2D box sides
    target = make_target()
    for out, box in ((near, box_facing_camera((0.0, 0.0, 6.0))), (far, box_facing_camera((0.0, 0.0, 40.0)))):
        b2d = boxes_2d_from_3d(box[:, :3], box[:, 3:6], box[:, 6], intrinsic(), IMAGE_HW)[0]
        points = torch.cat(level_points(featmap_sizes(), STRIDES))[out["pos_mask"]]
        reach = torch.stack(
            [points[:, 0] - b2d[0], points[:, 1] - b2d[1], b2d[2] - points[:, 0], b2d[3] - points[:, 1]]
        )
        reach = reach.amax(dim=0)
        for lvl, r in zip(levels[out["pos_mask"]].tolist(), reach.tolist(), strict=True):
            lo, hi = target.regress_ranges[lvl]
            assert lo <= r <= hi


def test_centre_sampling_limits_positives_to_the_radius() -> None:
    box = box_facing_camera((0.5, 0.2, 8.0))
    sampled = run(box)
    unsampled = run(box, target=make_target(center_sampling=False))
    assert int(unsampled["pos_mask"].sum()) > int(sampled["pos_mask"].sum()) > 0
    center_2d = project_points(box[:, :3], intrinsic())[0]
    points = torch.cat(level_points(featmap_sizes(), STRIDES))
    strides = torch.tensor(STRIDES, dtype=torch.float32)[level_of_points()]
    delta = (points - center_2d).abs().amax(dim=-1)
    assert bool((delta[sampled["pos_mask"]] < 1.5 * strides[sampled["pos_mask"]]).all())


def test_points_outside_every_box_are_background() -> None:
    out = run(box_facing_camera((0.0, 0.0, 20.0)))
    points = torch.cat(level_points(featmap_sizes(), STRIDES))
    corner = (points[:, 0] < 40) & (points[:, 1] < 40)  # far from a box in the image centre
    assert not bool(out["pos_mask"][corner].any())
    assert bool((out["labels"][~out["pos_mask"]] == 10).all())
    assert float(out["bbox_weights"][~out["pos_mask"]].abs().sum()) == 0
    assert bool((out["matched"][~out["pos_mask"]] == -1).all())
    empty = run(torch.zeros(0, 9))
    assert not bool(empty["pos_mask"].any())


def test_ambiguous_points_take_the_nearest_projected_centre() -> None:
    # two overlapping boxes side by side at the same depth
    # (same 2D box given for both, so every point is a candidate of both or of neither)
    boxes = torch.cat([box_facing_camera((-0.4, 0.0, 20.0)), box_facing_camera((0.4, 0.0, 20.0))])
    shared_2d = torch.tensor([[100.0, 80.0, 280.0, 170.0]]).repeat(2, 1)
    out = run(boxes, labels=torch.tensor([3, 7]), boxes_2d=shared_2d, target=make_target(center_sampling=False))
    pos = out["pos_mask"]
    assert set(out["matched"][pos].tolist()) == {0, 1}
    points = torch.cat(level_points(featmap_sizes(), STRIDES))[pos]
    centers = project_points(boxes[:, :3], intrinsic())
    nearest = torch.cdist(points, centers).argmin(dim=1)
    assert torch.equal(out["matched"][pos], nearest)
    assert torch.equal(out["labels"][pos], torch.tensor([3, 7])[nearest])


def test_centerness_offsets_direction_and_attributes() -> None:
    scene = random_scene(5, seed=7)
    out = run(scene["gt_boxes_3d"], scene["gt_labels"], scene["gt_attributes"])
    pos = out["pos_mask"]
    assert set(out["matched"][pos].tolist()) == set(range(5))  # every box has points
    points = torch.cat(level_points(featmap_sizes(), STRIDES))[pos]
    strides = torch.tensor(STRIDES, dtype=torch.float32)[level_of_points()][pos]
    centers = project_points(scene["gt_boxes_3d"][:, :3], intrinsic())[out["matched"][pos]]
    offsets = (centers - points) / strides[:, None]
    torch.testing.assert_close(out["bbox_targets"][pos, :2], offsets)
    expected = torch.exp(-2.5 * (centers - points).norm(dim=-1) / (math.sqrt(2) * strides))
    torch.testing.assert_close(out["centerness_targets"][pos], expected)
    assert float(out["centerness_targets"][pos].min()) > 0 and float(out["centerness_targets"][pos].max()) <= 1
    attrs = scene["gt_attributes"][out["matched"][pos]]
    torch.testing.assert_close(out["attr_targets"][pos], torch.where(attrs < 0, 8, attrs))
    # box 0 has no velocity: zero target, zero weight on the velocity codes only
    of_box0 = out["matched"] == 0
    assert float(out["bbox_weights"][of_box0][:, 7:].abs().sum()) == 0
    assert float(out["bbox_targets"][of_box0][:, 7:].abs().sum()) == 0
    assert bool((out["bbox_weights"][of_box0][:, :7] == 1).all())
    assert bool((out["bbox_weights"][pos & ~of_box0] == 1).all())
    assert bool(torch.isfinite(out["bbox_targets"]).all())


def test_given_2d_boxes_are_used() -> None:
    box = box_facing_camera((0.0, 0.0, 20.0))
    tiny_2d = project_points(box[:, :3], intrinsic()).repeat(1, 2) + torch.tensor([[-3.0, -3.0, 3.0, 3.0]])
    out = run(box, boxes_2d=tiny_2d, target=make_target(center_sampling=False))
    points = torch.cat(level_points(featmap_sizes(), STRIDES))[out["pos_mask"]]
    assert bool(((points - project_points(box[:, :3], intrinsic())).abs() < 3).all())
