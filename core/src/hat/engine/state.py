"""What a running loop knows, shared by the trainer and its callbacks.

Callbacks read and change the loop through this one object (the LR updater sets the
optimizer's learning rates, validation writes ``metrics``, the checkpoint reads
everything), so the trainer does not need to know which callbacks exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hat import distributed


@dataclass
class LoopState:
    stage: str
    work_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    #: Epochs and total optimizer steps planned (either may be None).
    num_epochs: int | None = None
    num_steps: int | None = None
    steps_per_epoch: int = 0
    #: Samples per optimizer step over all ranks.
    global_batch_size: int = 0
    #: 0-based epoch being run; after the loop, the number of epochs completed.
    epoch: int = 0
    #: Optimizer steps done so far (over all epochs).
    global_step: int = 0
    #: Steps done in the current epoch (the sampler position on resume).
    step_in_epoch: int = 0
    #: Last step's loss terms, as floats.
    losses: dict[str, float] = field(default_factory=dict)
    #: Latest validation metrics.
    metrics: dict[str, float] = field(default_factory=dict)
    #: The resolved config, stored in checkpoints.
    config: dict[str, Any] = field(default_factory=dict)
    #: The object running the loop (a Trainer, Calibrator or Predictor).
    runner: Any = None
    #: Set by a callback to end the loop after the current step.
    stop: bool = False

    @property
    def is_main(self) -> bool:
        return distributed.is_main()

    @property
    def plain_model(self) -> torch.nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        model = self.model
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def resume_position(self) -> tuple[int, int]:
        """(epoch, step in epoch) a resumed run starts at, if stopped right now."""
        if self.steps_per_epoch and self.step_in_epoch >= self.steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.step_in_epoch

    @property
    def total_steps(self) -> int | None:
        if self.num_steps is not None:
            return self.num_steps
        if self.num_epochs is not None:
            return self.num_epochs * self.steps_per_epoch
        return None
