"""GANet's training targets, built per sample from its lanes in network-input pixels.

GANet (Wang et al., "A Keypoint-based Global Association Network for Lane Detection",
CVPR 2022) describes a lane as keypoints, one per heatmap row it crosses, and ties every
keypoint to its lane by regressing the offset to the lane's start point (its bottom-most
keypoint): keypoints whose offsets point at the same start belong to the same lane.

Grid convention (shared with :mod:`hat_ganet.model.decoder`, and with core's transforms:
pixel ``i`` covers ``[i, i + 1)``): heatmap cell ``(i, j)`` covers input pixels
``x in [j*s, (j+1)*s)``, ``y in [i*s, (i+1)*s)``, its centre at ``((j + 0.5) s, (i + 0.5) s)``.
A lane is sampled at the heatmap rows' centres ``y = (i + 0.5) s`` (a spline ``x(y)``
through its points, :func:`hat_ganet.lanes.sample_lane_at_rows`); each sample inside the
image is a keypoint at heatmap position ``(x / s, y / s)`` in cell ``(i, floor(x / s))``.

* ``gt_kpt_heatmap`` (1, H, W): CenterNet's truncated Gaussian of radius ``r`` (window
  ``2r + 1``, sigma ``(2r + 1) / 6``) centred on each keypoint's cell, exactly 1 there (the
  focal loss's positives), the maximum where lanes' Gaussians overlap.
* ``gt_sub_offset`` (2, H, W) and ``gt_sub_mask`` (1, H, W): the keypoint's position in its
  cell relative to the cell centre, ``(x / s - j - 0.5, y / s - i - 0.5)``, in cells (the
  vertical part is 0 with row-centre sampling; it is kept so the decoder needs no such
  assumption).
* ``gt_start_offset`` (2, H, W) and ``gt_start_mask`` (1, H, W): the vector from the cell
  centre to the lane's start point (its bottom-most keypoint, exact position), in cells.
  At the start cell itself its vertical part is 0, one row up it is 1: the decoder takes
  keypoints whose predicted vertical offset is under one cell as start points.

Where two lanes' keypoints fall in one cell, the lane given later wins that cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hat.registry import register_type
from hat_ganet.lanes import sample_lane_at_rows

Sample = dict[str, Any]


def lane_keypoints(lane: Any, down_scale: int, heatmap_shape: tuple[int, int]) -> np.ndarray:
    """A lane's keypoints ``(K, 2)`` in heatmap units (``x / s``, ``y / s``), bottom-up.

    One per heatmap row inside the lane's vertical extent, kept when inside the heatmap.
    """
    h, w = heatmap_shape
    rows = (np.arange(h, dtype=np.float64) + 0.5) * down_scale
    pts = sample_lane_at_rows(lane, rows) / down_scale
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    pts = pts[inside]
    return pts[np.argsort(-pts[:, 1], kind="stable")]


def _gaussian(radius: int) -> np.ndarray:
    size = 2 * radius + 1
    sigma = size / 6.0
    d = np.arange(size, dtype=np.float64) - radius
    return np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))


@register_type("GANetTarget")
class GANetTarget:
    """Transform adding GANet's targets (see the module docstring) to a sample.

    Reads ``sample["lanes"]`` (a list of ``(N, 2)`` lanes in the current image's pixels, the
    network input once the geometric transforms have run) and the image's size from
    ``sample["img"]`` (HxW[xC], before ``ToTensor``) unless ``heatmap_shape`` is given.
    Everything else is passed through.

    Args:
        down_scale: the heatmap's stride in input pixels (8: the head is on the stride-8
            FPN level).
        radius: the Gaussian's radius in cells (2).
        heatmap_shape: ``(H, W)`` of the heatmap; by default the image's size divided by
            ``down_scale`` (rounded down).
    """

    def __init__(self, down_scale: int = 8, radius: int = 2, heatmap_shape: Sequence[int] | None = None) -> None:
        if not isinstance(down_scale, int) or isinstance(down_scale, bool) or down_scale < 1:
            raise ValueError(f"GANetTarget down_scale must be a positive integer, got {down_scale!r}")
        if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
            raise ValueError(f"GANetTarget radius must be a non-negative integer, got {radius!r}")
        if heatmap_shape is not None and (len(heatmap_shape) != 2 or min(heatmap_shape) < 1):
            raise ValueError(f"GANetTarget heatmap_shape must be (H, W), got {heatmap_shape!r}")
        self.down_scale = down_scale
        self.radius = radius
        self.heatmap_shape = None if heatmap_shape is None else (int(heatmap_shape[0]), int(heatmap_shape[1]))
        self._kernel = _gaussian(radius).astype(np.float32)

    def _shape(self, sample: Sample) -> tuple[int, int]:
        if self.heatmap_shape is not None:
            return self.heatmap_shape
        img = sample.get("img")
        if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
            raise ValueError("GANetTarget needs sample['img'] as an HxW[xC] numpy array (run it before ToTensor)")
        return img.shape[0] // self.down_scale, img.shape[1] // self.down_scale

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        lanes = sample.get("lanes")
        if lanes is None:
            raise ValueError("GANetTarget needs sample['lanes']: a list of (N, 2) lanes in input pixels")
        h, w = self._shape(sample)
        r = self.radius
        heat = np.zeros((h + 2 * r, w + 2 * r), np.float32)  # padded: the Gaussian may overhang
        start = np.zeros((2, h, w), np.float32)
        sub = np.zeros((2, h, w), np.float32)
        mask = np.zeros((1, h, w), np.float32)
        for lane in lanes:
            kps = lane_keypoints(lane, self.down_scale, (h, w))
            if len(kps) == 0:
                continue
            sx, sy = kps[0]  # bottom-most: the lane's start point
            for cx, cy in kps:
                i, j = int(cy), int(cx)
                window = heat[i : i + 2 * r + 1, j : j + 2 * r + 1]
                np.maximum(window, self._kernel, out=window)
                sub[:, i, j] = (cx - j - 0.5, cy - i - 0.5)
                start[:, i, j] = (sx - j - 0.5, sy - i - 0.5)
                mask[0, i, j] = 1.0
        out = dict(sample)
        out["gt_kpt_heatmap"] = heat[None, r : r + h, r : r + w].copy()
        out["gt_start_offset"] = start
        out["gt_start_mask"] = mask
        out["gt_sub_offset"] = sub
        out["gt_sub_mask"] = mask.copy()
        return out

    def __repr__(self) -> str:
        return f"GANetTarget(down_scale={self.down_scale}, radius={self.radius}, heatmap_shape={self.heatmap_shape})"
