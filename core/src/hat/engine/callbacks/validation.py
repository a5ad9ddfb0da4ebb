"""Validation during training: the stage's metrics on its validation loader, every N epochs or steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hat.engine.callbacks.base import Callback
from hat.engine.loader import build_loader
from hat.engine.runner import evaluate
from hat.engine.state import LoopState
from hat.metrics import Metric, format_summary
from hat.registry import register_type


@register_type("Validation", lazy_args=("data_loader",))
class Validation(Callback):
    """The stage's metrics, every N epochs or steps, handed to the callbacks that keep a best.

    Right after each validation, every callback of the runner with an
    ``after_validation(state, results)`` method (the Checkpoint) is called, while the model
    still holds the weights that scored: a best checkpoint is saved from exactly those, not
    from the weights of a later save step.

    ``metrics`` default to the runner's ``val_metrics``, and they read the predictions of
    the runner's ``post_process`` (the one the predictors use). Each result goes to
    ``state.metrics``, the run log and the console.
    """

    def __init__(
        self,
        data_loader: Mapping[str, Any],
        metrics: Sequence[Metric] | None = None,
        val_interval: int = 1,
        interval_by: str = "epoch",
        batch_processor: Any = None,
        on_loop_end: bool = True,
    ) -> None:
        if interval_by not in ("epoch", "step"):
            raise ValueError(f"interval_by must be 'epoch' or 'step', got {interval_by!r}")
        if val_interval < 1:
            raise ValueError("val_interval must be >= 1")
        self.loader_cfg = data_loader
        self.metrics = list(metrics) if metrics is not None else None
        self.interval = val_interval
        self.interval_by = interval_by
        self.batch_processor = batch_processor
        self.run_on_loop_end = on_loop_end
        self._loader = None
        self._validated_at: int | None = None

    def _build(self, state: LoopState):
        if self._loader is None:
            ctx = state.runner.context
            self._loader = build_loader(
                self.loader_cfg,
                ctx.registry,
                seed=ctx.seed,
                train=False,
                path="Validation.data_loader",
                locate=ctx.locate,
            )
        return self._loader

    def validate(self, state: LoopState) -> dict[str, float]:
        runner = state.runner
        metrics = self.metrics if self.metrics is not None else runner.val_metrics
        loader = self._build(state)
        results, samples = evaluate(
            state.plain_model,
            loader,
            metrics,
            runner.device(),
            batch_processor=self.batch_processor,
            post_process=getattr(runner, "post_process", None),
        )
        self._validated_at = state.global_step
        state.metrics.update(results)
        runner.log.write(
            {"event": "validation", "epoch": state.epoch, "step": state.global_step, "samples": samples, **results}
        )
        shown = format_summary(results)
        runner.print(f"[{state.stage}] validation at epoch {state.epoch + 1}, step {state.global_step}: {shown}")
        for callback in getattr(runner, "callbacks", []):
            after = getattr(callback, "after_validation", None)
            if callable(after):
                after(state, results)
        return results

    def on_step_end(self, state: LoopState, batch: Any = None, outputs: Any = None) -> None:
        if self.interval_by == "step" and state.global_step % self.interval == 0:
            self.validate(state)

    def on_epoch_end(self, state: LoopState) -> None:
        if self.interval_by == "epoch" and (state.epoch + 1) % self.interval == 0:
            self.validate(state)

    def on_loop_end(self, state: LoopState) -> None:
        if self.run_on_loop_end and self._validated_at != state.global_step:
            self.validate(state)
