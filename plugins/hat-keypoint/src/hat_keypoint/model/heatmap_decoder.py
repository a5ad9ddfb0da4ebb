"""Heatmaps -> keypoint coordinates in input pixels, with sub-pixel refinement.

Decoding is post-processing: it is not part of the exported network (the device returns
raw heatmaps, the host decodes them), so it is a plain function of tensors;
:class:`KeypointPostProcess` applies it for the torch model, the quantized simulation
and the ONNX outputs of ``int_infer`` alike.

Coordinate convention (shared with the data side's ``GenerateHeatmapTarget``): heatmap
cell ``(i, j)`` covers input pixels ``[j * scale, (j + 1) * scale)`` horizontally (rows
likewise), and its centre is at input ``x = (j + 0.5) * scale``, ``y = (i + 0.5) * scale``.
A position ``c`` in (fractional) cell units therefore maps to ``(c + 0.5) * scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from hat.postprocess import PostProcess
from hat.registry import register_type

DecodeMode = Literal["averaged", "max"]
MODES = ("averaged", "max")


def decode_heatmaps(
    heatmap: torch.Tensor | np.ndarray, scale: int = 4, mode: DecodeMode = "averaged", kernel: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints ``(B, K, 2)`` as ``(x, y)`` in input pixels and scores ``(B, K)``.

    The peak cell is the argmax of each heatmap; its value is the score. ``"max"`` returns
    the peak cell's centre (error at most half a cell per axis). ``"averaged"`` refines it
    to the weighted mean of the cell coordinates in the ``kernel x kernel`` window around
    the peak, with weights ``max(heatmap, 0)``: for a Gaussian target this recovers the
    continuous position to a small fraction of a cell. Window cells outside the heatmap
    get no weight, and a window with no positive weight keeps the peak cell's centre.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")
    heatmap = torch.as_tensor(heatmap)
    if heatmap.dim() != 4:
        raise ValueError(f"heatmap must be (B, K, h, w), got shape {tuple(heatmap.shape)}")
    heatmap = heatmap.detach().float()
    batch, joints, h, w = heatmap.shape
    flat = heatmap.reshape(batch, joints, h * w)
    scores, index = flat.max(dim=-1)
    peak_y = torch.div(index, w, rounding_mode="floor")
    peak_x = index - peak_y * w
    x, y = peak_x.float(), peak_y.float()
    if mode == "averaged" and kernel > 1:
        dx, dy = _window_offset(flat, peak_x, peak_y, h, w, kernel)
        x, y = x + dx, y + dy
    coords = torch.stack(((x + 0.5) * scale, (y + 0.5) * scale), dim=-1)
    return coords, scores


def _window_offset(
    flat: torch.Tensor, peak_x: torch.Tensor, peak_y: torch.Tensor, h: int, w: int, kernel: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean offset (in cells) from the peak over its ``kernel x kernel`` window."""
    radius = kernel // 2
    offsets = torch.arange(-radius, radius + 1, device=flat.device)
    rows = peak_y.unsqueeze(-1) + offsets  # (B, K, k)
    cols = peak_x.unsqueeze(-1) + offsets
    inside = ((rows >= 0) & (rows < h)).unsqueeze(-1) & ((cols >= 0) & (cols < w)).unsqueeze(-2)
    cells = rows.clamp(0, h - 1).unsqueeze(-1) * w + cols.clamp(0, w - 1).unsqueeze(-2)  # (B, K, k, k)
    values = flat.gather(-1, cells.flatten(-2)).reshape(cells.shape)
    weights = values.clamp(min=0) * inside
    total = weights.sum(dim=(-2, -1))
    offsets = offsets.to(flat.dtype)
    dy = (weights.sum(dim=-1) * offsets).sum(dim=-1)
    dx = (weights.sum(dim=-2) * offsets).sum(dim=-1)
    has_weight = total > 0
    safe_total = torch.where(has_weight, total, torch.ones_like(total))
    zero = torch.zeros_like(total)
    return torch.where(has_weight, dx / safe_total, zero), torch.where(has_weight, dy / safe_total, zero)


@register_type("HeatmapDecoder")
class HeatmapDecoder:
    """Configurable :func:`decode_heatmaps`: ``decoder(heatmap) -> (keypoints, scores)``.

    A plain callable, not an ``nn.Module``: it has no state, and keeping it out of the
    module tree means the quantizer never sees (and reports) it as a float op.

    Args:
        scale: input pixels per heatmap cell (the decoder's output stride, 4 for 128 -> 32).
        mode: ``"averaged"`` (sub-pixel refinement) or ``"max"`` (peak cell centre).
        kernel: side of the refinement window in cells (odd).
    """

    def __init__(self, scale: int = 4, mode: DecodeMode = "averaged", kernel: int = 5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale
        self.mode = mode
        self.kernel = kernel

    def __call__(self, heatmap: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_heatmaps(heatmap, self.scale, self.mode, self.kernel)

    def __repr__(self) -> str:
        return f"HeatmapDecoder(scale={self.scale}, mode={self.mode!r}, kernel={self.kernel})"


@register_type("KeypointPostProcess")
class KeypointPostProcess(PostProcess):
    """The keypoint task's ``post_process(outputs, batch)`` (core's contract,
    :mod:`hat.postprocess`): decodes ``outputs[heatmap_key]`` and adds ``pred_keypoints``
    ``(B, K, 2)`` and ``pred_scores`` ``(B, K)``, the keys the metrics and the inferer
    read. The one decoding path for the float, fake-quant and int8 ONNX heatmaps."""

    def __init__(
        self, scale: int = 4, mode: DecodeMode = "averaged", kernel: int = 5, heatmap_key: str = "heatmap"
    ) -> None:
        self.decoder = HeatmapDecoder(scale, mode, kernel)
        self.heatmap_key = heatmap_key

    def __call__(self, outputs: Mapping[str, Any], batch: Any = None) -> dict[str, Any]:
        if self.heatmap_key not in outputs:
            raise KeyError(f"no {self.heatmap_key!r} in the model outputs (keys: {sorted(outputs)})")
        keypoints, scores = self.decoder(outputs[self.heatmap_key])
        return {**outputs, "pred_keypoints": keypoints, "pred_scores": scores}

    def __repr__(self) -> str:
        return f"KeypointPostProcess({self.decoder!r}, heatmap_key={self.heatmap_key!r})"
