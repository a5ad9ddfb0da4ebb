"""Write a HAT model as ONNX: the int8 Q/DQ model for deployment and its float twin.

HAT models take one dict of tensors and return a tensor or a dict; ONNX wants
positional inputs and named outputs. A thin wrapper bridges the two so the graph's
inputs are the dict keys (in order) and its outputs carry the model's own names, and
nodes are renamed after the full path of their module (``/backbone/stage1/conv/Conv``
for ``backbone.stage1.conv``) so every message about a node can name the module. The
int8 graph then goes through :func:`finalize_qdq` so onnxruntime can fuse it into
int8 kernels.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.overrides import TorchFunctionMode

from hat import console
from hat.console import is_quiet
from hat.deploy.errors import ExportError
from hat.deploy.files import atomic_write_bytes
from hat.deploy.int16_qdq import INT16_OPSET, has_16_bit, int16_symbolics
from hat.deploy.node_names import module_path_of
from hat.deploy.onnx_graph import QUANTIZE, GraphIndex
from hat.deploy.qdq_finalize import finalize_qdq
from hat.deploy.saturation import check_saturation
from hat.deploy.scope_names import CallRecorder, rename_to_module_paths
from hat.quant.fake_quant import WeightFakeQuant
from hat.quant.target import INT16_MAX, DeployTarget, get_target

__all__ = ["ActivationQuant", "ExportInfo", "export_float_onnx", "export_onnx", "finalize_qdq", "module_path_of"]

#: Attribute under which the wrapper holds the user's model; stripped from every name.
_WRAPPED = "model"


@dataclass(frozen=True)
class ActivationQuant:
    """How one activation tensor is quantized on the device (``dtype`` is int8 or uint8)."""

    tensor: str
    scale: float
    zero_point: int
    dtype: str
    node: str
    module: str


@dataclass
class ExportInfo:
    """What was exported, for ``export.json`` and for the commands that run the model."""

    path: Path
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    activations: list[ActivationQuant] = field(default_factory=list)
    int8_initializers: int = 0
    int32_initializers: int = 0
    float_initializers: int = 0
    initializer_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    #: The deploy target the model was quantized for (:meth:`DeployTarget.to_dict`).
    deploy_target: dict[str, Any] | None = None
    #: The static saturation check (:meth:`SaturationReport.summary`).
    saturation: dict[str, Any] | None = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    def write_json(self, path: Path, **extra: Any) -> None:
        """Write ``to_dict()`` (plus ``extra``, e.g. the source checkpoint) as JSON, atomically."""
        atomic_write_bytes(Path(path), json.dumps({**self.to_dict(), **extra}, indent=2).encode())


def export_onnx(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: Path,
    *,
    opset: int = 17,
    activations: str = "uint8",
    target: DeployTarget | None = None,
) -> ExportInfo:
    """Export a quantized (fake-quant) model as an int8 Q/DQ ONNX graph at ``path``.

    ``target`` (default: the portable one) is the deploy target the model was quantized
    for: recorded in the result, and checked statically (:mod:`hat.deploy.saturation`):
    a weight a non-VNNI kernel would saturate on, exported for the portable target, is
    an error naming the node, since that model would not run as it was trained.

    ``activations`` is passed to :func:`finalize_qdq` (``"uint8"``: the form
    onnxruntime's x86 kernels fuse). Raises :class:`ExportError` if the exporter cannot
    handle an op (naming the module when it can be found), if a bias is off its int32
    grid, or if the graph holds no QuantizeLinear at all (the model was never quantized).

    A model with 16-bit layers (``precision: int16``) is exported at opset 21 at least,
    the first with int16 QuantizeLinear / DequantizeLinear (see :mod:`hat.deploy.int16_qdq`);
    the opset used is the one recorded.
    """
    if has_16_bit(model) and opset < INT16_OPSET:
        console.info(
            f"export: opset {INT16_OPSET} instead of {opset}, for the int16 QuantizeLinear of the int16 layers"
        )
        opset = INT16_OPSET
    # torch's own constant folding would turn the Q/DQ of a weight held in a plain
    # (non-persistent) buffer into a float constant; finalize_qdq folds everything else.
    with int16_symbolics(opset):
        proto = _export_proto(model, inputs, opset, fold=False)
    target = target or get_target(None)
    finalize_qdq(proto, activations=activations, dense_weight_max=target.dense_weight_max)
    if not any(n.op_type == QUANTIZE for n in proto.graph.node):
        raise ExportError(
            "the exported graph has no QuantizeLinear: the model is not quantized",
            hint="calibrate (or QAT-train) the model before exporting it",
        )
    saturation = check_saturation(proto)
    if not target.needs_vnni and not saturation.safe:
        worst = saturation.unsafe()[0]
        raise ExportError(
            f"{len(saturation.unsafe())} int8 kernel(s) would saturate on CPUs without VNNI, e.g. node "
            f"{worst.node} ({worst.module or 'no module'}): weights {worst.pair} times activation code "
            f"{worst.activation_max} exceeds {INT16_MAX}",
            hint=f"the model was not quantized for deploy target {target.name!r}: calibrate and train it with "
            f"the same deploy_target you export with",
        )
    atomic_write_bytes(Path(path), proto.SerializeToString())
    info = _describe(proto, Path(path), opset, float_on_purpose=_float_weight_modules(model))
    info.deploy_target = target.to_dict()
    info.saturation = saturation.summary()
    return info


def export_float_onnx(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path, *, opset: int = 17
) -> ExportInfo:
    """Export the float model with the same input/output names (no Q/DQ post-pass)."""
    proto = _export_proto(model, inputs, opset, fold=True)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported float graph is not valid ONNX: {exc}") from exc
    atomic_write_bytes(Path(path), proto.SerializeToString())
    return _describe(proto, Path(path), opset)


# -- export ----------------------------------------------------------------------------


class _DictModel(torch.nn.Module):
    """Positional tensors in, the model's dict built from them; outputs flattened to a tuple."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]):
        super().__init__()
        setattr(self, _WRAPPED, model)
        self.keys = list(keys)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = getattr(self, _WRAPPED)(dict(zip(self.keys, tensors, strict=True)))
        return tuple(t for _, t in _named_outputs(outputs))


def _named_outputs(outputs: Any) -> list[tuple[str, torch.Tensor]]:
    """A tensor -> ``output``; a dict -> its keys; a tuple/list -> ``output_0``..."""
    if isinstance(outputs, torch.Tensor):
        named = [("output", outputs)]
    elif isinstance(outputs, Mapping):
        named = [(str(k), v) for k, v in outputs.items()]
    elif isinstance(outputs, (tuple, list)):
        named = [(f"output_{i}", v) for i, v in enumerate(outputs)]
    else:
        raise ExportError(f"the model returned a {type(outputs).__name__}; export needs a tensor, a dict or a tuple")
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            raise ExportError(
                f"model output {name!r} is a {type(value).__name__}, not a tensor",
                hint="keep post-processing outside the exported model; return the raw tensors",
            )
    return named


def _export_proto(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], opset: int, *, fold: bool
) -> onnx.ModelProto:
    if not inputs:
        raise ExportError("export needs at least one example input")
    keys = list(inputs)
    was_training = model.training
    model.eval()  # the exporter traces in eval mode; the naming run must not update BN statistics either
    try:
        with torch.no_grad():
            output_names = [name for name, _ in _named_outputs(model(dict(inputs)))]
        return _trace(model, inputs, keys, output_names, opset, fold)
    finally:
        model.train(was_training)


def _trace(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    keys: list[str],
    output_names: list[str],
    opset: int,
    fold: bool,
) -> onnx.ModelProto:
    wrapper = _DictModel(model, keys)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), CallRecorder(wrapper) as calls:
            # The TorchScript exporter is deprecated but is the one that needs no onnxscript.
            for message in (r".*legacy TorchScript-based ONNX export", r"The feature will be removed"):
                warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
            # Quantizers read their frozen scales as Python numbers: constants in the graph, as intended.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            _quiet_exporter_warnings()
            torch.onnx.export(
                wrapper,
                tuple(inputs[k] for k in keys),
                buffer,
                input_names=keys,
                output_names=output_names,
                opset_version=opset,
                do_constant_folding=fold,
                dynamo=False,
            )
    except torch.onnx.OnnxExporterError as exc:
        op = _op_in_message(str(exc))
        module = _module_running(model, inputs, op) if op else None
        raise ExportError(
            f"torch.onnx cannot export this model: {exc}",
            module_path=module,
            hint="replace the op in that module, or keep it outside the exported model",
        ) from exc
    proto = onnx.load_from_string(buffer.getvalue())
    rename_to_module_paths(proto.graph, wrapper, strip=_WRAPPED, keep=set(keys) | set(output_names), calls=calls)
    return proto


def _quiet_exporter_warnings() -> None:
    """Inside the caller's ``catch_warnings``: drop what torch.onnx says that no user can act on.

    "Constant folding - Only steps=1 can be constant folded ... not applied" (and its
    siblings for Slice, Squeeze, Range) means an op stays in the graph to be computed at
    run time instead of at export: the graph is still correct, onnxruntime folds such
    constants itself when it optimizes the session, and nothing in a HAT config changes
    it. So they are always dropped. Under ``--quiet`` every other UserWarning raised from
    inside torch during the export is dropped too: the user asked for errors and results
    only, and the warnings that change what a user should do are HAT's own
    (:func:`hat.console.warn`, shown even then).
    """
    warnings.filterwarnings("ignore", message=r"Constant folding - ", category=UserWarning)
    # Opset 21 (int16 Q/DQ, hat.deploy.int16_qdq) is past what torch says it supports; the
    # ops HAT exports have the same form there, and onnx.checker checks the result.
    warnings.filterwarnings("ignore", message=r"Exporting to ONNX opset version")
    if is_quiet():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(\.|$)")


def _op_in_message(message: str) -> str | None:
    match = re.search(r"'((?:aten|prim|quantized)::\w+)'", message)
    return match.group(1) if match else None


def _module_running(model: torch.nn.Module, inputs: dict[str, torch.Tensor], op: str) -> str | None:
    """The module whose forward called ``op`` (e.g. ``aten::linalg_inv``), found by re-running eagerly."""
    target = op.split("::", 1)[1].lstrip("_")
    stack: list[str] = []
    found: list[str] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "").lstrip("_")
            if not found and name in (target, f"{target}_", target.removeprefix("linalg_")):
                found.append(stack[-1] if stack else "")
            return func(*args, **(kwargs or {}))

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
        handles.append(module.register_forward_hook(lambda _m, _a, _o: stack.pop()))
    try:
        with torch.no_grad(), Spy():
            model(dict(inputs))
    except Exception:  # locating the module is best effort; the export error is what matters
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


# -- description -------------------------------------------------------------------------


def _float_weight_modules(model: torch.nn.Module) -> set[str]:
    """Paths of the modules whose weights ``precision`` keeps float (their float weight is meant)."""
    return {
        name.rsplit(".", 1)[0] if "." in name else ""
        for name, module in model.named_modules()
        if isinstance(module, WeightFakeQuant) and module.keep_float
    }


def _describe(
    proto: onnx.ModelProto, path: Path, opset: int, *, float_on_purpose: set[str] | frozenset[str] = frozenset()
) -> ExportInfo:
    graph = proto.graph
    index = GraphIndex(graph)
    activations = []
    for node in graph.node:
        if node.op_type != QUANTIZE:
            continue
        scale = index.constant(node.input[1])
        zero = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or scale.size != 1 or zero is None:
            continue
        activations.append(
            ActivationQuant(
                tensor=node.input[0],
                scale=float(scale.reshape(())),
                zero_point=int(zero.reshape(())),
                dtype=zero.dtype.name,
                node=node.name,
                module=module_path_of(node.name),
            )
        )
    counts = {"int8": 0, "int32": 0, "float": 0}
    total_bytes = 0
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        total_bytes += array.nbytes
        if array.dtype in (np.int8, np.uint8):
            counts["int8"] += 1
        elif array.dtype == np.int32:
            counts["int32"] += 1
        elif array.dtype.kind == "f":
            counts["float"] += 1
    return ExportInfo(
        path=path,
        opset=opset,
        inputs=[_value_description(v) for v in graph.input if v.name not in index.initializers],
        outputs=[{**_value_description(v), **_output_quantization(v.name, index)} for v in graph.output],
        activations=activations,
        int8_initializers=counts["int8"],
        int32_initializers=counts["int32"],
        float_initializers=counts["float"],
        initializer_bytes=total_bytes,
        warnings=_float_weights_between_int8(index, float_on_purpose),
    )


def _float_weights_between_int8(index: GraphIndex, float_on_purpose: set[str] | frozenset[str]) -> list[str]:
    """Convs/matmuls that read and write int8 tensors but hold a float weight.

    onnxruntime quantizes such a weight itself (from --opt 1 on, its WeightBiasQuantization
    optimizer), with its own scales, so the deployed layer is no longer the one the
    simulation evaluated. HAT's onnxruntime backend turns that optimizer off, but another
    runtime may not; layers in ``float_on_purpose`` (``precision: float`` weights) are meant.
    """
    found = []
    for node in index.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = index.constant(node.input[1]) if node.input[1] in index.initializers else None
        consumers = index.consumers.get(node.output[0], [])
        if (
            weight is not None
            and module_path_of(node.name) not in float_on_purpose
            and weight.dtype.kind == "f"
            and index.dequantized_from(node.input[0]) is not None
            and consumers
            and all(c.op_type == QUANTIZE for c in consumers)
        ):
            found.append(
                f"module {module_path_of(node.name) or '(root)'}: {node.op_type} {node.name} has a float weight "
                "between int8 tensors; onnxruntime will quantize it with its own scales, unlike the simulation"
            )
    return found


def _output_quantization(name: str, index: GraphIndex) -> dict[str, Any]:
    """Scale and zero point of an output that a per-tensor DequantizeLinear produces."""
    dq = index.dequantized_from(name)
    if dq is None:
        return {}
    scale = index.constant(dq.input[1])
    zero = index.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.uint8)
    if scale is None or scale.size != 1 or zero is None:
        return {}
    return {"scale": float(scale.reshape(())), "zero_point": int(zero.reshape(()))}


def _value_description(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    shape: list[int | str] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "unknown"
    return {"name": value.name, "shape": shape, "dtype": dtype}
