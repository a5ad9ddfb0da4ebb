"""The pack driver: same pack whatever the worker count, bad records, nothing half-written."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from hat.data import packer as packer_module
from hat.data.pack import PackReader, is_complete_pack
from hat.data.packer import PackSummary, run_pack
from hat.errors import BadSourceRecord, UserError
from tests.core.packers_for_tests import (
    CrashingPacker,
    FinishingPacker,
    LayoutErrorPacker,
    LinesPacker,
    write_source,
)


def raw_samples(path: Path) -> list[bytes]:
    reader = PackReader(path)
    return [reader.raw(i) for i in range(len(reader))]


def test_pack_is_identical_whatever_the_worker_count(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src", range(100, 160))
    one = run_pack(LinesPacker(src, "train", samples_per_record=3), tmp_path / "w0")
    two = run_pack(LinesPacker(src, "train", samples_per_record=3), tmp_path / "w2", num_workers=2)
    assert isinstance(one, PackSummary)
    assert (one.num_samples, one.num_records, one.num_skipped) == (180, 60, 0)
    assert (two.num_samples, two.num_records) == (180, 60)
    assert one.path == tmp_path / "w0" / "train_lmdb"
    assert raw_samples(one.path) == raw_samples(two.path)  # byte for byte, in the same order
    reader = PackReader(two.path)
    assert [reader[i]["value"] for i in range(0, 180, 3)] == list(range(100, 160))
    assert [reader[i]["k"] for i in range(3)] == [0, 1, 2]
    meta = reader.meta
    assert (meta["dataset"], meta["split"], meta["num_samples"], meta["source"]) == ("lines", "train", 180, str(src))


def test_workers_also_work_when_spawned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_source(tmp_path / "src", [*range(30), "bad"])
    forked = run_pack(LinesPacker(src, "train"), tmp_path / "fork", num_workers=2, skip_bad=True)
    monkeypatch.setattr(packer_module, "multiprocessing", multiprocessing.get_context("spawn"))
    spawned = run_pack(LinesPacker(src, "train"), tmp_path / "spawn", num_workers=2, skip_bad=True)
    assert spawned.skipped == forked.skipped and len(spawned.skipped) == 1
    assert raw_samples(spawned.path) == raw_samples(forked.path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_record_fails_with_file_and_line_and_leaves_no_pack(tmp_path: Path, num_workers: int) -> None:
    src = write_source(tmp_path / "src", [1, 2, "bad", *range(3, 300)])
    with pytest.raises(BadSourceRecord) as info:
        run_pack(LinesPacker(src, "train"), tmp_path / "dst", num_workers=num_workers)
    assert f"{src / 'records.txt'}:3" in str(info.value)
    assert "the line says bad" in str(info.value)
    assert not (tmp_path / "dst" / "train_lmdb").exists()  # not even an incomplete pack


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_bad_counts_and_lists_bad_records(tmp_path: Path, num_workers: int) -> None:
    src = write_source(tmp_path / "src", [1, "bad", 2, 3, "bad"])
    summary = run_pack(LinesPacker(src, "val"), tmp_path / "dst", num_workers=num_workers, skip_bad=True)
    assert (summary.num_records, summary.num_samples, summary.num_skipped) == (5, 3, 2)
    records = src / "records.txt"
    assert summary.skipped == [f"{records}:2: the line says bad", f"{records}:5: the line says bad"]
    reader = PackReader(tmp_path / "dst" / "val_lmdb")
    assert [reader[i]["value"] for i in range(len(reader))] == [1, 2, 3]
    assert reader.meta["num_skipped"] == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_any_other_failure_leaves_no_pack(tmp_path: Path, num_workers: int) -> None:
    src = write_source(tmp_path / "src", range(20))
    with pytest.raises((ZeroDivisionError, RuntimeError), match="unlucky record"):
        run_pack(CrashingPacker(src, "train"), tmp_path / "dst", num_workers=num_workers)
    assert not (tmp_path / "dst" / "train_lmdb").exists()


def test_user_error_in_a_worker_keeps_its_message(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src", range(10))
    with pytest.raises(UserError, match="referenced image missing") as info:
        run_pack(LayoutErrorPacker(src, "train"), tmp_path / "dst", num_workers=2)
    assert info.value.where == "img/7.jpg" and info.value.hint == "restore the image"
    assert not (tmp_path / "dst" / "train_lmdb").exists()


def test_missing_source_and_empty_source(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="source not found"):
        run_pack(LinesPacker(tmp_path / "nowhere", "train"), tmp_path / "dst")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no lines records") as info:
        run_pack(LinesPacker(tmp_path / "empty", "train"), tmp_path / "dst")
    assert str(tmp_path / "empty") in str(info.value)
    assert "records.txt with one integer per line" in str(info.value)
    assert not (tmp_path / "dst" / "train_lmdb").exists()


def test_all_records_skipped_is_an_error(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src", ["bad", "bad"])
    with pytest.raises(UserError, match="produced no samples"):
        run_pack(LinesPacker(src, "train"), tmp_path / "dst", skip_bad=True)
    assert not (tmp_path / "dst" / "train_lmdb").exists()


def test_repacking_needs_overwrite(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src", range(5))
    run_pack(LinesPacker(src, "train"), tmp_path / "dst")
    write_source(src, range(50, 53))
    with pytest.raises(UserError, match="--overwrite"):
        run_pack(LinesPacker(src, "train"), tmp_path / "dst")
    assert len(PackReader(tmp_path / "dst" / "train_lmdb")) == 5
    summary = run_pack(LinesPacker(src, "train"), tmp_path / "dst", overwrite=True)
    reader = PackReader(summary.path)
    assert len(reader) == 3 and reader[0]["value"] == 50
    assert is_complete_pack(summary.path)


def test_finish_hook_sees_the_complete_pack(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src", [4, 5])
    run_pack(FinishingPacker(src, "train", samples_per_record=2), tmp_path / "dst", num_workers=2)
    assert (tmp_path / "dst" / "train_summary.txt").read_text() == "4 record-4-0"
