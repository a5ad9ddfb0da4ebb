"""A plugin host with hat-ganet alone (no installed entry points), for tests that build its configs."""

from __future__ import annotations

from hat.testing import host_fixture

ganet_host = host_fixture("hat_ganet.plugin", "hat-ganet")
ganet_module_host = host_fixture("hat_ganet.plugin", "hat-ganet", scope="module")
