"""`hat export`, `hat compile`, `hat check` and `hat validate`, as library calls.

The deployable model is the config's ``deploy_model`` (the network without loss or
post-processing) taken through the chosen stage's ``<stage>_predictor`` convert
pipeline (which loads that stage's checkpoint), then frozen to fixed point. Everything
lands in the work directory: ``export/`` (model.onnx, model.float.onnx, export.json)
and ``compile/`` (model.opt<N>.onnx, perf.json, perf.html).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hat import console, workdir
from hat.engine.converters import ConvertContext, ModelConvertPipeline
from hat.engine.deploy_model import build_deploy_model, graph_config, graph_names, graph_of
from hat.engine.runner import batch_size_of
from hat.errors import ConfigError, UserError
from hat.plugins import PluginHost, get_host
from hat.quant.precision import CONFIG_KEY as PRECISION_KEY
from hat.quant.target import DeployTarget, get_target, target_name_of
from hat.usecases.stages import StageConfig, check_prerequisites, remember_config, seed_everything

if TYPE_CHECKING:
    from hat.deploy.analysis import AnalysisResult
    from hat.deploy.int8_kernels import Int8Kernels

QUANT_STAGES = ("qat", "calibration")


@dataclass
class Exported:
    stage: str
    onnx_path: Path
    float_path: Path
    info: dict[str, Any]


def export_dir(stage_cfg: StageConfig) -> Path:
    """``export/``, or ``export/<graph>/`` when the config stands for a further deploy graph."""
    return workdir.export_dir(stage_cfg.work_dir, graph_of(stage_cfg.config))


def graph_stage_configs(stage_cfg: StageConfig) -> list[StageConfig]:
    """One stage config per deploy graph the command handles (see :mod:`hat.engine.deploy_model`)."""
    return [
        dataclasses.replace(stage_cfg, config=graph_config(stage_cfg.config, graph))
        for graph in graph_names(stage_cfg.config)
    ]


def graph_label(stage_cfg: StageConfig) -> str:
    """`` (graph qim)`` for a task's further deploy graph, nothing for its first: what messages append."""
    graph = graph_of(stage_cfg.config)
    return "" if graph == workdir.MAIN_GRAPH else f" (graph {graph})"


def hint_command(stage_cfg: StageConfig, command: str) -> str:
    """``hat <command> TASK ... [--work-dir W]`` for this work dir (see :func:`hat.workdir.command_for`)."""
    return workdir.command_for(stage_cfg.task, command, stage_cfg.work_dir, stage_cfg.config.name)


def choose_stage(stage_cfg: StageConfig, stage: str | None) -> str:
    """``stage`` if given, else the newer of the qat and calibration best checkpoints."""
    if stage is not None:
        if stage not in QUANT_STAGES:
            raise UserError(f"cannot export stage {stage!r}", hint="export --stage calibration or --stage qat")
        return stage
    found = [
        (path.stat().st_mtime_ns, name)
        for name in QUANT_STAGES
        if (path := workdir.checkpoint_path(stage_cfg.work_dir, name, workdir.BEST)).is_file()
        and f"{name}_predictor" in stage_cfg.config
    ]
    if not found:
        raise UserError(
            f"nothing to export: the model was never calibrated (no calibration or qat checkpoint in "
            f"{stage_cfg.work_dir})",
            hint=f"run `{hint_command(stage_cfg, 'train --stage calibration')}` first",
        )
    return max(found)[1]


def _pipeline(stage_cfg: StageConfig, stage: str, host: PluginHost) -> tuple[ModelConvertPipeline, str]:
    key = f"{stage}_predictor"
    cfg = stage_cfg.config
    if key not in cfg or "model_convert_pipeline" not in cfg[key]:
        raise ConfigError(
            f"config {cfg.name} has no {key}.model_convert_pipeline, which says how the {stage} model is built",
            where=str(cfg.path),
        )
    check_prerequisites(stage_cfg, key)
    path = f"{key}.model_convert_pipeline"
    return host.registry.build(cfg[key]["model_convert_pipeline"], path=path, locate=cfg.locate), key


def fixed_point_model(
    stage_cfg: StageConfig, stage: str, host: PluginHost | None = None
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[Path]]:
    """The deploy model of ``stage`` in fixed point, its example inputs, and its checkpoints."""
    host = host or get_host()
    seed_everything(int(stage_cfg.config.get("seed", 0)))
    pipeline, _ = _pipeline(stage_cfg, stage, host)  # checks the checkpoints' precision rules before loading
    model, inputs = build_deploy_model(stage_cfg.config, host.registry)
    backends = host.quant_backends.items
    model = pipeline(
        model,
        task=stage_cfg.task,
        stage=stage,
        deploy_target=target_name_of(stage_cfg.config),
        quant_backends=backends,
        precision=stage_cfg.config.get(PRECISION_KEY),
    ).eval()
    with torch.no_grad():
        model(inputs)  # records each layer's input grid, which freezing puts the biases on
    from hat.quant.converters import QAT2Quantize

    context = ConvertContext(
        task=stage_cfg.task, stage=stage, quant_backend=pipeline.quant_backend, quant_backends=backends
    )
    fixed = QAT2Quantize()(model, context)
    return fixed, inputs, pipeline.checkpoint_paths()


def float_model(stage_cfg: StageConfig, host: PluginHost | None = None) -> torch.nn.Module:
    """The float deploy model with the float stage's weights (for model.float.onnx)."""
    host = host or get_host()
    pipeline, _ = _pipeline(stage_cfg, "float", host)
    model, _ = build_deploy_model(stage_cfg.config, host.registry)
    return pipeline(model, task=stage_cfg.task, stage="float", quant_backends=host.quant_backends.items).eval()


def export(stage_cfg: StageConfig, stage: str | None = None, host: PluginHost | None = None) -> Exported:
    """Write export/model.onnx (int8 QDQ), model.float.onnx and export.json (with both files' hashes)."""
    from hat.deploy.files import RECORDED_FILES, file_record
    from hat.deploy.onnx_export import export_float_onnx, export_onnx

    host = host or get_host()
    stage = choose_stage(stage_cfg, stage)
    settings = dict(stage_cfg.config.get("export") or {})
    opset = int(settings.get("opset", 17))
    target = get_target(target_name_of(stage_cfg.config))
    fixed, inputs, checkpoints = fixed_point_model(stage_cfg, stage, host)
    _check_trained_target(checkpoints, target.name, stage_cfg)
    graph = graph_of(stage_cfg.config)
    if graph == workdir.MAIN_GRAPH:  # a further graph's export is part of the same run
        remember_config(stage_cfg, f"hat export {stage_cfg.task} --stage {stage}")
    out = export_dir(stage_cfg)
    info = export_onnx(fixed, inputs, out / workdir.EXPORTED_MODEL, opset=opset, target=target)
    float_info = export_float_onnx(float_model(stage_cfg, host), inputs, out / workdir.FLOAT_MODEL, opset=opset)
    extra = {
        "stage": stage,
        "config": stage_cfg.config.name,
        "graph": graph,
        # every module not at int8 and why (precision rules, or no int8 form): what check lists
        "modules_not_int8": _modules_not_int8(fixed),
        "source_checkpoint": [str(p) for p in checkpoints],
        "float_model": str(float_info.path),
        # what every later reader checks the models against (hat.deploy.files.verified_export)
        RECORDED_FILES: {path.name: file_record(path) for path in (info.path, float_info.path)},
    }
    info.write_json(out / workdir.EXPORT_INFO, **extra)
    for warning in info.warnings:
        console.warn(warning)
    return Exported(stage, info.path, float_info.path, {**info.to_dict(), **extra})


def _modules_not_int8(model: torch.nn.Module) -> list[dict[str, str]]:
    from hat.quant.prepare import conversion_report

    report = conversion_report(model)
    return report.not_int8() if report is not None else []


def _check_trained_target(checkpoints: list[Path], target: str, stage_cfg: StageConfig) -> None:
    """The checkpoint being exported was calibrated / trained for the target it is exported for.

    Weight ranges are part of what calibration and QAT optimise; exporting a model for
    another target would deploy weights it was never evaluated with.
    """
    from hat.engine.checkpoint_io import load_checkpoint

    for path in checkpoints:
        payload = load_checkpoint(path)
        if payload.get("stage") not in QUANT_STAGES or not isinstance(payload.get("config"), dict):
            continue
        trained = target_name_of(payload["config"])
        if trained != target:
            retrain = hint_command(stage_cfg, f"train --stage {payload['stage']} --set deploy_target={target}")
            raise UserError(
                f"{path} was {payload['stage']}-trained for deploy target {trained!r}, "
                f"but this export is for {target!r}",
                hint=f"export with --set deploy_target={trained}, or re-run `{retrain}` first",
            )


def _exported(stage_cfg: StageConfig) -> tuple[Path, Path, dict[str, Any]]:
    """export/model.onnx, model.float.onnx and export.json, each checked to be what export wrote.

    The float model is optional (compile measures it when present), but when present it
    must match too: a foreign float model would make the reported speed-up meaningless.
    """
    out = export_dir(stage_cfg)
    model, float_path = out / workdir.EXPORTED_MODEL, out / workdir.FLOAT_MODEL
    if not model.is_file() or not (out / workdir.EXPORT_INFO).is_file():
        raise UserError(f"no exported model in {out}", hint=f"run `{hint_command(stage_cfg, 'export')}` first")
    meta = verify_exported(stage_cfg, model)
    if float_path.is_file():
        verify_exported(stage_cfg, float_path)
    return model, float_path, meta


def verify_exported(stage_cfg: StageConfig, path: Path) -> dict[str, Any]:
    """:func:`hat.deploy.files.verified_export` with this work dir's re-export command; returns export.json."""
    from hat.deploy.files import verified_export

    info = verified_export(path, remedy=hint_command(stage_cfg, "export"))
    assert info is not None  # required=True: a missing export.json is an error
    return info


def _compile_settings(stage_cfg: StageConfig, **given: Any) -> dict[str, Any]:
    settings = {"backend": "onnxruntime", "opt": 3, "threads": 1, "warmup": 10, "runs": 100}
    settings.update({k: v for k, v in dict(stage_cfg.config.get("compile") or {}).items()})
    settings.update({k: v for k, v in given.items() if v is not None})
    if settings["opt"] not in (0, 1, 2, 3):
        raise UserError(f"--opt must be 0, 1, 2 or 3, got {settings['opt']}")
    return settings


#: compile's counts and their least value (warm-up may be skipped; a run needs a thread).
_COMPILE_COUNTS = {"threads": 1, "warmup": 0, "runs": 1}


def _check_counts(stage_cfg: StageConfig, settings: dict[str, Any]) -> None:
    """A bad ``compile.threads/warmup/runs`` is the user's to fix, named where it was set.

    The backend would only raise a bare ValueError (exit 1), after compiling; the
    command-line options are range-checked by typer already, so only config values land here.
    """
    for key, least in _COMPILE_COUNTS.items():
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(
                f"compile.{key} must be an integer >= {least}, got {value!r}",
                where=stage_cfg.config.locate(f"compile.{key}"),
                hint=f"e.g. --set compile.{key}={max(least, 1)}",
            )


def _backend(name: str, host: PluginHost):
    backends = host.compile_backends.items
    if name not in backends:
        raise ConfigError(f"unknown compilation backend {name!r}", hint=f"installed: {', '.join(sorted(backends))}")
    return backends[name]()


def _example_feeds(meta: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs at the exported shapes (latency does not depend on values)."""
    rng = np.random.default_rng(seed)
    return {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in meta["inputs"]}


def compile_model(
    stage_cfg: StageConfig,
    *,
    opt: int | None = None,
    threads: int | None = None,
    runs: int | None = None,
    host: PluginHost | None = None,
) -> dict[str, Any]:
    """compile/model.opt<N>.onnx plus perf.json and perf.html; returns the perf data."""
    from hat.deploy.analysis import analyze
    from hat.deploy.perf import param_bytes_of, write_perf_report

    host = host or get_host()
    model_path, float_path, meta = _exported(stage_cfg)
    settings = _compile_settings(stage_cfg, opt=opt, threads=threads, runs=runs)
    _check_counts(stage_cfg, settings)
    backend = _backend(settings["backend"], host)
    graph = graph_of(stage_cfg.config)
    out_dir = workdir.compile_dir(stage_cfg.work_dir, graph)
    level = int(settings["opt"])
    compiled = backend.compile(model_path, level, out_dir / workdir.compiled_model_name(level))
    feeds = _example_feeds(meta)
    common = {"threads": int(settings["threads"]), "warmup": int(settings["warmup"]), "runs": int(settings["runs"])}
    console.info(f"measuring int8 latency at opt {level} ({common['runs']} runs, {common['threads']} thread(s))")
    int8_latency = backend.measure_latency(model_path, feeds, opt_level=level, **common)
    float_latency = None
    if float_path.is_file():
        console.info("measuring float latency (onnxruntime, opt 3)")
        float_latency = backend.measure_latency(float_path, feeds, opt_level=3, **common)
    op_times = backend.profile_op_types(model_path, feeds, opt_level=level, threads=common["threads"])
    analysis = analyze(compiled, exported=model_path, inputs=feeds, opt_level=level)
    kernels = _announce_kernels(meta)
    data = write_perf_report(
        out_dir,
        model_name=f"{stage_cfg.task} ({stage_cfg.config.name}, {meta.get('stage')})"
        + (f", graph {graph}" if graph != workdir.MAIN_GRAPH else ""),
        opt_level=level,
        threads=common["threads"],
        int8_latency=int8_latency,
        float_latency=float_latency,
        op_times=op_times,
        analysis=analysis,
        param_bytes=param_bytes_of(model_path),
        flops=analysis.total_flops,
        extra={"deploy_target": meta.get("deploy_target"), "int8_kernels": kernels.to_dict(), "graph": graph},
    )
    data["compiled_model"] = str(compiled)
    return data


def _announce_kernels(meta: dict[str, Any]) -> Int8Kernels:
    """Say which int8 arithmetic this machine's onnxruntime uses; warn if the model needs another."""
    from hat.deploy.int8_kernels import probe_int8_kernels, target_warning

    kernels = probe_int8_kernels()
    target = (meta.get("deploy_target") or {}).get("name", "unknown (exported before targets were recorded)")
    console.info(f"onnxruntime int8 kernels on this machine: {kernels.isa}; model deploy target: {target}")
    warning = target_warning(meta.get("deploy_target"), kernels)
    if warning:
        console.warn(warning)
    return kernels


@dataclass
class Checked:
    """What `hat check` found: every node classified, and the static saturation proof
    (export's :meth:`SaturationReport.summary <hat.deploy.saturation.SaturationReport.summary>`)."""

    analysis: AnalysisResult
    saturation: dict[str, Any]
    target: DeployTarget


def check(
    stage_cfg: StageConfig, *, stage: str | None = None, opt: int | None = None, host: PluginHost | None = None
) -> Checked:
    """Export, compile, run once, classify every node, and bound every int8 kernel."""
    from hat.deploy.analysis import analyze

    host = host or get_host()
    exported = export(stage_cfg, stage, host)
    settings = _compile_settings(stage_cfg, opt=opt)
    backend = _backend(settings["backend"], host)
    level = int(settings["opt"])
    verify_exported(stage_cfg, exported.onnx_path)  # just written; no other run replaced it since
    compiled = backend.compile(exported.onnx_path, level, export_dir(stage_cfg) / workdir.check_model_name(level))
    feeds = _example_feeds(exported.info)
    backend.run(backend.session(exported.onnx_path, threads=1, opt_level=level), feeds)
    analysis = analyze(
        compiled,
        exported=exported.onnx_path,
        inputs=feeds,
        opt_level=level,
        modules_not_int8=exported.info.get("modules_not_int8") or [],
    )
    saturation = exported.info["saturation"]  # proven by export, on the graph it wrote
    record = {**analysis.to_dict(), "deploy_target": exported.info.get("deploy_target"), "saturation": saturation}
    (export_dir(stage_cfg) / workdir.CHECK_INFO).write_text(json.dumps(record, indent=2) + "\n")
    return Checked(analysis, saturation, get_target(target_name_of(stage_cfg.config)))


def int_infer_loader(stage_cfg: StageConfig, predictor: Any, host: PluginHost) -> torch.utils.data.DataLoader:
    """The validation data of ``int_infer_predictor`` (an OnnxPredictor), built as its own run builds it."""
    from hat.engine.loader import build_loader

    cfg = stage_cfg.config
    return build_loader(
        predictor.data_loader_cfg,
        host.registry,
        seed=int(cfg.get("seed", 0)),
        train=False,
        path="int_infer_predictor.data_loader",
        locate=cfg.locate,
    )


class SingleGraph:
    """The :class:`~hat.engine.onnx_predictor.GraphChain` of a task deployed as one graph: the
    batch keys the predictor's ``inputs`` map to the graph's inputs, the outputs renamed by its
    ``outputs``. `hat validate` runs every task through a chain, so that one loop compares the
    graphs of single- and multi-graph tasks alike."""

    def __init__(self, input_map: dict[str, str], rename: dict[str, str]) -> None:
        self.input_map = input_map
        self.rename = rename

    def reset(self) -> None:
        pass

    def __call__(self, run_graph, batch: dict[str, Any]) -> dict[str, Any]:
        from hat.engine.processors import move_to

        missing = [key for key in self.input_map.values() if key not in batch]
        if missing:
            raise UserError(
                f"the exported model needs batch key(s) {missing}, which the data loader lacks",
                hint="map them in int_infer_predictor.inputs: {onnx_input: batch_key}",
            )
        feeds = {name: move_to(batch[key], torch.device("cpu")) for name, key in self.input_map.items()}
        return {self.rename.get(k, k): v for k, v in run_graph(workdir.MAIN_GRAPH, feeds).items()}


class _Agreement:
    """Per graph output, the share of elements within one quantization step (or close, for float outputs)."""

    def __init__(self, scales: dict[str, dict[str, float | None]]) -> None:
        self.scales = scales
        self.within: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @staticmethod
    def label(graph: str, name: str) -> str:
        return name if graph == workdir.MAIN_GRAPH else f"{graph}/{name}"

    def add(self, graph: str, ref: dict[str, torch.Tensor], got: dict[str, Any]) -> None:
        from hat.deploy.compare import share_within_one_step

        for name, scale in self.scales[graph].items():
            expected = ref[name].numpy()
            actual = np.asarray(got[name])
            if scale:
                share = share_within_one_step(expected, actual, float(scale))
            else:
                share = float(np.mean(np.isclose(expected, actual, rtol=1e-3, atol=1e-5)))
            key = self.label(graph, name)
            self.within[key] = self.within.get(key, 0.0) + share * expected.size
            self.counts[key] = self.counts.get(key, 0) + expected.size

    def shares(self) -> dict[str, float]:
        return {key: self.within[key] / max(self.counts[key], 1) for key in self.within}


def validate(
    stage_cfg: StageConfig, *, opt: int | None = None, max_batches: int | None = None, host: PluginHost | None = None
) -> dict[str, Any]:
    """The compiled ONNX graphs and the torch fixed-point graphs on the same validation data.

    Both go through the int_infer predictor's chain (the host code between a task's
    graphs; for one graph, :class:`SingleGraph`), post-processing and metrics, each pass
    its own copy of all three, so a stateful chain or post-process keeps one state per
    side. Every time the ONNX side runs a graph, the torch graph runs on the very same
    inputs and their outputs are compared element by element in the quantized domain of
    each output: what is compared is each graph, not the drift of two trackers apart.
    """
    import copy

    from hat.engine.onnx_predictor import OnnxModel, OnnxPredictor, check_exported_together
    from hat.postprocess import apply_post_process, reset_post_process

    host = host or get_host()
    _, _, meta = _exported(stage_cfg)
    cfg = stage_cfg.config
    if "int_infer_predictor" not in cfg:
        raise ConfigError(f"config {cfg.name} has no int_infer_predictor (data, metrics, post-process)")
    predictor = host.registry.build(cfg["int_infer_predictor"], path="int_infer_predictor", locate=cfg.locate)
    if not isinstance(predictor, OnnxPredictor):
        raise ConfigError("int_infer_predictor must be an OnnxPredictor", where=cfg.locate("int_infer_predictor"))
    settings = _compile_settings(stage_cfg, opt=opt)
    backend = _backend(predictor.backend or settings["backend"], host)
    kernels = _announce_kernels(meta)
    onnx_models: dict[str, OnnxModel] = {}
    fixed_models: dict[str, torch.nn.Module] = {}
    scales: dict[str, dict[str, float | None]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for graph, path in predictor.graph_paths().items():
        graph_cfg = dataclasses.replace(stage_cfg, config=graph_config(cfg, graph))
        graph_meta = metas[graph] = verify_exported(graph_cfg, path)
        onnx_models[graph] = OnnxModel(path, opt_level=int(settings["opt"]), backend=backend)
        fixed_models[graph], _, _ = fixed_point_model(graph_cfg, meta["stage"], host)
        scales[graph] = {o["name"]: o.get("scale") for o in graph_meta["outputs"]}
    check_exported_together(metas, hint_command(stage_cfg, "export"))
    if predictor.chain is not None:
        onnx_chain = predictor.chain
    else:
        input_map = dict(predictor.inputs or {n: n for n in onnx_models[workdir.MAIN_GRAPH].input_names})
        onnx_chain = SingleGraph(input_map, dict(predictor.outputs or {}))
    torch_chain = copy.deepcopy(onnx_chain)
    agreement = _Agreement(scales)

    def torch_graph(graph: str, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return as_named(fixed_models[graph](dict(feeds)), list(scales[graph]))

    def compared_graph(graph: str, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
        got = onnx_models[graph](feeds)
        agreement.add(graph, torch_graph(graph, feeds), got)
        return got

    loader = int_infer_loader(stage_cfg, predictor, host)
    torch_metrics = [copy.deepcopy(m) for m in predictor.val_metrics]
    onnx_metrics = predictor.val_metrics
    torch_post, onnx_post = copy.deepcopy(predictor.post_process), predictor.post_process
    for metric in (*torch_metrics, *onnx_metrics):
        metric.reset()
    for post_process in (torch_post, onnx_post):
        reset_post_process(post_process)
    for chain in (torch_chain, onnx_chain):
        chain.reset()
    samples = 0
    with console.progress() as bar:
        task = bar.add_task("validate", total=len(loader) if max_batches is None else min(len(loader), max_batches))
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            sides = (
                (onnx_chain(compared_graph, batch), onnx_post, onnx_metrics),
                (torch_chain(torch_graph, batch), torch_post, torch_metrics),
            )
            for outputs, post_process, metrics in sides:
                outputs = apply_post_process(post_process, outputs, batch)
                for metric in metrics:
                    metric.update(batch, outputs)
            samples += batch_size_of(batch)
            bar.advance(task)
    result = {
        "stage": meta["stage"],
        "opt": int(settings["opt"]),
        "samples": samples,
        "graphs": list(onnx_models),
        "metrics": {
            "torch_fixed_point": _compute(torch_metrics),
            "onnxruntime": _compute(onnx_metrics),
        },
        "within_one_step": agreement.shares(),
        "deploy_target": meta.get("deploy_target"),
        "int8_kernels": kernels.to_dict(),
    }
    (stage_cfg.work_dir / workdir.VALIDATE_INFO).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _compute(metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in metrics:
        out.update(metric.compute())
    return out


def as_named(outputs: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The torch model's outputs keyed like the ONNX outputs (see onnx_export's naming)."""
    if isinstance(outputs, torch.Tensor):
        return {names[0]: outputs}
    if isinstance(outputs, dict):
        return dict(outputs)
    return dict(zip(names, outputs, strict=True))
