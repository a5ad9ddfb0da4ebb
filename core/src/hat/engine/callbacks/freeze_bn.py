"""Keep BatchNorm running statistics fixed while the rest of the model trains.

Fine-tuning with small per-device batches (and quantization-aware training, whose
observers were calibrated on given statistics) is hurt by BatchNorm re-estimating its
mean and variance from a few samples. Putting the BN layers in eval mode stops that,
but the trainer calls ``model.train()`` at every epoch start and after validation,
which switches them back; so the callback re-applies itself at loop start, at every
epoch start, and (cheaply, on a cached list of layers) before every training step.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from hat.engine.callbacks.base import Callback
from hat.engine.state import LoopState
from hat.registry import register_type


def batch_norm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model``: 1d/2d/3d, SyncBatchNorm and the lazy variants.

    ``_BatchNorm`` is their common base class in torch, so one check covers them all.
    """
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@register_type()
class FreezeBNStatistics(Callback):
    """Hold every BatchNorm layer in eval mode during training (optionally freeze its affine).

    With ``freeze_affine`` the layers' ``weight`` and ``bias`` stop receiving gradients
    too. Under DistributedDataParallel, parameters must be frozen before the model is
    wrapped (DDP waits for gradients of the parameters that required them at wrap time),
    so call :meth:`apply` on the plain model before wrapping when combining the two.
    """

    def __init__(self, freeze_affine: bool = False) -> None:
        self.freeze_affine = freeze_affine
        self._model: torch.nn.Module | None = None
        self._layers: list[_BatchNorm] = []

    def apply(self, model: torch.nn.Module) -> int:
        """Freeze the BN layers of ``model`` now; returns how many were found."""
        self._model = model
        self._layers = batch_norm_layers(model)
        for layer in self._layers:
            layer.eval()
            if self.freeze_affine:
                for param in (layer.weight, layer.bias):
                    if param is not None:
                        param.requires_grad_(False)
        return len(self._layers)

    def _ensure_frozen(self, state: LoopState) -> None:
        model = state.plain_model
        if model is not self._model:  # a new model (e.g. QAT preparation) needs a fresh scan
            self.apply(model)
            return
        for layer in self._layers:
            if layer.training:
                layer.eval()

    def on_loop_begin(self, state: LoopState) -> None:
        self.apply(state.plain_model)

    def on_epoch_begin(self, state: LoopState) -> None:
        self.apply(state.plain_model)

    def on_step_begin(self, state: LoopState) -> None:
        self._ensure_frozen(state)
