"""What the NPU lowering refuses that the float graph already shows: a node's attributes, constants and
shapes (at batch 1), and a layer reading a model input that stays float in the QDQ graph. What depends
on the int8 grids (a layer kept in float, how weights are quantized, requantization scales) shows only
when the QDQ graph is lowered."""

from __future__ import annotations

import numpy as np
import onnx

from ..tflite.prepare import Prepared, attrs
from .lower import CAST_ONLY, MOVEMENT, constant_operand_problem, float_input_problem, no_layer_problem, unary_spec
from .lower_linear import batch_norm_problem, conv_form_problem, dense_form_problem
from .lower_movement import (EMBEDDING_ONLY, broadcast_problem, channel_slice, concat_problem, per_channel,
                             reshape_problem, resize_problem)

# int8 on their input's grid (onnxruntime's quantizer gives them none of their own): on a model input
# that no other op quantizes, they read float values
GRID_PASSING = ("Resize", "Slice", "Expand")
# ops whose output is always an NPU map, whatever is around them
_MAP_PRODUCERS = ("Conv", "ConvTranspose", "Concat", "DepthToSpace", "BatchNormalization")


def static_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    """Why the lowering of the QDQ graph will refuse this node of the (prepared, float) graph, where
    that does not depend on the int8 grids; else None."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        return conv_form_problem(node, p)
    if op in ("Gemm", "MatMul"):
        return dense_form_problem(node, p)
    if op == "BatchNormalization":
        return batch_norm_problem(node, p)
    if op in ("Add", "Sub", "Mul", "Div"):
        return _arithmetic_problem(node, p)
    if op == "Concat":
        rank = len(p.shapes.get(node.output[0], []))
        return _operands_problem(node.input, p) or (concat_problem(node, rank) if rank else None)
    if op == "Gather":
        index_ok = _host_path(node.input[1], p, (*MOVEMENT, "Cast", "Gather")) is not None
        return None if node.input[0] in p.consts and index_ok and not attrs(node).get("axis", 0) else EMBEDDING_ONLY
    if op == "Cast":
        to = attrs(node).get("to")
        host = _host_path(node.input[0], p, (*MOVEMENT, "Cast"))
        return None if host is not None and to in (onnx.TensorProto.INT32, onnx.TensorProto.INT64) else CAST_ONLY
    if op in MOVEMENT:
        return _reshape_problem(node, p)
    if op in GRID_PASSING:  # a resize runs on the NPU whatever its input (the host resizes nothing)
        return _float_input(node, p) or (_grid_passing_problem(node, p)
                                         if op == "Resize" or _is_map(node.input[0], p) else None)
    return None


def _chw(shape: list[int] | None) -> tuple[int, int, int] | None:
    """An NPU map's [C, H, W] for a [1, C] or [1, C, H, W] shape, else None."""
    if shape is None or len(shape) not in (2, 4):
        return None
    return (shape[1], 1, 1) if len(shape) == 2 else tuple(shape[1:])


def _is_map(name: str, p: Prepared) -> bool:
    """Whether `name` is an NPU map whatever the int8 grids (a model input, or a value computed from one
    on the host, may be float in the QDQ graph, and its reader is then refused for that)."""
    producer = p.producer(name)
    return producer is not None and producer.op_type in _MAP_PRODUCERS


def _operands_problem(names: list[str], p: Prepared, to: tuple[int, int, int] | None = None) -> str | None:
    """The lowering's refusal of the first operand (in its order) that is a constant map or, given `to`, a
    map that cannot broadcast to it; None where an operand before that is no sure NPU map."""
    for name in names:
        if name in p.consts:
            return constant_operand_problem(name, list(np.shape(p.consts[name])))
        if not _is_map(name, p):
            return None
        chw = _chw(p.shapes.get(name))
        if to is not None and chw is not None and (problem := broadcast_problem(chw, to)):
            return problem
    return None


def _arithmetic_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    """Add/Sub/Mul of two maps (broadcasting one channel or one pixel), or of a map and a scalar or one
    constant per channel; Div by a scalar or per-channel constant only."""
    if unary_spec(node, p) is not None:
        return None
    data = [i for i in node.input if i not in p.consts]
    const = [i for i in node.input if i in p.consts]
    if const and data:
        if data[0] not in p.shapes:
            return None
        if per_channel(np.asarray(p.consts[const[0]], np.float32), list(p.shapes[data[0]])) is not None:
            return None
    if node.op_type == "Div":
        return no_layer_problem("Div")
    return _operands_problem(list(node.input[:2]), p, _chw(p.shapes.get(node.output[0])))


def _reshape_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    """A reshape of a map some layer computed (a model input's or a dense layer's output reshapes freely)."""
    chw, shape = _chw(p.shapes.get(node.input[0])), p.shapes.get(node.output[0])
    if not _is_map(node.input[0], p) or chw is None or shape is None:
        return None
    return reshape_problem(chw, list(shape))


def _grid_passing_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    shape_in, shape_out = p.shapes.get(node.input[0]), p.shapes.get(node.output[0])
    if shape_in is None or shape_out is None or len(shape_in) != len(shape_out):
        return None
    if node.op_type == "Resize":
        return resize_problem(node, tuple(shape_in[2:]), tuple(shape_out[2:])) if len(shape_in) == 4 else None
    if node.op_type == "Slice":
        start = channel_slice(node, p, list(shape_in), list(shape_out))
        return start if isinstance(start, str) else None
    chw, out = _chw(shape_in), _chw(shape_out)
    return broadcast_problem(chw, out) if chw is not None and out is not None else None


def _float_input(node: onnx.NodeProto, p: Prepared) -> str | None:
    """A grid-passing op on a float model input (or a reshape of it) that no op quantizes: the QDQ graph
    leaves the values it reads float, and the host runs no such op."""
    path = _host_path(node.input[0], p, MOVEMENT)
    spec = next((s for s in p.inputs if path and s.name == path[-1]), None)
    if spec is None or not spec.dtype.startswith("float"):
        return None
    passing = (*GRID_PASSING, *MOVEMENT)
    if any(reader.op_type not in passing for name in path for reader in p.consumers.get(name, [])):
        return None
    return float_input_problem(node.input[0], spec.name, node.op_type)


def _host_path(name: str, p: Prepared, through: tuple[str, ...]) -> list[str] | None:
    """The tensors from `name` back to the model input it holds unchanged (through `through` ops; a
    Gather through its indices), or None where some other op computes it."""
    inputs = {s.name for s in p.inputs}
    path = [name]
    while path[-1] not in inputs:
        producer = p.producer(path[-1])
        if producer is None or producer.op_type not in through:
            return None
        path.append(producer.input[1] if producer.op_type == "Gather" else producer.input[0])
    return path
