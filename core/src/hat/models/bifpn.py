"""BiFPN (Tan, Pang & Le, EfficientDet, 2020): a bidirectional feature pyramid that runs int8.

Each repeat runs a top-down pathway (coarse to fine), then a bottom-up one (fine to
coarse). Every node merges its inputs by *fast normalized fusion*,
``sum_i w_i x_i / (eps + sum_j w_j)`` with ``w = relu(weight)`` learned per node, then
applies a depthwise-separable 3x3 conv and BatchNorm. Levels beyond the backbone's
(strides 64 and 128 from 32) come from a 1x1 projection and stride-2 max-pools.

Made for the module-swapping quantizer, so the whole neck is int8 on the device:

- ReLU instead of Swish (no int8 kernel), and placed after the node's BatchNorm
  (conv -> BN -> ReLU) instead of before the conv as in the paper: the ReLU then fuses
  with the pointwise conv into one QLinearConv whose output quantizer is the ReLU,
  where a ReLU on the fused sum would be a separate op between two quantizers.
- Every product and sum goes through its own ``FloatFunctional``. A fusion weight
  multiplies its input via ``mul_scalar``: the quantized form puts the (constant, at
  inference) weight on an exact 8-bit grid, so the graph has ``DQ(x) * DQ(w) -> Q``,
  which onnxruntime fuses into QLinearMul, and the sums fuse into QLinearAdd. This
  keeps the paper's weights as learned scalars in float and QAT alike. Folding a weight
  into a per-input 1x1 depthwise conv would cost as many ops and need the conv's weight
  to be derived from the fusion parameters, which the converter does not support.
- Resampling only moves values: nearest x2 upsampling (``nn.Upsample``) and max-pool
  downsampling keep their input's int8 grid and run as int8 Resize / MaxPool.

Odd sizes: stride-2 steps round up (``ceil(n / 2)``: a 7-pixel map pools to 4), so
doubling a coarse map can overshoot its finer neighbour by one row or column (4 -> 8
against 7). The upsampled map is then cropped at the bottom/right, which equals nearest
interpolation to the exact size (pooled pixel ``j`` is centred on fine pixel ``2j``) and
exports as a Slice, another int8 data-movement op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hat.models.efficientnet import DEFAULT_BN_KWARGS
from hat.models.layers import ConvBNAct
from hat.quant import FloatFunctional
from hat.registry import register_type


class SeparableConvBNAct(nn.Sequential):
    """Depthwise kxk conv, pointwise 1x1 conv, BatchNorm, ReLU (EfficientDet's separable block).

    Neither conv has a bias: the depthwise conv is followed by a linear conv and the
    pointwise conv by BatchNorm, which supplies the shift. As an ``nn.Sequential`` the
    quantizer folds the BatchNorm into the pointwise conv and fuses the ReLU.
    """

    def __init__(self, channels: int, kernel: int = 3, bn_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, **dict(bn_kwargs or {}))
        self.act = nn.ReLU()


class WeightedFusion(nn.Module):
    """Fast normalized fusion of same-shaped maps: ``sum_i w_i x_i``, ``w_i = relu(v_i) / (eps + sum_j relu(v_j))``.

    The paper's cheaper alternative to a softmax over the weights, with the same effect:
    non-negative weights that sum to (almost) one, so no input can blow up the sum.
    One ``FloatFunctional`` per product and per sum, each with its own output scale.
    """

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"a fusion needs at least two inputs, got {num_inputs}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.scale = nn.ModuleList(FloatFunctional() for _ in range(num_inputs))
        self.sum = nn.ModuleList(FloatFunctional() for _ in range(num_inputs - 1))

    def normalized_weights(self) -> torch.Tensor:
        weight = torch.relu(self.weight)
        return weight / (weight.sum() + self.eps)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.scale):
            raise ValueError(f"expected {len(self.scale)} inputs to fuse, got {len(inputs)}")
        weights = self.normalized_weights()
        out = self.scale[0].mul_scalar(inputs[0], weights[0])
        for i in range(1, len(inputs)):
            out = self.sum[i - 1].add(out, self.scale[i].mul_scalar(inputs[i], weights[i]))
        return out


class FusionNode(nn.Module):
    """One BiFPN node: weighted fusion, then the separable conv block."""

    def __init__(self, num_inputs: int, channels: int, bn_kwargs: Mapping[str, Any], eps: float) -> None:
        super().__init__()
        self.fuse = WeightedFusion(num_inputs, eps)
        self.conv = SeparableConvBNAct(channels, 3, bn_kwargs)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.fuse(inputs))


def match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cropped at the bottom/right to ``like``'s height and width.

    Resampling by 2 overshoots by at most one row/column (sizes round up); a map
    smaller than the target means the features do not form a stride-2 pyramid.
    """
    h, w = like.shape[-2:]
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(
            f"a resampled {tuple(x.shape[-2:])} map is smaller than its neighbour level {(h, w)}: "
            "BiFPN inputs must halve in size (rounding up) from one stride to the next"
        )
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    return x[..., :h, :w]


class BiFPNLayer(nn.Module):
    """One repeat over ``num_levels`` maps (finest first), all with ``channels`` channels.

    Top-down: ``td[l] = node(P[l], up(td[l + 1]))`` from the second-coarsest level to the
    finest, with ``td[top] = P[top]``. Bottom-up: ``out[0] = td[0]``, then
    ``out[l] = node(P[l], td[l], down(out[l - 1]))``, with only two inputs at the top level
    (where ``td`` is ``P`` itself).
    """

    def __init__(self, num_levels: int, channels: int, bn_kwargs: Mapping[str, Any], eps: float) -> None:
        super().__init__()
        self.num_levels = num_levels
        inner = num_levels - 1
        self.upsample = nn.ModuleList(nn.Upsample(scale_factor=2, mode="nearest") for _ in range(inner))
        self.top_down = nn.ModuleList(FusionNode(2, channels, bn_kwargs, eps) for _ in range(inner))
        self.downsample = nn.ModuleList(nn.MaxPool2d(3, stride=2, padding=1) for _ in range(inner))
        self.bottom_up = nn.ModuleList(
            FusionNode(3 if level < inner else 2, channels, bn_kwargs, eps) for level in range(1, num_levels)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        top = self.num_levels - 1
        td: list[torch.Tensor | None] = [None] * top + [features[top]]
        for level in reversed(range(top)):
            up = match_size(self.upsample[level](td[level + 1]), features[level])
            td[level] = self.top_down[level]([features[level], up])
        outputs = [td[0]]
        for level in range(1, self.num_levels):
            down = match_size(self.downsample[level - 1](outputs[-1]), features[level])
            inputs = [features[level], td[level], down] if level < top else [features[level], down]
            outputs.append(self.bottom_up[level - 1](inputs))
        return outputs


@register_type("BiFPN")
class BiFPN(nn.Module):
    """EfficientDet's BiFPN neck over backbone features at consecutive stride-2 levels.

    Args:
        in_strides: strides of the input maps, finest first, each twice the previous
            (e.g. ``[8, 16, 32]`` from EfficientNet with ``out_indices=(2, 3, 4)``).
        in_channels: channels of each input map.
        out_strides: strides to return, increasing; levels above the coarsest input are
            built by stride-2 max-pooling (e.g. ``[8, 16, 32, 64, 128]``).
        out_channels: channels of every BiFPN map (the paper's W_bifpn: 64 for D0).
        num_repeats: stacked BiFPN layers (the paper's D_bifpn: 3 for D0).
        bn_kwargs: BatchNorm overrides (defaults: momentum 0.01, eps 1e-3, as EfficientNet).
        fusion_eps: the epsilon of fast normalized fusion (1e-4 in the paper).

    ``forward`` takes the list of input maps and returns one map per ``out_strides``.
    Inputs with other channel counts get a 1x1 conv + BatchNorm projection (no
    activation) first; the first extra level pools its own projection of the coarsest
    input, as in the paper. The model's ``QuantStub`` lives in the task model, before
    the backbone.
    """

    def __init__(
        self,
        in_strides: Sequence[int],
        in_channels: Sequence[int],
        out_strides: Sequence[int],
        out_channels: int = 64,
        num_repeats: int = 1,
        bn_kwargs: Mapping[str, Any] | None = None,
        fusion_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        in_strides = [int(s) for s in in_strides]
        in_channels = [int(c) for c in in_channels]
        out_strides = [int(s) for s in out_strides]
        levels = _levels(in_strides, in_channels, out_strides)
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be at least 1, got {num_repeats}")
        bn = {**DEFAULT_BN_KWARGS, **dict(bn_kwargs or {})}

        self.in_strides = in_strides
        #: Strides of all internal levels, and of the returned maps (for heads).
        self.strides = levels
        self.out_strides = out_strides
        self.out_channels = out_channels
        self._out_levels = [levels.index(s) for s in out_strides]

        self.laterals = nn.ModuleList(
            ConvBNAct(c, out_channels, 1, act=None, bn_kwargs=bn) if c != out_channels else nn.Identity()
            for c in in_channels
        )
        extras: list[nn.Module] = []
        for i in range(len(levels) - len(in_strides)):
            pool = nn.MaxPool2d(3, stride=2, padding=1)
            if i == 0 and in_channels[-1] != out_channels:
                extras.append(nn.Sequential(ConvBNAct(in_channels[-1], out_channels, 1, act=None, bn_kwargs=bn), pool))
            else:
                extras.append(pool)
        self.extras = nn.ModuleList(extras)
        self.layers = nn.ModuleList(BiFPNLayer(len(levels), out_channels, bn, fusion_eps) for _ in range(num_repeats))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.laterals):
            raise ValueError(
                f"BiFPN expects {len(self.laterals)} feature maps (strides {self.in_strides}), got {len(features)}"
            )
        maps = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        x = features[-1]
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        for layer in self.layers:
            maps = layer(maps)
        return [maps[i] for i in self._out_levels]


def _levels(in_strides: list[int], in_channels: list[int], out_strides: list[int]) -> list[int]:
    """All pyramid strides, from the finest input to the coarsest output; checks the arguments."""
    if not in_strides or len(in_strides) != len(in_channels):
        raise ValueError(
            f"in_strides {in_strides} and in_channels {in_channels} must be non-empty and of the same length"
        )
    if any(c < 1 for c in in_channels) or in_strides[0] < 1:
        raise ValueError(f"in_channels {in_channels} and in_strides {in_strides} must be positive")
    if any(b != 2 * a for a, b in zip(in_strides, in_strides[1:], strict=False)):
        raise ValueError(f"in_strides {in_strides} must double from one level to the next")
    if not out_strides or any(b <= a for a, b in zip(out_strides, out_strides[1:], strict=False)):
        raise ValueError(f"out_strides {out_strides} must be non-empty and increasing")
    levels = list(in_strides)
    while levels[-1] < out_strides[-1]:
        levels.append(levels[-1] * 2)
    missing = [s for s in out_strides if s not in levels]
    if missing:
        raise ValueError(f"out_strides {missing} are not pyramid levels; available: {levels}")
    if len(levels) < 2:
        raise ValueError(f"a BiFPN needs at least two levels, got strides {levels}")
    return levels
