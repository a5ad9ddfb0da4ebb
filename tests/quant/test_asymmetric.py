"""Asymmetric activations (``activation_symmetry: asymmetric``): parsing, ranges, error, QAT."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch

from hat.config import load_config
from hat.quant.backend import TorchNativeBackend
from hat.quant.fake_quant import ActFakeQuant
from hat.quant.modes import calibration_mode
from hat.quant.observers import MinMaxObserver, make_observer
from hat.quant.prepare import freeze, quantizers
from hat.quant.qconfig import DEFAULT_SYMMETRY, SYMMETRIES, SYMMETRY_KEY, QConfig
from tests.quant.nets import make_small

ASYM = {SYMMETRY_KEY: "asymmetric"}


def shifted(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Values in [-0.1, 5]: a conv output with a positive bias, say."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 5.1 - 0.1


def calibrated(x: torch.Tensor, observer: str = "min_max", **kwargs) -> ActFakeQuant:
    q = ActFakeQuant(make_observer(observer), **kwargs)
    q.set_calibrating(True)
    q(x)
    q.set_calibrating(False)
    return q


# -- the option ---------------------------------------------------------------------------


def test_the_option_parses_and_reaches_the_quantizers() -> None:
    assert QConfig.from_params({}).act_asymmetric is (DEFAULT_SYMMETRY == "asymmetric")
    assert QConfig.from_params({SYMMETRY_KEY: "symmetric"}).act_asymmetric is False
    qconfig = QConfig.from_params(ASYM)
    assert qconfig.act_asymmetric is True
    assert qconfig.act_quant().asymmetric
    assert not qconfig.act_quant(unsigned=True).asymmetric  # a ReLU's [0, t] grid stays as it is
    assert not qconfig.act_quant(bits=16).asymmetric


@pytest.mark.parametrize("value", ["asym", "Asymmetric", True, None])
def test_an_unknown_value_is_refused_naming_the_key_and_the_choices(value) -> None:
    with pytest.raises(ValueError, match=r"activation_symmetry must be one of symmetric, asymmetric"):
        QConfig.from_params({SYMMETRY_KEY: value})


def test_hat_stages_sets_it_for_calibration_and_qat_from_one_top_level_key() -> None:
    task_keys = ["model", "deploy_model", "deploy_inputs", "post_process", "train_loader", "val_loader"]
    task_keys += ["calibration_loader", "val_metrics", "num_epochs"]
    defaults = {"work_dir": "w", "task": "t", **dict.fromkeys(task_keys)}
    path = files("hat") / "configs" / "hat_stages.yaml"
    for value in SYMMETRIES:
        cfg = load_config(path, overrides=[f"activation_symmetry={value}"], defaults=defaults).data
        for stage in ("calibration_trainer", "qat_trainer"):
            assert cfg[stage]["model_convert_pipeline"]["qconfig_params"][SYMMETRY_KEY] == value
    default = load_config(path, defaults=defaults).data
    assert default["qconfig_calibration"][SYMMETRY_KEY] == DEFAULT_SYMMETRY


# -- the grid -----------------------------------------------------------------------------


def test_a_shifted_range_gets_the_whole_grid_and_a_much_smaller_error() -> None:
    x = shifted()
    sym, asym = calibrated(x), calibrated(x, asymmetric=True)
    assert int(sym.zero_point) == 0 and float(sym.scale) == pytest.approx(5.0 / 127, rel=1e-3)
    assert float(asym.scale) == pytest.approx(5.1 / 255, rel=1e-3)
    assert int(asym.zero_point) == -128 + round(0.1 / float(asym.scale))  # -123
    low, high = asym.range()
    assert low == pytest.approx(-0.1, abs=float(asym.scale)) and high == pytest.approx(5.0, abs=float(asym.scale))
    error_sym = float((sym(x) - x).pow(2).mean())
    error_asym = float((asym(x) - x).pow(2).mean())
    assert error_asym < 0.3 * error_sym  # the step is 0.51x: the squared error about 0.26x


@pytest.mark.parametrize("values", [shifted(), -shifted(), torch.rand(1000) + 2.0, -(torch.rand(1000) + 2.0)])
def test_zero_is_exact_and_the_range_always_holds_it(values: torch.Tensor) -> None:
    q = calibrated(values, asymmetric=True)
    low, high = q.range()
    assert low <= 0.0 <= high
    assert q(torch.zeros(4)).tolist() == [0.0] * 4
    assert q.qmin <= int(q.zero_point) <= q.qmax
    codes = q(values) / q.scale + q.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the grid


def test_a_positive_only_range_has_zero_point_at_the_lowest_code() -> None:
    q = calibrated(torch.rand(1000) + 2.0, asymmetric=True)
    assert int(q.zero_point) == q.qmin  # as after a ReLU: [0, max] over all 256 codes


# -- observers ----------------------------------------------------------------------------


def test_min_max_range_is_the_extremes_stretched_to_zero() -> None:
    obs = MinMaxObserver()
    obs(torch.tensor([-0.5, 2.0]))
    assert obs.range() == (-0.5, 2.0)
    positive = MinMaxObserver()
    positive(torch.tensor([1.0, 3.0]))
    assert positive.range() == (0.0, 3.0)
    assert MinMaxObserver().range() == (0.0, 0.0)


def test_percentile_clips_each_tail_on_its_own() -> None:
    torch.manual_seed(0)
    bulk = shifted(100000)
    x = torch.cat([bulk, torch.tensor([-40.0, 60.0])])  # one outlier on each side
    low, high = calibrated(x, "percentile", asymmetric=True).range()
    assert -0.2 < low < 0.0 and 4.5 < high < 5.2  # both outliers clipped, the bulk kept
    sym_threshold = make_observer("percentile")
    sym_threshold(x)
    assert sym_threshold.threshold(unsigned=False) > 4.5  # symmetric: [-t, t] with t about 5


def test_mse_clips_a_long_tail_and_beats_min_max_on_its_own_criterion() -> None:
    x = torch.empty(100000).exponential_(1.0, generator=torch.Generator().manual_seed(0)) - 0.1
    q, minmax = calibrated(x, "mse", asymmetric=True), calibrated(x, asymmetric=True)
    low, high = q.range()
    assert low == pytest.approx(-0.1, abs=float(q.scale))
    assert high < 0.95 * float(x.max())  # the sparse tail is clipped
    assert float((q(x) - x).pow(2).mean()) < float((minmax(x) - x).pow(2).mean())


def test_every_observer_gives_a_tighter_range_than_its_symmetric_threshold() -> None:
    x = shifted()
    for name in ("min_max", "percentile", "mse"):
        obs = make_observer(name)
        obs(x)
        low, high = obs.range()
        assert high - low < 2 * obs.threshold(unsigned=False), name


# -- QAT ----------------------------------------------------------------------------------


def test_averaging_moves_both_ends_toward_the_batch() -> None:
    q = calibrated(torch.tensor([-1.0, 1.0]), asymmetric=True, averaging_constant=0.5)
    q.train()
    q(torch.tensor([-0.2, 3.0]))
    low, high = q.range()
    assert low == pytest.approx(-0.6, abs=2 * float(q.scale))
    assert high == pytest.approx(2.0, abs=2 * float(q.scale))
    assert q(torch.zeros(1)).item() == 0.0


def test_qat_from_float_takes_the_first_batch_range() -> None:
    q = ActFakeQuant(MinMaxObserver(), asymmetric=True)
    q.init_from_data = True
    q.train()
    q(shifted())
    low, high = q.range()
    assert low == pytest.approx(-0.1, abs=float(q.scale)) and high == pytest.approx(5.0, abs=float(q.scale))


def test_a_learned_scale_keeps_the_calibrated_zero_point_and_zero_exact() -> None:
    q = calibrated(shifted(), asymmetric=True)
    zero = int(q.zero_point)
    q.enable_learning()
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    x = shifted(seed=1) * 1.5  # a wider range than calibrated: the scale has to grow
    before = float(q.scale.detach())
    for _ in range(5):
        loss = (q(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(q.scale.detach()) > before
    assert int(q.zero_point) == zero
    assert q(torch.zeros(2)).tolist() == [0.0, 0.0]


def inputs(seed: int) -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 0.3


def test_calibration_checkpoint_round_trips_into_qat_and_fixed_point() -> None:
    """The zero points are state: a calibration checkpoint loaded into QAT (learned scales,
    too) and frozen gives the same output as the calibrated model."""
    backend = TorchNativeBackend()
    calib, _ = backend.prepare_calibration(make_small(), ASYM)
    calib.eval()
    with torch.no_grad(), calibration_mode(calib):
        for seed in range(3):
            calib(inputs(seed))
    zero_points = {name: int(m.zero_point) for name, m in calib.named_modules() if m in quantizers(calib)}
    assert zero_points["q.quant"] not in (0, -128)  # the input range is shifted: a real zero point
    assert zero_points["head.out_quant"] != 0
    assert zero_points["block.0.out_quant"] == -128  # conv-BN-ReLU: the ReLU's grid
    with torch.no_grad():
        expected = calib(inputs(9))
    for params in (ASYM, {**ASYM, "activation_qat_qkwargs": {"learnable": True}}):
        qat, _ = backend.prepare_qat(make_small(), params)
        qat.load_state_dict(calib.state_dict(), strict=True)
        loaded = {name: int(m.zero_point) for name, m in qat.named_modules() if m in quantizers(qat)}
        assert loaded == zero_points
        fixed = freeze(qat)
        with torch.no_grad():
            assert torch.equal(fixed(inputs(9)), expected)
