"""`hat analyze`: which layers lose accuracy to quantization, and where onnxruntime parts from torch.

On the validation data that `hat validate` and int_infer use, the calibrated (or qat)
model is run with its quantizers switched layer by layer (:mod:`hat.quant.sensitivity`),
and, when the work dir has an export, the compiled onnxruntime model is compared with the
torch fixed-point model tensor by tensor (:mod:`hat.deploy.divergence`). Everything lands
in ``<work-dir>/analysis/``: ``analysis.json`` (all layers) and ``analysis.html``.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from hat import console, workdir
from hat.engine.deploy_model import build_deploy_model, deploy_inputs
from hat.engine.processors import move_to
from hat.errors import ConfigError, UserError
from hat.plugins import PluginHost, get_host
from hat.quant.sensitivity import SensitivityReport, measure_sensitivity, named_outputs, quantized_layers, quantizing
from hat.quant.target import target_name_of
from hat.usecases.deploy import (
    QUANT_STAGES,
    _backend,
    _compile_settings,
    _pipeline,
    choose_stage,
    fixed_point_model,
    float_model,
    hint_command,
    int_infer_loader,
    verify_exported,
)
from hat.usecases.stages import StageConfig, seed_everything

DEFAULT_BATCHES = 8
RANKING = {
    "sqnr": "only_quantized.output_sqnr_db, ascending: the model outputs' SQNR against float with only this "
    "layer quantized (ties: only_float.output_sqnr_db, descending)",
    "metric": "only_quantized.metric_loss, descending: how much worse than float the task metric is with only "
    "this layer quantized (ties: the metric recovered by keeping only this layer float)",
}


@dataclass
class Sensitivity:
    """What :func:`sensitivity` measured, with what it measured on (the first batch feeds the divergence check)."""

    stage: str
    report: SensitivityReport
    metric: MetricScorer | None
    float_reference_gap: float
    first_inputs: dict[str, torch.Tensor]


def sensitivity(
    stage_cfg: StageConfig,
    *,
    stage: str | None = None,
    batches: int = DEFAULT_BATCHES,
    by_metric: bool = False,
    host: PluginHost | None = None,
) -> Sensitivity:
    """Every quantized layer's SQNR and sensitivity on the validation data; ``report.ranked()`` is most sensitive first.

    The data part of `hat analyze`, for callers that choose layers (e.g. which to keep at
    higher precision); it writes nothing.
    """
    host = host or get_host()
    stage = _stage(stage_cfg, stage)
    if batches < 1:
        raise UserError(f"--batches must be at least 1, got {batches}")
    predictor = _int_infer_predictor(stage_cfg, host)
    model = fake_quant_model(stage_cfg, stage, host)
    samples = _samples(stage_cfg, predictor, host, batches)
    gap = _float_reference_gap(float_model(stage_cfg, host), model, samples[0][0], stage)
    scorer = MetricScorer(predictor) if by_metric else None
    layers = len(quantized_layers(model))
    console.info(
        f"analyzing {layers} quantized layers of the {stage} model on {len(samples)} batch(es): "
        f"{2 + 2 * layers} forwards per batch" + (", each through the task metric" if by_metric else "")
    )
    with console.progress() as bar:
        task = bar.add_task("analyze", total=len(samples) * (1 + layers))  # one step per layer per batch
        report = measure_sensitivity(model, samples, scorer=scorer, progress=lambda: bar.advance(task))
    return Sensitivity(stage, report, scorer, gap, dict(samples[0][0]))


def analyze(
    stage_cfg: StageConfig,
    *,
    stage: str | None = None,
    batches: int = DEFAULT_BATCHES,
    by_metric: bool = False,
    opt: int | None = None,
    host: PluginHost | None = None,
) -> dict[str, Any]:
    """Measure every quantized layer, find the first torch/onnxruntime divergence, write the reports.

    Returns what analysis.json holds (infinite SQNRs as the string ``"inf"``).
    """
    from hat.deploy.files import atomic_write_text
    from hat.quant.sensitivity_html import render_analysis_html

    host = host or get_host()
    measured = sensitivity(stage_cfg, stage=stage, batches=batches, by_metric=by_metric, host=host)
    report = measured.report
    record = {
        "task": stage_cfg.task,
        "config": stage_cfg.config.name,
        "stage": measured.stage,
        "deploy_target": target_name_of(stage_cfg.config),
        "batches": report.batches,
        "samples": report.samples,
        "ranking": RANKING["metric" if by_metric else "sqnr"],
        "model": _model_record(report, measured.metric, measured.float_reference_gap),
        "layers": layer_records(report),
        "divergence": divergence(stage_cfg, measured.first_inputs, opt=opt, host=host),
    }
    out = workdir.analysis_dir(stage_cfg.work_dir)
    atomic_write_text(out / workdir.ANALYSIS_JSON, json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / workdir.ANALYSIS_HTML, render_analysis_html(record))
    record["files"] = {"json": str(out / workdir.ANALYSIS_JSON), "html": str(out / workdir.ANALYSIS_HTML)}
    return record


def _stage(stage_cfg: StageConfig, stage: str | None) -> str:
    if stage is not None and stage not in QUANT_STAGES:
        raise UserError(f"cannot analyze stage {stage!r}", hint="choose --stage calibration or --stage qat")
    has_any = any(workdir.checkpoint_path(stage_cfg.work_dir, s, workdir.BEST).is_file() for s in QUANT_STAGES)
    if stage is None and not has_any:
        raise UserError(
            f"nothing to analyze: no calibration or qat checkpoint in {stage_cfg.work_dir}",
            hint=f"run `{hint_command(stage_cfg, 'train --stage calibration')}` first",
        )
    return choose_stage(stage_cfg, stage)


def fake_quant_model(stage_cfg: StageConfig, stage: str, host: PluginHost | None = None) -> torch.nn.Module:
    """The deploy model of ``stage`` (calibration or qat) as fake-quant, not frozen: its quantizers can be switched."""
    host = host or get_host()
    seed_everything(int(stage_cfg.config.get("seed", 0)))
    pipeline, _ = _pipeline(stage_cfg, stage, host)
    model, _ = build_deploy_model(stage_cfg.config, host.registry)
    return pipeline(
        model,
        task=stage_cfg.task,
        stage=stage,
        deploy_target=target_name_of(stage_cfg.config),
        quant_backends=host.quant_backends.items,
        precision=stage_cfg.config.get("precision"),
    ).eval()


def _int_infer_predictor(stage_cfg: StageConfig, host: PluginHost) -> Any:
    from hat.engine.onnx_predictor import OnnxPredictor

    cfg = stage_cfg.config
    if "int_infer_predictor" not in cfg:
        raise ConfigError(f"config {cfg.name} has no int_infer_predictor (its data, metrics and post-process)")
    predictor = host.registry.build(cfg["int_infer_predictor"], path="int_infer_predictor", locate=cfg.locate)
    if not isinstance(predictor, OnnxPredictor):
        raise ConfigError("int_infer_predictor must be an OnnxPredictor", where=cfg.locate("int_infer_predictor"))
    return predictor


def _samples(stage_cfg: StageConfig, predictor: Any, host: PluginHost, batches: int) -> list[tuple[dict, Any]]:
    """The first ``batches`` validation batches, as (deploy model inputs, batch)."""
    names = list(deploy_inputs(stage_cfg.config))
    keys = {name: dict(predictor.inputs or {}).get(name, name) for name in names}
    samples = []
    cpu = torch.device("cpu")
    for batch in islice(int_infer_loader(stage_cfg, predictor, host), batches):
        missing = [key for key in keys.values() if key not in batch]
        if missing:
            raise UserError(
                f"the deploy model's inputs need batch key(s) {', '.join(map(repr, missing))}, "
                "which the validation loader lacks",
                where=stage_cfg.config.locate("int_infer_predictor") or "int_infer_predictor",
                hint="map them in int_infer_predictor.inputs: {deploy_input: batch_key}",
            )
        samples.append(({name: move_to(batch[key], cpu).float() for name, key in keys.items()}, batch))
    if not samples:
        raise UserError("the validation loader yields no batch", where="int_infer_predictor.data_loader")
    return samples


def _float_reference_gap(reference: torch.nn.Module, model: torch.nn.Module, inputs: Mapping, stage: str) -> float:
    """Largest difference between the float model's outputs and the quantized model's with every quantizer off.

    The analysis uses the latter as float (see :mod:`hat.quant.sensitivity`), relative to
    the outputs' largest magnitude. For a calibrated model it is the float checkpoint
    with BN folded (only float rounding differs); QAT trains the weights on, so a qat
    model's float reference is its own weights, and the gap says how far QAT moved them.
    """
    layers = quantized_layers(model)
    with torch.no_grad(), quantizing(layers, lambda _layer: False):
        off = named_outputs(model(dict(inputs)))
        expected = named_outputs(reference(dict(inputs)))
    gap = 0.0
    for name, value in expected.items():
        scale = float(value.abs().max()) or 1.0
        gap = max(gap, float((off[name] - value).abs().max()) / scale)
    if stage == "qat":
        console.info(
            f"SQNRs are against the qat weights in float (QAT moved the outputs by up to {gap:.2%} of their "
            "range from the float checkpoint's)"
        )
    elif gap > 1e-3:
        console.warn(
            f"with every quantizer off, the calibrated model differs from the float model by {gap:.2%} of its "
            "outputs' range: the float reference of this analysis is not exactly the float model"
        )
    return gap


class MetricScorer:
    """The int_infer predictor's post-process and first metric, one private copy per run."""

    def __init__(self, predictor: Any) -> None:
        if not predictor.val_metrics:
            raise ConfigError("--metric needs int_infer_predictor.metrics; the config has none")
        self.metric = predictor.val_metrics[0]
        self.post_process = predictor.post_process
        self.rename = dict(predictor.outputs or {})
        self.name = self.metric.name
        self.higher_is_better = bool(self.metric.higher_is_better)

    def start(self) -> tuple[Any, Any]:
        from hat.postprocess import reset_post_process

        post_process, metric = copy.deepcopy(self.post_process), copy.deepcopy(self.metric)
        reset_post_process(post_process)
        metric.reset()
        return post_process, metric

    def update(self, accumulator: tuple[Any, Any], outputs: dict[str, torch.Tensor], batch: Any) -> None:
        from hat.postprocess import apply_post_process

        post_process, metric = accumulator
        renamed = {self.rename.get(k, k): v for k, v in outputs.items()}
        metric.update(batch, apply_post_process(post_process, renamed, batch))

    def value(self, accumulator: tuple[Any, Any]) -> float:
        values = accumulator[1].compute()
        return float(values.get(self.name, next(iter(values.values()), math.nan)))


def json_number(value: float | None) -> float | str | None:
    """A float for JSON: ``"inf"`` / ``"-inf"`` for the SQNR of identical tensors (or noise on zeros); NaN: None."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def layer_records(report: SensitivityReport) -> list[dict[str, Any]]:
    """Every layer, most sensitive first (:meth:`SensitivityReport.ranked`), as analysis.json lists them."""
    records = []
    for rank, layer in enumerate(report.ranked(), start=1):
        records.append(
            {
                "rank": rank,
                "name": layer.name,
                "kind": layer.kind,
                "order": layer.order,
                "sqnr_db": json_number(layer.sqnr_db),
                "only_quantized": _run_record(report, layer.only_quantized_sqnr_db, layer.only_quantized_metric),
                "only_float": _run_record(report, layer.only_float_sqnr_db, layer.only_float_metric),
            }
        )
    return records


def _run_record(report: SensitivityReport, sqnr: float, metric: float | None) -> dict[str, Any]:
    record: dict[str, Any] = {"output_sqnr_db": json_number(sqnr)}
    if report.by_metric:
        record["metric"] = json_number(metric)
        record["metric_loss"] = json_number(report.metric_loss(metric))
    return record


def _model_record(report: SensitivityReport, scorer: MetricScorer | None, reference_gap: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "output_sqnr_db": json_number(report.output_sqnr_db),
        "outputs_sqnr_db": {name: json_number(value) for name, value in report.outputs.items()},
        "float_reference_gap": reference_gap,
    }
    if scorer is not None:
        record["metric"] = {
            "name": scorer.name,
            "higher_is_better": scorer.higher_is_better,
            "float": json_number(report.float_metric),
            "quantized": json_number(report.quantized_metric),
        }
    return record


def divergence(
    stage_cfg: StageConfig,
    inputs: Mapping[str, torch.Tensor],
    *,
    opt: int | None = None,
    host: PluginHost | None = None,
) -> dict[str, Any]:
    """The exported model compiled at ``opt`` vs the torch fixed-point model, tensor by tensor, on ``inputs``.

    Without an export: ``{"skipped": why, "command": the export command}``.
    """
    import onnx

    from hat.deploy.divergence import (
        DivergenceReport,
        ForcedActivations,
        TorchActivations,
        activations_of,
        channels_last_tensors,
        compare_sample,
        optimized_tensors,
    )
    from hat.deploy.tensor_probe import run_exposed

    host = host or get_host()
    out = workdir.export_dir(stage_cfg.work_dir)
    model_path = out / workdir.EXPORTED_MODEL
    if not model_path.is_file() or not (out / workdir.EXPORT_INFO).is_file():
        command = hint_command(stage_cfg, "export")
        console.warn(f"no exported model in {out}: skipping the torch vs onnxruntime comparison (run `{command}`)")
        return {"skipped": f"no exported model in {out}", "command": command}
    meta = verify_exported(stage_cfg, model_path)
    settings = _compile_settings(stage_cfg, opt=opt)
    level = int(settings["opt"])
    backend = _backend(settings["backend"], host)
    fixed, _, _ = fixed_point_model(stage_cfg, meta["stage"], host)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = backend.compile(model_path, level, Path(tmp) / workdir.compiled_model_name(level))
        optimized = onnx.load(str(compiled))
    candidates = optimized_tensors(onnx.load(str(model_path)), optimized)
    activations = activations_of(meta)
    channels_last = channels_last_tensors(optimized.graph)
    report = DivergenceReport(compared=[])
    local = DivergenceReport(compared=[])
    size = int(next(iter(inputs.values())).shape[0])
    for i in range(size):
        sample = {name: value[i : i + 1] for name, value in inputs.items()}
        ort_values = run_exposed(optimized, {name: value.numpy() for name, value in sample.items()})
        for make_capture, into in (  # one after the other: the hooks of both must not be on at once
            (lambda: TorchActivations(fixed), report),
            (lambda: ForcedActivations(fixed, activations, candidates, ort_values, channels_last), local),  # noqa: B023
        ):
            capture = make_capture()
            try:
                with torch.no_grad():
                    fixed(dict(sample))
            finally:
                capture.close()
            compare_sample(activations, candidates, ort_values, capture.values, into, channels_last)
    local_record = local.to_dict()
    del local_record["not_compared"], local_record["samples"]  # the same as the free-running comparison's
    return {"stage": meta["stage"], "opt": level, **report.to_dict(), "local": local_record}
