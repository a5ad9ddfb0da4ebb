"""Per-layer precision: which modules run int8 (the default), int16 or float.

The config's top-level ``precision`` is a list of rules, one value for every stage
(calibration, qat, int_infer, export, check), like ``deploy_target``::

    precision:
      - modules: "neck.attention.*"   # fnmatch glob on the module path (model.named_modules())
        activation: int16             # int8 | int16 | float
        weight: int16                 # int8 | int16 | float; omitted: as activation
        reason: configured            # configured (default) | sensitivity

**The last matching rule wins**, as with every other override in a config (a later
``--set`` or a later base wins): a tool that raises a layer appends a rule and leaves the
ones before it alone. ``reason`` says who chose it: ``configured`` for a person,
``sensitivity`` for the automatic fallback, which writes rules through
:func:`rules_to_config`.

What each precision means in the simulation and the exported graph:

- ``int16``: fake quantization on the signed 16-bit grid (activations symmetric on
  [-32767, 32767] * t / 32767, or after a ReLU [0, t] on codes -32768..32767 with zero
  point -32768, the int8 layout widened; weights per channel on [-32767, 32767]).
  Exported as 16-bit QuantizeLinear/DequantizeLinear (ONNX opset 21).
- ``float``: no fake quantization. A float *weight* is used as it is (and the bias stays
  float); a float *activation* leaves the module's output in float, and its output
  quantizer becomes the boundary: it still calibrates on that output, and every int8
  consumer reads the output on the boundary's int8 grid, while float consumers (the
  rest of the island) read it in float.

Only modules the converter quantizes (those with a weight or output quantizer) can be
named; a rule matching none of them is an error, so a misspelt path cannot silently do
nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The top-level config key.
CONFIG_KEY = "precision"
INT8, INT16, FLOAT = "int8", "int16", "float"
PRECISIONS = (INT8, INT16, FLOAT)
#: Bits of the integer grid of each quantized precision.
BITS = {INT8: 8, INT16: 16}
CONFIGURED, SENSITIVITY = "configured", "sensitivity"
REASONS = (CONFIGURED, SENSITIVITY)
#: Why the converter left a module float (next to the rules' reasons, in ``hat check``).
NO_INT8_KERNEL = "no int8 kernel"
_KEYS = ("modules", "activation", "weight", "reason")


class PrecisionError(ValueError):
    """A malformed ``precision`` rule; ``index`` is its position in the list (None: the list itself)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"{CONFIG_KEY}[{index}]: {message}")
        self.index = index


@dataclass(frozen=True)
class LayerPrecision:
    """The precision a module runs at, and why."""

    activation: str = INT8
    weight: str = INT8
    reason: str = CONFIGURED

    @property
    def is_int8(self) -> bool:
        return self.activation == INT8 and self.weight == INT8


DEFAULT = LayerPrecision()


@dataclass(frozen=True)
class PrecisionRule:
    """One entry of the ``precision`` list."""

    modules: str
    activation: str = INT8
    weight: str = INT8
    reason: str = CONFIGURED

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.modules)

    def layer(self) -> LayerPrecision:
        return LayerPrecision(self.activation, self.weight, self.reason)

    def to_dict(self) -> dict[str, str]:
        return {"modules": self.modules, "activation": self.activation, "weight": self.weight, "reason": self.reason}


class PrecisionMap:
    """The parsed rules: module path -> :class:`LayerPrecision` (last match wins)."""

    def __init__(self, rules: Sequence[PrecisionRule] = ()) -> None:
        self.rules = list(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def of(self, path: str) -> LayerPrecision:
        for rule in reversed(self.rules):
            if rule.matches(path):
                return rule.layer()
        return DEFAULT

    def check_matches(self, paths: Iterable[str]) -> None:
        """Every rule names at least one of ``paths`` (the quantizable modules); else PrecisionError."""
        paths = list(paths)
        for index, rule in enumerate(self.rules):
            if not any(rule.matches(p) for p in paths):
                sample = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
                raise PrecisionError(
                    f"modules {rule.modules!r} matches no quantizable module (they are: {sample or 'none'})", index
                )

    def to_list(self) -> list[dict[str, str]]:
        return [rule.to_dict() for rule in self.rules]


def parse_precision(value: Any) -> PrecisionMap:
    """The config's ``precision`` value (None or a list of rules) -> a map; PrecisionError if malformed."""
    if value is None:
        return PrecisionMap()
    if isinstance(value, PrecisionMap):
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PrecisionError(
            f"{CONFIG_KEY} must be a list of rules ({{modules: GLOB, activation: ...}}), got {value!r}"
        )
    return PrecisionMap([_rule(entry, index) for index, entry in enumerate(value)])


def _rule(entry: Any, index: int) -> PrecisionRule:
    if isinstance(entry, PrecisionRule):
        return entry
    if not isinstance(entry, Mapping):
        raise PrecisionError(f"a rule must be a mapping with modules and activation/weight, got {entry!r}", index)
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise PrecisionError(f"unknown key(s) {unknown}; known: {list(_KEYS)}", index)
    modules = entry.get("modules")
    if not isinstance(modules, str) or not modules:
        raise PrecisionError("modules must be a glob on module paths, e.g. 'neck.attention.*'", index)
    activation = _choice(entry, "activation", INT8, PRECISIONS, index)
    weight = _choice(entry, "weight", activation, PRECISIONS, index)
    reason = _choice(entry, "reason", CONFIGURED, REASONS, index)
    return PrecisionRule(modules, activation, weight, reason)


def _choice(entry: Mapping[str, Any], key: str, default: str, allowed: Sequence[str], index: int) -> str:
    value = entry.get(key, default)
    if value is None:
        value = default
    if str(value) not in allowed:
        raise PrecisionError(f"{key} {value!r} is not one of {', '.join(allowed)}", index)
    return str(value)


def rules_to_config(rules: Iterable[PrecisionRule]) -> list[dict[str, str]]:
    """Rules as the config writes them (what the fallback tool appends to ``precision``)."""
    return [rule.to_dict() for rule in rules]


def precision_of_config(config: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """A resolved config's precision rules, normalised for comparison: defaults filled in,
    ``reason`` left out (who chose a precision does not change the grids a checkpoint holds)."""
    rules = parse_precision((config or {}).get(CONFIG_KEY)).to_list()
    return [{key: value for key, value in rule.items() if key != "reason"} for rule in rules]
