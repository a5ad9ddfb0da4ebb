"""The config a work dir was made with: written by every stage command, read by the next.

After ``hat demo`` (a tiny config, ``--set data_root=...``), ``hat validate keypoint
--work-dir hat-work/demo-keypoint`` used to load the task's reference config, whose model
does not fit the demo's checkpoints. Like mmengine and Lightning, which keep the resolved
config beside the checkpoints, each stage command now writes ``<work-dir>/config.yaml``:
the merged config with its overrides, before ``${...}`` interpolation (so a later
``--set batch_size=4`` still reaches every loader), and which config and task made it.
A later command on that work dir without ``--config`` uses it, and says so; one with a
``--config`` whose model differs from the work dir's is refused before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hat.config import Config
from hat.errors import ConfigError, UserError
from hat.workdir import RUN_CONFIG

FILE_NAME = RUN_CONFIG
#: Top-level key of the stored file naming what made it (dropped when it is loaded).
META_KEY = "_made_with_"
#: Keys never stored: they belong to where the work dir is now, not to the recipe.
_NOT_STORED = ("work_dir",)
_HEADER = (
    "# The config the commands on this work dir ran with (written by hat; the newest command wins).\n"
    "# Commands given this work dir and no --config use it. Edit with care: a different model\n"
    "# no longer fits the checkpoints here.\n"
)


@dataclass(frozen=True)
class Remembered:
    """A work dir's stored config: the file, and the task, config name and command that wrote it."""

    path: Path
    task: str
    config: str
    command: str


def config_file(work_dir: Path) -> Path:
    return Path(work_dir) / FILE_NAME


def remember(work_dir: Path, task: str, cfg: Config, command: str) -> Path:
    """Write ``cfg`` (as merged, with overrides) into ``work_dir``; atomically, so a crash
    leaves the previous file whole."""
    path = config_file(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in cfg.raw.items() if k not in _NOT_STORED and k != META_KEY}
    meta = {"task": task, "config": cfg.name, "command": command}
    text = _HEADER + yaml.safe_dump({META_KEY: meta, **data}, sort_keys=False, default_flow_style=None, width=100)
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)
    return path


def recall(work_dir: Path) -> Remembered | None:
    """The work dir's stored config, or None if it has none."""
    path = config_file(work_dir)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"the work dir's config cannot be read: {exc}",
            where=str(path),
            hint="give --config explicitly, or delete the file to let the next stage command rewrite it",
        ) from None
    meta = data.get(META_KEY) if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not {"task", "config"} <= set(meta):
        raise ConfigError(
            f"{path} is not a config written by hat (no {META_KEY} section)",
            where=str(path),
            hint="give --config explicitly, or delete the file",
        )
    return Remembered(path=path, task=str(meta["task"]), config=str(meta["config"]), command=str(meta.get("command")))


def drop_meta(cfg: Config) -> Config:
    """A config loaded from a stored file, without the section naming what made it."""
    cfg.data.pop(META_KEY, None)
    cfg.raw.pop(META_KEY, None)
    return cfg


def check_same_model(given: Config, stored: Config, work_dir: Path, remembered: Remembered) -> None:
    """Refuse a ``--config`` whose model is not the one whose checkpoints the work dir holds."""
    key = "deploy_model" if "deploy_model" in given or "deploy_model" in stored else "model"
    differences = _differences(stored.get(key), given.get(key), key)
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise UserError(
            f"config {given.name} builds a different model from the one work dir {work_dir} was made with "
            f"({remembered.config}): {shown}",
            where=str(remembered.path),
            hint=f"leave out --config to use the work dir's config, or choose another --work-dir for {given.name}",
        )


def _differences(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{path}.{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if old == new else [f"{path} is {new!r} here, {old!r} in the work dir"]
