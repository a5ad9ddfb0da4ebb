"""GANetNeck: non-local attention on the stride-32 map, then a 3-level FPN.

GANet's neck (Wang et al., CVPR 2022, as in the reference ``ganet_mixvargenet_culane``
recipe): only the coarsest backbone map goes through :class:`~hat.models.attention.NonLocalAttention`
(3x3 conv 160->32, sine position embedding, 8-channel query/key, 32-channel value,
gamma-scaled residual, 3x3 conv). At stride 32 a 320x800 frame is 10x25 = 250
positions, so every position attending to every other costs a 250x250 matrix, where
it lets a lane's far end see its near end (a lane spans the frame's height). The FPN
then brings that global context down to the finer levels (1x1 laterals, bilinear x2
top-down and add), all at 32 channels. The deformable LFA module of the paper is not
part of this recipe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hat.models.attention import NonLocalAttention
from hat.models.fpn import FPN
from hat.registry import register_type


@register_type("GANetNeck")
class GANetNeck(nn.Module):
    """Attention on the last (coarsest) input map, then an FPN over all of them.

    Args:
        in_channels: channels of the backbone maps, finest first (MixVarGENet: 64, 96, 160).
        channels: width of the attention block and of every FPN level (32).
        key_channels: query/key channels of the attention (8).
        attention_size: the coarsest map's size at the deploy input (10x25 at 320x800), so
            the attention's position embedding is built once at the size it runs at.
        bn_kwargs: BatchNorm overrides for the attention's and the FPN's convs.

    ``forward(features)`` returns one ``channels`` map per input, finest first, at the
    inputs' sizes.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 96, 160),
        channels: int = 32,
        key_channels: int = 8,
        attention_size: Sequence[int] = (10, 25),
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 2:
            raise ValueError(f"GANetNeck needs at least two backbone maps, got in_channels {in_channels}")
        self.in_channels = in_channels
        self.out_channels = channels
        self.attention = NonLocalAttention(
            in_channels[-1],
            channels,
            key_channels,
            feature_size=(int(attention_size[0]), int(attention_size[1])),
            bn_kwargs=bn_kwargs,
        )
        self.fpn = FPN([*in_channels[:-1], channels], channels, upsample_mode="bilinear", bn_kwargs=bn_kwargs)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"GANetNeck expects {len(self.in_channels)} feature maps, got {len(features)}")
        return self.fpn([*features[:-1], self.attention(features[-1])])
