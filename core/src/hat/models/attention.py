"""A non-local (self-)attention block over one feature map, built to run int8.

The block of GANet's neck (Wang et al., CVPR 2022), which applies it to the stride-32
map only, where every position can afford to look at every other:

    x   = conv3x3(input)                      # in_channels -> channels, BN, ReLU
    qk  = x + P                               # P: fixed 2-D sine position embedding
    q   = conv1x1(qk), k = conv1x1(qk)        # channels -> key_channels
    v   = conv1x1(x)                          # channels -> channels
    A   = softmax(q^T k)                      # (N, N), over all N = h*w key positions
    y   = x + gamma * (v A^T)                 # gamma learned, initialised to 0
    out = conv3x3(y)                          # BN, ReLU

This is the position-attention form of DANet (Fu et al., 2019), which GANet's neck
follows: 1x1 query/key to a few channels, a value of full width, no 1/sqrt(d) scaling
(the projections learn the temperature), and the residual scaled by a gamma that
starts at 0, so a freshly built block is exactly ``conv3x3(conv3x3(input))`` and
attention is grown into rather than forced on pretrained features.

**Position embedding: added, not concatenated.** DETR (Carion et al., 2020) adds its
fixed sine embedding to the queries' and keys' inputs, not to the values: the scores
``q^T k`` then depend on where two positions are, while what is gathered (the values)
stays pure content. Adding costs nothing at the 1x1 projections, where concatenating
would double their input channels for the same information, and it keeps the block's
output free of a position signal that later convs would have to undo. The embedding
has ``channels`` channels: half encode the row and half the column, each as
interleaved sin/cos pairs at geometric frequencies ``temperature ** (2i / d)``, over
coordinates normalised to ``(0, 2*pi]`` so it does not depend on the map's size in
pixels. It depends only on ``(h, w)`` and is a constant of the traced graph.

**Quantization** (module swapping, see :mod:`hat.quant`): the convs are ordinary
modules; the position add, both matmuls, the gamma product (``mul_scalar``: the
learned scalar sits on its own 8-bit grid) and the residual add each go through their
own ``FloatFunctional``, so onnxruntime fuses them into QLinearAdd / QLinearMatMul /
QLinearMul. Once the model is quantized the embedding constant is put on a fixed
uint8 grid of step 1/127 (see :data:`POS_SCALE`), and the softmax output goes through
a ``QuantStub``, so the softmax sits between a
DequantizeLinear and a QuantizeLinear. The softmax itself has no int8 form in HAT's
converter (it runs in float in the simulation); onnxruntime's CPU provider fuses the
``DQ -> Softmax -> Q`` group into its ``com.microsoft`` ``QLinearSoftmax`` kernel
(uint8/int8, since onnxruntime 1.13) when the graph is optimised. Reshapes and
transposes only move values and stay on their input's grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat.quant import FloatFunctional, QuantStub
from hat.quant.fake_quant import qparams_of
from hat.registry import register_type

#: The embedding's grid once quantized: [-1, 1] as uint8 codes 1..255 around 128. uint8,
#: like the activations after export: onnxruntime fuses ``DQ(x) + DQ(c) -> Q`` into
#: QLinearAdd only when both operands have the same 8-bit type (an int8 constant, as a
#: QuantStub's signed grid would give, leaves the add in float).
POS_SCALE = 1.0 / 127.0


@lru_cache(maxsize=16)
def _sine_embedding(channels: int, height: int, width: int, temperature: float) -> torch.Tensor:
    """The (1, channels, height, width) embedding, computed once per size (a constant)."""
    if channels % 4:
        raise ValueError(f"the sine position embedding needs channels divisible by 4, got {channels}")
    feats = channels // 2  # per axis
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float64) / (height + eps) * 2 * math.pi
    cols = torch.arange(1, width + 1, dtype=torch.float64) / (width + eps) * 2 * math.pi
    # Frequencies come in pairs: dimension 2i is sin, 2i + 1 cos, both at temperature ** (2i / feats).
    index = torch.arange(feats, dtype=torch.float64)
    freq = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / feats)

    def encode(coords: torch.Tensor) -> torch.Tensor:  # (n,) -> (feats, n)
        phase = coords[None, :] / freq[:, None]
        return torch.where((index % 2 == 0)[:, None], phase.sin(), phase.cos())

    pos_y = encode(rows)[:, :, None].expand(feats, height, width)
    pos_x = encode(cols)[:, None, :].expand(feats, height, width)
    return torch.cat([pos_y, pos_x]).float().unsqueeze(0).contiguous()


def sine_position_embedding(channels: int, height: int, width: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine embedding, ``(1, channels, height, width)``: rows first, then columns.

    Values lie in [-1, 1]. A fresh copy (the cached tensor is never handed out).
    """
    return _sine_embedding(int(channels), int(height), int(width), float(temperature)).clone()


class RebuiltBuffers:
    """A module mixin: buffers that are saved (export writes them as initializers) but never loaded.

    A position embedding is a function of the map size alone, and a checkpoint may hold
    one for another size: loading skips the names in ``rebuilt_buffers`` (neither loaded
    nor reported missing or unexpected) and the module keeps, or rebuilds, its own.
    """

    rebuilt_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        own = {}
        for name in self.rebuilt_buffers:
            state_dict.pop(prefix + name, None)
            own[name] = self._buffers.pop(name)
        try:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        finally:
            self._buffers.update(own)


@register_type("NonLocalAttention")
class NonLocalAttention(RebuiltBuffers, nn.Module):
    """Non-local attention on one map: conv3x3, attention with a gamma-scaled residual, conv3x3.

    Args:
        in_channels: channels of the input map (160 for MixVarGENet's stride-32 map).
        channels: width of the block and of its output (32 in GANet).
        key_channels: channels of the query and key projections (8 in GANet).
        temperature: base of the sine embedding's frequencies (10000, as DETR).
        bn_kwargs: BatchNorm overrides for the two 3x3 convs.
        feature_size: the map size the position embedding is first built for (10x25:
            stride 32 of 320x800); another size rebuilds it at the first forward.

    ``forward(x)`` takes ``(B, in_channels, h, w)`` and returns ``(B, channels, h, w)``.
    The attention matrix is ``(B, h*w, h*w)``: meant for a coarse map (250 positions at
    stride 32 of a 320x800 image).
    """

    rebuilt_buffers = ("pos_embedding",)

    def __init__(
        self,
        in_channels: int,
        channels: int = 32,
        key_channels: int = 8,
        temperature: float = 10000.0,
        bn_kwargs: Mapping[str, Any] | None = None,
        feature_size: tuple[int, int] = (10, 25),
    ) -> None:
        super().__init__()
        if min(in_channels, channels, key_channels) < 1:
            raise ValueError(
                f"in_channels, channels and key_channels must be positive, got {in_channels}, {channels}, "
                f"{key_channels}"
            )
        if channels % 4:
            raise ValueError(f"channels must be divisible by 4 (sin/cos per axis), got {channels}")
        self.in_channels = in_channels
        self.channels = channels
        self.key_channels = key_channels
        self.temperature = temperature
        self.reduce = ConvBNAct(in_channels, channels, 3, bn_kwargs=bn_kwargs)
        height, width = feature_size
        self.register_buffer("pos_embedding", sine_position_embedding(channels, height, width, temperature))
        self.pos_add = FloatFunctional()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.energy = FloatFunctional()
        self.softmax = nn.Softmax(dim=-1)
        self.attn_quant = QuantStub()
        self.aggregate = FloatFunctional()
        #: The residual's scale: 0 at first, so the block starts as the identity path.
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = FloatFunctional()
        self.residual = FloatFunctional()
        self.out = ConvBNAct(channels, channels, 3, bn_kwargs=bn_kwargs)

    def position_embedding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The block's embedding for a ``height x width`` map, on ``like``'s device.

        Held in a *persistent* buffer, rebuilt when the map size changes: torch's ONNX
        exporter writes a state-dict buffer as an initializer behind its Q/DQ, so the add
        reads an int8 constant, where a non-persistent buffer or a tensor made in
        ``forward`` is folded through its quantizer into a float constant (and the add
        stays float). Loading ignores it (:class:`RebuiltBuffers`): it is a
        function of the map size alone.
        """
        pos = self.pos_embedding
        if pos.shape[-2:] != (height, width) or pos.device != like.device or pos.dtype != like.dtype:
            self.pos_embedding = sine_position_embedding(self.channels, height, width, self.temperature).to(
                like.device, like.dtype
            )
        return self.pos_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"NonLocalAttention expects (B, {self.in_channels}, h, w), got {tuple(x.shape)}")
        x = self.reduce(x)
        b, c, h, w = x.shape
        n = h * w
        pos = self.position_embedding(int(h), int(w), x)
        if qparams_of(x) is not None:  # quantized: the constant on its own exact uint8 grid
            pos = torch.fake_quantize_per_tensor_affine(pos, POS_SCALE, 128, 0, 255)
        qk = self.pos_add.add(x, pos)
        query = self.query(qk).reshape(b, self.key_channels, n).transpose(1, 2)  # (B, N, Ck)
        key = self.key(qk).reshape(b, self.key_channels, n)  # (B, Ck, N)
        value = self.value(x).reshape(b, c, n).transpose(1, 2)  # (B, N, C)
        energy = self.energy.matmul(query, key)  # (B, N_query, N_key)
        attention = self.attn_quant(self.softmax(energy))
        gathered = self.aggregate.matmul(attention, value)  # (B, N, C): sum over keys
        gathered = gathered.transpose(1, 2).reshape(b, c, h, w)
        y = self.residual.add(x, self.scale.mul_scalar(gathered, self.gamma))
        return self.out(y)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, key_channels={self.key_channels}"
