"""FCOS3DLoss: named, finite terms; zero regression error for perfect codes; gradients reach the head."""

from __future__ import annotations

import pytest
import torch

from hat_fcos3d.model import FCOS3DHead, FCOS3DLoss
from hat_fcos3d.model.loss import LOSS_NAMES, sigmoid_focal_loss
from tests.fcos3d.helpers import (
    IMAGE_HW,
    NUM_ATTRS,
    NUM_CLASSES,
    STRIDES,
    featmap_sizes,
    make_target,
    oracle_outputs,
    random_scene,
    unflatten_levels,
)

REG_LOSSES = ("loss_offset", "loss_depth", "loss_size", "loss_rotsin", "loss_velo")


def batch_targets(num_images: int = 2) -> dict[str, torch.Tensor]:
    scenes = [random_scene(5, seed=20 + b) for b in range(num_images)]
    return make_target()(
        featmap_sizes(),
        [s["gt_boxes_3d"] for s in scenes],
        [s["gt_labels"] for s in scenes],
        [s["gt_attributes"] for s in scenes],
        torch.stack([s["intrinsic"] for s in scenes]),
        IMAGE_HW,
    )


def test_perfect_predictions_give_zero_regression_and_small_classification_loss() -> None:
    targets = batch_targets()
    outputs = oracle_outputs(targets, featmap_sizes())  # rotations off by pi at every other point
    c = targets["centerness_targets"].clamp(1e-6, 1 - 1e-6)
    outputs["centerness"] = unflatten_levels(torch.log(c / (1 - c)).unsqueeze(-1), featmap_sizes())
    losses = FCOS3DLoss()(outputs, targets)
    assert set(losses) == set(LOSS_NAMES)
    for name in REG_LOSSES:
        assert float(losses[name]) < 1e-6, name  # sin(p - t) is 0 for p = t + pi too
    for name in ("loss_cls", "loss_dir", "loss_attr"):
        assert float(losses[name]) < 1e-6, name
    # centerness targets are soft (< 1): the best BCE is their mean binary entropy, not 0
    pos = targets["pos_mask"]
    c = targets["centerness_targets"][pos]
    entropy = -(c * torch.log(c) + (1 - c) * torch.log(1 - c)).mean()
    assert float(losses["loss_centerness"]) == pytest.approx(float(entropy), rel=1e-4)


def test_losses_are_finite_positive_and_reach_every_head_branch() -> None:
    torch.manual_seed(0)
    head = FCOS3DHead(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, strides=STRIDES, num_attrs=NUM_ATTRS)
    features = [torch.randn(2, 8, h, w) for h, w in featmap_sizes()]
    losses = FCOS3DLoss()(head(features), batch_targets())
    for name, value in losses.items():
        assert value.dim() == 0 and bool(torch.isfinite(value)) and float(value.detach()) > 0, name
    sum(losses.values()).backward()
    predictors = ["conv_cls", "conv_attr", "conv_dir", "conv_centerness"] + [f"conv_regs.{i}" for i in range(5)]
    grads = dict(head.named_parameters())
    # tied weights appear once in named_parameters(), under level 0's name
    names = [f"levels.0.{p}.weight" for p in predictors]
    for name in [*names, "levels.0.cls_convs.0.conv.weight", "levels.0.reg_convs.0.conv.weight", "scales"]:
        assert grads[name].grad is not None and float(grads[name].grad.abs().sum()) > 0, name


def test_no_positive_points() -> None:
    targets = batch_targets()
    for key in ("pos_mask",):
        targets[key] = torch.zeros_like(targets[key])
    targets["labels"] = torch.full_like(targets["labels"], NUM_CLASSES)
    head = FCOS3DHead(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, strides=STRIDES, num_attrs=NUM_ATTRS)
    losses = FCOS3DLoss()(head([torch.randn(2, 8, h, w) for h, w in featmap_sizes()]), targets)
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert float(losses["loss_cls"].detach()) > 0 and all(float(losses[n].detach()) == 0 for n in REG_LOSSES)
    sum(losses.values()).backward()  # still connected to the graph


def test_code_weights_and_options() -> None:
    targets = batch_targets()
    outputs = oracle_outputs(targets, featmap_sizes())
    outputs["depth"] = [m + 1.0 for m in outputs["depth"]]  # every depth off by e^1
    base = FCOS3DLoss()(outputs, targets)
    # smooth-L1 of an error of 1 (beta 1/9) is 1 - 1/18 per positive
    assert float(base["loss_depth"]) == pytest.approx(1 - 1 / 18, rel=1e-4)
    half = FCOS3DLoss(code_weights=(1, 1, 0.5, 1, 1, 1, 1, 0.05, 0.05))(outputs, targets)
    assert float(half["loss_depth"]) == pytest.approx(0.5 * float(base["loss_depth"]), rel=1e-5)
    weighted = FCOS3DLoss(loss_weights={"loss_depth": 2.0})(outputs, targets)
    assert float(weighted["loss_depth"]) == pytest.approx(2 * float(base["loss_depth"]), rel=1e-5)
    with pytest.raises(ValueError, match="loss_weights"):
        FCOS3DLoss(loss_weights={"loss_dpth": 1.0})
    with pytest.raises(ValueError, match="code_weights"):
        FCOS3DLoss(code_weights=(1.0,) * 7)
    # "none" attributes: counted by default, ignored on request
    wrong_attr = dict(outputs)
    wrong_attr["attr"] = [-m for m in outputs["attr"]]
    counted = FCOS3DLoss()(wrong_attr, targets)["loss_attr"]
    ignored = FCOS3DLoss(attr_ignore_none=True)(wrong_attr, targets)["loss_attr"]
    assert float(counted) > 0 and float(ignored) > 0


def test_focal_loss_matches_its_definition() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = torch.stack(
        [-0.25 * (1 - p[0]) ** 2 * torch.log(p[0]), -0.75 * p[1] ** 2 * torch.log(1 - p[1]),
         -0.75 * p[2] ** 2 * torch.log(1 - p[2])]
    )  # fmt: skip
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)
