"""The packed MOT17 datasets: frames in sequence order (validation) and clips of a sequence (training).

Both read a pack of :class:`~hat_motr.packer.Mot17Packer` (one sample per frame, every
sequence's frames contiguous and in order). A frame decodes to::

    img            HxWx3 uint8 BGR (``color_space`` "bgr"), moved by the transforms
    boxes, ids     the training targets: (K, 4) float32 x1, y1, x2, y2 pixels and (K,) int64
                   identities of the rows that are pedestrians (class 1) with consider 1
                   (MOTR's targets); moved and cropped with the image
    seq, frame, orig_frame, num_frames, frame_rate, width, height, first_frame, ori_shape
    gt_boxes, gt_ids, gt_consider, gt_class, gt_visibility
                   every ground-truth row as packed, original pixels, never transformed:
                   what :class:`~hat_motr.metrics.MotMetric` scores against

:class:`Mot17FrameDataset` gives frames one by one in pack order (a sequence's frames in
order, ``first_frame`` true on its first), for validation and tracking; batch it with
:class:`MotFrameCollate` and ``shuffle: false``. :class:`Mot17ClipDataset` gives clips
for training; batch them with :class:`MotClipCollate` (a batch is a list of clips).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hat.data.collate import ListCollate
from hat.data.dataset import PackedDataset, Transform
from hat.errors import UserError
from hat.registry import register_type
from hat_motr.mot import PEDESTRIAN
from hat_motr.transforms import ClipTransforms

#: Per-frame keys whose length varies from frame to frame (kept as lists by the collates).
BOX_KEYS = ("boxes", "ids", "gt_boxes", "gt_ids", "gt_consider", "gt_class", "gt_visibility")
#: MOTR's clip-length schedule on MOT17: (from epoch, frames per clip).
DEFAULT_LENGTH_SCHEDULE = ((0, 2), (50, 3), (90, 4), (150, 5))


@dataclass(frozen=True)
class SequenceSpan:
    """Where a sequence's frames are in the pack: samples ``start .. start + count - 1``."""

    name: str
    start: int
    count: int


@register_type("Mot17FrameDataset")
class Mot17FrameDataset(PackedDataset):
    """Frames of a MOT17 pack in sequence order, decoded as the module docstring says, then transformed."""

    def __init__(self, data_path: str, transforms: list[Transform] | None = None, seed: int | None = None) -> None:
        super().__init__(data_path, transforms, seed)
        self._spans: list[SequenceSpan] | None = None
        self._span_of: np.ndarray | None = None

    # -- the sequence index ------------------------------------------------------------------
    @property
    def sequences(self) -> list[SequenceSpan]:
        """The pack's sequences in order, from its meta (or, for a pack missing frames, a scan of it)."""
        if self._spans is None:
            self._spans = self._read_spans()
            self._span_of = np.repeat(np.arange(len(self._spans)), [s.count for s in self._spans])
        return self._spans

    def _read_spans(self) -> list[SequenceSpan]:
        spans, start = [], 0
        for entry in self.meta.get("sequences") or []:
            spans.append(SequenceSpan(str(entry["name"]), start, int(entry["num_frames"])))
            start += int(entry["num_frames"])
        if start == len(self) and all(s.count for s in spans):
            return [s for s in spans if s.count]
        # Frames were skipped (--skip-bad) or the meta is not this packer's: read the sequence of every sample.
        spans, previous = [], None
        for i in range(len(self)):
            name = self.reader[i].get("seq")
            if name is None:
                raise UserError(
                    f"sample {i} of pack {self.data_path} has no 'seq': this is not a MOT17 pack",
                    where=self.data_path,
                    hint="pack MOT17 with `hat pack mot17 --src <raw> --dst <dir> --split <split>`",
                )
            if name != previous:
                spans.append(SequenceSpan(name, i, 0))
                previous = name
            spans[-1] = SequenceSpan(name, spans[-1].start, spans[-1].count + 1)
        return spans

    def span(self, index: int) -> SequenceSpan:
        """The sequence sample ``index`` belongs to."""
        spans = self.sequences
        assert self._span_of is not None
        return spans[int(self._span_of[index])]

    # -- samples -----------------------------------------------------------------------------
    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = self.decode_image(sample["image"], "bgr")
        gt_boxes = np.asarray(sample["gt_boxes"], dtype=np.float64).reshape(-1, 4)
        gt_ids = np.asarray(sample["gt_ids"], dtype=np.int64).reshape(-1)
        consider = np.asarray(sample["gt_consider"], dtype=np.int64).reshape(-1)
        classes = np.asarray(sample["gt_class"], dtype=np.int64).reshape(-1)
        target = (consider == 1) & (classes == PEDESTRIAN)
        return {
            "img": img,
            "color_space": "bgr",
            "seq": str(sample["seq"]),
            "frame": int(sample["frame"]),
            "orig_frame": int(sample["orig_frame"]),
            "num_frames": int(sample["num_frames"]),
            "frame_rate": int(sample["frame_rate"]),
            "width": int(sample["width"]),
            "height": int(sample["height"]),
            "ori_shape": (int(img.shape[0]), int(img.shape[1])),
            "boxes": gt_boxes[target].astype(np.float32),
            "ids": gt_ids[target],
            "gt_boxes": gt_boxes,
            "gt_ids": gt_ids,
            "gt_consider": consider,
            "gt_class": classes,
            "gt_visibility": np.asarray(sample["gt_visibility"], dtype=np.float64).reshape(-1),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item = super().__getitem__(index)
        span = self.span(index % len(self))
        if item["seq"] != span.name:
            raise UserError(
                f"sample {index} of pack {self.data_path} is of sequence {item['seq']!r}, but the pack's meta "
                f"places {span.name!r} there",
                where=self.data_path,
                hint="re-pack the split (`hat pack mot17 ... --overwrite`)",
            )
        item["first_frame"] = index % len(self) == span.start
        return item


def normalized_targets(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``x1, y1, x2, y2`` pixels -> ``cx, cy, w, h`` in [0, 1] of a ``height x width`` image (clipped to it)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, x2 = b[:, 0].clip(0, width), b[:, 2].clip(0, width)
    y1, y2 = b[:, 1].clip(0, height), b[:, 3].clip(0, height)
    out = np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], axis=1)
    return out.astype(np.float32)


def _image_hw(img: Any) -> tuple[int, int]:
    """(h, w) of a CHW tensor (after ToTensor) or an HxW[xC] array (before)."""
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    return int(img.shape[0]), int(img.shape[1])


@register_type("Mot17ClipDataset")
class Mot17ClipDataset(Mot17FrameDataset):
    """Training clips: a few frames of one sequence at a random interval, augmented identically.

    Item ``i`` is the clip starting at sample ``i`` (so an epoch starts a clip at every
    frame, as MOTR's dataset does). Its length follows ``length_schedule``, a list of
    ``[from_epoch, length]`` (MOTR's ``sampler_steps`` / ``sampler_lengths``: 2 frames,
    then 3 from epoch 50, 4 from 90, 5 from 150); :meth:`set_epoch` (which core's loop
    calls before every epoch) selects it. The interval between frames is drawn in ``1 ..
    max_interval``, then lowered until the clip fits in its sequence; a clip that would
    run past the sequence's end starts earlier; a sequence shorter than the length gives
    every frame it has. ``transforms`` are per-frame transforms (core's and
    :mod:`hat_motr.transforms`), run through :class:`~hat_motr.transforms.ClipTransforms`
    so that every frame is augmented alike. With ``seed`` the clip and its augmentation
    are a function of ``(seed, epoch, i)``, as for :class:`~hat.data.dataset.PackedDataset`.

    An item::

        img            (L, 3, H, W) float32 tensor (after ToTensor; an (L, H, W, 3) array before)
        target_boxes   L float32 tensors (N_t, 4): cx, cy, w, h in [0, 1] of the transformed image
        target_ids     L int64 tensors (N_t,): the identities (the same person has the same id in every frame)
        seq, frames, orig_frames, interval, clip_length, img_shape (H, W), flipped
    """

    def __init__(
        self,
        data_path: str,
        transforms: list[Transform] | None = None,
        seed: int | None = None,
        length_schedule: Sequence[Sequence[int]] = DEFAULT_LENGTH_SCHEDULE,
        max_interval: int = 10,
    ) -> None:
        super().__init__(data_path, None, seed)
        self.clip_transforms = ClipTransforms(list(transforms or []))
        self.length_schedule = self._check_schedule(length_schedule)
        if not isinstance(max_interval, int) or isinstance(max_interval, bool) or max_interval < 1:
            raise ValueError(f"max_interval must be a positive integer, got {max_interval!r}")
        self.max_interval = max_interval

    @staticmethod
    def _check_schedule(schedule: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        pairs: list[tuple[int, int]] = []
        for entry in schedule or ():
            ok = isinstance(entry, (list, tuple)) and len(entry) == 2
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
            if not ok or entry[0] < 0 or entry[1] < 1:
                raise ValueError(f"length_schedule entries are [from_epoch >= 0, length >= 1], got {entry!r}")
            if pairs and entry[0] <= pairs[-1][0]:
                raise ValueError(f"length_schedule epochs must increase, got {list(schedule)!r}")
            pairs.append((int(entry[0]), int(entry[1])))
        if not pairs:
            raise ValueError("length_schedule needs at least one [from_epoch, length] entry")
        return pairs

    @property
    def clip_length(self) -> int:
        """Frames per clip at the current epoch (the schedule's last entry started by then)."""
        length = self.length_schedule[0][1]
        for start, value in self.length_schedule:
            if self.epoch >= start:
                length = value
        return length

    def clip_indices(self, index: int, rng: np.random.Generator) -> tuple[list[int], int]:
        """The pack indices of the clip starting at sample ``index`` and its interval (one draw from ``rng``)."""
        span = self.span(index)
        length = min(self.clip_length, span.count)
        interval = int(rng.integers(1, self.max_interval, endpoint=True))
        if length > 1:
            interval = max(1, min(interval, (span.count - 1) // (length - 1)))
        start = min(index - span.start, span.count - 1 - interval * (length - 1))
        return [span.start + start + k * interval for k in range(length)], interval

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index) % len(self)
        rng = self.rng(index)
        indices, interval = self.clip_indices(index, rng)
        frames = [Mot17FrameDataset.__getitem__(self, i) for i in indices]
        frames = self.clip_transforms(frames, rng)
        h, w = _image_hw(frames[0]["img"])
        imgs = [f["img"] for f in frames]
        return {
            "img": torch.stack(imgs) if isinstance(imgs[0], torch.Tensor) else np.stack(imgs),
            "target_boxes": [torch.from_numpy(normalized_targets(f["boxes"], h, w)) for f in frames],
            "target_ids": [torch.as_tensor(np.asarray(f["ids"], dtype=np.int64)) for f in frames],
            "seq": frames[0]["seq"],
            "frames": [f["frame"] for f in frames],
            "orig_frames": [f["orig_frame"] for f in frames],
            "interval": interval,
            "clip_length": len(frames),
            "img_shape": (h, w),
            "flipped": bool(frames[0].get("flipped", False)),
        }


@register_type("MotFrameCollate")
class MotFrameCollate(ListCollate):
    """Batches frames of :class:`Mot17FrameDataset`: the per-box keys stay per-frame lists, ``seq`` a list of str."""

    def __init__(self, list_keys: Sequence[str] = BOX_KEYS, keep_keys: Sequence[str] = ("seq",)) -> None:
        super().__init__(list_keys, keep_keys)


@register_type("MotClipCollate")
class MotClipCollate:
    """Batches clips of :class:`Mot17ClipDataset`: every key becomes a list with one entry per clip.

    Clips of one batch may differ in size and length (each has its own scale), so
    nothing is stacked: ``batch["img"][b]`` is clip ``b``'s ``(L, 3, H, W)`` tensor.
    """

    def __call__(self, clips: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        if not clips:
            raise ValueError("MotClipCollate got an empty batch")
        return {key: [clip[key] for clip in clips] for key in clips[0]}

    def __repr__(self) -> str:
        return "MotClipCollate()"
