"""Fixtures shared by several test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hat.plugins import PluginHost
from hat.testing import use_host


@pytest.fixture()
def toy_engine_host() -> Iterator[PluginHost]:
    from tests.engine.toy_task import DIST, ToyEnginePlugin

    with use_host((ToyEnginePlugin(), DIST)) as host:
        yield host
