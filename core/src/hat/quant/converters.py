"""The stage converters of ``model_convert_pipeline``: Float2Calibration, Float2QAT, QAT2Quantize.

They take the quantization backend the pipeline names (``quant_backend``, default
``torch_native``) from the backends their context was handed (the plugin host's, via
the stage that runs the pipeline) and give it the pipeline's ``qconfig_params`` plus the
config's ``deploy_target`` (see :mod:`hat.quant.target`) and ``precision`` rules (see
:mod:`hat.quant.precision`); what was left float, or off int8, is printed so that
nothing is silently slower on the device.

quant is a library below the engine: the context is described here as a protocol
(:class:`QuantContext`), which the engine's ``ConvertContext`` satisfies, so nothing
here imports the engine or the plugin host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from hat.console import info
from hat.errors import ConfigError
from hat.quant.backend import BackendFactory, QuantBackend
from hat.quant.precision import CONFIG_KEY as PRECISION_KEY
from hat.quant.precision import PrecisionError
from hat.quant.target import CONFIG_KEY as TARGET_KEY
from hat.quant.target import DEFAULT_TARGET
from hat.registry import register_type

SUPPORTED_QAT_MODES = ("fuse_bn",)


class QuantContext(Protocol):
    """What a quantization converter reads from the convert pipeline's context."""

    @property
    def task(self) -> str: ...
    @property
    def qat_mode(self) -> str | None: ...
    @property
    def qconfig_params(self) -> Mapping[str, Any]: ...
    @property
    def quant_backend(self) -> str: ...
    @property
    def quant_backends(self) -> Mapping[str, BackendFactory]:
        """The installed backends by name, handed down by whoever runs the pipeline."""
        ...

    @property
    def deploy_target(self) -> str | None: ...
    @property
    def precision(self) -> list[Any] | None:
        """The config's top-level ``precision`` rules (None: every layer int8)."""
        ...


def _backend(context: QuantContext) -> QuantBackend:
    backends = context.quant_backends
    name = context.quant_backend
    if name not in backends:
        raise ConfigError(
            f"unknown quantization backend {name!r}",
            hint=f"installed: {', '.join(sorted(backends)) or 'none'}",
        )
    return backends[name]()


def _check_mode(context: QuantContext) -> None:
    if context.qat_mode not in (None, *SUPPORTED_QAT_MODES):
        raise ConfigError(
            f"qat_mode {context.qat_mode!r} is not supported",
            hint="use qat_mode: fuse_bn (conv + BatchNorm (+ ReLU) fused before quantizing)",
        )


def _prepare(context: QuantContext, stage: str, model: torch.nn.Module) -> torch.nn.Module:
    backend = _backend(context)
    prepare = backend.prepare_calibration if stage == "calibration" else backend.prepare_qat
    for key in (TARGET_KEY, PRECISION_KEY):
        if key in context.qconfig_params:
            raise ConfigError(
                f"{key} is set in model_convert_pipeline.qconfig_params",
                hint=f"set it once at the top level of the config ({key}: ...), so every stage uses the same",
            )
    params = {**context.qconfig_params, TARGET_KEY: context.deploy_target or DEFAULT_TARGET}
    precision = getattr(context, "precision", None)
    if precision:
        params[PRECISION_KEY] = precision
    try:
        model, report = prepare(model, params)
    except PrecisionError as exc:
        raise ConfigError(
            str(exc),
            hint=f"fix the top-level {PRECISION_KEY} list: modules is a glob on the paths of "
            "model.named_modules() (see docs/design.md, Per-layer precision)",
        ) from exc
    except ValueError as exc:  # bad qconfig_params, or a model that is already quantized
        raise ConfigError(str(exc), hint="check model_convert_pipeline's qconfig_params and converters") from exc
    _announce(stage, report)
    return model


def _announce(stage: str, report) -> None:
    info(f"{stage}: {report.summary()}")


@register_type("Float2Calibration")
class Float2Calibration:
    """Float model -> calibration model (observers in every activation quantizer)."""

    def __init__(self, convert_mode: str | None = None) -> None:
        # convert_mode (eager / fx in the reference recipes) is accepted for compatibility:
        # HAT converts by module swapping whatever it says.
        self.convert_mode = convert_mode

    def __call__(self, model: torch.nn.Module, context: QuantContext) -> torch.nn.Module:
        _check_mode(context)
        return _prepare(context, "calibration", model)


@register_type("Float2QAT")
class Float2QAT:
    """Float model -> QAT model. Load the calibration checkpoint after this converter."""

    def __init__(self, convert_mode: str | None = None) -> None:
        self.convert_mode = convert_mode

    def __call__(self, model: torch.nn.Module, context: QuantContext) -> torch.nn.Module:
        _check_mode(context)
        return _prepare(context, "qat", model)


@register_type("QAT2Quantize")
class QAT2Quantize:
    """Calibration or QAT model -> fixed-point model (what export and validate use)."""

    def __call__(self, model: torch.nn.Module, context: QuantContext) -> torch.nn.Module:
        try:
            return _backend(context).convert_fixed(model)
        except ValueError as exc:
            raise ConfigError(str(exc), hint=f"run `hat train {context.task} --stage calibration` first") from exc
