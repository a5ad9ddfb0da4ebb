"""FCOS3D: image -> per-level head outputs (or the losses, in training).

The network is ``QuantStub -> backbone -> neck -> FCOS3DHead`` (the head ends in one
``DeQuantStub`` per output kind): with a ReLU EfficientNet and the BiFPN everything
between the stubs is int8, and only the head's per-level scales are float multiplies
on its outputs. Targets and losses hold no parameters and run on the host; like the
keypoint model they are kept out of the module tree so the quantizer never sees them
and the state_dict is the network's alone (the same with ``deploy`` on or off).
Decoding and NMS are not the model's: they are the config's ``post_process``
(:class:`~hat_fcos3d.model.postprocess.FCOS3DPostProcess`), core's one path for the
torch and ONNX outputs alike (:mod:`hat.postprocess`).

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
engine's ``collect_loss_by_regex("loss")``); eval, ``deploy`` or a bare tensor input ->
the flat ``{"cls_0": .., ..., "centerness_4": ..}`` that export writes as graph outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hat.postprocess import keep_outside
from hat.quant import QuantStub
from hat.registry import register_type
from hat_fcos3d.model.head import flatten_outputs
from hat_fcos3d.model.loss import FCOS3DLoss
from hat_fcos3d.model.target import GT_KEYS, FCOS3DTarget


@register_type("FCOS3D")
class FCOS3D(nn.Module):
    """Backbone + neck + FCOS3D head, with targets and loss around it.

    Args:
        backbone: image -> list of feature maps (``efficientnet`` with strides 8, 16, 32).
        neck: that list -> one map per head level (``BiFPN``); None feeds the backbone's
            list to the head directly.
        head: :class:`~hat_fcos3d.model.head.FCOS3DHead`.
        target: :class:`FCOS3DTarget`; with ``loss``, needed for training.
        loss: :class:`FCOS3DLoss` (no parameters).
        deploy: the exported form: no target or loss is kept, and ``forward`` returns
            the flat raw outputs in every mode.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module | None,
        head: nn.Module,
        target: FCOS3DTarget | None = None,
        loss: FCOS3DLoss | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.deploy = deploy
        check_consistent(head, target)
        keep_outside(self, "target", target, deploy=deploy)
        keep_outside(self, "loss", loss, deploy=deploy)

    def forward_raw(self, img: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The network alone: ``{kind: [per-level maps]}`` (float, after the dequant stubs)."""
        features = self.backbone(self.quant(img))
        if self.neck is not None:
            features = self.neck(features)
        return self.head(features)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        img = batch if isinstance(batch, torch.Tensor) else batch["img"]
        raw = self.forward_raw(img)
        if self.deploy or isinstance(batch, torch.Tensor) or not self.training:
            return flatten_outputs(raw)
        return self.losses(raw, batch)

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
        return f"deploy={self.deploy}, target={self.target!r}"


def check_consistent(head: nn.Module | None, target: Any, post_process: Any = None) -> None:
    """Strides and coder settings must agree: a mismatch trains one encoding and decodes another.

    ``target`` is an :class:`FCOS3DTarget` and ``post_process`` an ``FCOS3DPostProcess``
    (either may be None); the model checks its target, the post-process checks itself
    against the model it decodes (``FCOS3DPostProcess.check_model``).
    """
    strides = getattr(head, "strides", None)
    for name, part in (("target", target), ("post_process", post_process)):
        if part is None:
            continue
        if strides is not None and tuple(part.strides) != tuple(strides):
            raise ValueError(f"{name} strides {tuple(part.strides)} differ from the head's {tuple(strides)}")
    if target is not None and post_process is not None:
        a, b = target.coder, post_process.coder
        if a.norm_on_bbox != b.norm_on_bbox or abs(a.dir_offset - b.dir_offset) > 1e-9:
            raise ValueError(f"target and post_process encode boxes differently: {a!r} vs {b!r}")
        if target.num_classes != post_process.num_classes or target.num_attrs != post_process.num_attrs:
            raise ValueError("target and post_process disagree on num_classes / num_attrs")
