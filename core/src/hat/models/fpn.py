"""FPN (Lin et al., 2017): a top-down feature pyramid of 1x1 laterals and upsample-and-add.

Each input map gets a 1x1 lateral conv (+ BatchNorm, no activation) to ``out_channels``;
from the coarsest level down, the running top-down map is upsampled to the next finer
level's size and added to that level's lateral. The paper's 3x3 smoothing conv on each
merged map is optional (``output_convs``): GANet's neck has none (its head starts with a
3x3 conv of its own).

Made for the module-swapping quantizer, so the whole pyramid runs int8:

- each sum goes through its own ``FloatFunctional`` (QLinearAdd on the device);
- upsampling is bilinear (the paper uses nearest; GANet bilinear) and keeps its input's
  int8 grid: a bilinear sample is a convex combination of its neighbours, so it never
  leaves the input's range and only needs rounding back onto the same grid, with no
  output quantizer of its own (an ``nn.Upsample`` module would get one, a new scale to
  calibrate). onnxruntime keeps the Q/DQ around a *linear* Resize (since its fix of
  microsoft/onnxruntime#21319: dropping them would interpolate integer codes, which is
  not what the Q/DQ graph means), so the Resize runs in float on the dequantized
  values and requantizes them: exactly this function's arithmetic. It is data
  movement, no multiply-accumulates; ``hat check`` lists it as float. Nearest
  upsampling (``upsample_mode="nearest"``) runs as an int8 Resize instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hat.models.layers import ConvBNAct
from hat.quant import FloatFunctional
from hat.quant.fake_quant import fake_quant, qparams_of, tag
from hat.registry import register_type

UPSAMPLE_MODES = ("bilinear", "nearest")


def upsample_on_grid(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``x`` resized to ``size``, rounded back onto ``x``'s int8 grid when it has one.

    A plain function, not a module: the quantizer needs nothing from it (no scale of its
    own), and exports a single Resize. Exactly twice the size uses ``scale_factor=2``,
    which exports without shape arithmetic.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    kwargs: dict[str, Any] = {"mode": mode}
    if mode == "bilinear":
        kwargs["align_corners"] = False
    if size == (2 * h, 2 * w):
        y = F.interpolate(x, scale_factor=2.0, **kwargs)
    else:
        y = F.interpolate(x, size=size, **kwargs)
    params = qparams_of(x)
    return y if params is None else tag(fake_quant(y, params), params)


@register_type("FPN")
class FPN(nn.Module):
    """Top-down feature pyramid over maps at consecutive stride-2 levels, finest first.

    Args:
        in_channels: channels of each input map, finest first (e.g. ``[64, 96, 32]``).
        out_channels: channels of every output level (32 in GANet).
        upsample_mode: ``"bilinear"`` (GANet) or ``"nearest"`` (the FPN paper).
        output_convs: add the paper's 3x3 conv + BatchNorm + ReLU on each merged map.
        bn_kwargs: BatchNorm overrides.

    ``forward`` takes the list of maps and returns one ``out_channels`` map per input, at
    the input's size. A coarse map need not be exactly half its finer neighbour: it is
    resized to the finer size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 32,
        upsample_mode: str = "bilinear",
        output_convs: bool = False,
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 2 or any(c < 1 for c in in_channels):
            raise ValueError(f"an FPN needs at least two levels of positive channels, got in_channels {in_channels}")
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upsample_mode = upsample_mode
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, act=None, bn_kwargs=bn_kwargs) for c in in_channels)
        self.merges = nn.ModuleList(FloatFunctional() for _ in in_channels[1:])
        self.output_convs = (
            nn.ModuleList(ConvBNAct(out_channels, out_channels, 3, bn_kwargs=bn_kwargs) for _ in in_channels)
            if output_convs
            else None
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.laterals):
            raise ValueError(f"FPN expects {len(self.laterals)} feature maps, got {len(features)}")
        laterals = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        outputs = [laterals[-1]]
        for level in reversed(range(len(laterals) - 1)):
            finer = laterals[level]
            size = (int(finer.shape[-2]), int(finer.shape[-1]))
            if outputs[0].shape[-2] > size[0] or outputs[0].shape[-1] > size[1]:
                raise ValueError(
                    f"level {level + 1} ({tuple(outputs[0].shape[-2:])}) is larger than level {level} {size}: "
                    "FPN inputs go from the finest map to the coarsest"
                )
            up = upsample_on_grid(outputs[0], size, self.upsample_mode)
            outputs.insert(0, self.merges[level].add(finer, up))
        if self.output_convs is not None:
            outputs = [conv(o) for conv, o in zip(self.output_convs, outputs, strict=True)]
        return outputs

    def extra_repr(self) -> str:
        return f"upsample_mode={self.upsample_mode!r}"
