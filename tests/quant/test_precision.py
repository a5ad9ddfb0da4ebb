"""Per-layer precision: the ``precision`` rules, and the int16 / float simulation they make."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant.fake_quant import ActFakeQuant, boundary_of, qparams_of
from hat.quant.modes import calibration_mode
from hat.quant.precision import LayerPrecision, PrecisionError, parse_precision, rules_to_config
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig


class Chain(nn.Module):
    """QuantStub, conv-ReLU, conv-ReLU (``mid``), a residual add, a conv head, DeQuantStub."""

    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.add = FloatFunctional()
        self.head = nn.Conv2d(8, 4, 1)
        self.dq = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.q(x))
        return self.dq(self.head(self.add.add(x, self.mid(x))))


def batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def calibrated(rules, observer: str = "min_max") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    float_model = Chain().eval()
    params = {"precision": rules, "activation_calibration_observer": observer}
    model, _ = convert(copy.deepcopy(float_model), QConfig.from_params(params))
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for x in batches():
            model(x)
    return float_model, model


# -- the rules -------------------------------------------------------------------------------


def test_rules_default_and_last_match_wins() -> None:
    rules = parse_precision(
        [
            {"modules": "neck.*", "activation": "int16"},
            {"modules": "neck.attention.*", "activation": "float", "weight": "int8", "reason": "sensitivity"},
        ]
    )
    assert rules.of("neck.conv") == LayerPrecision("int16", "int16", "configured")  # weight follows activation
    assert rules.of("neck.attention.query") == LayerPrecision("float", "int8", "sensitivity")
    assert rules.of("backbone.conv").is_int8
    assert parse_precision(None).of("anything").is_int8
    # what the fallback writes reads back the same
    assert parse_precision(rules_to_config(rules.rules)).to_list() == rules.to_list()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("head", "must be a list"),
        ([{"modules": "a", "activation": "int4"}], "precision[0]: activation 'int4' is not one of int8, int16, float"),
        ([{"modules": "a"}, {"modules": "b", "weight": "fp8"}], "precision[1]: weight 'fp8'"),
        ([{"modules": "a", "activaton": "int16"}], "precision[0]: unknown key(s) ['activaton']"),
        ([{"activation": "int16"}], "precision[0]: modules must be a glob"),
        (
            [{"modules": "a", "reason": "because"}],
            "precision[0]: reason 'because' is not one of configured, sensitivity",
        ),
        (["a"], "precision[0]: a rule must be a mapping"),
    ],
)
def test_malformed_rules_name_the_entry(value, message: str) -> None:
    with pytest.raises(PrecisionError) as err:
        parse_precision(value)
    assert message in str(err.value)


def test_a_rule_matching_no_quantized_module_is_an_error() -> None:
    qconfig = QConfig.from_params({"precision": [{"modules": "mid.0", "activation": "int16"}, {"modules": "nek.*"}]})
    with pytest.raises(PrecisionError, match=r"precision\[1\]: modules 'nek\.\*' matches no quantizable module"):
        convert(Chain(), qconfig)
    # the ReLU is fused into the conv, so mid.1 is no module of its own
    with pytest.raises(PrecisionError, match=r"precision\[0\]"):
        convert(Chain(), QConfig.from_params({"precision": [{"modules": "mid.1"}]}))


def test_precision_is_not_a_qconfig_params_key_of_a_pipeline() -> None:
    from hat.engine.converters import ModelConvertPipeline
    from hat.errors import ConfigError
    from hat.quant.converters import Float2Calibration

    pipeline = ModelConvertPipeline([Float2Calibration()], qconfig_params={"precision": []})
    with pytest.raises(ConfigError, match="precision is set in model_convert_pipeline.qconfig_params"):
        pipeline(Chain())
    bad = ModelConvertPipeline([Float2Calibration()])
    with pytest.raises(ConfigError, match=r"precision\[0\]: modules 'nope' matches no quantizable module"):
        bad(Chain(), precision=[{"modules": "nope"}])
    model = ModelConvertPipeline([Float2Calibration()])(Chain(), precision=[{"modules": "head", "activation": "int16"}])
    assert model.head.out_quant.bits == 16 and model.mid[0].out_quant.bits == 8


def test_report_lists_the_modules_off_int8() -> None:
    rules = [
        {"modules": "mid.0", "activation": "int16"},
        {"modules": "head", "activation": "float", "reason": "sensitivity"},
    ]
    _, report = convert(Chain(), QConfig.from_params({"precision": rules}))
    assert [(p, k, lp.activation, lp.reason) for p, k, lp in report.precision] == [
        ("mid.0", "Conv2d+relu", "int16", "configured"),
        ("head", "Conv2d", "float", "sensitivity"),
    ]
    assert "precision: mid.0 (Conv2d+relu): activation int16, weight int16 (configured)" in report.summary()
    assert [row["module"] for row in report.not_int8()] == ["mid.0", "head"]


# -- the simulation --------------------------------------------------------------------------


def test_int16_quantizers_use_the_16_bit_grid() -> None:
    _, model = calibrated([{"modules": "mid.0", "activation": "int16"}])
    out, weight = model.mid[0].out_quant, model.mid[0].weight_quant
    assert out.bits == 16 and out.unsigned and int(out.zero_point) == -32768  # after its ReLU: [0, t]
    assert out.threshold() == pytest.approx(float(out.scale) * 65535)
    assert weight.bits == 16 and weight.qmax == 32767
    w = model.mid[0].module.weight
    assert torch.allclose(weight.scale, w.detach().abs().amax(dim=(1, 2, 3)) / 32767)
    with torch.no_grad():
        y = model.mid(model.stem(model.q(batches(1, seed=5)[0])))
    codes = y / out.scale - 32768
    assert torch.allclose(codes, codes.round(), atol=1e-2) and qparams_of(y).bits == 16
    assert float(y.min()) == 0.0 and float(codes.max()) <= 32767 + 1e-2


def test_int16_layer_is_far_closer_to_float_than_int8_on_the_same_input() -> None:
    errors = {}
    for precision in ("int8", "int16"):
        float_model, model = calibrated([{"modules": "mid.0", "activation": precision}])
        x = model.stem(model.q(batches(1, seed=5)[0]))  # the same int8 input for both
        with torch.no_grad():
            reference = float_model.mid(x)
            errors[precision] = float((model.mid(x) - reference).abs().max())
    assert errors["int16"] < errors["int8"] / 50


@pytest.mark.parametrize("observer", ["percentile", "mse"])
def test_histogram_observers_calibrate_at_int16(observer: str) -> None:
    _, model = calibrated([{"modules": "head", "activation": "int16"}], observer)
    quant = model.head.out_quant
    assert bool(quant.calibrated) and quant.bits == 16 and not quant.unsigned
    assert quant.threshold() == pytest.approx(float(quant.scale) * 32767)
    assert quant.threshold() > 0


def test_float_layer_is_exactly_float_and_int8_consumers_read_its_boundary() -> None:
    float_model, model = calibrated([{"modules": "mid.0", "activation": "float"}])
    boundary = model.mid[0].out_quant
    assert boundary.float_output and bool(boundary.calibrated)  # it still calibrates, on mid's output
    x = model.stem(model.q(batches(1, seed=5)[0]))
    with torch.no_grad():
        y = model.mid(x)
        assert torch.equal(y, float_model.mid(x))  # float weights, float bias, no rounding of the output
        assert qparams_of(y) is None and boundary_of(y) == boundary.qparams()
        # the add (int8) reads mid's output on the boundary's grid, not in float
        added = model.add.add(x, y)
        expected = model.add.out_quant(
            x + torch.fake_quantize_per_tensor_affine(y, float(boundary.scale), -128, -128, 127)
        )
    assert torch.equal(added, expected)


def test_float_island_of_two_layers_stays_float_inside() -> None:
    """Only the int8 consumer quantizes: a float layer reading a float layer reads it in float."""
    float_model, model = calibrated(
        [{"modules": "mid.0", "activation": "float"}, {"modules": "add", "activation": "float"}]
    )
    x = model.stem(model.q(batches(1, seed=5)[0]))
    with torch.no_grad():
        y = model.add.add(x, model.mid(x))
        assert torch.equal(y, x + float_model.mid(x))
        assert boundary_of(y) is not None
        out = model.head(y)  # head is int8: it reads the add's output on the add's boundary grid
    assert qparams_of(out) is not None
    assert float(model.head.input_scale) == pytest.approx(float(model.add.out_quant.scale))


def test_frozen_model_equals_simulation_with_int16_and_float_layers() -> None:
    rules = [{"modules": "mid.0", "activation": "int16"}, {"modules": "head", "activation": "float"}]
    _, model = calibrated(rules)
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        simulated = model(x)
        frozen = freeze(model)(x)
    assert torch.equal(frozen, simulated)


def test_weight_only_float_keeps_int8_activation() -> None:
    float_model, model = calibrated([{"modules": "mid.0", "activation": "int8", "weight": "float"}])
    layer = model.mid[0]
    assert layer.weight_quant.keep_float and not layer.out_quant.float_output and layer.out_quant.bits == 8
    x = model.stem(model.q(batches(1, seed=5)[0]))
    with torch.no_grad():
        expected = layer.out_quant(torch.relu(float_model.mid[0](x)))
        assert torch.equal(layer(x), expected)


def test_analysis_switches_still_toggle_a_float_layer_off_and_on() -> None:
    """``enabled`` (the sensitivity tools' switch) and precision are separate: a float weight stays float."""
    _, model = calibrated([{"modules": "mid.0", "weight": "float"}])
    weight = model.mid[0].weight_quant
    weight.enabled = True
    w = model.mid[0].module.weight
    assert torch.equal(weight(w), w)
    assert isinstance(model.mid[0].out_quant, ActFakeQuant)


def test_qat_trains_through_int16_and_float_layers() -> None:
    """QAT straight from float: the first batch sets every range (16-bit too), learned scales
    get gradients at 16 bits, and a float island's boundary keeps its calibrated range."""
    from hat.quant.backend import TorchNativeBackend

    rules = [{"modules": "mid.0", "activation": "int16"}, {"modules": "head", "activation": "float"}]
    params = {"precision": rules, "activation_qat_qkwargs": {"learnable": True}}
    torch.manual_seed(0)
    model, _ = TorchNativeBackend().prepare_qat(Chain(), params)
    model.train()
    x = batches(1, seed=3)[0]
    model(x).square().mean().backward()  # first batch: ranges from the data
    for quant in (model.mid[0].out_quant, model.head.out_quant, model.stem[0].out_quant):
        assert bool(quant.calibrated)
    model.zero_grad()
    model(x).square().mean().backward()
    assert model.mid[0].out_quant.bits == 16 and model.mid[0].out_quant.scale.grad is not None
    assert float(model.mid[0].out_quant.scale.grad.abs()) > 0
    assert model.mid[0].module.weight.grad is not None and model.head.module.weight.grad is not None


@pytest.mark.parametrize("precision", ["int16", "float"])
def test_frozen_transposed_conv_off_int8_equals_simulation(precision: str) -> None:
    """The int8 deconv's conv + depth-to-space rewrite keeps a 16-bit grid; a float deconv is not
    rewritten (its boundary grid must reach the head)."""
    from tests.quant.nets import make_net

    torch.manual_seed(0)
    qconfig = QConfig.from_params({"precision": [{"modules": "up.0", "activation": precision}]})
    model, _ = convert(make_net(size=16), qconfig)
    model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad(), calibration_mode(model):
        for _ in range(3):
            model(torch.randn(2, 3, 16, 16, generator=g))
    x = torch.randn(1, 3, 16, 16, generator=g)
    with torch.no_grad():
        simulated = model(x)
        frozen = freeze(model)(x)
    assert torch.equal(frozen, simulated)
    assert model.up[0].rewritten == (precision == "int16")
