"""Helpers that keep a task plugin's ``plugin.py`` to its hooks and its task description.

Every plugin answers ``hat_register`` and ``hat_configs`` the same way: all the types its
package marks with :func:`hat.registry.register_type`, and every YAML file in its
``configs/`` folder. Written once here, a plugin says it in one line each::

    @hookimpl
    def hat_register(registry):
        registry.add_package("hat_mytask")

    @hookimpl
    def hat_configs():
        return package_configs("hat_mytask")

The conformance check a plugin's own tests run is :func:`hat.testing.check_plugin`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hat.errors import PluginError

CONFIG_FOLDER = "configs"


def package_configs(package: str, folder: str = CONFIG_FOLDER) -> dict[str, Path]:
    """Config name -> file for every ``*.yaml`` in ``<package>/<folder>/``.

    The name is the file name without ``.yaml`` (what ``--config`` and ``_base_`` use).
    A package without the folder is an error: a plugin that calls this ships configs,
    and an empty answer would only show later as "unknown config".
    """
    module = importlib.import_module(package)
    roots = [Path(p) for p in getattr(module, "__path__", [])]
    found: dict[str, Path] = {}
    for root in roots:
        directory = root / folder
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    if not found:
        raise PluginError(
            f"package {package!r} has no {folder}/*.yaml",
            where=", ".join(str(r / folder) for r in roots) or package,
            hint="ship the YAML files as package data (see [tool.setuptools.package-data] in pyproject.toml)",
        )
    return found
