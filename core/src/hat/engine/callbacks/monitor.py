"""StatsMonitor: loss, learning rate, throughput and ETA, to the progress bar and the run log."""

from __future__ import annotations

import time
from typing import Any

from hat.engine.callbacks.base import Callback
from hat.engine.state import LoopState
from hat.registry import register_type


@register_type("StatsMonitor")
class StatsMonitor(Callback):
    def __init__(self, log_freq: int = 10) -> None:
        if log_freq < 1:
            raise ValueError("log_freq must be >= 1")
        self.log_freq = log_freq
        self._tic = 0.0
        self._steps = 0

    def on_loop_begin(self, state: LoopState) -> None:
        self._tic = time.perf_counter()
        self._steps = 0

    def on_step_end(self, state: LoopState, batch: Any = None, outputs: Any = None) -> None:
        self._steps += 1
        if state.global_step % self.log_freq and state.global_step != state.total_steps:
            return
        elapsed = time.perf_counter() - self._tic
        steps_per_s = self._steps / elapsed if elapsed > 0 else 0.0
        remaining = (state.total_steps or state.global_step) - state.global_step
        record = {
            "event": "step",
            "epoch": state.epoch,
            "step": state.global_step,
            **{k: round(v, 6) for k, v in state.losses.items()},
            "lr": state.optimizer.param_groups[0]["lr"] if state.optimizer is not None else None,
            "samples_per_s": round(steps_per_s * state.global_batch_size, 2),
            "eta_s": round(remaining / steps_per_s, 1) if steps_per_s else None,
        }
        runner = state.runner
        runner.log.write(record)
        loss_text = " ".join(f"{k}={v:.4g}" for k, v in state.losses.items())
        lr_text = f" lr={record['lr']:.3g}" if record["lr"] is not None else ""
        runner.advance(
            0,
            description=f"{state.stage} e{state.epoch + 1} {loss_text}{lr_text} "
            f"{record['samples_per_s']:.0f} samples/s",
        )
