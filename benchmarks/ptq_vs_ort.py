"""Post-training quantization: HAT's calibration vs onnxruntime's ``quantize_static``, side by side.

Both start from the same trained float model (``DIR/float-checkpoint-best.pth.tar`` of
``hat demo keypoint --work-dir DIR``) and see the same calibration data: the first
``--calib-batches`` batches of the config's ``calibration_loader`` (built with
``hat.engine.loader.build_loader`` and the config's seed, the order HAT's calibrator
reads them in).

  HAT      ``stages.train(..., "calibration")`` with ``calibration_steps = --calib-batches``
           and the percentile (``--percentile``) or min_max observer, each in its own work
           dir under ``DIR/ptq/``, then ``commands.export``: its ``model.onnx``. The export
           also writes ``model.float.onnx``, the float model both sides start from.
  ORT      ``onnxruntime.quantization.quant_pre_process`` (its recommended preparation:
           shape inference, BatchNorm folding) on that float ONNX, then ``quantize_static``
           with QuantFormat.QDQ, per_channel=True, weight_type QInt8, activation_type QUInt8
           (and QInt8), calibrate_method MinMax and Percentile (its default 99.999, and
           ``--percentile`` through ``extra_options={"CalibPercentile": ...}``); the
           calibration data reader feeds one sample at a time.

Every model is then measured the same way: the task metric over the validation set
(``OnnxModel`` at opt 3 with the config's ``int_infer_predictor`` post-processing and
metrics), the SQNR of its raw outputs against the float model's on the same samples
(a fidelity figure that does not depend on how good the float model is), latency at
opt 3 with ``--threads`` threads (median of ``--runs``, variants interleaved), and the
share of FLOPs onnxruntime runs in int8 kernels at opt 3. onnxruntime's Percentile
calibrator keeps every intermediate tensor of every calibration sample in memory
(about 7 GB for the tiny keypoint config's 304 samples).

    python benchmarks/ptq_vs_ort.py [--work-dir hat-work/demo-keypoint] [--calib-batches 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import environment, run, write_result
from rich.console import Console
from rich.table import Table

FLOAT_CHECKPOINT = "float-checkpoint-best.pth.tar"


def check_demo_outputs(work_dir: Path, task: str) -> None:
    """Exit 2 with one line if the demo's data or float checkpoint is missing."""
    missing = [p for p in (work_dir / "data", work_dir / FLOAT_CHECKPOINT) if not p.exists()]
    if missing:
        print(f"{missing[0]} does not exist: run `hat demo {task} --work-dir {work_dir}` first", file=sys.stderr)
        raise SystemExit(2)


def observer_overrides(observer: str, percentile: float) -> list[str]:
    kwargs = f"{{percentile: {percentile}}}" if observer == "percentile" else "{}"
    return [
        f"qconfig_calibration.activation_calibration_observer={observer}",
        f"qconfig_calibration.activation_calibration_qkwargs={kwargs}",
    ]


def calibration_samples(stage_cfg, host, num_batches: int, input_map: dict[str, str]) -> list[dict[str, np.ndarray]]:
    """The first ``num_batches`` batches of ``calibration_loader``, split into batch-1 feeds.

    Read as HAT's calibrator reads them: epoch 0's order, then epoch 1's, ... when the
    loader holds fewer than ``num_batches`` batches.
    """
    from hat.engine.loader import build_loader, set_loader_epoch

    cfg = stage_cfg.config
    loader = build_loader(
        cfg["calibration_loader"],
        host.registry,
        seed=int(cfg.get("seed", 0)),
        train=False,
        path="calibration_loader",
        locate=cfg.locate,
    )
    if len(loader) == 0:
        raise SystemExit("the calibration loader is empty")
    samples: list[dict[str, np.ndarray]] = []
    batches, epoch = 0, 0
    while batches < num_batches:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            arrays = {name: torch.as_tensor(batch[key]).float().numpy() for name, key in input_map.items()}
            size = next(iter(arrays.values())).shape[0]
            samples += [{n: np.ascontiguousarray(a[j : j + 1]) for n, a in arrays.items()} for j in range(size)]
            batches += 1
            if batches >= num_batches:
                break
        epoch += 1
    return samples


def ort_quantize(float_onnx: Path, out: Path, samples, *, activation: str, method: str, percentile: float | None):
    """onnxruntime's own static quantization of ``float_onnx`` (already pre-processed)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self):
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(samples)

    extra = {"CalibPercentile": percentile} if percentile is not None else {}
    quantize_static(
        str(float_onnx),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
        extra_options=extra,
    )


def evaluate(
    path: Path, stage_cfg, host, predictor, threads: int
) -> tuple[dict[str, float], int, dict[str, np.ndarray]]:
    """The task metrics of an ONNX model over the validation set (int_infer's loop), the
    number of samples, and the raw network outputs (before post-processing)."""
    from hat.engine.onnx_predictor import OnnxModel
    from hat.usecases.deploy import int_infer_loader

    model = OnnxModel(path, inputs=predictor.inputs, outputs=predictor.outputs, opt_level=3, threads=threads)
    loader = int_infer_loader(stage_cfg, predictor, host)
    metrics = [copy.deepcopy(m) for m in predictor.val_metrics]
    for metric in metrics:
        metric.reset()
    samples = 0
    raw: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        outputs = model(batch)
        for name, value in outputs.items():
            raw.setdefault(name, []).append(value.numpy())
        samples += next(iter(outputs.values())).shape[0]
        if predictor.post_process is not None:
            outputs = predictor.post_process(outputs, batch)
        for metric in metrics:
            metric.update(batch, outputs)
    values: dict[str, float] = {}
    for metric in metrics:
        values.update(metric.compute())
    return values, samples, {name: np.concatenate(parts) for name, parts in raw.items()}


def sqnr_db(reference: dict[str, np.ndarray], quantized: dict[str, np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of the raw outputs vs the float model's, in dB."""
    signal = sum(float(np.sum(reference[k].astype(np.float64) ** 2)) for k in reference)
    noise = sum(float(np.sum((reference[k].astype(np.float64) - quantized[k]) ** 2)) for k in reference)
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="keypoint")
    parser.add_argument("--config", default="keypoint_efficientnetb0_carfusion-tiny")
    parser.add_argument("--work-dir", type=Path, default=Path("hat-work/demo-keypoint"))
    parser.add_argument("--calib-batches", type=int, default=10, help="calibration batches for both quantizers")
    parser.add_argument("--percentile", type=float, default=99.975, help="HAT's percentile (also tried with ORT)")
    parser.add_argument("--no-int8-activations", action="store_true", help="skip ORT's QInt8-activation variants")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency and evaluation")
    parser.add_argument("--runs", type=int, default=100, help="timed latency runs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--verbose", action="store_true", help="show HAT's progress bars and messages")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ptq_vs_ort.json")
    args = parser.parse_args(argv)
    if args.calib_batches < 1 or args.threads < 1 or args.runs < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--calib-batches, --threads, --runs and --rounds must be >= 1, --warmup >= 0")
    check_demo_outputs(args.work_dir, args.task)

    from onnxruntime.quantization import quant_pre_process

    from hat import console as hat_console
    from hat.deploy.analysis import analyze
    from hat.deploy.ort_backend import OnnxRuntimeBackend
    from hat.engine.deploy_model import deploy_inputs
    from hat.plugins import get_host
    from hat.usecases import deploy as commands
    from hat.usecases import stages

    hat_console.set_quiet(not args.verbose)
    hat_console.out.quiet = not args.verbose
    if not args.verbose:
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns about pre-processing and more
    console = Console(width=None if sys.stdout.isatty() else 140)
    host = get_host()
    root = args.work_dir / "ptq"
    base = [f"data_root={args.work_dir / 'data'}", f"calibration_steps={args.calib_batches}", *args.overrides]
    started = time.perf_counter()

    def stage_config(run_dir: Path, extra=()) -> stages.StageConfig:
        return stages.load_stage_config(
            args.task, config_ref=args.config, overrides=[*base, *extra], work_dir=run_dir, host=host
        )

    models: list[dict[str, Any]] = []
    # -- HAT: calibrate (the calibrator reads the first calib-batches batches) and export
    for observer in ("percentile", "min_max"):
        run_dir = root / f"hat-{observer}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        shutil.copy2(args.work_dir / FLOAT_CHECKPOINT, run_dir / FLOAT_CHECKPOINT)
        stage_cfg = stage_config(run_dir, observer_overrides(observer, args.percentile))
        console.print(f"HAT calibration ({observer}) + export ...")
        start = time.perf_counter()
        stages.train(stage_cfg, "calibration", host=host)  # includes the calibrator's validation pass
        calibrate_s = time.perf_counter() - start
        exported = commands.export(stage_cfg, "calibration", host=host)
        label = f"HAT percentile {args.percentile}" if observer == "percentile" else "HAT min_max"
        models.append(
            {
                "method": label,
                "quantizer": "hat",
                "activations": "uint8 after ReLU, else int8",
                "path": exported.onnx_path,
                "calibrate_s": round(calibrate_s, 1),
                "export_s": round(time.perf_counter() - start - calibrate_s, 1),
            }
        )
    stage_cfg = stage_config(root / "hat-percentile")
    float_onnx = root / "hat-percentile" / "export" / "model.float.onnx"
    demo_float = args.work_dir / "export" / "model.float.onnx"
    same_as_demo = demo_float.is_file() and filecmp.cmp(float_onnx, demo_float, shallow=False)
    models.insert(0, {"method": "float (onnxruntime)", "quantizer": None, "activations": "float32", "path": float_onnx})

    # -- onnxruntime: pre-process, then quantize_static on the same calibration samples
    predictor = host.registry.build(
        stage_cfg.config["int_infer_predictor"], path="int_infer_predictor", locate=stage_cfg.config.locate
    )
    input_names = list(deploy_inputs(stage_cfg.config))
    input_map = {name: dict(predictor.inputs or {}).get(name, name) for name in input_names}
    samples = calibration_samples(stage_cfg, host, args.calib_batches, input_map)
    calib_samples = len(samples)
    console.print(f"{calib_samples} calibration samples ({args.calib_batches} batches)")
    ort_dir = root / "ort"
    if ort_dir.exists():
        shutil.rmtree(ort_dir)
    ort_dir.mkdir(parents=True)
    prepared = ort_dir / "model.float.pre.onnx"
    quant_pre_process(str(float_onnx), str(prepared))
    ort_variants = [("uint8", "minmax", None), ("uint8", "percentile", None), ("uint8", "percentile", args.percentile)]
    if not args.no_int8_activations:
        ort_variants += [("int8", "minmax", None), ("int8", "percentile", args.percentile)]
    for activation, method, percentile in ort_variants:
        if method == "minmax":
            label = f"ORT MinMax {activation}"
        else:
            label = f"ORT Percentile {percentile if percentile is not None else '99.999 (default)'} {activation}"
        name = f"model.{activation}.{method}{'' if percentile is None else percentile}.onnx"
        console.print(f"{label} ...")
        start = time.perf_counter()
        entry = {"method": label, "quantizer": "onnxruntime", "activations": activation, "path": ort_dir / name}
        try:
            ort_quantize(prepared, ort_dir / name, samples, activation=activation, method=method, percentile=percentile)
        except Exception as exc:  # report and go on: one variant failing must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            console.print(f"[yellow]{label} failed: {entry['error']}[/yellow]")
        entry["quantize_s"] = round(time.perf_counter() - start, 1)
        models.append(entry)
    del samples

    # -- measure every model the same way
    backend = OnnxRuntimeBackend()
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.standard_normal(list(t.shape)).astype(np.float32)
        for name, t in deploy_inputs(stage_cfg.config).items()
    }
    runnable = [m for m in models if "error" not in m]
    for model in runnable:
        console.print(f"evaluating {model['method']} ...")
        model["metrics"], model["samples"], raw = evaluate(model["path"], stage_cfg, host, predictor, args.threads)
        if model is runnable[0]:
            float_raw = raw  # the float model comes first
        model["output_sqnr_db"] = round(sqnr_db(float_raw, raw), 2) if model is not runnable[0] else None
        with tempfile.TemporaryDirectory(prefix="hat-bench-ptq-") as tmp:
            compiled = backend.compile(model["path"], 3, Path(tmp) / "model.opt3.onnx")
            analysis = analyze(compiled, exported=model["path"], inputs=feeds, opt_level=3)
            model["int8_flops_share"] = analysis.int8_flops_share
            ops: dict[str, int] = {}
            for node in analysis.nodes:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            model["opt3_op_types"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
        model["session"] = backend.session(model["path"], threads=args.threads, opt_level=3)
        model["times"] = []
        for _ in range(args.warmup):
            model["session"].run(None, feeds)
    console.print(f"timing {len(runnable)} models at opt 3, {args.threads} thread(s) ...")
    per_round = [args.runs // args.rounds + (1 if i < args.runs % args.rounds else 0) for i in range(args.rounds)]
    for count in per_round:
        for model in runnable:
            session = model["session"]
            for _ in range(count):
                start = time.perf_counter()
                session.run(None, feeds)
                model["times"].append((time.perf_counter() - start) * 1000.0)

    from hat.deploy.latency import latency_summary

    metric_names = list(models[0]["metrics"])
    headline = metric_names[0]
    float_row = models[0]
    rows = []
    for model in models:
        row = {k: (str(v) if isinstance(v, Path) else v) for k, v in model.items() if k not in ("session", "times")}
        if "times" in model:
            summary = latency_summary(np.asarray(model["times"]), threads=args.threads)
            row["latency"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
            reference = float_row["metrics"][headline]
            row["headline_vs_float"] = round(model["metrics"][headline] / reference, 4) if reference else None
        rows.append(row)
    float_ms = rows[0]["latency"]["median_ms"]
    for row in rows:
        if "latency" in row:
            row["speedup_vs_float"] = round(float_ms / row["latency"]["median_ms"], 3)

    table = Table(
        title=f"ptq_vs_ort: {args.task} ({args.config}), the same {args.calib_batches} calibration batches for "
        f"both, {float_row['samples']} validation samples, latency at opt 3 with {args.threads} thread(s)"
    )
    for column, justify in (
        ("method", "left"),
        *((name, "right") for name in metric_names),
        (f"{headline} / float", "right"),
        ("output SQNR dB", "right"),
        ("latency ms", "right"),
        ("speed-up vs float", "right"),
        ("int8 FLOPs share", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], *("-" for _ in metric_names), "failed", "-", "-", "-", "-")
            continue
        table.add_row(
            row["method"],
            *(f"{row['metrics'][m]:.4f}" for m in metric_names),
            f"{row['headline_vs_float']:.4f}" if row["headline_vs_float"] is not None else "-",
            f"{row['output_sqnr_db']:.1f}" if row.get("output_sqnr_db") is not None else "-",
            f"{row['latency']['median_ms']:.3f}",
            f"{row['speedup_vs_float']:.2f}x" if row.get("speedup_vs_float") else "-",
            f"{row['int8_flops_share']:.1%}" if row.get("int8_flops_share") is not None else "-",
        )
    console.print(table)
    hat_best = max(
        (r for r in rows if r.get("quantizer") == "hat" and "metrics" in r), key=lambda r: r["metrics"][headline]
    )
    ort_rows = [r for r in rows if r.get("quantizer") == "onnxruntime" and "metrics" in r]
    if ort_rows:
        ort_best = max(ort_rows, key=lambda r: r["metrics"][headline])
        console.print(
            f"best HAT ({hat_best['method']}) {headline} {hat_best['metrics'][headline]:.4f} vs best ORT "
            f"({ort_best['method']}) {ort_best['metrics'][headline]:.4f}"
        )

    result = {
        "benchmark": "ptq_vs_ort",
        "task": args.task,
        "config": args.config,
        "work_dir": str(args.work_dir),
        "float_checkpoint": str(args.work_dir / FLOAT_CHECKPOINT),
        "float_onnx": str(float_onnx),
        "float_onnx_same_as_demo_export": same_as_demo,
        "calib_batches": args.calib_batches,
        "calib_samples": calib_samples,
        "hat_percentile": args.percentile,
        "ort_settings": "quant_pre_process; quantize_static QDQ, per_channel, weights QInt8, reduce_range False",
        "threads": args.threads,
        "runs": args.runs,
        "headline_metric": headline,
        "results": rows,
        "wall_s": round(time.perf_counter() - started, 1),
        **environment(),
    }
    write_result(args.out, result, console)
    return result


if __name__ == "__main__":
    run(main)
