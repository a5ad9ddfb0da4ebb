"""Choosing the deploy target: each way to keep int8 exact without VNNI, measured side by side.

onnxruntime's x86 u8 x s8 kernels without VNNI add pairs of products in a saturating
16-bit lane (see ``hat.quant.target``). Four ways to deploy, one row each:

  portable     int8 weights on [-64, 64] for dense kernels (depthwise full), uint8
               activations: HAT's default (``deploy_target: portable``)
  vnni         full-range int8 weights [-127, 127], uint8 activations
               (``deploy_target: vnni``): exact only with VNNI
  u8u8         the vnni model with its weights written as uint8 (code + 128, zero point
               128: the same values), which sends onnxruntime to its U8U8 kernels
  s8_acts      the vnni model exported with int8 activations (``finalize_qdq(...,
               activations="int8")``: the same values)

For each: the metric after calibration and after QAT (torch simulation of the target),
the metric of the int8 ONNX model in onnxruntime at opt 3 (``int_infer``), the share of
output elements within one quantization step of the torch fixed-point model, and int8
latency at opt 3 against onnxruntime float at opt 3, timed in interleaved rounds.

Trained mode reuses ``hat demo TASK --work-dir DIR`` (its data and float checkpoint) and
writes only under ``DIR/target-choice/``. ``--random-weights`` needs no trained model:
the config's deploy model with initial weights, calibrated on random inputs, for the
reference input sizes (latency and agreement only; there is no metric to measure).

    python benchmarks/target_choice.py --work-dir DIR [--task keypoint --config keypoint_efficientnetb0_carfusion-tiny]
    python benchmarks/target_choice.py --random-weights --config keypoint_efficientnetb0_carfusion
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _common import environment, run, time_interleaved, write_result
from deploy_latency import int8_share, random_weight_export
from quant_fidelity import FLOAT_CHECKPOINT, check_demo_outputs, fresh_run_dir
from rich.console import Console
from rich.table import Table

VARIANTS = ("portable", "vnni", "u8u8", "s8_acts")
#: The quantized model each variant is derived from.
SOURCE = {"portable": "portable", "vnni": "vnni", "u8u8": "vnni", "s8_acts": "vnni"}


def weights_to_uint8(model: onnx.ModelProto) -> int:
    """Rewrite every int8 weight behind a DequantizeLinear of a Conv/MatMul/Gemm as uint8 + 128.

    The values are unchanged (``(q + 128) - 128``); onnxruntime then picks its U8U8 kernels,
    which widen both operands to 16 bits and cannot saturate. Returns the weights rewritten.
    """
    from onnx import numpy_helper

    from hat.deploy.onnx_graph import GraphIndex
    from hat.deploy.qdq_finalize import weight_site

    index = GraphIndex(model.graph)
    rewritten = 0
    for node in model.graph.node:
        site = weight_site(node)
        dq = index.dequantized_from(node.input[1]) if site is not None and len(node.input) > 1 else None
        if dq is None or dq.input[0] not in index.initializers or len(dq.input) < 3:
            continue
        codes, zero = index.constant(dq.input[0]), index.constant(dq.input[2])
        if codes is None or codes.dtype != np.int8 or zero is None or np.any(zero != 0):
            continue
        shifted = (codes.astype(np.int16) + 128).astype(np.uint8)
        index.initializers[dq.input[0]].CopyFrom(numpy_helper.from_array(shifted, dq.input[0]))
        index.initializers[dq.input[2]].CopyFrom(
            numpy_helper.from_array(np.full(zero.shape, 128, np.uint8), dq.input[2])
        )
        rewritten += 1
    return rewritten


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="keypoint")
    parser.add_argument("--config", default="keypoint_efficientnetb0_carfusion-tiny")
    parser.add_argument("--work-dir", type=Path, default=Path("hat-work/demo-keypoint"))
    parser.add_argument("--random-weights", action="store_true", help="initial weights at the config's input size")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--qat-steps", type=int, default=20, help="QAT steps after calibration (trained mode)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per variant (median reported)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into")
    parser.add_argument("--agreement-inputs", type=int, default=4, help="random inputs for agreement (random mode)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default results/target_choice-*.json)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants must name some of {', '.join(VARIANTS)}")
    if not args.random_weights:
        check_demo_outputs(args.work_dir, args.task)

    from hat import console as hat_console
    from hat.deploy.int8_kernels import probe_int8_kernels
    from hat.deploy.onnx_export import export_onnx
    from hat.deploy.ort_backend import OnnxRuntimeBackend
    from hat.plugins import get_host
    from hat.quant.target import get_target
    from hat.usecases import deploy as commands
    from hat.usecases import stages

    hat_console.set_quiet(True)
    hat_console.out.quiet = True
    console = Console(width=None if sys.stdout.isatty() else 140)
    host = get_host()
    backend = OnnxRuntimeBackend()
    root = args.work_dir / ("target-choice-random" if args.random_weights else "target-choice")
    base = [f"data_root={args.work_dir / 'data'}", *args.overrides]

    def stage_config(run_dir: Path, target: str, extra: list[str] = ()) -> stages.StageConfig:
        return stages.load_stage_config(
            args.task,
            config_ref=args.config,
            overrides=[*base, f"deploy_target={target}", *extra],
            work_dir=run_dir,
            host=host,
        )

    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    dirs: dict[str, Path] = {}
    float_metrics: dict[str, float] | None = None
    # -- the quantized models: calibration (+ QAT) per target, or random weights -------------
    for target in sorted({SOURCE[v] for v in variants}, key=VARIANTS.index):
        run_dir = root / target
        if args.random_weights:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            cfg = stage_config(run_dir, target)
            console.print(f"{target}: random weights, calibrated on random inputs ...")
            random_weight_export(cfg, host, run_dir / "export", calib_inputs=4, seed=0)
            rows[target] = {}
        else:
            fresh_run_dir(run_dir, args.work_dir, FLOAT_CHECKPOINT)
            cfg = stage_config(run_dir, target, [f"qat_trainer.num_steps={args.qat_steps}"])
            if float_metrics is None:
                float_metrics = stages.predict(cfg, "float", host=host)["metrics"]
            console.print(f"{target}: calibration, {args.qat_steps} QAT steps, export ...")
            stages.train(cfg, "calibration", host=host)
            calibration = stages.predict(cfg, "calibration", host=host)["metrics"]
            stages.train(cfg, "qat", host=host)
            qat = stages.predict(cfg, "qat", host=host)["metrics"]
            commands.export(cfg, "qat", host=host)
            rows[target] = {"calibration": calibration, "qat": qat}
        dirs[target] = run_dir
    # -- the derived exports: same values, other onnxruntime kernels ---------------------------
    for variant in variants:
        source = SOURCE[variant]
        if variant == source:
            continue
        run_dir = root / variant
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(dirs[source], run_dir)
        model_path = run_dir / "export" / "model.onnx"
        if variant == "u8u8":
            proto = onnx.load(str(model_path))
            count = weights_to_uint8(proto)
            onnx.save(proto, str(model_path))
            console.print(f"u8u8: {count} weights rewritten as uint8")
        else:  # s8_acts: export the same fixed-point model with int8 activations
            cfg = stage_config(run_dir, source)
            if args.random_weights:
                fixed = _random_fixed(cfg, host)
                inputs = _inputs(cfg)
            else:
                fixed, inputs, _ = commands.fixed_point_model(cfg, "qat", host)
            meta = json.loads((run_dir / "export" / "export.json").read_text())
            info = export_onnx(fixed, inputs, model_path, activations="int8", target=get_target(source))
            info.write_json(run_dir / "export" / "export.json", **{k: meta[k] for k in meta if k not in info.to_dict()})
        rows[variant] = dict(rows[source])
        dirs[variant] = run_dir
    # -- agreement and the int_infer metric ------------------------------------------------------
    for variant in variants:
        cfg = stage_config(dirs[variant], SOURCE[variant])
        if args.random_weights:
            rows[variant]["within_one_step"] = _random_agreement(
                cfg, host, backend, dirs[variant], args.agreement_inputs
            )
        else:
            validated = commands.validate(cfg, opt=3, host=host)
            rows[variant]["int_infer"] = validated["metrics"]["onnxruntime"]
            rows[variant]["torch_fixed_point"] = validated["metrics"]["torch_fixed_point"]
            rows[variant]["within_one_step"] = validated["within_one_step"]
    # -- latency, interleaved: float once, then every variant's int8 ----------------------------
    first = dirs[variants[0]] / "export"
    meta = json.loads((first / "export.json").read_text())
    rng = np.random.default_rng(0)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in meta["inputs"]}

    def session_run(path: Path) -> Callable[[], None]:
        session = backend.session(path, threads=1, opt_level=3)
        return lambda: session.run(None, feeds)

    timed = {"float": session_run(first / "model.float.onnx")}
    timed.update({v: session_run(dirs[v] / "export" / "model.onnx") for v in variants})
    times = time_interleaved(timed, count=args.runs, rounds=args.rounds, warmup=10)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for variant in variants:
        rows[variant]["int8_ms"] = round(medians[variant], 4)
        rows[variant]["float_ms"] = round(medians["float"], 4)
        rows[variant]["speedup"] = round(medians["float"] / medians[variant], 3)
        share = int8_share(backend, dirs[variant] / "export" / "model.onnx", feeds, 3)
        rows[variant]["int8_flops_share"] = round(share or 0.0, 4)

    _print(console, args, variants, rows, float_metrics, medians, probe_int8_kernels())
    result = {
        "benchmark": "target_choice",
        "task": args.task,
        "config": args.config,
        "mode": "random weights" if args.random_weights else f"trained ({args.work_dir})",
        "inputs": {i["name"]: i["shape"] for i in meta["inputs"]},
        "float": float_metrics,
        "results": rows,
        "latency_runs": args.runs,
        "wall_s": round(time.perf_counter() - started, 1),
        **environment(),
    }
    name = f"target_choice-{args.config}{'-random' if args.random_weights else ''}.json"
    write_result(args.out or Path(__file__).parent / "results" / name, result, console)
    return result


def _inputs(cfg) -> dict[str, torch.Tensor]:
    from hat.engine.deploy_model import deploy_inputs

    return deploy_inputs(cfg.config)


_FIXED: dict[str, torch.nn.Module] = {}


def _random_fixed(cfg, host) -> torch.nn.Module:
    """The random-weight fixed-point model again (same seed: the same weights and scales),
    built once per target: calibrating a reference-size model is the slow part."""
    import tempfile

    from hat.quant.target import target_name_of

    target = target_name_of(cfg.config)
    if target not in _FIXED:
        with tempfile.TemporaryDirectory(prefix="hat-target-") as tmp:
            _FIXED[target] = random_weight_export(cfg, host, Path(tmp), calib_inputs=4, seed=0, return_fixed=True)
    return _FIXED[target]


def _random_agreement(cfg, host, backend, run_dir: Path, count: int) -> dict[str, float]:
    """Share of output elements within one step, ORT opt 3 vs torch fixed point, on random inputs."""
    from hat.deploy.compare import share_within_one_step
    from hat.usecases.deploy import as_named

    fixed = _random_fixed(cfg, host)
    meta = json.loads((run_dir / "export" / "export.json").read_text())
    session = backend.session(run_dir / "export" / "model.onnx", threads=1, opt_level=3)
    generator = torch.Generator().manual_seed(123)
    agree: dict[str, list[float]] = {o["name"]: [] for o in meta["outputs"]}
    for _ in range(count):
        inputs = {i["name"]: torch.randn(i["shape"], generator=generator) for i in meta["inputs"]}
        with torch.no_grad():
            reference = fixed(inputs)
        named = as_named(reference, list(agree))
        got = backend.run(session, {k: v.numpy() for k, v in inputs.items()})
        for out in meta["outputs"]:
            agree[out["name"]].append(share_within_one_step(named[out["name"]].numpy(), got[out["name"]], out["scale"]))
    return {name: float(np.mean(values)) for name, values in agree.items()}


def _print(console, args, variants, rows, float_metrics, medians, kernels) -> None:
    headline = next(iter(float_metrics)) if float_metrics else None
    table = Table(
        title=f"target_choice: {args.config} ({'random weights' if args.random_weights else 'trained'}), "
        f"opt 3, 1 thread; int8 kernels here: {kernels.isa}"
    )
    columns = ["variant"]
    if headline:
        columns += [f"calibration {headline}", f"qat {headline}", f"int_infer {headline}", "int_infer / float"]
    columns += ["min within 1 step", "int8 ms", "float ms", "speed-up", "int8 FLOPs"]
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant in variants:
        row = rows[variant]
        cells = [variant]
        if headline:
            cells += [
                f"{row['calibration'][headline]:.4f}",
                f"{row['qat'][headline]:.4f}",
                f"{row['int_infer'][headline]:.4f}",
                f"{row['int_infer'][headline] / float_metrics[headline]:.4f}",
            ]
        cells += [
            f"{min(row['within_one_step'].values()):.2%}",
            f"{row['int8_ms']:.3f}",
            f"{row['float_ms']:.3f}",
            f"{row['speedup']:.2f}x",
            f"{row['int8_flops_share']:.0%}",
        ]
        table.add_row(*cells)
    console.print(table)
    if headline:
        console.print(f"float {headline}: {float_metrics[headline]:.4f}")


if __name__ == "__main__":
    run(main)
