"""Keypoint accuracy: PCK (percentage of correct keypoints) and mean pixel distance.

Both read ground truth ``batch["keypoints"]`` ``(B, K, 3)`` as ``[x, y, valid]`` and
predictions ``outputs["pred_keypoints"]`` ``(B, K, 2)``, both in input pixels (the
decoder has already applied the heatmap stride). Only valid ground-truth keypoints
count. State is summed in float64 (``add_state(..., "sum")``) so the values are exact
pooled ratios across batches and DDP ranks, not means of per-batch means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hat.metrics import Metric
from hat.registry import register_type


def _keypoints(batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth ``(B, K, 2)``, validity ``(B, K)`` and predictions ``(B, K, 2)``, float64 on CPU."""
    gt = torch.as_tensor(batch["keypoints"]).detach().to("cpu", torch.float64)
    pred = torch.as_tensor(outputs["pred_keypoints"]).detach().to("cpu", torch.float64)
    if gt.dim() != 3 or gt.shape[-1] < 3:
        raise ValueError(f"batch['keypoints'] must be (B, K, 3) [x, y, valid], got {tuple(gt.shape)}")
    if pred.shape[:2] != gt.shape[:2] or pred.shape[-1] < 2:
        raise ValueError(f"pred_keypoints {tuple(pred.shape)} does not match ground-truth keypoints {tuple(gt.shape)}")
    return gt[..., :2], gt[..., 2] > 0, pred[..., :2]


def valid_box_size(gt_xy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per sample, max(width, height) of the box around its valid keypoints (0 if < 2 distinct)."""
    inf = torch.tensor(float("inf"), dtype=gt_xy.dtype)
    mask = valid.unsqueeze(-1)
    low = torch.where(mask, gt_xy, inf).amin(dim=1)
    high = torch.where(mask, gt_xy, -inf).amax(dim=1)
    extent = (high - low).amax(dim=-1)
    return torch.where(valid.any(dim=1), extent, torch.zeros_like(extent))


@register_type("PCKMetric")
class PCKMetric(Metric):
    """PCK@alpha: share of valid keypoints predicted within ``alpha`` x the object's size.

    The object's size is max(width, height) of the box around that sample's valid
    ground-truth keypoints (invalid ones have no meaningful position). A keypoint is
    correct when its Euclidean distance is strictly below ``alpha * size``. The result is
    pooled: correct keypoints / valid keypoints over the whole set.

    Args:
        alpha: the tolerance as a fraction of the object's size; the value is reported
            as ``f"PCK@{alpha}"`` (``PCK@0.1``).
        feat_stride: accepted for compatibility with the reference configs, where the
            metric decoded heatmaps itself; here predictions arrive in input pixels
            already, so it is unused.
        img_shape: ``(H, W)`` of the input; used only for samples whose valid keypoints
            span no box (a single valid keypoint): their size is then max(H, W).
            Without it such keypoints are left out of the count, since PCK is
            undefined for them.
    """

    higher_is_better = True

    def __init__(self, alpha: float = 0.1, feat_stride: int | None = None, img_shape: Sequence[int] | None = None):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if img_shape is not None and len(img_shape) != 2:
            raise ValueError(f"img_shape must be (H, W), got {img_shape!r}")
        self.alpha = float(alpha)
        self.feat_stride = feat_stride
        self.img_shape = None if img_shape is None else (int(img_shape[0]), int(img_shape[1]))
        self.name = f"PCK@{alpha}"
        self.add_state("correct", torch.tensor(0.0, dtype=torch.float64))
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64))

    def update(self, batch: Any, outputs: Any) -> None:
        gt_xy, valid, pred_xy = _keypoints(batch, outputs)
        size = valid_box_size(gt_xy, valid)
        if self.img_shape is not None:
            size = torch.where(size > 0, size, torch.tensor(float(max(self.img_shape)), dtype=size.dtype))
        judged = valid & (size > 0).unsqueeze(-1)
        distance = torch.linalg.vector_norm(pred_xy - gt_xy, dim=-1)
        hit = judged & (distance < self.alpha * size.unsqueeze(-1))
        self.correct += hit.sum()
        self.total += judged.sum()

    def _compute(self) -> dict[str, float]:
        value = self.correct / self.total if self.total > 0 else torch.tensor(0.0)
        return {self.name: float(value)}


@register_type("MeanKeypointDist")
class MeanKeypointDist(Metric):
    """Mean Euclidean distance, in input pixels, between predicted and valid ground-truth keypoints.

    Pooled over all valid keypoints. NaN before any valid keypoint was seen (0 would read
    as a perfect score). ``feat_stride`` is accepted for the reference configs and
    unused: predictions are in input pixels already.
    """

    name = "MeanKeypointDist"
    higher_is_better = False

    def __init__(self, feat_stride: int | None = None) -> None:
        super().__init__()
        self.feat_stride = feat_stride
        self.add_state("distance_sum", torch.tensor(0.0, dtype=torch.float64))
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64))

    def update(self, batch: Any, outputs: Any) -> None:
        gt_xy, valid, pred_xy = _keypoints(batch, outputs)
        distance = torch.linalg.vector_norm(pred_xy - gt_xy, dim=-1)
        self.distance_sum += distance[valid].sum()
        self.count += valid.sum()

    def _compute(self) -> dict[str, float]:
        value = self.distance_sum / self.count if self.count > 0 else float("nan")
        return {self.name: float(value)}
