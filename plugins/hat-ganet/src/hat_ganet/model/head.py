"""GANetHead: the three dense outputs on the stride-8 map.

Each branch is a 3x3 conv (+ ReLU) and a 1x1 conv, as in the recipe:

- ``kpt_heatmap`` (1 channel): logits of the lane-keypoint heatmap (sigmoid in the
  decoder and in the focal loss, not in the graph, so the exported output keeps the
  logits' resolution near 0 and 1);
- ``start_offset`` (2): from each keypoint to its lane's start point, in heatmap cells;
- ``sub_offset`` (2): from the cell to the exact keypoint position, within a cell.

The heatmap's last bias starts at ``-log((1 - p) / p)`` with ``p = 0.01`` (the focal
loss prior of RetinaNet / CenterNet): almost every cell is background, and starting
there keeps the first steps of training from being swamped by the negatives' loss.
Each 3x3 conv + ReLU is an ``nn.Sequential`` pair, which the quantizer fuses into one
int8 conv; the 1x1 outputs are int8 convs too (their output quantizers are the last
int8 step before the model's DeQuantStubs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hat.registry import register_type

#: Output name -> channels, in the order the head returns them.
OUTPUTS = {"kpt_heatmap": 1, "start_offset": 2, "sub_offset": 2}


def _branch(in_channels: int, feat_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, feat_channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(feat_channels, out_channels, 1),
    )


@register_type("GANetHead")
class GANetHead(nn.Module):
    """Keypoint heatmap, start-point offset and sub-cell offset from one neck level.

    Args:
        in_channels: channels of the neck's maps (32).
        feat_channels: channels of each branch's 3x3 conv (32).
        level: which neck map to read (0: the finest, stride 8).
        heatmap_prior: the initial keypoint probability everywhere (sets the last bias).

    ``forward(features)`` takes the neck's list of maps and returns
    ``{"kpt_heatmap": (B, 1, h, w), "start_offset": (B, 2, h, w), "sub_offset": (B, 2, h, w)}``.
    """

    def __init__(
        self, in_channels: int = 32, feat_channels: int = 32, level: int = 0, heatmap_prior: float = 0.01
    ) -> None:
        super().__init__()
        if not 0.0 < heatmap_prior < 1.0:
            raise ValueError(f"heatmap_prior must be in (0, 1), got {heatmap_prior}")
        self.level = level
        self.branches = nn.ModuleDict({name: _branch(in_channels, feat_channels, c) for name, c in OUTPUTS.items()})
        nn.init.constant_(self.branches["kpt_heatmap"][-1].bias, -math.log((1 - heatmap_prior) / heatmap_prior))

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        x = features if isinstance(features, torch.Tensor) else features[self.level]
        return {name: branch(x) for name, branch in self.branches.items()}
