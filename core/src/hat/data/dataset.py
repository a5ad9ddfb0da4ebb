"""The torch Dataset over a pack, with reproducible per-sample randomness.

Transforms are pure functions ``t(sample, rng) -> sample``: all their randomness comes
from the ``rng`` argument. The dataset derives that rng from ``(seed, epoch, index)``
alone, so a fixed seed gives the same augmented epoch whatever the number of DataLoader
workers or the order they pick samples in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from hat.data.pack import PackReader
from hat.errors import UserError
from hat.registry import register_type

Transform = Callable[[dict, np.random.Generator], dict]

_IMREAD_FLAGS = {
    "bgr": cv2.IMREAD_COLOR,
    "rgb": cv2.IMREAD_COLOR,
    "gray": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
}


def decode_image(data: bytes, color: str = "bgr", *, where: str | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into an HxW[xC] uint8 array.

    ``color`` is "bgr" (OpenCV's order), "rgb", "gray" or "unchanged". ``where`` names
    the sample in the error raised for bytes that are not a decodable image.
    """
    if color not in _IMREAD_FLAGS:
        raise ValueError(f"color must be one of {', '.join(_IMREAD_FLAGS)}, got {color!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        suffix = f" ({where})" if where else ""
        raise TypeError(f"decode_image expects encoded image bytes, got {type(data).__name__}{suffix}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAGS[color]) if len(data) else None
    if image is None:
        raise UserError(
            f"corrupt image: {len(data)} bytes that OpenCV cannot decode",
            where=where,
            hint="re-pack the dataset (`hat pack ... --overwrite`); check that the source image opens",
        )
    if color == "rgb" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


@register_type("PackedDataset")
class PackedDataset(torch.utils.data.Dataset):
    """Samples of one pack, decoded by :meth:`decode` and then transformed.

    Randomness: with ``seed`` set, sample ``i`` of epoch ``e`` is transformed with
    ``numpy.random.default_rng([seed, e, i])`` — identical across runs and worker counts.
    Call :meth:`set_epoch` before each epoch to vary augmentation (with
    ``persistent_workers=True`` the workers keep the epoch they started with). With
    ``seed=None`` the rng is seeded from ``(torch.initial_seed(), i)``: torch gives every
    DataLoader worker a fresh seed each epoch, so augmentation varies but is not
    reproducible.
    """

    def __init__(self, data_path: str, transforms: list[Transform] | None = None, seed: int | None = None) -> None:
        self.data_path = str(data_path)
        self.reader = PackReader(data_path)
        self.transforms = list(transforms or [])
        self.seed = seed
        self.epoch = 0
        self._index: int | None = None  # the sample being read, for error messages

    @property
    def meta(self) -> dict[str, Any]:
        return self.reader.meta

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose randomness the next items use."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator that sample ``index`` is transformed with (see the class docstring)."""
        if self.seed is None:
            return np.random.default_rng([torch.initial_seed(), index])
        # SeedSequence needs non-negative entropy: fold a negative seed into 64 bits.
        return np.random.default_rng([self.seed % 2**64, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        self._index = index
        stored = self.reader[index]
        try:
            sample = self.decode(stored)
            rng = self.rng(index % len(self) if index < 0 else index)
            for transform in self.transforms:
                sample = transform(sample, rng)
        except KeyError as exc:
            # A bare KeyError('image') names neither the pack nor the sample; this does.
            key = exc.args[0] if exc.args else "?"
            raise UserError(
                f"sample {index} of pack {self.data_path} has no key {key!r}, which "
                f"{type(self).__name__} needs (it has: {', '.join(map(str, stored)) or 'nothing'})",
                where=str(self.data_path),
                hint="the pack was made for another dataset or by an older packer: re-pack it with "
                "`hat pack <dataset> ... --overwrite`, or point data_path at the right pack",
            ) from None
        return sample

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Turn a stored sample into model inputs before transforms; subclasses override (default: as stored)."""
        return sample

    def decode_image(self, data: bytes, color: str = "bgr") -> np.ndarray:
        """:func:`decode_image` whose errors name the sample being read and the pack."""
        where = f"sample {self._index} of pack {self.data_path}"
        return decode_image(data, color, where=where)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data_path!r}, {len(self)} samples, {len(self.transforms)} transforms)"
