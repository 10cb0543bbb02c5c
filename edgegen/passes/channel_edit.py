"""Edit an ONNX model's initializers: remove channels as a `ChannelGraph` says, set a layer's weights."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import BuildError
from .channel_groups import ChannelGraph


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every `Constant` node (tensor `value`) turned into an initializer."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for node in list(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and \
                [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)
    return model


def tensor_shapes(model: onnx.ModelProto, concrete: dict[str, list[int]]) -> dict[str, list[int | None]]:
    """Every tensor's dims from the model's own shape annotations (None where symbolic), refined by `concrete`."""
    shapes: dict[str, list[int | None]] = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    shapes.update(concrete)
    return shapes


def remove_channels(model: onnx.ModelProto, cg: ChannelGraph, keep: dict[int, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` keeping only the `keep[group root]` channels of each pruned group, shapes re-inferred."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = model.graph.node
    values = {t.name: t for t in model.graph.initializer}
    edits: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for p in cg.params:
        pos = cg.positions(p.layout, keep)
        if pos is not None:
            edits[(p.node, p.slot)].append((p.axis, pos))
    for (i, slot), cuts in edits.items():
        array = numpy_helper.to_array(values[nodes[i].input[slot]])
        for axis, pos in cuts:
            array = np.take(array, pos, axis=axis)
        nodes[i].input[slot] = add_initializer(model, array, nodes[i].input[slot])
    for entry in cg.shape_entries:
        count = cg.kept_channels(entry.layout, keep)
        array = numpy_helper.to_array(values[nodes[entry.node].input[entry.slot]]).copy()
        if array[entry.index] != count:
            array[entry.index] = count
            nodes[entry.node].input[entry.slot] = add_initializer(model, array, nodes[entry.node].input[entry.slot])
    for i, layout in cg.depthwise:
        for a in nodes[i].attribute:
            if a.name == "group":
                a.i = cg.kept_channels(layout, keep)
    drop_unused_initializers(model)
    return reinfer(model)


def add_initializer(model: onnx.ModelProto, array: np.ndarray, base: str, suffix: str = "pruned") -> str:
    """Add `array` as a new initializer named `base`.`suffix` (made unique); returns its name."""
    taken = {t.name for t in model.graph.initializer} | {n for node in model.graph.node for n in node.output} | \
        {v.name for v in model.graph.input}
    name, k = f"{base}.{suffix}", 1
    while name in taken:
        k += 1
        name = f"{base}.{suffix}{k}"
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def set_inputs(model: onnx.ModelProto, node_index: int, arrays: dict[int, np.ndarray], suffix: str = "pruned") -> None:
    """Point inputs `slot -> array` of a node at new initializers holding those arrays."""
    node = model.graph.node[node_index]
    for slot, array in sorted(arrays.items()):
        while len(node.input) <= slot:
            node.input.append("")
        base = node.input[slot] or f"{node.name}.in{slot}"
        node.input[slot] = add_initializer(model, array.astype(np.float32), base, suffix)
    drop_unused_initializers(model)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove the initializers nothing reads (ONNX Runtime warns of each when it loads the model), and
    their graph inputs where an old exporter listed them as inputs too."""
    graph = model.graph
    used = _names_read(graph) | {o.name for o in graph.output}
    unused = {t.name for t in graph.initializer} - used
    if not unused:
        return
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in unused]
    del graph.input[:]
    graph.input.extend(inputs)


def drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes nothing reads (and the nodes only they read), such as a rewritten node's Dequantizes,
    then the initializers nothing reads."""
    graph = model.graph
    while True:
        used = _names_read(graph) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    drop_unused_initializers(model)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of the graph reads, subgraphs (If, Loop, Scan bodies) included."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= _names_read(sub)
    return names


def reinfer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Check the model and infer its intermediate shapes anew."""
    del model.graph.value_info[:]
    try:
        onnx.checker.check_model(model)
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # a bug in the channel analysis, not the user's fault
        raise BuildError(f"pruning produced an invalid ONNX model ({str(exc).strip().splitlines()[0]}); "
                         "build without --prune and report this model to the edgegen developers") from None
