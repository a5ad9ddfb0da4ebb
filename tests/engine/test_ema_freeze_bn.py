"""EMA and BatchNorm freezing, driven through the loop's hook order."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from hat.engine.callbacks.base import Callback
from hat.engine.callbacks.ema import ExponentialMovingAverage
from hat.engine.callbacks.freeze_bn import FreezeBNStatistics, batch_norm_layers
from hat.engine.state import LoopState
from hat.registry import marked_name
from tests.engine.loop_sim import make_state, run_loop


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _zeroed_net() -> TinyNet:
    net = TinyNet()
    with torch.no_grad():
        for tensor in [*net.parameters(), net.bn.running_mean]:
            tensor.zero_()
    return net


def _set_weights_to_step(state: LoopState) -> None:
    """Stand-in for an optimizer step: after step i (1-based) every float weight equals i."""
    value = float(state.global_step + 1)
    with torch.no_grad():
        for tensor in [*state.model.parameters(), state.model.bn.running_mean]:
            tensor.fill_(value)
        state.model.bn.num_batches_tracked.fill_(int(value) * 7)


def _ema_run(ema: ExponentialMovingAverage, steps: int, net: TinyNet | None = None) -> TinyNet:
    net = net or _zeroed_net()
    state = make_state(net, None, num_epochs=1, steps_per_epoch=steps)
    run_loop(state, [ema], train_step=_set_weights_to_step)
    return net


def test_ema_without_warmup_matches_closed_form() -> None:
    # Weights 0 at start, then 1, 2, 3; decay 0.5:
    # e3 = 0.5^3 * 0 + 0.5 * (0.5^2 * 1 + 0.5 * 2 + 3) = 2.125.
    ema = ExponentialMovingAverage(decay=0.5, warmup=False)
    net = _ema_run(ema, steps=3)
    averaged = ema.averaged_state_dict()
    assert ema.num_updates == 3
    for name in ("fc.weight", "fc.bias", "bn.weight", "bn.bias"):
        assert torch.allclose(averaged[name], torch.full_like(averaged[name], 2.125)), name
    # Buffers are copied from the live model, not averaged (integer ones included).
    assert torch.equal(averaged["bn.running_mean"], net.bn.running_mean)
    assert averaged["bn.num_batches_tracked"].item() == 21


def test_ema_warmup_decay_rises_with_updates() -> None:
    # Update 1 uses decay min(0.9999, 1/10) = 0.1, update 2 uses 2/11:
    # e1 = 0.1 * 0 + 0.9 * 1 = 0.9;  e2 = (2/11) * 0.9 + (9/11) * 2 = 19.8 / 11 = 1.8.
    ema = ExponentialMovingAverage(decay=0.9999, warmup=True)
    _ema_run(ema, steps=2)
    weight = ema.averaged_state_dict()["fc.weight"]
    assert torch.allclose(weight, torch.full_like(weight, 1.8))
    assert ema.current_decay() == pytest.approx(3 / 12)


def test_ema_update_every() -> None:
    ema = ExponentialMovingAverage(decay=0.5, warmup=False, update_every=2)
    _ema_run(ema, steps=5)
    assert ema.num_updates == 2  # after steps 2 and 4
    # e = 0.5 * (0.5 * 0 + 0.5 * 2) + 0.5 * 4 = 2.5
    weight = ema.averaged_state_dict()["fc.weight"]
    assert torch.allclose(weight, torch.full_like(weight, 2.5))


def test_swapped_loads_ema_and_restores_live_weights_exactly() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ema = ExponentialMovingAverage(decay=0.9)
    run_loop(make_state(net, optimizer, num_epochs=2, steps_per_epoch=3), [ema])
    live = {k: v.clone() for k, v in net.state_dict().items()}
    weight_object = net.fc.weight
    averaged = ema.averaged_state_dict()
    assert not torch.equal(averaged["fc.weight"], live["fc.weight"])

    with ema.swapped(net) as swapped:
        assert swapped is net
        assert torch.equal(net.fc.weight, averaged["fc.weight"])
        assert torch.equal(net.bn.running_var, averaged["bn.running_var"])
    for key, value in net.state_dict().items():
        assert torch.equal(value, live[key]), key
    assert net.fc.weight is weight_object  # the optimizer still holds the same tensor

    with pytest.raises(RuntimeError, match="boom"), ema.swapped(net):
        raise RuntimeError("boom")
    assert torch.equal(net.fc.weight, live["fc.weight"])


def test_ema_state_round_trip_makes_resume_exact() -> None:
    def fresh() -> tuple[TinyNet, torch.optim.Optimizer]:
        torch.manual_seed(1)
        net = TinyNet()
        return net, torch.optim.SGD(net.parameters(), lr=0.1)

    torch.manual_seed(2)
    net, opt = fresh()
    uninterrupted = ExponentialMovingAverage(decay=0.99)
    torch.manual_seed(3)
    run_loop(make_state(net, opt, num_epochs=2, steps_per_epoch=3), [uninterrupted])

    net, opt = fresh()
    first = ExponentialMovingAverage(decay=0.99)
    state = make_state(net, opt, num_epochs=2, steps_per_epoch=3)
    torch.manual_seed(3)
    run_loop(state, [first], stop_after=4)
    buffer = io.BytesIO()
    torch.save({"ema": first.state_dict(), "model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as checkpoint_io loads: plain data only

    net2, opt2 = fresh()
    net2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    second = ExponentialMovingAverage(decay=0.99)
    second.load_state_dict(saved["ema"])
    assert second.num_updates == 4
    resumed = make_state(net2, opt2, num_epochs=2, steps_per_epoch=3)
    resumed.epoch, resumed.global_step, resumed.step_in_epoch = state.epoch, state.global_step, state.step_in_epoch
    torch.manual_seed(3)
    for _ in range(4):  # replay the random draws of the first 4 steps
        torch.randn(8, 4)
    run_loop(resumed, [second])

    assert second.num_updates == uninterrupted.num_updates == 6
    expected = uninterrupted.averaged_state_dict()
    for key, value in second.averaged_state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-7), key


def test_ema_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ExponentialMovingAverage(decay=1.0)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(update_every=0)
    with pytest.raises(RuntimeError), ExponentialMovingAverage().swapped(TinyNet()):
        pass


class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.fc(x)).relu())


class ValidationLike(Callback):
    """Mimics a validation callback that ends with ``model.train()`` mid-epoch."""

    def on_step_end(self, state: LoopState, batch: object = None, outputs: object = None) -> None:
        state.model.eval()
        state.model.train()


def _train(net: nn.Module, callbacks: list) -> None:
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    run_loop(make_state(net, optimizer, num_epochs=2, steps_per_epoch=3), callbacks)


def test_freeze_bn_keeps_running_stats_during_training() -> None:
    torch.manual_seed(0)
    control = ConvBNNet()
    _train(control, [])
    assert not torch.equal(control.bn.running_mean, torch.zeros(6))  # the control did update

    net = ConvBNNet()
    fc_before = net.fc.weight.clone()
    bn_weight_before = net.bn.weight.clone()
    stats_before = {k: v.clone() for k, v in net.bn.state_dict().items() if k.startswith("running")}
    freeze = FreezeBNStatistics()
    _train(net, [freeze, ValidationLike()])
    for key, value in stats_before.items():
        assert torch.equal(getattr(net.bn, key), value), key
    assert net.bn.num_batches_tracked.item() == 0
    assert not torch.equal(net.fc.weight, fc_before)  # the rest trained
    assert not torch.equal(net.bn.weight, bn_weight_before)  # affine still trains by default


def test_freeze_affine_stops_bn_weight_and_bias() -> None:
    torch.manual_seed(0)
    net = ConvBNNet()
    freeze = FreezeBNStatistics(freeze_affine=True)
    assert freeze.apply(net) == 1
    weight, bias = net.bn.weight.clone(), net.bn.bias.clone()
    _train(net, [freeze, ValidationLike()])
    assert not net.bn.weight.requires_grad and not net.bn.bias.requires_grad
    assert net.bn.weight.grad is None
    assert torch.equal(net.bn.weight, weight) and torch.equal(net.bn.bias, bias)


def test_every_batch_norm_kind_is_found() -> None:
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.ReLU())
    assert len(batch_norm_layers(model)) == 4
    model.train()
    FreezeBNStatistics().apply(model)
    assert [m.training for m in model] == [False, False, False, False, True]


def test_callbacks_are_marked_for_the_registry() -> None:
    assert marked_name(ExponentialMovingAverage) == "ExponentialMovingAverage"
    assert marked_name(FreezeBNStatistics) == "FreezeBNStatistics"
