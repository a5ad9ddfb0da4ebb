"""The query interaction module (QIM): a track's decoder state -> its query for the next frame.

MOTR's ``QueryInteractionModule`` (``_update_track_embedding``), on the fixed set of
track slots: the tracks attend to each other (masked multi-head self-attention: an empty
slot is no key), then an FFN, each with a residual and LayerNorm, give ``tgt``; the slot's
query is updated as ``LayerNorm(query + FFN(tgt))``. MOTR keeps the positional half of its
query apart and updates it the same way; here a slot's position embedding is computed from
its reference box in the decoder (see :mod:`hat_motr.model.transformer`), so the QIM updates
the content query alone, and the next reference box is the box predicted this frame.

It is its own deploy graph (``MotrModel(deploy="qim")``): the tracker runs it between two
frames on the slots it keeps, with fixed shapes. Inputs are float (the outputs of the
detection graph, or of the tracker's gather), so it starts with its own QuantStubs.
"""

from __future__ import annotations

import torch
from torch import nn

from hat.quant import FloatFunctional, QuantStub
from hat_motr.model.blocks import FeedForward, MultiHeadAttention, NormQuant, mask_bias


class QueryInteractionModule(nn.Module):
    """``forward(hidden (B, T, d), query_pos (B, T, d), mask (B, T)) -> (B, T, d)`` the next queries.

    Args:
        d_model, num_heads, ffn_channels, dropout: as the decoder's (MOTR: 256, 8, 1024, 0.1).

    The output of an empty slot (``mask`` 0) is meaningless; the detection graph zeroes
    empty slots' queries anyway.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden_quant = QuantStub()
        self.query_quant = QuantStub()
        self.pos_add = FloatFunctional()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.residual1 = FloatFunctional()
        self.norm1 = NormQuant(d_model)
        self.ffn = FeedForward(d_model, ffn_channels, dropout)
        self.residual2 = FloatFunctional()
        self.norm2 = NormQuant(d_model)
        self.query_ffn = FeedForward(d_model, ffn_channels, dropout)
        self.residual3 = FloatFunctional()
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, hidden: torch.Tensor, query_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden_quant(hidden)
        q = self.query_quant(query_pos)
        qk = self.pos_add.add(h, q)
        tgt = self.norm1(self.residual1.add(h, self.dropout(self.attn(qk, qk, h, mask_bias(mask)))))
        tgt = self.norm2(self.residual2.add(tgt, self.dropout(self.ffn(tgt))))
        return self.norm3(self.residual3.add(q, self.dropout(self.query_ffn(tgt))))
