"""One way the block tests run an exported model in onnxruntime at a given optimization level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def run_ort(path: Path, inputs: dict[str, torch.Tensor], level: ort.GraphOptimizationLevel) -> dict[str, np.ndarray]:
    """Outputs by name of ``path`` on ``inputs``, one thread, CPU, at optimization ``level``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in inputs.items()}), strict=True))
