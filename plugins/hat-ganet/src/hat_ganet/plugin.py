"""hat-ganet's hook implementations (and nothing else)."""

from __future__ import annotations

from pathlib import Path

from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl
from hat.plugin_kit import package_configs

DEFAULT_CONFIG = "ganet_mixvargenet_culane"
TINY_CONFIG = "ganet_mixvargenet_culane-tiny"


def _demo_frames(raw: Path) -> list[Path]:
    from hat_ganet.infer import demo_frames

    return demo_frames(raw, count=3)


@hookimpl
def hat_register(registry) -> None:
    registry.add_package("hat_ganet")


@hookimpl
def hat_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="ganet",
            summary="lane detection (CULane): MixVarGENet + attention/FPN + GANet keypoint head, CULane F1",
            default_config=DEFAULT_CONFIG,
            dataset="culane",
            demo=DemoRecipe(
                config=TINY_CONFIG,
                dataset="culane",
                metrics=("F1", "precision", "recall"),
                splits=("train", "test"),
                synth_options={"frames_per_video": 100},
                infer_inputs=_demo_frames,
                expected_seconds=600,
            ),
        )
    ]


@hookimpl
def hat_configs() -> dict[str, Path]:
    return package_configs("hat_ganet")


@hookimpl
def hat_packers() -> dict[str, type]:
    from hat_ganet.packer import CulanePacker

    return {"culane": CulanePacker}


@hookimpl
def hat_synth() -> dict[str, object]:
    from hat_ganet.synth import generate_culane

    return {"culane": generate_culane}
