"""Exact IoU of rotated rectangles in bird's-eye view, and greedy NMS on it, in plain torch.

Box convention (N, 5): ``x, y, w, l, yaw``. ``(x, y)`` is the centre; ``l`` is the
extent along the box's own x axis (its length, the heading direction) and ``w`` the
extent along its own y axis; ``yaw`` rotates the box's x axis from the frame's +x
towards +y (counter-clockwise about +z), in radians. The nuScenes box size ``(w, l, h)``
and heading fit this directly.

The overlap of two rectangles is a convex polygon of at most eight vertices. It is
found by Sutherland–Hodgman clipping: the corners of box ``a`` (counter-clockwise) are
clipped in turn by the four half-planes bounded by box ``b``'s edges, keeping the
points on the inner (left) side and adding the crossing points of the edges that cross
the boundary. Every pair is clipped at once in fixed-size tensors: each step writes up
to two candidate points per vertex (the crossing, then the vertex), marks which exist,
and compacts them to the front in order (a cumulative sum gives each kept point its
slot). The area is the shoelace formula.
Pairs whose circumscribed circles do not touch are skipped, and pairs are processed in
chunks, so a thousand boxes stay fast and memory stays bounded. Computation is in
float64 around box ``a``'s centre, so the result does not depend on how far from the
origin the boxes lie.
"""

from __future__ import annotations

import numpy as np
import torch

#: Pairs clipped per chunk: bounds the temporaries (a few KB per pair).
CHUNK = 1 << 15


def box_corners_bev(boxes: torch.Tensor) -> torch.Tensor:
    """Corners (N, 4, 2) of ``boxes`` (N, 5), counter-clockwise from (+l/2, +w/2)."""
    x, y, width, length, yaw = boxes.unbind(-1)
    local = boxes.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    along = local[:, 0] * length[:, None]  # (N, 4) along the box's x axis
    across = local[:, 1] * width[:, None]
    cos, sin = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack((x[:, None] + along * cos - across * sin, y[:, None] + along * sin + across * cos), dim=-1)


def rotated_iou_bev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (N, M) of every box in ``a`` (N, 5) with every box in ``b`` (M, 5); see the module doc.

    Boxes of zero area have IoU 0 with everything.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    out = torch.zeros(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return out
    a64, b64 = a.detach().double(), b.detach().double()
    ia, ib = torch.nonzero(_may_overlap(a64[:, None, :], b64[None, :, :]), as_tuple=True)
    out[ia, ib] = _pair_iou(a64[ia], b64[ib]).to(out.dtype)
    return out


def rotated_nms_bev(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices (int64) of the kept boxes, highest score first.

    Boxes are visited by descending score (ties: lower index first); a box is kept
    unless a kept box overlaps it with IoU strictly greater than ``iou_threshold``.
    """
    _check_boxes(boxes, "boxes")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    ranked = boxes.detach().double()[order]
    # Only pairs (i, j) with i ranked above j can suppress; skip pairs that cannot touch.
    candidates = torch.triu(_may_overlap(ranked[:, None, :], ranked[None, :, :]), diagonal=1)
    i, j = torch.nonzero(candidates, as_tuple=True)
    over = _pair_iou(ranked[i], ranked[j]) > iou_threshold
    i, j = i[over].cpu().numpy(), j[over].cpu().numpy()
    # Neighbours of each rank as CSR (nonzero returns i sorted), for the sequential pass.
    starts = np.searchsorted(i, np.arange(n + 1))
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for rank in range(n):
        if suppressed[rank]:
            continue
        keep.append(rank)
        suppressed[j[starts[rank] : starts[rank + 1]]] = True
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


# -- internals ---------------------------------------------------------------------------------


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 5:
        raise ValueError(f"{name} must have shape (N, 5) as x, y, w, l, yaw; got {tuple(boxes.shape)}")


def _may_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether the circumscribed circles of (broadcast) boxes ``a`` and ``b`` intersect."""
    reach = 0.5 * (torch.hypot(a[..., 2], a[..., 3]) + torch.hypot(b[..., 2], b[..., 3]))
    distance = torch.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])
    area = (a[..., 2] * a[..., 3] > 0) & (b[..., 2] * b[..., 3] > 0)
    return (distance < reach) & area


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (P,) of aligned pairs ``a[k]``, ``b[k]`` (P, 5), float64, in chunks."""
    results = [_pair_iou_chunk(a[s : s + CHUNK], b[s : s + CHUNK]) for s in range(0, a.shape[0], CHUNK)]
    return torch.cat(results) if results else a.new_zeros(0)


def _pair_iou_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    centre = a[:, None, :2]
    subject = box_corners_bev(a) - centre  # (P, 4, 2), counter-clockwise
    clip = box_corners_bev(b) - centre
    xs, ys = subject[..., 0].contiguous(), subject[..., 1].contiguous()
    count = torch.full((a.shape[0],), 4, dtype=torch.long, device=a.device)
    for edge in range(4):
        xs, ys, count = _clip(xs, ys, count, clip[:, edge], clip[:, (edge + 1) % 4])
    inter = _polygon_area(xs, ys, count)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(inter))


def _clip(
    xs: torch.Tensor, ys: torch.Tensor, count: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip polygons (vertex coordinates ``xs``, ``ys``: (P, K), ``count`` leading vertices
    valid) by the half-plane left of the directed line p0 -> p1 (P, 2). Returns the
    clipped polygons, compacted to the front, and their vertex counts."""
    p, k = xs.shape
    slots = torch.arange(k, device=xs.device)[None, :]
    valid = slots < count[:, None]
    previous_slot = torch.where(slots == 0, count[:, None] - 1, slots - 1).clamp(min=0)
    ex, ey = (p1[:, 0] - p0[:, 0])[:, None], (p1[:, 1] - p0[:, 1])[:, None]
    # Signed distance (times the edge length): >= 0 on the inner side (counter-clockwise box).
    side = ex * (ys - p0[:, 1:2]) - ey * (xs - p0[:, 0:1])
    side_prev = side.gather(1, previous_slot)
    inside = side >= 0
    crosses = valid & (inside != (side_prev >= 0))
    keep_vertex = valid & inside
    # Where the segment previous -> vertex meets the line; used only where the signs
    # differ, so the denominator is at least the outside point's distance.
    t = side_prev / torch.where(crosses, side_prev - side, torch.ones_like(side))
    px, py = xs.gather(1, previous_slot), ys.gather(1, previous_slot)
    cx, cy = px + t * (xs - px), py + t * (ys - py)
    # Candidates per vertex: the crossing, then the vertex itself; compact the kept ones.
    keep = torch.stack((crosses, keep_vertex), dim=2).reshape(p, 2 * k)
    position = keep.cumsum(dim=1) - 1
    new_count = position[:, -1] + 1
    width = max(int(new_count.max()), 1) if p else 1
    target = torch.where(keep, position, width)  # dropped candidates go to a spare slot
    out_x = xs.new_zeros(p, width + 1).scatter_(1, target, torch.stack((cx, xs), dim=2).reshape(p, 2 * k))
    out_y = ys.new_zeros(p, width + 1).scatter_(1, target, torch.stack((cy, ys), dim=2).reshape(p, 2 * k))
    return out_x[:, :width], out_y[:, :width], new_count


def _polygon_area(xs: torch.Tensor, ys: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Shoelace area (P,) of polygons with ``count`` leading vertices (fewer than 3: zero)."""
    slots = torch.arange(xs.shape[1], device=xs.device)[None, :]
    next_slot = torch.where(slots + 1 < count[:, None], slots + 1, 0)
    cross = xs * ys.gather(1, next_slot) - ys * xs.gather(1, next_slot)
    area = 0.5 * torch.where(slots < count[:, None], cross, 0.0).sum(dim=1)
    return torch.where(count >= 3, area.abs(), 0.0)
