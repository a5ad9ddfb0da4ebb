"""Checkpoints: ``<stage>-checkpoint-last`` for resuming, ``-best`` by a monitored metric.

Written on rank 0 only and atomically (see :mod:`hat.engine.checkpoint_io`). A
checkpoint holds everything a resume needs: model, optimizer and scheduler state, the
loop position, RNG states, callback states, the latest metrics and the resolved config.

``-best`` is decided and written right after the validation that scored it (Validation
calls :meth:`Checkpoint.after_validation`), so it holds exactly the weights whose metric
it records. A save at another step (``interval_by: step`` with a different interval than
the validation's) writes ``-last`` only: its weights are newer than its metrics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hat import distributed, workdir
from hat.engine.callbacks.base import Callback
from hat.engine.checkpoint_io import capture_rng, remove_stale_temp_files, save_checkpoint
from hat.engine.state import LoopState
from hat.registry import register_type


@register_type("Checkpoint")
class Checkpoint(Callback):
    def __init__(
        self,
        monitor_metric_key: str | None = None,
        mode: str | None = None,
        save_interval: int = 1,
        interval_by: str = "epoch",
        save_last: bool = True,
        keep_n: int | None = None,
        save_on_loop_end: bool = True,
    ) -> None:
        """``monitor_metric_key``/``mode``: what "best" means. By default the runner's first
        validation metric's headline (its ``name``), and ``max`` or ``min`` by its
        ``higher_is_better``, so a task config need not spell its metric twice; with no
        metric at all (or no Validation callback to score one), the newest checkpoint is the best.
        ``save_interval``/``interval_by``: write ``-last`` every N epochs or steps;
        ``keep_n``: also keep numbered copies ``<stage>-checkpoint-epoch-<k>`` (or ``-step-``),
        the newest N of them (None = none)."""
        if mode not in ("max", "min", None):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if interval_by not in ("epoch", "step"):
            raise ValueError(f"interval_by must be 'epoch' or 'step', got {interval_by!r}")
        if save_interval < 1:
            raise ValueError("save_interval must be >= 1")
        self.monitor = monitor_metric_key
        self.mode = mode
        self.interval = save_interval
        self.interval_by = interval_by
        self.save_last = save_last
        self.keep_n = keep_n
        self.save_on_loop_end = save_on_loop_end
        self.best: float | None = None
        self._saved_at_step: int | None = None
        #: A validation ran since the last save (so -last's metrics would be stale).
        self._validated_since_save = False

    # -- hooks ------------------------------------------------------------------------------
    def on_loop_begin(self, state: LoopState) -> None:
        metrics = getattr(state.runner, "val_metrics", None) or []
        first = metrics[0] if metrics else None
        # A loop without a validating callback never scores a metric: then, as without
        # metrics, the newest checkpoint is the best (else no -best would ever be written
        # and the next stage would ask for this one to be run again).
        callbacks = getattr(state.runner, "callbacks", None)
        validates = callbacks is None or any(callable(getattr(cb, "validate", None)) for cb in callbacks)
        if self.monitor is None and first is not None and validates:
            self.monitor = first.name
            if self.mode is None:
                self.mode = "max" if first.higher_is_better else "min"
        if self.mode is None:
            self.mode = "max"
        if distributed.is_main():
            self._remove_stale_temp_files(state)

    def _remove_stale_temp_files(self, state: LoopState) -> None:
        """A save killed mid-write left its temp file (up to a whole checkpoint): remove it now."""
        work_dir = getattr(state, "work_dir", None)
        if work_dir is None:  # a loop without a work dir writes no checkpoint either
            return
        for stale in remove_stale_temp_files(Path(work_dir)):
            runner = state.runner
            if runner is not None and hasattr(runner, "print"):
                runner.print(f"removed {stale.name}, left in {stale.parent} by a save that was killed")

    def after_validation(self, state: LoopState, results: dict[str, float]) -> None:
        """Called by Validation while the model holds the weights that scored ``results``.

        A new best is saved here and now; later saves never write ``-best``.
        """
        self._validated_since_save = True
        if self.monitor is None or self.monitor not in results:
            return
        value = float(results[self.monitor])
        if not self._is_better(value):
            return
        self.best = value
        if not distributed.is_main():
            return
        work_dir = Path(state.work_dir)
        save_checkpoint(workdir.checkpoint_path(work_dir, state.stage, workdir.BEST), self._payload(state))
        runner = state.runner
        if runner is not None and hasattr(runner, "print"):
            runner.print(f"new best {self.monitor}={value:.6g} at step {state.global_step} -> {work_dir}")

    def on_step_end(self, state: LoopState, batch: Any = None, outputs: Any = None) -> None:
        if self.interval_by == "step" and state.global_step % self.interval == 0:
            self._save(state, f"step-{state.global_step}")

    def on_epoch_end(self, state: LoopState) -> None:
        if self.interval_by == "epoch" and (state.epoch + 1) % self.interval == 0:
            self._save(state, f"epoch-{state.epoch + 1}")

    def on_loop_end(self, state: LoopState) -> None:
        if not self.save_on_loop_end:
            return
        # Saved at this step already, but a validation that runs at the end of the loop may
        # have produced metrics since (its best, if any, is saved already): -last gets them.
        if self._saved_at_step != state.global_step or self._validated_since_save:
            self._save(state, f"step-{state.global_step}")

    # -- saving -----------------------------------------------------------------------------
    def _is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _save(self, state: LoopState, tag: str) -> None:
        """Write -last (and a numbered copy); -best only when nothing is monitored.

        With a monitored metric, -best is written by :meth:`after_validation` alone: here
        the metrics in ``state`` may come from a validation at an earlier step.
        """
        self._saved_at_step = state.global_step
        self._validated_since_save = False
        newest_is_best = self.monitor is None  # nothing monitored: the newest is the best
        if not distributed.is_main():
            return
        payload = self._payload(state)
        work_dir = Path(state.work_dir)
        last = workdir.checkpoint_path(work_dir, state.stage, workdir.LAST)
        if self.save_last:
            save_checkpoint(last, payload)
        if newest_is_best:
            save_checkpoint(workdir.checkpoint_path(work_dir, state.stage, workdir.BEST), payload)
        if self.keep_n:
            save_checkpoint(workdir.checkpoint_path(work_dir, state.stage, tag), payload)
            self._prune(work_dir, state.stage)
        runner = state.runner
        if runner is not None and hasattr(runner, "print"):
            runner.print(
                f"checkpoint at {tag.replace('-', ' ')} -> {work_dir}" + (" (new best)" if newest_is_best else "")
            )

    def _payload(self, state: LoopState) -> dict[str, Any]:
        epoch, step_in_epoch = state.resume_position()
        callbacks = {}
        runner = state.runner
        for callback in getattr(runner, "callbacks", []):
            callbacks[callback.state_key()] = callback.state_dict()
        return {
            "stage": state.stage,
            "model": {k: v.detach().cpu() for k, v in state.plain_model.state_dict().items()},
            "optimizer": state.optimizer.state_dict() if state.optimizer is not None else None,
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": state.global_step,
            "metrics": dict(state.metrics),
            "callbacks": callbacks,
            "rng": capture_rng(),
            "config": state.config,
        }

    def _prune(self, work_dir: Path, stage: str) -> None:
        def number(path: Path) -> int:  # "<stage>-checkpoint-epoch-12.pth.tar" -> 12
            digits = path.name[: -len(".pth.tar")].rsplit("-", 1)[-1]
            return int(digits) if digits.isdigit() else -1

        numbered = sorted(work_dir.glob(workdir.numbered_checkpoint_glob(stage)), key=number)
        for old in numbered[: max(0, len(numbered) - int(self.keep_n or 0))]:
            old.unlink()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
