"""FCOS3DLoss: focal classification, weighted smooth-L1 regression, and the small heads.

All terms are normalised by the number of positive points in the batch (at least 1),
so their scale does not depend on how many objects an image holds:

* ``loss_cls``: sigmoid focal loss (alpha 0.25, gamma 2) over every point and class,
  one-hot targets (background: all zeros).
* ``loss_offset``, ``loss_depth``, ``loss_size``, ``loss_rotsin``, ``loss_velo``:
  smooth-L1 (beta 1/9, the recipe's) on the positives' codes times ``code_weights``
  times the target's per-code weight (0 for unknown velocities). The rotation is
  compared through the sin-difference trick: ``sin(p) cos(t)`` against ``cos(p) sin(t)``,
  whose difference is ``sin(p - t)`` — zero for ``p = t`` and ``p = t + pi``, so the
  regression learns the heading modulo pi and the direction classifier the rest.
* ``loss_dir``: cross-entropy of the direction bin on positives.
* ``loss_attr``: cross-entropy of the attribute on positives. "none" (the last class)
  is a class like the others by default (the reference recipe trains it: it tells a
  parked-looking car from a barrier); ``attr_ignore_none`` drops those points instead.
* ``loss_centerness``: binary cross-entropy of the centerness logit on positives.

The default ``code_weights`` are the reference recipe's: 1 for offset, depth, size and
rotation, 0.05 for velocity. (mmdet3d weights depth 0.2 because it regresses depth in
metres; here depth is log depth, as scale-free as the other codes.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hat.registry import register_type
from hat_fcos3d.model.coder import CODE_SIZE, CODE_SLICES
from hat_fcos3d.model.head import REG_GROUPS, flatten_levels

#: Loss name of each regression group.
REG_LOSS_NAMES = {"offset": "loss_offset", "depth": "loss_depth", "size": "loss_size", "rot": "loss_rotsin",
                  "velo": "loss_velo"}  # fmt: skip
LOSS_NAMES = ("loss_cls", *REG_LOSS_NAMES.values(), "loss_dir", "loss_attr", "loss_centerness")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Elementwise focal loss (Lin et al., 2017) for sigmoid logits and {0, 1} targets."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Elementwise smooth-L1 (Huber scaled by 1/beta); plain L1 for beta 0."""
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


@register_type("FCOS3DLoss")
class FCOS3DLoss(nn.Module):
    """Named FCOS3D losses from the head's outputs and :class:`FCOS3DTarget`'s targets.

    Args:
        num_classes: detection classes.
        num_attrs: attribute classes including "none" (the last).
        code_weights: weight of each of the nine regression codes.
        focal_alpha, focal_gamma: focal-loss parameters.
        smooth_l1_beta: smooth-L1 transition point.
        diff_rad_by_sin: compare rotations by the sin-difference trick (needed for
            the direction-bin decoding; off only for experiments).
        attr_ignore_none: leave positives whose attribute is "none" out of ``loss_attr``.
        loss_weights: optional multiplier per loss name (e.g. ``{"loss_attr": 0.5}``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        num_attrs: int = 9,
        code_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.05, 0.05),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        diff_rad_by_sin: bool = True,
        attr_ignore_none: bool = False,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if len(code_weights) != CODE_SIZE:
            raise ValueError(f"code_weights needs {CODE_SIZE} entries, got {len(code_weights)}")
        unknown = set(loss_weights or {}) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss_weights key(s) {sorted(unknown)}; known: {list(LOSS_NAMES)}")
        self.num_classes = int(num_classes)
        self.num_attrs = int(num_attrs)
        # A plain tensor attribute, not a buffer: the loss holds no state of the model's.
        self.code_weights = torch.tensor([float(w) for w in code_weights])
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.beta = float(smooth_l1_beta)
        self.diff_rad_by_sin = bool(diff_rad_by_sin)
        self.attr_ignore_none = bool(attr_ignore_none)
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in LOSS_NAMES}

    def forward(
        self, outputs: Mapping[str, Sequence[torch.Tensor]], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``{loss name: scalar}`` (see the module docstring); every term stays in the graph."""
        cls = flatten_levels(outputs["cls"]).reshape(-1, self.num_classes)
        labels = targets["labels"].reshape(-1)
        pos = targets["pos_mask"].reshape(-1)
        num_pos = pos.sum().clamp(min=1).to(cls.dtype)

        one_hot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].to(cls.dtype)
        losses = {"loss_cls": sigmoid_focal_loss(cls, one_hot, self.focal_alpha, self.focal_gamma).sum() / num_pos}

        pred = torch.cat([flatten_levels(outputs[g]) for g in REG_GROUPS], dim=-1).reshape(-1, CODE_SIZE)[pos]
        target = targets["bbox_targets"].reshape(-1, CODE_SIZE)[pos].to(pred.dtype)
        weight = targets["bbox_weights"].reshape(-1, CODE_SIZE)[pos].to(pred.dtype)
        weight = weight * self.code_weights.to(device=pred.device, dtype=pred.dtype)
        if self.diff_rad_by_sin:
            pred, target = _add_sin_difference(pred, target)
        elementwise = smooth_l1(pred, target, self.beta) * weight
        for group in REG_GROUPS:
            losses[REG_LOSS_NAMES[group]] = elementwise[:, CODE_SLICES[group]].sum() / num_pos

        direction = flatten_levels(outputs["dir"]).reshape(-1, 2)[pos]
        dir_targets = targets["dir_targets"].reshape(-1)[pos]
        losses["loss_dir"] = F.cross_entropy(direction, dir_targets, reduction="sum") / num_pos

        attr = flatten_levels(outputs["attr"]).reshape(-1, self.num_attrs)[pos]
        attr_targets = targets["attr_targets"].reshape(-1)[pos]
        if self.attr_ignore_none:
            keep = attr_targets != self.num_attrs - 1
            attr, attr_targets = attr[keep], attr_targets[keep]
        num_attr = torch.tensor(float(max(int(attr_targets.numel()), 1)), device=attr.device)
        losses["loss_attr"] = F.cross_entropy(attr, attr_targets, reduction="sum") / num_attr

        centerness = flatten_levels(outputs["centerness"]).reshape(-1)[pos]
        losses["loss_centerness"] = (
            F.binary_cross_entropy_with_logits(
                centerness, targets["centerness_targets"].reshape(-1)[pos].to(centerness.dtype), reduction="sum"
            )
            / num_pos
        )
        return {name: value * self.loss_weights[name] for name, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"code_weights={self.code_weights.tolist()}, beta={self.beta:.4f}, "
            f"focal=({self.focal_alpha}, {self.focal_gamma}), attr_ignore_none={self.attr_ignore_none}"
        )


def _add_sin_difference(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the rotation code by ``sin(p) cos(t)`` and ``cos(p) sin(t)`` (their difference is ``sin(p - t)``)."""
    rot = CODE_SLICES["rot"]
    p, t = pred[:, rot], target[:, rot]
    pred = torch.cat([pred[:, : rot.start], torch.sin(p) * torch.cos(t), pred[:, rot.stop :]], dim=-1)
    target = torch.cat([target[:, : rot.start], torch.cos(p) * torch.sin(t), target[:, rot.stop :]], dim=-1)
    return pred, target
