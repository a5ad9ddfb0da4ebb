"""Small building blocks that several backbones and heads share.

They are plain ``torch.nn`` compositions laid out the way the quantizer expects:
:class:`ConvBNAct` is an ``nn.Sequential`` of conv, BatchNorm and activation, so the
converter folds the BatchNorm into the conv and fuses a ReLU/ReLU6 into the same int8
op without the block having to declare anything. Nothing here is registered: configs
name whole models, not these pieces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

#: Activation names accepted by :func:`make_activation`. ReLU and ReLU6 fuse into the
#: preceding conv's int8 kernel; Swish (SiLU) has no int8 kernel and stays float.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU}


def make_activation(name: str | None) -> nn.Module | None:
    """The activation module called ``name``, or None for no activation.

    A fresh module per call: each activation site needs its own module so that the
    quantizer can attach a separate output scale where one is needed.
    """
    if name is None:
        return None
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} or None") from None


class ConvBNAct(nn.Sequential):
    """Conv (no bias: the BatchNorm's shift replaces it) -> BatchNorm2d -> activation.

    Padding is ``kernel // 2``: for odd kernels the output is the input size divided by
    the stride (rounded up), the sizes of TensorFlow's 'same' padding. The padding is
    symmetric (TF pads stride-2 convs more on the bottom/right), which only matters when
    porting TF weights. Children are named ``conv``, ``bn`` and ``act`` (the last absent
    when ``act`` is None), which keeps checkpoint keys readable and lets the quantizer
    find the pattern in this ``nn.Sequential``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, **dict(bn_kwargs or {}))
        activation = make_activation(act)
        if activation is not None:
            self.act = activation
