"""hat-fcos3d's hook implementations (and nothing else)."""

from __future__ import annotations

from pathlib import Path

from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl
from hat.plugin_kit import package_configs

DEFAULT_CONFIG = "fcos3d_efficientnetb0_nuscenes"
TINY_CONFIG = "fcos3d_efficientnetb0_nuscenes-tiny"


def _demo_images(raw: Path) -> list[Path]:
    from hat_fcos3d.infer import demo_images

    return demo_images(raw, count=3)


def _demo_calib(raw: Path) -> dict[str, Path]:
    from hat_fcos3d.infer import demo_calib

    return demo_calib(raw)


@hookimpl
def hat_register(registry) -> None:
    registry.add_package("hat_fcos3d")


@hookimpl
def hat_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="fcos3d",
            summary="monocular 3D detection (nuScenes): EfficientNet-b0 + BiFPN + FCOS3D head, NDS/mAP by the devkit",
            default_config=DEFAULT_CONFIG,
            dataset="nuscenes",
            demo=DemoRecipe(
                config=TINY_CONFIG,
                dataset="nuscenes",
                metrics=("NDS", "mAP"),
                splits=("train", "val"),
                pack_options={"version": "v1.0-mini"},
                raw_root_key="nuscenes_root",
                infer_inputs=_demo_images,
                expected_seconds=1500,  # about 1525 s measured on 2 AVX2 cores
                infer_options=_demo_calib,
            ),
        )
    ]


@hookimpl
def hat_configs() -> dict[str, Path]:
    return package_configs("hat_fcos3d")
