"""Core's own plugin: what every HAT install has, registered through the same hooks.

Torch classes are registered by their own names so that configs can say
``type: AdamW``, ``type: CosineAnnealingLR`` or ``type: DataLoader``.
"""

from __future__ import annotations

import inspect

import torch

from hat.hookspecs import hookimpl


def _torch_types() -> list[tuple[str, type]]:
    found: list[tuple[str, type]] = []
    for name, obj in vars(torch.optim).items():
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            found.append((name, obj))
    schedulers = torch.optim.lr_scheduler
    for name, obj in vars(schedulers).items():
        if (
            inspect.isclass(obj)
            and issubclass(obj, schedulers.LRScheduler)
            and obj is not schedulers.LRScheduler
            and not name.startswith("_")
        ):
            found.append((name, obj))
    data = torch.utils.data
    for obj in (data.DataLoader, data.DistributedSampler, data.RandomSampler, data.SequentialSampler):
        found.append((obj.__name__, obj))
    return found


#: Core's packages whose marked types every install has (the plugin host, the CLI and
#: the use cases register none; ``ops`` holds plain functions).
REGISTERED_PACKAGES = ("hat.data", "hat.models", "hat.quant", "hat.engine", "hat.nuscenes")


@hookimpl
def hat_register(registry) -> None:
    for name, obj in _torch_types():
        registry.add(obj, name)
    for package in REGISTERED_PACKAGES:
        registry.add_package(package)


@hookimpl
def hat_quant_backends():
    from hat.quant.backend import builtin_backends

    return builtin_backends()


@hookimpl
def hat_compile_backends():
    from hat.deploy.compile_backend import builtin_compile_backends

    return builtin_compile_backends()


@hookimpl
def hat_packers():
    # The packer and generator modules import without nuscenes-devkit; they ask for it
    # (and say how to install it) only when they run.
    from hat.nuscenes.packer import NuscenesPacker

    return {NuscenesPacker.dataset: NuscenesPacker}


@hookimpl
def hat_synth():
    from hat.nuscenes.synth import generate_nuscenes

    return {"nuscenes": generate_nuscenes}


@hookimpl
def hat_configs():
    # hat_stages: the stage protocol every task config starts from (``_base_: hat_stages``).
    from hat.plugin_kit import package_configs

    return package_configs("hat")
