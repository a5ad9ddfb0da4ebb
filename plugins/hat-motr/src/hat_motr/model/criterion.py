"""MOTR's clip criterion (``ClipMatcher``) for one frame at a time: targets by identity, Hungarian for the rest.

In every frame the slots split into two kinds:

* a **track slot** carries the identity it was matched to when it was born. Its target is
  that identity's box in this frame, or "no object" if the identity is not in the frame
  (it left), or if the slot is a false positive inserted in training (identity -1). Tracks
  are never re-matched: that is what teaches a track query to follow its object.
* the **detect queries** are matched by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) to the *new* ground truths only, those whose
  identity no track slot carries; every other detect query's target is "no object".
  Matching costs (Deformable DETR's): focal class cost x 2, L1 on ``cx, cy, w, h`` x 5,
  negative GIoU x 2. Each decoder layer's outputs are matched on their own for its
  auxiliary loss (the track part is the same for every layer).

Losses per layer (DETR's set loss): sigmoid focal loss (alpha 0.25, gamma 2) over every
valid slot and class, weight 2; L1 (weight 5) and GIoU (weight 2) over the matched slots.
The model sums the per-frame sums over the clip and divides them by the number of ground
truths in the clip (at least 1): a clip of busy frames does not outweigh a quiet one per
object. Nothing here has parameters: the criterion runs beside the network, outside its
state dict.

An optional **token loss** (``token_weight``, 0 in the recipe) is not MOTR's: a focal loss on
the class head applied to every encoder token, whose target is 1 where the token's cell
centre lies inside a ground-truth box. It gives the backbone and the encoder a dense
signal from the first step, where the set loss reaches them only through the decoder's
cross-attention; that is what a MOTR trained from scratch on a CPU budget lacks (the
recipe starts from a COCO-trained detector). It adds no parameter and no deploy op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from hat.registry import register_type
from hat_motr.model.boxes import cxcywh_to_xyxy, elementwise_giou, pairwise_giou

#: The keys :meth:`MotrCriterion.frame_sums` returns per layer (unweighted, unnormalized sums).
SUM_KEYS = ("cls", "bbox", "giou")


@dataclass
class FrameMatch:
    """Who is matched to which ground truth in one frame (indices into that frame's ground truths).

    ``track_targets`` ``(T,)``: per track slot, the index of its identity's box, -1 for none;
    ``det_queries`` / ``det_targets`` ``(k,)``: the last layer's Hungarian pairs (detect
    query index ``0..D-1``, ground-truth index).
    """

    track_targets: torch.Tensor
    det_queries: torch.Tensor
    det_targets: torch.Tensor


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise focal loss (Lin et al., 2017) for sigmoid logits and {0, 1} targets."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


@register_type("MotrCriterion")
class MotrCriterion:
    """Matching and set losses of one frame (see the module docstring); the model runs the clip.

    Args:
        cost_class, cost_bbox, cost_giou: Hungarian cost weights (2, 5, 2).
        cls_weight, bbox_weight, giou_weight: loss weights (2, 5, 2).
        focal_alpha, focal_gamma: of the focal loss and the class cost (0.25, 2).
        aux_loss: add the intermediate decoder layers' losses (``loss_aux``).
        token_weight: weight of the token loss (``loss_token``; see the module docstring), 0: none.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cls_weight: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_loss: bool = True,
        token_weight: float = 0.0,
    ) -> None:
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.weights = {"cls": float(cls_weight), "bbox": float(bbox_weight), "giou": float(giou_weight)}
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.aux_loss = bool(aux_loss)
        if token_weight < 0:
            raise ValueError(f"token_weight must be >= 0, got {token_weight}")
        self.token_weight = float(token_weight)

    # -- matching ----------------------------------------------------------------------
    @staticmethod
    def track_targets(slot_ids: torch.Tensor, gt_ids: torch.Tensor) -> torch.Tensor:
        """``(T,)`` per track slot: the index in ``gt_ids`` of the identity it carries, -1 if absent.

        A slot with identity -1 (empty, or an inserted false positive) gets -1.
        """
        slot_ids = slot_ids.reshape(-1).to(torch.long)
        gt_ids = gt_ids.reshape(-1).to(device=slot_ids.device, dtype=torch.long)
        if gt_ids.numel() == 0:
            return torch.full_like(slot_ids, -1)
        equal = (slot_ids[:, None] == gt_ids[None, :]) & (slot_ids[:, None] >= 0)
        found = equal.any(dim=1)
        return torch.where(found, equal.to(torch.long).argmax(dim=1), torch.full_like(slot_ids, -1))

    def token_loss(
        self, token_logits: torch.Tensor, grid: tuple[int, int], frame_boxes: list[torch.Tensor]
    ) -> torch.Tensor:
        """The token loss summed over images: ``token_logits`` ``(N, h*w, C)`` of ``N`` images on a
        ``grid`` of ``(h, w)`` tokens, ``frame_boxes[n]`` ``(M, 4)`` normalized ``cx, cy, w, h``.

        A token's target is class 0 where its cell centre is inside a box. Divided by the
        caller, like the set losses, by the number of ground truths.
        """
        h, w = grid
        device = token_logits.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # (h*w, 2)
        targets = torch.zeros_like(token_logits)
        for n, boxes in enumerate(frame_boxes):
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4)
            if not len(boxes):
                continue
            lo, hi = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
            inside = ((centres[:, None] >= lo[None]) & (centres[:, None] <= hi[None])).all(-1).any(-1)
            targets[n, inside, 0] = 1.0
        return sigmoid_focal_loss(token_logits, targets, self.focal_alpha, self.focal_gamma).sum()

    @torch.no_grad()
    def match(
        self, logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hungarian matching of ``(Q, C)`` logits and ``(Q, 4)`` boxes to ``(M, 4)`` ground truths.

        Returns ``(query indices, ground-truth indices)``, ``min(Q, M)`` pairs, sorted by query.
        """
        device = logits.device
        if logits.shape[0] == 0 or gt_boxes.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        prob = torch.sigmoid(logits.float())[:, gt_labels]  # (Q, M)
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        cost = self.cost_class * (pos - neg)
        cost = cost + self.cost_bbox * torch.cdist(boxes.float(), gt_boxes.float(), p=1)
        cost = cost - self.cost_giou * pairwise_giou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(gt_boxes.float()))
        rows, cols = linear_sum_assignment(np.nan_to_num(cost.cpu().numpy(), nan=1e6, posinf=1e6, neginf=-1e6))
        return (
            torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device),
        )

    # -- losses ------------------------------------------------------------------------
    def frame_sums(
        self,
        class_logits: list[torch.Tensor],
        boxes: list[torch.Tensor],
        valid: torch.Tensor,
        num_track_slots: int,
        slot_ids: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_ids: torch.Tensor,
        gt_labels: torch.Tensor | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], FrameMatch]:
        """The unweighted loss sums of one frame of one clip, per decoder layer, and the last layer's match.

        ``class_logits`` / ``boxes``: per layer ``(Q, C)`` / ``(Q, 4)`` (sigmoid ``cx, cy,
        w, h``) over the ``Q = T + D`` slots, tracks first; ``valid`` ``(Q,)``: which slots
        exist (empty track slots get no loss at all); ``slot_ids`` ``(T,)`` the identities
        of the track slots (-1: none); ``gt_boxes`` ``(M, 4)`` normalized ``cx, cy, w, h``,
        ``gt_ids`` ``(M,)``, ``gt_labels`` ``(M,)`` (default: class 0).
        """
        device = class_logits[-1].device
        gt_boxes = gt_boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        gt_ids = gt_ids.to(device).reshape(-1)
        labels = (
            torch.zeros(len(gt_ids), dtype=torch.long, device=device)
            if gt_labels is None
            else gt_labels.to(device=device, dtype=torch.long).reshape(-1)
        )
        t = int(num_track_slots)
        track_targets = self.track_targets(slot_ids.to(device), gt_ids)
        held = torch.zeros(len(gt_ids), dtype=torch.bool, device=device)
        held[track_targets[track_targets >= 0]] = True
        new_gt = torch.nonzero(~held).flatten()
        track_slots = torch.nonzero(track_targets >= 0).flatten()
        layers = list(range(len(class_logits))) if self.aux_loss else [len(class_logits) - 1]
        sums: list[dict[str, torch.Tensor]] = []
        match = None
        for layer in layers:
            logits, layer_boxes = class_logits[layer], boxes[layer]
            rows, cols = self.match(logits[t:], layer_boxes[t:], gt_boxes[new_gt], labels[new_gt])
            slots = torch.cat([track_slots, t + rows])
            targets = torch.cat([track_targets[track_slots], new_gt[cols]])
            onehot = torch.zeros_like(logits)
            onehot[slots, labels[targets]] = 1.0
            focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
            cls = (focal.sum(dim=1) * valid.to(focal.dtype)).sum()
            pred, gt = layer_boxes[slots], gt_boxes[targets]
            bbox = (pred - gt).abs().sum()
            giou = (1 - elementwise_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt))).sum()
            sums.append({"cls": cls, "bbox": bbox, "giou": giou})
            match = FrameMatch(track_targets, rows, new_gt[cols])
        assert match is not None
        return sums, match

    def weighted(self, sums: dict[str, torch.Tensor], num_targets: float) -> torch.Tensor:
        """``sum_k weight_k * sums[k] / num_targets``."""
        return sum(self.weights[k] * sums[k] for k in SUM_KEYS) / max(float(num_targets), 1.0)

    def __repr__(self) -> str:
        return (
            f"MotrCriterion(costs class/bbox/giou {self.cost_class}/{self.cost_bbox}/{self.cost_giou}, "
            f"weights {self.weights}, aux_loss={self.aux_loss})"
        )
