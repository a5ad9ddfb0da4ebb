"""Where the compiled onnxruntime model first parts from the torch fixed-point model.

`hat validate` says *that* the outputs differ; this says *where*: every quantized
activation of the exported graph (a QuantizeLinear that export recorded), in graph order,
compared in the integer domain between the torch fixed-point model and the optimized
graph onnxruntime runs. Both compute the same fixed-point arithmetic, so a faithful
deployment differs by at most one step (a rounding at another place); the first tensor
beyond that is where the cause is, and everything after it inherits the error.

The optimized graph renames tensors (a QLinearConv's output is named after the node,
and the layout transform wraps it in Transposes, channels last), so each optimized node
is traced back to the exported node it came from by name
(:func:`hat.deploy.node_names.exported_node_name`), and from there to the QuantizeLinear
that quantizes that node's output. The torch value of that QuantizeLinear is the output
of the module it ran in (``module_path_of`` its name): an activation quantizer
(``<layer>.out_quant``) or an op that keeps its input's grid (a max-pool, a reshape).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from hat.deploy.node_names import exported_node_name, module_path_of
from hat.deploy.onnx_graph import QUANTIZE, attribute
from hat.quant.fake_quant import ActFakeQuant
from hat.quant.qmodules import QTransparent

#: Ops whose output does not keep the layout of their input (they change its rank or order).
_LAYOUT_RESETTING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Gather"}
#: Quantizer children whose Q nodes belong to the layer that owns them.
_QUANTIZER_SUFFIXES = (".out_quant", ".quant")


@dataclass
class Activation:
    """A quantized activation as export recorded it (``export.json`` ``activations``)."""

    node: str
    module: str
    scale: float
    zero_point: int


@dataclass
class TensorAgreement:
    """One activation, compared over every sample: steps of its quantization grid."""

    node: str
    tensor: str
    module: str
    layer: str
    scale: float
    elements: int = 0
    beyond_one_step: int = 0
    max_steps: int = 0

    @property
    def share_beyond_one_step(self) -> float:
        return self.beyond_one_step / self.elements if self.elements else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share_beyond_one_step": self.share_beyond_one_step}


@dataclass
class DivergenceReport:
    """Every compared activation in graph order; the first beyond one step, if any."""

    compared: list[TensorAgreement]
    not_compared: list[dict[str, str]] = field(default_factory=list)
    samples: int = 0

    @property
    def first(self) -> TensorAgreement | None:
        return next((t for t in self.compared if t.max_steps > 1), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "samples": self.samples,
            "first_divergence": None if first is None else first.to_dict(),
            "compared": [t.to_dict() for t in self.compared],
            "not_compared": self.not_compared,
        }


def activations_of(export_info: Mapping[str, Any]) -> list[Activation]:
    """export.json's quantized activations, in graph order."""
    return [
        Activation(a["node"], a.get("module") or module_path_of(a["node"]), float(a["scale"]), int(a["zero_point"]))
        for a in export_info.get("activations", [])
    ]


def optimized_tensors(exported: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[str, list[str]]:
    """Exported QuantizeLinear node -> the optimized graph's tensors that may hold its output, in graph order.

    A candidate is the output of an optimized node made from that QuantizeLinear, or
    from the node whose output it quantizes (a QLinearConv fuses the Conv with its Q).
    """
    names = {node.name for node in exported.graph.node}
    by_name = {node.name: node for node in exported.graph.node}
    quantizer_of: dict[str, str] = {}
    for node in exported.graph.node:
        if node.op_type == QUANTIZE and node.input:
            quantizer_of.setdefault(node.input[0], node.name)
    found: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        origin = exported_node_name(node.name, names)
        if origin is None or not node.output:
            continue
        source = by_name[origin]
        q_node = origin if source.op_type == QUANTIZE else quantizer_of.get(source.output[0] if source.output else "")
        if q_node is not None:
            found.setdefault(q_node, []).append(node.output[0])
    return found


def channels_last_tensors(optimized: onnx.GraphProto) -> set[str]:
    """The 4-D tensors of an optimized graph held channels last (NHWC).

    onnxruntime's layout transform turns int8 convs into ``channels_last`` QLinearConvs
    between a Transpose to NHWC and one back; the ops between them (QLinearAdd,
    QLinearConcat, ...) work on NHWC data too. The layout is followed in graph order:
    a Transpose sets it from its ``perm``, a channels-last node sets it, a reshaping
    op clears it, and every other op passes on its first input's.
    """
    last: set[str] = set()
    for node in optimized.node:
        if node.op_type == "Transpose":
            on = list(attribute(node, "perm", [])) == [0, 2, 3, 1]
        elif attribute(node, "channels_last", 0) == 1 or node.op_type.startswith("Nhwc"):
            on = True
        elif node.op_type in _LAYOUT_RESETTING:
            on = False
        else:
            on = bool(node.input) and node.input[0] in last
        if on:
            last.update(name for name in node.output if name)
    return last


class TorchActivations:
    """The torch model's quantized tensors by module path, one list entry per call, for one forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if isinstance(module, (ActFakeQuant, QTransparent))
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> None:
            self.values.setdefault(name, []).append(output.detach().cpu().numpy().copy())  # later ops may be in place

        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def layer_of(module: str) -> str:
    """``backbone.conv.out_quant`` -> ``backbone.conv`` (the name `hat analyze` lists layers by)."""
    for suffix in _QUANTIZER_SUFFIXES:
        if module.endswith(suffix):
            return module[: -len(suffix)]
    return module


def compare_sample(
    activations: Sequence[Activation],
    candidates: Mapping[str, list[str]],
    ort_values: Mapping[str, np.ndarray],
    torch_values: Mapping[str, list[np.ndarray]],
    report: DivergenceReport,
    channels_last: Collection[str] = (),
) -> None:
    """Add one sample's comparison of every activation to ``report`` (created on the first sample)."""
    first_sample = report.samples == 0
    seen: dict[str, int] = {}
    by_node = {t.node: t for t in report.compared}
    for act in activations:
        call = seen.get(act.module, 0)
        seen[act.module] = call + 1
        reason, tensor, steps = _steps(act, call, candidates, ort_values, torch_values, channels_last)
        if reason is not None:
            if first_sample:
                report.not_compared.append({"node": act.node, "module": act.module, "reason": reason})
            continue
        entry = by_node.get(act.node)
        if entry is None:
            if not first_sample:
                continue  # compared only where the first sample could be
            entry = TensorAgreement(act.node, tensor, act.module, layer_of(act.module), act.scale)
            report.compared.append(entry)
            by_node[act.node] = entry
        entry.elements += int(steps.size)
        entry.beyond_one_step += int((steps > 1).sum())
        entry.max_steps = max(entry.max_steps, int(steps.max(initial=0)))
    report.samples += 1


def _steps(
    act: Activation,
    call: int,
    candidates: Mapping[str, list[str]],
    ort_values: Mapping[str, np.ndarray],
    torch_values: Mapping[str, list[np.ndarray]],
    channels_last: Collection[str],
) -> tuple[str | None, str, np.ndarray]:
    """(reason it cannot be compared, or None; the optimized tensor; |code difference| per element)."""
    none = np.zeros(0, dtype=np.int64)
    calls = torch_values.get(act.module, [])
    if call >= len(calls):
        return "no torch module output for this QuantizeLinear", "", none
    tensor = integer_tensor(act, candidates, ort_values)
    if tensor is None:
        return "no integer tensor for it in the optimized graph (fused away or renamed)", "", none
    got = ort_values[tensor]
    ref = calls[call]
    if tensor in channels_last and ref.ndim == 4:
        ref = ref.transpose(0, 2, 3, 1)
    if got.shape != ref.shape:
        return f"shapes differ: torch {ref.shape}, onnxruntime {got.shape}", tensor, none
    info = np.iinfo(got.dtype)
    codes = np.clip(np.rint(ref.astype(np.float64) / act.scale) + act.zero_point, info.min, info.max)
    return None, tensor, np.abs(got.astype(np.int64) - codes.astype(np.int64))


def integer_tensor(
    act: Activation, candidates: Mapping[str, list[str]], ort_values: Mapping[str, np.ndarray]
) -> str | None:
    """The optimized graph's integer tensor holding ``act``: the first candidate onnxruntime computed, if any."""
    return next((t for t in candidates.get(act.node, []) if t in ort_values and ort_values[t].dtype.kind in "iu"), None)


class ForcedActivations(TorchActivations):
    """The torch model fed onnxruntime's own quantized tensors: the error each layer makes by itself.

    The free-running comparison cannot tell a layer that computes differently from one
    that amplifies a one-step difference it was fed: deep, narrow layers turn ties
    rounded the other way upstream into several steps downstream. Here each quantized
    tensor's torch value is recorded (as :class:`TorchActivations` does) and then replaced
    by onnxruntime's value of the same tensor, so the next layer starts from exactly what
    onnxruntime fed it. A layer beyond one step in this comparison has arithmetic of its
    own that differs (accumulation, requantization, a kernel); a layer within one step
    here but beyond it free-running only propagates what came before it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        activations: Sequence[Activation],
        candidates: Mapping[str, list[str]],
        ort_values: Mapping[str, np.ndarray],
        channels_last: Collection[str] = (),
    ) -> None:
        self._forced: dict[str, list[np.ndarray | None]] = {}
        for act in activations:
            tensor = integer_tensor(act, candidates, ort_values)
            value = None
            if tensor is not None:
                value = (ort_values[tensor].astype(np.float32) - np.float32(act.zero_point)) * np.float32(act.scale)
                if tensor in channels_last and value.ndim == 4:
                    value = np.ascontiguousarray(value.transpose(0, 3, 1, 2))
            self._forced.setdefault(act.module, []).append(value)
        super().__init__(model)

    def _hook(self, name: str) -> Callable[..., torch.Tensor | None]:
        record = super()._hook(name)

        def force(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            record(module, args, output)
            call = len(self.values[name]) - 1
            forced = self._forced.get(name, [])
            value = forced[call] if call < len(forced) else None
            if value is None or tuple(value.shape) != tuple(output.shape):
                return None  # not compared: torch keeps its own value
            return torch.from_numpy(value).to(dtype=output.dtype, device=output.device)

        return force
