"""BatchNorm folding, fusion patterns, and the exact transposed-conv -> conv rewrite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hat.quant.fuse import Fused, find_and_fuse, fold_bn
from hat.quant.qmodules import deconv_as_conv, rewritable_as_conv
from tests.quant.nets import randomize_bn


def folded_matches(module: nn.Module, bn: nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    randomize_bn(bn)
    module.eval()
    bn.eval()
    with torch.no_grad():
        ref = bn(module(x))
        folded = fold_bn(module, bn)
        out = folded(x)
    assert folded is module
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_bn_conv2d(bias: bool) -> None:
    torch.manual_seed(0)
    folded_matches(nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_bn_conv_transpose2d(bias: bool) -> None:
    torch.manual_seed(0)
    folded_matches(nn.ConvTranspose2d(3, 5, 4, 2, 1, bias=bias), nn.BatchNorm2d(5), torch.randn(2, 3, 6, 6))


def test_fold_bn_grouped() -> None:
    torch.manual_seed(0)
    folded_matches(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), torch.randn(2, 4, 6, 6))
    folded_matches(nn.ConvTranspose2d(4, 6, 4, 2, 1, groups=2), nn.BatchNorm2d(6), torch.randn(2, 4, 6, 6))


def test_fold_bn_linear_batchnorm1d() -> None:
    torch.manual_seed(0)
    folded_matches(nn.Linear(7, 4), nn.BatchNorm1d(4), torch.randn(5, 7))


def test_fold_bn_without_affine() -> None:
    torch.manual_seed(0)
    folded_matches(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False), torch.randn(2, 3, 4, 4))


def test_find_and_fuse_sequential_and_declared_patterns() -> None:
    class Declared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.act = nn.ReLU6()

        def hat_fuse_patterns(self):
            return [("conv", "bn", "act")]

    model = nn.Module()
    model.seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
    model.dec = Declared()
    model.lone = nn.Linear(3, 3)
    model.bn_alone = nn.BatchNorm2d(3)
    groups = find_and_fuse(model)
    assert isinstance(model.seq[1], Fused) and isinstance(model.seq[2], Fused) and isinstance(model.seq[4], Fused)
    assert groups[id(model.seq[0])].act == "relu"
    assert groups[id(model.seq[3])].act == "relu"
    assert isinstance(model.dec.bn, Fused) and isinstance(model.dec.act, Fused)
    assert groups[id(model.dec.conv)].act == "relu6"
    assert groups[id(model.lone)].act is None
    assert isinstance(model.bn_alone, nn.BatchNorm2d)  # nothing to fold into


# -- transposed conv as conv + depth-to-space --------------------------------------------------

#: (kernel, stride, padding, output_padding) with k - 2p + op == s, symmetric and not.
REWRITABLE = [
    (4, 2, 1, 0),
    (2, 2, 0, 0),
    (3, 2, 1, 1),
    (3, 3, 0, 0),
    (5, 3, 1, 0),
    (6, 2, 2, 0),
    (5, 4, 1, 1),
    (3, 1, 1, 0),
]


@pytest.mark.parametrize("k,s,p,op", REWRITABLE)
@pytest.mark.parametrize("bias", [True, False])
def test_deconv_as_conv_is_exact(k: int, s: int, p: int, op: int, bias: bool) -> None:
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(3, 5, k, s, p, op, bias=bias)
    assert rewritable_as_conv(deconv)
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        ref = F.conv_transpose2d(x, deconv.weight, deconv.bias, s, p, op)
        weight, conv_bias, padding = deconv_as_conv(deconv.weight, deconv.bias, s, p, op)
        out = F.pixel_shuffle(F.conv2d(x, weight, conv_bias, padding=padding), s)
    assert weight.shape[:2] == (5 * s * s, 3)
    assert (conv_bias is None) == (not bias)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 4, "stride": 2, "padding": 1, "groups": 2},  # grouped
        {"kernel_size": 3, "stride": 2, "padding": 1},  # k - 2p + op = 1 != 2
        {"kernel_size": 4, "stride": 2, "padding": 0},  # 4 != 2
        {"kernel_size": 4, "stride": 2, "padding": 1, "dilation": 2},
        {"kernel_size": (4, 2), "stride": 2, "padding": (1, 0)},  # not square
        {"kernel_size": 4, "stride": (2, 1), "padding": 1},
    ],
)
def test_rewritable_as_conv_refuses(kwargs) -> None:
    assert not rewritable_as_conv(nn.ConvTranspose2d(4, 4, **kwargs))
