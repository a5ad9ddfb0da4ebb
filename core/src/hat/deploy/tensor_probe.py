"""The element type and shape of every tensor in a model, by running it once.

The checker needs both: the element type to tell an int8 MaxPool from a float one,
the shapes to count FLOPs. ONNX shape inference cannot see through onnxruntime's own
ops (``com.microsoft`` QLinearConv, NhwcMaxPool, the NCHWc family) that fill an
optimized graph, but onnxruntime can run them: one batch through the saved graph, with
every intermediate tensor exposed as an output and no further optimization, answers
exactly for the graph as it will run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from hat.deploy.onnx_graph import GraphIndex

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    shape: tuple[int, ...]


def probe_tensors(model: onnx.ModelProto, inputs: dict[str, np.ndarray] | None = None) -> dict[str, TensorMeta]:
    """Element type and shape of every node output and initializer of ``model``.

    ``inputs`` defaults to zeros of the graph's input shapes (a dynamic dimension
    taken as 1). Raises onnxruntime's exception if the model cannot run.
    """
    meta: dict[str, TensorMeta] = {}
    index = GraphIndex(model.graph)
    for name, tensor in index.initializers.items():
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        meta[name] = TensorMeta(np.dtype(dtype).name, tuple(int(d) for d in tensor.dims))

    feed = inputs
    if feed is None:
        feed = _zeros_for(_session(model))
    for name, array in run_exposed(model, feed).items():
        meta[name] = TensorMeta(array.dtype.name, tuple(array.shape))
    for name, value in feed.items():
        meta[name] = TensorMeta(np.asarray(value).dtype.name, tuple(np.asarray(value).shape))
    return meta


def run_exposed(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The value of every node output of ``model`` on ``inputs``, the graph run as saved (no optimization).

    Also what `hat analyze` compares with the torch model, tensor by tensor.
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in present:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
    session = _session(exposed)
    names = [o.name for o in session.get_outputs()]
    return {name: np.asarray(value) for name, value in zip(names, session.run(names, inputs), strict=True)}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _zeros_for(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    feed = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in item.shape]
        feed[item.name] = np.zeros(shape, dtype=_ORT_TYPES.get(item.type, np.float32))
    return feed
