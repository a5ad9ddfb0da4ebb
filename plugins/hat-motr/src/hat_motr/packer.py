"""Pack MOT17: one sample per frame of one half of every training sequence, with its ground-truth rows.

Raw layout read (MOT17 as it ships)::

    <src>/train/MOT17-<nn>-<DPM|FRCNN|SDP>/seqinfo.ini   [Sequence] name, imDir, frameRate, seqLength,
                                                         imWidth, imHeight, imExt
    <src>/train/MOT17-<nn>-<det>/img1/000001.jpg ...
    <src>/train/MOT17-<nn>-<det>/gt/gt.txt               frame,id,left,top,width,height,consider,class,visibility
    <src>/train/MOT17-<nn>-<det>/det/det.txt             (public detections; not packed: MOTR detects itself)

``<src>`` may also be the ``train`` folder itself. The three detector copies of a sequence
share their images and ground truth, so one copy per sequence is packed: ``FRCNN`` by
default (the one ByteTrack, FairMOT and MOTR use), ``hat pack mot17 --detector SDP`` for
another. Sequences keep their folder name (``MOT17-02-FRCNN``): that is what
MOTChallenge result files are named after.

``--split train`` packs the first half of every sequence, ``--split val`` the second
(ByteTrack's rule, :func:`hat_motr.mot.split_frames`), ``--split full`` every frame.
Frames are renumbered from 1 within the split. Besides ``<dst>/<split>_lmdb`` the
packer writes the split's ground truth in MOTChallenge layout,
``<dst>/<split>_gt/<seq>/gt/gt.txt`` (the rows of the split's frames, frames renumbered,
every other field as in the source file) and ``<dst>/<split>_gt/<seq>/seqinfo.ini``
(``seqLength`` the split's length), for :class:`~hat_motr.metrics.MotMetric`'s
cross-checks and for evaluators outside HAT (py-motmetrics, TrackEval) run unchanged.
The folder is written beside and renamed into place, so a half-written one never shows.

A packed sample is one frame::

    image        the JPEG bytes as read (never re-encoded)
    seq          the sequence folder name, e.g. "MOT17-02-FRCNN"
    frame        the frame number in the split, from 1
    orig_frame   the frame number in the sequence (the image's name)
    num_frames   frames of the sequence in this split
    frame_rate, width, height
    gt_boxes     (N, 4) float64 x1, y1, x2, y2 in pixels (continuous: x1 = left - 1)
    gt_ids, gt_consider, gt_class (N,) int64; gt_visibility (N,) float64

holding every ground-truth row of the frame (every class, consider 0 or 1): the training
dataset keeps the pedestrians to be considered, the metric needs the rest.

A sequence without ``seqinfo.ini`` or with a malformed ``gt.txt`` row is one bad record
(naming the file and line): it stops the pack, or with ``--skip-bad`` leaves that
sequence out. A missing or undecodable image is a bad record of its frame.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hat.data.pack import PackReader
from hat.data.packer import Packer
from hat.errors import BadSourceRecord, UserError
from hat.inferer import ImageFileError, read_image
from hat_motr.mot import (
    DEFAULT_DETECTOR,
    DETECTORS,
    SPLITS,
    GroundTruth,
    SeqInfo,
    read_gt,
    read_seqinfo,
    replace_dir,
    split_frames,
    write_sequence_gt,
)


@dataclass(frozen=True)
class FrameRecord:
    """One frame to pack: where its image is and its ground-truth rows (small arrays, picklable)."""

    seq: str
    image: str
    frame: int
    orig_frame: int
    num_frames: int
    frame_rate: int
    width: int
    height: int
    gt_boxes: np.ndarray
    gt_ids: np.ndarray
    gt_consider: np.ndarray
    gt_class: np.ndarray
    gt_visibility: np.ndarray


@dataclass(frozen=True)
class BadSequence:
    """A sequence that cannot be read (no seqinfo.ini, a malformed gt row): packing it raises BadSourceRecord."""

    seq: str
    reason: str
    file: str
    line: int | None


@dataclass(frozen=True)
class _Sequence:
    folder: Path
    info: SeqInfo
    gt: GroundTruth


class Mot17Packer(Packer):
    """MOT17 training sequences -> one sample per frame of the split (see the module docstring)."""

    dataset: ClassVar[str] = "mot17"
    layout_hint: ClassVar[str | None] = (
        "<src>/train/MOT17-<nn>-<DPM|FRCNN|SDP>/ with seqinfo.ini, img1/000001.jpg ... and gt/gt.txt"
    )

    def __init__(self, src: Path, split: str, *, detector: str = DEFAULT_DETECTOR) -> None:
        super().__init__(src, split)
        if split not in SPLITS:
            raise UserError(
                f"MOT17 has no split {split!r}: the test sequences have no ground truth, so the training "
                "sequences are split in half (ByteTrack's rule)",
                hint=f"pass --split {' or --split '.join(SPLITS)}",
            )
        if detector not in DETECTORS:
            raise UserError(
                f"unknown MOT17 detector copy {detector!r}",
                hint=f"pass --detector {' or --detector '.join(DETECTORS)} (default {DEFAULT_DETECTOR})",
            )
        self.detector = detector
        self._read: list[_Sequence | BadSequence] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_read": None}  # workers get their records, not every sequence's rows

    # -- the source ------------------------------------------------------------------------
    def train_root(self) -> Path:
        """``<src>/train``, or ``<src>`` itself when it holds the sequence folders."""
        root = self.src / "train"
        if not root.is_dir() and any(self.src.glob("MOT17-*")):
            return self.src
        return root

    def sequence_folders(self) -> list[Path]:
        """The ``MOT17-<nn>-<detector>`` folders, sorted; a usage error when there are none of this detector."""
        root = self.train_root()
        if not root.is_dir():
            raise UserError(
                f"{self.src} is not a MOT17 dataset: it has no train/ folder",
                where=str(self.src),
                hint=f"pass the folder that holds train/ (MOT17 as unpacked); expected layout: {self.layout_hint}",
            )
        folders = sorted(p for p in root.glob(f"MOT17-*-{self.detector}") if p.is_dir())
        if not folders:
            others = sorted({p.name.rsplit("-", 1)[-1] for p in root.glob("MOT17-*-*") if p.is_dir()})
            raise UserError(
                f"no MOT17-*-{self.detector} sequence under {root}"
                + (f"; it has the detector copies {', '.join(others)}" if others else ""),
                where=str(root),
                hint=f"pass --detector {' or --detector '.join(others)}"
                if others
                else f"expected layout: {self.layout_hint}",
            )
        return folders

    def sequences(self) -> list[_Sequence | BadSequence]:
        """Every sequence folder read (seqinfo.ini and gt.txt), or why it cannot be; cached."""
        if self._read is None:
            read: list[_Sequence | BadSequence] = []
            for folder in self.sequence_folders():
                try:
                    info = read_seqinfo(folder / "seqinfo.ini")
                    gt = read_gt(folder / "gt" / "gt.txt", info.seq_length)
                except BadSourceRecord as err:
                    read.append(BadSequence(folder.name, err.reason, err.file, err.line))
                    continue
                read.append(_Sequence(folder, info, gt))
            self._read = read
        return self._read

    def records(self) -> Sequence[FrameRecord | BadSequence]:
        """Every frame of the split, sequence by sequence in name order, frames in order."""
        records: list[FrameRecord | BadSequence] = []
        for seq in self.sequences():
            if isinstance(seq, BadSequence):
                records.append(seq)
                continue
            frames = split_frames(seq.info.seq_length, self.split)
            rows_of: dict[int, list[int]] = {}
            for row, frame in enumerate(seq.gt.frame):
                rows_of.setdefault(int(frame), []).append(row)
            for k, orig in enumerate(frames, start=1):
                rows = np.asarray(rows_of.get(orig, []), dtype=np.int64)
                records.append(
                    FrameRecord(
                        seq=seq.folder.name,
                        image=str(seq.info.image_path(seq.folder, orig)),
                        frame=k,
                        orig_frame=orig,
                        num_frames=len(frames),
                        frame_rate=seq.info.frame_rate,
                        width=seq.info.width,
                        height=seq.info.height,
                        gt_boxes=seq.gt.boxes[rows].reshape(-1, 4),
                        gt_ids=seq.gt.ids[rows],
                        gt_consider=seq.gt.consider[rows],
                        gt_class=seq.gt.classes[rows],
                        gt_visibility=seq.gt.visibility[rows],
                    )
                )
        return records

    def pack_record(self, record: FrameRecord | BadSequence) -> Iterator[dict[str, Any]]:
        if isinstance(record, BadSequence):
            raise BadSourceRecord(f"sequence {record.seq}: {record.reason}", file=record.file, line=record.line)
        image = Path(record.image)
        if not image.is_file():
            raise BadSourceRecord(
                f"frame {record.orig_frame} of {record.seq} has no image (seqLength says it exists)", file=str(image)
            )
        try:
            read_image(image)  # refuses a truncated or undecodable file before it is stored
        except ImageFileError as err:
            raise BadSourceRecord(err.reason, file=str(image)) from None
        yield {
            "image": image.read_bytes(),  # stored as shipped: no second JPEG generation
            "seq": record.seq,
            "frame": record.frame,
            "orig_frame": record.orig_frame,
            "num_frames": record.num_frames,
            "frame_rate": record.frame_rate,
            "width": record.width,
            "height": record.height,
            "gt_boxes": record.gt_boxes,
            "gt_ids": record.gt_ids,
            "gt_consider": record.gt_consider,
            "gt_class": record.gt_class,
            "gt_visibility": record.gt_visibility,
        }

    # -- around the pack -------------------------------------------------------------------
    def describe_source(self) -> str:
        return f"{self.src} (detector copy {self.detector})"

    def extra_meta(self) -> dict[str, Any]:
        """The sequences packed (in sample order) and the split rule, for the datasets' index."""
        sequences = []
        for seq in self.sequences():
            if isinstance(seq, BadSequence):
                continue
            frames = split_frames(seq.info.seq_length, self.split)
            sequences.append(
                {
                    "name": seq.folder.name,
                    "num_frames": len(frames),
                    "first_orig_frame": frames[0] if len(frames) else None,
                    "seq_length": seq.info.seq_length,
                    "frame_rate": seq.info.frame_rate,
                    "width": seq.info.width,
                    "height": seq.info.height,
                }
            )
        return {
            "detector": self.detector,
            "split_rule": "ByteTrack half split: n frames, half = n // 2; train = frames 1..half+1, "
            "val = frames half+2..n (1-based), renumbered from 1; full = 1..n",
            "sequences": sequences,
            "gt_folder": gt_folder_name(self.split),
        }

    def finish(self, dst: Path, reader: PackReader) -> None:
        """Write ``<dst>/<split>_gt/`` (MOTChallenge layout) beside the pack, atomically."""
        write_split_gt(self, Path(dst))


def gt_folder_name(split: str) -> str:
    """``<split>_gt``: the folder beside ``<split>_lmdb`` holding the split's ground truth."""
    return f"{split}_gt"


def write_split_gt(packer: Mot17Packer, dst: Path) -> Path:
    """The split's ground truth of every readable sequence under ``<dst>/<split>_gt/``.

    Written into a hidden folder beside, then renamed over the old one. Should that fail,
    an old folder is removed too: it described an earlier pack, not this one.
    """
    target = Path(dst) / gt_folder_name(packer.split)
    tmp = Path(dst) / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for seq in packer.sequences():
            if isinstance(seq, BadSequence):
                continue
            frames = split_frames(seq.info.seq_length, packer.split)
            offset = frames[0] - 1 if len(frames) else 0
            keep = np.isin(seq.gt.frame, np.asarray(frames, dtype=np.int64))
            lines = [
                f"{int(frame) - offset},{text}"
                for frame, text, kept in zip(seq.gt.frame, seq.gt.text, keep, strict=True)
                if kept
            ]
            info = SeqInfo(
                name=seq.folder.name,
                im_dir=seq.info.im_dir,
                frame_rate=seq.info.frame_rate,
                seq_length=len(frames),
                width=seq.info.width,
                height=seq.info.height,
                im_ext=seq.info.im_ext,
            )
            write_sequence_gt(tmp, info, lines)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target
