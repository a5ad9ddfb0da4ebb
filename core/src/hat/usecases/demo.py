"""`hat demo TASK`: the whole chain on synthetic data, as a user would run it by hand.

synth -> pack -> float -> calibration -> qat -> export -> compile -> predict every stage
-> infer on a few images, all with the task's tiny config, then one table and
``<work-dir>/demo_report.json``. A task describes its demo with a :class:`DemoRecipe`
(in its TaskSpec); the steps are the same library calls the CLI makes, so the demo
exercises exactly what users run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from hat import console, workdir
from hat.hookspecs import DemoRecipe
from hat.plugins import PluginHost, get_host


def run_demo(
    task: str,
    work_dir: Path,
    *,
    seed: int = 0,
    overrides: Sequence[str] = (),
    synth_options: dict[str, Any] | None = None,
    host: PluginHost | None = None,
) -> dict[str, Any]:
    """Run every step; returns (and writes) the demo report.

    ``overrides`` (``--set`` values) and ``synth_options`` go on top of the recipe's, for a
    longer run or a smaller one (the tests use a very small one).
    """
    from hat.data.packer import run_pack
    from hat.usecases import deploy as commands
    from hat.usecases import stages as stage_runner

    host = host or get_host()
    spec = host.task(task)
    recipe: DemoRecipe | None = spec.demo
    if recipe is None:
        from hat.errors import UserError

        raise UserError(f"task {task!r} has no demo", hint="see `hat list` for tasks with a demo")
    start = time.perf_counter()
    raw, data = work_dir / workdir.DEMO_RAW_DIR, work_dir / workdir.DEMO_DATA_DIR
    settings = [f"{recipe.data_root_key}={data}", *recipe.overrides]
    if recipe.raw_root_key is not None:
        settings.append(f"{recipe.raw_root_key}={raw}")
    settings += list(overrides)  # the caller's last, so they win
    synth = {**recipe.synth_options, **(synth_options or {})}
    stage_cfg = stage_runner.load_stage_config(
        task, config_ref=recipe.config, overrides=settings, work_dir=work_dir, host=host
    )
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            f"synth {recipe.dataset}",
            lambda: _synthesize(host.synth_generator(recipe.dataset), raw, recipe.dataset, seed, synth),
        ),
    ]
    packer = host.packer(recipe.dataset)
    for split in recipe.splits:
        steps.append(
            (
                f"pack {split}",
                lambda split=split: run_pack(packer(raw, split, **recipe.pack_options), data, overwrite=True),
            )
        )
    for stage in recipe.stages:
        steps.append((f"train {stage}", lambda stage=stage: stage_runner.train(stage_cfg, stage, host=host)))
    perf: dict[str, Any] = {}

    def compile_graph(graph_cfg: Any, first: bool) -> None:
        data = commands.compile_model(graph_cfg, opt=3, host=host)
        if first:  # the report's latency and int8 share are the first graph's
            perf.update(data)

    for graph_cfg in commands.graph_stage_configs(stage_cfg):  # every deploy graph of the task
        label = commands.graph_label(graph_cfg)
        steps.append((f"export{label}", lambda g=graph_cfg: commands.export(g, host=host)))
        steps.append((f"compile --opt 3{label}", lambda g=graph_cfg, first=not label: compile_graph(g, first)))
    results: dict[str, dict[str, float]] = {}
    for stage in (*recipe.stages, "int_infer"):
        steps.append(
            (
                f"predict {stage}",
                lambda stage=stage: results.__setitem__(
                    stage, stage_runner.predict(stage_cfg, stage, host=host)["metrics"]
                ),
            )
        )
    pictures: list[str] = []
    if recipe.infer_inputs is not None and "infer" in stage_cfg.config:
        from hat.usecases.infer import run_infer

        steps.append(
            (
                "infer",
                lambda: pictures.extend(
                    str(p)
                    for p in run_infer(
                        stage_cfg,
                        recipe.infer_inputs(raw),
                        work_dir / workdir.DEMO_INFER_DIR,
                        host=host,
                        **(recipe.infer_options(raw) if recipe.infer_options else {}),
                    )
                ),
            )
        )
    step_seconds: dict[str, float] = {}
    with console.progress() as bar:
        overall = bar.add_task(f"demo {task}", total=len(steps))
        for number, (name, step) in enumerate(steps, start=1):
            bar.update(overall, description=f"demo {task} [{number}/{len(steps)}] {name}")
            began = time.perf_counter()
            step()
            step_seconds[name] = round(time.perf_counter() - began, 1)
            bar.advance(overall)
    report = {
        "task": task,
        "config": stage_cfg.config.name,
        "stages": {stage: {m: results[stage].get(m) for m in recipe.metrics} for stage in results},
        "latency_ms": {
            "float_onnx": (perf.get("latency", {}).get("float") or {}).get("median_ms"),
            "int8_opt3": perf.get("latency", {}).get("int8", {}).get("median_ms"),
            "threads": perf.get("threads"),
        },
        "int8_flops_share": perf.get("int8_flops_share"),
        "deploy_target": (perf.get("deploy_target") or {}).get("name"),
        "int8_kernels": (perf.get("int8_kernels") or {}).get("isa"),
        "pictures": pictures,
        "wall_s": round(time.perf_counter() - start, 1),
        "step_s": step_seconds,
    }
    (work_dir / workdir.DEMO_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


#: In the demo's raw folder: what generated it (so a re-run can reuse or replace it).
_SYNTH_MARKER = ".hat-demo-synth.json"


def _synthesize(generate: Callable[..., Any], raw: Path, dataset: str, seed: int, options: dict[str, Any]) -> None:
    """Write the demo's synthetic data, or reuse what an earlier demo run wrote there.

    A re-run in the same work dir finds ``raw/`` from the first run: with the same
    dataset, seed and options it is reused (the generator is deterministic); with others
    it is replaced. A ``raw/`` the demo did not write is never touched.
    """
    import shutil

    wanted = {"dataset": dataset, "seed": seed, "options": options}
    marker = raw / _SYNTH_MARKER
    if raw.exists():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            found = None
        # a demo of an older HAT left no marker, but its report beside raw/
        if found is None and (raw.parent / workdir.DEMO_REPORT).is_file():
            found = {}
        if found is None:
            from hat.errors import UserError

            raise UserError(
                f"{raw} exists and was not written by `hat demo`: the demo will not overwrite it",
                hint="choose another --work-dir",
            ) from None
        if found == json.loads(json.dumps(wanted, default=str)):
            console.info(f"reusing the synthetic data of an earlier demo run in {raw}")
            return
        shutil.rmtree(raw)
    generate(raw, seed=seed, **options)
    marker.write_text(json.dumps(wanted, default=str))


def render_report(report: dict[str, Any]) -> Table:
    metrics = sorted({m for values in report["stages"].values() for m in values})
    title = f"hat demo {report['task']} ({report['wall_s']} s)"
    if report.get("deploy_target"):
        title += f", deploy target {report['deploy_target']}; int8 kernels here: {report.get('int8_kernels')}"
    table = Table(title=title, title_justify="left")
    table.add_column("stage")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("latency ms", justify="right")
    latency = report["latency_ms"]
    for stage, values in report["stages"].items():
        shown = {"float": latency.get("float_onnx"), "int_infer": latency.get("int8_opt3")}.get(stage)
        table.add_row(
            stage,
            *(f"{values[m]:.4f}" if values.get(m) is not None else "-" for m in metrics),
            f"{shown:.3f}" if shown is not None else "",
        )
    return table
