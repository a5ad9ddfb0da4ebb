"""MOTR's clip augmentations: core's transforms, plus the few DETR-style ones core lacks, applied per clip.

MOTR trains on clips of a few frames of one sequence and needs every frame of a clip
augmented *identically* (one flip, one scale, one crop), or the motion between frames
would be the augmentation's instead of the scene's. Core's transforms are pure
functions of ``(sample, rng)`` whose random draws do not depend on the image content,
so :class:`ClipTransforms` runs the per-frame pipeline on every frame with its own copy
of *one* generator state: the same draws, the same augmentation. It checks that every
frame left its generator in the same state (a transform drawing a data-dependent number
of values would silently break the sameness, so it is an error).

The recipe's pipeline (MOTR's ``make_transforms_for_mot17``, in the recipe's YAML)::

    RandomFlip(p=0.5)                                # core: boxes mirrored with the image
    MotRandomSelect(
        [MotRandomResize(sizes=[608, ..., 992], max_size=1536)],
        [MotRandomResize(sizes=[400, 500, 600]), MotRandomSizeCrop(384, 600),
         MotRandomResize(sizes=[608, ..., 992], max_size=1536)])
    ToTensor(to_yuv=True)                            # core: BT.601 YUV444, as the deployed camera feeds it
    Normalize(mean=128.0, std=128.0)                 # core

Conventions are core's (:mod:`hat.data.transforms`): ``boxes`` ``(N, 4)`` ``x1, y1, x2, y2``
in continuous pixels, a new dict per call, input arrays never written, every draw from
``rng`` and the same number of draws on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hat.data.transforms import Compose, Resize, Transform, check_probability, sample_image, start_geometry
from hat.registry import register_type

Sample = dict[str, Any]
FrameTransform = Callable[[Sample, np.random.Generator], Sample]


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def resized_shape(h: int, w: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """DETR's ``get_size_with_aspect_ratio``: short side to ``size``, unless the long side would pass ``max_size``."""
    if max_size is not None:
        short, long = float(min(h, w)), float(max(h, w))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


@register_type("MotRandomResize")
class MotRandomResize(Transform):
    """Resize so that the short side is one of ``sizes`` (drawn at random), the long side at most ``max_size``.

    The multi-scale resize of DETR and MOTR. The image and every annotation are resized by
    core's :class:`~hat.data.transforms.Resize` (exact scale bookkeeping). One draw per call.
    """

    _repr_fields = ("sizes", "max_size")

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if isinstance(sizes, (int, np.integer)):
            sizes = [int(sizes)]
        if not sizes:
            raise ValueError("MotRandomResize needs at least one size")
        self.sizes = [_positive_int(s, "MotRandomResize sizes") for s in sizes]
        self.max_size = None if max_size is None else _positive_int(max_size, "MotRandomResize max_size")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "MotRandomResize")
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        h, w = resized_shape(int(img.shape[0]), int(img.shape[1]), size, self.max_size)
        return Resize(size=(h, w), keep_ratio=False)(sample, rng)


@register_type("MotRandomSizeCrop")
class MotRandomSizeCrop(Transform):
    """Crop a random ``h x w`` window, each side drawn in ``[min_size, min(side, max_size)]`` (DETR's RandomSizeCrop).

    Boxes are shifted, clipped to the window and dropped when nothing of them is left;
    the per-box entries listed in ``box_keys`` (identities) are dropped with them.
    Records ``crop_offset`` (x, y, summed over crops) and the new ``img_shape``. Four
    draws per call.
    """

    _repr_fields = ("min_size", "max_size", "box_keys")

    def __init__(self, min_size: int, max_size: int, box_keys: Sequence[str] = ("ids",)) -> None:
        self.min_size = _positive_int(min_size, "MotRandomSizeCrop min_size")
        self.max_size = _positive_int(max_size, "MotRandomSizeCrop max_size")
        if self.min_size > self.max_size:
            raise ValueError(f"MotRandomSizeCrop min_size {min_size} is larger than max_size {max_size}")
        self.box_keys = tuple(box_keys)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "MotRandomSizeCrop")
        out = dict(sample)
        start_geometry(out, img)
        H, W = int(img.shape[0]), int(img.shape[1])
        w = int(rng.integers(min(self.min_size, W), min(W, self.max_size), endpoint=True))
        h = int(rng.integers(min(self.min_size, H), min(H, self.max_size), endpoint=True))
        top = int(rng.integers(0, H - h, endpoint=True))
        left = int(rng.integers(0, W - w, endpoint=True))
        out["img"] = np.ascontiguousarray(img[top : top + h, left : left + w])
        boxes = out.get("boxes")
        if boxes is not None:
            arr = np.asarray(boxes)
            moved = arr.astype(np.result_type(arr.dtype, np.float32), copy=True).reshape(-1, arr.shape[-1])
            moved[:, [0, 2]] = (moved[:, [0, 2]] - left).clip(0, w)
            moved[:, [1, 3]] = (moved[:, [1, 3]] - top).clip(0, h)
            keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
            out["boxes"] = moved[keep]
            for key in self.box_keys:
                if out.get(key) is not None:
                    values = np.asarray(out[key])
                    if len(values) != len(keep):
                        raise ValueError(f"MotRandomSizeCrop: {key!r} has {len(values)} entries for {len(keep)} boxes")
                    out[key] = values[keep]
        prev_x, prev_y = out.get("crop_offset", (0, 0))
        out["crop_offset"] = (int(prev_x) + left, int(prev_y) + top)
        out["img_shape"] = (h, w)
        return out


@register_type("MotRandomSelect")
class MotRandomSelect(Transform):
    """With probability ``p`` apply ``first``, else ``second`` (each a transform or a list of them).

    DETR's RandomSelect; MOTR uses it to choose between a plain multi-scale resize and a
    resize-crop-resize. One draw for the choice on every call, then the branch's own.
    """

    _repr_fields = ("first", "second", "p")

    def __init__(
        self,
        first: FrameTransform | Sequence[FrameTransform],
        second: FrameTransform | Sequence[FrameTransform],
        p: float = 0.5,
    ) -> None:
        self.first = first if callable(first) else Compose(first)
        self.second = second if callable(second) else Compose(second)
        self.p = check_probability(p, "MotRandomSelect p")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return self.first(sample, rng) if rng.random() < self.p else self.second(sample, rng)


@register_type("MotClipTransforms")
class ClipTransforms:
    """Apply one per-frame pipeline to every frame of a clip with the same random draws.

    ``clip_transforms(frames, rng) -> frames``: draws one seed from ``rng`` and runs the
    pipeline on each frame with a fresh generator of that seed. Raises ``ValueError`` if
    the frames' generators end in different states (a transform drew a content-dependent
    number of values, so the frames were not augmented alike).
    """

    def __init__(self, transforms: Sequence[FrameTransform]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"ClipTransforms transforms must be built transforms (callables), got {t!r}")

    def __call__(self, frames: Sequence[Sample], rng: np.random.Generator) -> list[Sample]:
        seed = int(rng.integers(0, 2**63))
        out, states = [], []
        for frame in frames:
            frame_rng = np.random.default_rng(seed)
            for t in self.transforms:
                frame = t(frame, frame_rng)
            out.append(frame)
            states.append(frame_rng.bit_generator.state)
        if any(state != states[0] for state in states[1:]):
            raise ValueError(
                "the clip's frames drew different random numbers, so they were not augmented alike: "
                f"a transform of {self.transforms!r} draws a number of values that depends on the frame"
            )
        return out

    def __repr__(self) -> str:
        return f"ClipTransforms({self.transforms!r})"
