"""Training step time through HAT's trainer: one process vs two DDP processes, side by side.

A small conv net (4 conv layers 3->32->64->64->64, BatchNorm + ReLU, global pooling,
10 classes, cross-entropy) trains on random 64x64 images through the real engine:
``hat.engine.trainer.Trainer.fit`` with a ``RunContext``, the registry of
``PluginHost(entry_points=False)`` with the model, dataset and a timing callback added
under the owner "bench", SGD with momentum. Three setups run in one invocation, each
in a fresh process (so that its thread count is fixed before torch starts):

  (a) 1 process,  batch B,        OMP_NUM_THREADS=2
  (b) 1 process,  batch 2B,       OMP_NUM_THREADS=2
  (c) 2 processes under torchrun (gloo), batch B per rank = 2B global, OMP_NUM_THREADS=1 per rank

so (b) and (c) do the same work per step with the same two cores. Every setup runs the
same number of steps; the first ``--warmup`` are dropped; the setups run ``--repeats``
times, interleaved, and the median is reported. A step's time is the wall time
between the ends of two consecutive optimizer steps on rank 0 (data loading, forward,
backward, gradient all-reduce, optimizer step and callbacks included). CPU only: CUDA
is hidden from the workers.

    python benchmarks/ddp_step_time.py [--steps 100] [--batch 32] [--warmup 10] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import environment, write_result

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
POOL = 256  # distinct random images; the dataset cycles through them


# -- what the worker trains ---------------------------------------------------------------------


class RandomImages(torch.utils.data.Dataset):
    """``size`` samples cycling through a fixed pool of random images with random labels."""

    def __init__(self, size: int, image_size: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.images = torch.randn(POOL, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (POOL,), generator=generator)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"img": self.images[index % POOL], "label": self.labels[index % POOL]}


class BenchConvNet(torch.nn.Module):
    def __init__(self, channels: tuple[int, ...] = (3, 32, 64, 64, 64), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            stride = 2 if i < len(channels) - 2 else 1
            layers += [
                torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(inplace=True),
            ]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels[-1], num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.head(self.features(batch["img"]).mean(dim=(2, 3)))
        return {"logits": logits, "loss": torch.nn.functional.cross_entropy(logits, batch["label"])}


def _step_timer_class():
    from hat.engine.callbacks.base import Callback

    class StepTimer(Callback):
        """Records when each optimizer step ends; rank 0 writes the times at the end of the loop."""

        def __init__(self, out: str) -> None:
            self.out = out
            self.ends: list[float] = []
            self.begin = 0.0

        def on_loop_begin(self, state) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, state, batch: Any = None, outputs: Any = None) -> None:
            self.ends.append(time.perf_counter())

        def on_loop_end(self, state) -> None:
            if not state.is_main:
                return
            marks = [self.begin, *self.ends]
            record = {
                "step_seconds": [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)],
                "global_batch_size": state.global_batch_size,
                "steps": state.global_step,
                "final_loss": state.losses.get("loss"),
                "threads_per_process": torch.get_num_threads(),
            }
            Path(self.out).write_text(json.dumps(record))

    return StepTimer


def worker(args: argparse.Namespace) -> None:
    """One training run (one rank of it under torchrun)."""
    from hat import console, distributed
    from hat.engine.context import RunContext
    from hat.plugins import PluginHost
    from hat.usecases.stages import seed_everything

    console.set_quiet(True)
    distributed.init_from_env()
    seed_everything(0)
    host = PluginHost(entry_points=False)
    bench = host.registry.scoped("bench")
    bench.add(BenchConvNet)
    bench.add(RandomImages)
    bench.add(_step_timer_class())
    total_steps = args.warmup + args.steps
    world = distributed.world_size()
    cfg = {
        "type": "distributed_data_parallel_trainer",
        "model": {"type": "BenchConvNet"},
        "data_loader": {
            "type": "DataLoader",
            # one epoch covers every step: no epoch boundary inside the timed steps
            "dataset": {"type": "RandomImages", "size": total_steps * args.batch * world, "image_size": 64},
            "batch_size": args.batch,
            "shuffle": True,
            "num_workers": 0,
            "drop_last": True,
        },
        "optimizer": {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "num_steps": total_steps,
        "device": "cpu",
        "callbacks": [
            {"type": "StatsMonitor", "log_freq": 10},
            {"type": "StepTimer", "out": str(args.result)},
        ],
    }
    trainer = host.registry.build(cfg, path="float_trainer")
    work_dir = Path(args.work_dir)
    ctx = RunContext(
        task="bench",
        stage="float",
        work_dir=work_dir,
        config={"float_trainer": cfg},
        registry=host.registry,
        seed=0,
        path="float_trainer",
        config_name="ddp_step_time",
    )
    try:
        trainer.fit(ctx)
    finally:
        distributed.shutdown()


# -- the driver -----------------------------------------------------------------------------------


def _run_setup(
    name: str, *, processes: int, threads: int, batch: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    work_dir = tmp / name.replace(" ", "_")
    result = work_dir / "step_times.json"
    work_dir.mkdir(parents=True, exist_ok=False)
    script = [
        str(Path(__file__).resolve()),
        "--worker",
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--work-dir",
        str(work_dir),
        "--result",
        str(result),
    ]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command += script
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",
    }
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"setup {name!r} failed with exit code {done.returncode}")
    record = json.loads(result.read_text())
    timed = record["step_seconds"][args.warmup :]
    assert len(timed) == args.steps, (len(timed), args.steps)
    assert record["threads_per_process"] == threads, record
    global_batch = record["global_batch_size"]
    assert global_batch == batch * processes, record
    median = statistics.median(timed)
    log = [json.loads(line) for line in (work_dir / "logs" / "float.jsonl").read_text().splitlines()]
    monitor = [r for r in log if r.get("event") == "step"]
    return {
        "setup": name,
        "processes": processes,
        "threads_per_process": threads,
        "batch_per_process": batch,
        "global_batch": global_batch,
        "timed_steps": len(timed),
        "warmup_steps": args.warmup,
        "ms_per_step_median": round(1000 * median, 2),
        "ms_per_step_mean": round(1000 * statistics.fmean(timed), 2),
        "ms_per_step_p90": round(1000 * sorted(timed)[int(0.9 * (len(timed) - 1))], 2),
        "samples_per_s": round(global_batch / median, 1),
        # StatsMonitor's own figure (averaged from the loop start, warm-up included), as a cross-check
        "stats_monitor_samples_per_s": monitor[-1]["samples_per_s"] if monitor else None,
        "final_loss": record["final_loss"],
        "process_wall_s": round(wall, 2),
    }


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per setup: the median over repeated runs of each run's median step time."""
    row = dict(runs[0])
    median = statistics.median(r["ms_per_step_median"] for r in runs)
    row["ms_per_step_median"] = round(median, 2)
    row["ms_per_step_runs"] = [r["ms_per_step_median"] for r in runs]
    row["samples_per_s"] = round(row["global_batch"] / (median / 1000), 1)
    for key in ("ms_per_step_mean", "ms_per_step_p90", "stats_monitor_samples_per_s", "process_wall_s"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = round(statistics.median(values), 2) if values else None
    row["final_loss"] = [r["final_loss"] for r in runs]
    row["repeats"] = len(runs)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed optimizer steps per setup")
    parser.add_argument("--batch", type=int, default=32, help="B: batch per process (setup b uses 2B)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup, interleaved (median reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddp_step_time.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--steps, --batch and --repeats must be >= 1, --warmup >= 0")
    if args.worker:
        worker(args)
        return None

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)  # a log file gets the whole table
    b = args.batch
    setups = [
        ("(a) 1 proc, batch B", 1, 2, b),
        ("(b) 1 proc, batch 2B", 1, 2, 2 * b),
        ("(c) DDP 2 procs, B/rank", 2, 1, b),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in setups}
    with tempfile.TemporaryDirectory(prefix="hat-bench-ddp-") as tmp:
        for repeat in range(args.repeats):  # interleaved, so drifts of the machine hit every setup alike
            for name, processes, threads, batch in setups:
                console.print(f"run {repeat + 1}/{args.repeats}: {name} ...")
                runs[name].append(
                    _run_setup(
                        name,
                        processes=processes,
                        threads=threads,
                        batch=batch,
                        args=args,
                        tmp=Path(tmp) / f"run{repeat}",
                    )
                )
    rows = [_combine(r) for r in runs.values()]
    reference = rows[1]
    for row in rows:
        row["step_time_vs_b"] = round(row["ms_per_step_median"] / reference["ms_per_step_median"], 3)
        row["throughput_vs_b"] = round(row["samples_per_s"] / reference["samples_per_s"], 3)

    table = Table(
        title=f"ddp_step_time: 4-conv net, 64x64 images, B={b}, {args.steps} timed steps after {args.warmup} "
        f"warm-up, median of {args.repeats} runs, CPU ({os.cpu_count()} cores)"
    )
    for column, justify in (
        ("setup", "left"),
        ("procs x threads", "right"),
        ("global batch", "right"),
        ("ms/step", "right"),
        ("samples/s", "right"),
        ("ms/step vs (b)", "right"),
        ("samples/s vs (b)", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(
            row["setup"],
            f"{row['processes']} x {row['threads_per_process']}",
            str(row["global_batch"]),
            f"{row['ms_per_step_median']:.1f}",
            f"{row['samples_per_s']:.0f}",
            f"{row['step_time_vs_b']:.2f}x",
            f"{row['throughput_vs_b']:.2f}x",
        )
    console.print(table)
    result = {
        "benchmark": "ddp_step_time",
        "model": "4 conv (3->32->64->64->64) + BN + ReLU, avg pool, linear 64->10, cross-entropy",
        "image_size": 64,
        "batch": b,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timing": "median wall time between consecutive optimizer-step ends on rank 0",
        "backend": "gloo (CPU)",
        "results": rows,
        **environment(),
    }
    write_result(args.out, result, console)
    return result


if __name__ == "__main__":
    main()
