"""FCOS3DTarget: which feature-map points regress which ground-truth box, and what.

Every level ``l`` (stride ``s``) has one point per cell, at pixel
``(j * s + s // 2, i * s + s // 2)`` for cell row ``i``, column ``j`` (FCOS's layout).
A point is a *candidate* for a box when

1. (centre sampling) it lies within ``center_sample_radius * s`` of the box's projected
   3D centre along both image axes, inside the box's 2D extent; without centre sampling,
   anywhere inside the 2D box;
2. (regress range) the largest of its distances to the 2D box's four sides is within
   the level's ``regress_ranges[l]``: big boxes go to coarse levels, small to fine.

A point with several candidate boxes takes the one whose projected centre is nearest
(FCOS3D's rule: the point regresses an offset to that centre, so the nearest one is the
easiest); a point with none is background. The 2D box is the box's projected corners'
extent (:func:`~hat_fcos3d.model.coder.boxes_2d_from_3d`, clipped to the image) unless the
batch gives ``gt_bboxes_2d``.

Centerness target (FCOS3D's, a function of the distance to the projected centre rather
than FCOS's 2D-box ratio): ``exp(-alpha * ||(u, v) - (px, py)|| / (sqrt(2) * s))``,
1 at the centre and ``exp(-alpha)`` at the corner of the point's own cell diagonal.

Regression targets are the coder's nine codes; their weights are 1 on positives except
the velocity codes of boxes whose velocity is unknown (NaN), which are 0 (their target
is set to 0). Attributes ``-1`` ("none") become class ``num_attrs - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hat.registry import register_type
from hat_fcos3d.model.coder import CODE_SIZE, FCOS3DBBoxCoder, boxes_2d_from_3d

INF = 1e8

#: Per-image ground-truth keys (lists with one entry per image) the target reads.
GT_KEYS = ("gt_boxes_3d", "gt_labels", "gt_attributes")


def level_points(
    featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Pixel locations ``(H_l * W_l, 2)`` (x, y) of every level's points, row-major."""
    points = []
    for (height, width), stride in zip(featmap_sizes, strides, strict=True):
        ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride // 2
        xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
    return points


@register_type("FCOS3DTarget")
class FCOS3DTarget:
    """Builds per-point targets for a batch (see the module docstring).

    Args:
        strides: stride of each level.
        regress_ranges: ``(low, high)`` of each level, in pixels of the largest
            point-to-side distance.
        center_sampling: restrict positives to the centre-sampling square.
        center_sample_radius: half-side of that square, in strides.
        centerness_alpha: decay of the centerness target.
        norm_on_bbox: offsets in strides (must match the post-process).
        dir_offset: direction-bin origin (must match the post-process).
        num_classes: detection classes; background points get label ``num_classes``.
        num_attrs: attribute classes including "none" (the last).
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[Sequence[float]] = ((-1, 48), (48, 96), (96, 192), (192, 384), (384, INF)),
        center_sampling: bool = True,
        center_sample_radius: float = 1.5,
        centerness_alpha: float = 2.5,
        norm_on_bbox: bool = True,
        dir_offset: float = math.pi / 4,
        num_classes: int = 10,
        num_attrs: int = 9,
    ) -> None:
        if len(regress_ranges) != len(strides):
            raise ValueError(f"{len(strides)} strides but {len(regress_ranges)} regress_ranges")
        self.strides = tuple(int(s) for s in strides)
        self.regress_ranges = tuple((float(lo), float(hi)) for lo, hi in regress_ranges)
        self.center_sampling = bool(center_sampling)
        self.center_sample_radius = float(center_sample_radius)
        self.centerness_alpha = float(centerness_alpha)
        self.num_classes = int(num_classes)
        self.num_attrs = int(num_attrs)
        self.coder = FCOS3DBBoxCoder(norm_on_bbox=norm_on_bbox, dir_offset=dir_offset)

    @torch.no_grad()
    def __call__(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_boxes_3d: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        gt_attributes: Sequence[torch.Tensor] | None,
        intrinsics: torch.Tensor,
        image_hw: tuple[int, int],
        gt_bboxes_2d: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Targets for every point of every image, stacked ``(B, P, ...)`` with
        ``P = sum_l H_l * W_l`` in the order of :func:`~hat_fcos3d.model.head.flatten_levels`.

        ``gt_boxes_3d[b]`` is ``(N_b, 9)``: camera-frame ``x, y, z, w, l, h, yaw, vx, vz``;
        ``gt_labels[b]`` ``(N_b,)`` class indices; ``gt_attributes[b]`` ``(N_b,)`` with
        -1 for none (None: all none); ``intrinsics`` ``(B, 3, 3)``; ``image_hw`` the
        (padded) input size, used to clip projected 2D boxes.

        Returns ``labels`` (int64, ``num_classes`` = background), ``bbox_targets``
        ``(B, P, 9)``, ``bbox_weights`` ``(B, P, 9)``, ``dir_targets``, ``attr_targets``
        (int64), ``centerness_targets``, ``pos_mask`` (bool), ``matched`` (index of the
        assigned box, -1 for background).
        """
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"{len(featmap_sizes)} feature maps but {len(self.strides)} strides")
        device = intrinsics.device
        points_per_level = level_points(featmap_sizes, self.strides, device)
        points = torch.cat(points_per_level)
        counts = [len(p) for p in points_per_level]
        strides = torch.repeat_interleave(
            torch.tensor(self.strides, dtype=torch.float32, device=device), torch.tensor(counts, device=device)
        )
        ranges = torch.cat(
            [points.new_tensor(r).expand(len(p), 2) for p, r in zip(points_per_level, self.regress_ranges, strict=True)]
        )
        per_image = []
        for b in range(len(gt_boxes_3d)):
            attrs = None if gt_attributes is None else gt_attributes[b]
            boxes_2d = None if gt_bboxes_2d is None else gt_bboxes_2d[b]
            per_image.append(
                self.single_image(
                    points, strides, ranges, gt_boxes_3d[b], gt_labels[b], attrs, intrinsics[b], image_hw, boxes_2d
                )
            )
        return {key: torch.stack([t[key] for t in per_image]) for key in per_image[0]}

    def single_image(
        self,
        points: torch.Tensor,
        strides: torch.Tensor,
        ranges: torch.Tensor,
        boxes_3d: torch.Tensor,
        labels: torch.Tensor,
        attributes: torch.Tensor | None,
        intrinsic: torch.Tensor,
        image_hw: tuple[int, int],
        boxes_2d: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Targets ``(P, ...)`` of one image (arguments as in :meth:`__call__`)."""
        num_points = points.shape[0]
        device = points.device
        boxes_3d = torch.as_tensor(boxes_3d, dtype=torch.float32, device=device).reshape(-1, CODE_SIZE)
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        num_gts = boxes_3d.shape[0]
        if attributes is None:
            attributes = torch.full((num_gts,), -1, dtype=torch.long, device=device)
        attributes = torch.as_tensor(attributes, dtype=torch.long, device=device).reshape(-1)
        if labels.shape[0] != num_gts or attributes.shape[0] != num_gts:
            raise ValueError(f"{num_gts} boxes but {labels.shape[0]} labels and {attributes.shape[0]} attributes")
        intrinsic = intrinsic.to(device=device, dtype=torch.float32)
        out = {
            "labels": torch.full((num_points,), self.num_classes, dtype=torch.long, device=device),
            "bbox_targets": points.new_zeros(num_points, CODE_SIZE),
            "bbox_weights": points.new_zeros(num_points, CODE_SIZE),
            "dir_targets": torch.zeros(num_points, dtype=torch.long, device=device),
            "attr_targets": torch.full((num_points,), self.num_attrs - 1, dtype=torch.long, device=device),
            "centerness_targets": points.new_zeros(num_points),
            "pos_mask": torch.zeros(num_points, dtype=torch.bool, device=device),
            "matched": torch.full((num_points,), -1, dtype=torch.long, device=device),
        }
        if num_gts == 0:
            return out
        center, size, yaw, velocity = boxes_3d[:, :3], boxes_3d[:, 3:6], boxes_3d[:, 6], boxes_3d[:, 7:9]
        if boxes_2d is None:
            boxes_2d = boxes_2d_from_3d(center, size, yaw, intrinsic, image_hw)
        boxes_2d = torch.as_tensor(boxes_2d, dtype=torch.float32, device=device).reshape(num_gts, 4)
        centers_2d = (center @ intrinsic.T)[:, :2] / center[:, 2:3]

        px, py = points[:, 0:1], points[:, 1:2]  # (P, 1) against (1, N)
        x1, y1, x2, y2 = (boxes_2d[:, k][None] for k in range(4))
        sides = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=-1)  # (P, N, 4)
        if self.center_sampling:
            radius = (strides * self.center_sample_radius)[:, None]
            cu, cv = centers_2d[:, 0][None], centers_2d[:, 1][None]
            region = torch.stack(
                [
                    px - torch.maximum(cu - radius, x1),
                    py - torch.maximum(cv - radius, y1),
                    torch.minimum(cu + radius, x2) - px,
                    torch.minimum(cv + radius, y2) - py,
                ],
                dim=-1,
            )
            inside = region.amin(dim=-1) > 0
        else:
            inside = sides.amin(dim=-1) > 0
        reach = sides.amax(dim=-1)
        in_range = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
        offsets = centers_2d[None] - points[:, None]  # (P, N, 2)
        dists = offsets.norm(dim=-1)
        dists = torch.where(inside & in_range & (center[:, 2] > 0)[None], dists, torch.full_like(dists, INF))
        min_dist, matched = dists.min(dim=1)
        positive = min_dist < INF
        if not bool(positive.any()):
            return out

        idx = matched[positive]
        pos_points, pos_strides = points[positive], strides[positive]
        pos_velocity = velocity[idx]
        velocity_known = torch.isfinite(pos_velocity).all(dim=-1)
        codes, directions = self.coder.encode(
            center[idx],
            size[idx],
            yaw[idx],
            torch.where(velocity_known[:, None], pos_velocity, torch.zeros_like(pos_velocity)),
            pos_points,
            pos_strides,
            intrinsic,
        )
        weights = torch.ones_like(codes)
        weights[:, 7:9] = velocity_known[:, None].to(weights.dtype)
        attrs = attributes[idx]
        attrs = torch.where(attrs < 0, torch.full_like(attrs, self.num_attrs - 1), attrs)

        out["labels"][positive] = labels[idx]
        out["bbox_targets"][positive] = codes
        out["bbox_weights"][positive] = weights
        out["dir_targets"][positive] = directions
        out["attr_targets"][positive] = attrs
        out["centerness_targets"][positive] = torch.exp(
            -self.centerness_alpha * min_dist[positive] / (math.sqrt(2.0) * pos_strides)
        )
        out["pos_mask"] = positive
        out["matched"][positive] = idx
        return out

    def __repr__(self) -> str:
        return (
            f"FCOS3DTarget(strides={self.strides}, center_sampling={self.center_sampling}, "
            f"radius={self.center_sample_radius}, alpha={self.centerness_alpha}, {self.coder!r})"
        )
