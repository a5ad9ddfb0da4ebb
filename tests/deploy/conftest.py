from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hat.deploy import ExportInfo, OnnxRuntimeBackend, export_onnx
from tests.deploy import models_for_tests as m

#: name -> (model factory, input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "net": (m.QuantNet, (1, 3, 16, 16)),
    "stack": (m.QuantConvStack, (1, 3, 16, 16)),
    "relu": (lambda: m.QuantConvStack(relu="explicit"), (1, 3, 16, 16)),
    "float_last": (lambda: m.QuantConvStack(float_last=True), (1, 3, 16, 16)),
    "deconv": (m.QuantDeconvNet, (1, 3, 8, 8)),
    "tokens": (m.QuantTokenLinear, (1, 32, 4, 4)),
    "concat_up": (m.QuantConcatUp, (1, 3, 16, 16)),
    "buffer_weight": (m.BufferWeightConv, (1, 3, 16, 16)),
}


@dataclass
class Exported:
    model: nn.Module
    shape: tuple[int, ...]
    path: Path
    info: ExportInfo
    proto: onnx.ModelProto

    def inputs(self, seed: int = 100) -> dict[str, torch.Tensor]:
        return m.example_input(self.shape, seed)

    def numpy_inputs(self, seed: int = 100) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.inputs(seed).items()}


@pytest.fixture(scope="session")
def backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """Each test model, calibrated and exported once per session."""
    root = tmp_path_factory.mktemp("exported")
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            factory, shape = MODELS[name]
            model = m.calibrated(factory(), shape)
            path = root / f"{name}.onnx"
            info = export_onnx(model, m.example_input(shape, seed=7), path)
            cache[name] = Exported(model, shape, path, info, onnx.load(str(path)))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def compiled(
    exported: Callable[[str], Exported], backend: OnnxRuntimeBackend, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int], onnx.ModelProto]:
    """The optimized graph onnxruntime saves for a test model at a level, once per session."""
    root = tmp_path_factory.mktemp("compiled")
    cache: dict[tuple[str, int], onnx.ModelProto] = {}

    def get(name: str, level: int) -> onnx.ModelProto:
        if (name, level) not in cache:
            out = backend.compile(exported(name).path, level, root / f"{name}.opt{level}.onnx")
            cache[name, level] = onnx.load(str(out))
        return cache[name, level]

    return get
