"""Activation and weight fake quantizers."""

from __future__ import annotations

import pytest
import torch

from hat.quant.fake_quant import QMIN, ActFakeQuant, QParams, WeightFakeQuant, fake_quant, qparams_of, quantize_bias
from hat.quant.observers import MinMaxObserver


def calibrated(x: torch.Tensor, **kwargs) -> ActFakeQuant:
    q = ActFakeQuant(MinMaxObserver(), **kwargs)
    q.set_calibrating(True)
    q(x)
    q.set_calibrating(False)
    return q


def on_grid(y: torch.Tensor, q: ActFakeQuant) -> bool:
    codes = y / q.scale - q.zero_point
    return bool(torch.allclose(codes, codes.round(), atol=1e-3))


def test_symmetric_scale_is_threshold_over_127() -> None:
    q = calibrated(torch.tensor([-3.0, 1.0, 2.0]))
    assert bool(q.calibrated)
    assert float(q.scale) == pytest.approx(3.0 / 127)
    assert int(q.zero_point) == 0
    assert q.threshold() == pytest.approx(3.0)


def test_unsigned_scale_is_threshold_over_255_with_zero_point_minus_128() -> None:
    q = calibrated(torch.tensor([-5.0, 1.0, 2.0]), unsigned=True)
    assert float(q.scale) == pytest.approx(2.0 / 255)
    assert int(q.zero_point) == QMIN == -128


def test_relu6_upper_bound_clamps_threshold() -> None:
    q = calibrated(torch.tensor([0.0, 3.0, 10.0]), unsigned=True, upper_bound=6.0)
    assert float(q.scale) == pytest.approx(6.0 / 255)
    y = q(torch.tensor([-1.0, 3.0, 10.0]))
    assert y.tolist() == pytest.approx([0.0, round(3.0 / (6 / 255)) * 6 / 255, 6.0])


def test_calibrating_passes_values_through_and_observes() -> None:
    q = ActFakeQuant(MinMaxObserver())
    q.set_calibrating(True)
    x = torch.randn(64) * 3
    y = q(x)
    assert torch.equal(y, x)
    assert qparams_of(y) is None
    assert float(q.observer.max_val) == pytest.approx(float(x.max()))
    assert not bool(q.calibrated)  # the scale is set only when calibration ends
    q.set_calibrating(False)
    assert bool(q.calibrated)
    assert q.threshold() == pytest.approx(float(x.abs().max()))


def test_uncalibrated_quantizer_passes_through() -> None:
    q = ActFakeQuant()
    x = torch.randn(10)
    assert torch.equal(q(x), x)
    q.set_calibrating(True)
    q.set_calibrating(False)  # nothing observed: still uncalibrated
    assert not bool(q.calibrated)


def test_after_calibration_outputs_lie_on_grid_and_are_tagged() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000) * 2
    for unsigned in (False, True):
        q = calibrated(x, unsigned=unsigned)
        y = q(x * 1.5)  # includes values beyond the range: clipped
        assert not torch.equal(y, x * 1.5)
        assert on_grid(y, q)
        assert float(y.max()) <= q.threshold() + 1e-6
        assert qparams_of(y) == QParams(float(q.scale), int(q.zero_point))
        z = x * 1.5
        inside = (z.abs() < q.threshold() * 0.99) & ((z >= 0) if unsigned else True)
        assert (y - z).abs()[inside].max() <= float(q.scale) / 2 + 1e-6
        if unsigned:
            assert torch.all(y[z < 0] == 0)


def test_unsigned_quantizer_is_the_folded_relu() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000)
    q = calibrated(torch.relu(x), unsigned=True)
    y = q(x)
    assert torch.all(y[x < 0] == 0)
    assert torch.equal(y, fake_quant(torch.relu(x), q.qparams()))
    assert torch.equal(y, q(torch.relu(x)))


def test_qat_averaging_constant_zero_keeps_the_scale() -> None:
    q = calibrated(torch.tensor([-2.0, 2.0]), averaging_constant=0.0).train()
    before = float(q.scale)
    for k in (1.0, 5.0, 0.1):
        q(torch.randn(100) * k)
    assert float(q.scale) == before


def test_qat_averaging_constant_one_takes_each_batch() -> None:
    q = calibrated(torch.tensor([-2.0, 2.0]), averaging_constant=1.0).train()
    for k in (1.0, 5.0, 0.1):
        x = torch.randn(100) * k
        y = q(x)
        assert float(q.scale) == pytest.approx(float(x.abs().max()) / 127)
        assert on_grid(y, q)
    q.eval()
    frozen = float(q.scale)
    q(torch.randn(100) * 50)
    assert float(q.scale) == frozen  # eval never moves the scale


def test_averaging_constant_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="averaging_constant"):
        ActFakeQuant(averaging_constant=1.5)


def test_learnable_scale_gets_a_gradient_and_keeps_its_key() -> None:
    for unsigned in (False, True):
        q = calibrated(torch.tensor([-2.0, 2.0]), unsigned=unsigned)
        keys = list(q.state_dict())
        q.enable_learning()
        q.enable_learning()  # idempotent
        assert isinstance(q.scale, torch.nn.Parameter)
        assert sorted(q.state_dict()) == sorted(keys)
        assert "scale" not in dict(q.named_buffers())
        q.train()
        torch.manual_seed(0)
        x = torch.randn(200) * 3  # beyond the range: clipping gives the scale a gradient
        y = q(x)
        assert on_grid(y.detach(), q)
        ((y - x) ** 2).sum().backward()
        assert q.scale.grad is not None and float(q.scale.grad.abs()) > 0
        opt = torch.optim.SGD([q.scale], lr=1e-3)
        before = float(q.scale.detach())
        opt.step()
        assert float(q.scale.detach()) != before


def test_learnable_scale_loads_a_calibration_state_dict() -> None:
    source = calibrated(torch.tensor([-4.0, 4.0]))
    q = ActFakeQuant()
    q.enable_learning()
    q.load_state_dict(source.state_dict(), strict=True)
    assert float(q.scale.detach()) == pytest.approx(4.0 / 127)
    assert bool(q.calibrated)


def test_init_from_data_sets_the_range_from_the_first_training_batch() -> None:
    q = ActFakeQuant()
    q.init_from_data = True
    x = torch.randn(100)
    q.eval()
    assert torch.equal(q(x), x)  # eval: no data-driven init
    assert not bool(q.calibrated)
    q.train()
    y = q(x)
    assert bool(q.calibrated)
    assert q.threshold() == pytest.approx(float(x.abs().max()))
    assert on_grid(y, q)
    q(x * 10)  # averaging_constant 0: later batches do not move it
    assert q.threshold() == pytest.approx(float(x.abs().max()))


def test_disabled_quantizer_passes_through() -> None:
    q = calibrated(torch.tensor([-1.0, 1.0]))
    q.enabled = False
    x = torch.randn(10)
    assert torch.equal(q(x), x)


# -- weights ---------------------------------------------------------------------------------


def check_per_channel(w: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, axis: int) -> None:
    dims = [d for d in range(w.dim()) if d != axis]
    assert torch.allclose(scale, w.abs().amax(dim=dims) / 127)
    shape = [1] * w.dim()
    shape[axis] = -1
    codes = wq / scale.reshape(shape)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert float(codes.abs().max()) <= 127 + 1e-3
    per_channel = codes.round().movedim(axis, 0).reshape(w.shape[axis], -1)
    for row in per_channel:
        assert row.unique().numel() <= 255
    assert (wq - w).abs().max() <= float(scale.max()) / 2 + 1e-6


def test_weight_scales_per_output_channel_conv() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))  # very different channel ranges
    wfq = WeightFakeQuant(8, axis=0)
    wq = wfq(conv.weight)
    check_per_channel(conv.weight.detach(), wq.detach(), wfq.scale, 0)


def test_weight_scales_per_output_channel_conv_transpose() -> None:
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(4, 6, 3)  # weight [Cin=4, Cout=6, 3, 3]
    with torch.no_grad():
        deconv.weight.mul_(torch.logspace(-2, 1, 6).reshape(1, 6, 1, 1))
    wfq = WeightFakeQuant(6, axis=1)
    wq = wfq(deconv.weight)
    assert wfq.scale.shape == (6,)
    check_per_channel(deconv.weight.detach(), wq.detach(), wfq.scale, 1)


def test_weight_straight_through_gradient() -> None:
    w = torch.randn(3, 2, requires_grad=True)
    WeightFakeQuant(3)(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_frozen_weight_quant_stops_following_weights() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    wfq = WeightFakeQuant(4)
    wfq(w)
    scale = wfq.scale.clone()
    wfq(w * 2)
    assert torch.allclose(wfq.scale, scale * 2)  # follows (averaging_constant 1)
    wfq.reset_scale(w)
    wfq.frozen = True
    out = wfq(w * 2)
    assert torch.equal(wfq.scale, scale)
    codes = out / scale.reshape(-1, 1, 1, 1)
    # Clipped to the old range (the int8 range: -128 is reachable once the scale is kept).
    assert float(codes.max()) <= 127.0 + 1e-3
    assert float(codes.min()) >= -128.0 - 1e-3
    assert torch.allclose(
        out, torch.clamp(torch.round(w * 2 / scale.reshape(-1, 1, 1, 1)), -128, 127) * scale.reshape(-1, 1, 1, 1)
    )


def test_weight_averaging_zero_keeps_conversion_scales() -> None:
    w = torch.randn(4, 3)
    wfq = WeightFakeQuant(4, averaging_constant=0.0).train()
    wfq.reset_scale(w)
    scale = wfq.scale.clone()
    wfq(w * 3)
    assert torch.equal(wfq.scale, scale)


def test_quantize_bias_grid_and_straight_through() -> None:
    bias = torch.randn(4, requires_grad=True)
    wscale = torch.tensor([0.01, 0.02, 0.03, 0.04])
    out = quantize_bias(bias, QParams(0.05, 0), wscale)
    step = 0.05 * wscale
    assert torch.allclose(out / step, (out / step).round(), atol=1e-3)
    assert ((out - bias).abs() <= step / 2 + 1e-7).all()
    out.sum().backward()
    assert torch.equal(bias.grad, torch.ones(4))
    assert quantize_bias(bias, None, wscale) is bias
    assert quantize_bias(None, QParams(0.05, 0), wscale) is None


def test_quantize_bias_saturates_at_the_int32_range() -> None:
    # A layer whose input range collapsed (dead ReLUs) has a tiny grid: the bias cannot be
    # represented and saturates, as the int32 accumulator's bias would.
    bias = torch.tensor([-4.6, 0.5, 1e-12], requires_grad=True)
    step = 1e-13 * 1e-3
    out = quantize_bias(bias, QParams(1e-13, 0), torch.full((3,), 1e-3))
    assert out[0].item() == pytest.approx(-(2**31) * step, rel=1e-6)
    assert out[1].item() == pytest.approx((2**31 - 1) * step, rel=1e-6)
    assert out[2].item() == pytest.approx(1e-12, rel=1e-3)
    out.sum().backward()
    assert torch.equal(bias.grad, torch.ones(3))  # straight through
