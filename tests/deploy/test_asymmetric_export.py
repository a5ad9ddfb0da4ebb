"""Asymmetric activations in the exported graph: uint8 zero points, onnxruntime, the proof."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hat.deploy import OnnxRuntimeBackend, export_onnx
from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_graph import GraphIndex
from hat.quant import DeQuantStub, FloatFunctional, QuantStub
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze, quantizers
from hat.quant.qconfig import QConfig


class Shifted(nn.Module):
    """Activations that are not after a ReLU, each with a range off-centre: the input, a conv
    with a positive bias, a residual add, a sigmoid, and a padded conv that reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.add = FloatFunctional()
        self.gate = nn.Sigmoid()
        self.pool = nn.MaxPool2d(2)
        self.post = nn.Conv2d(8, 8, 3, padding=1)  # its zero padding is the input's zero point
        self.head = nn.Conv2d(8, 4, 1)
        self.dq = DeQuantStub()
        with torch.no_grad():
            self.mid.bias.uniform_(0.5, 1.0)
            self.head.bias.uniform_(1.0, 2.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.stem(self.q(batch["img"]))
        x = self.add.add(x, self.mid(x))
        x = self.pool(self.gate(x))
        return self.dq(self.head(self.post(x)))


def image(seed: int) -> dict[str, torch.Tensor]:
    return {"img": torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(seed)) * 1.2 - 0.2}


def fixed_point(symmetry: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = convert(Shifted().eval(), QConfig.from_params({"activation_symmetry": symmetry}))
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for seed in range(4):
            model(image(seed))
    with torch.no_grad():
        model(image(0))  # records each layer's input grid for the biases
    return freeze(model)


def activation_zero_points(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """module path of each activation QuantizeLinear -> its zero point."""
    index = GraphIndex(proto.graph)
    found = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and not index.is_constant(node.input[0]):
            found[module_path_of(node.name)] = index.constant(node.input[2])
    return found


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()


@pytest.fixture(scope="module", params=["symmetric", "asymmetric"])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, nn.Module, Path, dict]:
    model = fixed_point(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    info = export_onnx(model, image(0), path)
    return request.param, model, path, info


def test_zero_points_are_uint8_and_off_centre_only_when_asymmetric(exported) -> None:
    symmetry, model, path, _ = exported
    zeros = activation_zero_points(onnx.load(str(path)))
    assert all(z.dtype == np.uint8 and z.size == 1 for z in zeros.values()), zeros
    relu_outputs = {"stem.0.out_quant"}
    shifted = {"q.quant", "mid.out_quant", "add.out_quant", "gate.out_quant", "post.out_quant", "head.out_quant"}
    assert relu_outputs | shifted <= set(zeros)
    assert int(zeros["stem.0.out_quant"]) == 0  # after a ReLU: [0, t] either way
    for module in shifted:
        assert (int(zeros[module]) == 128) == (symmetry == "symmetric"), module
    if symmetry == "asymmetric":  # the input spans [-0.2, 1]: about 1/6 of the codes below 0
        assert 30 <= int(zeros["q.quant"]) <= 55
    # The simulation's codes are the exported ones, shifted by 128 into uint8.
    for name, quantizer in model.named_modules():
        if quantizer in quantizers(model) and name in zeros:
            assert int(zeros[name]) == int(quantizer.zero_point) + 128, name


def test_the_sigmoid_output_starts_at_the_lowest_code(exported) -> None:
    symmetry, model, _, _ = exported
    if symmetry == "asymmetric":
        assert int(model.gate.out_quant.zero_point) == -128  # [0, 1]: every code used
        assert float(model.gate.out_quant.scale) < 1.01 / 255


@pytest.mark.parametrize("level", [0, 3])
def test_onnxruntime_agrees_with_the_simulation_within_one_step(exported, backend, level: int) -> None:
    _, model, path, info = exported
    assert info.saturation["safe_without_vnni"]  # uint8 codes up to 255 as before: still proved
    session = backend.session(path, threads=1, opt_level=level)
    step = float(model.head.out_quant.scale)
    for seed in (11, 12, 13):
        inputs = image(seed)
        with torch.no_grad():
            expected = model(inputs).numpy()
        out = backend.run(session, {k: v.numpy() for k, v in inputs.items()})
        got = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0])
        diff = np.abs(got - expected)
        assert diff.max() <= step * 1.01, (level, diff.max() / step)
        assert np.mean(diff < step * 0.01) >= 0.98, level


def test_asymmetric_output_error_is_smaller() -> None:
    """Against the float model: the asymmetric grids lose less (measured here: 0.48x the squared error)."""
    errors = {}
    for symmetry in ("symmetric", "asymmetric"):
        model = fixed_point(symmetry)
        torch.manual_seed(0)
        reference = Shifted().eval()
        total = 0.0
        for seed in (21, 22, 23):
            with torch.no_grad():
                total += float((model(image(seed)) - reference(image(seed))).pow(2).mean())
        errors[symmetry] = total
    assert errors["asymmetric"] < 0.8 * errors["symmetric"], errors
