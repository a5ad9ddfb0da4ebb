"""EfficientNet: published parameter counts, feature strides, eval behaviour, int8 conversion."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hat.models import ConvBNAct, EfficientNet, efficientnet, make_activation
from hat.models.efficientnet import round_filters, round_repeats
from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant import qmodules as Q
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert
from hat.quant.qconfig import QConfig
from hat.registry import Registry


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# -- architecture ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "use_se", "top", "expected"),
    [
        ("b0", True, True, 5_288_548),  # the published EfficientNet-B0
        ("b0", False, False, 2_958_848),  # the keypoint recipe's backbone
        ("b3", True, True, 12_233_232),  # the published EfficientNet-B3
    ],
)
def test_parameter_counts(model_type: str, use_se: bool, top: bool, expected: int) -> None:
    model = EfficientNet(model_type, num_classes=1000, use_se_block=use_se, include_top=top)
    assert count(model) == expected


def test_compound_scaling_rounding() -> None:
    assert round_filters(32, 1.2) == 40 and round_filters(1280, 1.2) == 1536  # b3 stem and head
    assert round_filters(1280, 2.0) == 2560
    assert round_filters(16, 1.2) == 24  # 19.2 rounds to 16, below 90%: one step up
    assert round_filters(112, 1.2) == 136
    assert [round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]  # ceil


def test_b0_features_strides_and_channels() -> None:
    model = EfficientNet("b0", include_top=False).eval()
    assert model.out_channels == [16, 24, 40, 112, 320]
    assert model.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape) for f in features] == [
        (1, c, 128 // s, 128 // s) for c, s in zip(model.out_channels, model.strides, strict=True)
    ]


def test_b3_feature_channels() -> None:
    model = EfficientNet("b3", include_top=False, use_se_block=False).eval()
    assert model.out_channels == [24, 32, 48, 136, 384]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == model.out_channels


def test_include_top_appends_logits() -> None:
    model = EfficientNet("b0", num_classes=10, out_indices=(4,)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 128, 128))
    assert len(outputs) == 2
    assert outputs[0].shape == (2, 320, 4, 4)
    assert outputs[1].shape == (2, 10)


def test_out_indices_select_features() -> None:
    full = EfficientNet("b0", include_top=False).eval()
    some = EfficientNet("b0", include_top=False, out_indices=[3, 1]).eval()
    some.load_state_dict(full.state_dict())  # out_indices change outputs, not parameters
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        all_features, selected = full(x), some(x)
    assert some.out_channels == [112, 24] and some.strides == [16, 4]
    assert len(selected) == 2
    torch.testing.assert_close(selected[0], all_features[3])
    torch.testing.assert_close(selected[1], all_features[1])


def test_num_stages_builds_a_prefix_of_the_full_model() -> None:
    full = EfficientNet("b0", include_top=False, use_se_block=False).eval()
    short = EfficientNet("b0", include_top=False, use_se_block=False, num_stages=3).eval()
    assert len(short.stages) == 3 and short.out_indices == (0, 1, 2)
    assert short.out_channels == [16, 24, 40] and short.strides == [2, 4, 8]
    assert count(short) < count(full) / 20  # the deep stages hold nearly all parameters
    missing, unexpected = short.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected
    assert {k.split(".")[1] for k in unexpected} == {"3", "4", "5", "6"}  # stages.<i>...
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for mine, theirs in zip(short(x), full(x)[:3], strict=True):
            torch.testing.assert_close(mine, theirs)
    stride16 = EfficientNet("b0", include_top=False, num_stages=5, out_indices=[3])
    assert stride16.out_channels == [112] and stride16.strides == [16]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_type": "b8"}, "model_type"),
        ({"activation": "gelu"}, "activation"),
        ({"out_indices": (0, 5)}, "out_indices"),
        ({"out_indices": (), "include_top": False}, "nothing to return"),
        ({"drop_connect_rate": 1.0}, "drop_connect_rate"),
        ({"num_stages": 0, "include_top": False}, "num_stages"),
        ({"num_stages": 8, "include_top": False}, "num_stages"),
        ({"num_stages": 5}, "include_top needs all 7"),
        ({"num_stages": 3, "include_top": False, "out_indices": (2, 3)}, "beyond num_stages"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EfficientNet(**kwargs)


def test_bn_defaults_and_overrides() -> None:
    bn = EfficientNet("b0", include_top=False).stem.bn
    assert (bn.momentum, bn.eps) == (0.01, 1e-3)
    bn = EfficientNet("b0", include_top=False, bn_kwargs={"eps": 1e-5}).stem.bn
    assert (bn.momentum, bn.eps) == (0.01, 1e-5)


def test_eval_is_deterministic_and_drop_connect_only_trains() -> None:
    torch.manual_seed(0)
    dropping = EfficientNet("b0", include_top=False, use_se_block=False, drop_connect_rate=0.5)
    plain = EfficientNet("b0", include_top=False, use_se_block=False, drop_connect_rate=0.0)
    plain.load_state_dict(dropping.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        dropping.eval(), plain.eval()
        first, second, reference = dropping(x)[-1], dropping(x)[-1], plain(x)[-1]
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(first, reference, rtol=0, atol=0)
        dropping.train(), plain.train()  # batch statistics; only drop connect is random
        torch.testing.assert_close(plain(x)[-1], plain(x)[-1], rtol=0, atol=0)
        assert not torch.equal(dropping(x)[-1], dropping(x)[-1])


def test_registered_as_efficientnet() -> None:
    registry = Registry()
    assert registry.add_marked(efficientnet) == 1
    model = registry.build({"type": "efficientnet", "model_type": "b0", "include_top": False, "out_indices": [4]})
    assert isinstance(model, EfficientNet) and model.out_channels == [320]


def test_layers() -> None:
    block = ConvBNAct(8, 16, 3, stride=2, act=None)
    assert list(block._modules) == ["conv", "bn"] and block.conv.padding == (1, 1) and block.conv.bias is None
    assert isinstance(ConvBNAct(8, 8, 5, groups=8, act="relu6").act, nn.ReLU6)
    assert isinstance(make_activation("swish"), nn.SiLU) and make_activation(None) is None
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("mish")


# -- quantization ---------------------------------------------------------------------------


class Wrapped(nn.Module):
    """What a task model does: it owns the input's QuantStub, dequantizes its outputs."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.quant = QuantStub()
        # momentum None: cumulative BatchNorm statistics, exact after a few batches.
        self.backbone = EfficientNet("b0", include_top=False, bn_kwargs={"momentum": None}, **kwargs)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.dequant(f) for f in self.backbone(self.quant(x))]


def sane_float_model(**kwargs) -> Wrapped:
    """A random-weight model whose BatchNorm statistics match its inputs, in eval mode."""
    torch.manual_seed(0)
    model = Wrapped(**kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 64, 64))
    return model.eval()


def calibrated(model: Wrapped) -> tuple[nn.Module, object]:
    qmodel, report = convert(model, QConfig())
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for _ in range(4):
            qmodel(torch.randn(8, 3, 64, 64))
    return qmodel, report


def blocks(model: Wrapped) -> list[nn.Module]:
    return [model.backbone.stem] + [block for stage in model.backbone.stages for block in stage]


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_keypoint_backbone_converts_entirely_to_int8(activation: str) -> None:
    model = sane_float_model(activation=activation, use_se_block=False)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    with_act = sum(isinstance(m, ConvBNAct) and hasattr(m, "act") for m in model.modules())
    adds = sum(isinstance(m, FloatFunctional) for m in model.modules())
    assert adds == 9  # one residual add per block that keeps its shape

    qmodel, report = calibrated(model)
    assert report.left_float == []
    qconvs = [m for m in qmodel.modules() if isinstance(m, Q.QConv2d)]
    assert len(qconvs) == convs
    wrapped = {id(q.module) for q in qconvs}
    assert all(id(m) in wrapped for m in qmodel.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())  # all folded
    assert all(q.module.bias is not None for q in qconvs)  # the BatchNorm shift lives on
    # Every activation is fused into its conv, so none survives as a module.
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in qmodel.modules())
    assert sum(q.act == activation for q in qconvs) == with_act
    assert not any(isinstance(m, FloatFunctional) for m in qmodel.modules())
    assert sum(isinstance(m, Q.QFunctional) for m in qmodel.modules()) == adds
    assert all(bool(q.calibrated) for q in qmodel.modules() if hasattr(q, "calibrated"))


def test_keypoint_backbone_simulation_tracks_float() -> None:
    """Each block's int8 simulation matches float on the same input (> 0.999 cosine), and
    the shallow features match end to end (> 0.99).

    End to end, the stride-16/32 features drift further (about 0.95 / 0.85) because a
    random-weight BatchNorm network amplifies any small perturbation: the float model
    itself moves to about 0.95 at stride 32 for 1% input noise. A trained model is far
    less sensitive; the per-block check is what measures quantization error.
    """
    model = sane_float_model(activation="relu", use_se_block=False)
    float_model = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = float_model(x)
    qmodel, _ = calibrated(model)

    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        b.register_forward_hook(lambda _m, i, o: captured.append((i[0].detach().clone(), o.detach().clone())))
        for b in blocks(qmodel)
    ]
    with torch.no_grad():
        simulated = qmodel(x)
    for hook in hooks:
        hook.remove()

    with torch.no_grad():
        local = [cosine(fb(inp), out) for fb, (inp, out) in zip(blocks(float_model), captured, strict=True)]
    assert len(local) == 17 and min(local) > 0.999, local
    end_to_end = [cosine(s, r) for s, r in zip(simulated, reference, strict=True)]
    assert min(end_to_end[:3]) > 0.99, end_to_end
    assert end_to_end[-1] > 0.75, end_to_end  # guards against gross errors (a wrong fold gives ~0)


def test_se_blocks_quantize_with_relu() -> None:
    model = sane_float_model(activation="relu", use_se_block=True)
    qmodel, report = calibrated(model)
    assert report.left_float == []
    se = qmodel.backbone.stages[1][0].se
    assert isinstance(se.scale, Q.QFunctional)  # the gating product is an int8 mul
    assert isinstance(se.pool, Q.QWithOutput) and isinstance(se.gate, Q.QWithOutput)
    assert se.reduce.act == "relu" and se.expand.act is None


def test_swish_leaves_silu_float_and_says_so() -> None:
    model = sane_float_model(activation="swish", use_se_block=True)
    silu = {name for name, m in model.named_modules() if isinstance(m, nn.SiLU)}
    _, report = convert(model, QConfig())
    float_paths = {path for path, kind, _ in report.left_float if kind == "SiLU"}
    assert float_paths == silu and len(silu) == 1 + 16 * 2 + 15  # stem, per block dw + SE, 15 expands
    assert all("SiLU" in reason for _, kind, reason in report.left_float if kind == "SiLU")
    assert {kind for _, kind, _ in report.left_float} == {"SiLU"}
