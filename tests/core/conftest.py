from __future__ import annotations

from collections.abc import Iterator

import pytest

from hat.plugins import PluginHost, set_host


@pytest.fixture()
def toy_host() -> Iterator[PluginHost]:
    """The process-wide host holds core plus the in-process toy plugin, nothing installed."""
    from tests.core.plugin_for_tests import DIST, ToyPlugin

    host = PluginHost(entry_points=False, extra=[(ToyPlugin(), DIST)])
    previous = set_host(host)
    yield host
    set_host(previous)
