"""MOTR's transformer: a DETR encoder over the stride-32 tokens and a decoder with box refinement.

Post-norm layers, as DETR and Deformable DETR (each sub-layer: residual add, LayerNorm),
with dense attention (see :mod:`hat_motr.model.blocks` for why not deformable attention).

*Encoder*: the tokens get DETR's fixed 2-D sine position embedding added to their queries
and keys in every layer. The embedding is a constant of the graph: a persistent buffer
(torch's exporter writes it as an initializer), put on a fixed uint8 grid of step 1/127
once the model is quantized, so each position add is an int8 add (the trick of core's
``hat.models.attention.NonLocalAttention``). The decoder's keys are ``memory + pos``,
computed once here for every decoder layer.

*Decoder*: every slot (track or detect) has a content vector and a reference box. A
slot's query position embedding is computed from its current reference box (a sine
embedding and a two-layer MLP, as DAB-DETR), so the box each layer
refines also moves where the next layer looks. Each layer predicts a box delta in
inverse-sigmoid space that is added to the reference (``FloatFunctional.add``, int8), and
the sum is the next layer's reference (detached in training, as Deformable DETR). The
class head is shared by all layers (the deploy graph calls it once, on the last layer);
the box heads and position MLPs, which the deploy graph calls in every layer, are per
layer. The validity mask of the
slots enters the self-attention as an additive bias on the keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hat.models.attention import POS_SCALE, RebuiltBuffers, sine_position_embedding
from hat.quant import FloatFunctional, QuantStub
from hat.quant.fake_quant import qparams_of
from hat_motr.model.blocks import FeedForward, MultiHeadAttention, NormQuant, box_sine_embedding, mlp, moved


class EncoderLayer(nn.Module):
    """Self-attention with position-added queries and keys, then the FFN (post-norm)."""

    def __init__(self, d_model: int, num_heads: int, ffn_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pos_add = FloatFunctional()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.residual1 = FloatFunctional()
        self.norm1 = NormQuant(d_model)
        self.ffn = FeedForward(d_model, ffn_channels, dropout)
        self.residual2 = FloatFunctional()
        self.norm2 = NormQuant(d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = self.pos_add.add(x, pos)
        x = self.norm1(self.residual1.add(x, self.dropout(self.attn(qk, qk, x))))
        return self.norm2(self.residual2.add(x, self.dropout(self.ffn(x))))


class DecoderLayer(nn.Module):
    """Masked self-attention over the slots, cross-attention to the memory, FFN (post-norm)."""

    def __init__(self, d_model: int, num_heads: int, ffn_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_pos_add = FloatFunctional()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.residual1 = FloatFunctional()
        self.norm1 = NormQuant(d_model)
        self.cross_pos_add = FloatFunctional()
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.residual2 = FloatFunctional()
        self.norm2 = NormQuant(d_model)
        self.ffn = FeedForward(d_model, ffn_channels, dropout)
        self.residual3 = FloatFunctional()
        self.norm3 = NormQuant(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_key: torch.Tensor,
        self_bias: torch.Tensor,
    ) -> torch.Tensor:
        qk = self.self_pos_add.add(tgt, query_pos)
        tgt = self.norm1(self.residual1.add(tgt, self.dropout(self.self_attn(qk, qk, tgt, self_bias))))
        q = self.cross_pos_add.add(tgt, query_pos)
        tgt = self.norm2(self.residual2.add(tgt, self.dropout(self.cross_attn(q, memory_key, memory))))
        return self.norm3(self.residual3.add(tgt, self.dropout(self.ffn(tgt))))


class Encoder(RebuiltBuffers, nn.Module):
    """Tokens of one ``(B, d, h, w)`` map -> ``(memory, memory + pos)``, each ``(B, h*w, d)``.

    ``feature_size``: the ``(h, w)`` the position buffer is first built for (the stride-32
    size of the deploy input); another size rebuilds it at the first forward.
    """

    rebuilt_buffers = ("pos_embedding",)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        ffn_channels: int,
        dropout: float = 0.0,
        feature_size: tuple[int, int] = (25, 45),
        temperature: float = 10000.0,
    ) -> None:
        super().__init__()
        if d_model % 4:
            raise ValueError(f"d_model must be divisible by 4 (sin/cos per axis), got {d_model}")
        self.d_model = d_model
        self.temperature = temperature
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn_channels, dropout) for _ in range(num_layers))
        self.key_add = FloatFunctional()
        h, w = int(feature_size[0]), int(feature_size[1])
        self.pos_size = (h, w)
        self.register_buffer("pos_embedding", self._tokens(h, w))

    def _tokens(self, height: int, width: int) -> torch.Tensor:
        return sine_position_embedding(self.d_model, height, width, self.temperature).flatten(2).transpose(1, 2)

    def position_tokens(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """``(1, h*w, d)`` sine embedding on ``like``'s device; on its fixed uint8 grid once quantized.

        A persistent buffer (rebuilt when the map size changes) for the reason core's
        ``NonLocalAttention.position_embedding`` gives: the exporter writes it as an
        initializer behind its Q/DQ, so each add reads an int8 constant.
        """
        pos = self.pos_embedding
        if self.pos_size != (height, width) or pos.device != like.device or pos.dtype != like.dtype:
            self.pos_embedding = self._tokens(height, width).to(like.device, like.dtype)
            self.pos_size = (height, width)
            pos = self.pos_embedding
        if qparams_of(like) is not None:
            pos = torch.fake_quantize_per_tensor_affine(pos, POS_SCALE, 128, 0, 255)
        return pos

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feature.shape
        x = moved(feature.flatten(2).transpose(1, 2), feature)
        pos = self.position_tokens(int(h), int(w), x)
        for layer in self.layers:
            x = layer(x, pos)
        return x, self.key_add.add(x, pos)


class Decoder(nn.Module):
    """Decoder layers with per-layer box refinement and query-position MLPs, and the shared class head.

    ``forward(tgt, ref_logit, ref_box, memory, memory_key, self_bias, all_layers)``:
    ``tgt`` ``(B, Q, d)`` and ``ref_logit`` ``(B, Q, 4)`` (the reference boxes in
    inverse-sigmoid space) are int8 (after their QuantStubs); ``ref_box`` is
    ``sigmoid(ref_logit)`` in float (the first layer's query positions come from it).
    Returns ``(hidden, class_logits, box_logits)``: the last layer's ``(B, Q, d)`` states,
    and per layer (only the last one unless ``all_layers``: the deploy graph computes no
    unused head) the ``(B, Q, num_classes)`` logits; ``box_logits`` holds every layer's
    refined boxes in inverse-sigmoid space (each layer's is the next one's reference).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        ffn_channels: int,
        num_classes: int = 1,
        dropout: float = 0.0,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the decoder needs at least one layer, got {num_layers}")
        self.d_model = d_model
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, ffn_channels, dropout) for _ in range(num_layers))
        #: One grid for every layer's box sine embedding (its values are in [-1, 1] in every layer).
        self.pos_quant = QuantStub()
        #: Per layer, though DAB-DETR shares one: onnxruntime fuses a Q/DQ group into an int8
        #: kernel only when the weight's DequantizeLinear feeds that one node, so a module
        #: called by every layer would run as float Gemms (measured: it did).
        self.query_pos_heads = nn.ModuleList(mlp(d_model, d_model, d_model, 2) for _ in range(num_layers))
        self.class_head = nn.Linear(d_model, num_classes)
        self.box_heads = nn.ModuleList(mlp(d_model, d_model, 4, 3) for _ in range(num_layers))
        self.refine = nn.ModuleList(FloatFunctional() for _ in range(num_layers))
        nn.init.constant_(self.class_head.bias, -math.log((1 - prior_prob) / prior_prob))
        for head in self.box_heads:  # refinement starts as the identity: each box is its reference
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(
        self,
        tgt: torch.Tensor,
        ref_logit: torch.Tensor,
        ref_box: torch.Tensor,
        memory: torch.Tensor,
        memory_key: torch.Tensor,
        self_bias: torch.Tensor,
        all_layers: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        class_logits: list[torch.Tensor] = []
        box_logits: list[torch.Tensor] = []
        box = ref_box
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            query_pos = self.query_pos_heads[index](self.pos_quant(box_sine_embedding(box, self.d_model)))
            tgt = layer(tgt, query_pos, memory, memory_key, self_bias)
            refined = self.refine[index].add(ref_logit, self.box_heads[index](tgt))
            box_logits.append(refined)
            if all_layers or index == last:
                class_logits.append(self.class_head(tgt))
            ref_logit = refined.detach() if self.training else refined
            box = torch.sigmoid(ref_logit)
        return tgt, class_logits, box_logits
