"""Transformer pieces written for HAT's module-swapping quantizer: dense multi-head attention,
the feed-forward block, and the small helpers that keep tensors on their int8 grids.

**Why dense attention.** The reference MOTR (Zeng et al., ECCV 2022) builds its encoder
and its decoder's cross-attention from Deformable DETR's multi-scale deformable attention:
each query samples a few points of the feature maps with ``grid_sample``. onnxruntime has
no int8 GridSample (its CPU provider runs it in float only), so that form would leave the
heaviest ops of the transformer float between DequantizeLinear and QuantizeLinear, and the
sampling offsets (sub-pixel positions) do not survive 8 bits either. Here both attentions
are dense multi-head attention over the stride-32 tokens only (25x45 = 1125 tokens at
800x1422): every product is a ``FloatFunctional.matmul`` (QLinearMatMul on the device) and
every projection an ``nn.Linear`` (QGemm / QLinearMatMul). Dense attention over one coarse
map costs O(N^2) instead of O(N * points), which at stride 32 is affordable, and needs
no custom op.

**What stays float, and why.** ``LayerNorm`` and ``Softmax`` have no int8 kernel (the
converter leaves them float and says so). The attention scores are scaled by
``1/sqrt(d_head)`` and receive the validity mask's additive bias *in float*, between the
scores' DequantizeLinear and the softmax: a mask bias of -1e4 on an int8 grid would
stretch its range so far that every real score rounds to the same code. Each LayerNorm
is followed by a ``QuantStub`` so that the Linear layers that read it get int8 inputs
(otherwise every projection after a norm would run in float). The softmax output goes
through a standalone ``nn.ReLU`` (an identity on probabilities): the converter gives a
standalone ReLU an unsigned [0, t] quantizer, so the probabilities get all 256 codes
rather than the 128 non-negative codes of a symmetric QuantStub grid; onnxruntime drops a
Relu whose QuantizeLinear zero point is the type's minimum.

**Grids through data movement.** A reshape or transpose makes a new tensor without the
quantizer's tag, so the next Linear would not round its bias onto the int32 grid (and
export would then refuse it). :func:`moved` re-tags a rearranged tensor with its source's
grid, as core's ``QTransparent`` does for movement modules.
"""

from __future__ import annotations

import torch
from torch import nn

from hat.quant import FloatFunctional, QuantStub
from hat.quant.fake_quant import boundary_of, fake_quant, qparams_of, tag, with_boundary

#: The additive bias of a masked key. Finite, so a query whose every key is masked (an
#: empty set of tracks in the QIM) gets a uniform average instead of NaN; exp(-1e4)
#: underflows to exactly 0 in float32, so a masked key gets no weight otherwise.
MASK_BIAS = -1.0e4
#: Box coordinates are clamped to [eps, 1 - eps] before the inverse sigmoid, which keeps
#: reference logits within +-6.9 (a range an int8 grid can hold usefully).
INVERSE_SIGMOID_EPS = 1.0e-3


def moved(y: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``y``, a rearrangement of ``source``'s values (reshape, transpose, slice), on ``source``'s grid.

    In float (or while calibrating) ``source`` has no grid and ``y`` is returned as it is.
    Re-quantizing with the same parameters changes no value; it keeps the tag, so the
    Linear that reads ``y`` rounds its bias on the runtime's int32 grid.
    """
    params = qparams_of(source)
    if params is not None:
        return tag(fake_quant(y, params), params)
    boundary = boundary_of(source)
    if boundary is not None:
        return with_boundary(y, boundary)
    return y


def inverse_sigmoid(x: torch.Tensor, eps: float = INVERSE_SIGMOID_EPS) -> torch.Tensor:
    """``log(x / (1 - x))`` of ``x`` clamped to [eps, 1 - eps] (Deformable DETR's reference-point logit)."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """Validity ``(B, N)`` in {0, 1} -> the additive attention bias: 0 where valid, :data:`MASK_BIAS` elsewhere."""
    return (1.0 - mask.to(torch.float32)) * MASK_BIAS


def box_sine_embedding(boxes: torch.Tensor, channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(..., 4)`` boxes (cx, cy, w, h in [0, 1]) -> ``(..., channels)`` sine embedding.

    DAB-DETR's ``gen_sineembed_for_position`` for 4-d anchors: each coordinate gets
    ``channels / 4`` values, interleaved sin/cos pairs at frequencies ``temperature **
    (2i / (channels / 4))`` over the coordinate scaled to [0, 2*pi]. Values lie in [-1, 1].
    Float ops on a small tensor (``slots x 4``); the MLP after it is int8.
    """
    if channels % 8:
        raise ValueError(f"the box sine embedding needs channels divisible by 8, got {channels}")
    per = channels // 4
    index = torch.arange(per, dtype=torch.float32, device=boxes.device)
    freq = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / per)
    phase = boxes.to(torch.float32)[..., None] * (2 * torch.pi) / freq  # (..., 4, per)
    emb = torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)  # (..., 4, per)
    return emb.flatten(-2).to(boxes.dtype)


def mlp(in_channels: int, hidden: int, out_channels: int, num_layers: int) -> nn.Sequential:
    """Linear (+ ReLU) x (num_layers - 1), then a Linear: each Linear + ReLU pair fuses into one int8 op."""
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_channels))
    return nn.Sequential(*layers)


class FeedForward(nn.Sequential):
    """The transformer FFN: Linear -> ReLU -> Dropout -> Linear (the first pair fuses into one int8 op)."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_model, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention from Linear layers and ``FloatFunctional.matmul``.

    ``forward(query (B, Nq, d), key (B, Nk, d), value (B, Nk, d), key_bias=None)`` returns
    ``(B, Nq, d)``; ``key_bias`` ``(B, Nk)`` is added to every query's scores for that key
    (see :func:`mask_bias`). ``torch.nn.MultiheadAttention`` is not used: HAT's converter
    does not quantize it (it would stay float as a whole).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.scores = FloatFunctional()
        self.softmax = nn.Softmax(dim=-1)
        #: Identity on probabilities; gives them an unsigned 8-bit grid (see the module docstring).
        self.probs = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.gather = FloatFunctional()
        self.out_proj = nn.Linear(d_model, d_model)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return moved(x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2), x)  # (B, h, N, dh)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, nq, _ = query.shape
        q = self._heads(self.q_proj(query))
        k_flat = self.k_proj(key)
        k = moved(self._heads(k_flat).transpose(-1, -2), k_flat)  # (B, h, dh, Nk)
        v = self._heads(self.v_proj(value))
        scores = self.scores.matmul(q, k) * self.scale  # float from here to the probabilities' quantizer
        if key_bias is not None:
            scores = scores + key_bias[:, None, None, :].to(scores.dtype)
        attn = self.dropout(self.probs(self.softmax(scores)))
        out = self.gather.matmul(attn, v)  # (B, h, Nq, dh)
        out = moved(out.transpose(1, 2).reshape(b, nq, self.d_model), out)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}"


class NormQuant(nn.Module):
    """LayerNorm (float: no int8 kernel), then a QuantStub so the layers that read it are int8."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.quant = QuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.norm(x))
