"""The metric protocol every task's metrics implement.

A metric accumulates per batch (``update``), reports a dict of named floats
(``compute``) and starts over (``reset``). State that must be summed across DDP ranks is
declared with :meth:`Metric.add_state` so the base class can reduce it; a metric that
needs all predictions (a devkit evaluation) declares list state, gathered to every rank.
Each metric names the value it is judged by and whether higher is better, so
checkpoint selection never guesses.
"""

from __future__ import annotations

from typing import Any

import torch

from hat import distributed


class Metric:
    """Base class: declare state with ``add_state``, implement ``update`` and ``_compute``."""

    #: Name of the headline value in ``compute()``'s dict (e.g. "PCK@0.1").
    name: str = "metric"
    #: Whether a larger headline value is better (False for a distance or a loss).
    higher_is_better: bool = True

    def __init__(self) -> None:
        self._defaults: dict[str, Any] = {}
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor | list, reduce: str = "sum") -> None:
        """``reduce``: "sum" (a tensor summed over ranks) or "cat" (a list joined over ranks)."""
        if reduce not in ("sum", "cat"):
            raise ValueError(f"reduce must be 'sum' or 'cat', got {reduce!r}")
        self._defaults[name] = default
        self._reductions[name] = reduce
        setattr(self, name, _fresh(default))

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, _fresh(default))

    def update(self, batch: Any, outputs: Any) -> None:
        raise NotImplementedError

    def _compute(self) -> dict[str, float]:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Reduce the state over ranks, then compute; every rank gets the same values."""
        local = {name: getattr(self, name) for name in self._defaults}
        try:
            for name, reduce in self._reductions.items():
                value = getattr(self, name)
                if reduce == "sum":
                    setattr(self, name, distributed.all_reduce_sum(value))
                else:
                    setattr(self, name, [item for part in distributed.all_gather_objects(value) for item in part])
            return {k: float(v) for k, v in self._compute().items()}
        finally:
            for name, value in local.items():  # keep local state so compute() can be called twice
                setattr(self, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, higher_is_better={self.higher_is_better})"


def _fresh(default: torch.Tensor | list) -> torch.Tensor | list:
    return default.clone() if isinstance(default, torch.Tensor) else list(default)


def format_summary(results: dict[str, float]) -> str:
    """``name=value, ...`` of the overall values, for one line of a training log.

    Keys with a ``/`` are a metric's breakdown (per class, per sequence, a second
    protocol); a line lists the overall values and counts the rest, which stay in the
    run's log and the predict JSON.
    """
    overall = {k: v for k, v in results.items() if "/" not in k} or dict(results)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in overall.items())
    rest = len(results) - len(overall)
    return shown + (f" (+{rest} per-group values in the log)" if rest else "")
