"""MOTChallenge files: ``seqinfo.ini``, ``gt/gt.txt``, tracker results, and the half split of MOT17.

One reader and one writer for the formats, shared by the packer (which reads the raw
dataset and writes the validation ground truth), the metric (which writes the tracker's
results and hands them to py-motmetrics) and the tests.

Formats (MOT16/MOT17, Milan et al. 2016), comma separated, pixel coordinates 1-based
(the top-left pixel is ``(1, 1)``)::

    gt/gt.txt    frame,id,left,top,width,height,consider,class,visibility
    det/det.txt  frame,-1,left,top,width,height,score,-1,-1,-1
    results      frame,id,left,top,width,height,score,-1,-1,-1

In memory boxes are ``x1, y1, x2, y2`` in HAT's continuous pixel coordinates (pixel ``i``
covers ``[i, i + 1)``): ``x1 = left - 1``, ``x2 = x1 + width``, the shift py-motmetrics'
reader applies itself (``X -= 1``), so a box read here and one read by ``mm.io.loadtxt``
are the same numbers.

The half split
--------------
MOT17's test sequences have no public ground truth, so the community (CenterTrack,
FairMOT, ByteTrack, MOTR) trains on the first half of every training sequence and
validates on the second. The rule is ByteTrack's ``tools/convert_mot17_to_coco.py``
(CenterTrack's ``convert_mot_to_coco.py``): with ``n`` frames and ``half = n // 2``,
0-based frame ``i`` is in ``train`` for ``0 <= i <= half`` and in ``val`` for
``half + 1 <= i <= n - 1`` (both ends inclusive), so no frame is dropped and none is
shared; in 1-based MOT frame numbers, ``train`` is ``1 .. half + 1`` and ``val`` is
``half + 2 .. n``. Frames are renumbered from 1 within the split (``val`` frame ``k`` is
original frame ``k + half + 1``), as ByteTrack's ``gt_val_half.txt`` does. ``full`` is
every frame (for a final training run). See :func:`split_frames`.
"""

from __future__ import annotations

import configparser
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hat.errors import BadSourceRecord

#: The three detector copies of every MOT17 sequence (same images and ground truth).
DETECTORS = ("DPM", "FRCNN", "SDP")
#: The copy packed by default: the one ByteTrack, FairMOT and MOTR take.
DEFAULT_DETECTOR = "FRCNN"
#: The splits a MOT17 training sequence is cut into (see the module docstring).
SPLITS = ("train", "val", "full")
#: MOT16/17 class ids (``class`` column of ``gt.txt``).
CLASS_NAMES = {
    1: "pedestrian",
    2: "person_on_vehicle",
    3: "car",
    4: "bicycle",
    5: "motorbike",
    6: "non_motorized_vehicle",
    7: "static_person",
    8: "distractor",
    9: "occluder",
    10: "occluder_on_ground",
    11: "occluder_full",
    12: "reflection",
    13: "crowd",
}
PEDESTRIAN = 1
_SEQINFO_KEYS = ("name", "imDir", "frameRate", "seqLength", "imWidth", "imHeight", "imExt")
_GT_FIELDS = ("frame", "id", "left", "top", "width", "height", "consider", "class", "visibility")


def split_frames(seq_length: int, split: str) -> range:
    """The original 1-based frame numbers of ``split`` in a sequence of ``seq_length`` frames.

    ``train``: ``1 .. n // 2 + 1``; ``val``: ``n // 2 + 2 .. n``; ``full``: ``1 .. n``
    (ByteTrack's half split; see the module docstring). Frame ``k`` of the split (from 1)
    is ``split_frames(...)[k - 1]``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if seq_length < 0:
        raise ValueError(f"seq_length must be >= 0, got {seq_length}")
    half = seq_length // 2
    if split == "train":
        return range(1, min(half + 1, seq_length) + 1)
    if split == "val":
        return range(half + 2, seq_length + 1)
    return range(1, seq_length + 1)


# -- seqinfo.ini -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SeqInfo:
    """The ``[Sequence]`` section of a ``seqinfo.ini``."""

    name: str
    im_dir: str
    frame_rate: int
    seq_length: int
    width: int
    height: int
    im_ext: str

    def to_ini(self) -> str:
        """The file's text, in the key order MOTChallenge writes."""
        return (
            "[Sequence]\n"
            f"name={self.name}\n"
            f"imDir={self.im_dir}\n"
            f"frameRate={self.frame_rate}\n"
            f"seqLength={self.seq_length}\n"
            f"imWidth={self.width}\n"
            f"imHeight={self.height}\n"
            f"imExt={self.im_ext}\n"
        )

    def image_path(self, seq_dir: Path, frame: int) -> Path:
        """``<seq_dir>/<imDir>/<frame:06d><imExt>``: MOTChallenge's image naming."""
        return Path(seq_dir) / self.im_dir / f"{frame:06d}{self.im_ext}"


def read_seqinfo(path: Path) -> SeqInfo:
    """Parse a ``seqinfo.ini``; a missing file, section or key, or a bad value, is a BadSourceRecord naming it."""
    path = Path(path)
    if not path.is_file():
        raise BadSourceRecord(
            f"the sequence has no seqinfo.ini (MOTChallenge's [Sequence] section: {', '.join(_SEQINFO_KEYS)})",
            file=str(path),
        )
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep MOTChallenge's camelCase keys
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        raise BadSourceRecord(f"cannot read seqinfo.ini: {err}", file=str(path)) from None
    if not parser.has_section("Sequence"):
        raise BadSourceRecord("seqinfo.ini has no [Sequence] section", file=str(path))
    section = parser["Sequence"]
    missing = [k for k in _SEQINFO_KEYS if k not in section]
    if missing:
        raise BadSourceRecord(f"seqinfo.ini lacks {', '.join(missing)} in [Sequence]", file=str(path))

    def positive(key: str) -> int:
        raw = section[key].strip()
        try:
            value = int(raw)
        except ValueError:
            raise BadSourceRecord(f"seqinfo.ini {key}={raw!r} is not an integer", file=str(path)) from None
        if value <= 0:
            raise BadSourceRecord(f"seqinfo.ini {key}={value} must be positive", file=str(path))
        return value

    return SeqInfo(
        name=section["name"].strip(),
        im_dir=section["imDir"].strip(),
        frame_rate=positive("frameRate"),
        seq_length=positive("seqLength"),
        width=positive("imWidth"),
        height=positive("imHeight"),
        im_ext=section["imExt"].strip(),
    )


# -- gt.txt ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroundTruth:
    """The rows of one ``gt.txt`` as arrays (one entry a row, in file order).

    ``boxes`` are ``x1, y1, x2, y2`` in continuous pixels (``x1 = left - 1``); ``text``
    keeps each row's fields after the frame number exactly as written (``id,left,...``),
    so that the validation ground truth is written back without a rounding.
    """

    frame: np.ndarray  # (N,) int64, 1-based original frame
    ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64
    consider: np.ndarray  # (N,) int64, 1 = evaluated, 0 = ignored
    classes: np.ndarray  # (N,) int64
    visibility: np.ndarray  # (N,) float64
    text: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, mask: np.ndarray) -> GroundTruth:
        idx = np.flatnonzero(mask)
        return GroundTruth(
            self.frame[idx],
            self.ids[idx],
            self.boxes[idx],
            self.consider[idx],
            self.classes[idx],
            self.visibility[idx],
            tuple(self.text[i] for i in idx),
        )


def _number(field: str, name: str, path: Path, line: int, *, integer: bool) -> float:
    try:
        value = float(field)
    except ValueError:
        raise BadSourceRecord(f"{name} {field.strip()!r} is not a number", file=str(path), line=line) from None
    if not math.isfinite(value):
        raise BadSourceRecord(f"{name} {field.strip()!r} is not a finite number", file=str(path), line=line)
    if integer and value != int(value):
        raise BadSourceRecord(f"{name} {field.strip()!r} is not an integer", file=str(path), line=line)
    return value


def read_gt(path: Path, seq_length: int | None = None) -> GroundTruth:
    """Parse a MOT16/17 ``gt.txt``; a malformed row is a BadSourceRecord naming the file and line.

    A row is ``frame,id,left,top,width,height,consider,class,visibility`` (fields past
    the ninth, as in MOT15's ``-1`` padding, are ignored). Checked: every field a finite
    number, frame/id/consider/class integers, ``frame >= 1`` (and ``<= seq_length``
    when given), ``consider`` 0 or 1, a known class, a positive width and height.
    """
    path = Path(path)
    if not path.is_file():
        raise BadSourceRecord("the sequence has no gt/gt.txt", file=str(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadSourceRecord(f"cannot read the ground truth: {err}", file=str(path)) from None
    rows: list[list[float]] = []
    texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) < len(_GT_FIELDS):
            raise BadSourceRecord(
                f"a gt row is {','.join(_GT_FIELDS)} ({len(_GT_FIELDS)} fields), got {len(fields)}: {line.strip()!r}",
                file=str(path),
                line=number,
            )
        values = [
            _number(f, name, path, number, integer=name in ("frame", "id", "consider", "class"))
            for f, name in zip(fields[: len(_GT_FIELDS)], _GT_FIELDS, strict=True)
        ]
        frame, _, _, _, width, height, consider, cls, _ = values
        if frame < 1 or (seq_length is not None and frame > seq_length):
            bound = f" (the sequence has {seq_length} frames)" if seq_length is not None else ""
            raise BadSourceRecord(f"frame {int(frame)} is out of range{bound}", file=str(path), line=number)
        if consider not in (0, 1):
            raise BadSourceRecord(f"consider flag must be 0 or 1, got {consider:g}", file=str(path), line=number)
        if int(cls) not in CLASS_NAMES:
            raise BadSourceRecord(f"unknown class {int(cls)} (MOT17 classes are 1-13)", file=str(path), line=number)
        if width <= 0 or height <= 0:
            raise BadSourceRecord(f"box size {width:g}x{height:g} is not positive", file=str(path), line=number)
        rows.append(values)
        texts.append(",".join(f.strip() for f in fields[1 : len(_GT_FIELDS)]))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, len(_GT_FIELDS))
    left, top = arr[:, 2] - 1.0, arr[:, 3] - 1.0
    return GroundTruth(
        frame=arr[:, 0].astype(np.int64),
        ids=arr[:, 1].astype(np.int64),
        boxes=np.stack([left, top, left + arr[:, 4], top + arr[:, 5]], axis=1),
        consider=arr[:, 6].astype(np.int64),
        classes=arr[:, 7].astype(np.int64),
        visibility=arr[:, 8],
        text=tuple(texts),
    )


# -- writing -----------------------------------------------------------------------------------
def _num(value: float) -> str:
    """A coordinate as MOT files write it: an integer without decimals, else the shortest exact repr."""
    value = float(value)
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def format_gt_rows(
    frames: Sequence[int],
    ids: Sequence[int],
    boxes: np.ndarray,
    consider: Sequence[int],
    classes: Sequence[int],
    visibility: Sequence[float],
) -> list[str]:
    """``gt.txt`` lines (without newlines) of rows given as arrays, ``boxes`` as ``x1, y1, x2, y2``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lines = []
    for f, i, (x1, y1, x2, y2), c, k, v in zip(frames, ids, boxes, consider, classes, visibility, strict=True):
        lines.append(
            f"{int(f)},{int(i)},{_num(x1 + 1)},{_num(y1 + 1)},{_num(x2 - x1)},{_num(y2 - y1)},"
            f"{int(c)},{int(k)},{_num(v)}"
        )
    return lines


def format_track_rows(frame: int, ids: Sequence[int], boxes: np.ndarray, scores: Sequence[float] | None) -> list[str]:
    """MOTChallenge result lines ``frame,id,left,top,width,height,score,-1,-1,-1`` of one frame.

    ``boxes`` are ``x1, y1, x2, y2`` in continuous pixels of the original image; written
    with two decimals, as MOTR's and ByteTrack's result writers do.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    lines = []
    for i, (x1, y1, x2, y2), s in zip(ids, boxes, scores, strict=True):
        lines.append(f"{int(frame)},{int(i)},{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{s:.4f},-1,-1,-1")
    return lines


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_sequence_gt(root: Path, info: SeqInfo, lines: Iterable[str]) -> Path:
    """``<root>/<name>/gt/gt.txt`` and ``<root>/<name>/seqinfo.ini``: py-motmetrics' and TrackEval's layout."""
    folder = Path(root) / info.name
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    (folder / "seqinfo.ini").write_text(info.to_ini())
    (folder / "gt" / "gt.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


def replace_dir(new: Path, path: Path) -> None:
    """Put the finished folder ``new`` at ``path``, removing what was there (two renames, the old one kept
    aside until the new one is in place, so ``path`` is never a half-written folder)."""
    new, path = Path(new), Path(path)
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    if path.exists():
        os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        if old.exists():
            os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
