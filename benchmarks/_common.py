"""What every benchmark does the same way: record the environment, write its JSON, exit 2 on a user error.

Imported as ``_common`` (the scripts run as ``python benchmarks/<name>.py``, so this folder
is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console


def environment() -> dict[str, Any]:
    """Versions and machine, stored with every result so figures can be compared later."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # the data and engine benchmarks do not need it
        pass
    else:  # int8 figures differ between CPUs with and without VNNI: say which this is
        from hat.deploy.int8_kernels import probe_int8_kernels

        env["int8_kernels"] = probe_int8_kernels().isa
    from hat.deploy.perf import cpu_model

    env.update(platform=platform.platform(), cpu=cpu_model(), cpu_count=os.cpu_count())
    return env


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]], *, count: int, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds of each of ``count`` calls per function, taken in ``rounds`` interleaved rounds.

    Every function warms up first; then each round times every function in turn, so a
    drift of the machine's load hits all of them alike and their ratios stay comparable.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    per_round = [count // rounds + (1 if i < count % rounds else 0) for i in range(rounds)]
    for calls in per_round:
        for name, fn in runs.items():
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def write_result(path: Path, result: dict[str, Any], console: Console) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"wrote {path}")


def run(main: Callable[[], Any]) -> None:
    """Run ``main``; a HAT user error (a missing prerequisite, a bad override) is its message and exit 2."""
    from hat.errors import UserError

    try:
        main()
    except UserError as exc:
        print(exc.render(), file=sys.stderr)
        raise SystemExit(2) from None
