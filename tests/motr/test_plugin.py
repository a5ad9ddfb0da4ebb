"""hat-motr as a user meets it: its hooks, and `hat synth` / `hat pack` on synthetic MOT17, good input and bad."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hat.testing import run_cli


def test_the_plugin_registers_its_types_packer_and_generator(motr_host) -> None:
    from hat_motr.packer import Mot17Packer
    from hat_motr.synth import generate_mot17

    assert motr_host.packer("mot17") is Mot17Packer
    assert motr_host.synth_generator("mot17") is generate_mot17
    owned = {e.name for e in motr_host.registry.entries() if e.owner == "hat-motr"}
    assert {
        "Mot17FrameDataset",
        "Mot17ClipDataset",
        "MotFrameCollate",
        "MotClipCollate",
        "MotRandomResize",
        "MotRandomSizeCrop",
        "MotRandomSelect",
        "MotClipTransforms",
        "MotTracker",
        "MotMetric",
        "MotTracksWriter",
    } <= owned
    tracker = motr_host.registry.build({"type": "MotTracker", "num_track_slots": 8}, path="post_process.tracker")
    assert tracker.num_track_slots == 8


@pytest.fixture()
def cli_raw(motr_host, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    made = run_cli("synth", "mot17", "--dst", str(raw), "--num-sequences", "2", "--frames-per-sequence", "12")
    assert made.code == 0, made.err
    return raw


def test_synth_and_pack_through_the_cli(cli_raw: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    packed = run_cli("pack", "mot17", "--src", str(cli_raw), "--dst", str(data), "--split", "val")
    assert packed.code == 0, packed.err
    assert "packed 11 samples" in packed.out  # 12 and 13 frames: frames 8..12 and 8..13 in val
    assert (data / "val_lmdb" / "data.mdb").is_file()
    assert (data / "val_gt" / "MOT17-02-FRCNN" / "gt" / "gt.txt").is_file()
    other = run_cli(
        "pack", "mot17", "--src", str(cli_raw), "--dst", str(tmp_path / "sdp"), "--split", "train", "--detector", "SDP"
    )
    assert other.code == 0, other.err
    assert (tmp_path / "sdp" / "train_gt" / "MOT17-04-SDP" / "seqinfo.ini").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--split", "test"], ["no split 'test'", "--split train"]),
        (["--split", "val", "--detector", "YOLO"], ["unknown MOT17 detector copy 'YOLO'", "--detector FRCNN"]),
    ],
)
def test_bad_options_exit_2(cli_raw: Path, tmp_path: Path, args: list[str], expected: list[str]) -> None:
    result = run_cli("pack", "mot17", "--src", str(cli_raw), "--dst", str(tmp_path / "data"), *args)
    assert result.code == 2, result.err
    for text in expected:
        assert text in result.err


def test_a_missing_seqinfo_exits_2_naming_the_file(cli_raw: Path, tmp_path: Path) -> None:
    ini = cli_raw / "train" / "MOT17-04-FRCNN" / "seqinfo.ini"
    ini.unlink()
    result = run_cli("pack", "mot17", "--src", str(cli_raw), "--dst", str(tmp_path / "data"), "--split", "train")
    assert result.code == 2
    assert "bad source record" in result.err and "seqinfo.ini" in result.err and "--skip-bad" in result.err
    assert str(ini) in result.err.replace("\n", "")
    assert not (tmp_path / "data" / "train_lmdb").exists()
    skipped = run_cli(
        "pack", "mot17", "--src", str(cli_raw), "--dst", str(tmp_path / "data"), "--split", "train", "--skip-bad"
    )
    assert skipped.code == 0 and "packed 7 samples" in skipped.out  # MOT17-02's 12 frames: 7 in train


def test_a_malformed_gt_row_exits_2_naming_file_and_line(cli_raw: Path, tmp_path: Path) -> None:
    gt = cli_raw / "train" / "MOT17-02-FRCNN" / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    fields = lines[2].split(",")
    fields[7] = "x"  # the class
    lines[2] = ",".join(fields)
    gt.write_text("\n".join(lines) + "\n")
    result = run_cli("pack", "mot17", "--src", str(cli_raw), "--dst", str(tmp_path / "data"), "--split", "val")
    assert result.code == 2
    err = result.err.replace("\n", "")
    assert f"{gt}:3" in err and "class 'x' is not a number" in err


def test_a_folder_without_mot17_exits_2(motr_host, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("pack", "mot17", "--src", str(tmp_path / "empty"), "--dst", str(tmp_path / "d"), "--split", "val")
    assert result.code == 2 and "no train/ folder" in result.err
    shutil.rmtree(tmp_path / "empty")
