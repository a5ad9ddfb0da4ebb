"""What the trainer, calibrator and predictor share: model preparation, callbacks, progress.

Each of them takes its model from the config, runs it through the stage's convert
pipeline, moves it to the device, and drives callbacks over a loop with a progress
bar. That common part lives here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch

from hat import console, distributed
from hat.engine.callbacks.base import Callback
from hat.engine.context import RunContext
from hat.engine.converters import ModelConvertPipeline
from hat.engine.runlog import RunLog
from hat.engine.state import LoopState
from hat.metrics import Metric
from hat.postprocess import PostProcessFn, apply_post_process, check_post_process, reset_post_process


class LoopRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        model_convert_pipeline: ModelConvertPipeline | None = None,
        callbacks: Sequence[Callback] = (),
        val_metrics: Sequence[Metric] = (),
        device: str | None = None,
        post_process: PostProcessFn | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.model_convert_pipeline = model_convert_pipeline
        self.callbacks = list(callbacks)
        self.val_metrics = list(val_metrics)
        self.device_name = device
        #: The task's ``post_process(outputs, batch)`` (see hat.postprocess): what the metrics read.
        self.post_process = post_process
        self.log: RunLog | None = None
        self._progress = None
        self._task_id = None

    # -- run setup --------------------------------------------------------------------------
    def begin(self, ctx: RunContext) -> None:
        """Remember the run's context and open its log (every runner starts this way).

        A post-process that must agree with the model (strides, box coding) checks it here,
        before any work is done.
        """
        self.context = ctx
        self.log = RunLog(ctx.log_path())
        check_post_process(self.post_process, self.model)

    def build_data_loader(self, ctx: RunContext, *, train: bool) -> torch.utils.data.DataLoader:
        """This runner's ``data_loader`` config, built for the run (see hat.engine.loader)."""
        from hat.engine.loader import build_loader

        return build_loader(
            self.data_loader_cfg,
            ctx.registry,
            seed=ctx.seed,
            train=train,
            path=f"{ctx.path}.data_loader",
            locate=ctx.locate,
        )

    # -- model ----------------------------------------------------------------------------
    def device(self) -> torch.device:
        return torch.device(self.device_name) if self.device_name else distributed.device()

    def convert_model(self, ctx: RunContext) -> torch.nn.Module:
        model = self.model
        if self.model_convert_pipeline is not None:
            model = self.model_convert_pipeline(
                model,
                task=ctx.task,
                stage=ctx.stage,
                deploy_target=ctx.config.get("deploy_target"),
                quant_backends=ctx.quant_backends,
                precision=ctx.config.get("precision"),
            )
        return model.to(self.device())

    # -- callbacks --------------------------------------------------------------------------
    def emit(self, hook: str, state: LoopState, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(state, **kwargs)

    # -- progress ---------------------------------------------------------------------------
    @contextmanager
    def progress(self, description: str, total: int | None):
        """A progress bar on rank 0 (none on other ranks or under --quiet)."""
        if not distributed.is_main() or console.is_quiet():
            yield
            return
        with console.progress() as bar:
            self._progress = bar
            self._task_id = bar.add_task(description, total=total)
            try:
                yield
            finally:
                self._progress = None
                self._task_id = None

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, advance=steps, **({"description": description} if description else {}))

    def set_progress(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, completed=completed)

    def print(self, message: str) -> None:
        """A line above the progress bar (rank 0 only)."""
        if not distributed.is_main() or console.is_quiet():
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            console.err.print(message, markup=False, highlight=False)


def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    metrics: Sequence[Metric],
    device: torch.device,
    *,
    batch_processor: Any = None,
    max_batches: int | None = None,
    on_batch: Any = None,
    post_process: PostProcessFn | None = None,
    on_predictions: Any = None,
) -> tuple[dict[str, float], int]:
    """Run ``model`` in eval mode over ``loader``; returns (metrics over all ranks, samples).

    The model's raw outputs go through ``post_process(outputs, batch)`` (reset once,
    before the first batch) and the metrics read its predictions: the same decoding the
    ONNX predictor and the inferer use. ``on_batch()`` is called after each batch
    (progress), ``on_predictions(predictions, batch)`` after the metrics saw them (a
    predictor's prediction writer). The model's train/eval mode is restored afterwards,
    because validation happens in the middle of training.
    """
    from hat.engine.processors import move_to

    was_training = model.training
    model.eval()
    for metric in metrics:
        metric.reset()
    reset_post_process(post_process)
    samples = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = move_to(batch, device)
                if batch_processor is not None:
                    outputs, _ = batch_processor(model, batch, device)
                else:
                    outputs = model(batch)
                outputs = apply_post_process(post_process, outputs, batch)
                for metric in metrics:
                    metric.update(batch, outputs)
                if on_predictions is not None:
                    on_predictions(outputs, batch)
                samples += batch_size_of(batch)
                if on_batch is not None:
                    on_batch()
    finally:
        model.train(was_training)
    results: dict[str, float] = {}
    for metric in metrics:
        results.update(metric.compute())
    total = int(distributed.all_reduce_sum(torch.tensor(samples)).item())
    return results, total


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        for value in batch.values():
            size = batch_size_of(value)
            if size:
                return size
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size_of(batch[0])
    return 0
