"""From what a user types (a task, a config name or a file) to a loaded config.

`hat train keypoint`, `hat train --config keypoint_efficientnetb0_carfusion-tiny` and
`hat config show ./my.yaml` all end here, so the lookup rules and their error message
live in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hat.config import Config, load_config
from hat.errors import ConfigError
from hat.plugins import PluginHost, get_host


def resolve_config_ref(ref: str, host: PluginHost | None = None) -> tuple[Path, str]:
    """Path and name of the config ``ref`` means: a file, a config name, or a task.

    A path that exists wins; then a plugin config name (with or without ``.yaml``);
    then a task name, which means that task's default config.
    """
    host = host or get_host()
    as_path = Path(ref)
    if as_path.suffix in (".yaml", ".yml") or as_path.exists():
        if as_path.is_file():
            return as_path, as_path.stem
        if as_path.suffix in (".yaml", ".yml"):
            raise ConfigError(f"config file not found: {ref}", hint="check the path, or give a config name")
    name = ref[:-5] if ref.endswith(".yaml") else ref
    configs = host.configs.items
    if name in configs:
        return Path(configs[name]), name
    if ref in host.tasks.items:
        default = host.tasks.items[ref].default_config
        if default not in configs:
            raise ConfigError(
                f"task {ref!r} names default config {default!r}, which no plugin provides",
                hint=f"reinstall the plugin that provides {ref!r} ({host.tasks.owners[ref]})",
            )
        return Path(configs[default]), default
    candidates = sorted(set(configs) | set(host.tasks.items))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    raise ConfigError(
        f"{ref!r} is not a config file, a config name or a task",
        hint=(f"did you mean {', '.join(close)}?" if close else "run `hat list` to see tasks and configs"),
    )


def load_task_config(
    ref: str,
    overrides: Iterable[str] = (),
    host: PluginHost | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve ``ref`` and load it with inheritance, overrides and interpolation."""
    host = host or get_host()
    path, name = resolve_config_ref(ref, host)
    named = {k: Path(v) for k, v in host.configs.items.items()}
    return load_config(path, overrides=overrides, named=named, name=name, defaults=defaults)
