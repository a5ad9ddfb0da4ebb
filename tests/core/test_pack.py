"""The LMDB pack: complete-or-refused, no pickle on disk, safe in DataLoader workers."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from hat.data import pack as pack_module
from hat.data.dataset import PackedDataset, decode_image
from hat.data.pack import PackReader, PackWriter, is_complete_pack, sample_key
from hat.errors import IncompletePack, UserError
from hat.registry import marked_name
from tests.core.packers_for_tests import jitter_points, jpeg, random_crop_offset

REPO = Path(__file__).resolve().parents[2]
HELPERS = [sys.executable, "-m", "tests.core.packers_for_tests"]
PICKLE_MARKERS = (b"\x80\x04\x95", b"\x80\x05\x95", b"cnumpy", b"c__builtin__")


def make_sample(i: int) -> dict:
    return {
        "index": i,
        "image": jpeg(i),
        "boxes": np.array([[i, i + 1, i + 10, i + 20]], dtype=np.float32),
        "labels": np.array([i % 3], dtype=np.int64),
        "meta": {"name": f"s{i}", "size": (32, 32)},
        "points": np.arange(6, dtype=np.float32).reshape(3, 2) * i,
    }


def write_pack(path: Path, n: int, **meta: object) -> Path:
    with PackWriter(path) as writer:
        for i in range(n):
            assert writer.write(make_sample(i)) == i
        writer.finish({"dataset": "toy", "split": "train", "source": "memory", **meta})
    return path


def test_round_trip_and_meta(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 300, classes=["a", "b", "c"])  # > one commit batch
    reader = PackReader(path)
    assert len(reader) == 300
    meta = reader.meta
    assert meta["format"] == "hat-pack" and meta["format_version"] == 1
    assert (meta["dataset"], meta["split"], meta["num_samples"], meta["source"]) == ("toy", "train", 300, "memory")
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["created"].endswith("+00:00") and "hat_version" in meta
    for i in (0, 1, 255, 256, 299):
        sample = reader[i]
        expected = make_sample(i)
        assert sample["image"] == expected["image"]
        assert sample["boxes"].dtype == np.float32 and np.array_equal(sample["boxes"], expected["boxes"])
        assert sample["meta"] == {"name": f"s{i}", "size": [32, 32]}
    assert reader[-1]["index"] == 299
    with pytest.raises(IndexError):
        reader[300]
    assert is_complete_pack(path)


def test_no_pickle_anywhere_in_a_pack(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 50)
    raw = (path / "data.mdb").read_bytes()
    assert jpeg(7) in raw  # images are stored as their original bytes
    for marker in PICKLE_MARKERS:
        assert marker not in raw


def test_complete_pack_needs_overwrite(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 5)
    with pytest.raises(UserError, match="complete pack") as info:
        PackWriter(path)
    assert "--overwrite" in str(info.value)
    assert len(PackReader(path)) == 5  # untouched by the refusal
    write_pack_over = PackWriter(path, overwrite=True)
    write_pack_over.write(make_sample(42))
    write_pack_over.finish({"dataset": "toy", "split": "train", "source": "again"})
    reader = PackReader(path)
    assert len(reader) == 1 and reader[0]["index"] == 42 and reader.meta["source"] == "again"


def test_foreign_directory_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "train_lmdb"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a HAT pack"):
        PackWriter(path, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine"


def test_exception_inside_writer_removes_the_partial_pack(tmp_path: Path) -> None:
    path = tmp_path / "train_lmdb"
    with pytest.raises(RuntimeError, match="boom"), PackWriter(path) as writer:
        for i in range(300):
            writer.write(make_sample(i))
        assert (path / "data.mdb").stat().st_size > 0  # a first batch was committed
        raise RuntimeError("boom")
    assert not path.exists()


def test_map_grows_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_module, "INITIAL_MAP_SIZE", 1 << 16)
    path = tmp_path / "big_lmdb"
    big = np.arange(200_000, dtype=np.float64)  # 1.6 MB per sample, far beyond 64 KiB
    with PackWriter(path) as writer:
        for i in range(3):
            writer.write({"x": big + i})
        writer.finish({"dataset": "toy", "split": "big", "source": "memory"})
    reader = PackReader(path)
    assert np.array_equal(reader[2]["x"], big + 2)


def test_missing_pack_names_path_and_next_step(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found") as info:
        PackReader(tmp_path / "val_lmdb")
    assert str(tmp_path / "val_lmdb") in str(info.value) and "hat pack" in str(info.value)


def _raw_keys(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
    env.close()
    return keys


def _assert_refused_then_replaced(path: Path) -> None:
    assert path.exists() and not is_complete_pack(path)
    with pytest.raises(IncompletePack, match="packing never finished") as info:
        PackReader(path)
    assert "hat pack" in str(info.value)
    write_pack(path, 3)  # an incomplete pack is replaced without --overwrite
    assert len(PackReader(path)) == 3


def test_pack_killed_midway_is_refused_as_incomplete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "records.txt").write_text("".join(f"{i}\n" for i in range(400)))
    marker = tmp_path / "stalled"
    proc = subprocess.Popen(
        [*HELPERS, "stall", str(src), str(tmp_path / "dst"), "300", str(marker)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the packing subprocess never reached record 300"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    path = tmp_path / "dst" / "train_lmdb"
    keys = _raw_keys(path)
    assert sample_key(0) in keys and b"__meta__" not in keys  # really half-way: samples but no meta
    _assert_refused_then_replaced(path)


def test_pack_exiting_abruptly_is_refused_as_incomplete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "records.txt").write_text("".join(f"{i}\n" for i in range(10)))
    done = subprocess.run(
        [*HELPERS, "exit", str(src), str(tmp_path / "dst"), "5"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr.decode()
    _assert_refused_then_replaced(tmp_path / "dst" / "train_lmdb")


def test_reader_in_dataloader_workers_returns_every_sample_once(tmp_path: Path) -> None:
    reader = PackReader(write_pack(tmp_path / "train_lmdb", 64))
    reader[0]  # open the environment in the parent first: workers must not reuse it
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2, shuffle=True)
    seen = [int(sample["index"]) for sample in loader]
    assert sorted(seen) == list(range(64))


def test_reader_pickles_without_its_environment(tmp_path: Path) -> None:
    reader = PackReader(write_pack(tmp_path / "train_lmdb", 4))
    reader[1]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._env is None
    assert clone[3]["index"] == 3 and clone.meta == reader.meta


# -- PackedDataset ------------------------------------------------------------------
def _collect(dataset: PackedDataset, num_workers: int) -> dict[int, dict]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, shuffle=True)
    return {int(s["index"]): s for s in loader}


def test_packed_dataset_is_reproducible_across_worker_counts(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 40)
    transforms = [jitter_points, random_crop_offset]
    dataset = PackedDataset(str(path), transforms=transforms, seed=123)
    a = _collect(dataset, 0)
    b = _collect(PackedDataset(str(path), transforms=transforms, seed=123), 2)
    assert sorted(a) == sorted(b) == list(range(40))
    for i in range(40):
        assert torch.equal(a[i]["points"], b[i]["points"])
        assert torch.equal(a[i]["offset"], b[i]["offset"])
    assert not torch.equal(a[5]["points"], torch.from_numpy(make_sample(5)["points"]))  # transformed
    dataset.set_epoch(1)
    c = _collect(dataset, 2)
    assert any(not torch.equal(a[i]["points"], c[i]["points"]) for i in range(40))  # a new epoch, new draws
    other = _collect(PackedDataset(str(path), transforms=transforms, seed=124), 0)
    assert any(not torch.equal(a[i]["offset"], other[i]["offset"]) for i in range(40))


def test_packed_dataset_without_seed_and_registration(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 8)
    dataset = PackedDataset(str(path), transforms=[random_crop_offset])
    assert len(dataset) == 8 and dataset.meta["dataset"] == "toy"
    assert dataset[3]["offset"].shape == (2,)
    assert marked_name(PackedDataset) == "PackedDataset"


class ImageDataset(PackedDataset):
    def decode(self, sample: dict) -> dict:
        return {**sample, "image": self.decode_image(sample["image"], "rgb")}


def test_decode_hook_and_corrupt_image_error(tmp_path: Path) -> None:
    path = tmp_path / "train_lmdb"
    with PackWriter(path) as writer:
        writer.write({"index": 0, "image": jpeg(0)})
        writer.write({"index": 1, "image": b"\xff\xd8 not a jpeg at all"})
        writer.finish({"dataset": "toy", "split": "train", "source": "memory"})
    dataset = ImageDataset(str(path))
    image = dataset[0]["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., ::-1], decode_image(jpeg(0)))  # rgb is bgr reversed
    with pytest.raises(UserError, match="corrupt image") as info:
        dataset[1]
    assert "sample 1" in str(info.value) and str(path) in str(info.value)


def test_packed_dataset_in_spawned_workers(tmp_path: Path) -> None:
    path = write_pack(tmp_path / "train_lmdb", 12)
    dataset = PackedDataset(str(path), transforms=[random_crop_offset], seed=7)
    dataset[0]  # the parent's environment must not travel to the workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    spawned = {int(s["index"]): s["offset"] for s in loader}
    assert sorted(spawned) == list(range(12))
    for i in range(12):
        assert np.array_equal(spawned[i].numpy(), dataset[i]["offset"])
