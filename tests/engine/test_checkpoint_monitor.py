"""The best checkpoint is judged by the first validation metric unless a config says otherwise."""

from __future__ import annotations

from types import SimpleNamespace

from hat.engine.callbacks.checkpoint import Checkpoint
from hat.metrics import Metric


class Distance(Metric):
    name = "dist"
    higher_is_better = False


class Score(Metric):
    name = "score"


def begin(callback: Checkpoint, *metrics: Metric) -> Checkpoint:
    callback.on_loop_begin(SimpleNamespace(runner=SimpleNamespace(val_metrics=list(metrics))))
    return callback


def test_monitor_and_mode_come_from_the_first_metric() -> None:
    lower = begin(Checkpoint(), Distance(), Score())
    assert (lower.monitor, lower.mode) == ("dist", "min")
    lower.best = 2.0
    assert lower._is_better(1.0) and not lower._is_better(3.0)
    higher = begin(Checkpoint(), Score(), Distance())
    assert (higher.monitor, higher.mode) == ("score", "max")


def test_a_configured_key_and_mode_win() -> None:
    explicit = begin(Checkpoint(monitor_metric_key="score", mode="max"), Distance(), Score())
    assert (explicit.monitor, explicit.mode) == ("score", "max")
    keyed = begin(Checkpoint(monitor_metric_key="score"), Distance())
    assert (keyed.monitor, keyed.mode) == ("score", "max")


def test_without_metrics_nothing_is_monitored() -> None:
    plain = begin(Checkpoint())
    assert plain.monitor is None and plain.mode == "max"


def test_without_a_validation_callback_the_newest_checkpoint_is_the_best() -> None:
    """Metrics configured but never scored (the Validation callback left out): -best must still be written."""
    unscored = Checkpoint()
    unscored.on_loop_begin(SimpleNamespace(runner=SimpleNamespace(val_metrics=[Score()], callbacks=[unscored])))
    assert unscored.monitor is None

    class Validates:
        def validate(self, state):
            return {}

    scored = Checkpoint()
    scored.on_loop_begin(
        SimpleNamespace(runner=SimpleNamespace(val_metrics=[Score()], callbacks=[Validates(), scored]))
    )
    assert scored.monitor == "score"
