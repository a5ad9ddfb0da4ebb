"""The small MOTR the model and sequence tests build (a helper module, not a test module)."""

from __future__ import annotations

import torch

from hat.models import EfficientNet
from hat_motr.model import MotrModel

IMAGE = (64, 96)  # stride 32: a 2x3 token map
D_MODEL, TRACKS, QUERIES = 32, 8, 16
SLOTS = TRACKS + QUERIES


def tiny(deploy: bool | str = False, seed: int = 0, **overrides) -> MotrModel:
    """EfficientNet-b0 (ReLU, no SE) and a 1+2-layer transformer of width 32, seeded."""
    torch.manual_seed(seed)
    backbone = EfficientNet(
        "b0", activation="relu", use_se_block=False, include_top=False, out_indices=[4], drop_connect_rate=0.0
    )
    args = dict(
        d_model=D_MODEL,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        ffn_channels=64,
        num_queries=QUERIES,
        num_track_slots=TRACKS,
        feature_size=(2, 3),
        deploy=deploy,
    )
    return MotrModel(backbone, **{**args, **overrides})
