"""Keypoint-specific transforms: pad to the model's canvas, and build heatmap targets.

Flip (with :data:`hat_keypoint.keypoints.FLIP_PAIRS`), resize, noise, ``ToTensor`` and
``Normalize`` come from :mod:`hat.data.transforms`; the conventions are theirs: a
transform is a pure ``transform(sample, rng) -> sample`` that never writes to its input,
and coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``, its centre is
``i + 0.5``).

Heatmap convention (shared with the heatmap decoder)
----------------------------------------------------
A heatmap of stride ``s`` has cell ``(i, j)`` (row ``i``, column ``j``) covering input
pixels ``x in [j*s, (j+1)*s)``, ``y in [i*s, (i+1)*s)``; the cell's centre is at input
``x = (j + 0.5) * s``, ``y = (i + 0.5) * s``. A keypoint at input ``(x, y)`` therefore
sits at heatmap position ``(x / s, y / s)`` in the same continuous sense, inside cell
``(floor(y / s), floor(x / s))``, and its target Gaussian is centred there exactly (not
snapped to a cell). To decode, a peak at cell ``(i, j)`` with sub-cell offset
``(dx, dy)`` (relative to the cell centre, in cells) maps back to
``x = (j + 0.5 + dx) * s``, ``y = (i + 0.5 + dy) * s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hat.data.transforms import Pad
from hat.registry import register_type

Sample = dict[str, Any]


def _hw(value: Any, name: str) -> tuple[int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ValueError(f"{name} must be two positive integers (h, w), got {value!r}")
    return int(value[0]), int(value[1])


@register_type()
class RandomPadLdmkData:
    """Pad the (keep-ratio resized) crop to exactly ``size = (h, w)``; keypoints follow.

    With ``random`` the crop lands at a random offset in the canvas, so the model cannot
    learn that the car always touches the top-left corner; with ``random=False`` (the
    validation setting) it stays at the top-left, like core ``Pad``, so that no offset
    has to be undone at inference. The canvas is zero (black) — after ``ToTensor(to_yuv)``
    that is YUV (0, 128, 128) — and the offset is recorded as ``pad_offset``. Keypoints
    that end up outside the canvas are marked invalid (when they carry a valid column).
    A crop larger than ``size`` is an error: resize it first.
    """

    def __init__(self, size: Sequence[int], random: bool = True) -> None:
        self.size = _hw(size, "RandomPadLdmkData size")
        self.random = bool(random)
        self._pad = Pad(size=self.size, random=self.random)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = self._pad(sample, rng)
        kps = out.get("keypoints")
        if kps is not None and np.asarray(kps).size and np.shape(kps)[-1] >= 3:
            h, w = self.size
            x, y = kps[..., 0], kps[..., 1]
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            if not inside.all():
                kps = np.array(kps, copy=True)  # Pad may pass the input array through untouched
                kps[..., 2] = np.where(inside, kps[..., 2], 0)
                out["keypoints"] = kps
        return out

    def __repr__(self) -> str:
        return f"RandomPadLdmkData(size={self.size!r}, random={self.random!r})"


@register_type()
class GenerateHeatmapTarget:
    """Gaussian heatmaps ``heatmap`` (num_ldmk, h, w) and weights ``heatmap_weight`` (num_ldmk,).

    Each valid keypoint gets ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance in heatmap
    cells from its exact sub-cell position (see the module docstring for the grid), so a
    decoder can recover sub-pixel positions. The weight is the keypoint's valid flag;
    an invalid keypoint, or one outside the heatmap's area, gets weight 0 and an all-zero
    heatmap, so the loss neither rewards nor punishes anything there. ``keypoints`` is
    kept unchanged for the metrics.
    """

    def __init__(self, num_ldmk: int, feat_stride: int, heatmap_shape: Sequence[int], sigma: float = 1.0) -> None:
        if not isinstance(num_ldmk, (int, np.integer)) or isinstance(num_ldmk, bool) or num_ldmk <= 0:
            raise ValueError(f"GenerateHeatmapTarget num_ldmk must be a positive integer, got {num_ldmk!r}")
        if not isinstance(feat_stride, (int, float)) or isinstance(feat_stride, bool) or feat_stride <= 0:
            raise ValueError(f"GenerateHeatmapTarget feat_stride must be positive, got {feat_stride!r}")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
            raise ValueError(f"GenerateHeatmapTarget sigma must be positive, got {sigma!r}")
        self.num_ldmk = int(num_ldmk)
        self.feat_stride = feat_stride
        self.heatmap_shape = _hw(heatmap_shape, "GenerateHeatmapTarget heatmap_shape")
        self.sigma = float(sigma)
        h, w = self.heatmap_shape
        # Cell centres in heatmap units, (j + 0.5) and (i + 0.5).
        self._xs = np.arange(w, dtype=np.float64) + 0.5
        self._ys = np.arange(h, dtype=np.float64) + 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        kps = sample.get("keypoints")
        if kps is None:
            raise ValueError("GenerateHeatmapTarget needs sample['keypoints'] as (num_ldmk, 3) x, y, valid")
        kps = np.asarray(kps, dtype=np.float64)
        if kps.shape != (self.num_ldmk, 3):
            raise ValueError(f"GenerateHeatmapTarget expects keypoints of shape ({self.num_ldmk}, 3), got {kps.shape}")
        h, w = self.heatmap_shape
        heatmap = np.zeros((self.num_ldmk, h, w), np.float32)
        weight = np.zeros(self.num_ldmk, np.float32)
        denom = 2.0 * self.sigma**2
        for k, (x, y, valid) in enumerate(kps):
            cx, cy = x / self.feat_stride, y / self.feat_stride
            if not (valid > 0 and math.isfinite(cx) and math.isfinite(cy) and 0 <= cx < w and 0 <= cy < h):
                continue
            gx = np.exp(-((self._xs - cx) ** 2) / denom)
            gy = np.exp(-((self._ys - cy) ** 2) / denom)
            heatmap[k] = np.outer(gy, gx)  # separable: exp(-(dx^2 + dy^2) / 2s^2)
            weight[k] = 1.0
        out = dict(sample)
        out["heatmap"] = heatmap
        out["heatmap_weight"] = weight
        return out

    def __repr__(self) -> str:
        return (
            f"GenerateHeatmapTarget(num_ldmk={self.num_ldmk}, feat_stride={self.feat_stride!r}, "
            f"heatmap_shape={self.heatmap_shape!r}, sigma={self.sigma!r})"
        )
