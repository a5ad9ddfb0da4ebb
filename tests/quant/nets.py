"""Small hand-built models for the quantization tests."""

from __future__ import annotations

import torch
from torch import nn

from hat.quant import DeQuantStub, FloatFunctional, QuantStub


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is tested."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    return model


def cbr(cin: int, cout: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU())


class Net(nn.Module):
    """QuantStub, Conv-BN-ReLU blocks, a quantized add, max-pool, a transposed
    Conv-BN-ReLU, a plain conv head, then float-only SiLU and LayerNorm."""

    def __init__(self, width: int = 8, size: int = 16) -> None:
        super().__init__()
        self.q = QuantStub()
        self.stem = cbr(3, width)
        self.b1 = cbr(width, width, bias=True)
        self.add = FloatFunctional()
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Sequential(nn.ConvTranspose2d(width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, 4, 1)
        self.dq = DeQuantStub()
        self.act = nn.SiLU()
        self.norm = nn.LayerNorm([4, size, size])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.q(x)
        x = self.stem(x)
        x = self.add.add(x, self.b1(x))
        x = self.pool(x)
        x = self.up(x)
        x = self.head(x)
        x = self.dq(x)
        return self.norm(self.act(x))


class Small(nn.Module):
    """QuantStub, one Conv-BN-ReLU and a conv head: for state-dict and QAT tests."""

    def __init__(self) -> None:
        super().__init__()
        self.q = QuantStub()
        self.block = cbr(3, 8, bias=True)
        self.head = nn.Conv2d(8, 2, 1)
        self.dq = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dq(self.head(self.block(self.q(x))))


def make_net(seed: int = 0, **kwargs) -> Net:
    torch.manual_seed(seed)
    return randomize_bn(Net(**kwargs)).eval()


def make_small(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    return randomize_bn(Small()).eval()
