"""Which quantized layers lose accuracy: per-layer SQNR and sensitivity, as data.

A quantized model (fake-quant, not frozen) carries the float computation inside it:
with every quantizer's ``enabled`` switch off it computes the float model (BatchNorms
folded, fused activations applied in float, biases left in float). That reference is
used rather than a separately loaded float model because conversion fuses conv, BN and
ReLU into one module: the quantized module at ``backbone.conv`` outputs the ReLU'd value,
the float model's ``backbone.conv`` the raw convolution, so hooking both at one path
would compare different quantities. Layer names are the converted model's module
paths, which are the float model's paths too (conversion swaps modules in place).

Per layer (a :class:`~hat.quant.qmodules.QModule` with an activation quantizer):

- ``sqnr_db``: its output with every layer quantized against its float output;
- ``only_quantized``: the model outputs' SQNR with only that layer quantized;
- ``only_float``: the model outputs' SQNR with only that layer kept float;
- optionally the task metric for both (a :class:`Scorer`).

The ranking key is ``only_quantized`` (the output SQNR, or the metric loss against float
with a scorer): it measures what the layer costs on its own, independent of the other
layers' errors, which is what a fallback choosing layers to raise to higher precision
needs. Ties are broken by ``only_float`` (the more keeping it float recovers, the more
sensitive).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from hat.quant.fake_quant import ActFakeQuant, WeightFakeQuant
from hat.quant.qmodules import QModule

#: How a model's inputs and the batch they came from are handed over: ``(inputs, batch)``.
Sample = tuple[Mapping[str, torch.Tensor], Any]


@dataclass
class Layer:
    """A quantized layer: its module path, its class, and the quantizers it owns."""

    name: str
    kind: str
    output: ActFakeQuant
    quantizers: list[torch.nn.Module]


def quantized_layers(model: torch.nn.Module) -> list[Layer]:
    """Every QModule with an activation quantizer (``out_quant``, or ``quant`` of the input), in module order."""
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, QModule):
            continue
        owned = [child for child in module.children() if isinstance(child, (ActFakeQuant, WeightFakeQuant))]
        outputs = [q for q in owned if isinstance(q, ActFakeQuant)]
        if outputs:
            layers.append(Layer(name, type(module).__name__, outputs[0], owned))
    return layers


@contextmanager
def quantizing(layers: Sequence[Layer], enabled: Callable[[Layer], bool]) -> Iterator[None]:
    """Switch each layer's quantizers on where ``enabled(layer)``, off elsewhere; as they were after."""
    before = [(quantizer, quantizer.enabled) for layer in layers for quantizer in layer.quantizers]
    try:
        for layer in layers:
            for quantizer in layer.quantizers:
                quantizer.enabled = enabled(layer)
        yield
    finally:
        for quantizer, state in before:
            quantizer.enabled = state


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; ``inf`` for identical tensors, ``-inf`` for noise on a zero signal."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class NoiseMeter:
    """Signal and noise energy of named tensors, summed over batches."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        ref, got = reference.detach().double(), candidate.detach().double()
        if ref.shape != got.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(ref.shape)} vs {tuple(got.shape)}")
        self.signal[name] = self.signal.get(name, 0.0) + float((ref * ref).sum())
        self.noise[name] = self.noise.get(name, 0.0) + float(((got - ref) ** 2).sum())

    def sqnr_db(self, name: str) -> float:
        return sqnr_db(self.signal[name], self.noise[name])

    def mean_sqnr_db(self) -> float:
        """SQNR of the mean noise-to-signal ratio over the tensors: each counts alike, whatever its magnitude."""
        if not self.signal:
            return math.nan
        ratios = []
        for name, signal in self.signal.items():
            noise = self.noise[name]
            if noise > 0:
                ratios.append(math.inf if signal <= 0 else noise / signal)
            else:
                ratios.append(0.0)
        return sqnr_db(1.0, sum(ratios) / len(ratios))


def named_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """A model's outputs by name, as export names them: ``output``; a dict's keys; ``output_<i>``."""
    if isinstance(outputs, torch.Tensor):
        return {"output": outputs}
    if isinstance(outputs, Mapping):
        return {str(k): v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(outputs, (tuple, list)):
        return {f"output_{i}": v for i, v in enumerate(outputs) if isinstance(v, torch.Tensor)}
    raise TypeError(f"the model returned a {type(outputs).__name__}; expected a tensor, a dict or a tuple")


class Scorer(Protocol):
    """A task metric over the model's outputs (post-processing included), one accumulator per run."""

    higher_is_better: bool

    def start(self) -> Any:
        """A fresh accumulator."""
        ...

    def update(self, accumulator: Any, outputs: dict[str, torch.Tensor], batch: Any) -> None: ...

    def value(self, accumulator: Any) -> float: ...


@dataclass
class LayerSensitivity:
    """One layer's figures. SQNRs in dB (``inf``: no quantization noise at all)."""

    name: str
    kind: str
    order: int
    sqnr_db: float
    only_quantized_sqnr_db: float
    only_float_sqnr_db: float
    only_quantized_metric: float | None = None
    only_float_metric: float | None = None


@dataclass
class SensitivityReport:
    """Every layer, plus the whole model's figures (float, all quantized) they compare with."""

    layers: list[LayerSensitivity]
    output_sqnr_db: float
    samples: int
    batches: int
    float_metric: float | None = None
    quantized_metric: float | None = None
    higher_is_better: bool = True
    outputs: dict[str, float] = field(default_factory=dict)

    @property
    def by_metric(self) -> bool:
        return self.float_metric is not None

    def metric_loss(self, value: float | None) -> float:
        """How much worse than float ``value`` is (positive: worse), in the metric's units."""
        if value is None or self.float_metric is None:
            return math.nan
        return self.float_metric - value if self.higher_is_better else value - self.float_metric

    def ranked(self) -> list[LayerSensitivity]:
        """Most sensitive first (see the module docstring for the key)."""

        def key(layer: LayerSensitivity) -> tuple[float, float]:
            if self.by_metric:
                alone = -_finite(self.metric_loss(layer.only_quantized_metric), math.inf)
                recovered = -_finite(
                    self.metric_loss(self.quantized_metric) - self.metric_loss(layer.only_float_metric)
                )
                return alone, recovered
            return _finite(layer.only_quantized_sqnr_db, math.inf), -_finite(layer.only_float_sqnr_db)

        return sorted(self.layers, key=key)


def _finite(value: float, nan_as: float = 0.0) -> float:
    return nan_as if math.isnan(value) else value


class _Capture:
    """The output of each layer's activation quantizer, per call, during one forward."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.first_seen: dict[str, int] = {}
        self._handles = [layer.output.register_forward_hook(self._hook(layer.name)) for layer in layers]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> None:
            self.first_seen.setdefault(name, len(self.first_seen))
            # a copy: a quantizer that is off returns its input itself, which a later in-place op may change
            self.values.setdefault(name, []).append(output.detach().clone())

        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure_sensitivity(
    model: torch.nn.Module,
    samples: Iterable[Sample],
    *,
    scorer: Scorer | None = None,
    progress: Callable[[], None] | None = None,
) -> SensitivityReport:
    """Run every configuration (float, all quantized, each layer alone quantized / alone float) on ``samples``.

    ``model`` is a converted, calibrated model in eval mode; its quantizers' switches are as they
    were when this returns. Per batch: 2 + 2 x layers forwards; ``progress`` is called 1 + layers times.
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no quantized layer; analyse a calibrated or qat model")
    names = [layer.name for layer in layers]
    per_layer, whole = NoiseMeter(), NoiseMeter()
    alone = {name: NoiseMeter() for name in names}
    kept = {name: NoiseMeter() for name in names}
    scores: dict[Any, Any] = {}
    if scorer is not None:
        keys = ["float", "quantized", *((n, "alone") for n in names), *((n, "kept") for n in names)]
        scores = {key: scorer.start() for key in keys}
    order: dict[str, int] = {}
    count = batches = 0

    def run(enabled: Callable[[Layer], bool], score_key: Any, batch: Any, inputs: Mapping[str, torch.Tensor]):
        with quantizing(layers, enabled), torch.no_grad():
            outputs = named_outputs(model(dict(inputs)))
        if scorer is not None:
            scorer.update(scores[score_key], outputs, batch)
        return outputs

    model.eval()
    for inputs, batch in samples:
        capture = _Capture(layers)
        try:
            reference = run(lambda _layer: False, "float", batch, inputs)
            float_values = capture.values
            for name, index in capture.first_seen.items():
                order.setdefault(name, index)
            capture.values, capture.first_seen = {}, {}
            quantized = run(lambda _layer: True, "quantized", batch, inputs)
            for name, values in capture.values.items():
                for ref, got in zip(float_values.get(name, []), values, strict=False):
                    per_layer.add(name, ref, got)
        finally:
            capture.close()
        for key, value in quantized.items():
            whole.add(key, reference[key], value)
        if progress is not None:
            progress()
        for layer in layers:
            out = run(lambda other, chosen=layer: other is chosen, (layer.name, "alone"), batch, inputs)
            for key, value in out.items():
                alone[layer.name].add(key, reference[key], value)
            out = run(lambda other, chosen=layer: other is not chosen, (layer.name, "kept"), batch, inputs)
            for key, value in out.items():
                kept[layer.name].add(key, reference[key], value)
            if progress is not None:
                progress()
        count += _batch_size(reference)
        batches += 1
    if batches == 0:
        raise ValueError("no samples to analyse")

    def metric(key: Any) -> float | None:
        return None if scorer is None else float(scorer.value(scores[key]))

    results = [
        LayerSensitivity(
            name=layer.name,
            kind=layer.kind,
            order=order.get(layer.name, len(order) + i),
            sqnr_db=per_layer.sqnr_db(layer.name) if layer.name in per_layer.signal else math.nan,
            only_quantized_sqnr_db=alone[layer.name].mean_sqnr_db(),
            only_float_sqnr_db=kept[layer.name].mean_sqnr_db(),
            only_quantized_metric=metric((layer.name, "alone")),
            only_float_metric=metric((layer.name, "kept")),
        )
        for i, layer in enumerate(layers)
    ]
    results.sort(key=lambda r: r.order)
    return SensitivityReport(
        layers=results,
        output_sqnr_db=whole.mean_sqnr_db(),
        samples=count,
        batches=batches,
        float_metric=metric("float"),
        quantized_metric=metric("quantized"),
        higher_is_better=True if scorer is None else bool(scorer.higher_is_better),
        outputs={key: whole.sqnr_db(key) for key in whole.signal},
    )


def _batch_size(outputs: dict[str, torch.Tensor]) -> int:
    first = next(iter(outputs.values()), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1
