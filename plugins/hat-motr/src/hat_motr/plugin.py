"""hat-motr's hook implementations (and nothing else)."""

from __future__ import annotations

from pathlib import Path

from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl
from hat.plugin_kit import package_configs

DEFAULT_CONFIG = "motr_efficientnetb3_mot17"
TINY_CONFIG = "motr_efficientnetb3_mot17-tiny"


def _demo_frames(raw: Path) -> list[Path]:
    from hat_motr.infer import demo_frames

    return demo_frames(raw)


@hookimpl
def hat_register(registry) -> None:
    registry.add_package("hat_motr")


@hookimpl
def hat_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="motr",
            summary="multi-object tracking (MOT17): EfficientNet + transformer with track queries + QIM, MOTA/IDF1",
            default_config=DEFAULT_CONFIG,
            dataset="mot17",
            demo=DemoRecipe(
                config=TINY_CONFIG,
                dataset="mot17",
                metrics=("MOTA", "IDF1", "IDSW"),
                splits=("train", "val"),
                synth_options={},
                infer_inputs=_demo_frames,
                expected_seconds=780,
            ),
        )
    ]


@hookimpl
def hat_configs() -> dict[str, Path]:
    return package_configs("hat_motr")


@hookimpl
def hat_packers() -> dict[str, type]:
    from hat_motr.packer import Mot17Packer

    return {"mot17": Mot17Packer}


@hookimpl
def hat_synth() -> dict[str, object]:
    from hat_motr.synth import generate_mot17

    return {"mot17": generate_mot17}
