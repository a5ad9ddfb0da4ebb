"""A transposed conv exports as one int8 conv per output phase, an int8 concat and a
depth-to-space (mode DCR), with no Pad or float node left after onnxruntime's
optimization, and onnxruntime computes what the torch fixed-point model does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from hat.deploy import OnnxRuntimeBackend, export_onnx
from hat.quant import DeQuantStub, QuantStub
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig


class TwoDeconvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.head = nn.Conv2d(8, 3, 3, padding=1)
        self.dq = DeQuantStub()

    def forward(self, batch: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = batch["x"] if isinstance(batch, dict) else batch  # export feeds the inputs by name
        return self.dq(self.head(self.up2(self.up1(self.q(x)))))


def test_deconvs_run_as_phase_convs_in_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoDeconvs().eval()
    with torch.no_grad():
        for bn in (model.up1[1], model.up2[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    qmodel, report = convert(model, QConfig())
    assert report.left_float == [], report.summary()
    x = torch.randn(4, 8, 6, 6)
    with torch.no_grad(), calibration_mode(qmodel):
        qmodel(x)
    with torch.no_grad():
        simulated = qmodel(x[:1])
        frozen = freeze(qmodel)
        fixed = frozen(x[:1])
    assert frozen.up1[0].phases is not None and frozen.up2[0].phases is not None
    # the phase convs compute the transposed conv: within one output step of the simulation
    step = float(frozen.head.out_quant.scale)
    assert float((fixed - simulated).abs().max()) <= 2 * step

    path = tmp_path / "deconvs.onnx"
    export_onnx(frozen, {"x": x[:1]}, path)
    exported = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert exported["Pad"] == 0, exported  # folded into the phase convs' own pads
    assert exported["DepthToSpace"] == 0, exported  # interleaved channels-last instead

    backend = OnnxRuntimeBackend()
    optimized = backend.compile(path, 3, tmp_path / "deconvs.opt3.onnx")
    graph = onnx.load(optimized).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QLinearConv"] == 4 + 4 + 1 and ops["QLinearConcat"] == 2 * 3, ops  # 2 rows + 1 join per deconv
    assert not {"Conv", "ConvTranspose", "Pad", "Concat", "DepthToSpace"} & set(ops), ops
    # channels-last throughout: onnxruntime's layout transposes cancel against the interleave's,
    # leaving only the graph input's (to NHWC) and the graph output's (back to NCHW)
    assert ops["Transpose"] == 2, ops

    session = backend.session(path, threads=1, opt_level=3)
    got = backend.run(session, {"x": x[:1].numpy()})
    out = next(iter(got.values()))
    agree = np.abs(np.rint(out / step) - np.rint(fixed.numpy() / step)) <= 1
    assert agree.mean() >= 0.99
