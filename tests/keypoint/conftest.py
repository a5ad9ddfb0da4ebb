"""A plugin host with hat-keypoint alone (no installed entry points), for tests that build its configs."""

from __future__ import annotations

from hat.testing import host_fixture

keypoint_host = host_fixture("hat_keypoint.plugin", "hat-keypoint")
