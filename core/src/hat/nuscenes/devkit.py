"""The one door to nuscenes-devkit: imported lazily, missing it is a user error.

Core must import, and `hat list` must work, without the devkit (it pulls matplotlib,
scipy, scikit-learn, ...). Everything nuScenes-specific therefore imports the devkit
through here, at the moment it is needed, and a missing install says what to install.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from hat.errors import UserError
from hat.nuscenes.constants import DEVKIT_HINT, SPLIT_NAMES

#: The 13 tables of a nuScenes version folder.
TABLES: tuple[str, ...] = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)


def require_devkit(what: str) -> ModuleType:
    """The ``nuscenes`` package, or a UserError naming ``what`` needed it and how to install it."""
    try:
        return importlib.import_module("nuscenes")
    except ImportError as exc:
        raise UserError(f"{what} needs nuscenes-devkit, which is not installed ({exc})", hint=DEVKIT_HINT) from None


def split_scene_names(version: str, split: str) -> list[str]:
    """Scene names of ``split`` (train / val / test) of ``version``, by the devkit's own split lists."""
    if version not in SPLIT_NAMES:
        raise UserError(f"unknown nuScenes version {version!r}", hint=f"use one of {', '.join(SPLIT_NAMES)}")
    names = SPLIT_NAMES[version]
    if split not in names:
        raise UserError(f"nuScenes {version} has no split {split!r}", hint=f"use --split {' or --split '.join(names)}")
    require_devkit("reading nuScenes splits")
    from nuscenes.utils.splits import create_splits_scenes

    return list(create_splits_scenes()[names[split]])


def devkit_split(version: str, split: str) -> str:
    """The devkit's split name (mini_val, val, ...) of ``--split`` for ``version``."""
    split_scene_names(version, split)  # validates both
    return SPLIT_NAMES[version][split]


def check_dataroot(dataroot: Path, version: str) -> None:
    """Raise a UserError unless ``dataroot/version`` holds all 13 tables."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise UserError(f"nuScenes dataroot not found: {dataroot}", hint="pass the directory that holds v1.0-*/")
    table_dir = dataroot / version
    missing = [t for t in TABLES if not (table_dir / f"{t}.json").is_file()]
    if missing:
        complete = sorted(
            p.name
            for p in dataroot.glob("v1.0-*")
            if p.name != version and all((p / f"{t}.json").is_file() for t in TABLES)
        )
        raise UserError(
            f"{table_dir} is not a nuScenes {version} table folder: missing {', '.join(m + '.json' for m in missing)}",
            where=str(dataroot),
            hint=f"this dataroot holds {', '.join(complete)}: pass --version {complete[0]}"
            if complete
            else "point --src to a nuScenes dataroot, or synthesize one with `hat synth nuscenes --dst DIR`",
        )


def load_nuscenes(dataroot: str, version: str) -> Any:
    """A devkit ``NuScenes`` for ``dataroot``/``version``, loaded once per process.

    Cached so that pack workers forked after the main process listed the samples, and
    repeated metric computations, share one load (the trainval tables take a while).
    The cache key includes the tables' modification times, so a dataroot written again
    at the same path is read again.
    """
    check_dataroot(Path(dataroot), version)
    require_devkit("reading nuScenes")
    stamp = tuple((Path(dataroot) / version / f"{t}.json").stat().st_mtime_ns for t in TABLES)
    return _load(os.fspath(dataroot), version, stamp)


@lru_cache(maxsize=2)
def _load(dataroot: str, version: str, stamp: tuple[int, ...]) -> Any:
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=dataroot, verbose=False)


def category_to_class(category_name: str) -> str | None:
    """The detection class of a nuScenes category (the devkit's mapping), None if not detected."""
    require_devkit("mapping nuScenes categories")
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(category_name)
