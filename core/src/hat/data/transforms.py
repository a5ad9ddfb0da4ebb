"""Common transforms for 2D images and their annotations, shared by task plugins.

Every transform is a registered class called as ``transform(sample, rng) -> sample``.
The call is a pure function of ``(sample, rng)``: it returns a new dict (a shallow copy
whose changed entries are new arrays; input arrays are never written to), and every
random choice is drawn from ``rng``. A seeded :class:`numpy.random.Generator` per
sample therefore reproduces an epoch exactly, whatever the worker count.

Sample conventions
------------------
``img``
    ``HxWxC`` uint8 numpy array (``HxW`` grayscale allowed). Until :class:`ToTensor`,
    after which it is a ``CxHxW`` float32 torch tensor.
``color_space``
    ``"bgr"`` (default when absent: what ``cv2.imdecode`` gives) or ``"rgb"``;
    :class:`ToTensor` with ``to_yuv`` sets ``"yuv"``.

Geometric annotations, each optional, all in continuous pixel coordinates (pixel ``i``
covers ``[i, i + 1)``, so a pixel's centre is ``i + 0.5``). Every geometric transform
updates every one of them that is present:

``boxes``
    ``(N, 4)`` float ``x1, y1, x2, y2``; extra columns (e.g. a class id) are kept.
``points``
    any array of shape ``(..., D)``, ``D >= 2``, whose last axis starts with ``x, y``;
    the other columns (a visibility flag, a depth) are left untouched.
``keypoints``
    like ``points``, per instance: ``(..., K, D)``. :class:`RandomFlip` may swap
    left/right pairs along the ``K`` axis.
``lanes``
    a list of ``(Ni, 2)`` arrays (one polyline per lane).

Integer coordinate arrays come back as floats (at least float32), because scaling
and flipping produce fractional coordinates.

Meta the transforms maintain:

``ori_shape``   ``(h, w)`` of the image before the first geometric transform.
``img_shape``   ``(h, w)`` of the image content after resizing (before padding).
``pad_shape``   ``(h, w)`` of the padded canvas.
``pad_offset``  ``(x, y)`` where the content sits in the padded canvas.
``scale_factor`` ``(sx, sy)`` accumulated over every resize.
``flipped``     whether the sample is currently flipped (two flips cancel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from hat.registry import register_type

Sample = dict[str, Any]
_Axis = Callable[[np.ndarray], np.ndarray]

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


# -- the kit plugins build their transforms on (Transform, sample_image, start_geometry, ...) --
class Transform:
    """Base giving every transform a ``repr`` of its constructor arguments.

    Subclasses list those arguments in ``_repr_fields`` so that a printed pipeline reads
    like the config that built it.
    """

    _repr_fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)
        return f"{type(self).__name__}({args})"


def sample_image(sample: Sample, who: str) -> np.ndarray:
    img = sample.get("img")
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        got = type(img).__name__ if not isinstance(img, np.ndarray) else f"array of shape {img.shape}"
        raise ValueError(f"{who} needs sample['img'] as an HxW or HxWxC numpy array, got {got}")
    return img


def start_geometry(out: Sample, img: np.ndarray) -> None:
    """Record the shapes a later transform (or the inverse mapping at eval) relies on."""
    hw = (int(img.shape[0]), int(img.shape[1]))
    out.setdefault("ori_shape", hw)
    out.setdefault("img_shape", hw)


def _float_copy(arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.astype(np.result_type(arr.dtype, np.float32), copy=True)


def _map_xy(arr: Any, fx: _Axis, fy: _Axis, key: str) -> np.ndarray:
    out = _float_copy(arr)
    if out.size == 0:
        return out
    if out.ndim == 0 or out.shape[-1] < 2:
        raise ValueError(f"sample[{key!r}] must have shape (..., D>=2) starting with x, y; got {out.shape}")
    out[..., 0] = fx(out[..., 0])
    out[..., 1] = fy(out[..., 1])
    return out


def _map_boxes(arr: Any, fx: _Axis, fy: _Axis) -> np.ndarray:
    """Map both corners, then re-sort them: a flip turns x1 into the right edge."""
    out = _float_copy(arr)
    if out.size == 0:
        return out
    if out.ndim == 0 or out.shape[-1] < 4:
        raise ValueError(f"sample['boxes'] must have shape (N, 4) as x1, y1, x2, y2; got {out.shape}")
    for lo, hi, f in ((0, 2, fx), (1, 3, fy)):
        a, b = f(out[..., lo]), f(out[..., hi])
        out[..., lo], out[..., hi] = np.minimum(a, b), np.maximum(a, b)
    return out


def _map_coords(out: Sample, fx: _Axis, fy: _Axis) -> None:
    """Apply a separable coordinate map (x and y independently) to every annotation."""
    if out.get("boxes") is not None:
        out["boxes"] = _map_boxes(out["boxes"], fx, fy)
    for key in ("points", "keypoints"):
        if out.get(key) is not None:
            out[key] = _map_xy(out[key], fx, fy, key)
    lanes = out.get("lanes")
    if lanes is not None:
        if isinstance(lanes, np.ndarray):
            out["lanes"] = _map_xy(lanes, fx, fy, "lanes")
        else:
            out["lanes"] = [_map_xy(lane, fx, fy, "lanes") for lane in lanes]


def hw_pair(value: Any, name: str) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be two positive integers (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def check_probability(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


# -- geometric --------------------------------------------------------------------------
@register_type()
class Resize(Transform):
    """Resize the image to ``size = (h, w)`` and scale every coordinate with it.

    With ``keep_ratio`` the image is scaled by ``min(h / H, w / W)`` so that it fits
    inside ``(h, w)`` without distortion (no padding here: chain :class:`Pad` for a fixed
    canvas); otherwise it is stretched to exactly ``(h, w)``. Coordinates are scaled by
    the factors actually used after rounding, ``(new_w / W, new_h / H)``, so that boxes
    stay aligned with pixels. ``img_scale`` is an alias of ``size`` (also ``(h, w)``)
    for configs written for the reference toolkit.
    """

    _repr_fields = ("size", "keep_ratio", "interpolation")

    def __init__(
        self,
        size: Sequence[int] | None = None,
        keep_ratio: bool = True,
        interpolation: str = "bilinear",
        img_scale: Sequence[int] | None = None,
    ) -> None:
        if size is not None and img_scale is not None:
            raise ValueError("Resize takes size or its alias img_scale, not both")
        if size is None and img_scale is None:
            raise ValueError("Resize needs size: (h, w)")
        self.size = hw_pair(size if size is not None else img_scale, "Resize size")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"Resize interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
        self.keep_ratio = bool(keep_ratio)
        self.interpolation = interpolation

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "Resize")
        out = dict(sample)
        start_geometry(out, img)
        old_h, old_w = img.shape[:2]
        h, w = self.size
        if self.keep_ratio:
            scale = min(h / old_h, w / old_w)
            # Rounding half up can never exceed (h, w): the limiting side is exact.
            new_h, new_w = max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))
        else:
            new_h, new_w = h, w
        resized = cv2.resize(img, (new_w, new_h), interpolation=_INTERPOLATIONS[self.interpolation])
        if img.ndim == 3 and resized.ndim == 2:  # cv2 drops a single channel axis
            resized = resized[:, :, None]
        sx, sy = new_w / old_w, new_h / old_h
        out["img"] = resized
        _map_coords(out, lambda x: x * sx, lambda y: y * sy)
        prev_sx, prev_sy = out.get("scale_factor", (1.0, 1.0))
        out["scale_factor"] = (float(prev_sx) * sx, float(prev_sy) * sy)
        out["img_shape"] = (new_h, new_w)
        return out


@register_type()
class RandomFlip(Transform):
    """Mirror the image and its annotations with probability ``p``.

    Coordinates follow the continuous convention, ``x -> W - x`` (``y -> H - y`` for a
    vertical flip), which maps pixel ``i``'s cell exactly onto pixel ``W - 1 - i``'s.
    ``flip_pairs`` lists keypoint indices that trade places when mirrored (left and right
    wheel): without the swap a model would learn that the "left" wheel can be on either
    side. ``px`` is the reference toolkit's name for ``p`` with a horizontal flip.

    One number is drawn from ``rng`` on every call, flipped or not, so that changing
    ``p`` does not shift the random stream of the transforms after it.
    """

    _repr_fields = ("p", "direction", "flip_pairs")

    def __init__(
        self,
        p: float | None = None,
        direction: str = "horizontal",
        flip_pairs: Sequence[Sequence[int]] | None = None,
        px: float | None = None,
    ) -> None:
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"RandomFlip direction must be 'horizontal' or 'vertical', got {direction!r}")
        if px is not None:
            if p is not None:
                raise ValueError("RandomFlip takes p or its alias px, not both")
            if direction != "horizontal":
                raise ValueError("RandomFlip px is the horizontal flip probability; use p with direction='vertical'")
            p = px
        self.p = check_probability(0.5 if p is None else p, "RandomFlip p")
        self.direction = direction
        self.flip_pairs = self._check_pairs(flip_pairs)

    @staticmethod
    def _check_pairs(flip_pairs: Sequence[Sequence[int]] | None) -> list[tuple[int, int]] | None:
        if flip_pairs is None:
            return None
        pairs: list[tuple[int, int]] = []
        seen: set[int] = set()
        for pair in flip_pairs:
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2
            ok = ok and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in pair)
            if not ok:
                raise ValueError(f"RandomFlip flip_pairs must be pairs [i, j] of keypoint indices, got {pair!r}")
            i, j = int(pair[0]), int(pair[1])
            if i == j or i in seen or j in seen:
                raise ValueError(f"RandomFlip flip_pairs: index used twice in {flip_pairs!r}")
            seen.update((i, j))
            pairs.append((i, j))
        return pairs

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "RandomFlip")
        out = dict(sample)
        start_geometry(out, img)
        out.setdefault("flipped", False)
        if not rng.random() < self.p:
            return out
        h, w = img.shape[:2]
        if self.direction == "horizontal":
            out["img"] = np.ascontiguousarray(img[:, ::-1])
            _map_coords(out, lambda x: w - x, lambda y: y)
        else:
            out["img"] = np.ascontiguousarray(img[::-1])
            _map_coords(out, lambda x: x, lambda y: h - y)
        if self.flip_pairs and out.get("keypoints") is not None and out["keypoints"].size:
            out["keypoints"] = self._swap(out["keypoints"])
        out["flipped"] = not out["flipped"]
        return out

    def _swap(self, keypoints: np.ndarray) -> np.ndarray:
        num = keypoints.shape[-2] if keypoints.ndim >= 2 else 0
        order = np.arange(num)
        for i, j in self.flip_pairs or ():
            if max(i, j) >= num:
                raise ValueError(f"RandomFlip flip_pairs index {max(i, j)} out of range for {num} keypoints")
            order[i], order[j] = j, i
        return keypoints[..., order, :]


@register_type()
class Pad(Transform):
    """Pad the image on the bottom/right to ``size = (h, w)`` or to a multiple of ``size_divisor``.

    A fixed canvas lets samples of different aspect ratios batch together; a divisor
    keeps every feature-map stride exact. With ``random=True`` the content is placed at a
    random integer offset inside the canvas (an augmentation against the model learning
    where the padding is); coordinates shift by that offset, recorded as ``pad_offset``.
    """

    _repr_fields = ("size", "size_divisor", "pad_val", "random")

    def __init__(
        self,
        size: Sequence[int] | None = None,
        size_divisor: int | None = None,
        pad_val: float = 0,
        random: bool = False,
    ) -> None:
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad needs exactly one of size=(h, w) or size_divisor")
        self.size = hw_pair(size, "Pad size") if size is not None else None
        if size_divisor is not None and (
            not isinstance(size_divisor, (int, np.integer)) or isinstance(size_divisor, bool) or size_divisor <= 0
        ):
            raise ValueError(f"Pad size_divisor must be a positive integer, got {size_divisor!r}")
        self.size_divisor = size_divisor
        if not isinstance(pad_val, (int, float)) or isinstance(pad_val, bool):
            raise ValueError(f"Pad pad_val must be a number, got {pad_val!r}")
        self.pad_val = pad_val
        self.random = bool(random)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "Pad")
        out = dict(sample)
        start_geometry(out, img)
        h, w = img.shape[:2]
        if self.size is not None:
            ph, pw = self.size
            if h > ph or w > pw:
                raise ValueError(f"Pad: image of size (h, w) = {(h, w)} is larger than Pad size {self.size}")
        else:
            d = int(self.size_divisor)  # type: ignore[arg-type]
            ph, pw = math.ceil(h / d) * d, math.ceil(w / d) * d
        dx = dy = 0
        if self.random:
            dx = int(rng.integers(0, pw - w, endpoint=True))
            dy = int(rng.integers(0, ph - h, endpoint=True))
        canvas = np.full((ph, pw) + img.shape[2:], self.pad_val, dtype=img.dtype)
        canvas[dy : dy + h, dx : dx + w] = img
        out["img"] = canvas
        if dx or dy:
            _map_coords(out, lambda x: x + dx, lambda y: y + dy)
        prev_x, prev_y = out.get("pad_offset", (0, 0))
        out["pad_offset"] = (int(prev_x) + dx, int(prev_y) + dy)
        out["pad_shape"] = (ph, pw)
        return out


# -- photometric ------------------------------------------------------------------------
@register_type()
class AddGaussianNoise(Transform):
    """With probability ``prob``, add ``N(mean, sigma)`` noise per pixel (sensor noise).

    The result is rounded and clipped back to uint8, as a real image would be stored.
    """

    _repr_fields = ("prob", "mean", "sigma")

    def __init__(self, prob: float = 1.0, mean: float = 0.0, sigma: float = 2.0) -> None:
        self.prob = check_probability(prob, "AddGaussianNoise prob")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma < 0:
            raise ValueError(f"AddGaussianNoise sigma must be a number >= 0, got {sigma!r}")
        if not isinstance(mean, (int, float)) or isinstance(mean, bool):
            raise ValueError(f"AddGaussianNoise mean must be a number, got {mean!r}")
        self.mean = float(mean)
        self.sigma = float(sigma)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "AddGaussianNoise")
        out = dict(sample)
        if not rng.random() < self.prob:
            return out
        noisy = img.astype(np.float32) + rng.normal(self.mean, self.sigma, img.shape).astype(np.float32)
        out["img"] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return out


# -- to the model -----------------------------------------------------------------------
# BT.601 full range (JFIF), rows Y, U, V over columns R, G, B. Written out rather than
# using cv2.COLOR_BGR2YUV, whose U/V scales (0.492, 0.877) are the analog ones.
_RGB_TO_YUV = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ],
    dtype=np.float64,
)
_YUV_OFFSET = np.array([0.0, 128.0, 128.0])


@register_type()
class ToTensor(Transform):
    """Turn the HWC numpy image into the CHW float32 tensor a model takes.

    ``to_yuv`` converts to YUV444 (BT.601 full range) and quantizes it to 8 bits (round
    half up, clip to 0..255), because that is what the camera/accelerator pipeline feeds
    a deployed model: training on the same integer values avoids a train/deploy gap.
    Only ``img`` is converted; other arrays stay numpy for the collate function to batch.
    """

    _repr_fields = ("to_yuv", "use_yuv_v2")

    def __init__(self, to_yuv: bool = False, use_yuv_v2: bool = False) -> None:
        if use_yuv_v2:
            raise ValueError(
                "ToTensor use_yuv_v2=True is not supported: only BT.601 full range YUV is supported; "
                "set use_yuv_v2: false"
            )
        self.to_yuv = bool(to_yuv)
        self.use_yuv_v2 = False

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "ToTensor")
        out = dict(sample)
        if img.ndim == 2:
            img = img[:, :, None]
        if self.to_yuv:
            img = self._yuv(img, out.get("color_space", "bgr"))
            out["color_space"] = "yuv"
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        out["img"] = torch.from_numpy(chw).to(torch.float32)
        return out

    @staticmethod
    def _yuv(img: np.ndarray, color_space: str) -> np.ndarray:
        if img.shape[2] != 3:
            raise ValueError(f"ToTensor to_yuv needs a 3-channel image, got {img.shape[2]} channel(s)")
        if color_space == "bgr":
            img = img[:, :, ::-1]
        elif color_space != "rgb":
            raise ValueError(f"ToTensor to_yuv converts from 'bgr' or 'rgb', got color_space {color_space!r}")
        yuv = img.astype(np.float64) @ _RGB_TO_YUV.T + _YUV_OFFSET
        return np.clip(np.floor(yuv + 0.5), 0, 255).astype(np.uint8)


@register_type()
class Normalize(Transform):
    """``(img - mean) / std`` on the CHW tensor, with scalars or one value per channel."""

    _repr_fields = ("mean", "std")

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = self._values(mean, "mean")
        self.std = self._values(std, "std")
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize std must be non-zero, got {std!r}")

    @staticmethod
    def _values(value: Any, name: str) -> list[float]:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"Normalize {name} must be a number or a list of numbers, got {value!r}")
        return [float(v) for v in values]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample.get("img")
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise ValueError("Normalize needs sample['img'] as a CHW tensor; put ToTensor before it")
        if not img.is_floating_point():
            img = img.to(torch.float32)
        channels = img.shape[0]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"Normalize {name} has {len(values)} values but the image has {channels} channel(s)")
        mean = torch.tensor(self.mean, dtype=img.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype).view(-1, 1, 1)
        out = dict(sample)
        out["img"] = (img - mean) / std
        return out


@register_type()
class Compose(Transform):
    """Apply transforms in order with one shared ``rng``, so one seed fixes the whole pipeline."""

    def __init__(self, transforms: Sequence[Callable[[Sample, np.random.Generator], Sample]]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"Compose transforms must be callables (built transforms), got {t!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"
