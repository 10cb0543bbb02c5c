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
    """The graph with each of `tensors` that a QDQ graph quantizes (read by QuantizeLinear nodes alone) held on
    its int8 grid, so that parts cut there stay int8 on both sides: the part before ends with its
    QuantizeLinear -> DequantizeLinear (the tensor is the dequantized value), the part after quantizes it again
    onto the same grid (lossless) before its DequantizeLinear readers. A backend that runs int8 only (the NPU)
    needs both; the others keep their fused int8 kernels at the cut. Names and values stay the same."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    nodes = model.graph.node
    producer, readers = links(model.graph)
    outputs = {o.name for o in model.graph.output}
    changed = False
    for tensor in tensors:
        source = producer.get(tensor)
        if source is not None and source.op_type == "DequantizeLinear" and readers.get(tensor) and \
                getattr(producer.get(source.input[0]), "op_type", None) == "QuantizeLinear":
            again = f"{tensor}/on_grid_again"  # the part after reads it through its own Q -> DQ
            for reader in readers[tensor]:
                reader.input[:] = [again if i == tensor else i for i in reader.input]
            position = next(i for i, n in enumerate(nodes) if n is source)
            nodes.insert(position + 1, helper.make_node("QuantizeLinear", [tensor, *source.input[1:]],
                                                        [f"{tensor}/requantized"], **_axis(source)))
            nodes.insert(position + 2, helper.make_node("DequantizeLinear", [f"{tensor}/requantized",
                                                                             *source.input[1:]], [again],
                                                        **_axis(source)))
            changed = True
            continue
        quantizers = readers.get(tensor, [])
        if source is None or not quantizers or tensor in outputs or any(q.op_type != "QuantizeLinear" or q.input[1:] !=
                                                      quantizers[0].input[1:] for q in quantizers):
            continue
        first = quantizers[0]
        unquantized = f"{tensor}/unquantized"
        for node in nodes:
            node.output[:] = [unquantized if o == tensor else o for o in node.output]
        position = next(i for i, n in enumerate(nodes) if n is first)
        held = helper.make_node("DequantizeLinear", [first.output[0], *first.input[1:]], [tensor],
                                name=f"{tensor}/on_grid", **_axis(first))
        nodes.insert(position + 1, held)
        for q in quantizers:  # the readers' quantization reads the held value: the same integers
            q.input[0] = unquantized if q is first else tensor
        requantized = helper.make_node("QuantizeLinear", [tensor, *first.input[1:]], [f"{tensor}/requantized"],
                                       name=f"{tensor}/requantize", **_axis(first))
        nodes.insert(position + 2, requantized)
        for dq in readers.get(first.output[0], []):
            dq.input[0] = requantized.output[0]
        changed = True
    if not changed:
        return graph
    return graph.with_model(model, ["cut tensors held on their int8 grid"])


def _axis(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.name == "axis"}


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
