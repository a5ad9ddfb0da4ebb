"""Pack CarFusion: every annotated car of every frame becomes one cropped sample.

Raw layout read (one folder per sequence, as CarFusion ships it)::

    <src>/<split>/car_<seq>/images_jpg/<vid>_<frame>.jpg
    <src>/<split>/car_<seq>/gt/<vid>_<frame>.txt    x,y,kp_id,instance_id,visibility  (one keypoint a line)
    <src>/<split>/car_<seq>/bb/<vid>_<frame>.txt    x1,y1,x2,y2,instance_id           (one car a line)

``kp_id`` is one of CarFusion's 14 slots (1-based); the 12 kept are mapped by
:data:`hat_keypoint.keypoints.SLOT_TO_INDEX`. ``visibility`` is 0 (not labelled), 1
(occluded) or 2/3 (visible); 1..3 are all usable labels. Fields may be separated by
commas and/or whitespace; blank lines are ignored.

Box lines: the real dataset's box-file format could not be checked here, so two forms
are accepted. With five values the fifth is the instance id the box belongs to; with
four, the box belongs to the instance whose id is the box's 1-based line number (the
order in which CarFusion numbers its instances). Coordinates are pixels, continuous
(pixel ``i`` covers ``[i, i + 1)``).

Each box is clamped to the image, grown by ``margin`` times its size on every side
(clamped again) and cropped; keypoints move into the crop's frame. A keypoint is valid
when it is labelled (visibility 1..3), inside the image and inside the crop. Boxes
narrower or lower than ``min_box_size`` pixels, and boxes without a single valid
keypoint, are skipped; the pack's meta counts them. Keypoints of an instance without a
box are not used. Anything malformed — a wrong field count, a non-number, ``kp_id``
outside 1..14, visibility outside 0..3, an empty box, a keypoint or box given twice —
is a :class:`~hat.errors.BadSourceRecord` naming the file and 1-based line; a missing
``gt`` file or an unreadable image names the image.

A frame with keypoints but no ``bb`` file is not a bad record: each instance's box is
derived from its labelled keypoints inside the image, as CarFusion's own COCO converter
(``carfusion2coco.py``) builds its boxes, padded by :data:`KEYPOINT_BOX_PAD` (see there
why); the pack's meta counts such frames (``num_frames_boxes_from_keypoints``). Images are read by core's
one reader (:func:`hat.inferer.read_image`, as ``hat infer`` reads them), so a JPEG cut
short is a bad record too, not a crop stored half grey.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from hat.data.pack import PackReader
from hat.data.packer import Packer
from hat.errors import BadSourceRecord, UserError
from hat.inferer import ImageFileError, image_file_problem, read_image
from hat_keypoint.keypoints import FLIP_PAIRS, NAMES, NUM_KEYPOINTS, NUM_SLOTS, SLOT_TO_INDEX

_CROP_JPEG_QUALITY = 95
#: A box derived from keypoints (a frame without a ``bb`` file) is their bounding box grown
#: by this fraction of its width/height on every side, before ``margin`` is applied as to
#: any box. Keypoints lie on the car (wheels, lights, roof corners), not on its outline:
#: bumpers, mirrors and the wheels' lower halves stick out past them, so their bounding box
#: is too tight to be the car's. CarFusion's converter grows it by a tenth in front
#: (``x - w/10``) and, computing the far edge from that shifted start (``+ w + w/4``), by
#: 15 % behind; the tenth is taken on both sides here, so the car stays centred in its box.
KEYPOINT_BOX_PAD = 0.1
_FIELDS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class _Keypoint:
    x: float
    y: float
    slot: int
    visibility: int


@dataclass(frozen=True)
class _Crop:
    """One box's crop: where it is in the frame and its keypoints in crop pixels."""

    instance: int
    box: tuple[float, float, float, float]  # as annotated
    origin: tuple[int, int]  # crop's top-left corner in the frame
    end: tuple[int, int]  # crop's bottom-right corner (exclusive)
    ldmk: np.ndarray  # (12, 3) float32 x, y, valid
    status: str  # "ok", "small" or "no_keypoints"


class CarfusionPacker(Packer):
    """CarFusion frames -> one sample per car: ``img`` (JPEG crop), ``ldmk`` (12, 3), names, box."""

    dataset: ClassVar[str] = "carfusion"
    layout_hint: ClassVar[str | None] = (
        "<src>/<split>/car_<seq>/images_jpg/<vid>_<frame>.jpg with gt/<vid>_<frame>.txt "
        "and bb/<vid>_<frame>.txt beside images_jpg"
    )

    def __init__(self, src: Path, split: str, *, margin: float = 0.15, min_box_size: int = 16) -> None:
        super().__init__(src, split)
        if not math.isfinite(margin) or margin < 0:
            raise UserError(f"carfusion margin must be a number >= 0, got {margin!r}")
        if min_box_size < 1:
            raise UserError(f"carfusion min_box_size must be >= 1 pixel, got {min_box_size!r}")
        self.margin = float(margin)
        self.min_box_size = int(min_box_size)

    def records(self) -> Sequence[Path]:
        """Every frame of the split, sorted, so that a pack's order never depends on the file system."""
        frames = sorted((self.src / self.split).glob("car_*/images_jpg/*.jpg"))
        if not frames:
            splits = self.available_splits()
            if splits and self.split not in splits:
                raise UserError(
                    f"the CarFusion dataset at {self.src} has no split {self.split!r}; its splits: {', '.join(splits)}",
                    where=str(self.src),
                    hint=f"pass --split {' or --split '.join(splits)}",
                )
            raise UserError(
                f"no CarFusion frames for split {self.split!r} under {self.src}",
                where=str(self.src / self.split),
                hint=f"expected layout: {self.layout_hint}",
            )
        return frames

    def available_splits(self) -> list[str]:
        """The folders of ``src`` that hold CarFusion frames, sorted: the splits ``--split`` can name.

        Listed when ``--split`` names none of them, so that a typo (or a dataset that
        calls its splits something else) says what there is instead of only the layout.
        """
        if not self.src.is_dir():
            return []
        return sorted(
            d.name
            for d in self.src.iterdir()
            if d.is_dir() and next(iter(d.glob("car_*/images_jpg/*.jpg")), None) is not None
        )

    def pack_record(self, frame: Path) -> Iterator[dict[str, Any]]:
        img = _read_frame(frame)
        height, width = img.shape[:2]
        seq = frame.parent.parent.name
        for crop in self._crops(frame, width, height):
            if crop.status != "ok":
                continue
            (x0, y0), (x1, y1) = crop.origin, crop.end
            ok, jpg = cv2.imencode(".jpg", img[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, _CROP_JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV failed to encode a crop of {frame}")
            yield {
                "img": jpg.tobytes(),
                "ldmk": crop.ldmk,
                "img_name": f"{seq}/{frame.stem}_{crop.instance}",
                "src": frame.relative_to(self.src).as_posix(),
                "box": [float(v) for v in crop.box],
            }

    def extra_meta(self) -> dict[str, Any]:
        """The keypoint definition and how many boxes were skipped, and why.

        Workers cannot report counts back, so they are recounted here, in the main
        process, from the (small) annotation files and the images' JPEG headers — a
        second pass over text only, no image is decoded. Frames that are bad records
        (counted by the driver as skipped records) are left out: bad annotations, and
        images that :func:`hat.inferer.image_file_problem` finds truncated, the check
        :func:`hat.inferer.read_image` makes before decoding.
        """
        counts = {"ok": 0, "small": 0, "no_keypoints": 0}
        derived = 0  # frames whose boxes came from their keypoints (no bb file)
        for frame in self.records():
            try:
                if image_file_problem(frame) is not None:
                    continue
                width, height = _image_size(frame)
                for crop in self._crops(frame, width, height):
                    counts[crop.status] += 1
            except BadSourceRecord:
                continue
            derived += not _box_path(frame).is_file()
        return {
            "keypoint_names": list(NAMES),
            "flip_pairs": [list(p) for p in FLIP_PAIRS],
            "margin": self.margin,
            "min_box_size": self.min_box_size,
            "num_boxes": sum(counts.values()),
            "num_boxes_skipped_small": counts["small"],
            "num_boxes_skipped_no_keypoints": counts["no_keypoints"],
            "num_frames_boxes_from_keypoints": derived,
            "keypoint_box_pad": KEYPOINT_BOX_PAD,
        }

    def finish(self, dst: Path, reader: PackReader) -> None:
        """Write ``<dst>/simple_anno/keypoints_<split>.json``: ``{img_name: [[x, y, valid] x 12]}``."""
        anno: dict[str, list[list[float]]] = {}
        for i in range(len(reader)):
            sample = reader[i]
            anno[sample["img_name"]] = [[round(float(x), 3), round(float(y), 3), int(v)] for x, y, v in sample["ldmk"]]
        path = Path(dst) / "simple_anno" / f"keypoints_{self.split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(anno, indent=None, separators=(",", ":")))
        os.replace(tmp, path)  # a reader never sees half a file

    # -- one frame ----------------------------------------------------------------------
    def _crops(self, frame: Path, width: int, height: int) -> list[_Crop]:
        gt_path = frame.parent.parent / "gt" / f"{frame.stem}.txt"
        if not gt_path.is_file():
            raise BadSourceRecord(f"the keypoint file {gt_path} is missing", file=str(frame))
        keypoints = _read_keypoints(gt_path)
        bb_path = _box_path(frame)
        boxes = _read_boxes(bb_path) if bb_path.is_file() else _boxes_from_keypoints(keypoints, width, height)
        return [self._crop(inst, box, keypoints.get(inst, []), width, height) for inst, box in boxes]

    def _crop(self, instance: int, box: tuple[float, ...], kps: list[_Keypoint], width: int, height: int) -> _Crop:
        x1, y1 = max(0.0, box[0]), max(0.0, box[1])
        x2, y2 = min(float(width), box[2]), min(float(height), box[3])
        bw, bh = x2 - x1, y2 - y1
        ldmk = np.zeros((NUM_KEYPOINTS, 3), np.float32)  # unlabelled slots stay (0, 0, invalid)
        if bw < self.min_box_size or bh < self.min_box_size:
            return _Crop(instance, box, (0, 0), (0, 0), ldmk, "small")  # type: ignore[arg-type]
        cx0 = max(0, math.floor(x1 - self.margin * bw))
        cy0 = max(0, math.floor(y1 - self.margin * bh))
        cx1 = min(width, math.ceil(x2 + self.margin * bw))
        cy1 = min(height, math.ceil(y2 + self.margin * bh))
        for kp in kps:
            index = SLOT_TO_INDEX[kp.slot]
            if index is None:
                continue
            valid = kp.visibility > 0 and 0 <= kp.x < width and 0 <= kp.y < height
            valid = valid and cx0 <= kp.x < cx1 and cy0 <= kp.y < cy1
            ldmk[index] = (kp.x - cx0, kp.y - cy0, 1.0 if valid else 0.0)
        status = "ok" if ldmk[:, 2].any() else "no_keypoints"
        return _Crop(instance, box, (cx0, cy0), (cx1, cy1), ldmk, status)  # type: ignore[arg-type]


# -- annotation files ------------------------------------------------------------------
def _box_path(frame: Path) -> Path:
    return frame.parent.parent / "bb" / f"{frame.stem}.txt"


def _boxes_from_keypoints(
    keypoints: dict[int, list[_Keypoint]], width: int, height: int
) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(instance id, box) per instance, by id, for a frame without a box file.

    As CarFusion's converter: the bounding box of the instance's labelled keypoints
    (visibility 1..3, all 14 slots) inside the image, grown by :data:`KEYPOINT_BOX_PAD`
    on every side and clamped to the image. An instance with no such keypoint gets no
    box; one with a single point gets an empty box, which ``min_box_size`` skips.
    """
    boxes: list[tuple[int, tuple[float, float, float, float]]] = []
    for instance in sorted(keypoints):
        usable = [k for k in keypoints[instance] if k.visibility > 0 and 0 <= k.x < width and 0 <= k.y < height]
        if not usable:
            continue
        xs, ys = [k.x for k in usable], [k.y for k in usable]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        pad_x, pad_y = KEYPOINT_BOX_PAD * (x2 - x1), KEYPOINT_BOX_PAD * (y2 - y1)
        x1, y1 = max(0.0, x1 - pad_x), max(0.0, y1 - pad_y)
        boxes.append((instance, (x1, y1, min(float(width), x2 + pad_x), min(float(height), y2 + pad_y))))
    return boxes


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BadSourceRecord(f"cannot read the file: {err}", file=str(path)) from err
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, _FIELDS.split(line.strip())


def _number(text: str, what: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadSourceRecord(f"{what} {text!r} is not a number", file=str(path), line=line) from None
    if not math.isfinite(value):
        raise BadSourceRecord(f"{what} {text!r} is not finite", file=str(path), line=line)
    return value


def _integer(text: str, what: str, path: Path, line: int) -> int:
    value = _number(text, what, path, line)
    if not value.is_integer():
        raise BadSourceRecord(f"{what} {text!r} is not an integer", file=str(path), line=line)
    return int(value)


def _read_keypoints(path: Path) -> dict[int, list[_Keypoint]]:
    """Keypoints by instance id, validated line by line."""
    by_instance: dict[int, list[_Keypoint]] = {}
    seen: dict[tuple[int, int], int] = {}
    for line, fields in _lines(path):
        if len(fields) != 5:
            raise BadSourceRecord(
                f"expected 5 fields x,y,kp_id,instance_id,visibility, got {len(fields)}", file=str(path), line=line
            )
        x = _number(fields[0], "x", path, line)
        y = _number(fields[1], "y", path, line)
        slot = _integer(fields[2], "kp_id", path, line)
        instance = _integer(fields[3], "instance_id", path, line)
        visibility = _integer(fields[4], "visibility", path, line)
        if not 1 <= slot <= NUM_SLOTS:
            raise BadSourceRecord(f"kp_id {slot} is outside 1..{NUM_SLOTS}", file=str(path), line=line)
        if not 0 <= visibility <= 3:
            raise BadSourceRecord(f"visibility {visibility} is outside 0..3", file=str(path), line=line)
        first = seen.setdefault((instance, slot), line)
        if first != line:
            raise BadSourceRecord(
                f"kp_id {slot} of instance {instance} is given twice (first on line {first})", file=str(path), line=line
            )
        by_instance.setdefault(instance, []).append(_Keypoint(x, y, slot, visibility))
    return by_instance


def _read_boxes(path: Path) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(instance id, box) per line; a 4-value line's instance is its 1-based line number."""
    boxes: list[tuple[int, tuple[float, float, float, float]]] = []
    seen: dict[int, int] = {}
    for line, fields in _lines(path):
        if len(fields) not in (4, 5):
            raise BadSourceRecord(
                f"expected 4 or 5 fields x1,y1,x2,y2[,instance_id], got {len(fields)}", file=str(path), line=line
            )
        x1, y1, x2, y2 = (
            _number(v, name, path, line) for v, name in zip(fields[:4], ("x1", "y1", "x2", "y2"), strict=True)
        )
        if x2 <= x1 or y2 <= y1:
            raise BadSourceRecord(f"empty box: x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g}", file=str(path), line=line)
        instance = _integer(fields[4], "instance_id", path, line) if len(fields) == 5 else line
        first = seen.setdefault(instance, line)
        if first != line:
            raise BadSourceRecord(
                f"instance {instance} has a second box (first on line {first})", file=str(path), line=line
            )
        boxes.append((instance, (x1, y1, x2, y2)))
    return boxes


# -- image size without decoding ---------------------------------------------------------
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header; decodes the image only when that fails."""
    size = _jpeg_size(path)
    if size is not None:
        return size
    img = _read_frame(path)
    return img.shape[1], img.shape[0]


def _read_frame(path: Path) -> np.ndarray:
    """The frame, read by core's one image reader; a truncated or unreadable image is a bad record."""
    try:
        return read_image(path)
    except ImageFileError as err:
        raise BadSourceRecord(err.reason, file=str(path)) from None


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the start-of-frame, which holds the size."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return None
            while True:
                byte = f.read(1)
                while byte and byte != b"\xff":
                    byte = f.read(1)
                while byte == b"\xff":
                    byte = f.read(1)
                if not byte:
                    return None
                marker = byte[0]
                if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                    continue
                head = f.read(2)
                if len(head) < 2:
                    return None
                length = int.from_bytes(head, "big")
                if marker in _SOF_MARKERS:
                    data = f.read(5)
                    if len(data) < 5:
                        return None
                    height, width = int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big")
                    return (width, height) if width and height else None
                if marker == 0xD9 or length < 2:
                    return None
                f.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None
