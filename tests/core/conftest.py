from __future__ import annotations

from collections.abc import Iterator

import pytest

from hat.plugins import PluginHost
from hat.testing import use_host


@pytest.fixture()
def toy_host() -> Iterator[PluginHost]:
    """The process-wide host holds core plus the in-process toy plugin, nothing installed."""
    from tests.core.plugin_for_tests import DIST, ToyPlugin

    with use_host((ToyPlugin(), DIST)) as host:
        yield host
