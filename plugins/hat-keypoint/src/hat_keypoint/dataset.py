"""The packed CarFusion dataset: decoded car crops with their 12 keypoints.

Renames the pack's ``ldmk`` to ``keypoints``, the key core transforms (flip with pair
swapping, resize, pad) know how to move, so that the task needs no geometric transform
of its own beyond :mod:`hat_keypoint.transforms`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hat.data.dataset import PackedDataset
from hat.registry import register_type


@register_type("CarfusionPackData")
class CarfusionPackData(PackedDataset):
    """Samples ``{"img": HxWx3 uint8 BGR, "color_space": "bgr", "keypoints": (12, 3) float32, "img_name"}``.

    ``keypoints`` rows are ``x, y, valid`` in crop pixels (continuous coordinates: pixel
    ``i`` covers ``[i, i + 1)``); ``valid`` is 1.0 for a usable label and 0.0 otherwise.
    """

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {
            "img": self.decode_image(sample["img"], "bgr"),
            "color_space": "bgr",
            "keypoints": np.asarray(sample["ldmk"], dtype=np.float32),
            "img_name": sample["img_name"],
        }
