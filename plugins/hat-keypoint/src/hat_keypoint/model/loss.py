"""Heatmap regression loss that ignores keypoints without a valid annotation."""

from __future__ import annotations

import torch
from torch import nn

from hat.registry import register_type


@register_type("HeatmapMSELoss")
class HeatmapMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps, over valid keypoints only.

    ``loss = loss_weight * sum_{b,k,i,j} w[b,k] * (pred - target)^2 / (sum_{b,k} w[b,k] * h * w)``
    with ``w`` the per-keypoint validity (``heatmap_weight``). An invalid keypoint (occluded
    without a position, outside the crop) has an all-zero target that does not mean "no
    keypoint here", so it must not pull its heatmap to zero; dividing by the number of
    valid keypoints (not all of them) keeps the loss scale independent of how many are
    missing. With every keypoint valid this equals torch's ``mse_loss(reduction="mean")``.
    A batch without any valid keypoint gives 0 (still connected to the graph).
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"heatmap shapes differ: prediction {tuple(pred.shape)}, target {tuple(target.shape)}")
        batch, joints, h, w = pred.shape
        if weight is None:
            weight = pred.new_ones(batch, joints)
        weight = weight.to(pred.dtype).reshape(batch, joints)
        squared = (pred - target.to(pred.dtype)).pow(2).sum(dim=(-2, -1))  # (B, K)
        valid = weight.sum()
        loss = (squared * weight).sum() / (valid.clamp(min=1e-6) * h * w)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"
