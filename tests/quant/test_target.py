"""Deploy targets: the weight range each one quantizes to, and where the choice is made."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hat.engine.converters import ConvertContext
from hat.errors import ConfigError
from hat.quant import DeQuantStub, QuantStub
from hat.quant import qmodules as Q
from hat.quant.converters import Float2Calibration
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig
from hat.quant.target import DEFAULT_TARGET, TARGETS, get_target, is_depthwise, target_name_of


class DenseAndDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU())
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8, 4)
        self.dq = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.depthwise(self.dense(self.q(x))))
        return self.dq(self.fc(x.mean(dim=(2, 3))))


def _codes(module: Q.QModule) -> torch.Tensor:
    """The integer weight codes of a frozen quantized module."""
    scale = module.weight_quant.scale
    shape = [1] * module.frozen_weight.dim()
    shape[module.weight_quant.axis] = -1
    return torch.round(module.frozen_weight / scale.reshape(shape))


def _frozen(target: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = convert(DenseAndDepthwise(), QConfig.from_params({"deploy_target": target}))
    with torch.no_grad(), calibration_mode(model):
        model(torch.randn(2, 3, 8, 8))
    model(torch.randn(2, 3, 8, 8))
    return freeze(model)


def test_the_default_target_is_portable() -> None:
    assert DEFAULT_TARGET == "portable" and get_target(None).name == "portable"
    assert QConfig().target.name == "portable"
    assert target_name_of({}) == "portable" and target_name_of({"deploy_target": "vnni"}) == "vnni"


@pytest.mark.parametrize(("target", "dense_max"), [("portable", 64), ("vnni", 127)])
def test_dense_weights_use_the_targets_range_and_depthwise_keeps_the_full_one(target: str, dense_max: int) -> None:
    model = _frozen(target)
    for name in ("dense.0", "grouped", "fc"):
        codes = _codes(model.get_submodule(name))
        assert codes.abs().max() == dense_max, name  # every channel's largest weight lands on the edge
        assert codes.abs().amax(dim=tuple(range(1, codes.dim()))).eq(dense_max).all(), name
    depthwise = model.depthwise[0]
    assert _codes(depthwise).abs().max() == 127


def test_depthwise_means_one_input_and_one_output_channel_per_group() -> None:
    assert is_depthwise(nn.Conv2d(8, 8, 3, groups=8))
    assert not is_depthwise(nn.Conv2d(8, 16, 3, groups=8))  # channel multiplier 2: a GEMM per group
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=2))
    assert not is_depthwise(nn.Linear(8, 8))


def test_weights_that_grow_past_a_frozen_scale_stay_in_the_range() -> None:
    quant = Q.WeightFakeQuant(2, averaging_constant=0.0, qmax=64)
    weight = torch.tensor([[1.0, -0.5], [0.25, 0.1]])
    quant.reset_scale(weight)
    grown = quant(weight * 3) / quant.scale.reshape(-1, 1)
    assert grown.abs().max() == 64


def test_an_unknown_target_names_the_choices() -> None:
    with pytest.raises(ValueError, match="portable, vnni"):
        get_target("avx9")
    with pytest.raises(ValueError, match="deploy_target"):
        QConfig.from_params({"deploy_target": "avx9"})


def test_the_target_comes_from_the_top_level_of_the_config() -> None:
    convert_to = Float2Calibration()
    model = convert_to(DenseAndDepthwise(), ConvertContext(stage="calibration", deploy_target="vnni"))
    assert model.dense[0].weight_quant.qmax == TARGETS["vnni"].dense_weight_max
    model = convert_to(DenseAndDepthwise(), ConvertContext(stage="calibration"))
    assert model.dense[0].weight_quant.qmax == TARGETS["portable"].dense_weight_max
    with pytest.raises(ConfigError, match="top level"):
        convert_to(DenseAndDepthwise(), ConvertContext(stage="calibration", qconfig_params={"deploy_target": "vnni"}))
