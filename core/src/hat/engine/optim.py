"""Optimizers by torch name, with per-parameter-name groups.

``optimizer: {type: AdamW, lr: 1e-3, weight_decay: 5e-2, params: {bn: {weight_decay: 0},
backbone: {lr_mult: 0.1}}}``: each key of ``params`` selects the parameters whose name
contains it (the first matching key in config order wins) and overrides their options;
``lr_mult`` scales the base ``lr``. Everything else forms the default group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hat.errors import ConfigError
from hat.registry import Registry


def build_optimizer(
    cfg: Mapping[str, Any], model: torch.nn.Module, registry: Registry, *, path: str = "optimizer", locate=None
) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    rules = cfg.pop("params", None) or {}
    if not isinstance(rules, Mapping):
        raise ConfigError(f"{path}.params must map name patterns to options", where=locate(path) if locate else None)
    base_lr = cfg.get("lr")
    groups: dict[str, dict[str, Any]] = {key: {"params": [], **dict(opts or {})} for key, opts in rules.items()}
    default: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = next((k for k in rules if k in name), None)
        (groups[key]["params"] if key is not None else default).append(param)
    param_groups: list[dict[str, Any]] = []
    if default:
        param_groups.append({"params": default})
    for key, group in groups.items():
        if not group["params"]:
            continue  # a rule that matches nothing is harmless (e.g. no BN in this model)
        mult = group.pop("lr_mult", None)
        if mult is not None:
            if base_lr is None:
                raise ConfigError(
                    f"{path}.params.{key}.lr_mult needs {path}.lr", where=locate(path) if locate else None
                )
            group["lr"] = base_lr * mult
        param_groups.append(group)
    return registry.build(cfg, path=path, locate=locate, params=param_groups)
