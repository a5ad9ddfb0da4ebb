"""Deployment latency: torch float, onnxruntime float and onnxruntime int8 at opt 0..3, side by side.

The exported model of a work directory (``DIR/export/model.onnx`` and
``model.float.onnx``; ``commands.export`` writes them first if they are missing) is
timed in six ways, all at batch 1 on the same input tensor with the same thread count
(``--threads``, set for onnxruntime's intra-op pool and ``torch.set_num_threads``):

  torch float eager    ``commands.float_model`` (the float deploy model), eval, ``torch.no_grad``
  ort float opt 3      model.float.onnx, all graph optimizations
  ort int8 opt 0..3    model.onnx at each onnxruntime graph optimization level (``hat compile --opt``)

Every variant warms up (``--warmup`` runs), then the timed runs (``--runs`` per variant) are
taken in ``--rounds`` interleaved rounds, so that a drift of the machine's load hits all
variants alike; the median is reported, with the speed-up vs onnxruntime float at opt 3
and the share of FLOPs that run in int8 kernels at each level.

Latency does not depend on weight values: ``--random-weights`` times a config without a
trained model (e.g. ``--config keypoint_efficientnetb0_carfusion``): the deploy model
with its initial weights, calibrated on a few random inputs, exported to
``DIR/latency-random/<config>/``.

    python benchmarks/deploy_latency.py [--work-dir hat-work/demo-keypoint] [--threads 1] [--runs 200]
    python benchmarks/deploy_latency.py --config keypoint_efficientnetb0_carfusion --random-weights
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import environment, run, time_interleaved, write_result
from rich.console import Console
from rich.table import Table

FLOAT_CHECKPOINT = "float-checkpoint-best.pth.tar"


def random_weight_export(
    stage_cfg, host, out_dir: Path, calib_inputs: int, seed: int, *, return_fixed: bool = False
) -> torch.nn.Module:
    """Export the config's deploy model with initial weights, calibrated on random inputs,
    for the config's ``deploy_target``.

    Returns the float model (or, with ``return_fixed``, the fixed-point model that was
    exported); writes ``out_dir/model.onnx``, ``model.float.onnx`` and ``export.json``.
    """
    from hat.deploy.onnx_export import export_float_onnx, export_onnx
    from hat.engine.deploy_model import build_deploy_model
    from hat.quant.backend import TorchNativeBackend
    from hat.quant.modes import calibration_mode
    from hat.quant.target import CONFIG_KEY, get_target, target_name_of
    from hat.usecases.stages import seed_everything

    cfg = stage_cfg.config
    seed_everything(seed)
    model, inputs = build_deploy_model(cfg, host.registry)
    model.eval()
    pipeline = (cfg.get("calibration_trainer") or {}).get("model_convert_pipeline") or {}
    target = get_target(target_name_of(cfg))
    qconfig_params = {**dict(pipeline.get("qconfig_params") or {}), CONFIG_KEY: target.name}
    backend = TorchNativeBackend()
    quantized, _ = backend.prepare_calibration(copy.deepcopy(model), qconfig_params)
    quantized.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        with calibration_mode(quantized):
            for _ in range(calib_inputs):
                quantized({k: torch.randn(v.shape, generator=generator) for k, v in inputs.items()})
        quantized(inputs)  # records each layer's input grid, as commands.fixed_point_model does
    fixed = backend.convert_fixed(quantized)
    opset = int((cfg.get("export") or {}).get("opset", 17))
    out_dir.mkdir(parents=True, exist_ok=True)
    info = export_onnx(fixed, inputs, out_dir / "model.onnx", opset=opset, target=target)
    export_float_onnx(model, inputs, out_dir / "model.float.onnx", opset=opset)
    info.write_json(out_dir / "export.json", stage="calibration (random weights)", config=cfg.name)
    return fixed if return_fixed else model


def int8_share(backend, model_path: Path, feeds: dict[str, np.ndarray], level: int) -> float | None:
    """Share of FLOPs in int8 kernels after onnxruntime optimizes ``model_path`` at ``level``."""
    from hat.deploy.analysis import analyze

    with tempfile.TemporaryDirectory(prefix="hat-bench-latency-") as tmp:
        compiled = backend.compile(model_path, level, Path(tmp) / f"model.opt{level}.onnx")
        return analyze(compiled, exported=model_path, inputs=feeds, opt_level=level).int8_flops_share


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="keypoint")
    parser.add_argument("--config", default="keypoint_efficientnetb0_carfusion-tiny")
    parser.add_argument("--work-dir", type=Path, default=Path("hat-work/demo-keypoint"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (onnxruntime and torch)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs per variant first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="time the deploy model with initial weights, calibrated on random inputs (no trained model needed)",
    )
    parser.add_argument("--calib-inputs", type=int, default=4, help="random inputs that calibrate --random-weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deploy_latency.json")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0 or args.rounds < 1 or args.calib_inputs < 1:
        parser.error("--threads, --runs, --rounds and --calib-inputs must be >= 1, --warmup >= 0")
    checkpoint = args.work_dir / FLOAT_CHECKPOINT
    if not args.random_weights and not checkpoint.is_file():
        print(
            f"{checkpoint} does not exist: run `hat demo {args.task} --work-dir {args.work_dir}` first "
            "(or pass --random-weights to time an untrained, calibrated model)",
            file=sys.stderr,
        )
        raise SystemExit(2)

    from hat import console as hat_console
    from hat.deploy.ort_backend import OnnxRuntimeBackend
    from hat.engine.deploy_model import deploy_inputs
    from hat.plugins import get_host
    from hat.usecases import deploy as commands
    from hat.usecases.stages import load_stage_config

    hat_console.set_quiet(True)
    console = Console(width=None if sys.stdout.isatty() else 120)
    torch.set_num_threads(args.threads)
    host = get_host()
    overrides = [f"data_root={args.work_dir / 'data'}", *args.overrides]
    stage_cfg = load_stage_config(
        args.task, config_ref=args.config, overrides=overrides, work_dir=args.work_dir, host=host
    )
    if args.random_weights:
        export = args.work_dir / "latency-random" / stage_cfg.config.name
        console.print(f"exporting {stage_cfg.config.name} with random weights to {export} ...")
        torch_model = random_weight_export(stage_cfg, host, export, args.calib_inputs, args.seed)
        weights = "random (initial), calibrated on random inputs"
    else:
        export = commands.export_dir(stage_cfg)
        if not (export / "model.onnx").is_file() or not (export / "model.float.onnx").is_file():
            console.print(f"no exported model in {export}: exporting ...")
            commands.export(stage_cfg, host=host)
        torch_model = commands.float_model(stage_cfg, host)
        weights = str(checkpoint)
    int8_path, float_path = export / "model.onnx", export / "model.float.onnx"
    meta_path = export / "export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    shapes = {name: list(t.shape) for name, t in deploy_inputs(stage_cfg.config).items()}
    rng = np.random.default_rng(args.seed)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    torch_inputs = {name: torch.from_numpy(array) for name, array in feeds.items()}

    backend = OnnxRuntimeBackend()
    torch_model.eval()

    def torch_run() -> None:
        with torch.no_grad():
            torch_model(torch_inputs)

    def ort_run(path: Path, level: int) -> Callable[[], None]:
        session = backend.session(path, threads=args.threads, opt_level=level)
        return lambda: session.run(None, feeds)

    variants: list[dict[str, Any]] = [
        {"variant": "torch float eager", "runtime": "torch", "precision": "float", "opt": None, "run": torch_run},
        {
            "variant": "onnxruntime float opt 3",
            "runtime": "onnxruntime",
            "precision": "float",
            "opt": 3,
            "run": ort_run(float_path, 3),
        },
    ]
    for level in range(4):
        variants.append(
            {
                "variant": f"onnxruntime int8 opt {level}",
                "runtime": "onnxruntime",
                "precision": "int8",
                "opt": level,
                "run": ort_run(int8_path, level),
            }
        )

    load_before = os.getloadavg()
    console.print(
        f"timing {len(variants)} variants: {args.runs} runs each in {args.rounds} interleaved rounds, "
        f"{args.threads} thread(s) ..."
    )
    times = time_interleaved(
        {v["variant"]: v["run"] for v in variants}, count=args.runs, rounds=args.rounds, warmup=args.warmup
    )
    for variant in variants:
        variant["times"] = times[variant["variant"]]
    load_after = os.getloadavg()

    from hat.deploy.latency import latency_summary

    rows = []
    for variant in variants:
        summary = latency_summary(np.asarray(variant["times"]), threads=args.threads)
        share = None
        if variant["runtime"] == "onnxruntime":
            path = int8_path if variant["precision"] == "int8" else float_path
            share = int8_share(backend, path, feeds, variant["opt"])
        rows.append(
            {
                "variant": variant["variant"],
                "runtime": variant["runtime"],
                "precision": variant["precision"],
                "opt": variant["opt"],
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()},
                "int8_flops_share": round(share, 4) if share is not None else None,
            }
        )
    reference = next(r for r in rows if r["variant"] == "onnxruntime float opt 3")["median_ms"]
    for row in rows:
        row["speedup_vs_ort_float_opt3"] = round(reference / row["median_ms"], 3)

    table = Table(
        title=f"deploy_latency: {stage_cfg.config.name}, input {shapes}, batch 1, {args.threads} thread(s), "
        f"median of {args.runs} runs after {args.warmup} warm-up, CPU ({os.cpu_count()} cores)"
    )
    for column, justify in (
        ("variant", "left"),
        ("median ms", "right"),
        ("p10 ms", "right"),
        ("p90 ms", "right"),
        ("speed-up vs ort float opt 3", "right"),
        ("int8 FLOPs share", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(
            row["variant"],
            f"{row['median_ms']:.3f}",
            f"{row['p10_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['speedup_vs_ort_float_opt3']:.2f}x",
            f"{row['int8_flops_share']:.1%}" if row["int8_flops_share"] is not None else "-",
        )
    console.print(table)
    int8_opt3 = next(r for r in rows if r["variant"] == "onnxruntime int8 opt 3")
    console.print(
        f"int8 opt 3 vs onnxruntime float opt 3: [bold]{int8_opt3['speedup_vs_ort_float_opt3']:.2f}x[/bold] "
        f"(issue 4's target for conv backbones: >= 2x); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )

    result = {
        "benchmark": "deploy_latency",
        "task": args.task,
        "config": stage_cfg.config.name,
        "weights": weights,
        "export_dir": str(export),
        "export_stage": meta.get("stage"),
        "inputs": shapes,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "timing": "wall time of one batch-1 run, median over interleaved rounds",
        "results": rows,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        **environment(),
    }
    write_result(args.out, result, console)
    return result


if __name__ == "__main__":
    run(main)
