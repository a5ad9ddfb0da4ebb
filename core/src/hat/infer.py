"""`hat infer TASK --input FILE --save-path DIR`: the deployable model on a user's files.

The model is the exported int8 ONNX (or, with ``--model float``, model.float.onnx) run by
onnxruntime, as it would run on the device. What to read, how to pre-process, decode
and draw is the task's: its config's ``infer`` section builds a registered *inferer*,
``inferer(paths, model, save_path) -> written files``, where ``model(batch)`` maps a
dict of input tensors to a dict of output tensors. Options such as ``--calib`` (the
camera intrinsics a 3D detector needs) reach the inferer as keyword arguments; an
inferer that takes none refuses them with a clear message.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hat import workdir
from hat.errors import ConfigError, UserError
from hat.plugins import PluginHost, get_host
from hat.stages import StageConfig

MODELS = {"int8": workdir.EXPORTED_MODEL, "float": workdir.FLOAT_MODEL}


def run_infer(
    stage_cfg: StageConfig,
    inputs: Sequence[Path],
    save_path: Path,
    *,
    model: str = "int8",
    host: PluginHost | None = None,
    **options: Any,
) -> list[Path]:
    from hat.engine.onnx_predictor import OnnxModel

    host = host or get_host()
    cfg = stage_cfg.config
    if "infer" not in cfg:
        raise ConfigError(f"config {cfg.name} has no infer section", where=str(cfg.path))
    if model not in MODELS:
        raise UserError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise UserError(f"input file(s) not found: {', '.join(missing)}")
    path = workdir.export_dir(stage_cfg.work_dir) / MODELS[model]
    if not path.is_file():
        raise UserError(f"no exported model at {path}", hint=f"run `hat export {stage_cfg.task}` first")
    inferer = host.registry.build(cfg["infer"], path="infer", locate=cfg.locate)
    accepted = inspect.signature(inferer).parameters
    for name, value in options.items():
        if name not in accepted:
            raise UserError(f"`hat infer {stage_cfg.task}` takes no --{name}", hint="leave it out for this task")
        if isinstance(value, Path) and not value.is_file():
            raise UserError(f"--{name} file not found: {value}")
    save_path = Path(save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    return list(inferer([Path(p) for p in inputs], OnnxModel(path), save_path, **options))
