"""Switches that tell quantization modules what the loop is doing.

The calibrator runs the model under :func:`calibration_mode` so that observers collect
statistics; modules that have no observers ignore it. Kept apart from the backend so the
engine depends only on this small, stable surface.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def calibration_mode(model: torch.nn.Module) -> Iterator[None]:
    """Observers in ``model`` (modules with ``set_calibrating``) collect statistics inside."""
    observers = [m for m in model.modules() if hasattr(m, "set_calibrating")]
    for module in observers:
        module.set_calibrating(True)
    try:
        yield
    finally:
        for module in observers:
            module.set_calibrating(False)
