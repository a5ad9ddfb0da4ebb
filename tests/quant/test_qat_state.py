"""Calibration and QAT models: same state-dict keys, checkpoints that move between them."""

from __future__ import annotations

import copy

import pytest
import torch

from hat.quant.backend import TorchNativeBackend
from hat.quant.modes import calibration_mode
from hat.quant.prepare import freeze, quantizers
from tests.quant.nets import make_small

LEARNABLE = {"activation_qat_qkwargs": {"learnable": True}}


def x(seed: int) -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def calibration_state() -> dict[str, torch.Tensor]:
    model, _ = TorchNativeBackend().prepare_calibration(make_small(), {"activation_calibration_observer": "percentile"})
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for i in range(3):
            model(x(i))
    return model.state_dict()


def train_step(model: torch.nn.Module, seed: int, lr: float = 0.1) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = (model(x(seed)) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def act_scales(model: torch.nn.Module) -> dict[str, float]:
    return {name: float(m.scale.detach()) for name, m in model.named_modules() if m in quantizers(model)}


def test_calibration_and_qat_state_dict_keys_are_identical() -> None:
    backend = TorchNativeBackend()
    calib, _ = backend.prepare_calibration(make_small(), {"activation_calibration_observer": "mse"})
    qat, _ = backend.prepare_qat(make_small(), {})
    learned, _ = backend.prepare_qat(make_small(), LEARNABLE)
    keys = set(calib.state_dict())
    assert keys == set(qat.state_dict()) == set(learned.state_dict())
    assert "q.quant.scale" in keys and "block.0.out_quant.scale" in keys and "block.0.module.weight" in keys
    assert not any("observer" in k or "hist" in k for k in keys)
    assert any(isinstance(m.scale, torch.nn.Parameter) for m in quantizers(learned))
    learned_params = {n for n, _ in learned.named_parameters()}
    assert "head.out_quant.scale" in learned_params
    assert "head.out_quant.scale" not in {n for n, _ in qat.named_parameters()}


@pytest.mark.parametrize("params", [{}, LEARNABLE], ids=["kept", "learnable"])
def test_calibration_checkpoint_loads_strictly_into_qat(params) -> None:
    state = calibration_state()
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), params)
    qat.load_state_dict(state, strict=True)
    for name, scale in act_scales(qat).items():
        assert scale == pytest.approx(float(state[f"{name}.scale"]))
        assert bool(qat.get_submodule(name).calibrated)


def test_qat_with_averaging_zero_keeps_calibrated_scales() -> None:
    state = calibration_state()
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), {"activation_qat_qkwargs": {"averaging_constant": 0}})
    qat.load_state_dict(state, strict=True)
    weight_before = qat.block[0].module.weight.detach().clone()
    for step in range(2):
        train_step(qat, 10 + step)
    assert not torch.equal(qat.block[0].module.weight, weight_before)  # it did train
    for name, scale in act_scales(qat).items():
        assert scale == float(state[f"{name}.scale"])  # not even rounding drift


def test_qat_with_averaging_one_tracks_batches() -> None:
    state = calibration_state()
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), {"activation_qat_qkwargs": {"averaging_constant": 1}})
    qat.load_state_dict(state, strict=True)
    train_step(qat, 10)
    # The input quantizer's scale is the last batch's max |x| / 127.
    assert float(qat.q.quant.scale) == pytest.approx(float(x(10).abs().max()) / 127)


def test_learnable_scales_train() -> None:
    state = calibration_state()
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), LEARNABLE)
    qat.load_state_dict(state, strict=True)
    train_step(qat, 10, lr=1e-2)
    changed = [n for n, s in act_scales(qat).items() if s != float(state[f"{n}.scale"])]
    assert changed


def test_qat_from_float_initializes_from_the_first_batch() -> None:
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), {})
    assert all(q.init_from_data and not bool(q.calibrated) for q in quantizers(qat))
    train_step(qat, 0)
    assert all(bool(q.calibrated) for q in quantizers(qat))
    assert float(qat.q.quant.scale) == pytest.approx(float(x(0).abs().max()) / 127)


def test_frozen_model_from_a_qat_checkpoint_matches_qat_eval() -> None:
    """Weight scales follow the weights (averaging 1): the checkpoint holds the scales of the
    last forward, before the last optimizer step; freeze must not use those stale scales."""
    state = calibration_state()
    qat, _ = TorchNativeBackend().prepare_qat(make_small(), {})
    qat.load_state_dict(state, strict=True)
    for step in range(2):
        train_step(qat, 20 + step)
    with torch.no_grad():  # a last optimizer step that grows the weights after the last forward
        for conv in (qat.block[0].module, qat.head.module):
            conv.weight.mul_(1.5)
    checkpoint = copy.deepcopy(qat.state_dict())
    qat.eval()
    with torch.no_grad():
        sim = qat(x(99))
    fresh, _ = TorchNativeBackend().prepare_qat(make_small(), {})
    fresh.load_state_dict(checkpoint, strict=True)
    with torch.no_grad():
        fixed = TorchNativeBackend().convert_fixed(fresh)(x(99))
    assert torch.equal(fixed, sim)


def test_convert_fixed_of_an_uncalibrated_model_raises() -> None:
    model, _ = TorchNativeBackend().prepare_calibration(make_small(), {})
    with pytest.raises(ValueError, match="never calibrated"):
        freeze(model)
