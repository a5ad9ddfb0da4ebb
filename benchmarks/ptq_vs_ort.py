"""Post-training quantization: HAT's calibration vs onnxruntime's ``quantize_static`` and NNCF's ``quantize``.

All start from the same trained float model (``DIR/float-checkpoint-best.pth.tar`` of
``hat demo TASK --work-dir DIR``) and see the same calibration data: the batches HAT's
calibrator reads, i.e. the first ``calibration_trainer.num_steps`` (``--calib-batches``)
batches of ``calibration_trainer.data_loader``, built as the calibrator builds it
(``hat.engine.loader.build_loader`` with the config's seed and ``train=True``) and read in
its order (epoch 0's, then epoch 1's, ... when the loader holds fewer batches), split into
batch-1 feeds for the peers.

  HAT      ``stages.train(..., "calibration")`` with the percentile (``--percentile``) or
           min_max observer, each in its own work dir under ``DIR/ptq/``, then
           ``commands.export``: its ``model.onnx``. The export also writes
           ``model.float.onnx``, the float model the peers start from. ``--set`` values reach
           this side (e.g. ``--set deploy_target=vnni``).
  ORT      ``onnxruntime.quantization.quant_pre_process`` (its recommended preparation:
           shape inference, BatchNorm folding) on that float ONNX, then ``quantize_static``
           with QuantFormat.QDQ, per_channel=True, weight_type QInt8, activation_type QUInt8
           (and QInt8), calibrate_method MinMax and Percentile (its default 99.999, and
           ``--percentile`` through ``extra_options={"CalibPercentile": ...}``); the
           calibration data reader feeds one sample at a time.
  NNCF     ``nncf.quantize`` (ONNX backend) on the same float ONNX, with an ``nncf.Dataset``
           over the same samples and ``subset_size`` = their count (NNCF's default, 300,
           would drop or repeat none only by chance): its default (preset performance:
           symmetric per-channel weights, symmetric activations, as HAT; mean of per-sample
           min/max ranges; fast bias correction), preset mixed (asymmetric activations, as
           ORT), and performance with global min/max ranges and no bias correction (HAT's
           min_max observer's ranges). A benchmark-only dependency:
           ``pip install -c constraints.txt -r benchmarks/requirements.txt``; without it the
           NNCF rows are skipped with a note (``--peers nncf`` alone then exits 2).

Every model is then measured the same way: the task metric over the validation set
(``OnnxModel`` at opt 3 with the config's ``int_infer_predictor`` post-processing and
metrics), the SQNR of its raw outputs against the float model's on the same samples
(a fidelity figure that does not depend on how good the float model is), latency at
opt 3 with ``--threads`` threads (median of ``--runs``, variants interleaved), and the
share of FLOPs onnxruntime runs in int8 kernels at opt 3. onnxruntime's Percentile
calibrator keeps every intermediate tensor of every calibration sample in memory
(about 7 GB for the tiny keypoint config's 320 samples).

    python benchmarks/ptq_vs_ort.py --work-dir DIR [--task fcos3d] [--calib-batches 10] [--peers ort,nncf]

``--task`` defaults to the task that made DIR, ``--config`` to that task's demo config,
with the demo's data (and raw-data) keys pointed into DIR, as ``hat demo`` set them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import filecmp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import environment, run, time_interleaved, write_result
from onnxruntime.quantization import CalibrationDataReader
from quant_fidelity import FLOAT_CHECKPOINT, check_demo_outputs, fresh_run_dir, observer_overrides
from rich.console import Console
from rich.table import Table

PEERS = ("ort", "nncf")
NNCF_INSTALL = "pip install -c constraints.txt -r benchmarks/requirements.txt"
#: HAT's variants: an observer, ``+bc`` for bias correction at calibration
#: (``qconfig_calibration.bias_correction``). The first one's float ONNX is the peers' input.
HAT_VARIANTS = ("percentile", "min_max", "min_max+bc", "mse+bc")
HAT_OBSERVER_NAMES = ("percentile", "min_max", "mse")


def hat_variant(name: str, percentile: float) -> tuple[str, list[str]]:
    """(label, ``--set`` overrides) for a variant such as ``min_max+bc``."""
    observer, _, extra = name.partition("+")
    if observer not in HAT_OBSERVER_NAMES or extra not in ("", "bc"):
        raise SystemExit(f"unknown HAT variant {name!r}: an observer of {HAT_OBSERVER_NAMES}, optionally +bc")
    label = f"HAT percentile {percentile}" if observer == "percentile" else f"HAT {observer}"
    overrides = observer_overrides(observer, percentile)
    if extra:
        label += " + bias correction"
        overrides.append("qconfig_calibration.bias_correction=true")
    return label, overrides


Sample = dict[str, np.ndarray]


# -- what every quantizer is given: the config, and the calibrator's samples --------------------


def default_task(work_dir: Path) -> str:
    """The task that made ``work_dir`` (its remembered config), else keypoint."""
    from hat import workdir_config

    remembered = workdir_config.recall(work_dir)
    return remembered.task if remembered is not None else "keypoint"


def demo_config(host, task: str, work_dir: Path, config: str | None) -> tuple[str, list[str]]:
    """The config ref and ``--set`` values ``hat demo TASK --work-dir DIR`` ran with.

    The task's demo recipe names its tiny config and the keys for the packed data (and
    the raw dataset, for fcos3d's nuScenes devkit metric); they point into DIR as the
    demo set them, so ``--task fcos3d`` needs no ``--set nuscenes_root=...``.
    """
    from hat.errors import UserError
    from hat.workdir import DEMO_DATA_DIR, DEMO_RAW_DIR

    recipe = host.task(task).demo
    if recipe is None:
        raise UserError(f"task {task!r} has no demo, so there is no demo work dir to start from")
    settings = [f"{recipe.data_root_key}={work_dir / DEMO_DATA_DIR}", *recipe.overrides]
    if recipe.raw_root_key is not None:
        settings.append(f"{recipe.raw_root_key}={work_dir / DEMO_RAW_DIR}")
    return config or recipe.config, settings


def calibration_samples(stage_cfg, host, input_map: Mapping[str, str]) -> list[Sample]:
    """The batches HAT's calibrator feeds its model, split into batch-1 feeds for the peers.

    Built as ``Calibrator.fit`` builds them: ``calibration_trainer.data_loader`` through
    ``build_loader`` with the config's seed and ``train=True`` (a loader without an explicit
    ``shuffle`` is shuffled, as for training), the first ``calibration_trainer.num_steps``
    batches, epoch 0's order then epoch 1's when the loader holds fewer. ``input_map``: ONNX
    input name -> batch key. tests/benchmarks/test_ptq_vs_ort.py checks the samples against
    what the calibrator reads.
    """
    from hat.engine.loader import build_loader, set_loader_epoch
    from hat.errors import UserError

    cfg = stage_cfg.config
    trainer = cfg["calibration_trainer"]
    num_steps = int(trainer["num_steps"])
    loader = build_loader(
        trainer["data_loader"],
        host.registry,
        seed=int(cfg.get("seed", 0)),
        train=True,
        path="calibration_trainer.data_loader",
        locate=cfg.locate,
    )
    if len(loader) == 0:
        raise UserError("the calibration loader is empty", where=cfg.locate("calibration_trainer.data_loader"))
    samples: list[Sample] = []
    steps, epoch = 0, 0
    while steps < num_steps:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            for sub in batch if isinstance(batch, list) else [batch]:  # MultiBatchProcessor's sub-batches
                arrays = {name: torch.as_tensor(sub[key]).float().numpy() for name, key in input_map.items()}
                size = next(iter(arrays.values())).shape[0]
                samples += [{n: np.ascontiguousarray(a[j : j + 1]) for n, a in arrays.items()} for j in range(size)]
            steps += 1
            if steps >= num_steps:
                break
        epoch += 1
    return samples


# -- the HAT side ---------------------------------------------------------------------------------


def hat_quantize(stage_config: Callable[..., Any], run_dir: Path, work_dir: Path, extra: Sequence[str], host) -> dict:
    """Calibrate from the demo's float checkpoint in ``run_dir`` and export; timings and the int8 ONNX.

    ``stage_config(run_dir, extra)`` loads the config with the benchmark's overrides (the
    user's ``--set`` among them) and ``extra`` on top: an observer, or any other HAT option.
    """
    from hat.usecases import deploy as commands
    from hat.usecases import stages

    fresh_run_dir(run_dir, work_dir, FLOAT_CHECKPOINT)
    stage_cfg = stage_config(run_dir, extra)
    start = time.perf_counter()
    stages.train(stage_cfg, "calibration", host=host)  # includes the calibrator's validation pass
    calibrate_s = time.perf_counter() - start
    exported = commands.export(stage_cfg, "calibration", host=host)
    return {
        "quantizer": "hat",
        "path": exported.onnx_path,
        "calibrate_s": round(calibrate_s, 1),
        "export_s": round(time.perf_counter() - start - calibrate_s, 1),
    }


# -- onnxruntime ----------------------------------------------------------------------------------


class SampleReader(CalibrationDataReader):
    """onnxruntime's calibration data reader over the samples, one feed per ``get_next``, in order."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples
        self.rewind()

    def get_next(self) -> Sample | None:
        return next(self.items, None)

    def rewind(self) -> None:
        self.items: Iterator[Sample] = iter(self.samples)


def ort_quantize(
    float_onnx: Path, out: Path, samples: Sequence[Sample], *, activation: str, method: str, percentile: float | None
) -> None:
    """onnxruntime's own static quantization of ``float_onnx`` (already pre-processed)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"CalibPercentile": percentile} if percentile is not None else {}
    quantize_static(
        str(float_onnx),
        str(out),
        SampleReader(samples),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
        extra_options=extra,
    )


def ort_variants(percentile: float, int8_activations: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, ``ort_quantize`` keywords) of every onnxruntime row."""
    chosen = [("uint8", "minmax", None), ("uint8", "percentile", None), ("uint8", "percentile", percentile)]
    if int8_activations:
        chosen += [("int8", "minmax", None), ("int8", "percentile", percentile)]
    variants = []
    for activation, method, value in chosen:
        if method == "minmax":
            label = f"ORT MinMax {activation}"
        else:
            label = f"ORT Percentile {value if value is not None else '99.999 (default)'} {activation}"
        variants.append((label, {"activation": activation, "method": method, "percentile": value}))
    return variants


# -- NNCF -----------------------------------------------------------------------------------------
# What this relies on (NNCF's docs, "Basic Quantization Flow" for ONNX, docs.openvino.ai, and the
# docstrings of nncf 3.4's nncf.quantize / nncf.Dataset / nncf.quantization.range_estimator):
# - nncf.quantize(onnx.ModelProto, nncf.Dataset, ...) returns a QDQ onnx.ModelProto;
# - an nncf.Dataset item is passed to the model as-is when no transform function is given, and
#   the ONNX backend runs it with onnxruntime's InferenceSession.run(outputs, item): an item is
#   a feed dict, so the samples need no transform;
# - statistics are collected over the first `subset_size` items (default 300): set to the
#   sample count so NNCF sees exactly what HAT and ORT see;
# - preset None means performance for CNNs (symmetric weights and activations); mixed makes
#   activations asymmetric; per-tensor activation ranges default to the mean over samples of
#   each sample's min and max (RangeEstimatorParametersSet.MEAN_MINMAX), MINMAX takes the
#   global ones; fast bias correction runs by default (AdvancedQuantizationParameters
#   .disable_bias_correction turns it off).


def nncf_variants() -> list[tuple[str, dict[str, Any]]]:
    """(label, ``nncf.quantize`` keywords) of every NNCF row."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    hat_like = AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX, disable_bias_correction=True
    )
    return [
        ("NNCF default (performance)", {}),
        ("NNCF mixed", {"preset": nncf.QuantizationPreset.MIXED}),
        ("NNCF performance, global min/max, no BC", {"advanced_parameters": hat_like}),
    ]


def nncf_dataset(samples: Sequence[Sample]):
    """The samples as an ``nncf.Dataset``: each item is one feed dict, in the same order."""
    import nncf

    return nncf.Dataset(list(samples))


def nncf_quantize(float_onnx: Path, out: Path, samples: Sequence[Sample], **options: Any) -> None:
    """NNCF's post-training quantization of ``float_onnx`` on every sample (``subset_size`` = count)."""
    import nncf
    import onnx

    quantized = nncf.quantize(onnx.load(str(float_onnx)), nncf_dataset(samples), subset_size=len(samples), **options)
    onnx.save(quantized, str(out))


def choose_peers(requested: str | None) -> tuple[list[str], list[str]]:
    """The peers to run and a note for each one skipped.

    NNCF is a benchmark-only dependency: missing, its rows are skipped with a note when it
    was only a default, and the run stops (exit 2) when ``--peers`` asked for it by name.
    """
    from hat.errors import UserError

    names = list(PEERS) if requested is None else [p.strip() for p in requested.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown or not names:
        raise UserError(
            f"--peers: unknown peer {unknown[0]!r}" if unknown else "--peers is empty",
            hint=f"choose from {', '.join(PEERS)}",
        )
    notes = []
    if "nncf" in names and not _has_nncf():
        if requested is not None:
            raise UserError("--peers asks for nncf, which is not installed", hint=f"install it: {NNCF_INSTALL}")
        names.remove("nncf")
        notes.append(f"nncf is not installed: the NNCF rows are skipped ({NNCF_INSTALL})")
    return names, notes


def _has_nncf() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nncf") is not None
    except ValueError:  # sys.modules["nncf"] is None: made unimportable on purpose
        return False


def run_quantizer(entry: dict[str, Any], quantize: Callable[[], None], console: Console) -> dict[str, Any]:
    """Run one peer's quantization into ``entry["path"]``; a failure is recorded, not raised.

    One variant failing (an unsupported op, memory) must not hide the others.
    """
    console.print(f"{entry['method']} ...")
    start = time.perf_counter()
    try:
        quantize()
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[yellow]{entry['method']} failed: {entry['error']}[/yellow]")
    entry["quantize_s"] = round(time.perf_counter() - start, 1)
    return entry


# -- measuring ------------------------------------------------------------------------------------


def activation_quantizers(path: Path) -> dict[str, int]:
    """How many activation QuantizeLinear nodes of each output type (uint8, int8) the model has."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue  # weights quantized in the graph are not activations
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        kind = onnx.helper.tensor_dtype_to_np_dtype(zero_point.data_type).name if zero_point is not None else "uint8"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


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


def sqnr_db(reference: Mapping[str, np.ndarray], quantized: Mapping[str, np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of the raw outputs vs the float model's, in dB."""
    signal = sum(float(np.sum(reference[k].astype(np.float64) ** 2)) for k in reference)
    noise = sum(float(np.sum((reference[k].astype(np.float64) - quantized[k]) ** 2)) for k in reference)
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=None, help="default: the task that made --work-dir, else keypoint")
    parser.add_argument("--config", default=None, help="default: the task's demo config")
    parser.add_argument("--work-dir", type=Path, default=Path("hat-work/demo-keypoint"))
    parser.add_argument("--calib-batches", type=int, default=10, help="calibration batches for every quantizer")
    parser.add_argument("--percentile", type=float, default=99.975, help="HAT's percentile (also tried with ORT)")
    parser.add_argument(
        "--hat-variants",
        default=",".join(HAT_VARIANTS),
        help="comma-separated HAT calibrations: an observer (percentile, min_max, mse), +bc for bias correction",
    )
    parser.add_argument("--peers", default=None, help=f"comma-separated, from {', '.join(PEERS)} (default: all)")
    parser.add_argument("--no-int8-activations", action="store_true", help="skip ORT's QInt8-activation variants")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency and evaluation")
    parser.add_argument("--runs", type=int, default=100, help="timed latency runs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (HAT)")
    parser.add_argument("--verbose", action="store_true", help="show HAT's progress bars and messages")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ptq_vs_ort.json")
    args = parser.parse_args(argv)
    if args.calib_batches < 1 or args.threads < 1 or args.runs < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--calib-batches, --threads, --runs and --rounds must be >= 1, --warmup >= 0")
    task = args.task or default_task(args.work_dir)
    check_demo_outputs(args.work_dir, task)
    peers, notes = choose_peers(args.peers)
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry from a benchmark (nncf/telemetry/wrapper.py stubs it)

    from onnxruntime.quantization import quant_pre_process

    from hat import console as hat_console
    from hat.deploy.analysis import analyze
    from hat.deploy.latency import latency_summary
    from hat.deploy.ort_backend import OnnxRuntimeBackend
    from hat.engine.deploy_model import deploy_inputs
    from hat.plugins import get_host
    from hat.usecases import stages

    hat_console.set_quiet(not args.verbose)
    hat_console.out.quiet = not args.verbose
    if not args.verbose:
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns about pre-processing and more
        logging.getLogger("nncf").setLevel(logging.ERROR)
    console = Console(width=None if sys.stdout.isatty() else 140)
    for note in notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    host = get_host()
    config_ref, demo_settings = demo_config(host, task, args.work_dir, args.config)
    root = args.work_dir / "ptq"
    base = [*demo_settings, f"calibration_steps={args.calib_batches}", *args.overrides]
    started = time.perf_counter()

    def stage_config(run_dir: Path, extra: Sequence[str] = ()) -> stages.StageConfig:
        return stages.load_stage_config(
            task, config_ref=config_ref, overrides=[*base, *extra], work_dir=run_dir, host=host
        )

    models: list[dict[str, Any]] = []
    # -- HAT: calibrate (the calibrator reads the first calib-batches batches) and export
    variants = [v.strip() for v in args.hat_variants.split(",") if v.strip()]
    for variant in variants:
        label, overrides = hat_variant(variant, args.percentile)
        console.print(f"{label}: calibration + export ...")
        entry = hat_quantize(stage_config, root / f"hat-{variant}", args.work_dir, overrides, host)
        models.append({"method": label, **entry})
    stage_cfg = stage_config(root / f"hat-{variants[0]}")
    float_onnx = root / f"hat-{variants[0]}" / "export" / "model.float.onnx"
    demo_float = args.work_dir / "export" / "model.float.onnx"
    same_as_demo = demo_float.is_file() and filecmp.cmp(float_onnx, demo_float, shallow=False)
    models.insert(0, {"method": "float (onnxruntime)", "quantizer": None, "path": float_onnx})

    # -- the peers, on the same float ONNX and the same calibration samples
    predictor = host.registry.build(
        stage_cfg.config["int_infer_predictor"], path="int_infer_predictor", locate=stage_cfg.config.locate
    )
    input_names = list(deploy_inputs(stage_cfg.config))
    input_map = {name: dict(predictor.inputs or {}).get(name, name) for name in input_names}
    samples = calibration_samples(stage_cfg, host, input_map)
    calib_steps = int(stage_cfg.config["calibration_trainer"]["num_steps"])
    console.print(f"{len(samples)} calibration samples ({calib_steps} batches)")
    if "ort" in peers:
        ort_dir = fresh_run_dir(root / "ort", args.work_dir)
        prepared = ort_dir / "model.float.pre.onnx"
        quant_pre_process(str(float_onnx), str(prepared))
        for label, options in ort_variants(args.percentile, not args.no_int8_activations):
            name = f"model.{options['activation']}.{options['method']}{options['percentile'] or ''}.onnx"
            entry = {"method": label, "quantizer": "onnxruntime", "path": ort_dir / name}
            models.append(
                run_quantizer(
                    entry, lambda o=options, p=entry["path"]: ort_quantize(prepared, p, samples, **o), console
                )
            )
    if "nncf" in peers:
        nncf_dir = fresh_run_dir(root / "nncf", args.work_dir)
        for i, (label, options) in enumerate(nncf_variants()):
            entry = {"method": label, "quantizer": "nncf", "path": nncf_dir / f"model.{i}.onnx"}
            models.append(
                run_quantizer(
                    entry, lambda o=options, p=entry["path"]: nncf_quantize(float_onnx, p, samples, **o), console
                )
            )
    calib_samples = len(samples)

    # -- measure every model the same way
    backend = OnnxRuntimeBackend()
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.standard_normal(list(t.shape)).astype(np.float32)
        for name, t in deploy_inputs(stage_cfg.config).items()
    }
    runnable = [m for m in models if "error" not in m]
    float_raw: dict[str, np.ndarray] = {}
    sessions = {}
    for model in runnable:
        console.print(f"evaluating {model['method']} ...")
        model["metrics"], model["samples"], raw = evaluate(model["path"], stage_cfg, host, predictor, args.threads)
        if model is runnable[0]:
            float_raw = raw  # the float model comes first
        model["output_sqnr_db"] = round(sqnr_db(float_raw, raw), 2) if model is not runnable[0] else None
        model["activation_quantizers"] = activation_quantizers(model["path"])
        with tempfile.TemporaryDirectory(prefix="hat-bench-ptq-") as tmp:
            compiled = backend.compile(model["path"], 3, Path(tmp) / "model.opt3.onnx")
            analysis = analyze(compiled, exported=model["path"], inputs=feeds, opt_level=3)
            model["int8_flops_share"] = analysis.int8_flops_share
            ops: dict[str, int] = {}
            for node in analysis.nodes:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            model["opt3_op_types"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
        sessions[model["method"]] = backend.session(model["path"], threads=args.threads, opt_level=3)
    console.print(f"timing {len(runnable)} models at opt 3, {args.threads} thread(s) ...")
    times = time_interleaved(
        {label: (lambda s=session: s.run(None, feeds)) for label, session in sessions.items()},
        count=args.runs,
        rounds=args.rounds,
        warmup=args.warmup,
    )

    metric_names = list(models[0]["metrics"])
    headline = metric_names[0]
    reference = models[0]["metrics"][headline]
    rows = []
    for model in models:
        row = {k: (str(v) if isinstance(v, Path) else v) for k, v in model.items()}
        if model["method"] in times:
            summary = latency_summary(np.asarray(times[model["method"]]), threads=args.threads)
            row["latency"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
            row["headline_vs_float"] = round(model["metrics"][headline] / reference, 4) if reference else None
        rows.append(row)
    float_ms = rows[0]["latency"]["median_ms"]
    for row in rows:
        if "latency" in row:
            row["speedup_vs_float"] = round(float_ms / row["latency"]["median_ms"], 3)

    _print_table(console, args, task, config_ref, rows, metric_names, calib_samples, notes)
    result = {
        "benchmark": "ptq_vs_ort",
        "task": task,
        "config": config_ref,
        "overrides": base,
        "work_dir": str(args.work_dir),
        "float_checkpoint": str(args.work_dir / FLOAT_CHECKPOINT),
        "float_onnx": str(float_onnx),
        "float_onnx_same_as_demo_export": same_as_demo,
        "calib_batches": calib_steps,
        "calib_samples": calib_samples,
        "hat_percentile": args.percentile,
        "peers": peers,
        "notes": notes,
        "ort_settings": "quant_pre_process; quantize_static QDQ, per_channel, weights QInt8, reduce_range False",
        "nncf_settings": f"nncf.quantize, ONNX backend, subset_size={calib_samples}, target_device ANY",
        "threads": args.threads,
        "runs": args.runs,
        "headline_metric": headline,
        "results": rows,
        "wall_s": round(time.perf_counter() - started, 1),
        **environment(),
        **_versions("nncf", "onnx"),
    }
    write_result(args.out, result, console)
    return result


def _versions(*names: str) -> dict[str, str]:
    """Installed versions of the optional packages this benchmark used (without importing them)."""
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _print_table(console, args, task, config_ref, rows, metric_names, calib_samples, notes) -> None:
    headline = metric_names[0]
    table = Table(
        title=f"ptq_vs_ort: {task} ({config_ref}), the same {calib_samples} calibration samples for every "
        f"quantizer, {rows[0]['samples']} validation samples, latency at opt 3 with {args.threads} thread(s)"
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
    for note in notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    measured = [r for r in rows if "metrics" in r and r.get("quantizer")]
    hat_best = max((r for r in measured if r["quantizer"] == "hat"), key=lambda r: r["metrics"][headline])
    for peer in ("onnxruntime", "nncf"):
        peer_rows = [r for r in measured if r["quantizer"] == peer]
        if peer_rows:
            best = max(peer_rows, key=lambda r: r["metrics"][headline])
            console.print(
                f"best HAT ({hat_best['method']}) {headline} {hat_best['metrics'][headline]:.4f} vs best {peer} "
                f"({best['method']}) {best['metrics'][headline]:.4f}"
            )


if __name__ == "__main__":
    run(main)
