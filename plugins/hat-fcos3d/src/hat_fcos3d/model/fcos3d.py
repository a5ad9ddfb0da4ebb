"""FCOS3D: image -> per-level head outputs (+ losses in training, + 3D boxes in eval).

The network is ``QuantStub -> backbone -> neck -> FCOS3DHead`` (the head ends in one
``DeQuantStub`` per output kind): with a ReLU EfficientNet and the BiFPN everything
between the stubs is int8, and only the head's per-level scales are float multiplies
on its outputs. Targets, losses and decoding hold no parameters and run on the host;
like the keypoint model they are kept out of the module tree so the quantizer never
sees them and the state_dict is the network's alone (the same with ``deploy`` on or off).

Batch keys:

* ``img``: ``(B, 3, H, W)`` normalized float image (``H``, ``W`` multiples of the
  largest stride keep every level's map aligned with the points' layout).
* ``intrinsic``: ``(B, 3, 3)`` camera matrix of the image as fed (after resize/pad).
* training, one entry per image (lists, since the box count varies):
  ``gt_boxes_3d`` ``(N, 9)`` camera frame ``x, y, z, w, l, h, yaw, vx, vz`` (velocity
  NaN where unknown), ``gt_labels`` ``(N,)`` int, ``gt_attributes`` ``(N,)`` int
  (-1 = none; optional), and optionally ``gt_bboxes_2d`` ``(N, 4)`` ``x1, y1, x2, y2``
  (otherwise the projected corners' extent, clipped to the image).

Outputs: training -> ``{"loss_cls": .., "loss_offset": .., ...}`` (every key matches the
engine's ``collect_loss_by_regex("loss")``); eval -> ``{"raw": {kind: [levels]},
"detections_cam": [per image dict]}``; ``deploy`` (or a bare tensor input) -> the flat
``{"cls_0": .., ..., "centerness_4": ..}`` that export writes as graph outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hat.quant import QuantStub
from hat.registry import register_type
from hat_fcos3d.model.head import flatten_outputs
from hat_fcos3d.model.loss import FCOS3DLoss
from hat_fcos3d.model.postprocess import FCOS3DPostProcess
from hat_fcos3d.model.target import GT_KEYS, FCOS3DTarget


@register_type("FCOS3D")
class FCOS3D(nn.Module):
    """Backbone + neck + FCOS3D head, with targets, loss and post-process around it.

    Args:
        backbone: image -> list of feature maps (``efficientnet`` with strides 8, 16, 32).
        neck: that list -> one map per head level (``BiFPN``); None feeds the backbone's
            list to the head directly.
        head: :class:`~hat_fcos3d.model.head.FCOS3DHead`.
        target: :class:`FCOS3DTarget`; with ``loss``, needed for training.
        loss: :class:`FCOS3DLoss` (no parameters).
        postprocess: :class:`FCOS3DPostProcess`; applied in eval mode.
        deploy: the exported form (flat raw outputs only).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module | None,
        head: nn.Module,
        target: FCOS3DTarget | None = None,
        loss: FCOS3DLoss | None = None,
        postprocess: FCOS3DPostProcess | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.deploy = deploy
        if loss is not None and any(True for _ in loss.parameters()):
            raise ValueError("the loss must not have parameters: it is kept outside the network's state")
        _check_consistent(head, target, postprocess)
        # Plain attributes, not submodules (object.__setattr__ skips nn.Module's registration).
        object.__setattr__(self, "target", None if deploy else target)
        object.__setattr__(self, "loss", None if deploy else loss)
        object.__setattr__(self, "postprocess", None if deploy else postprocess)

    def forward_raw(self, img: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The network alone: ``{kind: [per-level maps]}`` (float, after the dequant stubs)."""
        features = self.backbone(self.quant(img))
        if self.neck is not None:
            features = self.neck(features)
        return self.head(features)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, Any]:
        img = batch if isinstance(batch, torch.Tensor) else batch["img"]
        raw = self.forward_raw(img)
        if self.deploy or isinstance(batch, torch.Tensor):
            return flatten_outputs(raw)
        if self.training:
            return self.losses(raw, batch)
        outputs: dict[str, Any] = {"raw": raw}
        if self.postprocess is not None and "intrinsic" in batch:
            outputs["detections_cam"] = self.postprocess.decode(raw, batch["intrinsic"])
        return outputs

    def losses(self, raw: Mapping[str, list[torch.Tensor]], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Named losses of a training batch (see the module docstring for its keys)."""
        if self.target is None or self.loss is None:
            raise RuntimeError("training FCOS3D needs a target and a loss")
        missing = [k for k in ("gt_boxes_3d", "gt_labels", "intrinsic") if k not in batch]
        if missing:
            raise KeyError(f"a training batch needs {missing} (FCOS3D reads {list(GT_KEYS)} and 'intrinsic')")
        img = batch["img"]
        targets = self.target(
            [tuple(m.shape[-2:]) for m in raw["cls"]],
            batch["gt_boxes_3d"],
            batch["gt_labels"],
            batch.get("gt_attributes"),
            torch.as_tensor(batch["intrinsic"], device=img.device),
            tuple(img.shape[-2:]),
            batch.get("gt_bboxes_2d"),
        )
        return self.loss(raw, targets)

    def extra_repr(self) -> str:
        return f"deploy={self.deploy}, target={self.target!r}, postprocess={self.postprocess!r}"


def _check_consistent(head: nn.Module, target: FCOS3DTarget | None, postprocess: FCOS3DPostProcess | None) -> None:
    """Strides and coder settings must agree: a mismatch trains one encoding and decodes another."""
    strides = getattr(head, "strides", None)
    for name, part in (("target", target), ("postprocess", postprocess)):
        if part is None:
            continue
        if strides is not None and tuple(part.strides) != tuple(strides):
            raise ValueError(f"{name} strides {tuple(part.strides)} differ from the head's {tuple(strides)}")
    if target is not None and postprocess is not None:
        a, b = target.coder, postprocess.coder
        if a.norm_on_bbox != b.norm_on_bbox or abs(a.dir_offset - b.dir_offset) > 1e-9:
            raise ValueError(f"target and postprocess encode boxes differently: {a!r} vs {b!r}")
        if target.num_classes != postprocess.num_classes or target.num_attrs != postprocess.num_attrs:
            raise ValueError("target and postprocess disagree on num_classes / num_attrs")
