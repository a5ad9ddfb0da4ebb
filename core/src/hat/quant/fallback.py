"""The automatic precision fallback's search: which layers to keep off int8, and in what order.

Given layers ranked most sensitive first (:func:`hat.quant.sensitivity.SensitivityReport.ranked`)
and a way to score a set of precision rules (calibrate with them, measure the task metric
and the latency), it raises one layer at a time, most sensitive first, until the metric
is within the budget. Each layer is tried at every precision offered (int16, then float);
int16 is kept when it buys at least half of what float buys (int16 keeps the layer on
integer kernels' grids; float costs a float island), float when int16 does not help, e.g.
when the calibration observer clips the layer's range at any bit width; a layer that buys
nothing is left at int8, so the set stays small.

Why greedy and not a search over subsets: each evaluation is a calibration and a pass over
the validation data (tens of seconds to minutes), the ranking already orders the layers,
and the original toolkit and NNCF's accuracy-controlled quantization proceed the same way
(rank, then revert the worst layers one by one). This module has no I/O: the work-dir
flow is :mod:`hat.usecases.fallback`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hat.quant.precision import FLOAT, INT16, SENSITIVITY, PrecisionRule


@dataclass(frozen=True)
class Budget:
    """How far below float the metric may be, relative to float: 0.005 = within 0.5%."""

    relative: float
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.relative < 1:
            raise ValueError(f"the budget is a fraction of the float metric in [0, 1), got {self.relative}")

    def threshold(self, float_metric: float) -> float:
        """The worst metric that still meets the budget."""
        margin = abs(float_metric) * self.relative
        return float_metric - margin if self.higher_is_better else float_metric + margin

    def met(self, metric: float, float_metric: float) -> bool:
        limit = self.threshold(float_metric)
        return metric >= limit if self.higher_is_better else metric <= limit

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


@dataclass
class Evaluation:
    """What one set of rules scored: the task metric, and the compiled model's latency (ms, None if not measured)."""

    metric: float
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    """One evaluation of the search: the layer tried (None: the all-int8 start), at which precision, and the result."""

    index: int
    layer: str | None
    precision: str | None
    rules: list[PrecisionRule]
    evaluation: Evaluation
    kept: bool
    meets_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.index,
            "layer": self.layer,
            "precision": self.precision,
            "metric": self.evaluation.metric,
            "latency_ms": self.evaluation.latency_ms,
            "kept": self.kept,
            "meets_budget": self.meets_budget,
            "rules": [rule.to_dict() for rule in self.rules],
            **self.evaluation.extra,
        }


@dataclass
class FallbackResult:
    """Every step in order, and the rules chosen (those of the last kept step)."""

    float_metric: float
    budget: Budget
    steps: list[Step]
    rules: list[PrecisionRule]
    met: bool

    @property
    def start(self) -> Step:
        return self.steps[0]

    @property
    def chosen(self) -> Step:
        return [step for step in self.steps if step.kept][-1]


def raise_rule(layer: str, precision: str) -> PrecisionRule:
    """The rule that keeps exactly ``layer`` (its module path) at ``precision``, weights and activations."""
    return PrecisionRule(modules=layer, activation=precision, weight=precision, reason=SENSITIVITY)


def search(
    ranked: Sequence[str],
    evaluate: Callable[[list[PrecisionRule]], Evaluation],
    *,
    float_metric: float,
    budget: Budget,
    base_rules: Sequence[PrecisionRule] = (),
    max_layers: int = 8,
    precisions: Sequence[str] = (INT16, FLOAT),
    on_step: Callable[[Step], None] | None = None,
) -> FallbackResult:
    """Raise layers of ``ranked`` (most sensitive first) until ``evaluate`` meets ``budget``.

    ``base_rules`` (the config's own rules) stay in front of every set; the search's rules
    are appended, so they win (last match wins). At most ``max_layers`` layers are tried.
    """
    steps: list[Step] = []

    def record(layer: str | None, precision: str | None, rules: list[PrecisionRule]) -> Step:
        evaluation = evaluate(rules)
        step = Step(len(steps), layer, precision, rules, evaluation, False, budget.met(evaluation.metric, float_metric))
        steps.append(step)
        return step

    def decided(step: Step, kept: bool) -> Step:
        step.kept = kept
        if on_step is not None:
            on_step(step)
        return step

    current = decided(record(None, None, list(base_rules)), kept=True)
    for layer in ranked[:max_layers]:
        if current.meets_budget:
            break
        trials = [record(layer, precision, [*current.rules, raise_rule(layer, precision)]) for precision in precisions]
        best = _choose(trials, current, budget)
        for trial in trials:
            decided(trial, kept=trial is best)
        if best is not None:
            current = best
    return FallbackResult(float_metric, budget, steps, current.rules, current.meets_budget)


#: int16 is kept over float when it recovers at least this share of float's gain.
INT16_SHARE_OF_FLOAT_GAIN = 0.5


def _choose(trials: list[Step], current: Step, budget: Budget) -> Step | None:
    """The trial to keep: the first precision offered (int16) unless a later one gains over twice as much."""

    def gain(step: Step) -> float:
        delta = step.evaluation.metric - current.evaluation.metric
        return delta if budget.higher_is_better else -delta

    helping = [trial for trial in trials if gain(trial) > 0]
    if not helping:
        return None
    best = max(helping, key=gain)
    first = helping[0]
    return first if gain(first) >= INT16_SHARE_OF_FLOAT_GAIN * gain(best) else best
