"""Quantization settings, as the reference recipes write them in ``qconfig_params``.

``activation_calibration_observer`` (min_max | percentile | mse) with
``activation_calibration_qkwargs`` (e.g. ``{percentile: 99.975}``);
``activation_qat_qkwargs`` (``averaging_constant``: 0 keeps the calibrated scale, 1
takes each batch's range; ``learnable: true`` trains the scales);
``weight_qat_qkwargs`` (``averaging_constant``: 1 recomputes weight scales from the
current weights, 0 keeps those computed at conversion).

``activation_symmetry`` (symmetric | asymmetric) says how an 8-bit activation that is not
after a ReLU is quantized: ``symmetric`` on [-t, t] with zero point 0, ``asymmetric`` on
the observed [lo, hi] with the zero point that puts 0.0 on a code (onnxruntime's uint8
kernels take any zero point). ReLU outputs keep their [0, t] grid either way. The
stage configs set it from the top-level ``activation_symmetry`` of ``hat_stages``, so
calibration and QAT agree; the zero points are in the checkpoint, so the predictors
and export need nothing. With ``learnable`` scales the zero point stays where
calibration put it and only the scale learns.

``bias_correction`` (calibration only; true | false): each conv and linear layer measures,
on the calibration batches, the mean shift its weights' rounding puts on every output
channel and adds it back to the bias (:meth:`hat.quant.qmodules._Weighted.set_calibrating`).

``deploy_target`` is not written in ``qconfig_params``: it is the config's top-level
``deploy_target`` (one value for every stage), which the converters add here so that
a backend sees it with the rest (see :mod:`hat.quant.target`). The top-level
``precision`` rules (:mod:`hat.quant.precision`) travel the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hat.quant.fake_quant import ActFakeQuant
from hat.quant.observers import OBSERVERS, make_observer
from hat.quant.precision import CONFIG_KEY as PRECISION_KEY
from hat.quant.precision import PrecisionMap, parse_precision
from hat.quant.target import CONFIG_KEY as TARGET_KEY
from hat.quant.target import DeployTarget, get_target

#: The qconfig_params key, its values, and the default (what the measurement chose; docs/design.md).
SYMMETRY_KEY = "activation_symmetry"
SYMMETRIES = ("symmetric", "asymmetric")
DEFAULT_SYMMETRY = "symmetric"
BIAS_CORRECTION_KEY = "bias_correction"

KNOWN_KEYS = {
    SYMMETRY_KEY,
    "activation_calibration_observer",
    "activation_calibration_qkwargs",
    "activation_qat_qkwargs",
    "weight_qat_qkwargs",
    BIAS_CORRECTION_KEY,
    TARGET_KEY,
    PRECISION_KEY,
}


@dataclass
class QConfig:
    observer: str = "min_max"
    observer_kwargs: dict[str, Any] = field(default_factory=dict)
    act_averaging_constant: float = 0.0
    act_learnable: bool = False
    act_asymmetric: bool = DEFAULT_SYMMETRY == "asymmetric"
    weight_averaging_constant: float = 1.0
    bias_correction: bool = False
    target: DeployTarget = field(default_factory=lambda: get_target(None))
    precision: PrecisionMap = field(default_factory=PrecisionMap)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> QConfig:
        params = dict(params or {})
        unknown = set(params) - KNOWN_KEYS
        if unknown:
            raise ValueError(f"unknown qconfig_params key(s) {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
        observer = params.get("activation_calibration_observer", "min_max")
        if observer not in OBSERVERS:
            raise ValueError(f"activation_calibration_observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
        symmetry = params.get(SYMMETRY_KEY, DEFAULT_SYMMETRY)
        if symmetry not in SYMMETRIES:
            raise ValueError(
                f"{SYMMETRY_KEY} must be one of {', '.join(SYMMETRIES)}, got {symmetry!r} "
                "(asymmetric: uint8 with a zero point for activations not after a ReLU)"
            )
        act_qat = dict(params.get("activation_qat_qkwargs") or {})
        weight_qat = dict(params.get("weight_qat_qkwargs") or {})
        for name, kwargs, allowed in (
            ("activation_qat_qkwargs", act_qat, {"averaging_constant", "learnable"}),
            ("weight_qat_qkwargs", weight_qat, {"averaging_constant"}),
        ):
            extra = set(kwargs) - allowed
            if extra:
                raise ValueError(f"unknown {name} key(s) {sorted(extra)}; known: {sorted(allowed)}")
        observer_kwargs = dict(params.get("activation_calibration_qkwargs") or {})
        try:  # fail here, naming the key, rather than with a TypeError deep in conversion
            make_observer(observer, **observer_kwargs)
        except TypeError as exc:
            raise ValueError(
                f"activation_calibration_qkwargs {sorted(observer_kwargs)} do not fit observer {observer!r}: {exc}"
            ) from exc
        bias_correction = params.get(BIAS_CORRECTION_KEY, False)
        if not isinstance(bias_correction, bool):
            raise ValueError(f"{BIAS_CORRECTION_KEY} must be true or false, got {bias_correction!r}")
        target = get_target(params.get(TARGET_KEY))
        return cls(
            target=target,
            precision=parse_precision(params.get(PRECISION_KEY)),
            observer=observer,
            observer_kwargs=observer_kwargs,
            act_averaging_constant=float(act_qat.get("averaging_constant", 0.0)),
            act_learnable=bool(act_qat.get("learnable", False)),
            act_asymmetric=symmetry == "asymmetric",
            weight_averaging_constant=float(weight_qat.get("averaging_constant", 1.0)),
            bias_correction=bias_correction,
        )

    def act_quant(
        self, *, unsigned: bool = False, upper_bound: float | None = None, bits: int = 8, float_output: bool = False
    ) -> ActFakeQuant:
        return ActFakeQuant(
            make_observer(self.observer, **self.observer_kwargs),
            unsigned=unsigned,
            upper_bound=upper_bound,
            averaging_constant=self.act_averaging_constant,
            bits=bits,
            float_output=float_output,
            asymmetric=self.act_asymmetric,
        )
