"""Folding BatchNorm into the conv (or linear) before it, and finding what to fuse.

On the device a conv, its BatchNorm and its ReLU are one int8 kernel, so the simulation
must quantize the folded conv's weights and the ReLU'd output, never the conv's raw
output. Patterns are found in two places: consecutive children of an ``nn.Sequential``
(Conv/Linear, then BatchNorm, then ReLU/ReLU6), and modules that name their own groups
through a ``hat_fuse_patterns()`` method returning child-name tuples such as
``[("conv", "bn", "act")]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHTED = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
ACTS = {torch.nn.ReLU: "relu", torch.nn.ReLU6: "relu6"}


class Fused(torch.nn.Identity):
    """Placeholder left where a folded BatchNorm or fused ReLU was."""


@dataclass
class FusedGroup:
    """A weighted module with its BatchNorm already folded in and its activation."""

    module: torch.nn.Module
    act: str | None


@torch.no_grad()
def fold_bn(module: torch.nn.Module, bn: torch.nn.modules.batchnorm._BatchNorm) -> torch.nn.Module:
    """Return ``module`` with ``bn`` folded into its weight and bias (eval statistics)."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    if isinstance(module, torch.nn.ConvTranspose2d):
        # weight [Cin, Cout / groups, k, k]: input channels of group g feed outputs g * Cout/groups + j.
        cin, cout_per_group = module.weight.shape[:2]
        groups = module.groups
        per_weight = factor.reshape(groups, 1, cout_per_group).expand(groups, cin // groups, cout_per_group)
        folded = module.weight * per_weight.reshape(cin, cout_per_group, 1, 1)
    else:
        shape = [1] * module.weight.dim()
        shape[0] = -1
        folded = module.weight * factor.reshape(shape)
    bias = module.bias if module.bias is not None else torch.zeros_like(bn.running_mean)
    # New Parameters rather than in-place updates: a conv whose weights are tied to other
    # convs (one set of weights, a BatchNorm per use) gets its own folded copy.
    module.weight = torch.nn.Parameter(folded.detach().clone())
    module.bias = torch.nn.Parameter(((bias - bn.running_mean) * factor + shift).detach().clone())
    return module


def _fuse_run(parent: torch.nn.Module, names: list[str]) -> FusedGroup | None:
    """Fuse ``names`` (weighted [, norm] [, act]) inside ``parent``; None if no match."""
    modules = [getattr(parent, n) for n in names]
    if not modules or not isinstance(modules[0], WEIGHTED):
        return None
    head, act = modules[0], None
    rest = list(zip(names[1:], modules[1:], strict=True))
    if rest and isinstance(rest[0][1], NORMS):
        fold_bn(head, rest[0][1])
        setattr(parent, rest[0][0], Fused())
        rest = rest[1:]
    if rest and type(rest[0][1]) in ACTS:
        act = ACTS[type(rest[0][1])]
        setattr(parent, rest[0][0], Fused())
    return FusedGroup(head, act)


def find_and_fuse(model: torch.nn.Module) -> dict[int, FusedGroup]:
    """Fold BN and mark activations everywhere; returns id(weighted module) -> group."""
    groups: dict[int, FusedGroup] = {}
    for parent in list(model.modules()):
        declared = getattr(parent, "hat_fuse_patterns", None)
        if callable(declared):
            for pattern in declared():
                group = _fuse_run(parent, list(pattern))
                if group is not None:
                    groups[id(group.module)] = group
        if isinstance(parent, torch.nn.Sequential):
            names = list(parent._modules)
            i = 0
            while i < len(names):
                window = names[i : i + 3]
                group = _fuse_run(parent, window) if isinstance(parent._modules[names[i]], WEIGHTED) else None
                if group is not None and id(group.module) not in groups:
                    groups[id(group.module)] = group
                i += 1
    for module in model.modules():  # weighted modules outside any pattern: no BN, no act
        if isinstance(module, WEIGHTED) and id(module) not in groups:
            groups[id(module)] = FusedGroup(module, None)
    return groups
