"""Sub-graphs of a Graph as standalone Graphs the backends compile: a slice between chosen
tensors (trunk/head, ROI pre/post, one output), or the whole graph at other input dims."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .errors import BuildError
from .graph import Graph
from .passes.qdq import links
from .specs import TensorSpec


def extract(graph: Graph, inputs: list[str], outputs: list[str], note: str) -> Graph:
    """The nodes that compute `outputs` from `inputs` (and constants), as a Graph of their own.

    Graph inputs among `inputs` keep their specs; other boundary tensors become role `tensor`."""
    model = graph.model
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {t.name for t in model.graph.initializer}
    wanted, needed, stack = set(inputs), set(), list(outputs)
    keep: set[int] = set()
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    while stack:
        name = stack.pop()
        if name in needed or name in wanted or name in constants or not name:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is None:
            raise BuildError(f"{graph.source}: tensor {name!r} is needed for {outputs} but is neither computed "
                             f"from {sorted(inputs)} nor a constant; choose other split tensors")
        if index[id(node)] not in keep:
            keep.add(index[id(node)])
            stack.extend(node.input)
    nodes = [n for i, n in enumerate(model.graph.node) if i in keep]
    used = {name for n in nodes for name in n.input}
    types = _value_types(graph)
    shapes = graph.concrete_shapes()
    new_inputs = [i for i in inputs if i in used or i in outputs]
    sub = helper.make_graph(
        nodes, f"{model.graph.name}_{note}",
        [_value_info(n, types, shapes, graph) for n in new_inputs],
        [_value_info(n, types, shapes, graph) for n in outputs],
        [t for t in model.graph.initializer if t.name in used])
    proto = helper.make_model(sub, opset_imports=list(model.opset_import), producer_name="edgegen")
    proto.ir_version = model.ir_version
    proto.metadata_props.extend(model.metadata_props)
    proto = shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return Graph(proto, graph.source, graph.notes + [f"sub-graph: {note}"],
                 [_spec(n, graph, types, shapes) for n in new_inputs],
                 [_spec(n, graph, types, shapes) for n in outputs])


def quantized_boundaries(graph: Graph, tensors: list[str]) -> Graph:
    """The graph with each of `tensors` that a QDQ graph quantizes held on its int8 grid, so that parts cut
    there stay int8 on both sides: the part before ends with its QuantizeLinear -> DequantizeLinear (the tensor
    is the dequantized value), the part after quantizes it again onto the same grid (lossless) before its
    readers. A backend that runs int8 only (the NPU) needs both; the others keep their fused int8 kernels at
    the cut. Names and values stay the same."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    outputs = {o.name for o in model.graph.output}
    producer, readers = links(model.graph)
    changed = False
    for tensor in tensors:
        users = readers.get(tensor)
        if not users or tensor not in producer:
            continue
        if _is_dequantized(producer, tensor):
            _requantize_for(model.graph, producer[tensor], tensor, users)
        elif tensor not in outputs and all(q.op_type == "QuantizeLinear" and q.input[1:] == users[0].input[1:]
                                           for q in users):
            _hold_on_grid(model.graph, producer[tensor], tensor, users, readers)
        else:
            continue
        changed = True
    return graph.with_model(model, ["cut tensors held on their int8 grid"]) if changed else graph


def _is_dequantized(producer: dict[str, onnx.NodeProto], tensor: str) -> bool:
    """Whether a tensor is the DequantizeLinear of a QuantizeLinear (an activation's int8 grid)."""
    dq = producer[tensor]
    return dq.op_type == "DequantizeLinear" and getattr(producer.get(dq.input[0]), "op_type", None) == \
        "QuantizeLinear"


def _requantize_for(graph: onnx.GraphProto, dq: onnx.NodeProto, tensor: str, readers: list[onnx.NodeProto]) -> None:
    """A dequantized tensor's readers read it through a Q -> DQ of their own onto the same grid."""
    again = f"{tensor}/on_grid_again"
    for reader in readers:
        reader.input[:] = [again if i == tensor else i for i in reader.input]
    _insert_after(graph, dq, [_qdq_node("QuantizeLinear", tensor, f"{tensor}/requantized", dq),
                              _qdq_node("DequantizeLinear", f"{tensor}/requantized", again, dq)])


def _hold_on_grid(graph: onnx.GraphProto, source: onnx.NodeProto, tensor: str, quantizers: list,
                  readers: dict[str, list]) -> None:
    """A tensor read by QuantizeLinear nodes alone becomes its own dequantized value (the producer writes
    `/unquantized`), and the DequantizeLinear readers of the first quantizer read it quantized again."""
    first, unquantized = quantizers[0], f"{tensor}/unquantized"
    source.output[:] = [unquantized if o == tensor else o for o in source.output]
    for q in quantizers:  # the readers' quantization reads the held value: the same integers
        q.input[0] = unquantized if q is first else tensor
    requantized = _qdq_node("QuantizeLinear", tensor, f"{tensor}/requantized", first)
    for dq in readers.get(first.output[0], []):
        dq.input[0] = requantized.output[0]
    _insert_after(graph, first, [_qdq_node("DequantizeLinear", first.output[0], tensor, first), requantized])


def _qdq_node(op: str, data: str, out: str, like: onnx.NodeProto) -> onnx.NodeProto:
    """A QuantizeLinear or DequantizeLinear onto the grid (scale, zero point, axis) of `like`."""
    axis = {a.name: a.i for a in like.attribute if a.name == "axis"}
    return helper.make_node(op, [data, *like.input[1:]], [out], name=f"{out}/{op}", **axis)


def _insert_after(graph: onnx.GraphProto, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    position = next(i for i, n in enumerate(graph.node) if n is node)
    for offset, added in enumerate(new, 1):
        graph.node.insert(position + offset, added)


def with_input_dims(graph: Graph, dims: dict[str, list[int | str | None]], note: str) -> Graph:
    """The same graph with some input dims replaced (int: fixed, str: a named dynamic dim); every
    other shape is inferred anew. Fails clearly when the model hard-codes the old size."""
    proto = copy.deepcopy(graph.model)
    for value in proto.graph.input:
        if value.name in dims:
            for d, size in zip(value.type.tensor_type.shape.dim, dims[value.name]):
                d.Clear()
                if isinstance(size, int):
                    d.dim_value = size
                elif size:
                    d.dim_param = size
    for value in proto.graph.output:
        for d in value.type.tensor_type.shape.dim:
            d.Clear()
    del proto.graph.value_info[:]
    try:
        proto = shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise BuildError(f"{graph.source}: the model does not take input dims {dims} "
                         f"({str(exc).strip().splitlines()[0]})") from None
    inputs = []
    for spec in graph.inputs:
        spec = copy.deepcopy(spec)
        if spec.name in dims:
            spec.shape = [d if isinstance(d, int) else None for d in dims[spec.name]]
            spec.default_shape = [d if isinstance(d, int) else s for d, s in zip(dims[spec.name], spec.default_shape)]
        inputs.append(spec)
    concrete = Graph(proto, graph.source, graph.notes, inputs, graph.outputs).concrete_shapes()
    outputs = []
    for spec in graph.outputs:
        spec = copy.deepcopy(spec)
        spec.default_shape = concrete.get(spec.name, spec.default_shape)
        declared = _declared(proto, spec.name)
        spec.shape = declared if declared is not None else spec.shape
        outputs.append(spec)
    return Graph(proto, graph.source, graph.notes + [note], inputs, outputs)


def with_batch(graph: Graph, exported: int, size: int) -> Graph:
    """A model exported with a fixed batch, at another fixed batch: the inputs' batch dims and the
    leading dim of every constant Reshape target that carries the batch are rewritten."""
    proto = copy.deepcopy(graph.model)
    shapes = graph.concrete_shapes()
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        target = inits.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if target is None or (shapes.get(node.input[0]) or [None])[0] != exported:
            continue
        dims = numpy_helper.to_array(target).copy()
        if dims.size and dims[0] == exported:
            dims[0] = size
            name = f"{target.name}_batch{size}"
            proto.graph.initializer.append(numpy_helper.from_array(dims, name))
            node.input[1] = name
    rebatched = Graph(proto, graph.source, graph.notes, graph.inputs, graph.outputs)
    return with_input_dims(rebatched, {s.name: [size, *s.shape[1:]] for s in graph.inputs}, f"batch {size}")


def _declared(proto: onnx.ModelProto, name: str) -> list[int | None] | None:
    for value in list(proto.graph.output) + list(proto.graph.value_info):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return None


def _value_types(graph: Graph) -> dict[str, onnx.TypeProto]:
    inferred = shape_inference.infer_shapes(graph.model)
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    return {v.name: v.type for v in values if v.type.tensor_type.elem_type}


def _value_info(name: str, types: dict, shapes: dict, graph: Graph) -> onnx.ValueInfoProto:
    """A boundary tensor's declaration: inferred symbolic dims where known, else named dynamic dims."""
    if name not in types:
        raise BuildError(f"{graph.source}: the type of tensor {name!r} is unknown; cannot cut the graph there")
    tensor = types[name].tensor_type
    rank = len(shapes[name]) if name in shapes else len(tensor.shape.dim)
    batch_dynamic = any(s.batch_dynamic for s in graph.inputs)
    dims = []
    for axis in range(rank):
        d = tensor.shape.dim[axis] if tensor.HasField("shape") and axis < len(tensor.shape.dim) else None
        if axis == 0 and batch_dynamic:
            dims.append("N")
        elif d is not None and d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d is not None and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(f"{name}_d{axis}")
    return helper.make_tensor_value_info(name, tensor.elem_type, dims)


def _spec(name: str, graph: Graph, types: dict, shapes: dict) -> TensorSpec:
    for spec in graph.inputs + graph.outputs:
        if spec.name == name:
            return copy.deepcopy(spec)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(types[name].tensor_type.elem_type)).name
    default = list(shapes.get(name, []))
    batch_dynamic = any(s.batch_dynamic for s in graph.inputs)
    return TensorSpec(name, dtype, [None] + default[1:] if default and batch_dynamic else default, "tensor", default)
