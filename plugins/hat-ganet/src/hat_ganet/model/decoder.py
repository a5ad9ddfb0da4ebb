"""GANet's decoder: raw head outputs -> lanes in original-image pixels.

The exported graph stops at the three raw maps (``kpt_heatmap`` logits, ``start_offset``,
``sub_offset``); grouping keypoints into lanes is data-dependent control flow that stays
on the host, so one :class:`GANetPostProcess` decodes the torch model, its fake-quant
simulations and the ONNX outputs alike. The grid convention is
:mod:`hat_ganet.model.target`'s: cell ``(i, j)`` has its centre at heatmap position
``(j + 0.5, i + 0.5)``, and both offsets are relative to that centre, in cells.

Steps (GANet's global association):

1. ``sigmoid`` of the heatmap; a keypoint is a cell that is the maximum of its 1x3
   horizontal neighbourhood (lanes cross each row once, so neighbours in a row are the
   same lane's blur) and scores above ``kpt_thr``;
2. each keypoint's predicted start point is its cell centre plus ``start_offset``; a
   keypoint whose predicted vertical offset is under ``start_thr`` cells is a start point
   itself (the bottom of a lane);
3. start points are clustered greedily, strongest first: one joins the first cluster whose
   centre (the mean of its members' predicted starts) is within ``cluster_thr`` cells,
   else it starts a new cluster; each cluster is a lane;
4. every keypoint joins the cluster nearest to its predicted start; within a lane a row
   keeps its strongest keypoint;
5. a keypoint's position is its cell centre plus ``sub_offset``, times the stride; lanes of
   ``min_points`` points or fewer are dropped; the points are mapped to the original image
   with ``batch["img2orig"]`` (3x3, network-input pixels -> original pixels) and ordered
   bottom-up, as CULane's files are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hat.postprocess import Outputs, PostProcess, Predictions
from hat.registry import register_type


def _greedy_clusters(starts: np.ndarray, thr: float) -> np.ndarray:
    """Cluster centres ``(C, 2)`` of ``starts`` (rows in decreasing score order)."""
    sums: list[np.ndarray] = []
    counts: list[int] = []
    for p in starts:
        for c in range(len(sums)):
            if np.hypot(*(sums[c] / counts[c] - p)) <= thr:
                sums[c] = sums[c] + p
                counts[c] += 1
                break
        else:
            sums.append(p.astype(np.float64))
            counts.append(1)
    if not sums:
        return np.zeros((0, 2))
    return np.stack(sums) / np.asarray(counts, np.float64)[:, None]


def decode_lanes(
    heat: np.ndarray,
    start_offset: np.ndarray,
    sub_offset: np.ndarray,
    *,
    down_scale: int = 8,
    kpt_thr: float = 0.4,
    start_thr: float = 1.0,
    cluster_thr: float = 5.0,
    min_points: int = 10,
) -> list[np.ndarray]:
    """One image's lanes ``(N, 2)`` in network-input pixels, bottom-up.

    ``heat`` (H, W) is the NMS'ed keypoint probability (0 where suppressed); the offsets
    are (2, H, W). See the module docstring for the steps.
    """
    ii, jj = np.nonzero(heat > kpt_thr)
    if len(ii) == 0:
        return []
    scores = heat[ii, jj]
    order = np.argsort(-scores, kind="stable")
    ii, jj, scores = ii[order], jj[order], scores[order]
    centres = np.stack([jj + 0.5, ii + 0.5], axis=1)
    starts = centres + start_offset[:, ii, jj].T
    is_start = np.abs(start_offset[1, ii, jj]) < start_thr
    clusters = _greedy_clusters(starts[is_start], cluster_thr)
    if len(clusters) == 0:
        return []
    owner = np.argmin(((starts[:, None, :] - clusters[None, :, :]) ** 2).sum(-1), axis=1)
    points = (centres + sub_offset[:, ii, jj].T) * down_scale
    lanes = []
    for c in range(len(clusters)):
        mine = np.nonzero(owner == c)[0]  # already in decreasing score order
        _, first = np.unique(ii[mine], return_index=True)  # strongest keypoint of each row
        pts = points[mine[first]]
        if len(pts) <= min_points:
            continue
        lanes.append(pts[np.argsort(-pts[:, 1], kind="stable")])
    return lanes


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


@register_type("GANetPostProcess")
class GANetPostProcess(PostProcess):
    """``(outputs, batch) -> {**outputs, "pred_lanes": [[(N, 2) float32, ...] per image]}``.

    ``pred_lanes`` are in original-image pixels (``batch["img2orig"]``, ``(B, 3, 3)``
    tensor or a list of 3x3 arrays); without ``img2orig`` they stay in network-input
    pixels. Options as GANet's defaults (see the module docstring): ``kpt_thr`` 0.4,
    ``start_thr`` 1 cell, ``cluster_thr`` 5 cells, ``min_points`` 10 (lanes with that many
    points or fewer are dropped), ``down_scale`` 8, ``nms_kernel`` 3 (the 1xk max-pool).
    """

    def __init__(
        self,
        down_scale: int = 8,
        kpt_thr: float = 0.4,
        start_thr: float = 1.0,
        cluster_thr: float = 5.0,
        min_points: int = 10,
        nms_kernel: int = 3,
    ) -> None:
        if down_scale < 1 or nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError("down_scale must be >= 1 and nms_kernel a positive odd number")
        if not 0 <= kpt_thr < 1 or start_thr <= 0 or cluster_thr <= 0 or min_points < 0:
            raise ValueError("kpt_thr must be in [0, 1), start_thr and cluster_thr > 0, min_points >= 0")
        self.down_scale = int(down_scale)
        self.kpt_thr = float(kpt_thr)
        self.start_thr = float(start_thr)
        self.cluster_thr = float(cluster_thr)
        self.min_points = int(min_points)
        self.nms_kernel = int(nms_kernel)

    def heatmap(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid, then 0 wherever a cell is not the maximum of its 1 x nms_kernel row window."""
        heat = torch.sigmoid(logits.float())
        k = self.nms_kernel
        pooled = F.max_pool2d(heat, kernel_size=(1, k), stride=1, padding=(0, k // 2))
        return heat * (pooled == heat)

    def __call__(self, outputs: Outputs, batch: Any = None) -> Predictions:
        for key in ("kpt_heatmap", "start_offset", "sub_offset"):
            if key not in outputs:
                raise KeyError(f"GANetPostProcess needs outputs[{key!r}], got {sorted(outputs)}")
        logits = torch.as_tensor(outputs["kpt_heatmap"])
        if logits.dim() != 4 or logits.shape[1] != 1:
            raise ValueError(f"kpt_heatmap must be (B, 1, H, W) logits, got {tuple(logits.shape)}")
        heat = _as_numpy(self.heatmap(logits))[:, 0]
        start = _as_numpy(outputs["start_offset"])
        sub = _as_numpy(outputs["sub_offset"])
        img2orig = batch.get("img2orig") if isinstance(batch, Mapping) else None
        pred_lanes = []
        for b in range(heat.shape[0]):
            lanes = decode_lanes(
                heat[b],
                start[b],
                sub[b],
                down_scale=self.down_scale,
                kpt_thr=self.kpt_thr,
                start_thr=self.start_thr,
                cluster_thr=self.cluster_thr,
                min_points=self.min_points,
            )
            if img2orig is not None:
                m = _as_numpy(img2orig[b]).astype(np.float64)
                lanes = [pts @ m[:2, :2].T + m[:2, 2] for pts in lanes]
            pred_lanes.append([lane.astype(np.float32) for lane in lanes])
        return {**outputs, "pred_lanes": pred_lanes}

    def __repr__(self) -> str:
        return (
            f"GANetPostProcess(down_scale={self.down_scale}, kpt_thr={self.kpt_thr}, start_thr={self.start_thr}, "
            f"cluster_thr={self.cluster_thr}, min_points={self.min_points}, nms_kernel={self.nms_kernel})"
        )
