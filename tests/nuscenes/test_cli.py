"""`hat synth nuscenes` and `hat pack nuscenes` as users run them, and the errors they promise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hat import console
from hat.cli import main
from hat.data.pack import PackReader

pytestmark = pytest.mark.needs_nuscenes


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["--quiet", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        console.set_quiet(False)  # main() leaves --quiet set for the rest of the process
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())  # rich wraps long lines


def test_synth_then_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, data = tmp_path / "raw", tmp_path / "data"
    code, _, err = run_main(
        capsys, "synth", "nuscenes", "--dst", str(raw), "--seed", "4", "--samples-per-scene", "2",
        "--objects-per-sample", "10", "--image-width", "96",
    )  # fmt: skip
    assert code == 0, err
    assert (raw / "v1.0-mini" / "sample.json").is_file() and len(list((raw / "samples" / "CAM_BACK").iterdir())) == 20
    code, out, err = run_main(capsys, "pack", "nuscenes", "--src", str(raw), "--dst", str(data), "--split", "val")
    assert code == 0, err
    assert "packed 4 samples" in out and len(PackReader(data / "val_lmdb")) == 4
    args = ("pack", "nuscenes", "--src", str(raw), "--dst", str(data), "--split", "train", "--version", "v1.0-mini")
    code, out, err = run_main(capsys, *args, "--num-workers", "2")
    assert code == 0, err
    assert len(PackReader(data / "train_lmdb")) == 16
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "--overwrite" in err


def test_missing_src_and_dataroot_without_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_main(capsys, "pack", "nuscenes", "--src", str(missing), "--dst", str(tmp_path), "--split", "val")
    assert code == 2 and "source not found" in err and str(missing) in err and "Traceback" not in err
    (tmp_path / "empty" / "v1.0-mini").mkdir(parents=True)
    (tmp_path / "empty" / "v1.0-mini" / "sample.json").write_text("[]")
    code, _, err = run_main(
        capsys, "pack", "nuscenes", "--src", str(tmp_path / "empty"), "--dst", str(tmp_path / "out"), "--split", "val"
    )
    assert code == 2 and "is not a nuScenes v1.0-mini table folder" in err and "attribute.json" in err
    assert "hat synth nuscenes" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "val_lmdb").exists()


def test_bad_split_and_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "pack", "nuscenes", "--src", str(tmp_path), "--dst", str(tmp_path), "--split", "x")
    assert code == 2 and "has no split 'x'" in err and "--split train" in err
    code, _, err = run_main(capsys, "synth", "nuscenes", "--dst", str(tmp_path / "r"), "--samples", "3")
    assert code == 2 and "--samples-per-scene" in err


def test_without_the_devkit_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nuscenes", None)  # `import nuscenes` now fails as if not installed
    code, _, err = run_main(capsys, "synth", "nuscenes", "--dst", str(tmp_path / "raw"))
    assert code == 2 and "pip install 'hat-core[nuscenes]'" in err
    args = ("pack", "nuscenes", "--src", str(tmp_path), "--dst", str(tmp_path), "--split", "val")
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "pip install 'hat-core[nuscenes]'" in err
    code, out, _ = run_main(capsys, "list")
    assert code == 0 and "nuscenes" in out
    assert not (tmp_path / "raw").exists()
