"""Sessions: `nox` runs lint, the whole test suite, and isolated installs of core and of each plugin.

Every session installs with constraints.txt, which pins the local CPU build of torch
and numpy<2; without the pins pip would pull gigabytes of CUDA packages.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("hat-*") if (p / "pyproject.toml").is_file())

nox.options.sessions = ["lint", "tests", "core_alone", "plugin_alone"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Core and every plugin installed (editable), then the whole pytest suite."""
    editable = [arg for plugin in PLUGINS for arg in ("-e", str(plugin))]
    session.install(*CONSTRAINTS, "-e", str(ROOT / "core"), *editable, "pytest")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", str(ROOT))


@nox.session
def core_alone(session: nox.Session) -> None:
    """hat-core installed alone in a fresh venv: `hat list` works and shows no plugins."""
    session.install(*CONSTRAINTS, str(ROOT / "core"))
    session.run("hat", "--version")
    session.run("hat", "list")
    session.run(
        "python",
        "-c",
        "import json, subprocess;"
        "listing = json.loads(subprocess.run(['hat', 'list', '--json'], check=True, capture_output=True).stdout);"
        "assert [p['distribution'] for p in listing['plugins']] == ['hat-core'], listing['plugins'];"
        "assert listing['tasks'] == [], listing['tasks'];"
        "print('hat-core alone: ok')",
    )


@nox.session
@nox.parametrize("plugin", [p.name for p in PLUGINS])
def plugin_alone(session: nox.Session, plugin: str) -> None:
    """hat-core plus one plugin in a fresh venv: the plugin's task and dataset show in `hat list`."""
    session.install(*CONSTRAINTS, str(ROOT / "core"), str(ROOT / "plugins" / plugin))
    session.run(
        "python",
        "-c",
        "import json, subprocess, sys;"
        "listing = json.loads(subprocess.run(['hat', 'list', '--json'], check=True, capture_output=True).stdout);"
        "dists = sorted(p['distribution'] for p in listing['plugins']);"
        f"assert dists == sorted(['hat-core', '{plugin}']), dists;"
        # its own contributions (core adds nuscenes)
        f"tasks = [t['name'] for t in listing['tasks'] if t['plugin'] == '{plugin}'];"
        f"datasets = [d['name'] for d in listing['datasets'] if d['plugin'] == '{plugin}'];"
        "assert tasks, 'the plugin registers no task';"
        "print('tasks:', tasks, 'datasets:', datasets)",
    )
