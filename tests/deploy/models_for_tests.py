"""Small fixed-point simulation models, written the way HAT's quantizer writes them.

Activations go through ``torch.fake_quantize_per_tensor_affine`` (int8; zero point -128
right after a ReLU so the clamp is the ReLU), weights through
``torch.fake_quantize_per_channel_affine`` (symmetric, scale amax/64: the portable
deploy target's range for dense convs and matmuls, see ``hat.quant.target``), and biases are
rounded to the ``s_in * s_w`` grid. Scales come from a calibration pass (:func:`calibrate`)
so that outputs use the int8 range instead of saturating. Every model takes a dict
``{"img": tensor}``, like HAT models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hat.quant.target import TARGETS


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


def quantize_weight(
    weight: torch.Tensor, axis: int = 0, qmax: int = TARGETS["portable"].dense_weight_max
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel fake quantization on [-qmax, qmax]; returns (weight on grid, scales).

    The op's own clamp stays (-128, 127), the only signed range ONNX export accepts; with
    the scale amax/qmax no weight rounds past qmax anyway."""
    dims = [d for d in range(weight.dim()) if d != axis]
    scale = weight.detach().abs().amax(dim=dims).clamp(min=1e-8) / qmax
    zeros = torch.zeros(scale.shape, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zeros, axis, -128, 127), scale


def quantize_bias(bias: torch.Tensor, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The bias rounded to the int32 grid the runtime accumulates on."""
    step = in_scale * w_scale
    return torch.round(bias / step) * step


class ActQuant(nn.Module):
    """A per-tensor int8 quantizer; while calibrating it records the range and passes floats."""

    def __init__(self, *, after_relu: bool = False):
        super().__init__()
        self.after_relu = after_relu
        self.calibrating = False
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            x = F.relu(x) if self.after_relu else x
            self.amax = torch.maximum(self.amax, x.detach().abs().max())
            return x
        return fake_quant(x, self.scale, self.zero_point)

    def finish_calibration(self) -> None:
        amax = float(self.amax.clamp(min=1e-6))
        if self.after_relu:
            self.scale.fill_(amax / 255)
            self.zero_point.fill_(-128)
        else:
            self.scale.fill_(amax / 127)
            self.zero_point.fill_(0)
        self.calibrating = False


def calibrate(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> nn.Module:
    """Record activation ranges over ``batches`` and set every quantizer's scale."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant)]
    for q in quantizers:
        q.calibrating = True
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for q in quantizers:
        q.finish_calibration()
    return model.eval()


class QConv2d(nn.Module):
    """Conv (+ ReLU folded into the output quantizer when ``relu``) on int8 tensors.

    ``relu="explicit"`` keeps a separate ReLU before a symmetric quantizer instead:
    the form onnxruntime cannot fuse, for the checker tests.
    """

    def __init__(self, cin: int, cout: int, k: int, *, stride: int = 1, relu: bool | str = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
        self.explicit_relu = relu == "explicit"
        self.round_bias = True  # False: a simulation bug, the bias left off the int32 grid
        self.weight_max = TARGETS["portable"].dense_weight_max  # 127: a model for the vnni target
        self.out_quant = ActQuant(after_relu=relu is True)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.out_quant.calibrating:
            y = self.conv(x)
        else:
            weight, w_scale = quantize_weight(self.conv.weight, qmax=self.weight_max)
            bias = quantize_bias(self.conv.bias, in_scale, w_scale) if self.round_bias else self.conv.bias
            y = F.conv2d(x, weight, bias, stride=self.conv.stride, padding=self.conv.padding)
        if self.explicit_relu:
            y = F.relu(y)
        return self.out_quant(y), self.out_quant.scale


class QLinear(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.out_quant = ActQuant()

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.out_quant.calibrating:
            y = self.fc(x)
        else:
            weight, w_scale = quantize_weight(self.fc.weight)
            y = F.linear(x, weight, quantize_bias(self.fc.bias, in_scale, w_scale))
        return self.out_quant(y), self.out_quant.scale


class Stage1(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = QConv2d(3, 16, 3, relu=True)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, s = self.conv(x, s)
        return F.max_pool2d(x, 2), s


class Stage2(nn.Module):
    """Two branches added: the sum is requantized (a QLinearAdd on the device)."""

    def __init__(self):
        super().__init__()
        self.conv_a = QConv2d(16, 16, 3, relu=True)
        self.conv_b = QConv2d(16, 16, 1)
        self.add_quant = ActQuant()

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, _ = self.conv_a(x, s)
        b, _ = self.conv_b(x, s)
        return self.add_quant(a + b), self.add_quant.scale


class Head(nn.Module):
    """A pixel-shuffle upsampler (the transposed-conv rewrite) and a pooled classifier."""

    def __init__(self):
        super().__init__()
        self.up = QConv2d(16, 4 * 4, 3)
        self.pool_quant = ActQuant()
        self.fc = QLinear(16, 10)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
        up, up_scale = self.up(x, s)
        heatmap = F.pixel_shuffle(up, 2)
        if not self.pool_quant.calibrating:
            heatmap = fake_quant(heatmap, up_scale, self.up.out_quant.zero_point)
        pooled = self.pool_quant(F.adaptive_avg_pool2d(x, 1))
        logits, _ = self.fc(pooled.flatten(1), self.pool_quant.scale)
        return {"heatmap": heatmap, "logits": logits}


class QuantNet(nn.Module):
    """Convs, a ReLU folded into quantizers, maxpool, an add of two branches, pixel shuffle, a linear."""

    def __init__(self):
        super().__init__()
        self.quant = ActQuant()
        self.backbone = nn.Module()
        self.backbone.stage1 = Stage1()
        self.backbone.stage2 = Stage2()
        self.head = Head()

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.quant(data["img"])
        x, s = self.backbone.stage1(x, self.quant.scale)
        x, s = self.backbone.stage2(x, s)
        return self.head(x, s)


class QuantConvStack(nn.Module):
    """``depth`` 3x3 convs with ReLU folded into their quantizers; returns one tensor.

    ``float_last`` leaves the last conv float (float weights, float output), the way a
    layer the quantizer skipped ends up; ``float_weight_layer`` gives that layer float
    weights but keeps its quantized input and output; ``relu="explicit"`` puts a ReLU
    between every conv and its quantizer.
    """

    def __init__(
        self,
        channels: int = 32,
        depth: int = 3,
        *,
        relu: bool | str = True,
        float_last: bool = False,
        float_weight_layer: int | None = None,
    ):
        super().__init__()
        self.quant = ActQuant()
        self.float_layer = depth - 1 if float_last else None
        self.float_weight_layer = float_weight_layer
        layers = [QConv2d(3 if i == 0 else channels, channels, 3, relu=relu) for i in range(depth)]
        self.layers = nn.ModuleList(layers)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x, s = self.quant(data["img"]), self.quant.scale
        for i, layer in enumerate(self.layers):
            if i == self.float_layer:
                x = F.relu(layer.conv(x))
            elif i == self.float_weight_layer:
                x, s = layer.out_quant(layer.conv(x)), layer.out_quant.scale
            else:
                x, s = layer(x, s)
        return x


class QuantDeconvNet(nn.Module):
    """A real transposed conv on int8 tensors (not rewritten): no int8 kernel in onnxruntime."""

    def __init__(self):
        super().__init__()
        self.quant = ActQuant()
        self.deconv = nn.ConvTranspose2d(3, 8, 4, stride=2, padding=1)
        self.out_quant = ActQuant()

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.quant(data["img"])
        if self.out_quant.calibrating:
            return self.out_quant(self.deconv(x))
        weight, w_scale = quantize_weight(self.deconv.weight, axis=1)
        bias = quantize_bias(self.deconv.bias, self.quant.scale, w_scale)
        return self.out_quant(F.conv_transpose2d(x, weight, bias, stride=2, padding=1))


class QuantTokenLinear(nn.Module):
    """A linear on a batch of tokens (``[1, N, C]``): the exporter writes MatMul + Add."""

    def __init__(self, channels: int = 32, tokens: int = 16):
        super().__init__()
        self.tokens = tokens
        self.quant = ActQuant()
        self.proj = QLinear(channels, channels)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.quant(data["img"].flatten(2).transpose(1, 2))
        y, _ = self.proj(x, self.quant.scale)
        return y


def example_input(shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"img": torch.randn(shape, generator=generator)}


def calibrated(model: nn.Module, shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> nn.Module:
    """``model`` with fixed weights, calibrated on a few random batches of ``shape``."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, std=(2.0 / module.weight[0].numel()) ** 0.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return calibrate(model, [example_input(shape, seed + i) for i in range(4)])


class QuantConcatUp(nn.Module):
    """Two conv branches concatenated (requantized: a QLinearConcat) and a nearest 2x upsample."""

    def __init__(self):
        super().__init__()
        self.quant = ActQuant()
        self.left = QConv2d(3, 8, 3, relu=True)
        self.right = QConv2d(3, 8, 3)
        self.cat_quant = ActQuant()
        self.fuse = QConv2d(16, 8, 3, relu=True)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.quant(data["img"])
        left, _ = self.left(x, self.quant.scale)
        right, _ = self.right(x, self.quant.scale)
        y = self.cat_quant(torch.cat([left, right], dim=1))
        y, _ = self.fuse(y, self.cat_quant.scale)
        return F.interpolate(y, scale_factor=2, mode="nearest")


class BufferWeightConv(nn.Module):
    """A conv whose int8 weight and scales are plain (non-persistent) buffers.

    The TorchScript tracer evaluates the weight's fake quantization itself when both
    are constants, so the graph holds float values on the int8 grid. Codes are on the
    portable target's [-64, 64]; half the channels never reach |q| = 64 (as the convs a
    rewritten transposed conv is split into).
    """

    def __init__(self, cin: int = 3, cout: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        q = torch.randint(-64, 65, (cout, cin, 3, 3), generator=generator).float()
        q[: cout // 2] = torch.round(q[: cout // 2] * 0.7)  # |q| <= 45 there
        q[cout // 2 :, 0, 0, 0] = 64
        scale = torch.rand(cout, generator=generator) * 0.01 + 0.001
        self.register_buffer("weight", q * scale.view(-1, 1, 1, 1), persistent=False)
        self.register_buffer("w_scale", scale, persistent=False)
        self.bias = nn.Parameter(torch.rand(cout, generator=generator) - 0.5)
        self.quant = ActQuant()
        self.out_quant = ActQuant(after_relu=True)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.quant(data["img"])
        if self.out_quant.calibrating:
            return self.out_quant(F.conv2d(x, self.weight, self.bias, padding=1))
        zeros = torch.zeros(self.w_scale.shape, dtype=torch.int32)
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, zeros, 0, -128, 127)
        bias = quantize_bias(self.bias, self.quant.scale, self.w_scale)
        return self.out_quant(F.conv2d(x, weight, bias, padding=1))
