"""The integral-regression term of HeatmapMSELoss: soft-argmax finds peaks, the term pulls toward the truth."""

from __future__ import annotations

import torch

from hat_keypoint.model.loss import HeatmapMSELoss, soft_argmax


def _peaks(cells: torch.Tensor, size: int = 16, sigma: float = 1.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (xs - cells[..., 0, None, None]) ** 2 + (ys - cells[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def test_soft_argmax_recovers_peaks() -> None:
    cells = torch.tensor([[[3.0, 4.0], [10.0, 7.0]]])
    torch.testing.assert_close(soft_argmax(_peaks(cells), beta=50.0), cells, atol=0.05, rtol=0)
    # a soft temperature is pulled toward the map's centre by the background (why beta is large)
    soft = soft_argmax(_peaks(cells), beta=2.0)
    assert float((soft - 7.5).abs().max()) < float((cells - 7.5).abs().max())


def test_coordinate_term_is_small_at_the_truth_and_pulls_toward_it() -> None:
    stride = 4
    cells = torch.tensor([[[3.0, 4.0], [10.0, 7.0]]])
    keypoints = torch.cat([(cells + 0.5) * stride, torch.ones(1, 2, 1)], dim=-1)  # input pixels, valid
    target = _peaks(cells)
    weight = torch.ones(1, 2)
    plain = HeatmapMSELoss()
    with_coords = HeatmapMSELoss(coord_loss_weight=1.0, feat_stride=stride)
    at_truth = with_coords(target, target, weight, keypoints=keypoints)
    assert float(at_truth) < 0.05 and float(plain(target, target, weight)) == 0.0
    wrong = _peaks(cells + torch.tensor([[3.0, 0.0]])).requires_grad_(True)
    loss = with_coords(wrong, target, weight, keypoints=keypoints)
    assert float(loss) > float(plain(wrong, target, weight)) + 2.5  # about 3 cells of L1 per keypoint
    loss.backward()
    assert wrong.grad is not None and float(wrong.grad.abs().sum()) > 0
    # invalid keypoints contribute nothing
    invalid = keypoints.clone()
    invalid[..., 2] = 0
    assert float(with_coords(wrong, target, torch.zeros(1, 2), keypoints=invalid)) == 0.0
