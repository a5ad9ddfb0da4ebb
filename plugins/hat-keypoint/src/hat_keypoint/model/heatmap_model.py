"""HeatmapKeypointModel: image -> keypoint heatmaps (+ the loss in training).

The network is ``QuantStub -> backbone -> decode_head -> DeQuantStub``: everything
between the stubs is int8 on the device (with a ReLU EfficientNet and the
DeconvDecoder, nothing is left float), and the heatmaps leave the network as float.
It follows core's task-model contract (:mod:`hat.postprocess`): in training it returns
the loss, in eval exactly what export writes, ``{"heatmap": ...}``. Decoding heatmaps
into keypoints is the config's ``post_process`` (:class:`KeypointPostProcess`), the one
path for the torch and ONNX models alike. The loss holds no parameters, runs on the
host, and is kept out of the module tree (see :meth:`HeatmapKeypointModel.__init__`), so that

* the quantizer never sees it (no "left float" entries for a loss);
* the state_dict is the network's alone, identical with ``deploy`` on or off, so a
  training checkpoint loads into the deploy (export) model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hat.postprocess import keep_outside
from hat.quant import DeQuantStub, QuantStub
from hat.registry import register_type


@register_type("HeatmapKeypointModel")
class HeatmapKeypointModel(nn.Module):
    """Backbone + heatmap head, with an optional loss around it.

    Args:
        backbone: returns a list of feature maps (e.g. ``efficientnet``).
        decode_head: takes that list and returns ``(B, K, h, w)`` heatmaps (``DeconvDecoder``).
        loss: ``loss(pred, target, weight)`` (``HeatmapMSELoss``); training needs it.
        deploy: the exported form: no loss is kept, and ``forward`` returns the heatmaps
            in every mode.

    ``forward(batch)`` reads ``batch["img"]`` ``(B, 3, H, W)``. Training (``batch`` with
    ``heatmap`` and optionally ``heatmap_weight`` and ``keypoints``) returns
    ``{"loss": ...}``; eval, deploy or a bare tensor input returns ``{"heatmap": ...}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        loss: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.backbone = backbone
        self.decode_head = decode_head
        self.dequant = DeQuantStub()
        self.deploy = deploy
        keep_outside(self, "loss", loss, deploy=deploy)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        img = batch if isinstance(batch, torch.Tensor) else batch["img"]
        heatmap = self.dequant(self.decode_head(self.backbone(self.quant(img))))
        if self.deploy or isinstance(batch, torch.Tensor) or not self.training:
            return {"heatmap": heatmap}
        return self.losses(heatmap, batch)

    def losses(self, heatmap: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": ...}`` of a training batch against its heatmap targets."""
        if self.loss is None:
            raise RuntimeError("training HeatmapKeypointModel needs a loss")
        if "heatmap" not in batch:
            raise KeyError("a training batch needs 'heatmap' targets (GenerateHeatmapTarget in the transforms)")
        return {
            "loss": self.loss(heatmap, batch["heatmap"], batch.get("heatmap_weight"), keypoints=batch.get("keypoints"))
        }

    def extra_repr(self) -> str:
        return f"deploy={self.deploy}, loss={self.loss!r}"
