"""Geometric transforms that keep a camera's intrinsics and 3D boxes consistent with its image.

Core's Resize and RandomFlip move 2D annotations; a monocular 3D sample also carries the
camera matrix that projects its boxes, and a mirrored image needs mirrored boxes. These
two do both, so that projecting ``gt_boxes_3d`` with ``intrinsic`` always lands on the
pixels the network sees. Pad (core) on the bottom/right leaves both unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hat.data.transforms import Resize
from hat.registry import register_type

Sample = dict[str, Any]


def _hw(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) <= 0 for v in size):
        raise ValueError(f"{name} must be (h, w) with positive sides, got {size!r}")
    return int(size[0]), int(size[1])


@register_type("ResizeCamera")
class ResizeCamera:
    """Core's keep-ratio :class:`~hat.data.transforms.Resize` of the image, with the
    intrinsics scaled along (rows 0 and 1 of ``intrinsic`` by the x and y factors actually
    used). 3D boxes do not change: the scene is the same, only the pixels are.
    """

    def __init__(self, size: Sequence[int]) -> None:
        self.size = _hw(size, "ResizeCamera size")
        self.resize = Resize(self.size, keep_ratio=True)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        old_h, old_w = sample["img"].shape[:2]
        out = self.resize(sample, rng)
        new_h, new_w = out["img"].shape[:2]
        intrinsic = np.array(sample["intrinsic"], dtype=np.float32)
        intrinsic[0] *= new_w / old_w
        intrinsic[1] *= new_h / old_h
        out["intrinsic"] = intrinsic
        return out

    def __repr__(self) -> str:
        return f"ResizeCamera(size={self.size})"


@register_type("RandomFlipCamera")
class RandomFlipCamera:
    """Mirror the image left-right with probability ``p``, and the scene with it.

    Mirroring pixels ``u -> W - u`` is the same picture as a scene mirrored in the
    camera's y-z plane (``x -> -x``) seen by a camera with ``cx -> W - cx``. So: box
    centres and x-velocities change sign, headings ``(cos yaw, 0, -sin yaw)`` become
    ``(-cos yaw, 0, -sin yaw)``, i.e. ``yaw -> pi - yaw``. Apply it before any padding
    (it mirrors the whole canvas). One number is drawn from ``rng`` on every call.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomFlipCamera p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = dict(sample)
        out.setdefault("flipped", False)
        if not rng.random() < self.p:
            return out
        img = sample["img"]
        width = img.shape[1]
        out["img"] = np.ascontiguousarray(img[:, ::-1])
        intrinsic = np.array(sample["intrinsic"], dtype=np.float32)
        intrinsic[0, 2] = width - intrinsic[0, 2]
        out["intrinsic"] = intrinsic
        boxes = np.array(sample["gt_boxes_3d"], dtype=np.float32).reshape(-1, 9)
        boxes[:, 0] *= -1.0
        boxes[:, 6] = np.arctan2(np.sin(np.pi - boxes[:, 6]), np.cos(np.pi - boxes[:, 6]))
        boxes[:, 7] *= -1.0
        out["gt_boxes_3d"] = boxes
        out["flipped"] = not out["flipped"]
        return out

    def __repr__(self) -> str:
        return f"RandomFlipCamera(p={self.p})"
