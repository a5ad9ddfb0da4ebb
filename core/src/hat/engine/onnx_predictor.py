"""int_infer: the exported int8 ONNX model run by onnxruntime over the validation set.

This is the accuracy of the real deployable model. Post-processing (decoding heatmaps,
NMS) stays in Python, as it would on the device's host CPU; it is the task's one
``post_process`` (:mod:`hat.postprocess`), the same the torch predictors apply, here
to the ONNX outputs, which carry the names the torch model's eval outputs have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
from hat.workdir import EXPORTED_MODEL, MAIN_GRAPH, command_for, export_dir


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


class DeployedGraphs:
    """Every exported graph of a task by name: called, it runs the first (``model``) as
    :class:`OnnxModel` does; :meth:`run_graph` runs any by name (what a :class:`GraphChain`
    and a multi-graph task's inferer take)."""

    def __init__(self, models: Mapping[str, OnnxModel]) -> None:
        if MAIN_GRAPH not in models:
            raise ValueError(f"DeployedGraphs needs the first graph, {MAIN_GRAPH!r}")
        self.models = dict(models)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.models[MAIN_GRAPH](batch)

    def run_graph(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.models[graph](feeds)


def check_exported_together(infos: Mapping[str, Mapping[str, Any] | None], remedy: str) -> None:
    """The graphs of one deployment come from one export: the same stage and checkpoints.

    Exporting one graph alone (``deploy_graph``) after retraining would pair a new
    detector with an old query update, a model no stage ever evaluated.
    """
    recorded = {g: (i.get("stage"), tuple(i.get("source_checkpoint") or ())) for g, i in infos.items() if i}
    if len(set(recorded.values())) > 1:
        said = "; ".join(f"{g}: {stage} from {', '.join(paths) or '?'}" for g, (stage, paths) in recorded.items())
        raise UserError(
            f"the deploy graphs were exported from different models ({said})",
            hint=f"export them together: `{remedy}`",
        )


#: ``run_graph(graph name, feeds) -> outputs``: how a :class:`GraphChain` runs one deploy graph.
RunGraph = Callable[[str, dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


@runtime_checkable
class GraphChain(Protocol):
    """The host code of a task deployed as several graphs (a tracker between a detector and its
    query update): ``chain(run_graph, batch)`` -> the batch's outputs, calling each graph by
    name (``model`` is the first, see :mod:`hat.engine.deploy_model`) through ``run_graph``.

    A chain may keep state between batches (tracks across a sequence's frames); ``reset()``
    forgets it and is called before every pass over the data. The same chain object drives
    the ONNX graphs in int_infer and, in `hat validate`, the torch fixed-point graphs too.
    """

    def reset(self) -> None: ...

    def __call__(self, run_graph: RunGraph, batch: Mapping[str, Any]) -> Mapping[str, Any]: ...


@register_type("OnnxPredictor", lazy_args=("data_loader",))
class OnnxPredictor(LoopRunner):
    """``int_infer_predictor``: like Predictor, with the exported ONNX model as the model.

    ``inputs`` maps ONNX input names to batch keys, ``outputs`` renames ONNX outputs to
    the keys the post-process and metrics read; ``post_process(outputs, batch)`` turns
    raw network outputs into what the metrics take (the config's ``post_process``).

    A task deployed as several graphs gives ``graphs`` (further graph name -> its
    exported model, e.g. ``{qim: ${work_dir}/export/qim/model.onnx}``) and ``chain``, a
    :class:`GraphChain` that runs them per batch: its outputs go to the post-process
    in place of the one model's.
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
        graphs: Mapping[str, str] | None = None,
        chain: GraphChain | None = None,
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
        self.graphs = {str(name): Path(path) for name, path in dict(graphs or {}).items()}
        if MAIN_GRAPH in self.graphs:
            raise ValueError(f"graphs names the further graphs; {MAIN_GRAPH!r} is model_path")
        if self.graphs and chain is None:
            raise ValueError("graphs needs a chain: the host code that runs them (see GraphChain)")
        self.chain = chain
        #: What each graph's export.json recorded (None for a model outside any export), once loaded.
        self.export_infos: dict[str, dict[str, Any] | None] = {}

    def graph_paths(self) -> dict[str, Path]:
        """Every graph's exported model by graph name, the first (``model``) included."""
        return {MAIN_GRAPH: self.model_path, **self.graphs}

    def onnx_model(self, ctx: RunContext, graph: str = MAIN_GRAPH) -> OnnxModel:
        """A graph's model, once checked to be the one `hat export` recorded in the export.json beside it.

        The work dir's own ``export/[<graph>/]model.onnx`` needs its export.json; any other
        path with none beside it (a model the config points at outside any export) runs
        unchecked: there is nothing to check it against.
        """
        from hat.deploy.files import verified_export

        path = self.graph_paths()[graph]
        remedy = command_for(ctx.task, "export", ctx.work_dir, ctx.config_name or None)
        if not path.is_file():
            raise UserError(f"no exported model at {path}", hint=f"run `{remedy}` first")
        own = export_dir(ctx.work_dir, graph) / EXPORTED_MODEL
        self.export_infos[graph] = verified_export(path, remedy=remedy, required=path.resolve() == own.resolve())
        name = self.backend or compile_backend_name(ctx.config)
        if name not in ctx.compile_backends:
            raise UserError(
                f"unknown compilation backend {name!r} for int_infer",
                hint=f"installed: {', '.join(sorted(ctx.compile_backends))}",
            )
        return OnnxModel(
            path,
            inputs=self.inputs if graph == MAIN_GRAPH else None,
            outputs=self.outputs if graph == MAIN_GRAPH else None,
            opt_level=self.opt_level,
            threads=self.threads,
            backend=ctx.compile_backends[name](),
        )

    def model_for(self, ctx: RunContext) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
        """batch -> raw outputs: the one ONNX model, or the chain over every graph (reset first)."""
        if self.chain is None:
            return self.onnx_model(ctx)
        graphs = DeployedGraphs({graph: self.onnx_model(ctx, graph) for graph in self.graph_paths()})
        check_exported_together(
            self.export_infos, command_for(ctx.task, "export", ctx.work_dir, ctx.config_name or None)
        )
        chain = self.chain
        chain.reset()
        return lambda batch: chain(graphs.run_graph, batch)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        self.begin(ctx)
        model = self.model_for(ctx)
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
