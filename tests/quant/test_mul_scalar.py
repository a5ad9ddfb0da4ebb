"""FloatFunctional.mul_scalar: a product with a learned constant that stays int8 on the device."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from hat.deploy import OnnxRuntimeBackend, export_onnx
from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant import qmodules as Q
from hat.quant.fake_quant import fake_quant_scalar, qparams_of
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig


class Scaled(nn.Module):
    """A conv whose output is multiplied by a learned scalar, then added to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.weight = nn.Parameter(torch.tensor(0.37))
        self.scale = FloatFunctional()
        self.skip = FloatFunctional()
        self.dequant = DeQuantStub()

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.quant(data["img"])
        return self.dequant(self.skip.add(x, self.scale.mul_scalar(self.conv(x), self.weight)))


def batch(seed: int, n: int = 2) -> dict[str, torch.Tensor]:
    return {"img": torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))}


def calibrated() -> nn.Module:
    torch.manual_seed(0)
    qmodel, report = convert(Scaled().eval(), QConfig())
    assert report.left_float == [] and isinstance(qmodel.scale, Q.QFunctional)
    with torch.no_grad(), calibration_mode(qmodel):
        for seed in range(3):
            qmodel(batch(seed))
    return qmodel


def test_float_mul_scalar_is_a_product_with_a_gradient() -> None:
    x, w = torch.randn(2, 3), torch.tensor([0.5], requires_grad=True)
    y = FloatFunctional().mul_scalar(x, w)
    torch.testing.assert_close(y, x * 0.5)
    y.sum().backward()
    torch.testing.assert_close(w.grad, x.sum().reshape(1))
    with pytest.raises(ValueError, match="one-element tensor"):
        FloatFunctional().mul_scalar(x, torch.ones(2))


@pytest.mark.parametrize("value", [0.37, -1.7, 1e-3, 0.0, 250.0])
def test_the_scalar_grid_holds_the_value_exactly(value: float) -> None:
    w = torch.tensor(value, requires_grad=True)
    q = fake_quant_scalar(w)
    torch.testing.assert_close(q, w, rtol=1e-6, atol=0.0)
    q.backward()
    assert float(w.grad) == 1.0  # straight through


def test_quantized_mul_scalar_requantizes_the_product() -> None:
    qmodel = calibrated()
    x = qmodel.conv(qmodel.quant(batch(9)["img"]))
    with torch.no_grad():
        y = qmodel.scale.mul_scalar(x, qmodel.weight)
    params = qparams_of(y)
    assert params is not None and params.scale == pytest.approx(float(qmodel.scale.out_quant.scale))
    codes = y / params.scale
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    torch.testing.assert_close(y, x * 0.37, atol=params.scale / 2 + 1e-6, rtol=0)


def test_qat_gradient_reaches_the_scalar() -> None:
    qmodel = calibrated().train()
    qmodel(batch(5)).pow(2).sum().backward()
    assert qmodel.weight.grad is not None and float(qmodel.weight.grad.abs()) > 0


def test_exports_as_an_int8_mul(tmp_path: Path) -> None:
    qmodel = calibrated()
    x = batch(7, n=1)
    with torch.no_grad():
        qmodel(x)
        freeze(qmodel)
    path = tmp_path / "scaled.onnx"
    export_onnx(qmodel, x, path)
    optimized = onnx.load(str(OnnxRuntimeBackend().compile(path, 2, tmp_path / "scaled.opt2.onnx")))
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert ops["QLinearMul"] == 1 and ops["QLinearAdd"] == 1 and ops["QLinearConv"] == 1
    assert not {"Mul", "Add", "Conv"} & set(ops), ops
