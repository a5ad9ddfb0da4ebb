"""Reading a packed (LMDB) dataset vs the same samples as loose files, side by side.

Generates N small JPEG images with a JSON annotation each as loose files, packs the very
same samples with :func:`hat.data.packer.run_pack`, then measures samples/s of reading
and decoding (cv2.imdecode + json / msgpack) through a torch DataLoader with 1 and 2
workers, for both layouts in the same run. Both are read from a warm page cache, so the
ratio measures per-sample overhead (two file opens and reads vs one LMDB lookup), not
disk speed. A second pair of rows reads the same samples without decoding the JPEG, to
show the storage overhead that decoding otherwise hides.

    python benchmarks/pack_read.py [--num-samples 3000] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import environment, write_result
from rich.console import Console
from rich.table import Table

from hat.data.dataset import PackedDataset, decode_image
from hat.data.packer import Packer, run_pack

IMAGE_SIZE = 128
BATCH_SIZE = 32


def make_loose_dataset(root: Path, num_samples: int, seed: int = 0) -> None:
    """``root/000000.jpg`` + ``root/000000.json`` ...: shapes on a noisy gradient, with their boxes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for i in range(num_samples):
        base = (xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2)) % 256
        image = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
        image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - 32, 2))
            w, h = (int(v) for v in rng.integers(8, 32, 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            label = int(rng.integers(0, 3))
            if label == 0:
                cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), color, -1)
            else:
                cv2.ellipse(image, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, color, -1)
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
        cv2.imwrite(str(root / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (root / f"{i:06d}.json").write_text(json.dumps({"name": f"{i:06d}", "boxes": boxes, "labels": labels}))


class LoosePacker(Packer):
    """Packs the loose layout: the JPEG's original bytes plus its annotation as arrays."""

    dataset = "bench"

    def records(self) -> Sequence[Path]:
        return sorted(self.src.glob("*.jpg"))

    def pack_record(self, record: Path) -> Iterable[dict]:
        anno = json.loads(record.with_suffix(".json").read_text())
        yield {
            "name": anno["name"],
            "image": record.read_bytes(),
            "boxes": np.asarray(anno["boxes"], dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(anno["labels"], dtype=np.int64),
        }


class LooseDataset(torch.utils.data.Dataset):
    """The loose layout read per sample: open two files, decode JPEG and JSON."""

    def __init__(self, root: Path, decode_jpeg: bool = True) -> None:
        self.images = sorted(root.glob("*.jpg"))
        self.decode_jpeg = decode_jpeg

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        path = self.images[index]
        anno = json.loads(path.with_suffix(".json").read_bytes())
        data = path.read_bytes()
        return {
            "name": anno["name"],
            "image": decode_image(data) if self.decode_jpeg else data,
            "boxes": np.asarray(anno["boxes"], dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(anno["labels"], dtype=np.int64),
        }


class BenchPackedDataset(PackedDataset):
    """The pack read per sample: one LMDB lookup, msgpack, JPEG decode."""

    decode_jpeg = True

    def decode(self, sample: dict) -> dict:
        return {**sample, "image": self.decode_image(sample["image"])} if self.decode_jpeg else sample


def as_list(batch: list) -> list:
    """Keep batches as lists: collation is not what is being measured."""
    return batch


def samples_per_second(dataset: torch.utils.data.Dataset, num_workers: int, repeats: int) -> float:
    """Median samples/s over ``repeats`` full passes, after one untimed warm-up pass."""
    rates = []
    for run in range(repeats + 1):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers, collate_fn=as_list
        )
        start = time.perf_counter()
        count = sum(len(batch) for batch in loader)
        elapsed = time.perf_counter() - start
        assert count == len(dataset), (count, len(dataset))
        if run:  # the first pass warms the page cache and the code paths
            rates.append(count / elapsed)
    return statistics.median(rates)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (median reported)")
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pack_read.json")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]
    cv2.setNumThreads(1)
    console = Console()

    with tempfile.TemporaryDirectory(prefix="hat-bench-pack-") as tmp:
        loose = Path(tmp) / "loose"
        start = time.perf_counter()
        make_loose_dataset(loose, args.num_samples)
        console.print(f"generated {args.num_samples} loose samples in {time.perf_counter() - start:.1f}s")
        summary = run_pack(LoosePacker(loose, "train"), Path(tmp) / "packed", num_workers=2)

        loose_dataset = LooseDataset(loose)
        packed_dataset = BenchPackedDataset(str(summary.path))
        assert np.array_equal(loose_dataset[7]["image"], packed_dataset[7]["image"])  # same samples
        rows = []
        for decode_jpeg in (True, False):
            loose_dataset.decode_jpeg = packed_dataset.decode_jpeg = decode_jpeg
            for workers in worker_counts:
                loose_rate = samples_per_second(loose_dataset, workers, args.repeats)
                packed_rate = samples_per_second(packed_dataset, workers, args.repeats)
                rows.append(
                    {
                        "mode": "read + decode" if decode_jpeg else "read only",
                        "workers": workers,
                        "loose_samples_per_s": round(loose_rate, 1),
                        "lmdb_samples_per_s": round(packed_rate, 1),
                        "lmdb_over_loose": round(packed_rate / loose_rate, 3),
                    }
                )
        result = {
            "benchmark": "pack_read",
            "num_samples": args.num_samples,
            "repeats": args.repeats,
            "image_size": IMAGE_SIZE,
            "batch_size": BATCH_SIZE,
            "pack_seconds": round(summary.seconds, 2),
            "loose_bytes": directory_bytes(loose),
            "lmdb_bytes": directory_bytes(summary.path),
            "results": rows,
            **environment(),
        }

    table = Table(title=f"pack_read: {args.num_samples} JPEG {IMAGE_SIZE}x{IMAGE_SIZE} + annotation, warm cache")
    table.add_column("mode")
    table.add_column("DataLoader workers", justify="right")
    table.add_column("loose files (samples/s)", justify="right")
    table.add_column("LMDB pack (samples/s)", justify="right")
    table.add_column("LMDB / loose", justify="right")
    for row in rows:
        table.add_row(
            row["mode"],
            str(row["workers"]),
            f"{row['loose_samples_per_s']:.0f}",
            f"{row['lmdb_samples_per_s']:.0f}",
            f"{row['lmdb_over_loose']:.2f}x",
        )
    console.print(table)
    console.print(
        f"packed in {result['pack_seconds']}s; loose {result['loose_bytes'] / 1e6:.1f} MB, "
        f"LMDB {result['lmdb_bytes'] / 1e6:.1f} MB"
    )
    write_result(args.out, result, console)
    return result


if __name__ == "__main__":
    main()
