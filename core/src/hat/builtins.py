"""Core's own plugin: what every HAT install has, registered through the same hooks.

Torch classes are registered by their own names so that configs can say
``type: AdamW``, ``type: CosineAnnealingLR`` or ``type: DataLoader``.
"""

from __future__ import annotations

import inspect

import torch

from hat.plugins import hookimpl


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


@hookimpl
def hat_register(registry) -> None:
    from hat.data import collate, dataset, transforms
    from hat.engine import calibrator, converters, onnx_predictor, predictor, processors, trainer
    from hat.engine.callbacks import checkpoint, ema, freeze_bn, lr_updater, monitor, validation
    from hat.models import bifpn, efficientnet
    from hat.nuscenes import metric as nuscenes_metric
    from hat.quant import converters as quant_converters

    for name, obj in _torch_types():
        registry.add(obj, name)
    for module in (
        collate,
        dataset,
        transforms,
        trainer,
        calibrator,
        predictor,
        processors,
        converters,
        checkpoint,
        validation,
        monitor,
        lr_updater,
        ema,
        freeze_bn,
        quant_converters,
        efficientnet,
        bifpn,
        onnx_predictor,
        nuscenes_metric,
    ):
        registry.add_marked(module)


@hookimpl
def hat_quant_backends():
    from hat.quant.backend import TorchNativeBackend

    return {TorchNativeBackend.name: TorchNativeBackend}


@hookimpl
def hat_compile_backends():
    from hat.deploy.ort_backend import OnnxRuntimeBackend

    return {OnnxRuntimeBackend.name: OnnxRuntimeBackend}


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
