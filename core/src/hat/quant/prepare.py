"""Turning a float model into its quantized simulation, and saying what stays float.

Module swapping, not graph tracing: models mark their boundaries (QuantStub,
DeQuantStub, FloatFunctional) and are built from ordinary modules, so conversion works
on any forward, including Python control flow, and the result keeps the model's own
structure. Everything that is neither converted nor a container is listed in the
report with the reason it stays float, and every converted module the config's
``precision`` rules put off int8 (see :mod:`hat.quant.precision`) with its precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hat.quant import qmodules as Q
from hat.quant.fuse import ACTS, NORMS, WEIGHTED, Fused, find_and_fuse
from hat.quant.precision import BITS, FLOAT, INT16, NO_INT8_KERNEL, LayerPrecision
from hat.quant.qconfig import QConfig
from hat.quant.stubs import DeQuantStub, FloatFunctional, QuantStub

TRANSPARENT = (
    torch.nn.MaxPool2d,
    torch.nn.MaxPool1d,
    torch.nn.PixelShuffle,
    torch.nn.PixelUnshuffle,
    torch.nn.Flatten,
    torch.nn.Unflatten,
    torch.nn.Dropout,
    torch.nn.Identity,
)
NEW_VALUES = (
    torch.nn.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.Sigmoid,
)
#: Float-only ops, with why (onnxruntime's CPU provider has no int8 kernel for them).
FLOAT_REASONS = {
    torch.nn.LayerNorm: "LayerNorm has no int8 kernel; it stays float",
    torch.nn.Softmax: "Softmax has no int8 kernel; it stays float",
    torch.nn.GELU: "GELU has no int8 kernel; it stays float",
    torch.nn.SiLU: "SiLU/Swish has no int8 kernel; use ReLU for an all-int8 model",
    torch.nn.Hardswish: "Hardswish has no int8 kernel; it stays float",
    torch.nn.MultiheadAttention: "nn.MultiheadAttention is not converted; build attention from Linear + "
    "FloatFunctional.matmul to quantize it",
}


#: The attribute of a converted model that holds its :class:`ConversionReport`.
_REPORT = "_hat_conversion_report"


@dataclass
class ConversionReport:
    """What the converter did: quantized module paths, those left float with reasons, and
    the converted modules the ``precision`` rules put off int8."""

    quantized: list[tuple[str, str]] = field(default_factory=list)
    left_float: list[tuple[str, str, str]] = field(default_factory=list)
    precision: list[tuple[str, str, LayerPrecision]] = field(default_factory=list)

    def not_int8(self) -> list[dict[str, str]]:
        """Every module not at int8, with why: ``configured`` / ``sensitivity`` (a ``precision``
        rule's reason) or ``no int8 kernel`` (left float by the converter, ``detail`` says why)."""
        rows = [
            {"module": path, "kind": kind, "activation": p.activation, "weight": p.weight, "reason": p.reason}
            for path, kind, p in self.precision
        ]
        rows += [
            {
                "module": path,
                "kind": kind,
                "activation": FLOAT,
                "weight": FLOAT,
                "reason": NO_INT8_KERNEL,
                "detail": detail,
            }
            for path, kind, detail in self.left_float
        ]
        return rows

    def summary(self) -> str:
        lines = [f"{len(self.quantized)} modules quantized, {len(self.left_float)} left float"]
        lines += [f"  float: {path} ({kind}): {reason}" for path, kind, reason in self.left_float]
        lines += [
            f"  precision: {path} ({kind}): activation {p.activation}, weight {p.weight} ({p.reason})"
            for path, kind, p in self.precision
        ]
        return "\n".join(lines)


def convert(model: torch.nn.Module, qconfig: QConfig) -> tuple[torch.nn.Module, ConversionReport]:
    """Fold BatchNorms, then swap every supported module for its quantized form.

    Raises :class:`~hat.quant.precision.PrecisionError` (a ValueError) when a precision
    rule names no quantized module.
    """
    if isinstance(model, Q.QModule) or any(isinstance(m, Q.QModule) for m in model.modules()):
        raise ValueError("the model is already quantized; convert a float model")
    groups = find_and_fuse(model)
    report = ConversionReport()
    model = _swap(model, "", groups, qconfig, report)
    qconfig.precision.check_matches(path for path, _ in report.quantized)
    object.__setattr__(model, _REPORT, report)  # not a submodule, not in the state dict
    return model, report


def conversion_report(model: torch.nn.Module) -> ConversionReport | None:
    """The report of the conversion that made ``model`` (None for a model :func:`convert` did not make)."""
    return getattr(model, _REPORT, None)


def _swap(module: torch.nn.Module, path: str, groups, qconfig: QConfig, report: ConversionReport) -> torch.nn.Module:
    replacement = _replacement(module, path, groups, qconfig, report)
    if replacement is not None:
        return replacement
    children = list(module.named_children())
    containers = (Fused, torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
    if not children and path and not isinstance(module, containers):
        report.left_float.append((path, type(module).__name__, "no quantized form; it runs in float"))
    for name, child in children:
        setattr(module, name, _swap(child, f"{path}.{name}" if path else name, groups, qconfig, report))
    return module


def _quantized(path: str, kind: str, qconfig: QConfig, report: ConversionReport) -> LayerPrecision:
    """Record a converted module; its precision from the config's rules."""
    report.quantized.append((path, kind))
    precision = qconfig.precision.of(path)
    if not precision.is_int8:
        report.precision.append((path, kind, precision))
    return precision


def _act_quant(qconfig: QConfig, precision: LayerPrecision, **kwargs):
    """The output quantizer at the module's activation precision (a float one is the island's boundary)."""
    if precision.activation == FLOAT:
        return qconfig.act_quant(float_output=True, **kwargs)
    return qconfig.act_quant(bits=BITS[precision.activation], **kwargs)


def _replacement(module, path, groups, qconfig: QConfig, report: ConversionReport):
    kind = type(module).__name__
    if isinstance(module, Fused):
        return None
    if isinstance(module, QuantStub):
        return Q.QuantInput(_act_quant(qconfig, _quantized(path, kind, qconfig, report)))
    if isinstance(module, DeQuantStub):
        return Q.QDequant()
    if isinstance(module, FloatFunctional):
        return Q.QFunctional(_act_quant(qconfig, _quantized(path, kind, qconfig, report)))
    if isinstance(module, WEIGHTED):
        group = groups[id(module)]
        unsigned = group.act is not None
        upper = 6.0 if group.act == "relu6" else None
        cls = {torch.nn.Conv2d: Q.QConv2d, torch.nn.ConvTranspose2d: Q.QConvTranspose2d, torch.nn.Linear: Q.QLinear}[
            type(module)
        ]
        precision = _quantized(path, kind + (f"+{group.act}" if group.act else ""), qconfig, report)
        out = _act_quant(qconfig, precision, unsigned=unsigned, upper_bound=upper)
        if cls is Q.QConvTranspose2d and not Q.rewritable_as_conv(module):
            report.left_float.append(
                (
                    path,
                    kind,
                    "runs as a float ConvTranspose in onnxruntime: only kernel - 2*padding + "
                    "output_padding == stride (square, ungrouped) has the exact int8 conv + depth-to-space rewrite",
                )
            )
        return cls(
            module, group.act, out, qconfig.weight_averaging_constant, **_weight_args(qconfig, module, precision)
        )
    if type(module) in ACTS:
        upper = 6.0 if isinstance(module, torch.nn.ReLU6) else None
        precision = _quantized(path, kind, qconfig, report)
        return Q.QWithOutput(module, _act_quant(qconfig, precision, unsigned=True, upper_bound=upper))
    if isinstance(module, TRANSPARENT):
        return Q.QTransparent(module)
    if isinstance(module, NEW_VALUES):
        return Q.QWithOutput(module, _act_quant(qconfig, _quantized(path, kind, qconfig, report)))
    if isinstance(module, torch.nn.Upsample):
        if module.mode == "nearest":
            return Q.QTransparent(module)
        return Q.QWithOutput(module, _act_quant(qconfig, _quantized(path, kind, qconfig, report)))
    if isinstance(module, NORMS):
        report.left_float.append((path, kind, "BatchNorm not preceded by a conv/linear cannot be folded"))
        return module
    for float_type, reason in FLOAT_REASONS.items():
        if isinstance(module, float_type):
            report.left_float.append((path, kind, reason))
            return module
    return None


def _weight_args(qconfig: QConfig, module: torch.nn.Module, precision: LayerPrecision) -> dict:
    """Weight range and precision: 16-bit weights take the whole int16 range (no 8-bit kernel
    runs them, so the deploy target's limit does not apply)."""
    if precision.weight == INT16:
        return {"weight_max": 32767, "weight_bits": 16}
    return {
        "weight_max": qconfig.target.weight_max(module),
        "weight_float": precision.weight == FLOAT,
        "bias_correction": qconfig.bias_correction and not isinstance(module, torch.nn.ConvTranspose2d),
    }


def quantizers(model: torch.nn.Module):
    """Every activation quantizer in a converted model."""
    from hat.quant.fake_quant import ActFakeQuant

    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """The fixed-point model: every quantized module in its frozen form, eval mode."""
    uncalibrated = [name for name, m in model.named_modules() if hasattr(m, "calibrated") and not bool(m.calibrated)]
    if uncalibrated:
        raise ValueError(
            f"{len(uncalibrated)} quantizer(s) were never calibrated, e.g. {', '.join(uncalibrated[:3])}: "
            "run calibration (or QAT) before converting to fixed point"
        )
    for module in model.modules():
        if isinstance(module, Q.QModule):
            module.freeze()
    return model.eval()
