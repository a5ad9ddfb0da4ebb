"""What a stage run hands to its trainer, calibrator or predictor.

Configs describe *what* to run; the context says *where and as what*: which task and
stage, the work directory, the resolved config (stored in checkpoints), the registry to
build lazy parts with, the seed, and whether to resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def checkpoint_path(self, kind: str, stage: str | None = None) -> Path:
        """``<work-dir>/<stage>-checkpoint-<kind>.pth.tar``."""
        return self.work_dir / f"{stage or self.stage}-checkpoint-{kind}.pth.tar"

    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"{self.stage}.jsonl"
