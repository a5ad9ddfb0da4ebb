"""The callback protocol: hooks the loop calls, in the order the config lists callbacks.

Order is the config's: put validation before the checkpoint so that "best" sees this
epoch's metrics. A callback that keeps state across a resume (the best value so far, an
EMA copy of the weights) returns it from ``state_dict`` and takes it back in
``load_state_dict``; the checkpoint stores it under the callback's class name.
"""

from __future__ import annotations

from typing import Any

from hat.engine.state import LoopState


class Callback:
    def on_loop_begin(self, state: LoopState) -> None:
        """Before the first step (after a resume has restored the state)."""

    def on_epoch_begin(self, state: LoopState) -> None:
        """Before the epoch's first step."""

    def on_step_begin(self, state: LoopState) -> None:
        """Before the forward pass of a step."""

    def on_step_end(self, state: LoopState, batch: Any = None, outputs: Any = None) -> None:
        """After the optimizer step; ``state.global_step`` already counts this step."""

    def on_epoch_end(self, state: LoopState) -> None:
        """After the epoch's last step; ``state.epoch`` is still the epoch just run."""

    def on_loop_end(self, state: LoopState) -> None:
        """After the last step, also when a callback stopped the loop early."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def state_key(self) -> str:
        """Key under which the checkpoint stores this callback's state."""
        return type(self).__name__
