"""Calibration observers: the threshold each one proposes."""

from __future__ import annotations

import pytest
import torch

from hat.quant.observers import NUM_BINS, MinMaxObserver, MSEObserver, PercentileObserver, make_observer


def test_min_max_threshold_is_max_abs_or_max_for_unsigned() -> None:
    obs = MinMaxObserver()
    obs(torch.tensor([-3.0, 0.5, 1.0]))
    obs(torch.tensor([2.0, -1.0]))
    assert obs.threshold(unsigned=False) == pytest.approx(3.0)
    assert obs.threshold(unsigned=True) == pytest.approx(2.0)


def test_min_max_unsigned_of_all_negative_is_zero_and_empty_is_zero() -> None:
    obs = MinMaxObserver()
    assert not obs.has_data
    assert obs.threshold(unsigned=False) == 0.0
    obs(torch.tensor([-3.0, -1.0]))
    assert obs.threshold(unsigned=True) == 0.0
    assert obs.threshold(unsigned=False) == pytest.approx(3.0)


def test_percentile_on_arange_within_one_bin() -> None:
    values = torch.arange(10000, dtype=torch.float32)
    obs = PercentileObserver(percentile=99.0)
    obs(values)
    width = float(obs.hist_max) / NUM_BINS
    true = float(torch.quantile(values, 0.99))
    assert abs(obs.threshold(unsigned=False) - true) <= width + 1e-6
    assert abs(obs.threshold(unsigned=True) - true) <= width + 1e-6


def test_percentile_ignores_a_few_huge_outliers() -> None:
    torch.manual_seed(0)
    bulk = torch.rand(10000) * 2 - 1  # uniform in [-1, 1]
    outliers = torch.full((10,), 100.0)
    obs = PercentileObserver(percentile=99.0)
    obs(torch.cat([bulk, outliers])[torch.randperm(10010)])
    width = float(obs.hist_max) / NUM_BINS
    t = obs.threshold(unsigned=False)
    true = float(torch.quantile(torch.cat([bulk, outliers]).abs(), 0.99))
    assert abs(t - true) <= width + 1e-6
    assert t < 1.5  # nowhere near the outliers
    min_max = MinMaxObserver()
    min_max(torch.cat([bulk, outliers]))
    assert min_max.threshold(unsigned=False) == pytest.approx(100.0)


def test_percentile_100_is_the_max_and_bad_percentile_refused() -> None:
    obs = PercentileObserver(percentile=100.0)
    obs(torch.tensor([-0.5, 0.25, 3.0]))
    assert obs.threshold(unsigned=False) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=0.0)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=101.0)


def test_histogram_rebinning_keeps_counts_and_percentile() -> None:
    obs = PercentileObserver(percentile=99.0)
    batches = [torch.linspace(-1, 1, 1000), torch.linspace(-10, 10, 1000), torch.linspace(0, 50, 1000)]
    first_edge = None
    for i, batch in enumerate(batches):
        obs(batch)
        if i == 0:
            first_edge = float(obs.hist_max)
    assert float(obs.hist_max) >= 50.0 > first_edge  # the range grew
    assert float(obs.hist_abs.sum()) == pytest.approx(3000.0)
    assert float(obs.hist_pos.sum()) == pytest.approx(float(sum((b > 0).sum() for b in batches)))
    true = float(torch.quantile(torch.cat(batches).abs(), 0.99))
    # Re-binning moves whole bins, so allow an old bin width on top of the new one.
    assert abs(obs.threshold(unsigned=False) - true) <= 2 * float(obs.hist_max) / NUM_BINS


def _sq_error(x: torch.Tensor, t: float) -> float:
    y = torch.fake_quantize_per_tensor_affine(x, t / 127, 0, -128, 127)
    return float(((y - x) ** 2).sum())


def test_mse_clips_a_long_tail_near_the_true_optimum() -> None:
    torch.manual_seed(0)
    heavy = torch.randn(100000) ** 3  # long-tailed: max ~ 95, most values tiny
    obs = MSEObserver()
    obs(heavy)
    t = obs.threshold(unsigned=False)
    top = float(heavy.abs().max())
    assert t < 0.9 * top
    assert _sq_error(heavy, t) < _sq_error(heavy, top)
    best = min(_sq_error(heavy, c) for c in torch.linspace(top / 100, top, 100).tolist())
    assert _sq_error(heavy, t) <= 1.05 * best


def test_mse_keeps_the_range_of_uniform_data() -> None:
    torch.manual_seed(0)
    uniform = torch.rand(100000) * 4 - 2
    obs = MSEObserver()
    obs(uniform)
    top = float(uniform.abs().max())
    assert 0.97 * top <= obs.threshold(unsigned=False) <= top

    positive = torch.rand(100000) * 3
    obs = MSEObserver()
    obs(torch.cat([positive, -positive]))
    assert 0.97 * 3 <= obs.threshold(unsigned=True) <= 3.0


@pytest.mark.parametrize("name", ["min_max", "percentile", "mse"])
def test_observer_buffers_are_not_in_state_dict(name: str) -> None:
    obs = make_observer(name)
    obs(torch.randn(100))
    assert obs.state_dict() == {}
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.obs = obs
    assert all(".obs." not in k and not k.startswith("obs") for k in model.state_dict())


def test_unknown_observer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown observer 'kl'"):
        make_observer("kl")
