"""FCOS3DHead: per-level class, box, direction, attribute and centerness maps.

The FCOS3D head (Wang et al., 2021) is shared across the pyramid levels: a class tower
and a regression tower of 3x3 conv-BN-ReLU, small per-output branches, and 1x1
predictors. Per level it outputs

==============  =====================  ==========================================
``cls``         ``num_classes``        class logits (sigmoid, focal loss)
``offset``      2                      projected-centre offset, in strides
``depth``       1                      log depth
``size``        3                      log w, l, h
``rot``         1                      yaw (learned modulo pi)
``velo``        2                      vx, vz (camera frame, m/s)
``dir``         2                      direction-bin logits
``attr``        ``num_attrs``          attribute logits (the last one is "none")
``centerness``  1                      centerness logit
==============  =====================  ==========================================

(the code layout of :mod:`hat_fcos3d.model.coder`). All values leave the head as float
logits or codes: sigmoid, exp and angle decoding happen later, in the post-process.

Quantization layout:

* Every conv is a conv-BN(-ReLU) ``nn.Sequential`` or a plain 1x1 predictor, so all of
  them fold and run int8; each predictor has its own output quantizer (the regression
  groups are separate convs rather than one 9-channel conv, so that log-depth, offsets
  and velocities each get an int8 scale that fits their range).
* The convs are shared across levels (one set of weights sees every level, as in FCOS),
  but each level has its own BatchNorms, as in EfficientDet's heads: one BatchNorm
  shared by all levels would normalize each level by its own batch statistics in
  training but by running statistics pooled over every level in eval, and eval-mode
  outputs come out wrong (measured here: depths 1.5-5x off). So each level is its own
  module (:class:`LevelHead`) whose conv weights are tied to level 0's; folding the
  BatchNorms for int8 unties them (each level's folded conv differs), and each level
  gets its own quantizers, so nothing needs the levels to share one int8 grid.
* A ``DeQuantStub`` per output kind ends the int8 part.
* The per-level learned scales of FCOS (on offset, depth and size) cannot fold into the
  shared predictors' weights (one conv serves every level); each multiplies its level's
  output through its own ``FloatFunctional.mul_scalar`` before the dequant stub, so it
  runs as an int8 QLinearMul with the output quantizer after it, and every graph output
  is on the grid of its last quantizer. ``use_scale=False`` removes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat.quant import DeQuantStub, FloatFunctional
from hat.registry import register_type

#: Regression groups in code order, with the recipe's channel count each.
REG_GROUPS: tuple[str, ...] = ("offset", "depth", "size", "rot", "velo")
REG_DIMS: tuple[int, ...] = (2, 1, 3, 1, 2)
#: Output kinds of the head, in the order of the flat (export) output names.
OUTPUT_KINDS: tuple[str, ...] = ("cls", *REG_GROUPS, "dir", "attr", "centerness")
#: Groups that carry a learned per-level scale (index into the scale parameter's columns).
SCALED_GROUPS: tuple[str, ...] = ("offset", "depth", "size")


def _branch(in_channels: int, widths: Sequence[int], bn_kwargs: Mapping[str, Any]) -> tuple[nn.Sequential, int]:
    """3x3 conv-BN-ReLU layers of the given widths (none: identity); returns (layers, out channels)."""
    layers = []
    channels = in_channels
    for width in widths:
        layers.append(ConvBNAct(channels, int(width), 3, act="relu", bn_kwargs=bn_kwargs))
        channels = int(width)
    return nn.Sequential(*layers), channels


class LevelHead(nn.Module):
    """The head's layers for one level: cls and reg towers, the per-output branches and
    predictors. :class:`FCOS3DHead` ties the conv weights of all levels together."""

    def __init__(
        self,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int,
        num_classes: int,
        num_attrs: int,
        branches: Mapping[str, Sequence[int] | None],
        reg_branch: Sequence[Sequence[int]],
        centerness_on_reg: bool,
        bn: Mapping[str, Any],
    ) -> None:
        super().__init__()
        default = (feat_channels,)
        self.centerness_on_reg = centerness_on_reg
        self.cls_convs, cls_ch = _branch(in_channels, [feat_channels] * stacked_convs, bn)
        self.reg_convs, reg_ch = _branch(in_channels, [feat_channels] * stacked_convs, bn)
        self.cls_prev, ch = _branch(cls_ch, _widths(branches["cls"], default), bn)
        self.conv_cls = nn.Conv2d(ch, num_classes, 1)
        self.attr_prev, ch = _branch(cls_ch, _widths(branches["attr"], default), bn)
        self.conv_attr = nn.Conv2d(ch, num_attrs, 1)
        self.reg_prevs = nn.ModuleList()
        self.conv_regs = nn.ModuleList()
        for widths, dims in zip(reg_branch, REG_DIMS, strict=True):
            prev, ch = _branch(reg_ch, widths, bn)
            self.reg_prevs.append(prev)
            self.conv_regs.append(nn.Conv2d(ch, dims, 1))
        self.dir_prev, ch = _branch(reg_ch, _widths(branches["dir"], default), bn)
        self.conv_dir = nn.Conv2d(ch, 2, 1)
        cen_in = reg_ch if centerness_on_reg else cls_ch
        self.centerness_prev, ch = _branch(cen_in, _widths(branches["centerness"], default), bn)
        self.conv_centerness = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cls_feat = self.cls_convs(x)
        reg_feat = self.reg_convs(x)
        out = {
            "cls": self.conv_cls(self.cls_prev(cls_feat)),
            "attr": self.conv_attr(self.attr_prev(cls_feat)),
            "dir": self.conv_dir(self.dir_prev(reg_feat)),
            "centerness": self.conv_centerness(self.centerness_prev(reg_feat if self.centerness_on_reg else cls_feat)),
        }
        for name, prev, conv in zip(REG_GROUPS, self.reg_prevs, self.conv_regs, strict=True):
            out[name] = conv(prev(reg_feat))
        return out


def _widths(widths: Sequence[int] | None, default: Sequence[int]) -> Sequence[int]:
    return default if widths is None else widths


def tie_convs(levels: Sequence[nn.Module]) -> None:
    """Make every conv of ``levels[1:]`` use the weight and bias Parameters of the same conv of ``levels[0]``."""
    shared = [m for m in levels[0].modules() if isinstance(m, nn.Conv2d)]
    for level in levels[1:]:
        convs = [m for m in level.modules() if isinstance(m, nn.Conv2d)]
        for source, conv in zip(shared, convs, strict=True):
            conv.weight = source.weight
            if source.bias is not None:
                conv.bias = source.bias


@register_type("FCOS3DHead")
class FCOS3DHead(nn.Module):
    """Shared FCOS3D head over ``len(strides)`` pyramid levels.

    Args:
        num_classes: detection classes (10 for nuScenes).
        in_channels: channels of every neck output.
        feat_channels: width of the two towers.
        stacked_convs: 3x3 conv-BN-ReLU layers per tower.
        strides: stride of each level (only their number matters to the head).
        group_reg_dims: must be ``(2, 1, 3, 1, 2)`` (offset, depth, size, rotation,
            velocity); accepted for the recipe's sake.
        num_attrs: attribute classes, "none" included (9 for nuScenes).
        use_direction_classifier: predict the direction bin (needed to decode yaw
            beyond modulo pi; the post-process assumes it).
        centerness_on_reg: centerness from the regression tower (True) or the class tower.
        cls_branch, reg_branch, dir_branch, attr_branch, centerness_branch: widths of
            the extra 3x3 conv layers before each predictor (``reg_branch`` has one
            tuple per regression group); ``None`` means ``(feat_channels,)`` each
            (``()`` for velocity), the recipe's layout.
        use_scale: learned per-level scales on offset, depth and size (int8 multiplies
            inside the int8 part, before the dequant stubs).
        prior_prob: initial foreground probability of the class logits.
        bn_kwargs: BatchNorm arguments.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 64,
        feat_channels: int = 64,
        stacked_convs: int = 2,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        group_reg_dims: Sequence[int] = REG_DIMS,
        num_attrs: int = 9,
        use_direction_classifier: bool = True,
        centerness_on_reg: bool = True,
        cls_branch: Sequence[int] | None = None,
        reg_branch: Sequence[Sequence[int]] | None = None,
        dir_branch: Sequence[int] | None = None,
        attr_branch: Sequence[int] | None = None,
        centerness_branch: Sequence[int] | None = None,
        use_scale: bool = True,
        prior_prob: float = 0.01,
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if tuple(int(d) for d in group_reg_dims) != REG_DIMS:
            raise ValueError(f"group_reg_dims must be {REG_DIMS} (offset, depth, size, rot, velo): {group_reg_dims}")
        if not use_direction_classifier:
            raise ValueError("use_direction_classifier=False is not supported: yaw is decoded with the direction bin")
        if num_classes < 1 or num_attrs < 1 or stacked_convs < 0 or not strides:
            raise ValueError("num_classes and num_attrs must be >= 1, stacked_convs >= 0, strides non-empty")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        bn = dict(bn_kwargs or {})
        default = (feat_channels,)
        reg_branch = (default, default, default, default, ()) if reg_branch is None else reg_branch
        if len(reg_branch) != len(REG_GROUPS):
            raise ValueError(f"reg_branch needs one entry per group {REG_GROUPS}, got {len(reg_branch)}")
        self.num_classes = num_classes
        self.num_attrs = num_attrs
        self.strides = tuple(int(s) for s in strides)
        self.num_levels = len(self.strides)
        self.centerness_on_reg = centerness_on_reg
        self.use_scale = use_scale

        branches = {
            "cls": cls_branch,
            "attr": attr_branch,
            "dir": dir_branch,
            "centerness": centerness_branch,
        }
        self.levels = nn.ModuleList(
            LevelHead(
                in_channels, feat_channels, stacked_convs, num_classes, num_attrs, branches, reg_branch,
                centerness_on_reg, bn,
            )
            for _ in range(self.num_levels)
        )  # fmt: skip
        tie_convs(self.levels)
        self._init_weights(prior_prob)

        self.dequant = nn.ModuleDict({kind: DeQuantStub() for kind in OUTPUT_KINDS})
        # (levels, 3): columns scale offset, depth, size of each level.
        self.scales = nn.Parameter(torch.ones(self.num_levels, len(SCALED_GROUPS)), requires_grad=use_scale)
        self.scale_mul = nn.ModuleList(
            nn.ModuleList(FloatFunctional() for _ in SCALED_GROUPS) for _ in range(self.num_levels)
        )

    def _init_weights(self, prior_prob: float) -> None:
        """FCOS's init: N(0, 0.01) convs, zero biases, class bias at the prior probability
        (so the focal loss does not start swamped by the many background points). The
        other levels' convs share level 0's weights, so level 0's are the ones to set."""
        shared = self.levels[0]
        for module in shared.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(shared.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward_level(self, feature: torch.Tensor, level: int) -> dict[str, torch.Tensor]:
        """All outputs of one level (dequantized, scaled)."""
        out = self.levels[level](feature)
        if self.use_scale:
            for column, name in enumerate(SCALED_GROUPS):
                out[name] = self.scale_mul[level][column].mul_scalar(out[name], self.scales[level, column].reshape(1))
        return {kind: self.dequant[kind](out[kind]) for kind in OUTPUT_KINDS}

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """``{kind: [per-level (B, C_kind, H_l, W_l)]}`` for the kinds of :data:`OUTPUT_KINDS`."""
        if len(features) != self.num_levels:
            raise ValueError(f"the head has {self.num_levels} levels (strides {self.strides}), not {len(features)}")
        outputs: dict[str, list[torch.Tensor]] = {kind: [] for kind in OUTPUT_KINDS}
        for level, feature in enumerate(features):
            for kind, value in self.forward_level(feature, level).items():
                outputs[kind].append(value)
        return outputs

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_attrs={self.num_attrs}, strides={self.strides}"


def flatten_outputs(outputs: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{kind: [levels]}`` -> ``{"<kind>_<level>": tensor}``: the exported model's output names."""
    return {f"{kind}_{level}": value for kind in OUTPUT_KINDS for level, value in enumerate(outputs[kind])}


def unflatten_outputs(flat: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
    """Inverse of :func:`flatten_outputs` (tensors or numpy arrays, e.g. from onnxruntime).

    A mapping that already is ``{kind: [levels]}`` is returned with its values as tensors.
    """
    if all(kind in flat for kind in OUTPUT_KINDS):
        return {kind: [torch.as_tensor(v) for v in flat[kind]] for kind in OUTPUT_KINDS}
    outputs: dict[str, list[torch.Tensor]] = {}
    for kind in OUTPUT_KINDS:
        level = 0
        values = []
        while f"{kind}_{level}" in flat:
            values.append(torch.as_tensor(flat[f"{kind}_{level}"]))
            level += 1
        if not values:
            raise KeyError(f"no {kind!r} outputs (expected {kind}_0, {kind}_1, ...; got {sorted(flat)})")
        outputs[kind] = values
    levels = {len(v) for v in outputs.values()}
    if len(levels) != 1:
        raise ValueError(f"output kinds have different numbers of levels: { {k: len(v) for k, v in outputs.items()} }")
    return outputs


def flatten_levels(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level ``(B, C, H, W)`` -> ``(B, sum H*W, C)``, points in row-major order per level."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)
