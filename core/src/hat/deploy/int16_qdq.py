"""Export 16-bit fake quantization as 16-bit QuantizeLinear / DequantizeLinear.

torch.onnx's symbolics for ``fake_quantize_per_tensor_affine`` and ``_per_channel_affine``
accept only the 8-bit ranges. HAT's int16 layers (``precision: int16``, see
:mod:`hat.quant.precision`) call them with (-32768, 32767); while a model is exported,
:func:`int16_symbolics` replaces both symbolics with ones that write that range as a
QuantizeLinear / DequantizeLinear pair with an int16 zero point (the zero point's type
is what sets a QuantizeLinear's range in ONNX) and hand every other range to torch's own.

ONNX has int16 QuantizeLinear / DequantizeLinear from opset 21 (:data:`INT16_OPSET`,
ONNX 1.16); onnxruntime's CPU provider runs them since 1.18 (checked with 1.31). The
standard ops, not onnxruntime's ``com.microsoft`` Q/DQ (int16 since 1.17), so the graph
needs no runtime-specific domain and HAT's post-pass treats every Q/DQ alike. It has no int16
QLinearConv or QLinearMatMul, so an int16 layer runs as DQ -> float op -> Q: it costs a
float kernel plus the (de)quantization, and buys 256 times finer steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.onnx import symbolic_helper, symbolic_opset13

from hat.quant.fake_quant import ActFakeQuant, WeightFakeQuant

#: The first ONNX opset whose QuantizeLinear / DequantizeLinear take int16.
INT16_OPSET = 21
INT16_RANGE = (-32768, 32767)
_PER_TENSOR = "aten::fake_quantize_per_tensor_affine"
_PER_CHANNEL = "aten::fake_quantize_per_channel_affine"
_INT16 = 5  # onnx.TensorProto.INT16
_FLOAT = 1  # onnx.TensorProto.FLOAT


def has_16_bit(model: torch.nn.Module) -> bool:
    """Whether any quantizer of ``model`` is on a 16-bit grid (its export needs :data:`INT16_OPSET`)."""
    quantizers = (ActFakeQuant, WeightFakeQuant)
    return any(isinstance(m, quantizers) and m.bits == 16 for m in model.modules())


@symbolic_helper.parse_args("v", "v", "v", "i", "i")
def _per_tensor(g, inputs, scale, zero_point, quant_min=-128, quant_max=127):
    if (quant_min, quant_max) != INT16_RANGE:
        return symbolic_opset13.fake_quantize_per_tensor_affine(g, inputs, scale, zero_point, quant_min, quant_max)
    zero_point = g.op("Cast", zero_point, to_i=_INT16)
    scale = g.op("Cast", scale, to_i=_FLOAT)
    return g.op("DequantizeLinear", g.op("QuantizeLinear", inputs, scale, zero_point), scale, zero_point)


@symbolic_helper.parse_args("v", "v", "v", "i", "i", "i")
def _per_channel(g, inputs, scale, zero_point, axis, quant_min=-128, quant_max=127):
    if (quant_min, quant_max) != INT16_RANGE:
        return symbolic_opset13.fake_quantize_per_channel_affine(
            g, inputs, scale, zero_point, axis, quant_min, quant_max
        )
    zero_point = g.op("Cast", zero_point, to_i=_INT16)
    quantized = g.op("QuantizeLinear", inputs, scale, zero_point, axis_i=axis)
    return g.op("DequantizeLinear", quantized, scale, zero_point, axis_i=axis)


@contextmanager
def int16_symbolics(opset: int) -> Iterator[None]:
    """While exporting at ``opset``: 16-bit fake quantization exports as int16 Q/DQ."""
    torch.onnx.register_custom_op_symbolic(_PER_TENSOR, _per_tensor, opset)
    torch.onnx.register_custom_op_symbolic(_PER_CHANNEL, _per_channel, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_PER_TENSOR, opset)
        torch.onnx.unregister_custom_op_symbolic(_PER_CHANNEL, opset)
