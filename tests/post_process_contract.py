"""Core's task-model / post-process contract (hat.postprocess), checked on a task's config.

One decoding path: the torch predictors and the ONNX predictor build the same
post-process type from the config, the model in eval returns exactly the tensors
export writes (same names), and both predictors, run for real, hand that post-process
the same output names. Used by each plugin's tests with its tiny config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hat.deploy.onnx_export import export_float_onnx
from hat.engine.context import RunContext
from hat.engine.deploy_model import build_deploy_model
from hat.engine.onnx_predictor import OnnxPredictor
from hat.engine.predictor import Predictor
from hat.plugins import PluginHost
from hat.postprocess import PostProcess
from hat.usecases.stages import load_stage_config

RUNNERS = (
    "float_trainer",
    "calibration_trainer",
    "qat_trainer",
    "float_predictor",
    "calibration_predictor",
    "qat_predictor",
    "int_infer_predictor",
)


class Recording:
    """Delegates to a post-process and records the output names of every call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.resets = 0

    def __call__(self, outputs: Mapping[str, Any], batch: Any = None) -> dict[str, Any]:
        self.calls.append(list(outputs))
        return self.inner(outputs, batch)

    def reset(self) -> None:
        self.resets += 1
        self.inner.reset()


def check_post_process_contract(
    host: PluginHost, task: str, config: str, batch: dict[str, torch.Tensor], tmp_path: Path
) -> dict[str, Any]:
    """Assert the contract for ``task``'s ``config`` on ``batch``; returns the torch predictions."""
    stage_cfg = load_stage_config(task, config_ref=config, work_dir=tmp_path, host=host)
    cfg = stage_cfg.config
    runners = {key: host.registry.build(cfg[key], path=key, locate=cfg.locate) for key in RUNNERS}
    inferer = host.registry.build(cfg["infer"], path="infer", locate=cfg.locate)
    kinds = {key: type(runner.post_process) for key, runner in runners.items()} | {"infer": type(inferer.post_process)}
    expected = type(host.registry.build(cfg["post_process"], path="post_process"))
    assert issubclass(expected, PostProcess)
    assert set(kinds.values()) == {expected}, kinds
    # each reference builds its own object: a stateful post-process's state belongs to one run
    assert runners["float_predictor"].post_process is not runners["int_infer_predictor"].post_process

    # the model in eval returns exactly what export writes
    predictor: Predictor = runners["float_predictor"]
    model = predictor.model.eval()
    deploy, inputs = build_deploy_model(cfg, host.registry)
    deploy.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch_out = model(batch)
    info = export_float_onnx(deploy, inputs, tmp_path / "export" / "model.float.onnx")
    assert list(torch_out) == info.output_names
    assert all(isinstance(v, torch.Tensor) for v in torch_out.values())

    # both predictors, run for real on the same batch, call the post-process on those names
    onnx_predictor: OnnxPredictor = runners["int_infer_predictor"]
    onnx_predictor.model_path = info.path
    predictor.model_convert_pipeline = None  # no checkpoint: the weights just built
    recorders = {}
    for stage, runner in (("float", predictor), ("int_infer", onnx_predictor)):
        runner.post_process = recorders[stage] = Recording(runner.post_process)
        runner.val_metrics = []  # the batch carries no labels
        runner.build_data_loader = lambda ctx, train, batch=batch: [batch]
        ctx = RunContext(task=task, stage=stage, work_dir=tmp_path, config=cfg.data, registry=host.registry)
        runner.run(ctx)
    assert recorders["float"].calls == recorders["int_infer"].calls == [info.output_names]
    assert recorders["float"].resets == recorders["int_infer"].resets == 1
    return recorders["float"].inner(torch_out, batch)
