"""FCOS3DPostProcess: head outputs -> camera-frame 3D detections per image.

The FCOS3D task's post-process in core's contract (:mod:`hat.postprocess`): it runs on
the host after the network, the one path for float torch, int8 simulation and
onnxruntime outputs alike (all the flat ``cls_0`` ... ``centerness_4`` maps export writes):

1. per level, score every point and class by ``sigmoid(cls) * sigmoid(centerness)``
   and keep the ``nms_pre`` points with the best class score;
2. decode their codes with the direction bin (:class:`FCOS3DBBoxCoder`);
3. every (point, class) pair scoring above ``score_threshold`` is a candidate (one point
   may propose several classes);
4. class-aware rotated NMS in bird's-eye view (``hat.ops.rotated_nms.rotated_nms_bev``);
5. the ``max_per_img`` best remain.

Bird's-eye view of a camera-frame box: the ground plane is the camera's (x, z) plane.
Taking BEV coordinates ``(X, Y) = (x, z)`` (a right-handed frame seen from above: x right,
z forward, up = -y), a heading ``(cos yaw, 0, -sin yaw)`` becomes ``(cos yaw, -sin yaw)``,
i.e. the BEV angle is ``-yaw``. The BEV box is ``(x, z, w, l, -yaw)`` with the length
``l`` along the heading, ``rotated_nms_bev``'s convention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hat.postprocess import PostProcess
from hat.registry import register_type
from hat_fcos3d.model.coder import FCOS3DBBoxCoder
from hat_fcos3d.model.head import REG_GROUPS, unflatten_outputs
from hat_fcos3d.model.target import level_points

#: Keys of one image's detections, with their trailing shapes.
DETECTION_FIELDS = {
    "center": (3,), "size": (3,), "yaw": (), "velocity": (2,), "label": (), "score": (), "attribute": ()
}  # fmt: skip


def bev_boxes(center: torch.Tensor, size: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Camera-frame boxes -> BEV rectangles ``(N, 5)`` ``x, y, w, l, angle`` (see the module docstring)."""
    return torch.stack([center[:, 0], center[:, 2], size[:, 0], size[:, 1], -yaw], dim=-1)


def empty_detections(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """An image without detections, with every field present."""
    out = {}
    for key, shape in DETECTION_FIELDS.items():
        dtype = torch.long if key in ("label", "attribute") else torch.float32
        out[key] = torch.zeros((0, *shape), dtype=dtype, device=device)
    return out


@register_type("FCOS3DPostProcess")
class FCOS3DPostProcess(PostProcess):
    """Decode, threshold and NMS the head's outputs (see the module docstring).

    Args:
        strides: stride of each level (must match the head's).
        num_classes, num_attrs: as the head.
        score_threshold: minimum ``sigmoid(cls) * sigmoid(centerness)``.
        nms_pre: points kept per level before decoding (0: all).
        nms_iou_threshold: BEV IoU above which a lower-scored box of the same class is dropped.
        max_per_img: detections kept per image (0: all).
        use_rotate_nms: False skips NMS (debugging, oracle tests of the decoder).
        norm_on_bbox, dir_offset: the coder's settings (must match the target's).

    Detections of an image: ``center (K, 3)``, ``size (K, 3)`` (w, l, h), ``yaw (K,)``,
    ``velocity (K, 2)`` (vx, vz), ``label (K,)``, ``score (K,)``, ``attribute (K,)``
    (``num_attrs - 1`` = none), all camera-frame torch tensors, best score first.
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        num_classes: int = 10,
        num_attrs: int = 9,
        score_threshold: float = 0.05,
        nms_pre: int = 1000,
        nms_iou_threshold: float = 0.8,
        max_per_img: int = 200,
        use_rotate_nms: bool = True,
        norm_on_bbox: bool = True,
        dir_offset: float = math.pi / 4,
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = int(num_classes)
        self.num_attrs = int(num_attrs)
        self.score_threshold = float(score_threshold)
        self.nms_pre = int(nms_pre)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_per_img = int(max_per_img)
        self.use_rotate_nms = bool(use_rotate_nms)
        self.coder = FCOS3DBBoxCoder(norm_on_bbox=norm_on_bbox, dir_offset=dir_offset)

    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``post_process(outputs, batch)``: reads the flat raw outputs (``cls_0``, ...) and
        ``batch["intrinsic"]``, and adds ``"detections_cam"`` (one dict per image)."""
        if batch is None or "intrinsic" not in batch:
            raise KeyError("FCOS3DPostProcess needs batch['intrinsic'] (B, 3, 3) to decode boxes")
        return {**outputs, "detections_cam": self.decode(outputs, batch["intrinsic"])}

    def check_model(self, model: torch.nn.Module) -> None:
        """The model's head strides and its target's box coding must be this decoder's."""
        from hat_fcos3d.model.fcos3d import check_consistent

        check_consistent(getattr(model, "head", None), getattr(model, "target", None), self)

    @torch.no_grad()
    def decode(
        self, outputs: Mapping[str, Sequence[torch.Tensor]], intrinsics: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """Detections (dicts as in the class docstring), one per image."""
        outputs = unflatten_outputs(outputs)
        cls_maps = outputs["cls"]
        if len(cls_maps) != len(self.strides):
            raise ValueError(f"{len(cls_maps)} levels of outputs but {len(self.strides)} strides")
        intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32)
        sizes = [tuple(m.shape[-2:]) for m in cls_maps]
        points = level_points(sizes, self.strides, cls_maps[0].device)
        return [self._single(outputs, points, intrinsics[b], b) for b in range(cls_maps[0].shape[0])]

    def _single(
        self, outputs: Mapping[str, Sequence[torch.Tensor]], points: list[torch.Tensor], intrinsic: torch.Tensor, b: int
    ) -> dict[str, torch.Tensor]:
        def at(kind: str, level: int) -> torch.Tensor:
            value = outputs[kind][level][b].float()
            return value.reshape(value.shape[0], -1).T  # (H*W, C)

        picked: dict[str, list[torch.Tensor]] = {k: [] for k in ("scores", "codes", "dir", "attr", "points", "strides")}
        for level, stride in enumerate(self.strides):
            scores = torch.sigmoid(at("cls", level)) * torch.sigmoid(at("centerness", level))
            keep = torch.arange(scores.shape[0], device=scores.device)
            if 0 < self.nms_pre < scores.shape[0]:
                keep = scores.amax(dim=1).topk(self.nms_pre).indices
            picked["scores"].append(scores[keep])
            picked["codes"].append(torch.cat([at(g, level)[keep] for g in REG_GROUPS], dim=-1))
            picked["dir"].append(at("dir", level)[keep].argmax(dim=-1))
            picked["attr"].append(at("attr", level)[keep].argmax(dim=-1))
            picked["points"].append(points[level].to(scores.device)[keep])
            picked["strides"].append(torch.full((len(keep),), float(stride), device=scores.device))
        cat = {k: torch.cat(v) for k, v in picked.items()}
        point_index, label = torch.nonzero(cat["scores"] > self.score_threshold, as_tuple=True)
        if point_index.numel() == 0:
            return empty_detections(cat["scores"].device)
        boxes = self.coder.decode(
            cat["codes"][point_index],
            cat["dir"][point_index],
            cat["points"][point_index],
            cat["strides"][point_index],
            intrinsic.to(cat["codes"].device),
        )
        score = cat["scores"][point_index, label]
        if self.use_rotate_nms:
            kept = self._class_aware_nms(bev_boxes(boxes["center"], boxes["size"], boxes["yaw"]), score, label)
        else:
            kept = torch.arange(score.numel(), device=score.device)
        kept = kept[score[kept].argsort(descending=True)]
        if self.max_per_img > 0:
            kept = kept[: self.max_per_img]
        return {
            "center": boxes["center"][kept],
            "size": boxes["size"][kept],
            "yaw": boxes["yaw"][kept],
            "velocity": boxes["velocity"][kept],
            "label": label[kept],
            "score": score[kept],
            "attribute": cat["attr"][point_index][kept],
        }

    def _class_aware_nms(self, bev: torch.Tensor, score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Indices kept by rotated BEV NMS run separately per class."""
        from hat.ops.rotated_nms import rotated_nms_bev

        kept = []
        for cls in torch.unique(label):
            members = torch.nonzero(label == cls, as_tuple=True)[0]
            keep = torch.as_tensor(rotated_nms_bev(bev[members], score[members], self.nms_iou_threshold))
            kept.append(members[keep.to(members.device).long()])
        return torch.cat(kept)

    def __repr__(self) -> str:
        return (
            f"FCOS3DPostProcess(strides={self.strides}, score_threshold={self.score_threshold}, "
            f"nms_pre={self.nms_pre}, nms_iou={self.nms_iou_threshold}, max_per_img={self.max_per_img})"
        )
