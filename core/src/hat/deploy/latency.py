"""One summary of run times, shared by every backend, so reports compare like with like.

The median resists the occasional slow run (a page fault, another process); p10 and
p90 show the spread; the minimum is the best this machine can do.
"""

from __future__ import annotations

import numpy as np


def latency_summary(times_ms: np.ndarray, *, threads: int) -> dict[str, float | int]:
    """Median, p10, p90 and min of a series of run times (ms), with the run and thread counts."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size == 0:
        raise ValueError("no run times to summarize")
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "min_ms": float(times.min()),
        "runs": int(times.size),
        "threads": threads,
    }
