"""What a stage run hands to its trainer, calibrator or predictor.

Configs describe *what* to run; the context says *where and as what*: which task and
stage, the work directory, the resolved config (stored in checkpoints), the registry to
build lazy parts with, the installed quantization backends, the seed, and whether to
resume. The stage that runs the runner fills it from the plugin host, so the engine
never looks the host up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hat import workdir
from hat.deploy.compile_backend import builtin_compile_backends
from hat.quant.backend import BackendFactory, builtin_backends
from hat.registry import Registry


@dataclass
class RunContext:
    task: str
    stage: str
    work_dir: Path
    config: dict[str, Any]
    registry: Registry
    seed: int = 0
    resume: bool = False
    #: key path -> "file:line", for error messages about lazily built parts.
    locate: Callable[[str], str | None] | None = None
    #: key path of the runner's config (e.g. "float_trainer").
    path: str = ""
    #: the config's name (e.g. "keypoint_efficientnetb0_carfusion-tiny").
    config_name: str = ""
    #: installed quantization backends by name, for the runner's convert pipeline.
    quant_backends: Mapping[str, BackendFactory] = field(default_factory=builtin_backends)
    #: installed compilation backends by name, for a runner that runs the exported model.
    compile_backends: Mapping[str, Callable[[], Any]] = field(default_factory=builtin_compile_backends)

    def checkpoint_path(self, kind: str, stage: str | None = None) -> Path:
        """``<work-dir>/<stage>-checkpoint-<kind>.pth.tar``."""
        return workdir.checkpoint_path(self.work_dir, stage or self.stage, kind)

    def log_path(self) -> Path:
        return workdir.log_path(self.work_dir, self.stage)
