"""The packed CULane dataset: decoded frames with their lanes as point arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from hat.data.dataset import PackedDataset
from hat.registry import register_type


@register_type("CulanePackData")
class CulanePackData(PackedDataset):
    """Samples ``{"img", "color_space", "lanes", "lanes_orig", "categories", "file", "ori_shape", "img2orig"}``.

    ``img`` is the HxWx3 uint8 BGR frame; ``lanes`` and ``lanes_orig`` are lists of
    ``(N, 2)`` float32 ``x, y`` arrays in the frame's pixels (continuous coordinates,
    points bottom-up as in the ``.lines.txt``). Transforms move ``lanes`` with the
    image; ``lanes_orig`` stays as labelled, for the metric. ``img2orig`` (3x3 float32,
    identity here) maps current image pixels to original ones; every geometric
    transform of :mod:`hat_ganet.transforms` composes its own inverse into it, so a
    prediction on the network input maps back to the frame.
    """

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = self.decode_image(sample["image"], "bgr")
        lanes = [np.asarray(lane, dtype=np.float32).reshape(-1, 2) for lane in sample["lanes"]]
        return {
            "img": img,
            "color_space": "bgr",
            "lanes": lanes,
            "lanes_orig": [lane.copy() for lane in lanes],
            "categories": list(sample["categories"]),
            "file": sample["file"],
            "ori_shape": (int(img.shape[0]), int(img.shape[1])),
            "img2orig": np.eye(3, dtype=np.float32),
        }
