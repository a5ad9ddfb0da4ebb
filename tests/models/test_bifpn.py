"""BiFPN: pyramid shapes (odd sizes too), fast normalized fusion, gradients, and an all-int8 export."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hat.deploy import OnnxRuntimeBackend, analyze, export_onnx
from hat.models import EfficientNet, bifpn
from hat.models.bifpn import BiFPN, WeightedFusion
from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant import qmodules as Q
from hat.quant.modes import calibration_mode
from hat.quant.prepare import ConversionReport, convert, freeze
from hat.quant.qconfig import QConfig
from hat.registry import Registry
from hat.testing import fixed_point
from tests.models.ort_run import run_ort

B0_CHANNELS = (40, 112, 320)  # EfficientNet-b0 at strides 8, 16, 32
STRIDES = [8, 16, 32, 64, 128]
#: Ops that compute in float: none may survive onnxruntime's QDQ fusion.
FLOAT_COMPUTE = {"Conv", "FusedConv", "Add", "Sum", "Mul", "Div", "MatMul", "Gemm", "ConvTranspose", "Relu"}


def half(n: int) -> int:
    return math.ceil(n / 2)


def features(size: tuple[int, int], channels=B0_CHANNELS, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Random maps shaped like a backbone's at strides 8, 16, 32 for an input of ``size``."""
    generator = torch.Generator().manual_seed(seed)
    h, w = half(half(half(size[0]))), half(half(half(size[1])))
    maps = []
    for c in channels:
        maps.append(torch.randn(batch, c, h, w, generator=generator))
        h, w = half(h), half(w)
    return maps


def cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    return F.cosine_similarity(a, b, dim=0).item()


@pytest.fixture(scope="module")
def b0() -> EfficientNet:
    torch.manual_seed(0)
    return EfficientNet("b0", activation="relu", use_se_block=False, include_top=False, out_indices=(2, 3, 4)).eval()


# -- shapes ------------------------------------------------------------------------------------


def test_reference_input_with_efficientnet_b0_features(b0: EfficientNet) -> None:
    neck = BiFPN(b0.strides, b0.out_channels, STRIDES, out_channels=64, num_repeats=1).eval()
    assert b0.strides == [8, 16, 32] and b0.out_channels == list(B0_CHANNELS)
    with torch.no_grad():
        outputs = neck(b0(torch.randn(1, 3, 512, 896)))
    assert [tuple(o.shape) for o in outputs] == [
        (1, 64, 64, 112),
        (1, 64, 32, 56),
        (1, 64, 16, 28),
        (1, 64, 8, 14),
        (1, 64, 4, 7),
    ]
    assert neck.out_strides == STRIDES and neck.strides == STRIDES and neck.out_channels == 64


@pytest.mark.parametrize("size", [(64, 64), (100, 130), (128, 224), (33, 47)])
def test_small_and_odd_inputs(b0: EfficientNet, size: tuple[int, int]) -> None:
    """Sizes round up at every stride-2 step, so doubling a coarse map may overshoot by one."""
    neck = BiFPN([8, 16, 32], B0_CHANNELS, STRIDES, out_channels=16, num_repeats=2).eval()
    with torch.no_grad():
        feats = b0(torch.randn(2, 3, *size))
        outputs = neck(feats)
    h, w = feats[0].shape[-2:]
    expected = []
    for _ in STRIDES:
        expected.append((2, 16, h, w))
        h, w = half(h), half(w)
    assert [tuple(o.shape) for o in outputs] == expected
    assert all(torch.isfinite(o).all() for o in outputs)


def test_out_strides_select_levels() -> None:
    some = BiFPN([8, 16, 32], (8, 8, 8), [16, 64], out_channels=8).eval()
    assert some.strides == [8, 16, 32, 64] and some.out_strides == [16, 64]
    feats = features((64, 96), (8, 8, 8))
    with torch.no_grad():
        assert [o.shape[-1] for o in some(feats)] == [6, 2]


def test_inputs_already_of_out_channels_skip_projections() -> None:
    neck = BiFPN([16, 32], (24, 24), [16, 32, 64, 128], out_channels=24)
    assert all(isinstance(m, nn.Identity) for m in neck.laterals)
    assert all(isinstance(m, nn.MaxPool2d) for m in neck.extras)
    projected = BiFPN([16, 32], (24, 40), [16, 32, 64], out_channels=24)
    assert isinstance(projected.laterals[0], nn.Identity) and not isinstance(projected.laterals[1], nn.Identity)
    assert isinstance(projected.extras[0], nn.Sequential)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_strides": [8, 16], "in_channels": [8]}, "same length"),
        ({"in_strides": [8, 32], "in_channels": [8, 8]}, "double"),
        ({"out_strides": [32, 16]}, "increasing"),
        ({"out_strides": [8, 24]}, "not pyramid levels"),
        ({"out_strides": [4, 8]}, "not pyramid levels"),
        ({"in_strides": [32], "in_channels": [8], "out_strides": [32]}, "at least two levels"),
        ({"out_channels": 0}, "out_channels"),
        ({"num_repeats": 0}, "num_repeats"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    args = {"in_strides": [8, 16, 32], "in_channels": [8, 8, 8], "out_strides": STRIDES, **kwargs}
    with pytest.raises(ValueError, match=message):
        BiFPN(**args)


def test_wrong_inputs_are_rejected() -> None:
    neck = BiFPN([8, 16, 32], (8, 8, 8), STRIDES, out_channels=8).eval()
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        neck(features((64, 64), (8, 8)))
    feats = features((64, 64), (8, 8, 8))
    feats[1] = feats[1][..., :3, :3]  # not half of the finer level
    with pytest.raises(ValueError, match="smaller than its neighbour"):
        neck(feats)


# -- fusion and training -------------------------------------------------------------------------


def test_fast_normalized_fusion() -> None:
    fusion = WeightedFusion(3, eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([1.0, 3.0, -2.0]))  # a negative weight counts as zero
    weights = fusion.normalized_weights()
    torch.testing.assert_close(weights, torch.tensor([1.0, 3.0, 0.0]) / (4.0 + 1e-4))
    xs = [torch.randn(2, 4, 5, 6) for _ in range(3)]
    torch.testing.assert_close(fusion(xs), weights[0] * xs[0] + weights[1] * xs[1])
    assert isinstance(fusion.scale[0], FloatFunctional) and len(fusion.scale) == 3 and len(fusion.sum) == 2
    with pytest.raises(ValueError, match="expected 3 inputs"):
        fusion(xs[:2])
    with pytest.raises(ValueError, match="at least two"):
        WeightedFusion(1)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    neck = BiFPN([8, 16, 32], (12, 20, 28), STRIDES, out_channels=8, num_repeats=2).train()
    feats = [f.requires_grad_() for f in features((64, 96), (12, 20, 28), batch=2)]
    outputs = neck(feats)
    sum(o.pow(2).mean() for o in outputs).backward()
    for name, param in neck.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert all(f.grad.abs().sum() > 0 for f in feats)


def test_registered_as_bifpn() -> None:
    registry = Registry()
    assert registry.add_marked(bifpn) == 1
    neck = registry.build(
        {"type": "BiFPN", "in_strides": [8, 16, 32], "in_channels": [40, 112, 320], "out_strides": STRIDES}
    )
    assert isinstance(neck, BiFPN) and neck.out_channels == 64 and len(neck.layers) == 1


def test_core_registers_bifpn() -> None:
    from hat import builtins

    registry = Registry()
    builtins.hat_register(registry)
    assert registry.get("BiFPN") is BiFPN


# -- quantization and export ---------------------------------------------------------------------


class NeckModel(nn.Module):
    """A task model around the neck: quantized inputs at strides 8..32, float outputs at 8..128."""

    def __init__(self, neck: BiFPN) -> None:
        super().__init__()
        self.quant = nn.ModuleList(QuantStub() for _ in neck.in_strides)
        self.neck = neck
        self.dequant = nn.ModuleList(DeQuantStub() for _ in neck.out_strides)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.neck([q(data[f"c{i}"]) for i, q in enumerate(self.quant)])
        return {f"p{s}": dq(o) for s, dq, o in zip(self.neck.out_strides, self.dequant, outputs, strict=True)}


def neck_batch(seed: int, batch: int = 1) -> dict[str, torch.Tensor]:
    return {f"c{i}": f for i, f in enumerate(features((128, 224), batch=batch, seed=seed))}


@dataclass
class Exported:
    float_model: NeckModel
    qmodel: nn.Module
    report: ConversionReport
    path: Path
    proto: onnx.ModelProto
    inputs: dict[str, torch.Tensor]
    simulated: dict[str, torch.Tensor]
    scales: dict[str, float]
    symmetry: str = "symmetric"


@pytest.fixture(scope="module", params=["symmetric", pytest.param("asymmetric", marks=pytest.mark.slow)])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The neck (2 repeats, 128x224-image sizes: P6 4x7 and P7 2x4, so the crop is exported)
    with sane BatchNorm statistics, calibrated and exported once.

    The fusion weights are drawn at random: with the initial equal weights, min-max
    calibration gives P6 and up(P7 = maxpool(P6)) the same scale and their sum exactly
    twice it, so a third of the sums land exactly on a rounding tie, where float32
    simulation and onnxruntime break ties differently (a trained model has no such ratios).
    """
    torch.manual_seed(0)
    neck = BiFPN([8, 16, 32], B0_CHANNELS, STRIDES, out_channels=64, num_repeats=2, bn_kwargs={"momentum": None})
    for module in neck.modules():
        if isinstance(module, WeightedFusion):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    model = NeckModel(neck).train()
    with torch.no_grad():
        for seed in range(3):
            model(neck_batch(seed, batch=4))
    x = neck_batch(99)
    qmodel, report, simulated = fixed_point(
        model, (neck_batch(10 + seed, batch=2) for seed in range(3)), x, {"activation_symmetry": request.param}
    )
    path = tmp_path_factory.mktemp("bifpn") / "neck.onnx"
    info = export_onnx(qmodel, x, path)
    scales = {o["name"]: float(o["scale"]) for o in info.outputs}
    return Exported(model, qmodel, report, path, onnx.load(str(path)), x, simulated, scales, request.param)


def test_neck_converts_with_nothing_left_float(exported: Exported) -> None:
    assert exported.report.left_float == []
    modules = list(exported.qmodel.modules())
    assert not any(isinstance(m, (FloatFunctional, nn.BatchNorm2d, nn.ReLU)) for m in modules)
    # Per repeat: 4 top-down nodes (2 products, 1 sum), 3 middle bottom-up nodes (3 + 2)
    # and the top one (2 + 1): 30 functional ops; 8 nodes of 2 convs. Plus 3 laterals + 1 extra.
    assert sum(isinstance(m, Q.QFunctional) for m in modules) == 2 * 30
    convs = [m for m in modules if isinstance(m, Q.QConv2d)]
    assert len(convs) == 2 * 16 + 4
    assert sum(c.act == "relu" for c in convs) == 2 * 8  # each node's pointwise conv + BN + ReLU


def test_simulation_tracks_float(exported: Exported) -> None:
    with torch.no_grad():
        reference = exported.float_model(exported.inputs)
    assert list(reference) == [f"p{s}" for s in STRIDES]
    for name, value in reference.items():
        assert cosine(exported.simulated[name], value) > 0.97, name


def test_unfused_onnx_equals_the_simulation(exported: Exported) -> None:
    """Without fusion onnxruntime runs the Q/DQ graph in float, the simulation's arithmetic.

    Exact up to rounding ties: torch quantizes with x * (1/s), onnxruntime with x / s, and
    its float convs sum in another order, so a value within a float32 ulp of a tie may
    round the other way; in this untrained neck the one step then spreads (up to 19 steps
    at one output). Measured over inputs 99 and 200-204, opt 0: symmetric exact on 5 of
    6, asymmetric on 4 of 6 (input 99 is one: one input element at x / s = 30.5 in
    float32, 30.500002 in torch). So the asymmetric model is compared by direction here;
    tests/deploy/test_asymmetric_export.py checks it to the step on a shallow model.
    """
    outputs = run_ort(exported.path, exported.inputs, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if exported.symmetry == "asymmetric":
        for name, value in exported.simulated.items():
            assert cosine(outputs[name], value) > 0.99, name
        return
    for name, value in exported.simulated.items():
        diff = np.abs(outputs[name] - value.numpy())
        assert diff.max() <= exported.scales[name] * 1.001, name
        assert (diff < 1e-3 * exported.scales[name]).mean() > 0.999, name


def test_fused_int8_graph_tracks_the_simulation(exported: Exported) -> None:
    """The int8 kernels round each op from its int8 inputs exactly; where float32 simulation
    sits on a rounding boundary, the one-step difference spreads through the later layers
    of an untrained network, so the whole output is compared by direction."""
    outputs = run_ort(exported.path, exported.inputs, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    for name, value in exported.simulated.items():
        assert outputs[name].shape == tuple(value.shape)
        assert cosine(outputs[name], value) > 0.99, name


@pytest.mark.parametrize("level", [2, 3])
def test_optimized_graph_is_all_int8(exported: Exported, level: int, tmp_path: Path) -> None:
    optimized = onnx.load(str(OnnxRuntimeBackend().compile(exported.path, level, tmp_path / f"neck.opt{level}.onnx")))
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert not FLOAT_COMPUTE & set(ops), ops
    assert ops["QLinearConv"] == 2 * 16 + 4
    assert ops["QLinearMul"] == 2 * 19 and ops["QLinearAdd"] == 2 * 11
    assert ops["Resize"] == 2 * 4 and ops["NhwcMaxPool" if level == 3 else "MaxPool"] == 2 * 4 + 2
    assert ops["Slice"] >= 2  # the 4x8 -> 4x7 crop, once per repeat
    result = analyze(optimized, exported=exported.proto, opt_level=level)
    assert result.non_int8() == []
    assert result.int8_flops_share == 1.0


def test_efficientnet_b0_with_bifpn_exports_all_int8(tmp_path: Path) -> None:
    """The fcos3d recipe's backbone and neck together: nothing float after conversion or fusion."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = QuantStub()
            self.backbone = EfficientNet(
                "b0", activation="relu", use_se_block=False, include_top=False, out_indices=(2, 3, 4)
            )
            self.neck = BiFPN(self.backbone.strides, self.backbone.out_channels, STRIDES, 64, num_repeats=1)
            self.dequant = nn.ModuleList(DeQuantStub() for _ in STRIDES)

        def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            outputs = self.neck(self.backbone(self.quant(data["img"])))
            return {f"p{s}": dq(o) for s, dq, o in zip(STRIDES, self.dequant, outputs, strict=True)}

    torch.manual_seed(0)
    qmodel, report = convert(Model().eval(), QConfig())
    assert report.left_float == []
    qmodel.eval()
    generator = torch.Generator().manual_seed(0)
    x = {"img": torch.randn(1, 3, 96, 160, generator=generator)}
    with torch.no_grad():
        with calibration_mode(qmodel):
            qmodel({"img": torch.randn(2, 3, 96, 160, generator=generator)})
        qmodel(x)
        freeze(qmodel)
    path = tmp_path / "model.onnx"
    export_onnx(qmodel, x, path)
    optimized = onnx.load(str(OnnxRuntimeBackend().compile(path, 3, tmp_path / "model.opt3.onnx")))
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert not FLOAT_COMPUTE & set(ops), ops
    assert ops["QLinearMul"] == 19 and ops["QLinearAdd"] == 11 + 9  # the neck's, and the backbone's residuals
    assert analyze(optimized, exported=onnx.load(str(path)), opt_level=3).non_int8() == []
