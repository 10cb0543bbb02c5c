"""Image inputs and outputs in the forms mobile exports give them (NHWC, uint8), taken into the graph's one form.

Generator networks compute on NCHW float tensors; an export made for a phone often wraps them: an NHWC
input permuted to NCHW first (`x.permute(0, 3, 1, 2)`), a uint8 input cast to float (`x.float() / 255`),
an output permuted back to NHWC or cast to uint8 (`y.round().to(torch.uint8)`). At load the build takes
such wrappers off: the graph's input becomes the NCHW float tensor the Transpose or Cast made (the same
values), its output the tensor before them. Every pass, backend, ROI program and tier then sees one
layout, and image requests map 8-bit pixels onto the input's range ([0, 255] for a uint8 input).

Each taken-off wrapper is recorded in the tensor's `source_form` (layout "NHWC", dtype "uint8", and for an
integer output how the file rounds: "nearest" where a Round came before the Cast, which is taken off with
it, else "toward zero", as a Cast truncates), and `Generator.run` converts at the boundary, so raw
tensors go in and come out in the model file's form; 8-bit images of such an output round the same way.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
IMAGE_CHANNELS = (1, 3, 4)
INTEGER_PIXELS = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8"}


def take_boundary_forms(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """Take NHWC and integer wrappers off the model's image inputs and outputs (in place); the model's own
    form of every changed input and output, by name."""
    forms: dict[str, dict[str, str]] = {}
    changed = True
    while changed:  # a uint8 NHWC input is a Cast and a Transpose, in either order
        changed = False
        for rule in (_input_transpose, _input_cast, _output_transpose, _output_cast):
            for name, form in rule(model.graph):
                forms.setdefault(name, {}).update({k: v for k, v in form.items() if k not in forms[name]})
                changed = True
    return forms


def describe(form: dict[str, str]) -> str:
    """'uint8 NHWC' for a source form."""
    return " ".join(v for v in (form.get("dtype"), form.get("layout")) if v)


def _tensor_type(value: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    return value.type.tensor_type


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(_tensor_type(value).shape.dim)


def _channels_last(value: onnx.ValueInfoProto) -> bool:
    dims = _dims(value)
    return len(dims) == 4 and dims[3].HasField("dim_value") and dims[3].dim_value in IMAGE_CHANNELS


def _channels_first(value: onnx.ValueInfoProto) -> bool:
    dims = _dims(value)
    return len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value in IMAGE_CHANNELS


def _permute(value: onnx.ValueInfoProto, perm: list[int]) -> None:
    dims = [onnx.TensorShapeProto.Dimension() for _ in perm]
    for new, old in zip(dims, perm):
        new.CopyFrom(_dims(value)[old])
    shape = _tensor_type(value).shape
    del shape.dim[:]
    shape.dim.extend(dims)


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _outputs(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def _bypass(graph: onnx.GraphProto, wrappers: list[onnx.NodeProto], name: str) -> None:
    """Remove wrapper nodes reading `name`, their readers reading `name` instead."""
    for node in wrappers:
        graph.node.remove(node)
        _forget_shape(graph, node.output[0])
        for reader in graph.node:
            for i, x in enumerate(reader.input):
                if x == node.output[0]:
                    reader.input[i] = name


def _forget_shape(graph: onnx.GraphProto, name: str) -> None:
    for value in [v for v in graph.value_info if v.name == name]:
        graph.value_info.remove(value)


def _input_wrappers(graph: onnx.GraphProto, value: onnx.ValueInfoProto, match) -> list[onnx.NodeProto] | None:
    """The nodes reading a graph input's values when every one of them matches (and none writes a graph
    output); a Shape reading it (a dynamic-size export's `x.shape`) reads no value and does not count."""
    readers = [n for n in _consumers(graph, value.name) if n.op_type != "Shape"]
    if not readers or not all(match(n) for n in readers) or any(n.output[0] in _outputs(graph) for n in readers):
        return None
    return readers


def _shape_of_nhwc(graph: onnx.GraphProto, shape: onnx.NodeProto, name: str) -> None:
    """A Shape of an input that now holds NCHW as the NHWC shape the model read: Shape, then Gather of
    its dims in NHWC order (folded where static, like any shape arithmetic)."""
    attrs = {a.name: a.i for a in shape.attribute}
    picked = TO_NHWC[slice(attrs.get("start"), attrs.get("end"))]
    full, order = f"{shape.output[0]}/nchw", f"{shape.output[0]}/nhwc_order"
    graph.initializer.append(numpy_helper.from_array(np.array(picked, np.int64), order))
    at = list(graph.node).index(shape)
    graph.node.remove(shape)
    graph.node.insert(at, onnx.helper.make_node("Gather", [full, order], [shape.output[0]], f"{shape.name}/nhwc",
                                                axis=0))
    graph.node.insert(at, onnx.helper.make_node("Shape", [name], [full], shape.name))


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    weights = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in weights]


def _input_transpose(graph: onnx.GraphProto):
    for value in _graph_inputs(graph):
        if not _channels_last(value):
            continue
        channels = _dims(value)[3].dim_value
        shapes = [n for n in _consumers(graph, value.name) if n.op_type == "Shape"]
        readers = [n for n in _consumers(graph, value.name) if n.op_type != "Shape"]
        chains = [_chain_to_transpose(graph, reader, value.name, channels) for reader in readers]
        if not readers or any(c is None for c in chains):
            continue
        for shape in shapes:
            _shape_of_nhwc(graph, shape, value.name)
        for chain, transpose in chains:
            _channels_first_constants(graph, chain, channels)
            for node in chain:
                _forget_shape(graph, node.output[0])
            _bypass(graph, [transpose], transpose.input[0])
        _permute(value, TO_NCHW)
        yield value.name, {"layout": "NHWC"}


def _chain_to_transpose(graph: onnx.GraphProto, node: onnx.NodeProto, data: str, channels: int
                        ) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The per-value ops from `node` on (each the only reader of the one before) up to an NHWC -> NCHW
    Transpose, and that Transpose; None when the path leads anywhere else."""
    chain = []
    while node.op_type != "Transpose":
        if not _per_value(graph, node, data, channels) or node.output[0] in _outputs(graph):
            return None
        readers = _consumers(graph, node.output[0])
        if len(readers) != 1:
            return None
        chain.append(node)
        data, node = node.output[0], readers[0]
    return (chain, node) if _perm(node) == TO_NCHW and node.output[0] not in _outputs(graph) else None


def _chain_from_transpose(graph: onnx.GraphProto, name: str, channels: int
                          ) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The per-value ops writing graph output `name` back to an NCHW -> NHWC Transpose (each the only
    reader of the one before), and that Transpose; None when they lead anywhere else."""
    producers = {o: n for n in graph.node for o in n.output}
    constants = _constants(graph)
    chain = []
    node = producers.get(name)
    while node is not None and node.op_type != "Transpose":
        data = next((i for i in node.input if i and i not in constants), None)
        if data is None or not _per_value(graph, node, data, channels) or len(_consumers(graph, data)) != 1:
            return None
        chain.append(node)
        node = producers.get(data)
    if node is None or _perm(node) != TO_NHWC or node.input[0] in _outputs(graph) or \
            (not chain and _consumers(graph, name)):
        return None
    return chain, node


_PER_VALUE = {"Add", "Sub", "Mul", "Div", "Round", "Clip", "Relu", "Cast", "Floor", "Ceil", "Sigmoid", "Tanh",
              "Max", "Min"}


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = value
    return found


def _per_value(graph: onnx.GraphProto, node: onnx.NodeProto, data: str, channels: int) -> bool:
    """An op on each value of `data` alone: its other operands are constants holding one value, or one per
    channel on the last axis (an NHWC normalization), so a transpose of `data` commutes with it."""
    if node.op_type not in _PER_VALUE or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    constants = _constants(graph)
    for name in node.input:
        if name == data or not name:
            continue
        tensor = constants.get(name)
        if tensor is None:
            return False
        dims = list(tensor.dims)
        size = int(np.prod(dims)) if dims else 1
        if size != 1 and not (size == channels and dims[-1] == channels and len(dims) in (1, 4)):
            return False
    return True


def _channels_first_constants(graph: onnx.GraphProto, chain: list[onnx.NodeProto], channels: int) -> None:
    """Give the chain's per-channel constants (last axis) the NCHW shape [C, 1, 1]."""
    constants = _constants(graph)
    for node in chain:
        for i, name in enumerate(node.input):
            tensor = constants.get(name)
            if tensor is None or int(np.prod(list(tensor.dims) or [1])) != channels or channels == 1:
                continue
            array = numpy_helper.to_array(tensor).reshape(channels, 1, 1)
            moved = numpy_helper.from_array(array, f"{name}/channels_first")
            if moved.name not in {t.name for t in graph.initializer}:
                graph.initializer.append(moved)
            node.input[i] = moved.name


def _input_cast(graph: onnx.GraphProto):
    for value in _graph_inputs(graph):
        dtype = INTEGER_PIXELS.get(_tensor_type(value).elem_type)
        if dtype is None or not (_channels_first(value) or _channels_last(value)):
            continue
        wrappers = _input_wrappers(graph, value, lambda n: n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT)
        if wrappers:
            _tensor_type(value).elem_type = TensorProto.FLOAT
            _bypass(graph, wrappers, value.name)
            yield value.name, {"dtype": dtype}


def _output_wrapper(graph: onnx.GraphProto, value: onnx.ValueInfoProto, match) -> onnx.NodeProto | None:
    """The node writing a graph output when it matches and nothing else reads that output, and its input is
    no graph input or output (which must keep their names)."""
    node = next((n for n in graph.node if value.name in n.output), None)
    if node is None or not match(node) or _consumers(graph, value.name):
        return None
    if node.input[0] in _outputs(graph) or node.input[0] in {v.name for v in graph.input}:
        return None
    return node


def _unwrap_output(graph: onnx.GraphProto, node: onnx.NodeProto, value: onnx.ValueInfoProto) -> None:
    """Remove an output's wrapper node; the tensor it read takes the output's name."""
    inner = node.input[0]
    graph.node.remove(node)
    _forget_shape(graph, inner)
    for other in graph.node:
        for i, x in enumerate(other.input):
            if x == inner:
                other.input[i] = value.name
        for i, x in enumerate(other.output):
            if x == inner:
                other.output[i] = value.name


def _output_transpose(graph: onnx.GraphProto):
    for value in graph.output:
        if not _channels_last(value):
            continue
        found = _chain_from_transpose(graph, value.name, _dims(value)[3].dim_value)
        if found is None:
            continue
        chain, transpose = found
        _channels_first_constants(graph, chain, _dims(value)[3].dim_value)
        if chain:
            for node in chain:
                _forget_shape(graph, node.output[0])
            _bypass(graph, [transpose], transpose.input[0])
        else:
            _unwrap_output(graph, transpose, value)
        _permute(value, TO_NCHW)
        yield value.name, {"layout": "NHWC"}


def _output_cast(graph: onnx.GraphProto):
    for value in graph.output:
        dtype = INTEGER_PIXELS.get(_tensor_type(value).elem_type)
        if dtype is None or not (_channels_first(value) or _channels_last(value)):
            continue
        node = _output_wrapper(graph, value, lambda n: n.op_type == "Cast")
        if node is None:
            continue
        _unwrap_output(graph, node, value)
        _tensor_type(value).elem_type = TensorProto.FLOAT
        # `.round().to(torch.uint8)`: the boundary rounds, as np.rint; a clamp to the integer type's range
        # around the Round (`.round().clamp(0, 255)`, `.clamp(0, 255).round()`) is the boundary's own clipping
        limits = np.iinfo(dtype)
        wrappers = {"clamp": lambda n: _clamps_to(graph, n, limits.min, limits.max),
                    "round": lambda n: n.op_type == "Round"}
        taken = set()
        for _ in range(2):  # either order
            for kind, match in wrappers.items():
                found = None if kind in taken else _output_wrapper(graph, value, match)
                if found is not None:
                    _unwrap_output(graph, found, value)
                    taken.add(kind)
        yield value.name, {"dtype": dtype, "rounding": "nearest" if "round" in taken else "toward zero"}


def _clamps_to(graph: onnx.GraphProto, node: onnx.NodeProto, low: float, high: float) -> bool:
    """Whether a node is a Clip to exactly [low, high] (bounds as attributes, initializers or Constants)."""
    if node.op_type != "Clip":
        return False
    attrs = {a.name: a.f for a in node.attribute}
    bounds = [attrs.get("min"), attrs.get("max")]
    constants = _constants(graph)
    for i, name in enumerate(node.input[1:3]):
        value = numpy_helper.to_array(constants[name]) if name in constants else None
        bounds[i] = float(value) if value is not None and value.size == 1 else None
    return bounds == [low, high]


def note(forms: dict[str, dict[str, str]]) -> str:
    """The load note naming what was taken off."""
    parts = [f"{name!r} ({describe(form)})" for name, form in forms.items()]
    return f"image I/O taken into NCHW float from the export's form: {', '.join(parts)}"

