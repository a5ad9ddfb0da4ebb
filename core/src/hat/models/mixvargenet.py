"""MixVarGENet: a small backbone of 3x3-expand / 1x1-project residual blocks that quantizes to int8.

GANet's lane-detection recipe (issue 13) uses it for its 320x800 input. The layout
(:data:`STAGES`) is a 3x3 stride-2 stem (3 -> 32 channels), then five stages:

====== ======= ====== ====== ========== ================
stage  in->out stride factor groups     blocks
====== ======= ====== ====== ========== ================
1      32->32  1      2      dense      1
2      32->32  2      4      dense      1 + 2
3      32->64  2      4      dense      1 + 2
4      64->96  2      2      16 ch/grp  1 + 6
5      96->160 2      2      16 ch/grp  1 + 2
====== ======= ====== ====== ========== ================

The issue writes a stage as "32->32 s2 f4 + 2"; we read that as one block that changes
channels and stride (with expansion factor 4) followed by two more blocks at the stage's
output shape, stride 1, with the same factor. The strides multiply to
2 (stem) * 1 * 2 * 2 * 2 * 2 = 32, so stage 3 ends at stride 8 (64 channels), stage 4 at
16 (96) and stage 5 at 32 (160): the three maps ``forward`` returns by default.

Each block (:class:`MixVarGEBlock`) is a 3x3 conv widening the input by its factor, BN,
ReLU, a 1x1 conv back to the output width, BN, the residual sum and a ReLU. In the
grouped stages the 3x3 conv takes 16 input channels per group (VarGNet's "variable group"
idea: the group count follows the width so each group's work stays the same), which
keeps the deep, wide stages cheap. The residual is the identity where the block keeps its
shape and a strided 1x1 conv + BN projection only where channels or stride change.

Written for the module-swapping quantizer like :mod:`hat.models.efficientnet`: every conv
sits in a :class:`ConvBNAct` (BatchNorm folds, ReLU fuses into the conv's int8 kernel), the
residual sum goes through a ``FloatFunctional`` so it is an int8 add, and the ReLU after
the sum is a module with its own (unsigned) output quantizer. The input is float: the task
model owns the ``QuantStub``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat.quant import FloatFunctional
from hat.registry import register_type


@dataclass(frozen=True)
class StageSpec:
    """One stage: its first block goes ``in_ch -> out_ch`` at ``stride``, then ``extra`` blocks
    at ``out_ch``, stride 1. ``group_width`` is the 3x3 conv's input channels per group
    (None: a dense conv)."""

    in_ch: int
    out_ch: int
    stride: int
    factor: int
    extra: int
    group_width: int | None = None

    @property
    def blocks(self) -> int:
        return 1 + self.extra


STEM_CH = 32
STEM_STRIDE = 2
GROUP_WIDTH = 16
STAGES: tuple[StageSpec, ...] = (
    StageSpec(32, 32, 1, 2, 0),
    StageSpec(32, 32, 2, 4, 2),
    StageSpec(32, 64, 2, 4, 2),
    StageSpec(64, 96, 2, 2, 6, GROUP_WIDTH),
    StageSpec(96, 160, 2, 2, 2, GROUP_WIDTH),
)
#: Total stride at the end of each stage (the stem halves the input first).
STAGE_STRIDES = (2, 4, 8, 16, 32)
#: The strides 8, 16, 32 a detection/lane neck reads.
DEFAULT_OUT_INDICES = (2, 3, 4)


class MixVarGEBlock(nn.Module):
    """3x3 conv expanding by ``factor`` + BN + ReLU, 1x1 conv + BN, residual sum, ReLU.

    The stride sits on the 3x3 conv (the 1x1 conv cannot see the neighbours a strided
    sample skips). ``shortcut`` is None (the identity) when the block keeps its shape, a
    strided 1x1 conv + BN otherwise: the sum needs equal shapes and the projection is the
    cheapest way to give them.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        factor: int,
        group_width: int | None = None,
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if group_width is not None and in_ch % group_width:
            raise ValueError(f"{in_ch} input channels do not split into groups of {group_width}")
        groups = 1 if group_width is None else in_ch // group_width
        mid = in_ch * factor
        self.expand = ConvBNAct(in_ch, mid, 3, stride=stride, groups=groups, act="relu", bn_kwargs=bn_kwargs)
        self.project = ConvBNAct(mid, out_ch, 1, act=None, bn_kwargs=bn_kwargs)
        keeps_shape = stride == 1 and in_ch == out_ch
        self.shortcut = (
            None if keeps_shape else ConvBNAct(in_ch, out_ch, 1, stride=stride, act=None, bn_kwargs=bn_kwargs)
        )
        self.add = FloatFunctional()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.add.add(self.project(self.expand(x)), identity))


@register_type("MixVarGENet")
class MixVarGENet(nn.Module):
    """MixVarGENet backbone returning the last feature map of the selected stages.

    Args:
        bn_kwargs: keyword arguments of every BatchNorm2d (torch's defaults otherwise).
        out_indices: which stages' outputs ``forward`` returns, in this order; stage
            ``i`` (0..4) ends at stride 2, 4, 8, 16, 32. Default ``(2, 3, 4)``: strides
            8, 16, 32 with 64, 96, 160 channels.
    """

    def __init__(
        self,
        bn_kwargs: Mapping[str, Any] | None = None,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        out_indices = DEFAULT_OUT_INDICES if out_indices is None else tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < len(STAGES)]
        if bad:
            raise ValueError(f"out_indices {bad} out of range; stages are 0..{len(STAGES) - 1}")
        if not out_indices:
            raise ValueError("nothing to return: give at least one out_index")
        self.out_indices = out_indices
        bn = dict(bn_kwargs or {})

        self.stem = ConvBNAct(3, STEM_CH, 3, stride=STEM_STRIDE, act="relu", bn_kwargs=bn)
        stages = []
        for spec in STAGES:
            blocks = [MixVarGEBlock(spec.in_ch, spec.out_ch, spec.stride, spec.factor, spec.group_width, bn)]
            blocks += [
                MixVarGEBlock(spec.out_ch, spec.out_ch, 1, spec.factor, spec.group_width, bn) for _ in range(spec.extra)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        #: Channels and strides of the features ``forward`` returns, in order (for necks).
        self.out_channels = [STAGES[i].out_ch for i in out_indices]
        self.strides = [STAGE_STRIDES[i] for i in out_indices]
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal (fan-out) convs for the ReLU network; BatchNorm as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The selected stages' outputs, in ``out_indices`` order."""
        x = self.stem(x)
        features = []
        for stage in self.stages[: max(self.out_indices) + 1]:  # deeper stages feed nothing
            x = stage(x)
            features.append(x)
        return [features[i] for i in self.out_indices]
