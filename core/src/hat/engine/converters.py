"""How a stage's model is made from the previous stage's: a pipeline of converters.

``model_convert_pipeline: {type: ModelConvertPipeline, qat_mode: fuse_bn,
qconfig_params: {...}, converters: [{type: LoadCheckpoint, ...}, {type: Float2Calibration}]}``.
Each converter is called as ``converter(model, context) -> model``; the context carries
the task, stage and the pipeline's quantization settings (used by the quantization
converters), so converters stay independent of each other. The quantization backends
are handed in by whoever runs the pipeline (a stage passes the plugin host's); called
without them, the pipeline uses core's built-in ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hat.console import info
from hat.engine.checkpoint_io import load_checkpoint
from hat.errors import UserError
from hat.quant.backend import BackendFactory, builtin_backends
from hat.registry import register_type
from hat.workdir import command_that_makes


@dataclass
class ConvertContext:
    task: str = "TASK"
    stage: str = "float"
    qat_mode: str | None = None
    qconfig_params: dict[str, Any] = field(default_factory=dict)
    quant_backend: str = "torch_native"
    #: The config's top-level ``deploy_target`` (None: the portable default).
    deploy_target: str | None = None
    #: The config's top-level ``precision`` rules (None: every layer int8; see hat.quant.precision).
    precision: list[Any] | None = None
    #: Installed quantization backends by name (the plugin host's, handed down).
    quant_backends: Mapping[str, BackendFactory] = field(default_factory=builtin_backends)


class Converter(Protocol):
    def __call__(self, model: torch.nn.Module, context: ConvertContext) -> torch.nn.Module: ...


@register_type("ModelConvertPipeline")
class ModelConvertPipeline:
    def __init__(
        self,
        converters: Sequence[Converter] = (),
        qat_mode: str | None = None,
        qconfig_params: dict[str, Any] | None = None,
        quant_backend: str = "torch_native",
    ) -> None:
        self.converters = list(converters)
        self.qat_mode = qat_mode
        self.qconfig_params = dict(qconfig_params or {})
        self.quant_backend = quant_backend

    def __call__(
        self,
        model: torch.nn.Module,
        *,
        task: str = "TASK",
        stage: str = "float",
        deploy_target: str | None = None,
        quant_backends: Mapping[str, BackendFactory] | None = None,
        precision: list[Any] | None = None,
    ) -> torch.nn.Module:
        """``deploy_target`` and ``precision``: the config's top-level values, which every stage shares.

        ``quant_backends``: the installed backends by name (default: core's built-in ones).
        """
        context = ConvertContext(
            task=task,
            stage=stage,
            qat_mode=self.qat_mode,
            qconfig_params=self.qconfig_params,
            quant_backend=self.quant_backend,
            deploy_target=deploy_target,
            precision=precision,
            quant_backends=builtin_backends() if quant_backends is None else quant_backends,
        )
        for converter in self.converters:
            model = converter(model, context)
        return model

    def checkpoint_paths(self) -> list[Path]:
        """Checkpoints this pipeline will read (checked before any work starts)."""
        return [Path(c.checkpoint_path) for c in self.converters if isinstance(c, LoadCheckpoint) and c.checkpoint_path]


@register_type("LoadCheckpoint")
class LoadCheckpoint:
    """Load weights into the model.

    ``allow_miss``: model keys absent from the checkpoint keep their initial values
    (e.g. a new head on a pretrained backbone). ``ignore_extra``: checkpoint keys the
    model lacks are ignored. A shape mismatch is always an error, and so is a load where
    not one tensor matched: with both options on, that would otherwise train from scratch
    while saying it loaded weights. The message says how many tensors loaded.
    """

    def __init__(self, checkpoint_path: str | None, allow_miss: bool = False, ignore_extra: bool = False) -> None:
        self.checkpoint_path = checkpoint_path
        self.allow_miss = allow_miss
        self.ignore_extra = ignore_extra

    def __call__(self, model: torch.nn.Module, context: ConvertContext) -> torch.nn.Module:
        if not self.checkpoint_path:
            return model
        path = Path(self.checkpoint_path)
        payload = load_checkpoint(path, made_by=command_that_makes(path, context.task))
        loaded = load_state(model, payload["model"], path, allow_miss=self.allow_miss, ignore_extra=self.ignore_extra)
        info(f"loaded {loaded} of {len(model.state_dict())} tensors from {path}")
        return model


def load_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, *, allow_miss: bool, ignore_extra: bool
) -> int:
    """``load_state_dict`` with errors that list what is missing, extra or mis-shaped.

    Returns how many of the model's tensors were loaded. Every load of weights into a
    model (LoadCheckpoint, ``--resume``) goes through here, so a checkpoint of another
    model is the same clear UserError (exit 2) wherever it is loaded, never torch's
    hundred lines of "size mismatch".
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:5]))
    if missing and not allow_miss:
        problems.append(f"{len(missing)} model key(s) missing from the checkpoint, e.g. {', '.join(missing[:5])}")
    if extra and not ignore_extra:
        problems.append(f"{len(extra)} checkpoint key(s) unknown to the model, e.g. {', '.join(extra[:5])}")
    matched = [k for k in own if k in state]
    if own and not matched and not problems:  # allow_miss and ignore_extra: nothing would load
        problems.append(
            f"0 of {len(own)} model tensors are in the checkpoint: the model has "
            f"{', '.join(list(own)[:5])}; the checkpoint has {', '.join(list(state)[:5]) or 'no tensors'}"
        )
    if problems:
        raise UserError(
            f"checkpoint {source} does not fit the model: " + " | ".join(problems),
            where=str(source),
            hint="check that the config's model matches the one that wrote the checkpoint "
            "(LoadCheckpoint has allow_miss / ignore_extra for partial loads; keys must still match)",
        )
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    return len(matched)
