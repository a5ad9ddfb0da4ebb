"""What a model author writes to mark quantization boundaries.

A float model uses these as plain modules (they do nothing in float); the quantizer
replaces them: ``QuantStub`` becomes the input quantizer, ``DeQuantStub`` the point where
int8 ends, and each ``FloatFunctional`` a quantized add / mul / cat / matmul with its
own output quantizer. An op written as ``a + b`` in forward would stay float, silently;
writing ``self.skip_add.add(a, b)`` makes it int8 on the device and in the simulation.
Use one FloatFunctional per op site (each gets its own output scale). ``mul_scalar``
multiplies by a learned constant (a one-element tensor) rather than by an activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class QuantStub(torch.nn.Module):
    """Float -> int8 here (model inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DeQuantStub(torch.nn.Module):
    """int8 -> float here (model outputs, or before an op that must stay float)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FloatFunctional(torch.nn.Module):
    """Functional ops that the quantizer turns into int8 ops with an output scale."""

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mul(a, b)

    def mul_scalar(self, x: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        """``x`` times a one-element constant (a learned weight, not an activation).

        Unlike :meth:`mul`, whose operands are both activations, the quantized form
        puts ``scalar`` itself on an 8-bit grid (exactly), so the device sees an 8-bit
        constant and the product runs as an int8 mul.
        """
        return torch.mul(x, check_scalar(scalar))

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return torch.cat(list(tensors), dim=dim)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "call .add / .mul / .mul_scalar / .cat / .matmul on a FloatFunctional, not the module itself"
        )


def check_scalar(scalar: torch.Tensor) -> torch.Tensor:
    """``scalar`` itself if it is a one-element tensor (what ``mul_scalar`` accepts)."""
    if not isinstance(scalar, torch.Tensor) or scalar.numel() != 1:
        raise ValueError("mul_scalar takes a one-element tensor as its scalar")
    return scalar
