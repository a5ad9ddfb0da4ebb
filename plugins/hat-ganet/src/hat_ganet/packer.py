"""Pack CULane: one sample per listed frame, its lanes in original pixels and its test categories.

Raw layout read (CULane as it ships)::

    <src>/driver_*/<video>.MP4/<frame>.jpg         1640x590 frames
    <src>/driver_*/<video>.MP4/<frame>.lines.txt   one lane a line: x1 y1 x2 y2 ... (floats, bottom-up)
    <src>/list/<split>.txt                         the split's frames, one path a line (train, val, test)
    <src>/list/test_split/test<k>_<category>.txt   the test frames of each of the nine categories

A list line's first field is the frame's path, with or without a leading slash (CULane's
``train.txt``, ``val.txt`` and ``test.txt`` have one, its ``test_split`` lists do not);
later fields (``train_gt.txt``'s segmentation label and lane flags) are ignored, so
``list/<split>_gt.txt`` serves when ``list/<split>.txt`` is absent. A frame's
``categories`` are the test_split lists naming it — one for a CULane test frame, none for
a train or val frame, which no category list names.

Lanes are kept exactly as written (floats, original 1640x590 pixels, points in file
order, which CULane writes bottom-up; ``x`` may lie outside the image): the metric
scores against them, and the transforms clip what they move. A missing image or
``.lines.txt`` is a :class:`~hat.errors.BadSourceRecord` naming the list file and line
that lists the frame; a label line that is not an even number (at least four) of finite
numbers names the ``.lines.txt`` and its line; an unreadable or truncated image names
the image (read by core's one reader, :func:`hat.inferer.read_image`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hat.data.packer import Packer
from hat.errors import BadSourceRecord, UserError
from hat.inferer import ImageFileError, read_image
from hat_ganet.synth import CATEGORIES, split_list_name


@dataclass(frozen=True)
class FrameRecord:
    """One listed frame: its path under ``src``, where it is listed, and its test categories."""

    file: str
    list_file: str
    line: int
    categories: tuple[str, ...]


def label_path(image: Path) -> Path:
    """``<frame>.lines.txt`` beside ``<frame>.jpg``."""
    return image.with_name(f"{image.stem}.lines.txt")


def read_lanes(path: Path) -> list[list[float]]:
    """The lanes of a ``.lines.txt``, each a flat ``[x1, y1, x2, y2, ...]``; blank lines are no lane."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BadSourceRecord(f"cannot read the lane file: {err}", file=str(path)) from err
    lanes: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        values: list[float] = []
        for field in fields:
            try:
                value = float(field)
            except ValueError:
                raise BadSourceRecord(f"{field!r} is not a number", file=str(path), line=number) from None
            if not math.isfinite(value):
                raise BadSourceRecord(f"{field!r} is not a finite number", file=str(path), line=number)
            values.append(value)
        if len(values) % 2 or len(values) < 4:
            raise BadSourceRecord(
                f"a lane is x1 y1 x2 y2 ... (an even count, at least two points), got {len(values)} numbers",
                file=str(path),
                line=number,
            )
        lanes.append(values)
    return lanes


def _list_entries(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, frame path without a leading slash) of every non-blank line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the CULane list {path}: {err}", where=str(path)) from err
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        rel = fields[0].lstrip("/")
        if not rel.lower().endswith((".jpg", ".jpeg", ".png")) or ".." in Path(rel).parts:
            raise BadSourceRecord(
                f"the first field {fields[0]!r} is not an image path under the dataset root",
                file=str(path),
                line=number,
            )
        yield number, rel


class CulanePacker(Packer):
    """CULane frames -> ``{"image": JPEG bytes, "lanes": [[x, y, ...]], "categories": [str], "file": str}``."""

    dataset: ClassVar[str] = "culane"
    layout_hint: ClassVar[str | None] = (
        "<src>/list/<split>.txt listing <src>/driver_*/<video>.MP4/<frame>.jpg, each with <frame>.lines.txt "
        "beside it; test categories in <src>/list/test_split/test<k>_<category>.txt"
    )
    progress_every: ClassVar[int | None] = 5000

    def list_path(self) -> Path:
        """The split's list: ``list/<split>.txt``, else ``list/<split>_gt.txt``, else a test_split list."""
        base = self.src / "list"
        for candidate in (
            base / f"{self.split}.txt",
            base / f"{self.split}_gt.txt",
            base / "test_split" / f"{self.split}.txt",
        ):
            if candidate.is_file():
                return candidate
        return base / f"{self.split}.txt"

    def available_splits(self) -> list[str]:
        """The splits ``list/`` has a list for, sorted (``train_gt.txt`` counts as ``train``)."""
        base = self.src / "list"
        if not base.is_dir():
            return []
        return sorted({p.stem.removesuffix("_gt") for p in base.glob("*.txt")})

    def category_map(self) -> dict[str, list[str]]:
        """Frame path -> the test categories whose list names it (in category order)."""
        found: dict[str, list[str]] = {}
        folder = self.src / "list" / "test_split"
        for index, category in enumerate(CATEGORIES):
            path = folder / split_list_name(index)
            if path.is_file():
                for _, rel in _list_entries(path):
                    cats = found.setdefault(rel, [])
                    if category not in cats:
                        cats.append(category)
        return found

    def records(self) -> Sequence[FrameRecord]:
        """Every frame of the split's list, in list order (CULane's lists are sorted by path)."""
        path = self.list_path()
        if not path.is_file():
            splits = self.available_splits()
            raise UserError(
                f"the CULane dataset at {self.src} has no list for split {self.split!r} ({path} is missing)"
                + (f"; its lists: {', '.join(splits)}" if splits else ""),
                where=str(self.src),
                hint=f"pass --split {' or --split '.join(splits)}"
                if splits
                else f"expected layout: {self.layout_hint}",
            )
        categories = self.category_map()
        return [
            FrameRecord(rel, str(path), number, tuple(categories.get(rel, ()))) for number, rel in _list_entries(path)
        ]

    def pack_record(self, record: FrameRecord) -> Iterator[dict[str, Any]]:
        image = self.src / record.file
        if not image.is_file():
            raise BadSourceRecord(f"the image {record.file} is missing", file=record.list_file, line=record.line)
        label = label_path(image)
        if not label.is_file():
            raise BadSourceRecord(
                f"the lane file {label.relative_to(self.src).as_posix()} of {record.file} is missing",
                file=record.list_file,
                line=record.line,
            )
        lanes = read_lanes(label)
        try:
            read_image(image)  # refuses a truncated or undecodable file before it is stored
        except ImageFileError as err:
            raise BadSourceRecord(err.reason, file=str(image)) from None
        yield {
            "image": image.read_bytes(),  # stored as shipped: no second JPEG generation
            "lanes": lanes,
            "categories": list(record.categories),
            "file": record.file,
        }

    def extra_meta(self) -> dict[str, Any]:
        """The category names and how many frames of the split each holds."""
        counts = dict.fromkeys(CATEGORIES, 0)
        for record in self.records():
            for category in record.categories:
                counts[category] += 1
        return {"categories": list(CATEGORIES), "category_counts": counts, "list_file": str(self.list_path())}
