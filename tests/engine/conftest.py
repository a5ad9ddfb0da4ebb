from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hat.plugins import PluginHost, set_host

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def toy_engine_host() -> Iterator[PluginHost]:
    from tests.engine.toy_task import make_host

    host = make_host()
    previous = set_host(host)
    yield host
    set_host(previous)


def run_toy(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process, with the toy plugin loaded."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tests.engine.run_toy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
    )
