"""Rotated BEV IoU against shapely and by hand; greedy NMS against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hat.ops import box_corners_bev, rotated_iou_bev, rotated_nms_bev

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402


def random_boxes(n: int, seed: int, spread: float = 6.0) -> torch.Tensor:
    """Boxes of mixed shapes crowded into a small area, so many pairs overlap partly."""
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(n, 2, generator=g) - 0.5) * spread
    size = torch.rand(n, 2, generator=g) * 4.0 + 0.2
    yaw = (torch.rand(n, 1, generator=g) - 0.5) * 4 * math.pi
    return torch.cat([centre, size, yaw], dim=1).double()


def detections(n: int, seed: int, spread: float = 12.0) -> torch.Tensor:
    """Half random boxes, half jittered copies of them: duplicates as a detector makes them."""
    base = random_boxes(n - n // 2, seed, spread)
    g = torch.Generator().manual_seed(seed + 1000)
    copies = base[torch.randint(0, len(base), (n // 2,), generator=g)]
    noise = torch.randn(n // 2, 5, generator=g, dtype=torch.float64) * torch.tensor([0.2, 0.2, 0.1, 0.2, 0.1])
    return torch.cat([base, copies + noise])


def polygon(box: torch.Tensor) -> Polygon:
    x, y, width, length, yaw = box.tolist()
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(dx * length / 2, dy * width / 2) for dx, dy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(x + px * c - py * s, y + px * s + py * c) for px, py in corners])


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    pa, pb = [polygon(x) for x in a], [polygon(x) for x in b]
    out = np.zeros((len(pa), len(pb)))
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter = p.intersection(q).area
            union = p.area + q.area - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Textbook greedy NMS with shapely IoU, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # stable: ties keep index order
    polys = [polygon(b) for b in boxes]
    keep: list[int] = []
    for i in order:
        ok = True
        for k in keep:
            inter = polys[i].intersection(polys[k]).area
            if inter / (polys[i].area + polys[k].area - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_corners_follow_the_convention() -> None:
    # l = 4 along the box's x axis, w = 2 along its y axis, rotated 90 degrees: x axis -> +y.
    corners = box_corners_bev(torch.tensor([[1.0, 2.0, 2.0, 4.0, math.pi / 2]]))[0]
    expected = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]])
    torch.testing.assert_close(corners, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_shapely_on_random_boxes(seed: int) -> None:
    a, b = random_boxes(40, seed), random_boxes(30, seed + 100)
    ours = rotated_iou_bev(a, b).numpy()
    expected = shapely_iou(a, b)
    assert (expected > 0).mean() > 0.2 and ((expected > 0) & (expected < 1)).any()  # a real test
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_iou_matches_shapely_far_from_the_origin_in_float32() -> None:
    a, b = random_boxes(20, 5), random_boxes(20, 6)
    offset = torch.tensor([900.0, -1200.0, 0, 0, 0], dtype=torch.float64)
    ours = rotated_iou_bev((a + offset).float(), (b + offset).float())
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), shapely_iou(a, b), atol=1e-4, rtol=0)


def test_axis_aligned_by_hand() -> None:
    # 2x4 box at the origin (l = 4 along x, w = 2 along y) and a 2x2 box shifted by (1, 0.5):
    # overlap x in [0, 2], y in [-0.5, 1] -> 2 * 1.5 = 3; union 8 + 4 - 3 = 9.
    a = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0]])
    b = torch.tensor([[1.0, 0.5, 2.0, 2.0, 0.0], [1.0, 0.5, 2.0, 2.0, math.pi / 2], [0.0, 0.0, 4.0, 2.0, math.pi / 2]])
    iou = rotated_iou_bev(a, b)[0]
    torch.testing.assert_close(iou, torch.tensor([3 / 9, 3 / 9, 1.0]), atol=1e-6, rtol=0)


def test_identical_disjoint_touching_and_contained() -> None:
    box = torch.tensor([[3.0, -2.0, 1.5, 4.5, 0.7]])
    assert float(rotated_iou_bev(box, box)) == pytest.approx(1.0, abs=1e-9)
    far = box + torch.tensor([[10.0, 0, 0, 0, 0]])
    assert float(rotated_iou_bev(box, far)) == 0.0
    touching = torch.tensor([[0.0, 0, 2, 2, 0], [2.0, 0, 2, 2, 0]])  # share an edge
    assert float(rotated_iou_bev(touching[:1], touching[1:])) == pytest.approx(0.0, abs=1e-9)
    inner = torch.tensor([[3.0, -2.0, 0.75, 2.25, 0.7]])  # same box at half size: a quarter of the area
    assert float(rotated_iou_bev(box, inner)) == pytest.approx(0.25, abs=1e-6)
    corner_overlap = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 1.0, 2.0, 2.0, math.pi / 4]])
    expected = shapely_iou(corner_overlap[:1].double(), corner_overlap[1:].double())[0, 0]
    assert float(rotated_iou_bev(corner_overlap[:1], corner_overlap[1:])) == pytest.approx(expected, abs=1e-6)


def test_iou_is_symmetric_and_handles_degenerate_and_empty() -> None:
    a, b = random_boxes(15, 7), random_boxes(12, 8)
    torch.testing.assert_close(rotated_iou_bev(a, b), rotated_iou_bev(b, a).T, atol=1e-9, rtol=0)
    flat = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0]])  # zero width: no area
    assert float(rotated_iou_bev(flat, flat)) == 0.0
    assert rotated_iou_bev(a, b[:0]).shape == (15, 0) and rotated_iou_bev(a[:0], b).shape == (0, 12)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        rotated_iou_bev(a[:, :4], b)


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.1), (1, 0.3), (2, 0.5), (3, 0.7)])
def test_nms_matches_brute_force(seed: int, threshold: float) -> None:
    boxes = detections(120, seed)
    scores = torch.rand(120, generator=torch.Generator().manual_seed(seed + 50))
    kept = rotated_nms_bev(boxes, scores, threshold)
    expected = reference_nms(boxes, scores, threshold)
    assert kept.dtype == torch.long
    assert kept.tolist() == expected
    assert 1 < len(expected) < 120  # suppression happened, and not everything


def test_nms_keeps_descending_score_order_and_breaks_ties_by_index() -> None:
    boxes = torch.tensor([[0.0, 0, 2, 4, 0], [0.1, 0, 2, 4, 0], [10.0, 0, 2, 4, 0], [10.0, 0.1, 2, 4, 0]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.7])
    assert rotated_nms_bev(boxes, scores, 0.5).tolist() == [1, 2]
    assert rotated_nms_bev(boxes, scores, 0.99).tolist() == [1, 2, 3, 0]


def test_nms_empty_and_bad_input() -> None:
    kept = rotated_nms_bev(torch.zeros(0, 5), torch.zeros(0), 0.5)
    assert kept.dtype == torch.long and kept.shape == (0,)
    with pytest.raises(ValueError, match="scores must have shape"):
        rotated_nms_bev(torch.zeros(3, 5), torch.zeros(2), 0.5)


def test_nms_on_a_thousand_boxes() -> None:
    """The detection head's case: about a thousand candidates, many overlapping."""
    boxes = detections(1000, 11, spread=40.0)
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(12))
    kept = rotated_nms_bev(boxes.float(), scores, 0.2)
    survivors = boxes[kept]
    iou = rotated_iou_bev(survivors, survivors)
    iou.fill_diagonal_(0)
    assert float(iou.max()) <= 0.2 + 1e-6
    assert torch.all(scores[kept][:-1] >= scores[kept][1:])
    # Every dropped box overlaps a kept box of higher score by more than the threshold.
    dropped = torch.ones(1000, dtype=torch.bool)
    dropped[kept] = False
    cover = rotated_iou_bev(boxes[dropped], survivors) > 0.2
    higher = scores[dropped][:, None] <= scores[kept][None, :]
    assert torch.all((cover & higher).any(dim=1))
