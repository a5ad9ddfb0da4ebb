"""Calibration: run batches through the model without gradients so observers see the data.

The quantization converter (``Float2Calibration``) installs the observers; this loop
only feeds them ``num_steps`` batches, then validates and checkpoints through its
callbacks like a one-epoch training run, so calibration results land in the same
``calibration-checkpoint-*`` files and logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hat.engine.callbacks.base import Callback
from hat.engine.context import RunContext
from hat.engine.converters import ModelConvertPipeline
from hat.engine.loader import set_loader_epoch
from hat.engine.processors import MultiBatchProcessor
from hat.engine.runner import LoopRunner
from hat.engine.state import LoopState
from hat.metrics import Metric
from hat.postprocess import PostProcessFn
from hat.registry import register_type


@register_type("Calibrator", lazy_args=("data_loader",))
class Calibrator(LoopRunner):
    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Mapping[str, Any],
        num_steps: int,
        batch_processor: MultiBatchProcessor | None = None,
        model_convert_pipeline: ModelConvertPipeline | None = None,
        callbacks: Sequence[Callback] = (),
        val_metrics: Sequence[Metric] = (),
        device: str | None = None,
        log_interval: int | float | None = None,
        post_process: PostProcessFn | None = None,
    ) -> None:
        super().__init__(model, model_convert_pipeline, callbacks, val_metrics, device, post_process)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.data_loader_cfg = data_loader
        self.num_steps = int(num_steps)
        self.batch_processor = batch_processor or MultiBatchProcessor(need_grad_update=False)
        self.log_interval = log_interval

    def fit(self, ctx: RunContext) -> LoopState:
        self.begin(ctx)
        model = self.convert_model(ctx)
        loader = self.build_data_loader(ctx, train=True)
        state = LoopState(
            stage=ctx.stage,
            work_dir=ctx.work_dir,
            model=model,
            num_epochs=1,
            num_steps=self.num_steps,
            steps_per_epoch=self.num_steps,
            config=ctx.config,
            runner=self,
        )
        device = self.device()
        from hat.quant.modes import calibration_mode

        with self.progress(f"{ctx.stage}", self.num_steps):
            self.emit("on_loop_begin", state)
            self.emit("on_epoch_begin", state)
            model.eval()
            epoch = 0
            with torch.no_grad(), calibration_mode(model):
                while state.global_step < self.num_steps:
                    set_loader_epoch(loader, epoch)
                    for batch in loader:
                        self.emit("on_step_begin", state)
                        outputs, _ = self.batch_processor(model, batch, device, step=state.global_step)
                        state.global_step += 1
                        state.step_in_epoch += 1
                        self.advance()
                        self.emit("on_step_end", state, batch=batch, outputs=outputs)
                        if state.global_step >= self.num_steps:
                            break
                    epoch += 1
            self.log.write({"event": "calibrated", "steps": state.global_step})
            self.emit("on_epoch_end", state)
            self.emit("on_loop_end", state)
        return state
