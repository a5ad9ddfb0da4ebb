"""hat-keypoint meets the plugin contract, as hat.testing.check_plugin checks it."""

from __future__ import annotations

from hat.testing import check_plugin


def test_keypoint_plugin_conforms(keypoint_host) -> None:
    report = check_plugin("hat_keypoint.plugin", "hat-keypoint", host=keypoint_host)
    assert set(report.configs) == {"keypoint_efficientnetb0_carfusion", "keypoint_efficientnetb0_carfusion-tiny"}
    # 12 heatmaps at a quarter of the deploy input (128 -> 32, tiny 64 -> 16)
    assert report.deploy_models["keypoint_efficientnetb0_carfusion"] == {"heatmap": (1, 12, 32, 32)}
    assert report.deploy_models["keypoint_efficientnetb0_carfusion-tiny"] == {"heatmap": (1, 12, 16, 16)}
    assert {"HeatmapKeypointModel", "CarfusionPackData", "PCKMetric"} <= set(report.registered)
