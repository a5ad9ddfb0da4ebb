"""Fixtures shared by several test folders."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from hat.plugins import PluginHost
from hat.testing import use_host


@pytest.fixture()
def toy_engine_host() -> Iterator[PluginHost]:
    from tests.engine.toy_task import DIST, ToyEnginePlugin

    with use_host((ToyEnginePlugin(), DIST)) as host:
        yield host


# -- nuScenes: one skip for a missing nuscenes-devkit, one synthetic dataroot ------------------

#: The shared synthetic nuScenes dataroot: ten scenes of three key frames (so every box has
#: a previous or next annotation), twelve objects each, 320x180 cameras: about a second to
#: write, a second to pack.
NUSCENES_SYNTH = {"seed": 7, "samples_per_scene": 3, "objects_per_sample": 12, "image_width": 320}
#: Fixtures that need the devkit: a test that uses one is marked ``needs_nuscenes`` too.
_NUSCENES_FIXTURES = frozenset({"nuscenes_dataroot", "nuscenes_packed"})


def _has_nuscenes() -> bool:
    try:
        return importlib.util.find_spec("nuscenes") is not None
    except ValueError:  # sys.modules["nuscenes"] is None: made unimportable on purpose
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_nuscenes: needs nuscenes-devkit (pip install 'hat-core[nuscenes]'); skipped without it"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``needs_nuscenes`` test (or user of a nuScenes fixture) where the devkit is missing.

    Modules so marked import the devkit only inside their tests, so they still collect without it.
    """
    if _has_nuscenes():
        return
    skip = pytest.mark.skip(reason="nuscenes-devkit is not installed (pip install 'hat-core[nuscenes]')")
    for item in items:
        if item.get_closest_marker("needs_nuscenes") or _NUSCENES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nuscenes_synth_options() -> dict:
    """The ``generate_nuscenes`` options of ``nuscenes_dataroot`` (a copy: change it freely)."""
    return dict(NUSCENES_SYNTH)


@pytest.fixture(scope="session")
def nuscenes_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic nuScenes v1.0-mini dataroot, written once per session."""
    from hat.nuscenes.synth import generate_nuscenes

    root = tmp_path_factory.mktemp("nuscenes") / "raw"
    generate_nuscenes(root, **NUSCENES_SYNTH)
    return root


@pytest.fixture(scope="session")
def nuscenes_packed(nuscenes_dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``nuscenes_dataroot`` packed: ``train_lmdb`` and ``val_lmdb`` under the returned folder."""
    from hat.data.packer import run_pack
    from hat.nuscenes.packer import NuscenesPacker

    dst = tmp_path_factory.mktemp("nuscenes-packed")
    for split in ("train", "val"):
        run_pack(NuscenesPacker(nuscenes_dataroot, split), dst)
    return dst
