"""Reference heatmap targets and random keypoints, shared by the keypoint tests (a helper
module: test modules import it, never each other)."""

from __future__ import annotations

import torch

STRIDE = 4
SIZE = 128
SHAPE = (SIZE // STRIDE, SIZE // STRIDE)
SIGMA = 1.0
NUM = 12


def reference_targets(keypoints: torch.Tensor, stride: int = STRIDE, shape=SHAPE, sigma: float = SIGMA):
    """The data contract's targets: cell (i, j) has its centre at ((j + 0.5) * stride,
    (i + 0.5) * stride); a Gaussian of ``sigma`` cells centred at the continuous keypoint;
    invalid keypoints get an all-zero map and weight 0."""
    h, w = shape
    centres_x = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
    centres_y = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
    x = keypoints[..., 0, None, None].double()
    y = keypoints[..., 1, None, None].double()
    d2 = ((centres_x.view(1, 1, 1, w) - x) ** 2 + (centres_y.view(1, 1, h, 1) - y) ** 2) / stride**2
    valid = keypoints[..., 2] > 0
    heatmap = torch.exp(-d2 / (2 * sigma**2)) * valid[..., None, None]
    return heatmap.float(), valid.float()


def random_keypoints(n: int, low: float, high: float, seed: int, invalid: float = 0.25) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = low + (high - low) * torch.rand(n, NUM, 2, generator=g)
    valid = (torch.rand(n, NUM, 1, generator=g) >= invalid).float()
    valid[:, :2] = 1.0  # every sample has a box of valid keypoints
    return torch.cat([xy, valid], dim=-1)
