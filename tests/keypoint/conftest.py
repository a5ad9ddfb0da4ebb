"""A plugin host with hat-keypoint alone (no installed entry points), for tests that build its configs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hat.plugins import PluginHost, set_host


@pytest.fixture()
def keypoint_host() -> Iterator[PluginHost]:
    import hat_keypoint.plugin as plugin

    host = PluginHost(entry_points=False, extra=[(plugin, "hat-keypoint")])
    previous = set_host(host)
    yield host
    set_host(previous)
