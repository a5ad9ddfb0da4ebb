"""One tiny synthetic nuScenes dataroot and its packs, shared by every test of the folder.

Ten scenes of three key frames (so every box has a previous or next annotation), twelve
objects each, 320x180 cameras: about a second to write, a second to pack.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("nuscenes") is None:  # core without the extra: nothing here can run
    collect_ignore_glob = ["test_*.py"]

SMALL = {"samples_per_scene": 3, "objects_per_sample": 12, "image_width": 320}
SEED = 7


@pytest.fixture(scope="session")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hat.nuscenes.synth import generate_nuscenes

    root = tmp_path_factory.mktemp("nuscenes") / "raw"
    generate_nuscenes(root, seed=SEED, **SMALL)
    return root


@pytest.fixture(scope="session")
def nusc(dataroot: Path):
    from hat.nuscenes.devkit import load_nuscenes

    return load_nuscenes(str(dataroot), "v1.0-mini")


@pytest.fixture(scope="session")
def packed(dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hat.data.packer import run_pack
    from hat.nuscenes.packer import NuscenesPacker

    dst = tmp_path_factory.mktemp("nuscenes-packed")
    for split in ("train", "val"):
        run_pack(NuscenesPacker(dataroot, split), dst)
    return dst
