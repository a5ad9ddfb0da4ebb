"""The quantization backend protocol, and HAT's default torch-native backend.

A backend turns a float model into its calibration and QAT simulations and into the
fixed-point model that export traces. Another backend (a vendor's toolchain, say)
plugs in through the ``hat_quant_backends`` hook and is chosen by a pipeline's
``quant_backend:``; converters only talk to this protocol. The ``qconfig_params`` a
backend receives carry the config's ``deploy_target`` (``portable`` or ``vnni``, see
:mod:`hat.quant.target`): the weight ranges it must keep so that the exported model
runs exactly on that target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from hat.quant.prepare import ConversionReport, convert, freeze, quantizers
from hat.quant.qconfig import QConfig


class QuantBackend(Protocol):
    name: str

    def prepare_calibration(
        self, model: torch.nn.Module, qconfig_params: dict[str, Any]
    ) -> tuple[torch.nn.Module, ConversionReport]:
        """The model with observers, ready for the calibrator."""

    def prepare_qat(
        self, model: torch.nn.Module, qconfig_params: dict[str, Any]
    ) -> tuple[torch.nn.Module, ConversionReport]:
        """The model with trainable fake quantization (same state-dict keys as calibration)."""

    def convert_fixed(self, model: torch.nn.Module) -> torch.nn.Module:
        """The fixed-point model: constants on their grids, what export traces."""


class TorchNativeBackend:
    """Module swapping onto torch's fake-quantize ops (which export to ONNX Q/DQ)."""

    name = "torch_native"

    def prepare_calibration(self, model, qconfig_params):
        return convert(model, QConfig.from_params(qconfig_params))

    def prepare_qat(self, model, qconfig_params):
        qconfig = QConfig.from_params(qconfig_params)
        model, report = convert(model, qconfig)
        for quantizer in quantizers(model):
            quantizer.init_from_data = True  # QAT straight from float: first batch sets the range
            if qconfig.act_learnable:
                quantizer.enable_learning()
        return model, report

    def convert_fixed(self, model):
        return freeze(model)


#: A backend factory: called with no arguments, it returns a :class:`QuantBackend`.
BackendFactory = Callable[[], QuantBackend]


def builtin_backends() -> dict[str, BackendFactory]:
    """The backends core ships, by name: what core's ``hat_quant_backends`` contributes.

    Also the table a convert pipeline uses when its caller hands it none (a pipeline
    built and called directly, as in tests), so nothing below the plugin host has to
    look the host up.
    """
    return {TorchNativeBackend.name: TorchNativeBackend}
