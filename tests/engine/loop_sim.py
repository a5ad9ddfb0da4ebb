"""A stand-in for the trainer's loop, calling callback hooks in the trainer's order.

Callbacks are tested against the loop contract (hooks, ``global_step`` and ``epoch``
semantics) rather than against a real trainer, so these tests stay fast and do not
depend on the trainer's data plumbing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hat.engine.callbacks.base import Callback
from hat.engine.state import LoopState


def make_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    num_epochs: int | None,
    steps_per_epoch: int,
    num_steps: int | None = None,
) -> LoopState:
    return LoopState(
        stage="float",
        work_dir=Path("unused"),
        model=model,
        optimizer=optimizer,
        num_epochs=num_epochs,
        num_steps=num_steps,
        steps_per_epoch=steps_per_epoch,
    )


def sgd_step(state: LoopState) -> Any:
    """One real optimizer step on random data (the model maps (N, 4) -> anything)."""
    assert state.optimizer is not None
    x = torch.randn(8, 4)
    loss = state.model(x).pow(2).mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    return {"loss": loss.detach()}


class LrRecorder(Callback):
    """Records each group's lr as the step about to run sees it (list it after the updater)."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[float]] = {}

    def on_step_begin(self, state: LoopState) -> None:
        assert state.optimizer is not None
        self.lrs[state.global_step] = [g["lr"] for g in state.optimizer.param_groups]


def run_loop(
    state: LoopState,
    callbacks: Sequence[Callback],
    *,
    train_step: Callable[[LoopState], Any] | None = sgd_step,
    stop_after: int | None = None,
) -> None:
    """Run from ``state.epoch``/``state.step_in_epoch`` to the planned end (or ``stop_after`` steps)."""
    assert state.num_epochs is not None
    for cb in callbacks:
        cb.on_loop_begin(state)
    for epoch in range(state.epoch, state.num_epochs):
        state.epoch = epoch
        state.model.train()
        for cb in callbacks:
            cb.on_epoch_begin(state)
        for i in range(state.step_in_epoch, state.steps_per_epoch):
            if stop_after is not None and state.global_step >= stop_after:
                state.stop = True
                break
            state.step_in_epoch = i
            for cb in callbacks:
                cb.on_step_begin(state)
            outputs = train_step(state) if train_step is not None else None
            state.global_step += 1
            state.step_in_epoch = i + 1
            for cb in callbacks:
                cb.on_step_end(state, None, outputs)
        if state.stop:
            break
        for cb in callbacks:
            cb.on_epoch_end(state)
        state.step_in_epoch = 0
    else:
        state.epoch = state.num_epochs
    for cb in callbacks:
        cb.on_loop_end(state)
