"""HeatmapKeypointModel: image -> keypoint heatmaps (+ loss in training, + keypoints in eval).

The network is ``QuantStub -> backbone -> decode_head -> DeQuantStub``: everything
between the stubs is int8 on the device (with a ReLU EfficientNet and the
DeconvDecoder, nothing is left float), and the heatmaps leave the network as float.
The loss and the heatmap decoding are not part of the network: they hold no
parameters, run on the host, and are kept out of the module tree (see
:meth:`HeatmapKeypointModel.__init__`), so that

* the quantizer never sees them (no "left float" entries for a loss);
* the state_dict is the network's alone, identical with ``deploy`` on or off, so a
  training checkpoint loads into the deploy (export) model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hat.quant import DeQuantStub, QuantStub
from hat.registry import register_type


@register_type("HeatmapKeypointModel")
class HeatmapKeypointModel(nn.Module):
    """Backbone + heatmap head, with an optional loss and decoder around it.

    Args:
        backbone: returns a list of feature maps (e.g. ``efficientnet``).
        decode_head: takes that list and returns ``(B, K, h, w)`` heatmaps (``DeconvDecoder``).
        loss: ``loss(pred, target, weight)`` (``HeatmapMSELoss``); used when the batch
            carries ``heatmap`` targets (training data), reported under ``"loss"``.
        post_process: ``decoder(heatmap) -> (keypoints, scores)`` (``HeatmapDecoder``);
            applied in eval mode only (training needs no coordinates).
        deploy: the exported form: ``forward`` returns only ``{"heatmap": ...}``, with no
            loss and no decoding (both stay on the host).

    ``forward(batch)`` reads ``batch["img"]`` ``(B, 3, H, W)`` (and, for the loss,
    ``batch["heatmap"]`` and ``batch["heatmap_weight"]``) and returns a dict with
    ``"heatmap"``, plus ``"loss"`` and ``"pred_keypoints"``/``"pred_scores"`` as above.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        loss: nn.Module | None = None,
        post_process: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.backbone = backbone
        self.decode_head = decode_head
        self.dequant = DeQuantStub()
        self.deploy = deploy
        if loss is not None and any(True for _ in loss.parameters()):
            raise ValueError("the loss must not have parameters: it is kept outside the network's state")
        # Plain attributes, not submodules (object.__setattr__ skips nn.Module's registration).
        object.__setattr__(self, "loss", None if deploy else loss)
        object.__setattr__(self, "post_process", None if deploy else post_process)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        img = batch if isinstance(batch, torch.Tensor) else batch["img"]
        heatmap = self.dequant(self.decode_head(self.backbone(self.quant(img))))
        outputs = {"heatmap": heatmap}
        if self.deploy or isinstance(batch, torch.Tensor):
            return outputs
        if self.loss is not None and "heatmap" in batch:
            outputs["loss"] = self.loss(
                heatmap, batch["heatmap"], batch.get("heatmap_weight"), keypoints=batch.get("keypoints")
            )
        if self.post_process is not None and not self.training:
            keypoints, scores = self.post_process(heatmap)
            outputs["pred_keypoints"] = keypoints
            outputs["pred_scores"] = scores
        return outputs

    def extra_repr(self) -> str:
        return f"deploy={self.deploy}, loss={self.loss!r}, post_process={self.post_process!r}"
