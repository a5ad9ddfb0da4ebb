"""The lane recipe's augmentations, on numpy/OpenCV, with lanes moved exactly and ``img2orig`` kept.

Written here rather than taken from an augmentation library so that the plugin brings no
dependency beyond core's, and so that lanes go through the very matrix the image does.
Conventions are core's (:mod:`hat.data.transforms`): ``transform(sample, rng) ->
sample`` is pure (a new dict, input arrays never written), all randomness comes from
``rng``, and coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``).

Geometric transforms
--------------------
Each is an affine map ``M`` (3x3, current pixels -> new pixels). It is applied to the
image (slicing and ``cv2.resize`` where those are exact, else ``cv2.warpAffine`` with
black borders, the matrix shifted by half a pixel into OpenCV's pixel-centre
convention), to every lane of ``lanes``, and composed into ``img2orig`` as ``img2orig @
M^-1``, so that ``img2orig`` always maps the current image's pixels back to the
original frame's. Lanes are then clipped to the new image: points outside ``[0, w] x
[0, h]`` are dropped (the bounds included, so CULane's points on the bottom edge, row
590, survive a crop ending there), and a lane left with fewer than two points is
dropped. Lane ``i`` of the output is lane ``i`` of the input while it survives (a flip
keeps the list order). ``lanes_orig`` is never touched.

Each random transform draws one number for its probability on every call, applied or
not, so that changing ``p`` does not shift the random stream of the transforms after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from hat.data.transforms import Transform, check_probability, hw_pair, sample_image
from hat.registry import register_type

Sample = dict[str, Any]


def _number_pair(value: Any, name: str, *, symmetric: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` from a pair, or ``(-v, v)`` from one number when ``symmetric``."""
    if symmetric and isinstance(value, (int, float)) and not isinstance(value, bool):
        return -abs(float(value)), abs(float(value))
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or value[0] > value[1]:
        raise ValueError(
            f"{name} must be {'a number or ' if symmetric else ''}a pair (lo, hi) with lo <= hi, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _uint8_color(sample: Sample, who: str) -> np.ndarray:
    img = sample_image(sample, who)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{who} needs a uint8 HxWx3 image, got {img.dtype} of shape {img.shape}")
    return img


# -- geometry ---------------------------------------------------------------------------
def translation(dx: float, dy: float) -> np.ndarray:
    """The 3x3 matrix of ``(x, y) -> (x + dx, y + dy)``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def map_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points through a 3x3 affine matrix (float64 arithmetic, float32 out)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = pts @ matrix[:2, :2].T + matrix[:2, 2]
    return out.astype(np.float32)


def clip_lanes(lanes: Sequence[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    """Drop points outside ``[0, width] x [0, height]``, then lanes with fewer than two points."""
    kept = []
    for lane in lanes:
        lane = np.asarray(lane, dtype=np.float32).reshape(-1, 2)
        x, y = lane[:, 0], lane[:, 1]
        lane = lane[(x >= 0) & (x <= width) & (y >= 0) & (y <= height)]
        if len(lane) >= 2:
            kept.append(lane)
    return kept


def _geometry(sample: Sample, img: np.ndarray, matrix: np.ndarray) -> Sample:
    """The sample with ``img`` replaced, lanes moved and clipped, ``img2orig`` composed with ``matrix^-1``."""
    out = dict(sample)
    out["img"] = img
    h, w = img.shape[:2]
    if sample.get("lanes") is not None:
        out["lanes"] = clip_lanes([map_points(lane, matrix) for lane in sample["lanes"]], w, h)
    img2orig = np.asarray(sample.get("img2orig", np.eye(3)), dtype=np.float64)
    out["img2orig"] = (img2orig @ np.linalg.inv(matrix)).astype(np.float32)
    return out


def _warp(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` through ``matrix`` (continuous coordinates) onto an ``(h, w)`` canvas, black outside."""
    h, w = size
    to_cv = translation(-0.5, -0.5) @ matrix @ translation(0.5, 0.5)  # OpenCV samples pixel centres at integers
    return cv2.warpAffine(
        img, to_cv[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


class _Random(Transform):
    """A transform applied with probability ``p``; :meth:`apply` is the transform itself (used by :class:`OneOf`)."""

    p: float

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not rng.random() < self.p:
            return dict(sample)
        return self.apply(sample, rng)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        raise NotImplementedError


@register_type()
class LaneFixedCrop(Transform):
    """Cut the ``(x, y, w, h)`` window out of the frame (default: CULane's rows 270-590, the road).

    The sky carries no lanes; cropping it keeps the network's input on the road. A window
    reaching past the image is filled with black.
    """

    _repr_fields = ("size",)

    def __init__(self, size: Sequence[int] = (0, 270, 1640, 320)) -> None:
        ok = isinstance(size, (list, tuple)) and len(size) == 4
        ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        if not ok or size[2] <= 0 or size[3] <= 0:
            raise ValueError(f"LaneFixedCrop size must be four integers (x, y, w, h) with w, h > 0, got {size!r}")
        self.size = tuple(int(v) for v in size)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "LaneFixedCrop")
        x, y, w, h = self.size
        height, width = img.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):  # inside the image: a plain slice
            crop = img[y0:y1, x0:x1].copy()
        else:
            crop = np.zeros((h, w) + img.shape[2:], img.dtype)
            if x1 > x0 and y1 > y0:
                crop[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
        return _geometry(sample, crop, translation(-x, -y))


@register_type()
class LaneResize(Transform):
    """Stretch the image to ``size = (h, w)`` (default the recipe's 320x800); lanes scale with it."""

    _repr_fields = ("size",)

    def __init__(self, size: Sequence[int] = (320, 800)) -> None:
        self.size = hw_pair(tuple(size) if isinstance(size, list) else size, "LaneResize size")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "LaneResize")
        h, w = self.size
        old_h, old_w = img.shape[:2]
        resized = img if (old_h, old_w) == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return _geometry(sample, resized, np.diag([w / old_w, h / old_h, 1.0]))


@register_type()
class LaneRandomFlip(_Random):
    """Mirror the image left-right with probability ``p``; lanes mirror as ``x -> W - x``."""

    _repr_fields = ("p",)

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability(p, "LaneRandomFlip p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "LaneRandomFlip")
        w = img.shape[1]
        matrix = np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return _geometry(sample, np.ascontiguousarray(img[:, ::-1]), matrix)


@register_type()
class LaneShiftScaleRotate(_Random):
    """With probability ``p``, shift (fractions of the size), scale and rotate (degrees) about the centre.

    The canvas keeps its size; what moves out is lost and what comes in is black, as
    albumentations' transform of the same name does with a constant border.
    """

    _repr_fields = ("shift_limit", "scale_limit", "rotate_limit", "p")

    def __init__(
        self,
        shift_limit: float | Sequence[float] = 0.1,
        scale_limit: Sequence[float] = (0.8, 1.2),
        rotate_limit: float | Sequence[float] = 10.0,
        p: float = 0.5,
    ) -> None:
        self.shift_limit = _number_pair(shift_limit, "LaneShiftScaleRotate shift_limit", symmetric=True)
        self.scale_limit = _number_pair(scale_limit, "LaneShiftScaleRotate scale_limit")
        if self.scale_limit[0] <= 0:
            raise ValueError(f"LaneShiftScaleRotate scale_limit must be positive, got {scale_limit!r}")
        self.rotate_limit = _number_pair(rotate_limit, "LaneShiftScaleRotate rotate_limit", symmetric=True)
        self.p = check_probability(p, "LaneShiftScaleRotate p")

    def matrix(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """The random map of one call: about the centre, rotate and scale, then shift."""
        angle = math.radians(rng.uniform(*self.rotate_limit))
        scale = rng.uniform(*self.scale_limit)
        dx, dy = rng.uniform(*self.shift_limit) * width, rng.uniform(*self.shift_limit) * height
        c, s = scale * math.cos(angle), scale * math.sin(angle)
        rotate = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        cx, cy = width / 2, height / 2
        return translation(cx + dx, cy + dy) @ rotate @ translation(-cx, -cy)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "LaneShiftScaleRotate")
        h, w = img.shape[:2]
        matrix = self.matrix(rng, w, h)
        return _geometry(sample, _warp(img, matrix, (h, w)), matrix)


@register_type()
class LaneRandomResizedCrop(_Random):
    """With probability ``p``, crop a window of ``scale`` times the area and aspect ``ratio`` (w/h), resize back.

    ``size = (h, w)`` is the output (default: the input's size). The ratio is drawn
    log-uniformly. A window larger than the image (``scale`` above 1, or a ratio far
    from the image's) is placed so that it covers the image and the rest is black: a
    zoom out, which the recipe's range 0.8-1.2 asks for.
    """

    _repr_fields = ("scale", "ratio", "size", "p")

    def __init__(
        self,
        scale: Sequence[float] = (0.8, 1.2),
        ratio: Sequence[float] = (1.7, 2.7),
        size: Sequence[int] | None = None,
        p: float = 0.5,
    ) -> None:
        self.scale = _number_pair(scale, "LaneRandomResizedCrop scale")
        self.ratio = _number_pair(ratio, "LaneRandomResizedCrop ratio")
        if self.scale[0] <= 0 or self.ratio[0] <= 0:
            raise ValueError(f"LaneRandomResizedCrop scale and ratio must be positive, got {scale!r}, {ratio!r}")
        self.size = None if size is None else hw_pair(tuple(size), "LaneRandomResizedCrop size")
        self.p = check_probability(p, "LaneRandomResizedCrop p")

    def matrix(self, rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The random window of one call, as the map from the image onto the output, and the output size."""
        out_h, out_w = self.size or (height, width)
        area = rng.uniform(*self.scale) * width * height
        ratio = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        x0 = rng.uniform(min(0.0, width - cw), max(0.0, width - cw))
        y0 = rng.uniform(min(0.0, height - ch), max(0.0, height - ch))
        return np.diag([out_w / cw, out_h / ch, 1.0]) @ translation(-x0, -y0), (out_h, out_w)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "LaneRandomResizedCrop")
        h, w = img.shape[:2]
        matrix, size = self.matrix(rng, w, h)
        return _geometry(sample, _warp(img, matrix, size), matrix)


# -- photometric ------------------------------------------------------------------------
def _with_image(sample: Sample, img: np.ndarray) -> Sample:
    out = dict(sample)
    out["img"] = img
    return out


@register_type()
class RGBShift(_Random):
    """With probability ``p``, add a random offset to each of R, G, B (limits symmetric or ``(lo, hi)``)."""

    _repr_fields = ("r_shift_limit", "g_shift_limit", "b_shift_limit", "p")

    def __init__(
        self,
        r_shift_limit: float | Sequence[float] = 10,
        g_shift_limit: float | Sequence[float] = 10,
        b_shift_limit: float | Sequence[float] = 10,
        p: float = 0.5,
    ) -> None:
        self.r_shift_limit = _number_pair(r_shift_limit, "RGBShift r_shift_limit", symmetric=True)
        self.g_shift_limit = _number_pair(g_shift_limit, "RGBShift g_shift_limit", symmetric=True)
        self.b_shift_limit = _number_pair(b_shift_limit, "RGBShift b_shift_limit", symmetric=True)
        self.p = check_probability(p, "RGBShift p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = _uint8_color(sample, "RGBShift")
        r, g, b = (rng.uniform(*lim) for lim in (self.r_shift_limit, self.g_shift_limit, self.b_shift_limit))
        shift = [r, g, b] if sample.get("color_space", "bgr") == "rgb" else [b, g, r]
        out = img.astype(np.float32) + np.array(shift, np.float32)
        return _with_image(sample, np.clip(np.rint(out), 0, 255).astype(np.uint8))


@register_type()
class HueSaturationValue(_Random):
    """With probability ``p``, shift hue (OpenCV's 0..179 scale, wrapping), saturation and value."""

    _repr_fields = ("hue_shift_limit", "sat_shift_limit", "val_shift_limit", "p")

    def __init__(
        self,
        hue_shift_limit: float | Sequence[float] = 10,
        sat_shift_limit: float | Sequence[float] = 15,
        val_shift_limit: float | Sequence[float] = 10,
        p: float = 0.5,
    ) -> None:
        self.hue_shift_limit = _number_pair(hue_shift_limit, "HueSaturationValue hue_shift_limit", symmetric=True)
        self.sat_shift_limit = _number_pair(sat_shift_limit, "HueSaturationValue sat_shift_limit", symmetric=True)
        self.val_shift_limit = _number_pair(val_shift_limit, "HueSaturationValue val_shift_limit", symmetric=True)
        self.p = check_probability(p, "HueSaturationValue p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = _uint8_color(sample, "HueSaturationValue")
        rgb = sample.get("color_space", "bgr") == "rgb"
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV if rgb else cv2.COLOR_BGR2HSV)
        dh, ds, dv = (rng.uniform(*lim) for lim in (self.hue_shift_limit, self.sat_shift_limit, self.val_shift_limit))
        x = np.arange(256, dtype=np.float64)
        luts = [
            np.mod(np.rint(x + dh), 180).astype(np.uint8),
            np.clip(np.rint(x + ds), 0, 255).astype(np.uint8),
            np.clip(np.rint(x + dv), 0, 255).astype(np.uint8),
        ]
        hsv = cv2.merge([cv2.LUT(channel, lut) for channel, lut in zip(cv2.split(hsv), luts, strict=True)])
        return _with_image(sample, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB if rgb else cv2.COLOR_HSV2BGR))


@register_type()
class JPEGCompress(_Random):
    """With probability ``p``, re-encode as JPEG at a quality in ``[quality_lower, quality_upper]``."""

    _repr_fields = ("quality_lower", "quality_upper", "p")

    def __init__(self, quality_lower: int = 85, quality_upper: int = 95, p: float = 0.5) -> None:
        if not (isinstance(quality_lower, int) and isinstance(quality_upper, int)) or not (
            0 <= quality_lower <= quality_upper <= 100
        ):
            raise ValueError(
                "JPEGCompress qualities must be integers 0 <= lower <= upper <= 100, "
                f"got {quality_lower!r}, {quality_upper!r}"
            )
        self.quality_lower, self.quality_upper = quality_lower, quality_upper
        self.p = check_probability(p, "JPEGCompress p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "JPEGCompress")
        quality = int(rng.integers(self.quality_lower, self.quality_upper, endpoint=True))
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV failed to encode an image as JPEG")
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        return _with_image(sample, decoded.reshape(img.shape))


def _ksize(value: Any, who: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ValueError(f"{who} ksize must be an odd positive integer, got {value!r}")
    return value


@register_type()
class MeanBlur(_Random):
    """With probability ``p``, a ``ksize`` x ``ksize`` box blur (camera defocus)."""

    _repr_fields = ("ksize", "p")

    def __init__(self, ksize: int = 3, p: float = 0.5) -> None:
        self.ksize = _ksize(ksize, "MeanBlur")
        self.p = check_probability(p, "MeanBlur p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "MeanBlur")
        return _with_image(sample, cv2.blur(img, (self.ksize, self.ksize)).reshape(img.shape))


@register_type()
class MedianBlur(_Random):
    """With probability ``p``, a ``ksize`` median filter (removes salt-and-pepper noise, keeps edges)."""

    _repr_fields = ("ksize", "p")

    def __init__(self, ksize: int = 3, p: float = 0.5) -> None:
        self.ksize = _ksize(ksize, "MedianBlur")
        self.p = check_probability(p, "MedianBlur p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "MedianBlur")
        return _with_image(sample, cv2.medianBlur(img, self.ksize).reshape(img.shape))


@register_type()
class RandomBrightnessContrast(_Random):
    """With probability ``p``, ``img * (1 + c) + 255 * b`` with ``b``, ``c`` drawn within their limits."""

    _repr_fields = ("brightness_limit", "contrast_limit", "p")

    def __init__(
        self,
        brightness_limit: float | Sequence[float] = 0.2,
        contrast_limit: float | Sequence[float] = 0.2,
        p: float = 0.5,
    ) -> None:
        self.brightness_limit = _number_pair(
            brightness_limit, "RandomBrightnessContrast brightness_limit", symmetric=True
        )
        self.contrast_limit = _number_pair(contrast_limit, "RandomBrightnessContrast contrast_limit", symmetric=True)
        self.p = check_probability(p, "RandomBrightnessContrast p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample_image(sample, "RandomBrightnessContrast")
        alpha = 1.0 + rng.uniform(*self.contrast_limit)
        beta = 255.0 * rng.uniform(*self.brightness_limit)
        out = img.astype(np.float32) * alpha + beta
        return _with_image(sample, np.clip(np.rint(out), 0, 255).astype(img.dtype))


@register_type()
class OneOf(_Random):
    """With probability ``p``, apply one of ``transforms``, chosen with weights their own ``p`` values.

    The chosen transform is applied for sure (its ``p`` only weighs the choice), as in
    albumentations; members must be the random transforms of this module.
    """

    _repr_fields = ("transforms", "p")

    def __init__(self, transforms: Sequence[Callable[[Sample, np.random.Generator], Sample]], p: float = 0.5) -> None:
        self.transforms = list(transforms)
        if not self.transforms or not all(isinstance(t, _Random) for t in self.transforms):
            raise ValueError(
                f"OneOf transforms must be a non-empty list of this module's random transforms, got {transforms!r}"
            )
        weights = np.array([t.p for t in self.transforms], np.float64)
        self._weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
        self.p = check_probability(p, "OneOf p")

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        chosen = self.transforms[int(rng.choice(len(self.transforms), p=self._weights))]
        return chosen.apply(sample, rng)
