"""hat-keypoint's hook implementations (and nothing else)."""

from __future__ import annotations

from pathlib import Path

from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl
from hat.plugin_kit import package_configs

DEFAULT_CONFIG = "keypoint_efficientnetb0_carfusion"
TINY_CONFIG = "keypoint_efficientnetb0_carfusion-tiny"


def _demo_images(raw: Path) -> list[Path]:
    """A few test crops for `hat infer` (the model takes one car crop per image)."""
    from hat_keypoint.infer import demo_crops

    return demo_crops(raw, count=3)


@hookimpl
def hat_register(registry) -> None:
    registry.add_package("hat_keypoint")


@hookimpl
def hat_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="keypoint",
            summary="car keypoints (CarFusion): EfficientNet-b0 + deconv heatmaps, PCK@0.1",
            default_config=DEFAULT_CONFIG,
            dataset="carfusion",
            demo=DemoRecipe(
                config=TINY_CONFIG,
                dataset="carfusion",
                metrics=("PCK@0.1", "MeanKeypointDist"),
                splits=("train", "test"),
                # 720 training crops (240 frames of 3 cars) rather than the generator's default 240
                synth_options={"num_sequences": 6, "cars_per_frame": 3},
                infer_inputs=_demo_images,
                expected_seconds=150,  # 84 s (VNNI) to 212 s (AVX2 only) measured on 2 cores
            ),
        )
    ]


@hookimpl
def hat_configs() -> dict[str, Path]:
    return package_configs("hat_keypoint")


@hookimpl
def hat_packers() -> dict[str, type]:
    from hat_keypoint.packer import CarfusionPacker

    return {"carfusion": CarfusionPacker}


@hookimpl
def hat_synth() -> dict[str, object]:
    from hat_keypoint.synth import generate_carfusion

    return {"carfusion": generate_carfusion}
