"""convert(): fusion, the report, calibration, the frozen fixed-point model, biases."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hat.quant import DeQuantStub, QuantStub
from hat.quant import qmodules as Q
from hat.quant.fake_quant import ActFakeQuant
from hat.quant.fuse import Fused
from hat.quant.modes import calibration_mode
from hat.quant.observers import PercentileObserver
from hat.quant.prepare import convert, freeze, quantizers
from hat.quant.qconfig import QConfig
from tests.quant.nets import make_net, randomize_bn

SIZE = 16


def batch(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def calibrate(model: nn.Module, batches: int = 3) -> None:
    with torch.no_grad(), calibration_mode(model):
        for i in range(batches):
            model(batch(100 + i))


@pytest.fixture()
def converted():
    float_model = make_net(size=SIZE)
    qmodel, report = convert(copy.deepcopy(float_model), QConfig())
    return float_model, qmodel.eval(), report


def int8_part(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Net.forward up to the DeQuantStub (before the float SiLU and LayerNorm)."""
    y = model.stem(model.q(x))
    y = model.add.add(y, model.b1(y))
    return model.dq(model.head(model.up(model.pool(y))))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def test_report_lists_float_ops_with_reasons(converted) -> None:
    _, _, report = converted
    left = {path: (kind, reason) for path, kind, reason in report.left_float}
    assert set(left) == {"act", "norm"}
    assert left["act"][0] == "SiLU" and "int8" in left["act"][1]
    assert left["norm"][0] == "LayerNorm" and "LayerNorm" in left["norm"][1]
    quantized = dict(report.quantized)
    assert quantized["stem.0"] == "Conv2d+relu"
    assert quantized["up.0"] == "ConvTranspose2d+relu"
    assert quantized["head"] == "Conv2d"
    assert "q" in quantized and "add" in quantized
    assert "SiLU" in report.summary() and "LayerNorm" in report.summary()


def test_structure_after_conversion(converted) -> None:
    _, qmodel, _ = converted
    for block in (qmodel.stem, qmodel.b1, qmodel.up):
        assert isinstance(block[1], Fused) and isinstance(block[2], Fused)
        assert block[0].act == "relu"
        assert block[0].out_quant.unsigned
        assert int(block[0].out_quant.zero_point) == -128
    assert isinstance(qmodel.stem[0], Q.QConv2d)
    assert isinstance(qmodel.up[0], Q.QConvTranspose2d)
    assert isinstance(qmodel.head, Q.QConv2d) and not qmodel.head.out_quant.unsigned
    assert isinstance(qmodel.q, Q.QuantInput) and not qmodel.q.quant.unsigned
    assert isinstance(qmodel.add, Q.QFunctional)
    assert isinstance(qmodel.pool, Q.QTransparent)
    assert isinstance(qmodel.dq, Q.QDequant)
    assert isinstance(qmodel.act, nn.SiLU) and isinstance(qmodel.norm, nn.LayerNorm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())
    assert len(quantizers(qmodel)) == 6  # q, stem, b1, add, up, head


def test_uncalibrated_model_matches_float_up_to_weight_rounding(converted) -> None:
    float_model, qmodel, _ = converted
    x = batch(0)
    with torch.no_grad():
        assert rel_error(qmodel(x), float_model(x)) < 0.02


def test_calibrated_simulation_is_close_to_float(converted) -> None:
    float_model, qmodel, _ = converted
    calibrate(qmodel)
    assert all(bool(q.calibrated) for q in quantizers(qmodel))
    x = batch(0)
    with torch.no_grad():
        ref = float_model(x)
        sim = qmodel(x)
        before_float_ops = int8_part(qmodel, x)
        assert rel_error(before_float_ops, int8_part(float_model, x)) < 0.03
    assert not torch.equal(sim, ref)  # it does quantize
    assert rel_error(sim, ref) < 0.03
    # The head output (before the float ops) is on its quantizer's grid.
    head = qmodel.head.out_quant
    codes = before_float_ops / head.scale
    assert torch.allclose(codes, codes.round(), atol=1e-3)


def test_fused_relu_output_is_non_negative_on_unsigned_grid(converted) -> None:
    _, qmodel, _ = converted
    calibrate(qmodel)
    with torch.no_grad():
        y = qmodel.stem(qmodel.q(batch(0)))
    quant = qmodel.stem[0].out_quant
    assert float(y.min()) == 0.0
    codes = y / quant.scale - 128
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert float(codes.max()) <= 127 + 1e-3


def test_freeze_equals_unfrozen_simulation(converted) -> None:
    _, qmodel, _ = converted
    calibrate(qmodel)
    x = batch(0)
    with torch.no_grad():
        sim = qmodel(x)
        frozen = freeze(qmodel)
        assert frozen is qmodel and not frozen.training
        out = frozen(x)
    # the transposed conv runs as one 2x2 conv per output phase + depth-to-space
    assert frozen.up[0].phases == [(1, 0, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1), (0, 1, 0, 1)]
    assert all(getattr(frozen.up[0], f"phase_weight_{i}").shape == (8, 8, 2, 2) for i in range(4))
    assert torch.equal(out, sim)
    with torch.no_grad():  # frozen scales: another batch does not move them, still deterministic
        assert torch.equal(frozen(batch(5)), frozen(batch(5)))


def test_freeze_before_calibration_names_a_quantizer(converted) -> None:
    _, qmodel, _ = converted
    with pytest.raises(ValueError, match=r"never calibrated, e\.g\. .*(quant|out_quant)"):
        freeze(qmodel)


def test_converting_twice_raises(converted) -> None:
    _, qmodel, _ = converted
    with pytest.raises(ValueError, match="already quantized"):
        convert(qmodel, QConfig())


def test_observer_choice_reaches_every_quantizer() -> None:
    qconfig = QConfig.from_params(
        {"activation_calibration_observer": "percentile", "activation_calibration_qkwargs": {"percentile": 99.5}}
    )
    qmodel, _ = convert(make_net(size=SIZE), qconfig)
    observers = [q.observer for q in quantizers(qmodel)]
    assert observers and all(isinstance(o, PercentileObserver) and o.percentile == 99.5 for o in observers)
    calibrate(qmodel)
    x = batch(0)
    with torch.no_grad():
        sim = qmodel(x)
        assert torch.equal(freeze(qmodel)(x), sim)


def test_unknown_leaf_modules_are_reported_float() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = QuantStub()
            self.conv1d = nn.Conv1d(3, 3, 1)
            self.tanh = nn.Tanh()
            self.dq = DeQuantStub()

        def forward(self, x):
            return self.dq(self.tanh(self.conv1d(self.q(x))))

    _, report = convert(M(), QConfig())
    assert {(p, k) for p, k, _ in report.left_float} == {("conv1d", "Conv1d"), ("tanh", "Tanh")}


# -- biases on the int32 grid -----------------------------------------------------------------


def assert_bias_on_grid(module: Q._Weighted, input_quant: ActFakeQuant) -> None:
    assert float(module.input_scale) == pytest.approx(float(input_quant.scale))
    step = module.input_scale * module._bias_scale()
    codes = module.frozen_bias.double() / step.double()
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert not torch.equal(module.frozen_bias, module.module.bias.detach())  # it was rounded
    assert ((module.frozen_bias - module.module.bias).abs() <= step / 2 + 1e-7).all()


def test_bias_lies_on_input_times_weight_scale_grid(converted) -> None:
    _, qmodel, _ = converted
    calibrate(qmodel)
    with torch.no_grad():
        qmodel(batch(0))
    freeze(qmodel)
    assert_bias_on_grid(qmodel.stem[0], qmodel.q.quant)  # folded BN gave it a bias
    assert_bias_on_grid(qmodel.b1[0], qmodel.stem[0].out_quant)
    assert_bias_on_grid(qmodel.up[0], qmodel.add.out_quant)  # through the max-pool, same grid
    assert_bias_on_grid(qmodel.head, qmodel.up[0].out_quant)


def test_bias_stays_float_without_a_quantized_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    qmodel, _ = convert(model, QConfig())
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        qmodel(torch.randn(2, 3, 8, 8))
    freeze(qmodel)
    assert float(qmodel[0].input_scale) == 0.0
    assert torch.equal(qmodel[0].frozen_bias, qmodel[0].module.bias.detach())


# -- transposed convs in the frozen model ------------------------------------------------------


class Up(nn.Module):
    def __init__(self, **deconv) -> None:
        super().__init__()
        self.q = QuantStub()
        self.up = nn.Sequential(nn.ConvTranspose2d(4, 6, **deconv), nn.BatchNorm2d(6), nn.ReLU())
        self.dq = DeQuantStub()

    def forward(self, x):
        return self.dq(self.up(self.q(x)))


@pytest.mark.parametrize(
    "deconv,rewritten",
    [
        ({"kernel_size": 4, "stride": 2, "padding": 1}, True),
        ({"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}, True),
        ({"kernel_size": 2, "stride": 2}, True),
        ({"kernel_size": 3, "stride": 2, "padding": 1}, False),
        ({"kernel_size": 4, "stride": 2, "padding": 1, "groups": 2}, False),
    ],
)
def test_frozen_transposed_conv_equals_simulation(deconv, rewritten: bool) -> None:
    torch.manual_seed(0)
    qmodel, report = convert(randomize_bn(Up(**deconv)).eval(), QConfig())
    assert any(p == "up.0" for p, _, _ in report.left_float) != rewritten  # non-rewritable ones are reported
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad(), calibration_mode(qmodel):
        qmodel(x)
    with torch.no_grad():
        sim = qmodel(x)
        out = freeze(qmodel)(x)
    assert qmodel.up[0].rewritten == rewritten
    step = float(qmodel.up[0].out_quant.scale)
    # Conv and transposed conv sum in different orders: at most a rare one-step flip.
    assert float((out - sim).abs().max()) <= step * 1.01
    assert float((out != sim).float().mean()) < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_frozen_model_moves_to_gpu(converted) -> None:
    """Freezing happens on the CPU (the convert pipeline), then the runner moves the model."""
    _, qmodel, _ = converted
    calibrate(qmodel)
    x = batch(0)
    with torch.no_grad():
        ref = int8_part(freeze(qmodel), x)
        out = int8_part(qmodel.cuda(), x.cuda()).cpu()
    assert float((out - ref).abs().max()) <= float(qmodel.head.out_quant.scale) * 1.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("observer", ["percentile", "mse"])
def test_histogram_calibration_on_gpu(observer: str) -> None:
    models = [convert(make_net(size=SIZE), QConfig(observer=observer))[0].eval() for _ in range(2)]
    models[1].cuda()
    for model in models:
        device = next(model.parameters()).device
        with torch.no_grad(), calibration_mode(model):
            for i in range(3):
                model(batch(100 + i).to(device) * (i + 1))  # a growing range: re-binning on the device
    for cpu, gpu in zip(quantizers(models[0]), quantizers(models[1]), strict=True):
        assert bool(gpu.calibrated)
        assert cpu.threshold() == pytest.approx(gpu.threshold(), rel=0.02)


@pytest.mark.parametrize("k,s,p,op", [(4, 2, 1, 0), (3, 2, 1, 1), (2, 2, 0, 0), (6, 3, 2, 1), (5, 3, 1, 0)])
def test_phase_convs_equal_the_transposed_conv(k: int, s: int, p: int, op: int) -> None:
    torch.manual_seed(0)
    weight, bias, x = torch.randn(4, 5, k, k), torch.randn(5), torch.randn(1, 4, 6, 7)
    reference = torch.nn.functional.conv_transpose2d(x, weight, bias, s, p, op)
    phases = Q.deconv_phases(weight, bias, s, p)
    assert phases is not None and len(phases) == s * s
    outs = [torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), w, b) for w, b, pads in phases]
    out = Q.interleave_phases(outs, s)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-5)
