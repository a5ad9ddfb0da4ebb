"""One training (or evaluation) step on a batch: forward, loss, backward, optimizer step.

Kept apart from the loop so that a task can change how a step is done (several
sub-batches, gradient clipping, which outputs are losses) from its config, without a
new trainer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hat.registry import register_type

LossCollector = Callable[[Any], dict[str, torch.Tensor]]


class NonFiniteLoss(RuntimeError):
    """Training diverged: a loss term is NaN or infinite. The work failed (exit 1)."""

    def __init__(self, step: int, terms: dict[str, float], last_checkpoint: str | None = None):
        self.step = step
        self.terms = terms
        self.last_checkpoint = last_checkpoint
        listed = ", ".join(f"{k}={v}" for k, v in terms.items())
        kept = (
            f"; the last good checkpoint is intact: {last_checkpoint}"
            if last_checkpoint
            else "; no checkpoint had been written yet"
        )
        super().__init__(f"non-finite loss at step {step}: {listed}{kept}")


def flatten_losses(value: Any, prefix: str = "loss") -> dict[str, torch.Tensor]:
    """A tensor, a (nested) dict or a list of loss tensors -> ``{name: scalar tensor}``."""
    if isinstance(value, torch.Tensor):
        return {prefix: value if value.dim() == 0 else value.sum()}
    if isinstance(value, Mapping):
        out: dict[str, torch.Tensor] = {}
        for key, item in value.items():
            out.update(flatten_losses(item, str(key)))
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten_losses(item, f"{prefix}_{i}"))
        return out
    raise TypeError(f"cannot read a loss from {type(value).__name__}")


@register_type("collect_loss_by_index")
def collect_loss_by_index(index: int) -> LossCollector:
    """Losses are ``outputs[index]`` (a model returning ``(predictions, losses)`` uses 1)."""

    def collect(outputs: Any) -> dict[str, torch.Tensor]:
        return flatten_losses(outputs[index])

    return collect


@register_type("collect_loss_by_regex")
def collect_loss_by_regex(pattern: str = "loss") -> LossCollector:
    """Losses are the entries of a dict output whose key matches ``pattern``."""
    regex = re.compile(pattern)

    def collect(outputs: Any) -> dict[str, torch.Tensor]:
        if not isinstance(outputs, Mapping):
            raise TypeError(f"collect_loss_by_regex needs a dict output, got {type(outputs).__name__}")
        return flatten_losses({k: v for k, v in outputs.items() if regex.search(str(k))})

    return collect


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


@register_type("MultiBatchProcessor")
class MultiBatchProcessor:
    """Forward a batch (or a list of sub-batches, gradients accumulated), then step.

    ``need_grad_update=False`` makes it an evaluation step (no grad, no optimizer).
    ``grad_clip_norm`` clips the global gradient norm before the optimizer step.
    """

    def __init__(
        self,
        need_grad_update: bool = True,
        loss_collector: LossCollector | None = None,
        grad_clip_norm: float | None = None,
    ) -> None:
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0, got {grad_clip_norm}")
        self.need_grad_update = need_grad_update
        self.loss_collector = loss_collector or collect_loss_by_regex("loss")
        self.grad_clip_norm = grad_clip_norm

    def __call__(
        self,
        model: torch.nn.Module,
        batch: Any,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
        step: int = 0,
    ) -> tuple[Any, dict[str, float]]:
        """Returns the model outputs (of the last sub-batch) and the loss terms as floats."""
        sub_batches = batch if isinstance(batch, list) else [batch]
        if not self.need_grad_update:
            with torch.no_grad():
                outputs = [model(move_to(b, device)) for b in sub_batches]
            return outputs[-1], {}
        if optimizer is None:
            raise RuntimeError("a training step needs an optimizer")
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        outputs = None
        for sub in sub_batches:
            outputs = model(move_to(sub, device))
            losses = self.loss_collector(outputs)
            values = {k: float(v.detach()) for k, v in losses.items()}
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                raise NonFiniteLoss(step, bad)
            sum(losses.values()).backward()
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip_norm)
        optimizer.step()
        return outputs, totals
