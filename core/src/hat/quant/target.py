"""The deploy target: the integer arithmetic the exported model must run *exactly* on.

Why there is a choice at all. onnxruntime's x86 int8 GEMM kernels (every conv that is
not depthwise, every matmul and Gemm) multiply uint8 activations by int8 weights. On a
CPU without VNNI they do it with ``vpmaddubsw``, which adds each pair of adjacent
products in a *saturating* 16-bit lane before widening to 32 bits: 255 * 127 * 2 =
64770 does not fit in 32767, so a full-range weight pair silently clips. With VNNI
(``vpdpbusd``: AVX512-VNNI, AVX-VNNI, AMX) the products are summed in 32 bits, exactly.
The torch simulation that calibration and QAT optimise is exact integer arithmetic, so
a model is only deployed as trained where the kernel is exact too.

- ``portable`` (the default): dense conv / matmul weights on [-64, 64]. No pair of
  adjacent products can exceed 255 * 64 * 2 = 32640 <= 32767, so the same model gives
  the same answer on every x86 CPU onnxruntime runs on, VNNI or not. This is the same
  limit onnxruntime's own quantizer applies with ``reduce_range`` for non-VNNI machines.
  It costs one bit of weight resolution and no speed (the same kernels run). Measured on
  an AVX2-only AMD EPYC (see ``benchmarks/README.md``): exact agreement at opt 3, where
  the full range gave 40-80% of outputs within one step on a random conv.
- ``vnni``: the full int8 weight range [-127, 127]; exact only where onnxruntime uses a
  VNNI kernel. An explicit choice (``--set deploy_target=vnni``) for machines known to
  have it; ``hat compile`` and ``hat validate`` warn when this machine does not.

Depthwise convs (one input and one output channel per group) keep the full range on
every target: onnxruntime runs them through a separate kernel that widens input and
weight to 16 bits and accumulates the products in 32 bits, which cannot saturate
(measured exact at the full range on the AVX2-only machine, and tested).

The alternatives measured before choosing (``benchmarks/target_choice.py``, table in
``benchmarks/README.md``): uint8 weights (U8U8, which onnxruntime's session option
``session.x64quantprecision`` also switches to at load time) are exact on every CPU but
run at 0.97-1.35x of float where the portable model runs at 1.29-2.13x; int8 activations
(S8S8) are mostly not fused into int8 kernels by onnxruntime's x86 provider, slower than
float, and saturate where they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: The top-level config key that names the target.
CONFIG_KEY = "deploy_target"
#: The largest sum of two adjacent u8 x s8 products a non-VNNI kernel holds exactly.
INT16_MAX = 32767
#: The largest uint8 activation code.
UINT8_MAX = 255


@dataclass(frozen=True)
class DeployTarget:
    """A named target and the weight range its dense int8 kernels run exactly."""

    name: str
    #: Largest |code| of a dense (non-depthwise) conv, matmul or Gemm weight.
    dense_weight_max: int
    #: Whether the model is exact only on a CPU whose onnxruntime uses VNNI kernels.
    needs_vnni: bool
    summary: str

    def weight_max(self, module: torch.nn.Module) -> int:
        """The largest weight code ``module`` may use on this target."""
        return 127 if is_depthwise(module) else self.dense_weight_max

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dense_weight_range": [-self.dense_weight_max, self.dense_weight_max],
            "depthwise_weight_range": [-127, 127],
            "needs_vnni": self.needs_vnni,
            "summary": self.summary,
        }


TARGETS: dict[str, DeployTarget] = {
    "portable": DeployTarget(
        "portable",
        64,
        False,
        "exact on every x86 CPU (VNNI or not): conv/matmul weights on [-64, 64], depthwise on [-127, 127]",
    ),
    "vnni": DeployTarget(
        "vnni",
        127,
        True,
        "full int8 weights [-127, 127]: exact only where onnxruntime uses VNNI kernels "
        "(AVX512-VNNI, AVX-VNNI or AMX); pairs of products saturate on AVX2-only CPUs",
    ),
}
DEFAULT_TARGET = "portable"


def get_target(name: str | None) -> DeployTarget:
    """The target called ``name`` (None: the portable default); ValueError names the choices."""
    chosen = DEFAULT_TARGET if name is None else str(name)
    if chosen not in TARGETS:
        raise ValueError(f"unknown {CONFIG_KEY} {chosen!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[chosen]


def target_name_of(config: Mapping[str, Any] | None) -> str:
    """The target a resolved config asks for (its top-level ``deploy_target``, else the default)."""
    value = (config or {}).get(CONFIG_KEY)
    return DEFAULT_TARGET if value is None else str(value)


def is_depthwise(module: torch.nn.Module) -> bool:
    """One input and one output channel per group: onnxruntime's exact depthwise kernel."""
    if not isinstance(module, torch.nn.Conv2d):
        return False
    return module.groups > 1 and module.in_channels == module.groups and module.out_channels == module.groups
