"""The ``hat`` command. Every command is a thin call into the library.

Exit codes: 0 done, 1 the work failed, 2 bad usage or bad input. A
:class:`hat.errors.UserError` prints one message (what, where, what next) and exits 2
with no traceback; ``--debug`` (anywhere on the line) shows tracebacks. ``--quiet``
hides progress bars.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from hat import __version__, console
from hat.errors import UserError

app = typer.Typer(
    name="hat",
    help="HAT: pack data, train, calibrate, QAT, export, compile and measure perception models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
_GLOBAL_FLAGS = ("--debug", "--quiet")


def _print_version(value: bool) -> None:
    if value:
        console.out.print(f"hat-core {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (accepted anywhere on the line).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Hide progress bars (accepted anywhere on the line).")] = False,
) -> None:
    """HAT: pack data, train, calibrate, QAT, export, compile and measure perception models."""


# -- hat list -------------------------------------------------------------------------------


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Plugins, tasks, datasets, configs and backends that are installed."""
    from hat.extra_options import describe_options
    from hat.plugins import get_host
    from hat.quant.target import DEFAULT_TARGET, TARGETS
    from hat.usecases.infer import describe_infer_options

    host = get_host()
    datasets = sorted(set(host.packers.items) | set(host.synth.items))
    listing = {
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "module": p.module}
            for p in host.plugins
        ],
        "tasks": [
            {
                "name": t.name,
                "dataset": t.dataset,
                "default_config": t.default_config,
                "summary": t.summary,
                "infer_options": describe_infer_options(t.name, host),
                "plugin": host.tasks.owners[t.name],
            }
            for t in host.tasks.items.values()
        ],
        "datasets": [
            {
                "name": d,
                "pack": d in host.packers.items,
                "synth": d in host.synth.items,
                "pack_options": describe_options(host.packers.items[d]) if d in host.packers.items else None,
                "synth_options": describe_options(host.synth.items[d]) if d in host.synth.items else None,
                "plugin": host.packers.owners.get(d) or host.synth.owners.get(d),
            }
            for d in datasets
        ],
        "configs": [
            {"name": n, "plugin": host.configs.owners[n], "path": str(p)} for n, p in sorted(host.configs.items.items())
        ],
        "backends": [
            {"kind": kind, "name": n, "plugin": claimed.owners[n]}
            for kind, claimed in (("quantization", host.quant_backends), ("compilation", host.compile_backends))
            for n in sorted(claimed.items)
        ],
        "deploy_targets": [
            {"name": t.name, "default": t.name == DEFAULT_TARGET, "summary": t.summary} for t in TARGETS.values()
        ],
        "types": len(host.registry.names()),
    }
    if as_json:
        console.out.print_json(json.dumps(listing))
        return
    _table("Plugins", ["name", "distribution", "version"], listing["plugins"])
    _table("Tasks", ["name", "dataset", "default_config", "plugin", "infer_options", "summary"], listing["tasks"])
    _table(
        "Datasets",
        ["name", "pack", "synth", "pack_options", "synth_options", "plugin"],
        listing["datasets"],
    )
    _table("Configs", ["name", "plugin"], listing["configs"])
    _table("Backends", ["kind", "name", "plugin"], listing["backends"])
    _table("Deploy targets (deploy_target: NAME)", ["name", "default", "summary"], listing["deploy_targets"])
    console.out.print(f"{listing['types']} registered types (configs refer to them with `type:`).")


def _table(title: str, columns: list[str], rows: list[dict]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if row[c] is None else str(row[c]) for c in columns))
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    console.out.print(table)


# -- hat config show ------------------------------------------------------------------------

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: --set float_trainer.num_epochs=1 (repeatable)."),
]


@config_app.command("show")
def config_show(
    ref: Annotated[str, typer.Argument(help="A task, a config name, or a YAML file.")],
    overrides: SetOption = None,
) -> None:
    """Print the fully resolved config (bases merged, overrides applied, ${...} filled in)."""
    from hat.plugins import get_host
    from hat.usecases.task_config import load_task_config, resolve_config_ref
    from hat.workdir import default_work_dir

    host = get_host()
    _, name = resolve_config_ref(ref, host)
    # the same values the stage commands provide, so ${work_dir} and ${task} resolve here too
    defaults = {"work_dir": str(default_work_dir(name)), "task": ref if ref in host.tasks.items else ""}
    cfg = load_task_config(ref, overrides or (), host=host, defaults=defaults)
    console.info(f"# {cfg.name} ({cfg.path})")
    console.out.print(cfg.to_yaml(), end="", markup=False)


# -- hat synth / hat pack -------------------------------------------------------------------


def _check_dir_option(path: Path, option: str, *, create: bool = True) -> None:
    """Refuse a file where a directory option (``--dst``, ``--save-path``, ``--src``) needs a directory.

    Checked before any work: found later, deep in it, the file is a raw errno
    (``NotADirectoryError``, ``FileExistsError``) and exit 1. ``create``: the command makes
    the directory when missing, so a file anywhere on its path is in the way; otherwise
    ``path`` must be an existing directory where it exists (whether it exists at all is
    the command's own check).
    """
    from hat.errors import UserError

    for candidate in (path, *path.parents) if create else (path,):
        if not candidate.exists():
            continue
        if candidate.is_dir():
            return
        what = (
            f"{option} {path} is a file, not a directory"
            if candidate == path
            else f"{option} {path} cannot be created: {candidate} is a file, not a directory"
        )
        hint = (
            f"pass a directory for {option} (it is created if missing), or move the file {candidate} away"
            if create
            else f"pass a directory as {option}, not a file"
        )
        raise UserError(what, where=str(candidate), hint=hint)


@app.command("synth", context_settings=_EXTRA_ARGS)
def synth_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `hat list`).")],
    dst: Annotated[Path, typer.Option("--dst", help="Directory to write the raw dataset into.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed writes the same data.")] = 0,
) -> None:
    """Write synthetic data in the dataset's own raw layout (dataset options: see `hat list`)."""
    from hat.extra_options import parse_extra_options
    from hat.plugins import get_host

    _check_dir_option(dst, "--dst")
    generate = get_host().synth_generator(dataset)
    options = parse_extra_options(ctx.args, generate, f"`hat synth {dataset}`")
    start = time.perf_counter()
    generate(dst, seed=seed, **options)
    console.info(f"wrote synthetic {dataset} to {dst} in {time.perf_counter() - start:.1f} s")


@app.command("pack", context_settings=_EXTRA_ARGS)
def pack_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `hat list`).")],
    src: Annotated[Path, typer.Option("--src", help="The raw dataset directory.")],
    dst: Annotated[Path, typer.Option("--dst", help="Where <split>_lmdb is written.")],
    split: Annotated[str, typer.Option("--split", help="Which split to pack, e.g. train or test.")],
    num_workers: Annotated[int, typer.Option("--num-workers", min=0, help="Worker processes (0 = in process).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a complete pack.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed source records and count them.")] = False,
) -> None:
    """Pack a raw dataset split into <dst>/<split>_lmdb (dataset options: see `hat list`)."""
    from hat.data.packer import run_pack
    from hat.extra_options import parse_extra_options
    from hat.plugins import get_host

    _check_dir_option(src, "--src", create=False)
    _check_dir_option(dst, "--dst")
    packer_cls = get_host().packer(dataset)
    options = parse_extra_options(ctx.args, packer_cls, f"`hat pack {dataset}`")
    packer = packer_cls(src, split, **options)
    summary = run_pack(packer, dst, num_workers=num_workers, overwrite=overwrite, skip_bad=skip_bad)
    console.out.print(
        f"packed {summary.num_samples} samples from {summary.num_records} records into {summary.path} "
        f"in {summary.seconds:.1f} s"
    )
    if summary.num_skipped:
        console.err.print(f"[yellow]skipped {summary.num_skipped} bad record(s):[/yellow]")
        for line in summary.skipped[:20]:
            console.err.print(f"  {line}", markup=False, soft_wrap=True)
        if summary.num_skipped > 20:
            console.err.print(f"  ... and {summary.num_skipped - 20} more")


# -- hat train / predict / calops -------------------------------------------------------------

TaskArg = Annotated[str, typer.Argument(help="The task (see `hat list`), e.g. keypoint.")]
ConfigOption = Annotated[
    Optional[str], typer.Option("--config", help="A config name or YAML file (default: the task's default config).")
]
WorkDirOption = Annotated[
    Optional[Path],
    typer.Option("--work-dir", help="Where checkpoints, logs and exports go (default ./hat-work/<config>)."),
]


def _stage_config(task: str, config: str | None, overrides: list[str] | None, work_dir: Path | None):
    from hat.usecases.stages import load_stage_config

    return load_stage_config(task, config_ref=config, overrides=overrides or (), work_dir=work_dir)


@app.command("train")
def train_command(
    task: TaskArg,
    stage: Annotated[str, typer.Option("--stage", help="float, calibration or qat.")] = "float",
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <stage>-checkpoint-last.")] = False,
) -> None:
    """Train a stage: float, calibration or qat (DDP under torchrun: `torchrun -m hat train ...`)."""
    from hat import distributed
    from hat.usecases import stages

    stage_cfg = _stage_config(task, config, overrides, work_dir)
    try:
        state = stages.train(stage_cfg, stage, resume=resume)
        global_step, metrics = state.global_step, dict(state.metrics)
        del state  # holds the DDP model, which holds the process group (see distributed.shutdown)
        main_rank = distributed.is_main()
        distributed.barrier()  # leave together (see distributed.shutdown)
    finally:
        distributed.shutdown()
    if main_rank:
        from hat.metrics import format_summary

        shown = format_summary(metrics) if metrics else "no validation metrics"
        console.out.print(f"{stage} done after {global_step} steps: {shown}; checkpoints in {stage_cfg.work_dir}")


@app.command("predict")
def predict_command(
    task: TaskArg,
    stage: Annotated[str, typer.Option("--stage", help="float, calibration, qat or int_infer.")] = "float",
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Evaluate a stage's model (int_infer: the exported ONNX in onnxruntime); writes predict/<stage>.json."""
    from hat import distributed
    from hat.usecases import stages

    stage_cfg = _stage_config(task, config, overrides, work_dir)
    try:
        stages.predict(stage_cfg, stage)
        distributed.barrier()
    finally:
        distributed.shutdown()


@app.command("calops")
def calops_command(
    task: TaskArg,
    config: ConfigOption = None,
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """FLOPs and parameters of the deploy model at its deploy input shape."""
    from hat.engine.calops import calops_for_config
    from hat.plugins import get_host
    from hat.usecases.deploy import graph_stage_configs

    graphs = graph_stage_configs(_stage_config(task, config, overrides, None))
    reports = [(graph_cfg, calops_for_config(graph_cfg.config, get_host().registry)) for graph_cfg in graphs]
    if as_json:
        from hat.engine.deploy_model import graph_of

        data = {graph_of(g.config): r.to_dict() for g, r in reports}
        console.out.print_json(json.dumps(data if len(data) > 1 else next(iter(data.values()))))
        return
    for graph_cfg, report in reports:
        label = _graph_label(graph_cfg)
        if label:
            console.out.print(f"[bold]calops{label}[/bold]")
        console.out.print(report.render_table())


# -- hat export / compile / check / validate ---------------------------------------------------

QuantStageOption = Annotated[
    Optional[str], typer.Option("--stage", help="calibration or qat (default: the newer checkpoint).")
]
OptOption = Annotated[Optional[int], typer.Option("--opt", min=0, max=3, help="onnxruntime optimization level 0-3.")]


@app.command("export")
def export_command(
    task: TaskArg,
    stage: QuantStageOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Fixed-point model -> export/model.onnx (int8 QDQ), model.float.onnx, export.json."""
    from hat.usecases import deploy as commands

    for graph_cfg in commands.graph_stage_configs(_stage_config(task, config, overrides, work_dir)):
        exported = commands.export(graph_cfg, stage)
        info = exported.info
        console.out.print(
            f"exported the {exported.stage} model{_graph_label(graph_cfg)} to {exported.onnx_path} "
            f"({info['int8_initializers']} int8 and {info['int32_initializers']} int32 initializers, "
            f"{len(info['activations'])} quantized activations) and {exported.float_path}"
        )


def _graph_label(stage_cfg) -> str:
    from hat.usecases.deploy import graph_label

    return graph_label(stage_cfg)


@app.command("compile")
def compile_command(
    task: TaskArg,
    opt: OptOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Intra-op threads (default 1).")] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", min=1, help="Timed runs after warm-up.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Optimize the exported model (--opt 0..3) and measure it: compile/perf.json and perf.html."""
    from hat.usecases import deploy as commands

    for graph_cfg in commands.graph_stage_configs(_stage_config(task, config, overrides, work_dir)):
        data = commands.compile_model(graph_cfg, opt=opt, threads=threads, runs=runs)
        _print_perf(data, _graph_label(graph_cfg))


def _print_perf(data: dict, label: str = "") -> None:
    int8, flt = data["latency"]["int8"], data["latency"].get("float")
    table = Table(
        title=f"compiled{label} at opt {data['opt_level']}, {data['threads']} thread(s)", title_justify="left"
    )
    for column in ("model", "median ms", "p10 ms", "p90 ms"):
        table.add_column(column, justify="right" if column != "model" else "left")
    table.add_row("int8 (onnxruntime)", *(f"{int8[k]:.3f}" for k in ("median_ms", "p10_ms", "p90_ms")))
    if flt:
        table.add_row("float (onnxruntime opt 3)", *(f"{flt[k]:.3f}" for k in ("median_ms", "p10_ms", "p90_ms")))
    console.out.print(table)
    share = data.get("int8_flops_share")
    speedup = data["latency"].get("speedup")
    console.out.print(
        (f"speed-up int8 vs float: {speedup:.2f}x; " if speedup else "")
        + (f"int8 share of FLOPs: {share:.1%}; " if share is not None else "")
        + f"report: {data.get('compiled_model', '')} and perf.html beside it"
    )
    target = (data.get("deploy_target") or {}).get("name", "unknown")
    kernels = (data.get("int8_kernels") or {}).get("isa", "unknown")
    console.out.print(f"deploy target {target}; onnxruntime int8 kernels here: {kernels}")


@app.command("check")
def check_command(
    task: TaskArg,
    stage: QuantStageOption = None,
    opt: OptOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Model checker: export, load in onnxruntime, list every node that does not run int8 and why."""
    from hat.deploy.errors import RuntimeFailure
    from hat.usecases import deploy as commands

    failed = False
    for graph_cfg in commands.graph_stage_configs(_stage_config(task, config, overrides, work_dir)):
        label = _graph_label(graph_cfg)
        if label:
            console.out.print(f"[bold]check{label}[/bold]")
        try:
            checked = commands.check(graph_cfg, stage=stage, opt=opt)
        except RuntimeFailure as exc:  # the model does not run: that is the check failing, exit 1
            console.err.print(f"[bold red]check failed{label}:[/bold red] {escape(exc.render())}", soft_wrap=True)
            raise typer.Exit(1) from None
        failed = _print_check(checked) or failed
    if failed:
        raise typer.Exit(1)


def _print_check(checked) -> bool:
    """What `hat check` found on one graph; True when it is not safe for its deploy target."""
    analysis, saturation = checked.analysis, checked.saturation
    non_int8 = analysis.non_int8()
    if analysis.modules_not_int8:
        console.out.print(analysis.render_modules_table())
    if non_int8:
        console.out.print(analysis.render_table())
    share = analysis.int8_flops_share
    console.out.print(
        f"the model runs in onnxruntime; {len(non_int8)} node(s) not int8; int8 share of FLOPs: {share:.1%}"
        if share is not None
        else "the model runs in onnxruntime"
    )
    _print_saturation(saturation, checked.target)
    return not saturation["safe_without_vnni"] and not checked.target.needs_vnni


def _print_saturation(summary: dict, target) -> None:
    """The static proof (export's summary): safe on every x86 CPU, or which kernels need VNNI."""
    counted = f"{summary['dense_kernels']} dense int8 kernel(s), {summary['depthwise_kernels']} depthwise"
    if summary["safe_without_vnni"]:
        console.out.print(
            f"saturation: safe on every x86 CPU, VNNI or not ({counted}; worst pair of products "
            f"{summary['worst_pair_bound']} <= {summary['limit']}); deploy target {target.name}"
        )
        return
    unsafe = summary["unsafe"]
    table = Table(title=f"int8 kernels that can saturate without VNNI (a pair of products > {summary['limit']})")
    for column in ("node", "module", "weight pair", "activation max", "bound"):
        table.add_column(column, overflow="fold")
    for kernel in unsafe[:20]:
        table.add_row(
            kernel["node"],
            kernel["module"] or "-",
            str(kernel["pair"]),
            str(kernel["activation_max"]),
            str(kernel["bound"]),
        )
    console.out.print(table)
    verdict = (
        "exact only where onnxruntime uses VNNI, as deploy target vnni allows"
        if target.needs_vnni
        else f"NOT safe for deploy target {target.name}"
    )
    console.out.print(f"saturation: {len(unsafe)} of {counted} can saturate on CPUs without VNNI: {verdict}")


@app.command("validate")
def validate_command(
    task: TaskArg,
    opt: OptOption = None,
    max_batches: Annotated[Optional[int], typer.Option("--max-batches", min=1, help="Stop after N batches.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Compiled model vs torch fixed-point model on the same data: metrics and agreement."""
    from hat.usecases import deploy as commands

    result = commands.validate(_stage_config(task, config, overrides, work_dir), opt=opt, max_batches=max_batches)
    table = Table(
        title=f"validate ({result['stage']} model, opt {result['opt']}, {result['samples']} samples)",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("torch fixed point", justify="right")
    table.add_column("onnxruntime int8", justify="right")
    for name, value in result["metrics"]["torch_fixed_point"].items():
        table.add_row(name, f"{value:.4f}", f"{result['metrics']['onnxruntime'].get(name, float('nan')):.4f}")
    console.out.print(table)
    for name, share in result["within_one_step"].items():
        console.out.print(f"output {name}: {share:.2%} of elements agree within one quantization step")
    target = (result.get("deploy_target") or {}).get("name", "unknown")
    console.out.print(f"deploy target {target}; onnxruntime int8 kernels here: {result['int8_kernels']['isa']}")


@app.command("analyze")
def analyze_command(
    task: TaskArg,
    stage: QuantStageOption = None,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Validation batches to measure on.")] = 8,
    by_metric: Annotated[
        bool,
        typer.Option(
            "--metric/--sqnr",
            help="Rank by the task metric (slow: post-process and metric for 2 + 2 x layers runs of every "
            "batch) instead of the model outputs' SQNR against float (default).",
        ),
    ] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Layers shown in the table (the files hold all).")] = 20,
    opt: OptOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Per-layer quantization analysis: SQNR, sensitivity, first torch vs onnxruntime divergence.

    Writes analysis/analysis.json (every layer) and analysis/analysis.html.
    """
    from hat.usecases.analyze import analyze

    record = analyze(
        _stage_config(task, config, overrides, work_dir), stage=stage, batches=batches, by_metric=by_metric, opt=opt
    )
    _print_analysis(record, top)


def _print_analysis(record: dict, top: int) -> None:
    from hat.quant.sensitivity_html import format_db

    metric = record["model"].get("metric")
    measured = f"{metric['name']}, float {_metric_cell(metric['float'])}" if metric else "output SQNR in dB"
    table = Table(
        title=f"most sensitive layers of the {record['stage']} model ({record['samples']} samples; {measured})",
        title_justify="left",
    )
    columns = ["rank", "layer", "kind", "only it quantized", "only it float", "layer SQNR"]
    if metric:
        columns[3:5] = [f"{metric['name']}, only it quantized", f"{metric['name']}, only it float"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right", overflow="fold")
    for layer in record["layers"][:top]:
        alone, kept = layer["only_quantized"], layer["only_float"]
        if metric:
            cells = [_metric_cell(alone.get("metric")), _metric_cell(kept.get("metric"))]
        else:
            cells = [format_db(alone["output_sqnr_db"]), format_db(kept["output_sqnr_db"])]
        table.add_row(str(layer["rank"]), escape(layer["name"]), layer["kind"], *cells, format_db(layer["sqnr_db"]))
    console.out.print(table)
    summary = f"every layer quantized: output SQNR {format_db(record['model']['output_sqnr_db'])} dB"
    if metric:
        summary += f"; {metric['name']} {_metric_cell(metric['quantized'])} (float {_metric_cell(metric['float'])})"
    console.out.print(summary)
    divergence = record["divergence"]
    if "skipped" in divergence:
        console.out.print(
            f"torch vs onnxruntime: not compared ({divergence['skipped']}); run `{divergence['command']}`"
        )
    elif divergence["first_divergence"] is None:
        console.out.print(
            f"torch vs onnxruntime (opt {divergence['opt']}): all {len(divergence['compared'])} compared tensors "
            "agree within one step"
        )
    else:
        first = divergence["first_divergence"]
        console.out.print(
            f"torch vs onnxruntime (opt {divergence['opt']}): first tensor beyond one step: {escape(first['tensor'])} "
            f"(layer {escape(first['layer'])}), up to {first['max_steps']} steps; {first['beyond_one_step']} of "
            f"{first['elements']} elements beyond one step ({first['share_beyond_one_step']:.4%})"
        )
        own = divergence["local"]["first_divergence"]
        if own is None:
            console.out.print(
                "  fed onnxruntime's own inputs, every layer agrees within one step: the difference is rounding "
                "upstream, amplified"
            )
        else:
            console.out.print(
                f"  fed onnxruntime's own inputs, the first layer that computes differently: {escape(own['layer'])} "
                f"(up to {own['max_steps']} steps, {own['share_beyond_one_step']:.4%} of elements)"
            )
    console.out.print(f"report: {record['files']['json']} and {record['files']['html']}")


def _metric_cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


@app.command("fallback")
def fallback_command(
    task: TaskArg,
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            min=0.0,
            max=0.999,
            help="How far below float the calibrated model's metric may be, as a fraction of float: "
            "0.005 = within 0.5%.",
        ),
    ],
    max_layers: Annotated[
        int, typer.Option("--max-layers", min=1, help="Most layers to try, most sensitive first.")
    ] = 8,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Validation batches for the ranking.")] = 8,
    to: Annotated[
        str, typer.Option("--to", help="Precisions to try per layer, in order: int16,float | int16 | float.")
    ] = "int16,float",
    latency: Annotated[
        bool, typer.Option("--latency/--no-latency", help="Export and time every step (hat compile's measurement).")
    ] = True,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply/--no-apply",
            help="Write the chosen rules into the work dir's config and install that step's calibration "
            "checkpoint (what it replaces is kept under fallback/replaced/).",
        ),
    ] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Keep the fewest, most sensitive layers off int8 until calibration meets --budget.

    Each step is a real calibration (in fallback/step-NN/) scored by the calibration
    predictor's first metric; writes fallback/fallback.json and fallback/precision.yaml.
    """
    from hat.quant.precision import FLOAT, INT16
    from hat.usecases.fallback import fallback

    precisions = [p.strip() for p in to.split(",") if p.strip()]
    if not precisions or any(p not in (INT16, FLOAT) for p in precisions):
        raise UserError(f"--to {to!r}: give int16, float or both, comma-separated", hint="e.g. --to int16,float")
    record = fallback(
        _stage_config(task, config, overrides, work_dir),
        budget=budget,
        max_layers=max_layers,
        batches=batches,
        to=precisions,
        latency=latency,
        apply=apply,
    )
    _print_fallback(record)
    if not record["met"]:
        raise typer.Exit(1)


def _print_fallback(record: dict) -> None:
    metric = record["metric"]["name"]
    float_metric = record["float_metric"]
    table = Table(
        title=f"hat fallback: {metric}, float {float_metric:.4f}, budget {record['budget']['threshold']:.4f} "
        f"({record['budget']['relative']:.2%} of float)",
        title_justify="left",
    )
    for column in ("step", "layer", "precision", metric, "of float", "int8 latency ms", "vs all int8", "kept"):
        table.add_column(column, justify="left" if column in ("layer", "precision") else "right", overflow="fold")
    for step in record["steps"]:
        latency = step["latency_ms"]
        ratio = step.get("latency_vs_all_int8")
        table.add_row(
            str(step["step"]),
            escape(step["layer"] or "(all int8)"),
            step["precision"] or "",
            f"{step['metric']:.4f}",
            f"{step['metric'] / float_metric:.2%}" if float_metric else "n/a",
            f"{latency:.3f}" if latency is not None else "",
            f"{ratio:.2f}x" if ratio else "",
            ("yes" if step["kept"] else "no") + (" (meets)" if step["kept"] and step["meets_budget"] else ""),
        )
    console.out.print(table)
    chosen = [r for r in record["rules"] if r.get("reason") == "sensitivity"]
    if record["met"]:
        names = ", ".join(f"{r['modules']} ({r['activation']})" for r in chosen) or "none"
        console.out.print(f"budget met at step {record['chosen_step']}: layers raised: {names}")
        if record.get("applied"):
            console.out.print("applied: the work dir's config and calibration checkpoint now hold the choice")
    else:
        console.out.print(
            f"budget not met after trying {record['layers_tried']} of {len(record['ranked_layers'])} layers: "
            "nothing applied (try a larger --max-layers, --to int16,float, or a larger --budget)"
        )
    console.out.print(f"report: {record['files']['json']}; rules: {record['files']['rules']}")


# -- hat infer / demo -----------------------------------------------------------------------


@app.command("infer", context_settings=_EXTRA_ARGS)
def infer_command(
    ctx: typer.Context,
    task: TaskArg,
    inputs: Annotated[
        list[Path],
        typer.Option(
            "--input",
            help="An input image file, or a directory: its image files (.jpg, .jpeg, .png, .bmp; "
            "not its sub-directories), sorted by name (repeatable).",
        ),
    ],
    save_path: Annotated[Path, typer.Option("--save-path", help="Directory for the drawn results.")],
    model: Annotated[str, typer.Option("--model", help="int8 (export/model.onnx) or float.")] = "int8",
    config: ConfigOption = None,
    overrides: SetOption = None,
    work_dir: WorkDirOption = None,
) -> None:
    """Run the exported model on files and draw what it found (task options, e.g. fcos3d's --calib: see `hat list`)."""
    from hat.usecases.infer import build_inferer, parse_infer_options, run_infer

    _check_dir_option(save_path, "--save-path")
    stage_cfg = _stage_config(task, config, overrides, work_dir)
    inferer = build_inferer(stage_cfg)
    options = parse_infer_options(ctx.args, inferer, task)
    written = run_infer(stage_cfg, inputs, save_path, model=model, inferer=inferer, **options)
    for path in written:
        console.out.print(str(path))


@app.command("demo")
def demo_command(
    task: Annotated[
        Optional[str], typer.Argument(help="The task (default: the installed task with the quickest demo).")
    ] = None,
    work_dir: Annotated[
        Optional[Path], typer.Option("--work-dir", help="Where everything goes (default ./hat-work/demo-<task>).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the synthetic data.")] = 0,
    overrides: SetOption = None,
) -> None:
    """The whole chain on synthetic data: synth, pack, train every stage, export, compile, predict, infer."""
    from hat.plugins import get_host
    from hat.usecases.demo import render_report, run_demo
    from hat.workdir import DEMO_REPORT, demo_work_dir

    host = get_host()
    if task is None:
        task = _quickest_demo(host)
    chosen = work_dir or demo_work_dir(task)
    report = run_demo(task, chosen, seed=seed, overrides=overrides or (), host=host)
    console.out.print(render_report(report))
    console.out.print(f"report: {chosen / DEMO_REPORT}")


#: What a user does after interrupting a command, by command.
_AFTER_INTERRUPT = {
    "train": "the checkpoints saved so far are kept: run the same command with --resume to continue "
    "(without it if none was saved yet)",
    "pack": "the unfinished pack is marked incomplete: run the same command again to replace it",
    "demo": "run the same command again: it reuses the synthetic data it wrote and redoes the rest",
}


def _was_interrupted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _say_interrupted(args: list[str]) -> None:
    command = next((a for a in args if not a.startswith("-")), "")
    console.err.print(f"interrupted: hat {' '.join(args)}", markup=False, highlight=False, soft_wrap=True)
    console.err.print(f"  next:  {_AFTER_INTERRUPT.get(command, 'run the same command again')}", markup=False)


def _quickest_demo(host) -> str:
    """The installed task whose demo is quickest (by its recipe's expected time), said aloud."""
    from hat.errors import UserError

    with_demo = {name: spec.demo for name, spec in host.tasks.items.items() if spec.demo is not None}
    if not with_demo:
        raise UserError("no installed task has a demo", hint="install a task plugin, e.g. `pip install hat-keypoint`")
    chosen = min(sorted(with_demo), key=lambda n: with_demo[n].expected_seconds or float("inf"))
    if len(with_demo) > 1:
        others = ", ".join(n for n in sorted(with_demo) if n != chosen)
        console.info(f"hat demo: running {chosen}, the quickest installed demo (also: {others}; `hat demo TASK`)")
    return chosen


# -- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map errors to exit codes (2 user error, 1 failed work)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    console.set_quiet("--quiet" in args)
    args = [a for a in args if a not in _GLOBAL_FLAGS]
    try:
        app(args=args, prog_name="hat")
    except UserError as exc:
        if debug:
            traceback.print_exc()
        console.err.print(f"[bold red]error:[/bold red] {escape(exc.render())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _say_interrupted(args)
        sys.exit(130)
    except SystemExit as exc:
        # typer turns a Ctrl-C inside a command into Exit(130) before it reaches here
        if exc.code == 130 and _was_interrupted(exc):
            _say_interrupted(args)
        raise
    except Exception as exc:  # the work failed: say so in one line unless asked for more
        if debug:
            traceback.print_exc()
        console.err.print(
            f"[bold red]error:[/bold red] the work failed: {type(exc).__name__}: {escape(str(exc))}",
            highlight=False,
            soft_wrap=True,
        )
        if not debug:
            console.err.print("  next:  re-run with --debug for the traceback")
        sys.exit(1)
