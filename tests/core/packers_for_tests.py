"""Small packers and transforms for the pack tests.

They live in an importable module (not inside a test function) so that worker processes —
multiprocessing pools, DataLoader workers, the subprocess killed mid-pack — can import them.

The source layout they read: ``<src>/records.txt``, one record per line. A line is an
integer (the record's value) or ``bad`` (a record the packer rejects with file:line).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from hat.data.packer import Packer, run_pack
from hat.errors import BadSourceRecord, UserError


def write_source(src: Path, lines: Sequence[str | int]) -> Path:
    """Write a ``records.txt`` source with the given lines; returns ``src``."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "records.txt").write_text("".join(f"{line}\n" for line in lines))
    return src


def jpeg(value: int, size: int = 32) -> bytes:
    """A small deterministic JPEG that depends on ``value``."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([(xx * 7 + value) % 256, (yy * 5 + 3 * value) % 256, (xx + yy + value) % 256], axis=-1)
    image = np.ascontiguousarray(image.astype(np.uint8))
    cv2.circle(image, (size // 2, size // 2), size // 4, (value % 256, 20, 200), -1)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


class LinesPacker(Packer):
    """One record per line of records.txt; each yields ``samples_per_record`` samples."""

    dataset = "lines"
    layout_hint = "<src>/records.txt with one integer per line"

    def __init__(self, src: Path, split: str, *, samples_per_record: int = 1) -> None:
        super().__init__(src, split)
        self.samples_per_record = samples_per_record

    def records(self) -> Sequence[tuple[int, str]]:
        path = self.src / "records.txt"
        if not path.is_file():
            return []
        return list(enumerate(path.read_text().splitlines(), start=1))

    def pack_record(self, record: tuple[int, str]) -> Iterable[dict]:
        line_no, text = record
        if text.strip() == "bad":
            raise BadSourceRecord("the line says bad", file=str(self.src / "records.txt"), line=line_no)
        value = int(text)
        for k in range(self.samples_per_record):
            yield {
                "value": value,
                "k": k,
                "image": jpeg(value + k),
                "points": np.arange(6, dtype=np.float32).reshape(3, 2) * value,
                "name": f"record-{value}-{k}",
            }


class FinishingPacker(LinesPacker):
    """Writes a summary file from its finish hook, reading back through the reader."""

    def finish(self, dst: Path, reader) -> None:
        (dst / f"{self.split}_summary.txt").write_text(f"{len(reader)} {reader[0]['name']}")


class CrashingPacker(LinesPacker):
    """Fails with a plain bug (not a BadSourceRecord) on value 13."""

    def pack_record(self, record: tuple[int, str]) -> Iterable[dict]:
        if record[1].strip() == "13":
            raise ZeroDivisionError("unlucky record")
        return super().pack_record(record)


class LayoutErrorPacker(LinesPacker):
    """Rejects value 7 with a UserError (e.g. a missing referenced file)."""

    def pack_record(self, record: tuple[int, str]) -> Iterable[dict]:
        if record[1].strip() == "7":
            raise UserError("referenced image missing", where="img/7.jpg", hint="restore the image")
        return super().pack_record(record)


class StallingPacker(LinesPacker):
    """Signals through a marker file once record ``stall_at`` is reached, then hangs (to be killed)."""

    def __init__(self, src: Path, split: str, *, stall_at: int, marker: str) -> None:
        super().__init__(src, split)
        self.stall_at = stall_at
        self.marker = marker

    def pack_record(self, record: tuple[int, str]) -> Iterable[dict]:
        if record[0] == self.stall_at:
            Path(self.marker).write_text("stalled")
            time.sleep(120)
        return super().pack_record(record)


class ExitingPacker(LinesPacker):
    """Ends the whole process abruptly at record ``exit_at`` (no cleanup, no finally blocks)."""

    def __init__(self, src: Path, split: str, *, exit_at: int) -> None:
        super().__init__(src, split)
        self.exit_at = exit_at

    def pack_record(self, record: tuple[int, str]) -> Iterable[dict]:
        if record[0] == self.exit_at:
            os._exit(3)
        return super().pack_record(record)


# -- transforms: pure functions of (sample, rng) ---------------------------------------
def jitter_points(sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "points": sample["points"] + rng.normal(size=sample["points"].shape).astype(np.float32)}


def random_crop_offset(sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "offset": rng.integers(0, 100, size=2)}


if __name__ == "__main__":
    # Used by the kill tests: python packers_for_tests.py <mode> <src> <dst> <n> [marker]
    mode, src, dst, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    if mode == "stall":
        packer: Packer = StallingPacker(src, "train", stall_at=n, marker=sys.argv[5])
    else:
        packer = ExitingPacker(src, "train", exit_at=n)
    run_pack(packer, dst, num_workers=0)
