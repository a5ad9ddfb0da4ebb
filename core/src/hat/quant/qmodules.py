"""Quantized modules: what the converter swaps float modules for.

Each keeps the float module it wraps (its parameters become ``<name>.module.weight``;
float checkpoints are loaded before conversion), a weight quantizer where it has
weights, and an output quantizer. The same classes serve calibration, QAT and the fixed-point model:
:meth:`QModule.freeze` turns them into the fixed-point form (weights and biases as
constants already on the int8/int32 grid), which is what export traces.

Per-layer precision (:mod:`hat.quant.precision`) lives in the quantizers (16-bit grids,
float weights, a float output with its boundary grid); a module whose output quantizer
is not float reads a float island's output through :func:`at_boundary`, so int8 layers
after a float island still get int8 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hat.quant.fake_quant import (
    ActFakeQuant,
    QParams,
    WeightFakeQuant,
    at_boundary,
    boundary_of,
    fake_quant,
    fake_quant_scalar,
    qparams_of,
    quantize_bias,
    tag,
    with_boundary,
)
from hat.quant.stubs import check_scalar

#: Fused activations: the float function, and the upper bound the quantizer clamps to.
ACTIVATIONS = {"relu": (torch.relu, None), "relu6": (F.relu6, 6.0)}


class QModule(torch.nn.Module):
    """Base: ``frozen`` switches to the fixed-point form built by ``freeze``."""

    frozen: bool = False

    def freeze(self) -> None:
        self.frozen = True


def reads_int8(out_quant: ActFakeQuant) -> bool:
    """Whether a module with this output quantizer quantizes what it reads (it is not part of a float island)."""
    return not out_quant.float_output


class QuantInput(QModule):
    """Replaces QuantStub: the model input's quantizer."""

    def __init__(self, quant: ActFakeQuant) -> None:
        super().__init__()
        self.quant = quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(x)


class QDequant(QModule):
    """Replaces DeQuantStub: from here on, values are float (the tag is dropped)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tag(x.view_as(x), None)


class _Weighted(QModule):
    """Shared by conv, transposed conv and linear: weight, bias and output quantization.

    ``input_scale`` remembers the grid of the last quantized input (it is stored in
    checkpoints), so ``freeze`` can put the bias on the int32 grid without a forward.
    """

    weight_axis = 0

    def __init__(
        self,
        module: torch.nn.Module,
        act: str | None,
        out_quant: ActFakeQuant,
        weight_averaging: float,
        weight_max: int = 127,
        *,
        weight_bits: int = 8,
        weight_float: bool = False,
        bias_correction: bool = False,
    ):
        super().__init__()
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"unsupported fused activation {act!r}")
        self.module = module
        self.act = act
        self.out_quant = out_quant
        channels = module.weight.shape[self.weight_axis]
        self.weight_quant = WeightFakeQuant(
            channels, self.weight_axis, weight_averaging, qmax=weight_max, bits=weight_bits, keep_float=weight_float
        )
        self.weight_quant.reset_scale(module.weight)
        self.register_buffer("input_scale", torch.tensor(0.0))
        #: Correct the bias for the weights' rounding at the end of calibration (see
        #: :meth:`set_calibrating`); conv and linear only, and only with a bias to correct.
        self.bias_correction = bias_correction and getattr(module, "bias", None) is not None
        self._shift_sum: torch.Tensor | None = None
        self._shift_count = 0
        self._measuring_shift = False

    # -- bias correction ----------------------------------------------------------------
    def set_calibrating(self, on: bool) -> None:
        """Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight
        Equalization and Bias Correction", 2019, sec. 4.2; NNCF's "fast bias correction").

        Rounding the weights shifts each output channel's mean by ``E[(W - W_q) x]``; with
        7-bit weights (the portable target) and small depthwise kernels that shift is a
        visible bias that calibration's ranges cannot undo. While calibrating, the layer
        measures it on the calibration batches (one extra conv with ``W - W_q``, exact with
        padding); leaving calibration adds it to the bias, which then rounds to the int32
        grid like any bias. Calibration is the one place it runs: QAT starts from the
        corrected checkpoint and trains the bias on from there.
        """
        if not self.bias_correction:
            return
        if on:
            self._shift_sum, self._shift_count, self._measuring_shift = None, 0, True
            return
        self._measuring_shift = False
        if self._shift_count:
            with torch.no_grad():
                self.module.bias.add_((self._shift_sum / self._shift_count).to(self.module.bias.dtype))
        self._shift_sum, self._shift_count = None, 0

    def _measure_shift(self, x: torch.Tensor, weight: torch.Tensor, op, channel_dim: int) -> None:
        """Accumulate the per-channel mean of ``op(x, W - W_q)`` (``op`` without bias; the
        output channels on ``channel_dim``)."""
        if not (self._measuring_shift and self.weight_quant.quantizing and self.weight_quant.bits == 8):
            return
        with torch.no_grad():
            delta = op(x, self.module.weight.detach() - weight.detach())
            channel_dim %= delta.dim()
            dims = [d for d in range(delta.dim()) if d != channel_dim]
            total = delta.double().sum(dim=dims)
            count = delta.numel() // delta.shape[channel_dim]
        self._shift_sum = total if self._shift_sum is None else self._shift_sum + total
        self._shift_count += count

    # -- pieces -----------------------------------------------------------------------------
    def _read(self, x: torch.Tensor) -> torch.Tensor:
        """The input as this layer reads it (a float island's output on its boundary grid, unless
        this layer is in the island too)."""
        return at_boundary(x) if reads_int8(self.out_quant) else x

    def _input_qparams(self, x: torch.Tensor) -> QParams | None:
        q = qparams_of(x)
        if q is not None and not self.frozen:
            with torch.no_grad():
                self.input_scale.fill_(q.scale)
        if q is not None:
            self.input_bits = q.bits  # the bias is on an int32 grid only behind an 8-bit input
        return q

    def _bias_grid(self, input_q: QParams | None) -> QParams | None:
        """The input grid the bias is rounded against: none unless the weight is on an 8-bit grid too."""
        weight = self.weight_quant
        return input_q if weight.quantizing and weight.bits == 8 else None

    def _bias_scale(self) -> torch.Tensor:
        """Per-output-channel weight scale, aligned with the bias."""
        return self.weight_quant.scale

    def _quantized_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_q = self._input_qparams(x)
        weight = self.weight_quant(self.module.weight)
        return weight, quantize_bias(self.module.bias, self._bias_grid(input_q), self._bias_scale())

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        clamps = self.out_quant.quantizing and not self.out_quant.float_output
        if self.act is not None and not clamps:
            y = ACTIVATIONS[self.act][0](y)  # once quantizing, the quantizer's clamp is the activation
        return self.out_quant(y)

    @torch.no_grad()
    def freeze(self) -> None:
        """Weights and bias become constants on their grids; scales stop moving."""
        if not self.weight_quant.frozen and self.weight_quant.averaging_constant >= 1.0:
            # Scales that follow the weights: a checkpoint holds those of the last forward,
            # taken before the last optimizer step; the simulation would recompute them.
            self.weight_quant.reset_scale(self.module.weight)
        self.weight_quant.frozen = True
        weight = self.weight_quant(self.module.weight).detach()
        known = float(self.input_scale) > 0
        input_q = QParams(float(self.input_scale), 0, getattr(self, "input_bits", 8)) if known else None
        bias = quantize_bias(self.module.bias, self._bias_grid(input_q), self._bias_scale())
        self.register_buffer("frozen_weight", weight, persistent=False)
        self.register_buffer("frozen_bias", None if bias is None else bias.detach(), persistent=False)
        super().freeze()

    def _constant_weight(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """A constant already on the grid, fake-quantized again so export writes Q/DQ
        (the exporter's post-pass folds that into an int8 (or int16) initializer). A float
        weight stays as it is."""
        if not self.weight_quant.quantizing:
            return weight
        zeros = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        low, high = self.weight_quant.code_min, self.weight_quant.code_max
        return torch.fake_quantize_per_channel_affine(weight, scale, zeros, 0, low, high)

    def extra_repr(self) -> str:
        return f"act={self.act}"


class QConv2d(_Weighted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.module
        x = self._read(x)
        if self.frozen:
            self._input_qparams(x)
            weight = self._constant_weight(self.frozen_weight, self.weight_quant.scale)
            return self._finish(conv._conv_forward(x, weight, self.frozen_bias))
        weight, bias = self._quantized_params(x)
        self._measure_shift(x, weight, lambda inp, w: conv._conv_forward(inp, w, None), 1)
        return self._finish(conv._conv_forward(x, weight, bias))


class QLinear(_Weighted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._read(x)
        if self.frozen:
            self._input_qparams(x)
            weight = self._constant_weight(self.frozen_weight, self.weight_quant.scale)
            return self._finish(F.linear(x, weight, self.frozen_bias))
        weight, bias = self._quantized_params(x)
        self._measure_shift(x, weight, F.linear, -1)
        return self._finish(F.linear(x, weight, bias))


class QConvTranspose2d(_Weighted):
    """Transposed conv, per-output-channel weights (axis 1 of its weight).

    onnxruntime's CPU provider has no int8 ConvTranspose, but a transposed conv with
    ``kernel - 2 * padding + output_padding == stride`` is exactly a conv with
    ``stride**2`` times the channels followed by depth-to-space. The frozen form
    computes it that way, so the exported graph is int8 convs and data movement: one
    small conv per output phase, interleaved channels-last where the phases' taps allow
    it (:func:`deconv_phases`, :func:`interleave_phases`), else one conv holding every
    phase followed by depth-to-space (:func:`deconv_as_conv`).
    """

    weight_axis = 1

    def _bias_scale(self) -> torch.Tensor:
        # Axis 1 of a grouped transposed conv's weight is the channel within a group:
        # output channel o has the scale of o mod (out_channels / groups).
        return self.weight_quant.scale.repeat(self.module.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deconv = self.module
        x = self._read(x)
        if self.frozen and self.phases is not None:
            return self._phase_convs(x)
        if self.frozen and self.as_conv_padding is not None:
            self._input_qparams(x)
            weight = self._constant_weight(self.conv_weight, self.conv_weight_scale)
            y = F.conv2d(x, weight, self.conv_bias, padding=self.as_conv_padding)
            y = self._finish(y)
            params = qparams_of(y)
            y = F.pixel_shuffle(y, deconv.stride[0])
            return y if params is None else tag(fake_quant(y, params), params)
        if self.frozen:
            self._input_qparams(x)
            weight, bias = self.frozen_weight, self.frozen_bias
        else:
            weight, bias = self._quantized_params(x)
        y = F.conv_transpose2d(
            x, weight, bias, deconv.stride, deconv.padding, deconv.output_padding, deconv.groups, deconv.dilation
        )
        return self._finish(y)

    @property
    def rewritten(self) -> bool:
        """Whether the frozen module runs as int8 convs + depth-to-space (see the class docstring)."""
        return getattr(self, "phases", None) is not None or getattr(self, "as_conv_padding", None) is not None

    def _phase_convs(self, x: torch.Tensor) -> torch.Tensor:
        """One small conv per output phase, then the phases interleaved into the output.

        Each phase of a stride-s transposed conv reads only its own taps (2x2 of a 4x4
        kernel at stride 2): one conv per phase does ``1/s**2`` of the work of the single
        conv whose kernel holds every phase's taps (measured in onnxruntime: 0.63 vs 0.92
        ms for a 128-channel 16x16 deconv). See :func:`interleave_phases` for the join.
        """
        self._input_qparams(x)
        params_in = qparams_of(x)
        outputs = []
        for index, (left, right, top, bottom) in enumerate(self.phases):
            weight = self._constant_weight(getattr(self, f"phase_weight_{index}"), self.weight_quant.scale)
            padded = F.pad(x, (left, right, top, bottom))
            if params_in is not None:  # zero padding is exact on the input's grid
                tag(padded, params_in)
            outputs.append(self._finish(F.conv2d(padded, weight, getattr(self, f"phase_bias_{index}"))))
        return interleave_phases(outputs, self.module.stride[0], qparams_of(outputs[0]))

    @torch.no_grad()
    def freeze(self) -> None:
        super().freeze()
        deconv = self.module
        self.as_conv_padding = None
        self.phases = None
        if not rewritable_as_conv(deconv) or self.out_quant.float_output or not self.weight_quant.quantizing:
            return  # the rewrite exists for int8 kernels; a float layer runs as the transposed conv it is
        split = deconv_phases(self.frozen_weight, self.frozen_bias, deconv.stride[0], deconv.padding[0])
        if split is not None:
            self.phases = []
            for index, (weight, bias, pads) in enumerate(split):
                self.register_buffer(f"phase_weight_{index}", weight, persistent=False)
                self.register_buffer(f"phase_bias_{index}", bias, persistent=False)
                self.phases.append(pads)
        else:
            weight, bias, padding = deconv_as_conv(
                self.frozen_weight, self.frozen_bias, deconv.stride[0], deconv.padding[0], deconv.output_padding[0]
            )
            # Buffers, so that moving the frozen model (``.to(device)``) moves them too.
            self.register_buffer("conv_weight", weight, persistent=False)
            self.register_buffer("conv_bias", bias, persistent=False)
            self.as_conv_padding = padding
            self.register_buffer(
                "conv_weight_scale", self.weight_quant.scale.repeat_interleave(deconv.stride[0] ** 2), persistent=False
            )


def rewritable_as_conv(deconv: torch.nn.ConvTranspose2d) -> bool:
    """Whether the exact conv + depth-to-space rewrite applies (square, ungrouped)."""
    s, k, p, op = deconv.stride, deconv.kernel_size, deconv.padding, deconv.output_padding
    return (
        deconv.groups == 1
        and deconv.dilation == (1, 1)
        and s[0] == s[1]
        and k[0] == k[1]
        and p[0] == p[1]
        and op[0] == op[1]
        and k[0] - 2 * p[0] + op[0] == s[0]
    )


def deconv_as_conv(
    weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int, output_padding: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Weights of the conv whose depth-to-space equals the transposed conv.

    A transposed conv writes ``y[s*i - p + t] += x[i] * w[t]``. For output phase
    ``a = o mod s`` and ``o = s*q + a`` that is ``y_a[q] = sum_j x[q + j] * w[a + p - s*j]``:
    a correlation with taps ``j`` for which ``0 <= a + p - s*j < k``. Stacking the ``s*s``
    phases as channels ``c*s*s + a*s + b`` (PixelShuffle's order) gives one conv.
    Returns (weight [Cout*s*s, Cin, K, K], bias, padding).
    """
    cin, cout, k, _ = weight.shape
    s, p = stride, padding
    taps = {a: [j for j in range(-k, k + 1) if 0 <= a + p - s * j < k] for a in range(s)}
    # Symmetric tap range (padding is the same on both sides); phases that need fewer
    # taps on one side (e.g. k=3, s=2, p=1, output_padding=1) get zero taps there.
    reach = max(max(-min(v), max(v)) for v in taps.values())
    j_min, j_max = -reach, reach
    size = j_max - j_min + 1
    conv_w = weight.new_zeros(cout, s, s, cin, size, size)
    for a in range(s):
        for b in range(s):
            for jy in taps[a]:
                for jx in taps[b]:
                    conv_w[:, a, b, :, jy - j_min, jx - j_min] = weight[:, :, a + p - s * jy, b + p - s * jx].t()
    conv_w = conv_w.reshape(cout * s * s, cin, size, size)
    conv_b = None if bias is None else bias.repeat_interleave(s * s)
    return conv_w, conv_b, reach


def deconv_phases(
    weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> list[tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int, int]]] | None:
    """Per output phase ``(a, b)`` (row-major), the conv that computes it: weight
    ``[Cout, Cin, ty, tx]`` over that phase's taps only, bias, and the ``F.pad`` amounts
    (left, right, top, bottom) that keep the input size. None when some phase's taps do
    not straddle the output position (it would need a crop, not a pad).

    Same derivation as :func:`deconv_as_conv`: phase ``a`` reads ``x[q + j]`` for the taps
    ``j`` with ``0 <= a + p - s*j < k``. Output padding adds no tap: where
    ``k - 2p + output_padding == s`` it only makes the output exactly ``s`` times the input.
    """
    cin, cout, k, _ = weight.shape
    s, p = stride, padding
    taps = {a: [j for j in range(-k, k + 1) if 0 <= a + p - s * j < k] for a in range(s)}
    if any(not v or min(v) > 0 or max(v) < 0 for v in taps.values()):
        return None
    phases = []
    for a in range(s):
        for b in range(s):
            ys, xs = taps[a], taps[b]
            w = weight.new_zeros(cout, cin, len(ys), len(xs))
            for r, jy in enumerate(ys):
                for c, jx in enumerate(xs):
                    w[:, :, r, c] = weight[:, :, a + p - s * jy, b + p - s * jx].t()
            pads = (-min(xs), max(xs), -min(ys), max(ys))
            phases.append((w, None if bias is None else bias.clone(), pads))
    return phases


def interleave_phases(outputs: Sequence[torch.Tensor], s: int, params: QParams | None = None) -> torch.Tensor:
    """Phase outputs, phase-major (row phase, then column phase), -> the strided output.

    Written channels-last: each phase is transposed to NHWC, the column phases of a row
    are stacked and reshaped, then the rows, and one transpose goes back to NCHW.
    onnxruntime runs int8 convs channels-last, so the first and last transposes cancel
    against the ones it puts around its convs, and every copy in between moves whole
    pixels. A DepthToSpace on NCHW int8 data moves single bytes instead: on an AMD EPYC
    (1 thread) it took 0.42 ms of the 8.1 ms reference keypoint model, which ran 1.55x
    faster than float with it and 1.64x with this form (the outputs are identical).
    ``params``: the phases' grid, kept on every intermediate so export writes Q/DQ.
    """

    def on_grid(y: torch.Tensor) -> torch.Tensor:
        return y if params is None else tag(fake_quant(y, params), params)

    n, c, h, w = outputs[0].shape
    nhwc = [on_grid(o.permute(0, 2, 3, 1)) for o in outputs]
    rows = [on_grid(torch.stack(nhwc[i * s : (i + 1) * s], dim=3).reshape(n, h, w * s, c)) for i in range(s)]
    y = on_grid(torch.stack(rows, dim=2).reshape(n, h * s, w * s, c))
    return on_grid(y.permute(0, 3, 1, 2))


class QFunctional(QModule):
    """Replaces FloatFunctional: the op in float, then its own output quantizer."""

    def __init__(self, out_quant: ActFakeQuant) -> None:
        super().__init__()
        self.out_quant = out_quant

    def _read(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if not reads_int8(self.out_quant):
            return list(tensors)
        return [at_boundary(t) for t in tensors]

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._read(a, b)
        return self.out_quant(torch.add(a, b))

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._read(a, b)
        return self.out_quant(torch.mul(a, b))

    def mul_scalar(self, x: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        """The product with the constant on its own 8-bit grid (see :func:`fake_quant_scalar`),
        so the exported graph reads it through a DequantizeLinear and fuses to QLinearMul."""
        scalar = check_scalar(scalar)
        (x,) = self._read(x)
        if self.out_quant.quantizing and not self.out_quant.float_output:
            scalar = fake_quant_scalar(scalar)
        return self.out_quant(torch.mul(x, scalar))

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self.out_quant(torch.cat(self._read(*tensors), dim=dim))

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._read(a, b)
        return self.out_quant(torch.matmul(a, b))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "call .add / .mul / .mul_scalar / .cat / .matmul on a FloatFunctional, not the module itself"
        )


class QTransparent(QModule):
    """An op that only moves or selects values (max-pool, depth-to-space, nearest
    resize, reshape): its output stays on its input's grid, re-marked with the same
    scale so onnxruntime runs the op on int8 data."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = qparams_of(x)
        boundary = boundary_of(x)
        y = self.module(x)
        if boundary is not None:  # a float island's output moved: still float, same boundary
            return with_boundary(y, boundary)
        return y if params is None else tag(fake_quant(y, params), params)


class QWithOutput(QModule):
    """An op that makes new values (average pool, sigmoid, a standalone ReLU, bilinear
    resize): run in float, then quantized by its own output quantizer."""

    def __init__(self, module: torch.nn.Module, out_quant: ActFakeQuant) -> None:
        super().__init__()
        self.module = module
        self.out_quant = out_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if reads_int8(self.out_quant):
            x = at_boundary(x)
        return self.out_quant(self.module(x))
