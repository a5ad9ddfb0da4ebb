"""How closely the deployed int8 model reproduces the torch simulation.

Both compute the same fixed-point arithmetic, but the runtime rounds intermediate
results at slightly different places (requantization after an add, an average pool's
division), so outputs may differ by one quantization step. Counting elements that
agree within one step of the output's scale, in the quantized domain, is therefore
the honest measure: it is 1.0 for a faithful deployment and drops sharply for a real
mismatch (a wrong scale, a missing ReLU, a float layer).
"""

from __future__ import annotations

import numpy as np


def share_within_one_step(reference: np.ndarray, candidate: np.ndarray, scale: float) -> float:
    """Share of elements with ``|round(ref / scale) - round(cand / scale)| <= 1``."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, not {scale}")
    if reference.size == 0:
        return 1.0
    steps = np.abs(np.rint(reference / scale) - np.rint(candidate / scale))
    return float(np.mean(steps <= 1))
