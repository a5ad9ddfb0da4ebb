"""GANet: image -> keypoint heatmap, start-point offsets, sub-cell offsets (+ the loss in training).

``QuantStub -> backbone -> neck -> head -> DeQuantStub`` (one per output): everything
between the stubs is int8 on the device except the attention's softmax (onnxruntime
fuses it into its int8 ``QLinearSoftmax``) and the FPN's bilinear resizes, and the
three raw maps leave the network as float. It follows core's task-model contract
(:mod:`hat.postprocess`) the way ``HeatmapKeypointModel`` does: in training it returns
the losses, in eval exactly what export writes; grouping keypoints into lanes is the
config's ``post_process`` (``GANetPostProcess``), the one path for the torch and ONNX
models alike. The loss holds no parameters, runs on the host, and is kept out of the
module tree, so the quantizer never sees it and the state_dict is the network's
alone, identical with ``deploy`` on or off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hat.postprocess import keep_outside
from hat.quant import DeQuantStub, QuantStub
from hat.registry import register_type

#: The raw outputs, in export order.
OUTPUT_NAMES = ("kpt_heatmap", "start_offset", "sub_offset")


@register_type("GANet")
class GANet(nn.Module):
    """Backbone + GANetNeck + GANetHead, with an optional loss around them.

    Args:
        backbone: returns a list of feature maps at strides 8, 16, 32 (``MixVarGENet``).
        neck: takes that list and returns a list of maps (``GANetNeck``).
        head: takes the neck's list and returns the dict of :data:`OUTPUT_NAMES` (``GANetHead``).
        loss: ``loss(outputs, batch) -> {"loss": total, ...}`` (``GANetLoss``); training needs it.
        deploy: the exported form: no loss is kept, and ``forward`` returns the raw maps
            in every mode.

    ``forward(batch)`` reads ``batch["img"]`` ``(B, 3, H, W)`` (or takes the tensor
    itself). Training returns the loss's dict; eval, deploy or a bare tensor input
    returns ``{"kpt_heatmap": (B, 1, H/8, W/8), "start_offset": (B, 2, ...),
    "sub_offset": (B, 2, ...)}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        loss: Any = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.dequant = nn.ModuleDict({name: DeQuantStub() for name in OUTPUT_NAMES})
        self.deploy = deploy
        keep_outside(self, "loss", loss, deploy=deploy)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        img = batch if isinstance(batch, torch.Tensor) else batch["img"]
        raw = self.head(self.neck(self.backbone(self.quant(img))))
        missing = [name for name in OUTPUT_NAMES if name not in raw]
        if missing:
            raise KeyError(f"the head returned {sorted(raw)}; GANet needs {list(OUTPUT_NAMES)}")
        outputs = {name: self.dequant[name](raw[name]) for name in OUTPUT_NAMES}
        if self.deploy or isinstance(batch, torch.Tensor) or not self.training:
            return outputs
        return self.losses(outputs, batch)

    def losses(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The loss's dict (``{"loss": total, ...}``) of a training batch."""
        if self.loss is None:
            raise RuntimeError("training GANet needs a loss (GANetLoss)")
        result = self.loss(outputs, batch)
        if not isinstance(result, Mapping) or "loss" not in result:
            raise TypeError("GANet's loss must return a dict with the total under 'loss'")
        return dict(result)

    def extra_repr(self) -> str:
        return f"deploy={self.deploy}, loss={self.loss!r}"
