"""An exponential moving average of the weights, kept beside the live model.

Averaged weights usually validate better than the last step's and are what detection
recipes ship, so the EMA is a callback the validation and checkpoint callbacks can
borrow through :meth:`ExponentialMovingAverage.swapped`. Only float parameters are
averaged; buffers (BatchNorm running statistics, step counters) are copied from the
live model, because averaging statistics that were themselves computed under other
weights has no meaning, and integer buffers cannot be averaged at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hat.engine.callbacks.base import Callback
from hat.engine.state import LoopState
from hat.registry import register_type


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (non-persistent buffers too, unlike ``state_dict``)."""
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return tensors


@register_type()
class ExponentialMovingAverage(Callback):
    """EMA of the plain model's float parameters, updated after every ``update_every`` steps.

    With ``warmup`` the decay starts low and rises as ``(1 + n) / (10 + n)`` (``n`` =
    updates done) up to ``decay``, so the average is not dominated by the random
    initial weights in short runs. The average lives on the model's device; its state
    (tensors and the update count) is saved by the checkpoint so a resume is exact.
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, update_every: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every!r}")
        self.decay = decay
        self.warmup = warmup
        self.update_every = update_every
        self.num_updates = 0
        self._shadow: dict[str, torch.Tensor] | None = None
        self._param_names: set[str] = set()

    # -- hooks --------------------------------------------------------------------------
    def on_loop_begin(self, state: LoopState) -> None:
        model = state.plain_model
        self._param_names = {name for name, _ in model.named_parameters()}
        live = _named_tensors(model)
        if self._shadow is None:
            self._shadow = {name: t.detach().clone() for name, t in live.items()}
            return
        # Restored from a checkpoint (possibly mapped to the CPU): follow the model's devices.
        self._check_names(live)
        self._shadow = {name: t.to(device=live[name].device) for name, t in self._shadow.items()}

    def on_step_end(self, state: LoopState, batch: Any = None, outputs: Any = None) -> None:
        if state.global_step % self.update_every == 0:
            self.update(state.plain_model)

    # -- the average --------------------------------------------------------------------
    def current_decay(self) -> float:
        """Decay used by the next update."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights into the average (also usable without a loop)."""
        model = _unwrap(model)
        live = _named_tensors(model)
        if self._shadow is None:
            self._param_names = {name for name, _ in model.named_parameters()}
            self._shadow = {name: t.detach().clone() for name, t in live.items()}
        self._check_names(live)
        weight = 1.0 - self.current_decay()
        for name, average in self._shadow.items():
            value = live[name].detach()
            if name in self._param_names and average.is_floating_point():
                average.lerp_(value.to(average.dtype), weight)
            else:
                average.copy_(value)
        self.num_updates += 1

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run a block with the averaged weights in ``model``, then put the live ones back.

        The weights are copied in place, so the optimizer and a DDP wrapper keep
        pointing at the same tensors; the live values are restored exactly even if the
        block raises.
        """
        if self._shadow is None:
            raise RuntimeError("the EMA has no weights yet: call update() or run the loop first")
        plain = _unwrap(model)
        live = _named_tensors(plain)
        self._check_names(live)
        with torch.no_grad():
            backup = {name: t.detach().clone() for name, t in live.items()}
            for name, average in self._shadow.items():
                live[name].copy_(average)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, saved in backup.items():
                    live[name].copy_(saved)

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights by name, e.g. to save as a stand-alone model."""
        if self._shadow is None:
            raise RuntimeError("the EMA has no weights yet: call update() or run the loop first")
        return dict(self._shadow)

    def _check_names(self, live: dict[str, torch.Tensor]) -> None:
        assert self._shadow is not None
        if set(live) != set(self._shadow):
            missing = sorted(set(live) - set(self._shadow))[:5]
            extra = sorted(set(self._shadow) - set(live))[:5]
            raise ValueError(
                f"the EMA weights do not match the model (missing in EMA: {missing}, unknown to model: {extra}); "
                "was the model changed after the EMA was created?"
            )

    # -- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_updates": self.num_updates,
            "shadow": None if self._shadow is None else dict(self._shadow),
            "param_names": sorted(self._param_names),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        shadow = state.get("shadow")
        self._shadow = None if shadow is None else {k: v.detach().clone() for k, v in shadow.items()}
        self._param_names = set(state.get("param_names", ()))
