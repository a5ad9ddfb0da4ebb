"""The model as it will be deployed, and the inputs it is measured and exported with.

Configs name a ``deploy_model`` (the network without losses or post-processing; the
training ``model`` when absent) and ``deploy_inputs``, a map of input name -> shape at
batch 1 (e.g. ``img: [1, 3, 128, 128]``). `hat calops` measures them; export traces them.
"""

from __future__ import annotations

from typing import Any

import torch

from hat.config import Config
from hat.errors import ConfigError
from hat.registry import Registry


def deploy_inputs(config: Config) -> dict[str, torch.Tensor]:
    spec = config.get("deploy_inputs")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"config {config.name} has no deploy_inputs",
            where=str(config.path),
            hint="add e.g. `deploy_inputs: {img: [1, 3, 128, 128]}` (input name -> shape at batch 1)",
        )
    inputs: dict[str, torch.Tensor] = {}
    for name, shape in spec.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(
                f"deploy_inputs.{name} must be a list of positive integers, got {shape!r}",
                where=config.locate(f"deploy_inputs.{name}"),
            )
        inputs[str(name)] = torch.zeros(shape)
    return inputs


def build_deploy_model(config: Config, registry: Registry) -> tuple[torch.nn.Module, dict[str, Any]]:
    key = "deploy_model" if "deploy_model" in config else "model"
    if key not in config:
        raise ConfigError(f"config {config.name} has no model or deploy_model", where=str(config.path))
    model = registry.build(config[key], path=key, locate=config.locate)
    return model.eval(), deploy_inputs(config)
