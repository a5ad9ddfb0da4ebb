"""hat-fcos3d meets the plugin contract, as hat.testing.check_plugin checks it."""

from __future__ import annotations

from hat.testing import check_plugin, host_fixture

fcos3d_only_host = host_fixture("hat_fcos3d.plugin", "hat-fcos3d")


def test_fcos3d_plugin_conforms(fcos3d_only_host) -> None:
    report = check_plugin("hat_fcos3d.plugin", "hat-fcos3d", host=fcos3d_only_host)
    assert set(report.configs) == {"fcos3d_efficientnetb0_nuscenes", "fcos3d_efficientnetb0_nuscenes-tiny"}
    for outputs in report.deploy_models.values():
        assert outputs, "the deploy model returns named outputs"
    assert {"FCOS3D", "FCOS3DPostProcess"} <= set(report.registered)
