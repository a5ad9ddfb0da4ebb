"""int_infer: the exported int8 ONNX model run by onnxruntime over the validation set.

This is the accuracy of the real deployable model. Post-processing (decoding heatmaps,
NMS) stays in Python, as it would on the device's host CPU; it is the task's one
``post_process`` (:mod:`hat.postprocess`), the same the torch predictors apply, here
to the ONNX outputs, which carry the names the torch model's eval outputs have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat.deploy.compile_backend import compile_backend_name
from hat.engine.context import RunContext
from hat.engine.predictor import prediction_hook, write_prediction
from hat.engine.runner import LoopRunner, batch_size_of
from hat.errors import UserError
from hat.metrics import Metric
from hat.postprocess import PostProcessFn, PredictionWriter, apply_post_process, reset_post_process
from hat.registry import register_type
from hat.workdir import EXPORTED_MODEL, command_for, export_dir


class OnnxModel:
    """An ONNX model with torch-in, torch-out calls, run one sample at a time.

    Exported graphs have the deploy shape (batch 1), so a batch is split along its
    first dimension and the outputs are stacked back.
    """

    def __init__(
        self,
        path: Path,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        opt_level: int = 3,
        threads: int = 1,
        backend: Any = None,
    ) -> None:
        from hat.deploy.ort_backend import OnnxRuntimeBackend

        self.backend = backend or OnnxRuntimeBackend()
        self.session = self.backend.session(path, threads=threads, opt_level=opt_level)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_map = dict(inputs or {name: name for name in self.input_names})
        self.output_map = dict(outputs or {})

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        feeds = {}
        for onnx_name in self.input_names:
            key = self.input_map.get(onnx_name, onnx_name)
            if key not in batch:
                raise UserError(
                    f"the ONNX model's input {onnx_name!r} needs batch key {key!r}, which the data loader lacks",
                    hint="map it in int_infer_predictor.inputs: {onnx_input: batch_key}",
                )
            feeds[onnx_name] = torch.as_tensor(batch[key]).detach().cpu().float().numpy()
        size = next(iter(feeds.values())).shape[0]
        per_sample = [self.backend.run(self.session, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(size)]
        return {
            self.output_map.get(name, name): torch.from_numpy(np.concatenate([o[name] for o in per_sample], axis=0))
            for name in per_sample[0]
        }


@register_type("OnnxPredictor", lazy_args=("data_loader",))
class OnnxPredictor(LoopRunner):
    """``int_infer_predictor``: like Predictor, with the exported ONNX model as the model.

    ``inputs`` maps ONNX input names to batch keys, ``outputs`` renames ONNX outputs to
    the keys the post-process and metrics read; ``post_process(outputs, batch)`` turns
    raw network outputs into what the metrics take (the config's ``post_process``).
    """

    def __init__(
        self,
        model_path: str,
        data_loader: Mapping[str, Any],
        metrics: Sequence[Metric],
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        post_process: PostProcessFn | None = None,
        opt_level: int = 3,
        threads: int = 1,
        backend: str | None = None,
        prediction_writer: PredictionWriter | None = None,
    ) -> None:
        """``backend``: the compilation backend that runs the model; by default the one the
        config's ``compile.backend`` names, so int_infer measures what `hat compile` compiles.
        ``prediction_writer``: as the torch Predictor's."""
        super().__init__(torch.nn.Identity(), None, (), metrics, "cpu", post_process)
        self.backend = backend
        self.prediction_writer = prediction_writer
        self.model_path = Path(model_path)
        self.data_loader_cfg = data_loader
        self.inputs = inputs
        self.outputs = outputs
        self.opt_level = opt_level
        self.threads = threads

    def onnx_model(self, ctx: RunContext) -> OnnxModel:
        """The model, once checked to be the one `hat export` recorded in the export.json beside it.

        The work dir's own ``export/model.onnx`` needs its export.json; any other
        ``model_path`` with none beside it (a model the config points at outside any
        export) runs unchecked: there is nothing to check it against.
        """
        from hat.deploy.files import verified_export

        remedy = command_for(ctx.task, "export", ctx.work_dir, ctx.config_name or None)
        if not self.model_path.is_file():
            raise UserError(f"no exported model at {self.model_path}", hint=f"run `{remedy}` first")
        own = export_dir(ctx.work_dir) / EXPORTED_MODEL
        verified_export(self.model_path, remedy=remedy, required=self.model_path.resolve() == own.resolve())
        name = self.backend or compile_backend_name(ctx.config)
        if name not in ctx.compile_backends:
            raise UserError(
                f"unknown compilation backend {name!r} for int_infer",
                hint=f"installed: {', '.join(sorted(ctx.compile_backends))}",
            )
        return OnnxModel(
            self.model_path,
            inputs=self.inputs,
            outputs=self.outputs,
            opt_level=self.opt_level,
            threads=self.threads,
            backend=ctx.compile_backends[name](),
        )

    def run(self, ctx: RunContext) -> dict[str, Any]:
        self.begin(ctx)
        model = self.onnx_model(ctx)
        loader = self.build_data_loader(ctx, train=False)
        for metric in self.val_metrics:
            metric.reset()
        reset_post_process(self.post_process)
        write = prediction_hook(self.prediction_writer, ctx)
        samples = 0
        with self.progress(f"predict {ctx.stage} (onnxruntime)", len(loader)):
            for batch in loader:
                outputs = apply_post_process(self.post_process, model(batch), batch)
                for metric in self.val_metrics:
                    metric.update(batch, outputs)
                if write is not None:
                    write(outputs, batch)
                samples += batch_size_of(batch)
                self.advance()
        metrics: dict[str, float] = {}
        for metric in self.val_metrics:
            metrics.update(metric.compute())
        result = write_prediction(ctx, metrics, samples)
        self.log.write({"event": "predict", "samples": samples, **metrics})
        return result
