"""DeconvDecoder: backbone features -> one heatmap per keypoint (SimpleBaseline-style).

The "simple baseline" pose head (Xiao et al., 2018): a few 3x3 convs on the coarsest
backbone feature, transposed convs that each double the resolution, and a final conv to
one heatmap per keypoint. For a 128x128 crop and EfficientNet-b0's stride-32 feature
(4x4), three deconvs give 32x32 heatmaps at stride 4.

Laid out for the int8 quantizer: every conv and deconv is an ``nn.Sequential`` of
(conv, BatchNorm, ReLU), so BatchNorm folds and ReLU fuses into one int8 op; the deconvs
use ``kernel - 2 * padding + output_padding == stride``, which the exporter rewrites
exactly as an int8 conv followed by depth-to-space (onnxruntime has no int8
ConvTranspose). The final conv keeps its bias and has no activation: heatmaps are signed
regression targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat.registry import register_type

#: Deconv kernel -> (padding, output_padding) that doubles the size exactly
#: (k - 2p + op == 2), the rewritable-as-conv condition.
DECONV_PADDING: dict[int, tuple[int, int]] = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


def deconv_bn_relu(in_ch: int, out_ch: int, kernel: int, bn_kwargs: Mapping[str, Any]) -> nn.Sequential:
    """A stride-2 transposed conv (no bias: the BatchNorm shifts), BatchNorm, ReLU."""
    if kernel not in DECONV_PADDING:
        raise ValueError(f"deconv kernel must be one of {sorted(DECONV_PADDING)}, got {kernel}")
    padding, output_padding = DECONV_PADDING[kernel]
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel, 2, padding, output_padding, bias=False),
        nn.BatchNorm2d(out_ch, **dict(bn_kwargs)),
        nn.ReLU(),
    )


@register_type("DeconvDecoder")
class DeconvDecoder(nn.Module):
    """Conv layers, then stride-2 deconvs, then a final conv to ``out_channels`` heatmaps.

    Args:
        in_channels: channels of the selected backbone feature.
        out_channels: heatmaps (one per keypoint).
        input_index: which feature of the backbone's list to decode (4 = stride 32 for
            EfficientNet with its default ``out_indices``).
        num_conv_layers: 3x3 ConvBNAct(relu) layers before upsampling; the first maps
            ``in_channels`` to ``num_deconv_filters[0]``.
        num_deconv_filters: output channels of each deconv (one x2 upsampling each).
        num_deconv_kernels: kernel of each deconv: 4, 3 or 2 (padding chosen so each is
            exactly x2 and rewritable as an int8 conv).
        final_conv_kernel: odd kernel of the last conv (1 or 3 in the recipes).
        bn_kwargs: BatchNorm arguments (momentum, eps) for every BatchNorm here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_index: int,
        num_conv_layers: int = 3,
        num_deconv_filters: Sequence[int] = (128, 128, 128),
        num_deconv_kernels: Sequence[int] = (4, 4, 4),
        final_conv_kernel: int = 3,
        bn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        filters = [int(f) for f in num_deconv_filters]
        kernels = [int(k) for k in num_deconv_kernels]
        if len(filters) != len(kernels):
            raise ValueError(
                f"num_deconv_filters ({len(filters)}) and num_deconv_kernels ({len(kernels)}) must have the same length"
            )
        if num_conv_layers < 0:
            raise ValueError(f"num_conv_layers must be >= 0, got {num_conv_layers}")
        if num_conv_layers > 0 and not filters:
            raise ValueError("num_conv_layers > 0 needs num_deconv_filters to size the conv layers")
        if final_conv_kernel < 1 or final_conv_kernel % 2 == 0:
            raise ValueError(f"final_conv_kernel must be a positive odd number, got {final_conv_kernel}")
        bn = dict(bn_kwargs or {})
        self.input_index = input_index

        convs: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_conv_layers):
            convs.append(ConvBNAct(channels, filters[0], 3, act="relu", bn_kwargs=bn))
            channels = filters[0]
        self.convs = nn.Sequential(*convs)
        deconvs: list[nn.Module] = []
        for out_ch, kernel in zip(filters, kernels, strict=True):
            deconvs.append(deconv_bn_relu(channels, out_ch, kernel, bn))
            channels = out_ch
        self.deconvs = nn.Sequential(*deconvs)
        self.final = nn.Conv2d(channels, out_channels, final_conv_kernel, padding=final_conv_kernel // 2)
        #: Output stride relative to the selected feature: each deconv halves it.
        self.upsample_factor = 2 ** len(deconvs)
        self._init_weights()

    def _init_weights(self) -> None:
        """SimpleBaseline's init for the upsampling part: small normal weights, zero biases.

        The final conv starts near zero so the first heatmaps are near the targets'
        (mostly zero) background instead of large noise that the loss must first undo.
        """
        for module in self.deconvs.modules():
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.normal_(module.weight, std=0.001)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(B, out_channels, h, w)`` from ``features[input_index]``."""
        x = features if isinstance(features, torch.Tensor) else features[self.input_index]
        return self.final(self.deconvs(self.convs(x)))
