"""The fallback search (hat.quant.fallback) on a scripted evaluator: which layers it raises, in order, and why."""

from __future__ import annotations

import pytest

from hat.quant.fallback import Budget, Evaluation, raise_rule, search
from hat.quant.precision import FLOAT, INT16, SENSITIVITY, PrecisionRule


def scripted(gains: dict[tuple[str, str], float], start: float = 0.90):
    """A metric (higher is better) that adds each raised layer's gain at its precision."""
    calls: list[list[tuple[str, str]]] = []

    def evaluate(rules: list[PrecisionRule]) -> Evaluation:
        raised = [(r.modules, r.activation) for r in rules if r.reason == SENSITIVITY]
        calls.append(raised)
        return Evaluation(start + sum(gains.get(key, 0.0) for key in raised), latency_ms=1.0 + 0.1 * len(raised))

    return evaluate, calls


def test_budget_threshold_both_directions() -> None:
    assert Budget(0.01).threshold(0.80) == pytest.approx(0.792)
    assert Budget(0.01).met(0.7921, 0.80) and not Budget(0.01).met(0.7919, 0.80)
    lower = Budget(0.05, higher_is_better=False)
    assert lower.threshold(2.0) == pytest.approx(2.1)
    assert lower.met(2.09, 2.0) and not lower.met(2.11, 2.0)
    with pytest.raises(ValueError, match="fraction"):
        Budget(1.5)


def test_raises_the_most_sensitive_layers_until_the_budget_is_met() -> None:
    evaluate, calls = scripted({("a", INT16): 0.05, ("a", FLOAT): 0.05, ("b", INT16): 0.04, ("c", INT16): 0.03})
    result = search(["a", "b", "c", "d"], evaluate, float_metric=1.0, budget=Budget(0.02))
    assert result.met
    # a: int16 buys as much as float -> int16; b: int16; then 0.99 >= 0.98: c and d never tried
    assert [(r.modules, r.activation, r.reason) for r in result.rules] == [
        ("a", INT16, SENSITIVITY),
        ("b", INT16, SENSITIVITY),
    ]
    assert result.chosen.layer == "b" and result.chosen.meets_budget
    assert [step.layer for step in result.steps] == [None, "a", "a", "b", "b"]
    assert all(("c", INT16) not in call for call in calls)


def test_float_where_int16_does_not_help_and_a_useless_layer_is_left_at_int8() -> None:
    # "a" loses nothing to int8 (raising it buys nothing); "b" is clipped by its observer at any bit width
    evaluate, _ = scripted({("b", INT16): 0.001, ("b", FLOAT): 0.08})
    result = search(["a", "b"], evaluate, float_metric=1.0, budget=Budget(0.05))
    assert [(r.modules, r.activation) for r in result.rules] == [("b", FLOAT)]
    kept = [(s.layer, s.precision) for s in result.steps if s.kept]
    assert kept == [(None, None), ("b", FLOAT)]
    assert result.met


def test_the_configs_own_rules_stay_in_front_and_an_unmet_budget_says_so() -> None:
    own = PrecisionRule(modules="head.*", activation=FLOAT, weight=FLOAT)
    evaluate, calls = scripted({("x", INT16): 0.01})
    result = search(["x", "y", "z"], evaluate, float_metric=1.0, budget=Budget(0.01), base_rules=[own], max_layers=2)
    assert not result.met
    assert result.rules == [own, raise_rule("x", INT16)]
    assert {layer for call in calls for layer, _ in call} == {"x", "y"}  # z is past max_layers
    assert result.chosen.evaluation.metric == pytest.approx(0.91)


def test_already_within_budget_tries_nothing() -> None:
    evaluate, calls = scripted({}, start=0.999)
    result = search(["a"], evaluate, float_metric=1.0, budget=Budget(0.005))
    assert result.met and len(calls) == 1 and result.chosen.index == 0 and result.rules == []
