"""Predict: a stage's model over a data loader, its metrics, and ``predict/<stage>.json``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from rich.table import Table

from hat import console, distributed
from hat.engine.context import RunContext
from hat.engine.converters import ModelConvertPipeline
from hat.engine.runner import LoopRunner, evaluate
from hat.metrics import Metric
from hat.postprocess import PostProcessFn, PredictionWriter
from hat.registry import register_type
from hat.workdir import prediction_path


@register_type("Predictor", lazy_args=("data_loader",))
class Predictor(LoopRunner):
    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Mapping[str, Any],
        metrics: Sequence[Metric],
        model_convert_pipeline: ModelConvertPipeline | None = None,
        batch_processor: Any = None,
        callbacks: Sequence[Any] = (),
        device: str | None = None,
        log_interval: int | None = None,
        post_process: PostProcessFn | None = None,
        prediction_writer: PredictionWriter | None = None,
    ) -> None:
        """``prediction_writer(predictions, batch, out_dir)`` also writes every batch's
        predictions in the task's own format under ``<work-dir>/predict/<stage>/``."""
        super().__init__(model, model_convert_pipeline, callbacks, metrics, device, post_process)
        self.data_loader_cfg = data_loader
        self.batch_processor = batch_processor
        self.prediction_writer = prediction_writer

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Evaluate; writes ``<work-dir>/predict/<stage>.json`` and prints a table."""
        self.begin(ctx)
        model = self.convert_model(ctx)
        loader = self.build_data_loader(ctx, train=False)
        with self.progress(f"predict {ctx.stage}", len(loader)):
            metrics, samples = evaluate(
                model,
                loader,
                self.val_metrics,
                self.device(),
                batch_processor=self.batch_processor,
                on_batch=self.advance,
                post_process=self.post_process,
                on_predictions=prediction_hook(self.prediction_writer, ctx),
            )
        result = write_prediction(ctx, metrics, samples)
        self.log.write({"event": "predict", "samples": samples, **metrics})
        return result


def prediction_hook(writer: PredictionWriter | None, ctx: RunContext) -> Callable[[Any, Any], None] | None:
    """``writer`` bound to ``<work-dir>/predict/<stage>/`` (emptied first, so files of an
    earlier run never mix with this one's), or None without a writer."""
    if writer is None:
        return None
    out_dir = prediction_path(ctx.work_dir, ctx.stage).with_suffix("")
    if distributed.is_main() and out_dir.exists():
        shutil.rmtree(out_dir)
    distributed.barrier()
    return lambda predictions, batch: writer(predictions, batch, out_dir)


def write_prediction(ctx: RunContext, metrics: dict[str, float], samples: int) -> dict[str, Any]:
    """The predict JSON (rank 0) and a table on stdout; shared with int_infer."""
    result = {
        "stage": ctx.stage,
        "config": ctx.config_name or ctx.task,
        "metrics": metrics,
        "num_samples": samples,
    }
    if distributed.is_main():
        out = prediction_path(ctx.work_dir, ctx.stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        table = Table(title=f"{ctx.task} · {ctx.stage} · {samples} samples", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in metrics.items():
            table.add_row(name, f"{value:.4f}")
        console.out.print(table)
    return result
