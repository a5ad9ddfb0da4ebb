"""Quantization fidelity: the task metric at every stage, from float to int8 in onnxruntime.

Reuses what ``hat demo keypoint --work-dir DIR`` leaves in DIR: the packed data
(``DIR/data``) and the trained float model (``DIR/float-checkpoint-best.pth.tar``).
Everything this benchmark writes goes under ``DIR/fidelity/``, one work directory per
run, each starting from a copy of the float checkpoint:

  float        the float model (``stages.predict(..., "float")``)
  <observer>   calibration with each activation observer (``min_max``, ``percentile`` at
               ``--percentile``, ``mse``): ``stages.train(..., "calibration")`` with the
               calibration trainer's ``qconfig_params`` overridden, then ``stages.predict``
  int_infer    the percentile calibration exported (``commands.export``) and run as int8
               ONNX in onnxruntime (``stages.predict(..., "int_infer")``)
  qat          a short QAT (``--qat-steps`` steps) from the percentile calibration, its
               torch simulation and its export run in onnxruntime

The table shows every metric of the predict JSON and the ratio of the headline metric
(the first one the predictor reports, PCK@0.1 for keypoints) to float; int_infer/float
is the figure that matters: the accuracy of the real int8 model relative to float.

    python benchmarks/quant_fidelity.py [--work-dir hat-work/demo-keypoint] [--qat-steps 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import environment, run, write_result
from rich.console import Console
from rich.table import Table

FLOAT_CHECKPOINT = "float-checkpoint-best.pth.tar"
CALIBRATION_CHECKPOINT = "calibration-checkpoint-best.pth.tar"
OBSERVERS = ("min_max", "percentile", "mse")


def observer_overrides(observer: str, percentile: float) -> list[str]:
    """``--set`` values that make the calibration trainer use ``observer``."""
    kwargs = f"{{percentile: {percentile}}}" if observer == "percentile" else "{}"
    return [
        f"qconfig_calibration.activation_calibration_observer={observer}",
        f"qconfig_calibration.activation_calibration_qkwargs={kwargs}",
    ]


def check_demo_outputs(work_dir: Path, task: str) -> None:
    """Exit 2 with one line if the demo's data or float checkpoint is missing."""
    missing = [p for p in (work_dir / "data", work_dir / FLOAT_CHECKPOINT) if not p.exists()]
    if missing:
        print(
            f"{missing[0]} does not exist: run `hat demo {task} --work-dir {work_dir}` first",
            file=sys.stderr,
        )
        raise SystemExit(2)


def fresh_run_dir(path: Path, source: Path, *checkpoints: str) -> Path:
    """An empty work directory holding copies of ``source``'s ``checkpoints``."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    for name in checkpoints:
        shutil.copy2(source / name, path / name)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="keypoint")
    parser.add_argument("--config", default="keypoint_efficientnetb0_carfusion-tiny")
    parser.add_argument("--work-dir", type=Path, default=Path("hat-work/demo-keypoint"))
    parser.add_argument("--observers", default=",".join(OBSERVERS), help="comma-separated calibration observers")
    parser.add_argument("--percentile", type=float, default=99.975, help="the percentile observer's percentile")
    parser.add_argument("--qat-steps", type=int, default=20, help="QAT steps from the percentile calibration")
    parser.add_argument("--calib-steps", type=int, default=None, help="calibration batches (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--verbose", action="store_true", help="show HAT's progress bars and per-stage tables")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quant_fidelity.json")
    args = parser.parse_args(argv)
    observers = [o.strip() for o in args.observers.split(",") if o.strip()]
    unknown = sorted(set(observers) - set(OBSERVERS))
    if unknown or not observers:
        parser.error(f"--observers must name some of {', '.join(OBSERVERS)}")
    if args.qat_steps < 1:
        parser.error("--qat-steps must be >= 1")
    check_demo_outputs(args.work_dir, args.task)

    from hat import console as hat_console
    from hat.plugins import get_host
    from hat.usecases import deploy as commands
    from hat.usecases import stages

    hat_console.set_quiet(not args.verbose)
    hat_console.out.quiet = not args.verbose  # the per-stage predict tables
    console = Console(width=None if sys.stdout.isatty() else 120)
    host = get_host()
    root = args.work_dir / "fidelity"
    base_overrides = [f"data_root={args.work_dir / 'data'}", *args.overrides]
    if args.calib_steps is not None:
        base_overrides.append(f"calibration_steps={args.calib_steps}")

    def stage_config(run_dir: Path, extra: list[str] = ()) -> stages.StageConfig:
        return stages.load_stage_config(
            args.task, config_ref=args.config, overrides=[*base_overrides, *extra], work_dir=run_dir, host=host
        )

    rows: list[dict[str, Any]] = []

    def record(name: str, observer: str | None, stage_cfg: stages.StageConfig, stage: str, seconds: float) -> None:
        start = time.perf_counter()
        result = stages.predict(stage_cfg, stage, host=host)
        rows.append(
            {
                "row": name,
                "stage": stage,
                "observer": observer,
                "metrics": result["metrics"],
                "samples": result["num_samples"],
                "work_dir": str(stage_cfg.work_dir),
                "make_s": round(seconds, 1),
                "predict_s": round(time.perf_counter() - start, 1),
            }
        )
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        console.print(f"{name}: {shown}")

    started = time.perf_counter()
    float_dir = fresh_run_dir(root / "float", args.work_dir, FLOAT_CHECKPOINT)
    record("float", None, stage_config(float_dir), "float", 0.0)

    percentile_dir = percentile_cfg = None
    for observer in observers:
        console.print(f"calibrating with the {observer} observer ...")
        run_dir = fresh_run_dir(root / observer, args.work_dir, FLOAT_CHECKPOINT)
        stage_cfg = stage_config(run_dir, observer_overrides(observer, args.percentile))
        start = time.perf_counter()
        stages.train(stage_cfg, "calibration", host=host)
        label = (
            f"calibration ({observer} {args.percentile})" if observer == "percentile" else f"calibration ({observer})"
        )
        record(label, observer, stage_cfg, "calibration", time.perf_counter() - start)
        if observer == "percentile":
            percentile_dir, percentile_cfg = run_dir, stage_cfg

    if percentile_cfg is not None:
        start = time.perf_counter()
        commands.export(percentile_cfg, "calibration", host=host)
        seconds = time.perf_counter() - start
        record("int_infer (calibration, percentile)", "percentile", percentile_cfg, "int_infer", seconds)

    if percentile_dir is None:
        console.print("[yellow]no percentile calibration: QAT skipped (it starts from it)[/yellow]")
    else:
        console.print(f"QAT for {args.qat_steps} steps from the percentile calibration ...")
        qat_dir = fresh_run_dir(root / "qat", percentile_dir, FLOAT_CHECKPOINT, CALIBRATION_CHECKPOINT)
        stage_cfg = stage_config(qat_dir, [f"qat_trainer.num_steps={args.qat_steps}"])
        start = time.perf_counter()
        stages.train(stage_cfg, "qat", host=host)
        record(f"qat ({args.qat_steps} steps)", "percentile", stage_cfg, "qat", time.perf_counter() - start)
        start = time.perf_counter()
        commands.export(stage_cfg, "qat", host=host)
        record("int_infer (qat)", "percentile", stage_cfg, "int_infer", time.perf_counter() - start)

    metric_names = list(rows[0]["metrics"])
    headline = metric_names[0]
    reference = rows[0]["metrics"][headline]
    for row in rows:
        value = row["metrics"].get(headline)
        row["headline_vs_float"] = round(value / reference, 4) if value is not None and reference else None

    table = Table(
        title=f"quant_fidelity: {args.task} ({args.config}), {rows[0]['samples']} validation samples, "
        f"{headline} relative to float"
    )
    table.add_column("stage / observer")
    for name in metric_names:
        table.add_column(name, justify="right")
    table.add_column(f"{headline} / float", justify="right")
    for row in rows:
        table.add_row(
            row["row"],
            *(f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "-" for m in metric_names),
            f"{row['headline_vs_float']:.4f}" if row["headline_vs_float"] is not None else "-",
        )
    console.print(table)
    int_infer = [r for r in rows if r["stage"] == "int_infer"]
    for row in int_infer:
        console.print(f"{row['row']} / float ({headline}): [bold]{row['headline_vs_float']:.4f}[/bold]")

    result = {
        "benchmark": "quant_fidelity",
        "task": args.task,
        "config": args.config,
        "work_dir": str(args.work_dir),
        "float_checkpoint": str(args.work_dir / FLOAT_CHECKPOINT),
        "overrides": base_overrides,
        "percentile": args.percentile,
        "qat_steps": args.qat_steps,
        "headline_metric": headline,
        "results": rows,
        "wall_s": round(time.perf_counter() - started, 1),
        **environment(),
    }
    write_result(args.out, result, console)
    return result


if __name__ == "__main__":
    run(main)
