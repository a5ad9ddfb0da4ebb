"""Bias correction at calibration (``qconfig_params.bias_correction``): the mean shift the
weights' rounding puts on each output channel is measured and added back to the bias."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hat.quant import DeQuantStub, QuantStub
from hat.quant.qconfig import QConfig
from hat.testing import fixed_point


class Depthwise(nn.Module):
    """A 3x3 depthwise conv whose weights all round the same way: every tap but the largest
    sits 0.4 of a step above a code of its [-127, 127] grid (depthwise weights take the whole
    range on every target), so the rounding error has a mean, not just a spread."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.q = QuantStub()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.dq = DeQuantStub()
        step = 1.0 / 127
        with torch.no_grad():
            codes = torch.randint(-80, 80, self.conv.weight.shape).float()
            codes.view(channels, -1)[:, 0] = 127  # amax of exactly 127 steps: the scale is `step`
            self.conv.weight.copy_((codes + 0.4 * (codes != 127)) * step)
            self.conv.bias.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dq(self.conv(self.q(x)))


def _mean_error(qconfig_params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Depthwise()
    calibration = [torch.rand(4, 4, 16, 16) + 0.5 for _ in range(4)]  # positive inputs: the shift adds up
    example = torch.rand(8, 4, 16, 16) + 0.5
    with torch.no_grad():
        reference = model(example)
    qmodel, _, simulated = fixed_point(model, calibration, example, qconfig_params)
    return (simulated - reference).mean(dim=(0, 2, 3)), qmodel.conv.module.bias.detach()


def test_bias_correction_removes_the_rounding_shift() -> None:
    plain, plain_bias = _mean_error({"deploy_target": "portable"})
    corrected, corrected_bias = _mean_error({"deploy_target": "portable", "bias_correction": True})
    # Without it every channel is shifted down by ~ 8 taps * 0.4 step * mean input (1.0): ~0.025.
    assert (plain < -0.015).all(), plain
    # With it what is left is the activation grids' rounding, which has no such mean.
    assert corrected.abs().max() < 0.25 * plain.abs().min(), (plain, corrected)
    assert not torch.allclose(plain_bias, corrected_bias)


def test_off_by_default_and_leaves_the_bias_alone() -> None:
    torch.manual_seed(0)
    before = Depthwise().conv.bias.detach().clone()
    _, bias = _mean_error({})
    assert torch.equal(bias, before)
    assert QConfig.from_params({}).bias_correction is False


def test_a_non_boolean_value_is_refused() -> None:
    with pytest.raises(ValueError, match="bias_correction must be true or false"):
        QConfig.from_params({"bias_correction": "yes"})
