"""NonLocalAttention and FPN: shapes, the gamma-0 identity path, the embedding, registration, int8 export."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hat.deploy import OnnxRuntimeBackend, analyze, export_onnx
from hat.models.attention import NonLocalAttention, sine_position_embedding
from hat.models.fpn import FPN, upsample_on_grid
from hat.quant import DeQuantStub, QuantStub
from hat.quant import qmodules as Q
from hat.quant.fake_quant import QParams, qparams_of, tag
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig
from hat.registry import Registry

#: Float compute ops that must not survive onnxruntime's fusion (Resize is data movement).
FLOAT_COMPUTE = {"Conv", "FusedConv", "Add", "Sum", "Mul", "MatMul", "Gemm", "Softmax", "Relu"}


def test_sine_embedding_is_rows_then_columns() -> None:
    pos = sine_position_embedding(32, 10, 25)
    assert pos.shape == (1, 32, 10, 25) and pos.abs().max() <= 1.0
    rows, cols = pos[0, :16], pos[0, 16:]
    assert torch.equal(rows, rows[:, :, :1].expand_as(rows))  # the row half is constant along a row
    assert torch.equal(cols, cols[:, :1, :].expand_as(cols))
    flat = pos[0].reshape(32, -1).T
    assert torch.cdist(flat, flat).add(torch.eye(250) * 10).min() > 1e-3  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_embedding(30, 2, 2)


def test_attention_shapes_and_gamma_zero_is_the_identity_path() -> None:
    torch.manual_seed(0)
    block = NonLocalAttention(160, 32, 8).eval()
    assert block.gamma.detach().item() == 0.0
    x = torch.randn(2, 160, 10, 25)
    with torch.no_grad():
        y = block(x)
        assert y.shape == (2, 32, 10, 25)
        torch.testing.assert_close(y, block.out(block.reduce(x)))  # attention adds nothing at init
        block.gamma.fill_(1.0)
        assert (block(x) - y).abs().max() > 1e-3
    with pytest.raises(ValueError, match="expects"):
        block(torch.randn(1, 96, 4, 4))


def test_gradient_reaches_gamma_and_the_projections_once_it_is_nonzero() -> None:
    torch.manual_seed(0)
    block = NonLocalAttention(16, 8, 4).train()
    block(torch.randn(2, 16, 3, 5)).pow(2).mean().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs() > 0  # gamma learns from 0
    block.zero_grad()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    block(torch.randn(2, 16, 3, 5)).pow(2).mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_attention_rows_sum_to_one_over_all_positions() -> None:
    block = NonLocalAttention(8, 8, 4).eval()
    seen = {}
    block.softmax.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        block(torch.randn(1, 8, 4, 6))
    assert seen["a"].shape == (1, 24, 24)
    torch.testing.assert_close(seen["a"].sum(-1), torch.ones(1, 24))


def test_embedding_follows_the_map_size_and_is_ignored_when_loading() -> None:
    block = NonLocalAttention(8, 8, 4).eval()
    assert block.pos_embedding.shape == (1, 8, 10, 25)
    with torch.no_grad():
        block(torch.randn(1, 8, 2, 5))
    assert block.pos_embedding.shape == (1, 8, 2, 5)
    fresh = NonLocalAttention(8, 8, 4)
    fresh.load_state_dict(block.state_dict())  # another size in the checkpoint: no error
    assert fresh.pos_embedding.shape == (1, 8, 10, 25)
    torch.testing.assert_close(fresh.reduce.conv.weight, block.reduce.conv.weight)


def test_fpn_levels_and_channels() -> None:
    fpn = FPN([64, 96, 32], 32).eval()
    feats = [torch.randn(2, 64, 40, 100), torch.randn(2, 96, 20, 50), torch.randn(2, 32, 10, 25)]
    with torch.no_grad():
        outputs = fpn(feats)
    assert [tuple(o.shape) for o in outputs] == [(2, 32, 40, 100), (2, 32, 20, 50), (2, 32, 10, 25)]
    odd = [torch.randn(1, 64, 9, 13), torch.randn(1, 96, 5, 7), torch.randn(1, 32, 3, 4)]
    with torch.no_grad():
        assert [o.shape[-2:] for o in fpn(odd)] == [(9, 13), (5, 7), (3, 4)]
    smooth = FPN([8, 8], 16, upsample_mode="nearest", output_convs=True)
    assert len(smooth.output_convs) == 2


def test_fpn_top_down_is_upsample_and_add() -> None:
    fpn = FPN([4, 4], 4).eval()
    for lateral in fpn.laterals:  # identity laterals: the sum is visible
        nn.init.dirac_(lateral.conv.weight)
    fine, coarse = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        (top,) = fpn([fine, coarse])[1:]
        out = fpn([fine, coarse])[0]
    bn0, bn1 = fpn.laterals[0].bn, fpn.laterals[1].bn
    expect = bn0(fine) + torch.nn.functional.interpolate(bn1(coarse), scale_factor=2, mode="bilinear")
    torch.testing.assert_close(out, expect)
    assert top.shape == coarse.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": [8]}, "at least two"),
        ({"out_channels": 0}, "out_channels"),
        ({"upsample_mode": "bicubic"}, "upsample_mode"),
    ],
)
def test_fpn_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FPN(**{"in_channels": [8, 8], **kwargs})


def test_fpn_rejects_coarse_first_inputs() -> None:
    fpn = FPN([8, 8], 8).eval()
    with pytest.raises(ValueError, match="finest map to the coarsest"):
        fpn([torch.randn(1, 8, 2, 2), torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="expects 2"):
        fpn([torch.randn(1, 8, 2, 2)])


def test_bilinear_upsample_stays_on_its_input_grid() -> None:
    params = QParams(0.05, 0)
    x = tag(torch.randint(-100, 100, (1, 2, 3, 4)).float() * 0.05, params)
    y = upsample_on_grid(x, (6, 8))
    assert qparams_of(y) == params
    torch.testing.assert_close(y / 0.05, (y / 0.05).round())
    assert qparams_of(upsample_on_grid(torch.randn(1, 1, 2, 2), (4, 4))) is None


def test_core_registers_both() -> None:
    from hat import builtins

    registry = Registry()
    builtins.hat_register(registry)
    assert registry.get("NonLocalAttention") is NonLocalAttention and registry.get("FPN") is FPN
    block = registry.build({"type": "NonLocalAttention", "in_channels": 160})
    assert block.channels == 32 and block.key_channels == 8


# -- int8 ---------------------------------------------------------------------------------


class AttentionFPN(nn.Module):
    """Backbone-shaped inputs at strides 8/16/32 -> attention on the last -> FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = nn.ModuleList(QuantStub() for _ in range(3))
        self.attention = NonLocalAttention(160, 32, 8)
        self.fpn = FPN([64, 96, 32], 32)
        self.dequant = nn.ModuleList(DeQuantStub() for _ in range(3))

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c8, c16, c32 = (q(data[k]) for q, k in zip(self.quant, ("c8", "c16", "c32"), strict=True))
        outputs = self.fpn([c8, c16, self.attention(c32)])
        return {f"p{i}": dq(o) for i, (dq, o) in enumerate(zip(self.dequant, outputs, strict=True))}


def inputs(seed: int, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "c8": torch.randn(batch, 64, 8, 20, generator=g).relu(),
        "c16": torch.randn(batch, 96, 4, 10, generator=g).relu(),
        "c32": torch.randn(batch, 160, 2, 5, generator=g).relu(),
    }


def test_attention_and_fpn_export_int8_but_for_the_bilinear_resizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AttentionFPN().eval()
    with torch.no_grad():
        model.attention.gamma.fill_(0.7)  # a trained gamma: the attention path carries signal
    qmodel, report = convert(copy.deepcopy(model), QConfig())
    assert [(p, k) for p, k, _ in report.left_float] == [("attention.softmax", "Softmax")]
    assert (
        sum(isinstance(m, Q.QFunctional) for m in qmodel.modules()) == 5 + 2
    )  # attention: pos add, 2 matmuls, gamma, residual; FPN: 2 adds
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        qmodel(inputs(1, batch=4))
    x = inputs(2)
    with torch.no_grad():
        qmodel(x)
        freeze(qmodel)
        simulated = qmodel(x)
    path = tmp_path / "neck.onnx"
    info = export_onnx(qmodel, x, path)
    scales = {o["name"]: float(o["scale"]) for o in info.outputs}
    optimized = onnx.load(str(OnnxRuntimeBackend().compile(path, 3, tmp_path / "neck.opt3.onnx")))
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert not FLOAT_COMPUTE & set(ops), ops
    assert ops["QLinearMatMul"] == 2 and ops["QLinearSoftmax"] == 1 and ops["QLinearMul"] == 1
    assert ops["QLinearAdd"] == 2 + 2 and ops["QLinearConv"] == 2 + 3 + 3
    result = analyze(optimized, exported=onnx.load(str(path)), opt_level=3)
    assert [n.op_type for n in result.non_int8()] == ["Resize", "Resize"]  # linear Resize keeps its Q/DQ
    assert result.int8_flops_share == 1.0
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {k: v.numpy() for k, v in x.items()}), strict=True))
    for name, value in simulated.items():
        diff = np.abs(outputs[name] - value.numpy())
        assert (diff <= scales[name] * 1.001).mean() > 0.95, name
