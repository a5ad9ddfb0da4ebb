"""Per-layer SQNR and sensitivity (hat.quant.sensitivity) on a small hand-built model with one bad layer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant.fake_quant import ActFakeQuant, WeightFakeQuant
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert
from hat.quant.qconfig import QConfig
from hat.quant.sensitivity import (
    NoiseMeter,
    measure_sensitivity,
    named_outputs,
    quantized_layers,
    quantizing,
    sqnr_db,
)
from tests.quant.nets import randomize_bn


class ThreeConvs(nn.Module):
    """QuantStub, conv-BN-ReLU, conv-ReLU, a quantized add, a conv head; dict in, dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.first = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.second = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.add = FloatFunctional()
        self.head = nn.Conv2d(8, 4, 1)
        self.dequant = DeQuantStub()

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.first(self.quant(data["img"]))
        x = self.add.add(x, self.second(x))
        return {"out": self.dequant(self.head(x))}


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    return {"img": torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))}


def _samples(count: int = 2) -> list[tuple[dict[str, torch.Tensor], None]]:
    return [(_inputs(50 + i), None) for i in range(count)]


@pytest.fixture()
def models() -> tuple[nn.Module, nn.Module]:
    """(float model, calibrated quantized model) with ``second``'s output range made 300x too wide."""
    torch.manual_seed(0)
    float_model = randomize_bn(ThreeConvs()).eval()
    model, _ = convert(copy.deepcopy(float_model), QConfig())
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for i in range(3):
            model(_inputs(i))
    # the deliberately bad layer: a calibration outlier left its activation grid 300x too coarse
    model.second[0].out_quant.set_threshold(300.0 * model.second[0].out_quant.threshold())
    return float_model, model


def test_layers_are_the_float_models_module_paths(models) -> None:
    float_model, model = models
    layers = quantized_layers(model)
    names = [layer.name for layer in layers]
    assert names == ["quant", "first.0", "second.0", "add", "head"]
    float_paths = dict(float_model.named_modules())
    assert all(name in float_paths for name in names)
    by_name = {layer.name: layer for layer in layers}
    # a conv owns its weight and its output quantizer; the add and the input only an output one
    assert {type(q) for q in by_name["second.0"].quantizers} == {ActFakeQuant, WeightFakeQuant}
    assert [type(q) for q in by_name["add"].quantizers] == [ActFakeQuant]


def test_with_every_quantizer_off_the_model_is_the_float_model(models) -> None:
    float_model, model = models
    layers = quantized_layers(model)
    inputs = _inputs(9)
    with torch.no_grad():
        expected = float_model(inputs)["out"]
        with quantizing(layers, lambda _layer: False):
            off = model(inputs)["out"]
        on = model(inputs)["out"]
    torch.testing.assert_close(off, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(on, expected, rtol=1e-4, atol=1e-5)  # quantizing does change it
    assert all(q.enabled for layer in layers for q in layer.quantizers)  # switched back on


def test_the_bad_layer_ranks_first_and_has_the_lowest_sqnr(models) -> None:
    _, model = models
    report = measure_sensitivity(model, _samples())
    ranked = report.ranked()
    assert ranked[0].name == "second.0"
    by_name = {layer.name: layer for layer in report.layers}
    bad = by_name["second.0"]
    assert bad.sqnr_db == min(layer.sqnr_db for layer in report.layers)
    others = [layer for layer in report.layers if layer.name != "second.0"]
    assert bad.only_quantized_sqnr_db < min(layer.only_quantized_sqnr_db for layer in others) - 10
    # keeping just the bad layer float recovers most: the best model of all the "only float" runs
    assert bad.only_float_sqnr_db == max(layer.only_float_sqnr_db for layer in report.layers)
    assert bad.only_float_sqnr_db > report.output_sqnr_db + 10
    # layers in execution order, every SQNR finite (the add's output is captured too)
    assert [layer.name for layer in report.layers] == ["quant", "first.0", "second.0", "add", "head"]
    assert all(math.isfinite(layer.sqnr_db) for layer in report.layers)
    assert report.samples == 8 and report.batches == 2
    assert set(report.outputs) == {"out"} and report.outputs["out"] == pytest.approx(report.output_sqnr_db)
    assert all(q.enabled for layer in quantized_layers(model) for q in layer.quantizers)


class MseToFloat:
    """A metric for the tests: mean squared error against the float model's output (lower is better)."""

    higher_is_better = False

    def __init__(self, float_model: nn.Module) -> None:
        self.float_model = float_model

    def start(self) -> list[float]:
        return [0.0, 0]

    def update(self, accumulator: list[float], outputs: dict[str, torch.Tensor], batch: dict) -> None:
        with torch.no_grad():
            target = self.float_model(batch)["out"]
        accumulator[0] += float(((outputs["out"] - target) ** 2).sum())
        accumulator[1] += target.numel()

    def value(self, accumulator: list[float]) -> float:
        return accumulator[0] / accumulator[1]


def test_a_metric_ranks_by_its_loss_against_float(models) -> None:
    float_model, model = models
    samples = [(inputs, inputs) for inputs, _ in _samples()]
    report = measure_sensitivity(model, samples, scorer=MseToFloat(float_model))
    assert report.float_metric == pytest.approx(0.0, abs=1e-8)
    assert report.quantized_metric > 0 and report.by_metric
    ranked = report.ranked()
    assert ranked[0].name == "second.0"
    assert report.metric_loss(ranked[0].only_quantized_metric) == pytest.approx(ranked[0].only_quantized_metric)
    assert ranked[0].only_float_metric < report.quantized_metric  # keeping it float helps


def test_sqnr_of_identical_and_of_zero_tensors() -> None:
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    meter = NoiseMeter()
    x = torch.randn(10)
    meter.add("a", x, x.clone())
    assert meter.sqnr_db("a") == math.inf and meter.mean_sqnr_db() == math.inf
    meter.add("b", torch.ones(10), torch.ones(10) * 1.1)  # noise/signal 0.01 -> 20 dB; mean with 0 -> 23 dB
    assert meter.mean_sqnr_db() == pytest.approx(10 * math.log10(2 / 0.01), rel=1e-6)


def test_named_outputs_follow_the_export_names() -> None:
    t = torch.zeros(1)
    assert list(named_outputs(t)) == ["output"]
    assert list(named_outputs((t, t))) == ["output_0", "output_1"]
    assert list(named_outputs({"heatmap": t})) == ["heatmap"]
    with pytest.raises(TypeError, match="a str"):
        named_outputs("no")


def test_a_model_without_quantized_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="no quantized layer"):
        measure_sensitivity(nn.Linear(2, 2), [({"x": torch.zeros(1, 2)}, None)])


class AddThenReLU(nn.Module):
    """A conv, a quantized add, then a standalone ReLU that may work in place on the add's output."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.add = FloatFunctional()
        self.relu = nn.ReLU(inplace=inplace)
        self.dequant = DeQuantStub()

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.conv(self.quant(data["img"]))
        return self.dequant(self.relu(self.add.add(x, x)))


def test_an_in_place_op_after_a_layer_does_not_change_what_was_measured() -> None:
    reports = {}
    for inplace in (False, True):
        torch.manual_seed(3)
        model, _ = convert(AddThenReLU(inplace), QConfig())
        model.eval()
        with torch.no_grad(), calibration_mode(model):
            model(_inputs(0))
        reports[inplace] = {layer.name: layer for layer in measure_sensitivity(model, _samples(1)).layers}
    # the add's output has negative values the in-place ReLU would zero after the fact
    assert reports[True]["add"].sqnr_db == pytest.approx(reports[False]["add"].sqnr_db, rel=1e-9)


def test_switches_are_left_as_they_were(models) -> None:
    _, model = models
    layers = quantized_layers(model)
    layers[1].quantizers[0].enabled = False
    with quantizing(layers, lambda _layer: True):
        assert layers[1].quantizers[0].enabled
    assert not layers[1].quantizers[0].enabled
    assert all(q.enabled for layer in layers if layer is not layers[1] for q in layer.quantizers[:1])


def _calibrated(precision: list[dict]) -> nn.Module:
    torch.manual_seed(0)
    model, _ = convert(randomize_bn(ThreeConvs()).eval(), QConfig.from_params({"precision": precision}))
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for i in range(3):
            model(_inputs(i))
    return model


def test_a_layer_configured_int16_costs_far_less_alone() -> None:
    int8 = {layer.name: layer for layer in measure_sensitivity(_calibrated([]), _samples(1)).layers}
    wide = _calibrated([{"modules": "second.0", "activation": "int16"}])
    int16 = {layer.name: layer for layer in measure_sensitivity(wide, _samples(1)).layers}
    # its own cost, not its output's SQNR (which carries the int8 noise of the layers before it)
    assert int16["second.0"].only_quantized_sqnr_db > int8["second.0"].only_quantized_sqnr_db + 30
    assert int16["second.0"].sqnr_db == pytest.approx(int8["second.0"].sqnr_db, abs=3)


def test_an_exact_layer_is_inf_in_the_records() -> None:
    from hat.quant.sensitivity import LayerSensitivity, SensitivityReport
    from hat.usecases.analyze import layer_records

    exact = LayerSensitivity("a", "QConv2d", 0, math.inf, math.inf, 20.0)
    noisy = LayerSensitivity("b", "QConv2d", 1, 30.0, 25.0, math.inf)
    records = layer_records(SensitivityReport([exact, noisy], output_sqnr_db=25.0, samples=1, batches=1))
    assert [r["name"] for r in records] == ["b", "a"]  # the exact layer ranks last
    assert records[1]["sqnr_db"] == "inf" and records[1]["only_quantized"]["output_sqnr_db"] == "inf"
    assert records[0]["only_float"] == {"output_sqnr_db": "inf"}


def test_progress_is_reported_once_per_layer_and_batch(models) -> None:
    _, model = models
    calls = []
    measure_sensitivity(model, _samples(2), progress=lambda: calls.append(1))
    assert len(calls) == 2 * (1 + len(quantized_layers(model)))
