"""A tiny synthetic nuScenes dataroot and its packs, shared by the data-side tests of the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = {"samples_per_scene": 2, "objects_per_sample": 10, "image_width": 320}


@pytest.fixture(scope="session")
def nuscenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("nuscenes")
    from hat.nuscenes.synth import generate_nuscenes

    root = tmp_path_factory.mktemp("fcos3d-nuscenes") / "raw"
    generate_nuscenes(root, seed=3, **SMALL)
    return root


@pytest.fixture(scope="session")
def nuscenes_packed(nuscenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hat.data.packer import run_pack
    from hat.nuscenes.packer import NuscenesPacker

    dst = tmp_path_factory.mktemp("fcos3d-packed")
    for split in ("train", "val"):
        run_pack(NuscenesPacker(nuscenes_root, split), dst)
    return dst
