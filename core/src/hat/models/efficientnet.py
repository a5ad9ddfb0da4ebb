"""EfficientNet-B0..B7 (Tan & Le, 2019) as a multi-scale backbone that quantizes to int8.

The paper scales one searched network (B0) with a single compound coefficient: width
(channels), depth (block repeats) and input resolution grow together. Here the
coefficients of each variant come from :data:`SCALING`, applied to the B0 stages in
:data:`BASE_STAGES` with the rounding rules of the paper's reference code
(:func:`round_filters`, :func:`round_repeats`), so the parameter counts match the
published models (B0: 5,288,548; B3: 12,233,232 with SE and the 1000-class top).

Detection, keypoint and BEV tasks need feature maps rather than logits, so ``forward``
returns the output of the last stage at each stride 2, 4, 8, 16 and 32 (selected by
``out_indices``), with the logits appended when ``include_top``.

Written for the module-swapping quantizer: every conv sits in a :class:`ConvBNAct`
(BatchNorm folds, ReLU fuses), the squeeze-excitation product and the residual sum go
through ``FloatFunctional``, and the pool and sigmoid are modules that get their own
output quantizer. With ``activation="relu"`` and no SE (the keypoint recipe) the whole
backbone runs int8; Swish has no int8 kernel and its SiLU modules stay float (the
converter reports them). The input is float: the task model owns the ``QuantStub``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hat.models.layers import ConvBNAct, make_activation
from hat.quant import FloatFunctional
from hat.registry import register_type

ModelType = Literal["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]
Activation = Literal["relu", "relu6", "swish"]


@dataclass(frozen=True)
class Scaling:
    """Compound-scaling coefficients of one variant (paper Section 3.3; values of its reference code)."""

    width: float
    depth: float
    resolution: int
    dropout: float


SCALING: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}


@dataclass(frozen=True)
class StageSpec:
    """One B0 stage of MBConv blocks (the paper's Table 1); stride applies to its first block."""

    expand_ratio: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    repeats: int


BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 32, 16, 1),
    StageSpec(6, 3, 2, 16, 24, 2),
    StageSpec(6, 5, 2, 24, 40, 2),
    StageSpec(6, 3, 2, 40, 80, 3),
    StageSpec(6, 5, 1, 80, 112, 3),
    StageSpec(6, 5, 2, 112, 192, 4),
    StageSpec(6, 3, 1, 192, 320, 1),
)
STEM_CH = 32
HEAD_CH = 1280
SE_RATIO = 0.25
#: Index of the last stage at each output stride (2, 4, 8, 16, 32): the feature taps.
FEATURE_STAGES = (0, 1, 2, 4, 6)
FEATURE_STRIDES = (2, 4, 8, 16, 32)
#: The paper's TensorFlow BatchNorm (decay 0.99, epsilon 1e-3) in torch's convention.
DEFAULT_BN_KWARGS: dict[str, Any] = {"momentum": 0.01, "eps": 1e-3}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor``.

    Multiples of 8 keep the channel counts friendly to vectorized int8 kernels; rounding
    to nearest may not drop more than 10% below the scaled value, as in the reference code.
    """
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up (never fewer blocks than B0)."""
    return int(math.ceil(depth * repeats))


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch of whole samples while training.

    Kept samples are scaled by 1 / keep so the expected value matches eval, where this
    is the identity (and so adds nothing to the exported graph).
    """
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class SqueezeExcite(nn.Module):
    """Channel attention: pool, squeeze (1x1 conv + act), excite (1x1 conv), sigmoid gate.

    The gate multiplies the input through a ``FloatFunctional`` so the product is int8;
    ``hat_fuse_patterns`` lets a ReLU after the squeeze conv fuse into it.
    """

    def __init__(self, channels: int, squeezed: int, act: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Sigmoid()
        self.scale = FloatFunctional()

    def hat_fuse_patterns(self) -> list[tuple[str, ...]]:
        return [("reduce", "act")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return self.scale.mul(x, weights)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, optional SE, project 1x1.

    The projection is linear (no activation: a ReLU on the narrow output would destroy
    information, per MobileNetV2). The residual is used when the block keeps shape, and
    its sum goes through a ``FloatFunctional`` so it is an int8 add.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        act: str,
        use_se: bool,
        bn_kwargs: Mapping[str, Any],
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = ConvBNAct(in_ch, mid, 1, act=act, bn_kwargs=bn_kwargs) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride=stride, groups=mid, act=act, bn_kwargs=bn_kwargs)
        # The squeeze width follows the block's input, not its expanded width (reference code).
        self.se = SqueezeExcite(mid, max(1, int(in_ch * SE_RATIO)), act) if use_se else None
        self.project = ConvBNAct(mid, out_ch, 1, act=None, bn_kwargs=bn_kwargs)
        self.residual = stride == 1 and in_ch == out_ch
        self.skip = FloatFunctional() if self.residual else None
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.skip is None:
            return y
        return self.skip.add(x, drop_connect(y, self.drop_rate, self.training))


@register_type("efficientnet")
class EfficientNet(nn.Module):
    """EfficientNet backbone returning multi-scale features (and logits with the top).

    Args:
        model_type: ``"b0"`` .. ``"b7"``; picks width/depth/dropout from :data:`SCALING`.
        num_classes: classifier outputs (only with ``include_top``).
        bn_kwargs: overrides of the BatchNorm defaults (momentum 0.01, eps 1e-3).
        activation: ``"swish"`` as in the paper; ``"relu"``/``"relu6"`` for all-int8.
        use_se_block: squeeze-and-excitation in every block.
        include_top: build the 1x1 head conv, pooling, dropout and classifier.
        drop_connect_rate: stochastic-depth rate of the last block (linearly less for
            earlier ones); training only.
        out_indices: which of the stride-2/4/8/16/32 features ``forward`` returns; by
            default every one the built stages produce.
        num_stages: build only the first ``num_stages`` of the seven MBConv stages (1..7,
            default all): a backbone for a head that reads only shallower features, without
            the cost and the never-trained parameters of the deeper stages. Each stage that
            is built is exactly the full model's (a full checkpoint loads with
            ``ignore_extra``); with fewer than seven there is no top, and ``out_indices``
            may only name features those stages produce (3 stages end at stride 8, 5 at 16).
    """

    def __init__(
        self,
        model_type: ModelType = "b0",
        num_classes: int = 1000,
        bn_kwargs: Mapping[str, Any] | None = None,
        activation: Activation = "swish",
        use_se_block: bool = True,
        include_top: bool = True,
        drop_connect_rate: float = 0.2,
        out_indices: Sequence[int] | None = None,
        num_stages: int | None = None,
    ) -> None:
        super().__init__()
        if model_type not in SCALING:
            raise ValueError(f"unknown EfficientNet model_type {model_type!r}; expected one of {sorted(SCALING)}")
        make_activation(activation)  # validates the name before anything is built
        num_stages = len(BASE_STAGES) if num_stages is None else int(num_stages)
        if not 1 <= num_stages <= len(BASE_STAGES):
            raise ValueError(f"num_stages must be in 1..{len(BASE_STAGES)}, got {num_stages}")
        if include_top and num_stages < len(BASE_STAGES):
            raise ValueError(f"include_top needs all {len(BASE_STAGES)} stages, got num_stages={num_stages}")
        available = [i for i, stage in enumerate(FEATURE_STAGES) if stage < num_stages]
        if out_indices is None:
            out_indices = available
        out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < len(FEATURE_STAGES)]
        if bad:
            raise ValueError(f"out_indices {bad} out of range; features are 0..{len(FEATURE_STAGES) - 1}")
        beyond = [i for i in out_indices if i not in available]
        if beyond:
            raise ValueError(
                f"out_indices {beyond} come from stages beyond num_stages={num_stages}; features here are {available}"
            )
        if not out_indices and not include_top:
            raise ValueError("nothing to return: give out_indices or set include_top")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1), got {drop_connect_rate}")

        self.model_type = model_type
        self.scaling = scaling = SCALING[model_type]
        self.num_stages = num_stages
        self.out_indices = out_indices
        self.include_top = include_top
        bn = {**DEFAULT_BN_KWARGS, **dict(bn_kwargs or {})}

        self.stem = ConvBNAct(3, round_filters(STEM_CH, scaling.width), 3, stride=2, act=activation, bn_kwargs=bn)
        specs = [
            (spec, round_filters(spec.in_ch, scaling.width), round_filters(spec.out_ch, scaling.width))
            for spec in BASE_STAGES[:num_stages]
        ]
        # Over all seven stages, so a truncated backbone's blocks match the full model's.
        total_blocks = sum(round_repeats(spec.repeats, scaling.depth) for spec in BASE_STAGES)
        stages: list[nn.Sequential] = []
        block_index = 0
        for spec, in_ch, out_ch in specs:
            blocks = []
            for i in range(round_repeats(spec.repeats, scaling.depth)):
                blocks.append(
                    MBConv(
                        in_ch if i == 0 else out_ch,
                        out_ch,
                        spec.expand_ratio,
                        spec.kernel,
                        spec.stride if i == 0 else 1,
                        activation,
                        use_se_block,
                        bn,
                        drop_connect_rate * block_index / total_blocks,
                    )
                )
                block_index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        stage_channels = [out_ch for _, _, out_ch in specs]
        #: Channels and strides of the features ``forward`` returns, in order (for necks).
        self.out_channels = [stage_channels[FEATURE_STAGES[i]] for i in out_indices]
        self.strides = [FEATURE_STRIDES[i] for i in out_indices]

        if include_top:
            head_ch = round_filters(HEAD_CH, scaling.width)
            self.head = ConvBNAct(stage_channels[-1], head_ch, 1, act=activation, bn_kwargs=bn)
            # Flatten is a module (not torch.flatten) so the quantizer keeps the pooled grid.
            self.classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                nn.Dropout(scaling.dropout),
                nn.Linear(head_ch, num_classes),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference code's initialisation: He-normal (fan-out) convs, uniform dense."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the selected strides, then the logits if ``include_top``."""
        x = self.stem(x)
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in FEATURE_STAGES:
                features.append(x)
        outputs = [features[i] for i in self.out_indices]
        if self.include_top:
            outputs.append(self.classifier(self.head(x)))
        return outputs
