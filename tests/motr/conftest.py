"""Shared MOT17 fixtures: one synthetic raw dataset and its train/val packs per session, a hat-motr host."""

from __future__ import annotations

from pathlib import Path

import pytest

from hat.testing import host_fixture
from tests.motr.synth_options import SYNTH

motr_host = host_fixture("hat_motr.plugin", "hat-motr")


@pytest.fixture(scope="session")
def mot_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hat_motr.synth import generate_mot17

    dst = tmp_path_factory.mktemp("mot17") / "raw"
    generate_mot17(dst, seed=3, **SYNTH)
    return dst


@pytest.fixture(scope="session")
def mot_packed(mot_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train_lmdb``, ``val_lmdb`` and their ``*_gt`` folders under the returned folder."""
    from hat.data.packer import run_pack
    from hat_motr.packer import Mot17Packer

    dst = tmp_path_factory.mktemp("mot17-packed")
    for split in ("train", "val"):
        run_pack(Mot17Packer(mot_raw, split), dst)
    return dst


motr_module_host = host_fixture("hat_motr.plugin", "hat-motr", scope="module")
