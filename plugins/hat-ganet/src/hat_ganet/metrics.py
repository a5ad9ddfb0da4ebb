"""CULane's lane F1, computed the way the official evaluator does, overall and per category.

The protocol (CULane's ``evaluate`` tool, ``lane_compare.cpp`` / ``counter.cpp``):

1. every lane, predicted or annotated, is interpolated with a natural cubic spline over
   its chord length, 50 samples per segment (:func:`hat_ganet.lanes.interp_lane`);
2. it is drawn as a 30 px wide polyline on a 590x1640 canvas;
3. the IoU of every prediction/ground-truth pair is the pixel IoU of the two drawings;
4. predictions and ground truth are matched one-to-one by maximum total IoU (Hungarian);
5. a matched pair is a true positive when its IoU is above 0.5; the other predictions
   are false positives and the other ground-truth lanes false negatives;
6. TP, FP and FN are summed over the split, and precision, recall and F1 computed once
   from the sums (not averaged over frames).

The official tool is run once per test-category list; :class:`CulaneF1` keeps the sums
per category as well (a frame counts in every category it is listed in), so one pass
gives the table the CULane papers print. The crossroad list has no lanes at all: every
lane predicted there is a false positive, and that count (``FP/cross``) is what papers
report for it, not an F1.

The matching uses scipy's ``linear_sum_assignment`` (scipy is a dependency of hat-ganet;
see :mod:`hat_ganet.lanes`). Drawing uses OpenCV's ``polylines`` with the points rounded
to whole pixels, as the C++ tool's ``cv::line`` on ``cv::Point`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from hat.metrics import Metric
from hat.registry import register_type
from hat_ganet.lanes import LaneLike, interp_lane, lane_array

#: CULane's test categories, in the order of its ``list/test_split`` files.
CULANE_CATEGORIES = ("normal", "crowd", "hlight", "shadow", "noline", "arrow", "curve", "cross", "night")
#: Categories without ground-truth lanes: only their false positives mean anything.
NO_LANE_CATEGORIES = ("cross",)


def _draw(lanes: Sequence[np.ndarray], origin: tuple[int, int], shape: tuple[int, int], width: int) -> np.ndarray:
    """Each interpolated lane drawn on its own canvas, flattened: ``(len(lanes), h * w)`` bool."""
    h, w = shape
    masks = np.zeros((len(lanes), h, w), np.uint8)
    shift = np.array(origin, np.int64)
    for k, pts in enumerate(lanes):
        if len(pts) < 2:
            continue  # the evaluator gives a lane of fewer than two points IoU 0
        pix = np.round(pts).astype(np.int64) - shift
        cv2.polylines(masks[k], [pix.astype(np.int32).reshape(-1, 1, 2)], False, 1, thickness=width)
    return masks.reshape(len(lanes), -1).astype(bool)


def lane_ious(
    pred: Sequence[LaneLike],
    gt: Sequence[LaneLike],
    img_shape: tuple[int, int] = (590, 1640),
    width: int = 30,
    times: int = 50,
) -> np.ndarray:
    """``(len(pred), len(gt))`` pixel IoUs of the lanes drawn ``width`` px wide on ``img_shape``.

    Only the part of the image the lanes can reach is drawn (their bounding box grown by
    the half width, clipped to the image), shifted by whole pixels, so the pixels counted
    are exactly those of a full-size drawing at a fraction of the cost.
    """
    ious = np.zeros((len(pred), len(gt)))
    if not len(pred) or not len(gt):
        return ious
    curves = [interp_lane(lane, times) for lane in [*pred, *gt]]
    drawn = [c for c in curves if len(c) >= 2]
    if not drawn:
        return ious
    pts = np.round(np.concatenate(drawn))
    pad = width // 2 + 2
    h, w = img_shape
    x0, y0 = (int(max(0, min(v, hi))) for v, hi in ((pts[:, 0].min() - pad, w), (pts[:, 1].min() - pad, h)))
    x1, y1 = (int(max(0, min(v, hi))) for v, hi in ((pts[:, 0].max() + pad + 1, w), (pts[:, 1].max() + pad + 1, h)))
    if x1 <= x0 or y1 <= y0:
        return ious  # every lane lies outside the image: nothing drawn, nothing overlaps
    masks = _draw(curves, (x0, y0), (y1 - y0, x1 - x0), width).astype(np.float32)
    p, g = masks[: len(pred)], masks[len(pred) :]
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    np.divide(inter, union, out=ious, where=union > 0)
    return ious


def match_lanes(ious: np.ndarray, iou_threshold: float = 0.5) -> int:
    """True positives: pairs of the maximum-total-IoU matching whose IoU is above the threshold."""
    if ious.size == 0:
        return 0
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return int((ious[rows, cols] > iou_threshold).sum())


def frame_counts(
    pred: Sequence[LaneLike],
    gt: Sequence[LaneLike],
    img_shape: tuple[int, int] = (590, 1640),
    width: int = 30,
    iou_threshold: float = 0.5,
) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of one frame under the CULane protocol."""
    tp = match_lanes(lane_ious(pred, gt, img_shape, width), iou_threshold)
    return tp, len(pred) - tp, len(gt) - tp


def _lanes(value: Any) -> list[np.ndarray]:
    """One frame's lanes (a list of arrays/tensors, or an (L, N, 2) tensor) as float arrays."""
    if value is None:
        return []
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        if arr.size == 0:
            return []
        return [lane_array(lane) for lane in arr]
    return [lane_array(lane) for lane in value]


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1; 0 where a denominator is 0 (no prediction, no lane)."""
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@register_type("CulaneF1")
class CulaneF1(Metric):
    """CULane F1 (see the module docstring for the protocol), overall and per test category.

    ``update(batch, outputs)`` reads ``outputs["pred_lanes"]`` (per image, a list of
    ``(N, 2)`` lanes in original pixels, from :class:`~hat_ganet.model.decoder.GANetPostProcess`),
    ``batch["lanes_orig"]`` (the annotated lanes, same coordinates) and, when present,
    ``batch["categories"]`` (per image, a list of category names). Categories outside
    ``categories`` are not tallied separately (they still count in the totals).

    ``compute()`` returns ``F1``, ``precision``, ``recall``, ``TP``, ``FP``, ``FN`` over
    every frame, and for each category that had frames ``F1/<cat>``, ``precision/<cat>``,
    ``recall/<cat>`` — except the lane-less ones (``cross``), which get ``FP/<cat>`` only.
    State is float64 counts summed over DDP ranks.
    """

    name = "F1"
    higher_is_better = True

    def __init__(
        self,
        img_shape: Sequence[int] = (590, 1640),
        lane_width: int = 30,
        iou_threshold: float = 0.5,
        categories: Sequence[str] = CULANE_CATEGORIES,
    ) -> None:
        super().__init__()
        if len(img_shape) != 2 or min(img_shape) <= 0:
            raise ValueError(f"img_shape must be (H, W), got {img_shape!r}")
        if lane_width < 1:
            raise ValueError(f"lane_width must be >= 1, got {lane_width}")
        if not 0 <= iou_threshold < 1:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.lane_width = int(lane_width)
        self.iou_threshold = float(iou_threshold)
        self.categories = tuple(categories)
        self._index = {c: i + 1 for i, c in enumerate(self.categories)}
        # row 0: every frame; row 1 + k: frames of category k. Columns: tp, fp, fn, frames.
        self.add_state("counts", torch.zeros(1 + len(self.categories), 4, dtype=torch.float64))

    def update(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        preds = outputs["pred_lanes"]
        gts = batch["lanes_orig"]
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} images of pred_lanes but {len(gts)} of lanes_orig")
        cats = batch.get("categories") if isinstance(batch, Mapping) else None
        for k, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
            tp, fp, fn = frame_counts(_lanes(pred), _lanes(gt), self.img_shape, self.lane_width, self.iou_threshold)
            row = torch.tensor([tp, fp, fn, 1], dtype=torch.float64)
            frame_cats = [] if cats is None else cats[k]
            if isinstance(frame_cats, str):
                frame_cats = [frame_cats]
            rows = {0} | {self._index[c] for c in frame_cats if c in self._index}
            for r in rows:
                self.counts[r] += row

    def _compute(self) -> dict[str, float]:
        tp, fp, fn, _ = (float(v) for v in self.counts[0])
        precision, recall, f1 = _prf(tp, fp, fn)
        out = {"F1": f1, "precision": precision, "recall": recall, "TP": tp, "FP": fp, "FN": fn}
        for cat, r in self._index.items():
            ctp, cfp, cfn, frames = (float(v) for v in self.counts[r])
            if frames == 0:
                continue
            if cat in NO_LANE_CATEGORIES:
                out[f"FP/{cat}"] = cfp
                continue
            cp, cr, cf = _prf(ctp, cfp, cfn)
            out[f"F1/{cat}"], out[f"precision/{cat}"], out[f"recall/{cat}"] = cf, cp, cr
        return out

    def __repr__(self) -> str:
        return (
            f"CulaneF1(img_shape={self.img_shape}, lane_width={self.lane_width}, "
            f"iou_threshold={self.iou_threshold}, categories={list(self.categories)})"
        )
