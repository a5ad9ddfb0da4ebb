"""The devkit's view of the shared synthetic dataroot (``nuscenes_dataroot``, in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nusc(nuscenes_dataroot: Path):
    from hat.nuscenes.devkit import load_nuscenes

    return load_nuscenes(str(nuscenes_dataroot), "v1.0-mini")
