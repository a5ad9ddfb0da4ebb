"""`hat fallback` on a model made to miss its budget: one heavy-tailed activation, min_max calibration.

From a demo work dir (``hat demo keypoint --work-dir DIR``), one channel of a conv + BN +
ReLU is scaled up ``--factor`` times and the next conv's weights for that channel scaled
down as much. ReLU commutes with a positive scale, so the float model computes the same
function (checked: the float metric is re-measured), but the layer's per-tensor activation
range is now set by one channel, and min_max calibration leaves the other channels a few
codes each: the all-int8 model misses the budget, because of one layer. This is the case
the fallback is for (and the inverse of cross-layer equalization, which a user could also
apply). Then `hat fallback` runs on it, and `hat check` shows the result.

    python benchmarks/fallback_demo.py --work-dir DIR [--budget 0.005] [--factor 64]

Writes ``DIR/fallback-demo/`` (a work dir of its own) and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from _common import environment, run, write_result
from rich.console import Console

FLOAT_CHECKPOINT = "float-checkpoint-best.pth.tar"


def heavy_tailed_checkpoint(source: Path, target: Path, bn: str, following: str, factor: float) -> dict:
    """The float checkpoint with channel c of ``bn`` times ``factor``, ``following``'s weights for c divided.

    c is the channel whose BN output is largest on average (``beta``), so that the scaled
    channel is a live one. ``following`` is a depthwise conv (weight[c]) or a dense one
    (weight[:, c]).
    """
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    weight, bias = state[f"{bn}.weight"], state[f"{bn}.bias"]
    channel = int(torch.argmax(bias + weight.abs()))
    weight[channel] *= factor
    bias[channel] *= factor
    next_weight = state[f"{following}.weight"]
    depthwise = next_weight.shape[1] == 1 and next_weight.shape[0] == weight.shape[0]
    if depthwise:
        next_weight[channel] /= factor
    else:
        next_weight[:, channel] /= factor
    torch.save(checkpoint, target)
    return {"bn": bn, "following": following, "channel": channel, "factor": factor, "depthwise": depthwise}


def hat(*args: str) -> subprocess.CompletedProcess:
    """One ``hat`` command, its output captured (the script prints the tables that matter after)."""
    return subprocess.run(["hat", "--quiet", *args], capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="a `hat demo keypoint` work dir")
    parser.add_argument("--task", default="keypoint")
    parser.add_argument("--bn", default="backbone.stages.1.0.expand.bn", help="the BN whose channel is scaled")
    parser.add_argument("--following", default="backbone.stages.1.0.depthwise.conv", help="the conv that reads it")
    parser.add_argument("--factor", type=float, default=64.0)
    parser.add_argument("--budget", type=float, default=0.005)
    parser.add_argument("--max-layers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    source = args.work_dir / FLOAT_CHECKPOINT
    if not source.is_file() or not (args.work_dir / "config.yaml").is_file():
        print(f"{source} does not exist: run `hat demo {args.task} --work-dir {args.work_dir}` first", file=sys.stderr)
        return 2
    demo = args.work_dir / "fallback-demo"
    if demo.exists():
        shutil.rmtree(demo)
    demo.mkdir()
    shutil.copy2(args.work_dir / "config.yaml", demo / "config.yaml")
    change = heavy_tailed_checkpoint(source, demo / FLOAT_CHECKPOINT, args.bn, args.following, args.factor)
    min_max = ["--set", "qconfig_calibration.activation_calibration_observer=min_max"]
    min_max += ["--set", "qconfig_calibration.activation_calibration_qkwargs={}"]

    def predicted(work_dir: Path, stage: str) -> dict:
        return json.loads((work_dir / "predict" / f"{stage}.json").read_text())["metrics"]

    floated = hat("predict", args.task, "--stage", "float", "--work-dir", str(demo), *min_max)
    if floated.returncode != 0:
        print(floated.stderr, file=sys.stderr)
        return floated.returncode
    original = predicted(args.work_dir, "float") if (args.work_dir / "predict" / "float.json").exists() else None
    fallback = hat(
        "fallback", args.task, "--work-dir", str(demo), "--budget", str(args.budget),
        "--max-layers", str(args.max_layers), "--batches", "4", *min_max,
    )  # fmt: skip
    if not (demo / "fallback" / "fallback.json").exists():
        print(fallback.stderr, file=sys.stderr)
        return fallback.returncode or 1
    record = json.loads((demo / "fallback" / "fallback.json").read_text())
    check = hat("check", args.task, "--work-dir", str(demo))
    result = {
        "environment": environment(),
        "change": change,
        "float_metrics_original": original,
        "float_metrics_heavy_tailed": predicted(demo, "float"),
        "fallback_exit_code": fallback.returncode,
        "fallback": record,
        "check_exit_code": check.returncode,
        "check_modules_not_int8": json.loads((demo / "export" / "check.json").read_text()).get("modules_not_int8")
        if check.returncode == 0
        else None,
    }
    print(fallback.stdout)
    print(check.stdout)
    write_result(args.out or demo / "fallback_demo.json", result, Console())
    return 0


if __name__ == "__main__":
    run(lambda: sys.exit(main()))
