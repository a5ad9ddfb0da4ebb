"""GANet's losses: a penalty-reduced focal loss on the keypoint heatmap, masked L1 on the offsets.

The targets are :class:`hat_ganet.model.target.GANetTarget`'s; the predictions are the
head's raw outputs (heatmap logits, offsets in cells).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hat.registry import register_type

#: What :class:`GANetLoss` reads from the batch.
TARGET_KEYS = ("gt_kpt_heatmap", "gt_start_offset", "gt_start_mask", "gt_sub_offset", "gt_sub_mask")


@register_type("LaneFastFocalLoss")
class LaneFastFocalLoss(nn.Module):
    """CenterNet's penalty-reduced pixel-wise focal loss (Zhou et al., "Objects as Points", 2019).

    With ``p = sigmoid(logits)`` and ``y`` the Gaussian target::

        loss = -1/N * sum( (1 - p)^alpha * log(p)                    where y == 1
                         + (1 - y)^gamma * p^alpha * log(1 - p)      elsewhere )

    ``N`` the number of positives (cells where ``y == 1``; 1 when there are none). The
    ``(1 - y)^gamma`` factor spares the cells near a keypoint, which the Gaussian says are
    almost right; ``alpha`` focuses on the cells still wrong. The logs are computed as
    ``logsigmoid`` of the logits, so confident predictions neither overflow nor need
    CenterNet's clamp of ``p``.
    """

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"heatmap shapes differ: prediction {tuple(logits.shape)}, target {tuple(target.shape)}")
        logits = logits.float()
        target = target.to(logits)
        p = torch.sigmoid(logits)
        pos = target.eq(1).to(logits)
        pos_term = (1 - p).pow(self.alpha) * F.logsigmoid(logits) * pos
        neg_term = (1 - target).pow(self.gamma) * p.pow(self.alpha) * F.logsigmoid(-logits) * (1 - pos)
        num_pos = pos.sum().clamp(min=1.0)
        return -self.loss_weight * (pos_term.sum() + neg_term.sum()) / num_pos

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}"


@register_type("LaneMaskedL1Loss")
class LaneMaskedL1Loss(nn.Module):
    """Mean absolute error over the masked cells: ``sum(|pred - target| * m) / sum(m)``.

    ``mask`` (B, 1, H, W) is broadcast over the offset's channels and counted once per
    channel, so the value is the mean error per coordinate, in cells, over the keypoints
    (the offsets mean nothing elsewhere). No keypoint in the batch gives 0, still
    connected to the graph.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"offset shapes differ: prediction {tuple(pred.shape)}, target {tuple(target.shape)}")
        pred = pred.float()
        mask = mask.to(pred).expand_as(pred)
        error = (pred - target.to(pred)).abs() * mask
        return self.loss_weight * error.sum() / mask.sum().clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"


@register_type("GANetLoss")
class GANetLoss(nn.Module):
    """The three GANet terms: ``loss(outputs, batch) -> {"loss", "kpt_loss", "start_loss", "sub_loss"}``.

    ``outputs``: ``kpt_heatmap`` (B, 1, H, W) logits, ``start_offset`` and ``sub_offset``
    (B, 2, H, W); ``batch``: the ``gt_*`` targets of :class:`~hat_ganet.model.target.GANetTarget`.
    The recipe's weights: focal 1 (alpha 2, gamma 4), start offset 0.5, sub-cell offset 1.
    ``loss`` is the weighted sum; the named terms are the weighted parts.
    """

    def __init__(
        self,
        kpt_weight: float = 1.0,
        start_weight: float = 0.5,
        sub_weight: float = 1.0,
        alpha: float = 2.0,
        gamma: float = 4.0,
    ) -> None:
        super().__init__()
        self.kpt = LaneFastFocalLoss(alpha=alpha, gamma=gamma, loss_weight=kpt_weight)
        self.start = LaneMaskedL1Loss(loss_weight=start_weight)
        self.sub = LaneMaskedL1Loss(loss_weight=sub_weight)

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [k for k in TARGET_KEYS if k not in batch]
        if missing:
            raise KeyError(f"GANetLoss needs the targets {missing} in the batch (add GANetTarget to the transforms)")
        kpt = self.kpt(outputs["kpt_heatmap"], batch["gt_kpt_heatmap"])
        start = self.start(outputs["start_offset"], batch["gt_start_offset"], batch["gt_start_mask"])
        sub = self.sub(outputs["sub_offset"], batch["gt_sub_offset"], batch["gt_sub_mask"])
        return {"loss": kpt + start + sub, "kpt_loss": kpt, "start_loss": start, "sub_loss": sub}
