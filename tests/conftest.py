"""Fixtures shared by several test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hat.plugins import PluginHost, set_host


@pytest.fixture()
def toy_engine_host() -> Iterator[PluginHost]:
    from tests.engine.toy_task import make_host

    host = make_host()
    previous = set_host(host)
    yield host
    set_host(previous)
