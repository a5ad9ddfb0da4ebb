"""Learning-rate schedules as callbacks, the way HAT configs name them.

The updaters write ``group["lr"]`` themselves instead of wrapping a torch scheduler:
the learning rate of a step is then a pure function of the loop position
(``global_step``, ``epoch``), so a resumed run gets exactly the rates it would have had,
with no scheduler state to save, and warmup can run per step while the main schedule
moves per epoch.

Every group's base rate is ``group["initial_lr"]``, captured once with ``setdefault``:
per-group multipliers that the optimizer builder already applied to ``lr`` are kept,
and a resume that restores the optimizer (which stores ``initial_lr``) does not take
the already-decayed ``lr`` as the new base.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from hat.engine.callbacks.base import Callback
from hat.engine.state import LoopState
from hat.registry import register_type

logger = logging.getLogger(__name__)

Unit = Literal["epoch", "step"]
_UNITS = ("epoch", "step")


def _check_unit(name: str, value: str) -> None:
    if value not in _UNITS:
        raise ValueError(f"{name} must be 'epoch' or 'step', got {value!r}")


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


class _LrUpdater(Callback):
    """Shared machinery: base-rate capture, linear warmup, and writing the rates.

    Subclasses only say how the base rate is scaled after (or under) warmup, through
    :meth:`schedule_factor`.
    """

    def __init__(self, warmup_len: int, warmup_by: Unit, warmup_lr_ratio: float) -> None:
        _check_count("warmup_len", warmup_len)
        _check_unit("warmup_by", warmup_by)
        _check_ratio("warmup_lr_ratio", warmup_lr_ratio)
        self.warmup_len = warmup_len
        self.warmup_by = warmup_by
        self.warmup_lr_ratio = warmup_lr_ratio

    # -- what subclasses define ---------------------------------------------------------
    def schedule_factor(self, state: LoopState) -> float:
        """Multiplier of the base rate at the current position, warmup aside."""
        raise NotImplementedError

    def check_state(self, state: LoopState) -> None:
        """Fail at loop start, not mid-run, when the loop lacks a length the schedule needs."""

    # -- hooks --------------------------------------------------------------------------
    def on_loop_begin(self, state: LoopState) -> None:
        if state.optimizer is None:
            raise ValueError(f"{type(self).__name__} needs an optimizer, but the loop has none")
        if self.warmup_len and self.warmup_by == "epoch" and state.steps_per_epoch <= 0:
            raise ValueError("warmup_by='epoch' needs a known number of steps per epoch")
        self.check_state(state)
        for group in state.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply(state)

    def on_epoch_begin(self, state: LoopState) -> None:
        self._apply(state)

    def on_step_begin(self, state: LoopState) -> None:
        self._apply(state)

    # -- the computation ----------------------------------------------------------------
    def warmup_steps(self, state: LoopState) -> int:
        """Warmup length in steps; warmup by epoch still ramps every step, so it is smooth."""
        if self.warmup_by == "epoch":
            return self.warmup_len * state.steps_per_epoch
        return self.warmup_len

    def warmup_factor(self, state: LoopState) -> float:
        """Linear ramp from ``warmup_lr_ratio`` at step 0 to 1 at the end of warmup."""
        steps = self.warmup_steps(state)
        if state.global_step >= steps:
            return 1.0
        progress = state.global_step / steps
        return self.warmup_lr_ratio + (1.0 - self.warmup_lr_ratio) * progress

    def factor(self, state: LoopState) -> float:
        """Base-rate multiplier for the step about to run (shared by every group)."""
        return self.warmup_factor(state) * self.schedule_factor(state)

    def _apply(self, state: LoopState) -> None:
        assert state.optimizer is not None
        factor = self.factor(state)
        for group in state.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor


def _planned_epochs(state: LoopState) -> int | None:
    """Epochs the loop will run, derived from the step budget when only that is set."""
    if state.num_epochs is not None:
        return state.num_epochs
    if state.num_steps is not None and state.steps_per_epoch > 0:
        return math.ceil(state.num_steps / state.steps_per_epoch)
    return None


@register_type()
class CosLrUpdater(_LrUpdater):
    """Linear warmup, then a cosine from the base rate down to ``base * min_lr_ratio``.

    The cosine starts where warmup ends (``t = 0``) and spans the rest of the run, so
    the whole planned length is used and the last step lands just above the minimum.
    ``update_by='epoch'`` holds the rate for a whole epoch (the cosine then counts
    epochs, starting with the first epoch that begins after warmup), while warmup still
    ramps per step. ``step_log_interval`` is kept from HAT configs: every that many
    steps the current rates are logged at INFO level on the main process.
    """

    def __init__(
        self,
        warmup_len: int = 0,
        warmup_by: Unit = "epoch",
        warmup_lr_ratio: float = 0.0,
        min_lr_ratio: float = 0.0,
        update_by: Unit = "step",
        step_log_interval: int | None = None,
    ) -> None:
        super().__init__(warmup_len, warmup_by, warmup_lr_ratio)
        _check_ratio("min_lr_ratio", min_lr_ratio)
        _check_unit("update_by", update_by)
        if step_log_interval is not None and (
            isinstance(step_log_interval, bool) or not isinstance(step_log_interval, int) or step_log_interval < 1
        ):
            raise ValueError(f"step_log_interval must be a positive integer or None, got {step_log_interval!r}")
        self.min_lr_ratio = min_lr_ratio
        self.update_by = update_by
        self.step_log_interval = step_log_interval

    def check_state(self, state: LoopState) -> None:
        if self.update_by == "step" and state.total_steps is None:
            raise ValueError("CosLrUpdater with update_by='step' needs num_steps or num_epochs with steps_per_epoch")
        if self.update_by == "epoch" and _planned_epochs(state) is None:
            raise ValueError("CosLrUpdater with update_by='epoch' needs num_epochs (or num_steps and steps_per_epoch)")

    def schedule_factor(self, state: LoopState) -> float:
        warmup = self.warmup_steps(state)
        if self.update_by == "step":
            total = state.total_steps
            assert total is not None
            t, length = state.global_step - warmup, total - warmup
        else:
            epochs = _planned_epochs(state)
            assert epochs is not None
            per_epoch = max(state.steps_per_epoch, 1)
            warmup_epochs = math.ceil(warmup / per_epoch)
            t, length = state.epoch - warmup_epochs, epochs - warmup_epochs
        if length <= 0 or t <= 0:
            return 1.0
        t = min(t, length)  # running past the plan stays at the minimum
        cosine = (1.0 + math.cos(math.pi * t / length)) / 2.0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def on_step_begin(self, state: LoopState) -> None:
        super().on_step_begin(state)
        interval = self.step_log_interval
        if interval and state.global_step % interval == 0 and state.is_main and state.optimizer is not None:
            rates = ", ".join(f"{g['lr']:.6g}" for g in state.optimizer.param_groups)
            logger.info("step %d: lr %s", state.global_step, rates)


@register_type()
class StepDecayLrUpdater(_LrUpdater):
    """Piecewise-constant rate: multiplied by ``lr_decay_factor`` at each listed epoch or step.

    A decay id ``k`` takes effect from epoch (or step) ``k`` on, counting from 0: with
    ``lr_decay_id=[30]`` epochs 0..29 use the base rate and epoch 30 the decayed one.
    The same linear warmup as :class:`CosLrUpdater` multiplies the rate during warmup.
    """

    def __init__(
        self,
        lr_decay_id: list[int],
        lr_decay_factor: float = 0.1,
        step_by: Unit = "epoch",
        warmup_len: int = 0,
        warmup_by: Unit = "epoch",
        warmup_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__(warmup_len, warmup_by, warmup_lr_ratio)
        if isinstance(lr_decay_id, (str, bytes)) or not hasattr(lr_decay_id, "__iter__"):
            raise ValueError(f"lr_decay_id must be a list of epochs or steps, got {lr_decay_id!r}")
        decay_ids = list(lr_decay_id)
        for value in decay_ids:
            _check_count("each lr_decay_id entry", value)
        if not lr_decay_factor > 0:
            raise ValueError(f"lr_decay_factor must be positive, got {lr_decay_factor!r}")
        _check_unit("step_by", step_by)
        self.lr_decay_id = sorted(decay_ids)
        self.lr_decay_factor = lr_decay_factor
        self.step_by = step_by

    def schedule_factor(self, state: LoopState) -> float:
        position = state.epoch if self.step_by == "epoch" else state.global_step
        decays = sum(1 for boundary in self.lr_decay_id if boundary <= position)
        return self.lr_decay_factor**decays
