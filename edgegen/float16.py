"""A model exported in float16 (`model.half()` before torch.onnx.export) computed in float32.

Every float16 tensor becomes float32: weights (exactly), constants, Cast targets, the graph's inputs,
outputs and value infos. The result is the model's fp32 source: the same weights, computed more
precisely than the float16 export, which every target precision is then measured against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from .io_forms import take_boundary_forms

_TYPED_ATTRIBUTES = ("to", "dtype")  # Cast, and the generators (RandomNormal, EyeLike, ...)


def float16_io(model: onnx.ModelProto) -> list[str]:
    """The graph inputs and outputs a float16 export declares float16 (run() takes and gives them so)."""
    return [v.name for v in [*model.graph.input, *model.graph.output]
            if v.type.tensor_type.elem_type == TensorProto.FLOAT16]


def upcast_float16(model: onnx.ModelProto) -> int:
    """Turn every float16 tensor of the main graph into float32, in place; the count of tensors changed."""
    graph = model.graph
    changed = 0
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_as_float32(tensor))
            changed += 1
    for info in [*graph.input, *graph.output, *graph.value_info]:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT16:
            tensor_type.elem_type = TensorProto.FLOAT
            changed += 1
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(_as_float32(attr.t))
                changed += 1
            elif attr.type == AttributeProto.INT and attr.name in _TYPED_ATTRIBUTES and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
                changed += 1
    return changed


def _as_float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def float32_reference(path: str | Path) -> str | onnx.ModelProto:
    """What runs as a model file's fp32 source, in the form the bundle computes on: the file itself, or its
    float32 form (a float16 export) with its image I/O taken into NCHW float (an NHWC or uint8 export; see
    `edgegen.io_forms`), as `Graph.load` makes its reference."""
    model = onnx.load(str(path), load_external_data=True)
    upcast = upcast_float16(model)
    return model if take_boundary_forms(model) or upcast else str(path)
