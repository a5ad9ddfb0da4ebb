"""Fake quantization: float tensors rounded to the int8 grid they will have on the device.

Built on torch's stable primitives (``torch.fake_quantize_per_tensor_affine`` and
``_per_channel_affine``), which export to ONNX QuantizeLinear/DequantizeLinear, so the
simulation and the exported graph are the same arithmetic.

Activations: int8 per tensor, symmetric (zero point 0, scale t/127), or, right after a
ReLU, over [0, t] with zero point -128 (scale t/255): the quantizer's clamp then *is* the
ReLU, which lets onnxruntime fuse Conv + Q into one int8 kernel. With ``asymmetric``
(``activation_symmetry: asymmetric``) an 8-bit activation not after a ReLU takes the
observed [lo, hi] instead: scale (hi - lo)/255 and the zero point that puts 0.0 exactly
on a code, so no code is spent on values that never occur. Weights: int8
symmetric per output channel, scale amax/qmax (values land in [-qmax, qmax], qmax set
by the deploy target: 127, or 64 for dense kernels on the portable target).

Every quantized activation is tagged with its (scale, zero point) as a tensor attribute,
so the next layer can quantize its bias on the int32 grid the runtime uses
(scale_in * scale_weight) and ops that only move data can keep the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hat.quant.observers import Observer, make_observer

QMIN, QMAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_TAG = "_hat_qparams"
_BOUNDARY = "_hat_boundary"


def code_range(bits: int) -> tuple[int, int]:
    """The signed codes of a ``bits``-wide grid: (-128, 127) or (-32768, 32767)."""
    if bits not in (8, 16):
        raise ValueError(f"quantization bits must be 8 or 16, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    #: 8 (the default) or 16: the width of the integer grid.
    bits: int = 8


def tag(tensor: torch.Tensor, qparams: QParams | None) -> torch.Tensor:
    """Remember that ``tensor`` holds values on the grid of ``qparams``."""
    setattr(tensor, _TAG, qparams)
    return tensor


def qparams_of(tensor: torch.Tensor) -> QParams | None:
    """The grid ``tensor`` is on, if a quantizer produced it."""
    return getattr(tensor, _TAG, None)


def fake_quant(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    low, high = code_range(qparams.bits)
    return torch.fake_quantize_per_tensor_affine(x, qparams.scale, qparams.zero_point, low, high)


def with_boundary(tensor: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Mark a float tensor (a float island's output) with the int8 grid its int8 consumers read it on."""
    setattr(tag(tensor, None), _BOUNDARY, qparams)
    return tensor


def boundary_of(tensor: torch.Tensor) -> QParams | None:
    """The boundary grid of a float island's output (see :func:`with_boundary`), if any."""
    return getattr(tensor, _BOUNDARY, None) if qparams_of(tensor) is None else None


def at_boundary(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an int8 consumer reads it: a float island's output is quantized on its boundary grid.

    Every other tensor is returned as it is. Float consumers do not call this, so the
    tensors inside a float island stay float.
    """
    params = boundary_of(x)
    return x if params is None else tag(fake_quant(x, params), params)


def fake_quant_scalar(value: torch.Tensor) -> torch.Tensor:
    """A one-element constant on a uint8 grid that holds it exactly: scale ``|v| / 127``,
    zero point 128, so ``v`` is code ``128 +- 127`` whatever its sign.

    For a constant multiplier such as a learned fusion weight. Exported, it becomes a
    uint8 initializer behind a DequantizeLinear: onnxruntime fuses ``DQ(x) * DQ(c) -> Q``
    into QLinearMul only when both operands have the activations' 8-bit type (uint8 after
    export; an int8 constant leaves the Mul in float), and never for a float constant.
    The gradient passes straight through (the value is never clamped).
    """
    scale = (value.detach().abs().reshape(()).float() / 127.0).clamp(min=1e-12)
    zero = torch.tensor(128, dtype=torch.int32, device=value.device)
    return torch.fake_quantize_per_tensor_affine(value, scale, zero, 0, 255)


class ActFakeQuant(torch.nn.Module):
    """An activation quantizer with its calibration observer and QAT behaviour.

    Modes: while *calibrating* it only observes and passes values through in float; once
    calibrated it fake-quantizes with the frozen ``scale``. In training (QAT),
    ``averaging_constant`` c moves the range toward each batch's (c = 0 keeps the
    calibrated scale, c = 1 takes the current tensor's); ``learnable`` makes the scale a
    parameter trained with the weights (LSQ-style gradients from torch's op).

    ``asymmetric`` (8-bit only, and not after a ReLU, whose [0, t] grid already has its own
    zero point): the range is [lo, hi] rather than [-t, t]. Calibration and averaging
    move both ends; a learned scale leaves the zero point where calibration put it (the
    code of 0.0 never moves, so 0.0 stays exact), and the range scales around 0.0.
    """

    def __init__(
        self,
        observer: Observer | None = None,
        *,
        unsigned: bool = False,
        upper_bound: float | None = None,
        averaging_constant: float = 0.0,
        learnable: bool = False,
        bits: int = 8,
        float_output: bool = False,
        asymmetric: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in [0, 1], got {averaging_constant}")
        self.qmin, self.qmax = code_range(bits)
        self.bits = bits
        #: A float island's boundary (``precision: float``): it calibrates and tracks like
        #: any quantizer, but the output stays float, marked with the grid int8 consumers
        #: read it on (:func:`at_boundary`).
        self.float_output = float_output
        self.observer = observer or make_observer("min_max")
        self.unsigned = unsigned
        #: 16-bit grids stay symmetric: one bit of 16 is not worth a zero point.
        self.asymmetric = asymmetric and not unsigned and bits == 8
        self.upper_bound = upper_bound
        self.averaging_constant = averaging_constant
        self.learnable = learnable
        self.calibrating = False
        self.enabled = True
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(self.qmin if unsigned else 0, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        #: Set for QAT straight from float: the first training batch sets the range.
        self.init_from_data = False

    # -- state ------------------------------------------------------------------------------
    def set_calibrating(self, on: bool) -> None:
        """Called by the calibrator around its batches; leaving it freezes the scale."""
        self.calibrating = on
        if not on and self.observer.has_data:
            if self.asymmetric:
                self.set_range(*self.observer.range(levels=self.levels))
            else:
                self.set_threshold(self.observer.threshold(self.unsigned, levels=self.levels))

    @torch.no_grad()
    def set_threshold(self, threshold: float) -> None:
        if self.upper_bound is not None:
            threshold = min(threshold, self.upper_bound)
        threshold = max(threshold, 1e-8)
        if self.asymmetric:  # [-t, t] on an asymmetric grid: zero point 0 (or -1 after rounding)
            self.set_range(-threshold, threshold)
            return
        self.scale.fill_(threshold / self.levels)
        self.calibrated.fill_(True)

    @torch.no_grad()
    def set_range(self, low: float, high: float) -> None:
        """An asymmetric grid over [low, high], stretched to hold 0.0, with 0.0 exactly on a code.

        scale = (high - low) / levels; zero point = qmin + round(-low / scale), clamped to
        the codes, so the code ``zero_point`` is exactly 0.0 (ONNX pads a conv's input with
        its zero point). Only for an ``asymmetric`` quantizer.
        """
        if not self.asymmetric:
            raise ValueError("set_range is for asymmetric quantizers; use set_threshold")
        low, high = min(low, 0.0), max(high, 0.0)
        if self.upper_bound is not None:
            high = min(high, self.upper_bound)
        scale = max(high - low, 1e-8) / self.levels
        zero = min(max(self.qmin + round(-low / scale), self.qmin), self.qmax)
        self.scale.fill_(scale)
        self.zero_point.fill_(zero)
        self.calibrated.fill_(True)

    def range(self) -> tuple[float, float]:
        """The values the grid holds: [(qmin - zp) * scale, (qmax - zp) * scale]."""
        scale, zero = float(self.scale.detach()), int(self.zero_point)
        return (self.qmin - zero) * scale, (self.qmax - zero) * scale

    def enable_learning(self) -> None:
        """Make the scale a trainable parameter (QAT with learned scales).

        The parameter keeps the buffer's name, so checkpoints of calibrated and of
        learned-scale models have the same keys.
        """
        if isinstance(self.scale, torch.nn.Parameter):
            return
        value = self.scale.detach().clone()
        del self._buffers["scale"]
        self.scale = torch.nn.Parameter(value)
        self.learnable = True

    @property
    def quantizing(self) -> bool:
        """Whether forward rounds to the grid (not while calibrating or disabled)."""
        return self.enabled and not self.calibrating and bool(self.calibrated)

    @property
    def levels(self) -> float:
        """Steps from 0 to the threshold: 127 or 255 (after a ReLU) at 8 bits, 32767 or 65535 at 16;
        for an asymmetric grid, from its low end to its high end (255)."""
        return float(self.qmax - self.qmin) if self.unsigned or self.asymmetric else float(self.qmax)

    def qparams(self) -> QParams:
        return QParams(float(self.scale.detach()), int(self.zero_point), self.bits)

    def threshold(self) -> float:
        """The largest magnitude the grid holds."""
        if self.asymmetric:
            return max(abs(end) for end in self.range())
        return float(self.scale.detach()) * self.levels

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer(x)
            return tag(x, None)
        if self.init_from_data and self.training and not bool(self.calibrated):
            self._track_first(x)
        if not self.quantizing:
            return tag(x, None)
        if self.training and self.averaging_constant > 0 and not self.learnable:
            self._track(x)
        if self.float_output:  # the scale of a float island's boundary is calibrated, not learned
            return with_boundary(x, self.qparams())
        if self.learnable and self.training:
            with torch.no_grad():  # before the op: an in-place change after it would break backward
                self.scale.clamp_(min=1e-8)
            # The op wants 1-element (not 0-dim) scale and zero point; the reshape keeps the gradient.
            y = torch._fake_quantize_learnable_per_tensor_affine(
                x,
                self.scale.reshape(1),
                self.zero_point.float().reshape(1),
                self.qmin,
                self.qmax,
                1.0 / (x.numel() * self.qmax) ** 0.5,
            )
            return tag(y, self.qparams())
        params = self.qparams()
        return tag(fake_quant(x, params), params)

    def _current(self, x: torch.Tensor) -> float:
        return float(x.detach().clamp(min=0).max()) if self.unsigned else float(x.detach().abs().max())

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        c = self.averaging_constant
        if self.asymmetric:
            (low, high), (x_low, x_high) = self.range(), _extremes(x)
            self.set_range((1 - c) * low + c * x_low, (1 - c) * high + c * x_high)
            return
        self.set_threshold((1 - c) * self.threshold() + c * self._current(x))

    @torch.no_grad()
    def _track_first(self, x: torch.Tensor) -> None:
        if self.asymmetric:
            self.set_range(*_extremes(x))
            return
        self.set_threshold(self._current(x))

    def extra_repr(self) -> str:
        kind = f"unsigned [0,t], zp {self.qmin}" if self.unsigned else "symmetric"
        if self.asymmetric:
            kind = f"asymmetric, zp {int(self.zero_point)}"
        if self.bits != 8:
            kind += f", {self.bits}-bit"
        if self.float_output:
            kind += ", float output (boundary)"
        return f"{kind}, observer={type(self.observer).__name__}, scale={float(self.scale.detach()):.6g}"


def _extremes(x: torch.Tensor) -> tuple[float, float]:
    x = x.detach()
    return float(x.min()), float(x.max())


class WeightFakeQuant(torch.nn.Module):
    """Per-output-channel symmetric int8 weights on [-qmax, qmax].

    ``averaging_constant`` 1 (default) recomputes the scales from the current weights at
    every forward (weights change in QAT); 0 keeps the scales computed at conversion.
    ``qmax`` is the deploy target's limit (127, or 64 where a non-VNNI kernel would
    saturate; see :mod:`hat.quant.target`): scale ``amax / qmax``, and the codes are
    clamped to it, so weights that grow past their frozen scale cannot leave the range.
    ``bits=16`` (``precision: int16``) puts them on [-32767, 32767] instead (pass
    ``qmax=32767``: no 8-bit kernel runs them, so no deploy-target limit applies);
    ``keep_float`` (``precision: float``) passes them through unquantized for good, unlike
    ``enabled``, which analysis tools switch on and off.
    """

    def __init__(
        self,
        num_channels: int,
        axis: int = 0,
        averaging_constant: float = 1.0,
        qmax: int = 127,
        *,
        bits: int = 8,
        keep_float: bool = False,
    ) -> None:
        super().__init__()
        self.code_min, self.code_max = code_range(bits)
        if not 1 <= qmax <= self.code_max:
            raise ValueError(f"weight qmax must be in [1, {self.code_max}] at {bits} bits, got {qmax}")
        self.bits = bits
        self.keep_float = keep_float
        self.axis = axis
        self.averaging_constant = averaging_constant
        self.qmax = int(qmax)
        self.register_buffer("scale", torch.ones(num_channels))
        self.register_buffer("zero_point", torch.zeros(num_channels, dtype=torch.int32))
        #: Set by QAT2Quantize: the scales no longer follow the weights.
        self.frozen = False
        #: Off: weights pass in float (per-layer sensitivity analysis keeps a layer float).
        self.enabled = True

    @torch.no_grad()
    def reset_scale(self, weight: torch.Tensor) -> None:
        """Scales from ``weight`` itself (at conversion, and before export)."""
        self.scale.copy_(self._amax(weight) / self.qmax)

    @torch.no_grad()
    def _track(self, weight: torch.Tensor) -> None:
        c = self.averaging_constant
        self.scale.copy_((1 - c) * self.scale + c * self._amax(weight) / self.qmax)

    def _amax(self, weight: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(weight.dim()) if d != self.axis]
        return weight.detach().abs().amax(dim=dims).float().clamp(min=1e-8)

    @property
    def quantizing(self) -> bool:
        """Whether forward rounds the weights to the grid."""
        return self.enabled and not self.keep_float

    def code_limits(self) -> tuple[int, int]:
        """The codes the weights are clamped to."""
        return (self.code_min, self.code_max) if self.qmax == self.code_max else (-self.qmax, self.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return weight
        if not self.frozen:
            if self.averaging_constant >= 1.0:
                self.reset_scale(weight)
            elif self.averaging_constant > 0 and self.training:
                self._track(weight)
        low, high = self.code_limits()
        return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, self.axis, low, high)

    def extra_repr(self) -> str:
        if self.keep_float:
            return f"axis={self.axis}, float"
        return f"axis={self.axis}, range=[-{self.qmax}, {self.qmax}]" + (f", {self.bits}-bit" if self.bits != 8 else "")


def quantize_bias(
    bias: torch.Tensor | None, input_q: QParams | None, weight_scale: torch.Tensor
) -> torch.Tensor | None:
    """Round a bias to the int32 grid scale_in * scale_weight[c] that the runtime adds.

    Straight-through: the forward value is rounded, the gradient passes unchanged.
    Without a quantized input there is no grid, and the bias stays float; so too behind
    a 16-bit input, which no int8 kernel reads (the layer runs in float on the device). A bias too large
    for int32 on that grid (a near-zero input range, e.g. a layer behind dead ReLUs)
    saturates, as the runtime's int32 bias would.
    """
    if bias is None or input_q is None or input_q.bits != 8:
        return bias
    step = (input_q.scale * weight_scale.detach()).to(bias.dtype)
    rounded = torch.clamp(torch.round(bias.detach() / step), INT32_MIN, INT32_MAX) * step
    # ``rounded + (bias - bias)``: the forward value is exactly the rounded one (the form
    # ``bias + (rounded - bias)`` loses it to float32 cancellation when they differ a lot).
    return rounded + (bias - bias.detach())
