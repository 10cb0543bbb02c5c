"""An activation after an interleave of convolution phases, applied to each phase instead, exactly.

A lowered ConvTranspose (or any Conv -> DepthToSpace) followed by Relu, LeakyRelu or Clip, as DCGAN-
and decoder-style generators have it, is Conv(s) -> [Concat] -> DepthToSpace -> [Slice] -> activation.
Quantized as it stands, the interleave runs on the raw phase values and the activation after it in
float: ONNX Runtime kept DepthToSpace and the activation between Dequantize and Quantize. These
activations act on each value alone, so they commute with Concat, DepthToSpace and Slice: applied to
each phase convolution's output they fuse into its int8 kernel, and the interleave moves values of one
grid (which `shuffle_nhwc` then runs on the integer tensor).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

from ..graph import Graph
from .qdq import links

ELEMENTWISE = ("Relu", "LeakyRelu", "Clip")  # activations the int8 backends fuse into the Conv before them


def activations_into_phases(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Move every qualifying activation onto the phase convolutions; report what was moved."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    inits = {t.name for t in model.graph.initializer}
    producer, consumers = links(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    originals = list(model.graph.node)  # held, so that their ids stay theirs
    moved, replaced, rows = [], set(), []
    for node in originals:
        chain = _chain(node, inits, producer, consumers, graph_outputs)
        if chain is None:
            continue
        convs, last = chain
        for i, conv in enumerate(convs):
            activated = f"{conv.output[0]}/{node.op_type.lower()}"
            moved.append(helper.make_node(node.op_type, [conv.output[0], *node.input[1:]], [activated],
                                          f"{node.name or node.output[0]}/phase{i}", **_attributes(node)))
            for reader in consumers[conv.output[0]]:
                reader.input[:] = [activated if name == conv.output[0] else name for name in reader.input]
        _forget_shapes(model.graph, (last.output[0], node.output[0]))
        last.output[0] = node.output[0]
        replaced.add(id(node))
        rows.append({"node": node.name or node.output[0], "op": node.op_type, "phases": len(convs)})
    if not rows:
        return graph, []
    after_conv = {m.input[0]: m for m in moved}
    nodes = []
    for n in originals:
        if id(n) not in replaced:
            nodes.append(n)
        if n.op_type == "Conv" and n.output[0] in after_conv:
            nodes.append(after_conv[n.output[0]])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return graph.with_model(model, [f"{len(rows)} activation(s) moved onto the phase convolutions before them"]), rows


def _chain(node: onnx.NodeProto, inits: set, producer: dict, consumers: dict,
           graph_outputs: set) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """(the phase convolutions, the last node of the interleave) when `node` is an activation after
    Conv(s) -> [Concat] -> DepthToSpace -> [Slice], each read only by the next; else None."""
    if node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx") \
            or any(name and name not in inits for name in node.input[1:]):
        return None

    def sole_producer(tensor: str, ops: tuple[str, ...]) -> onnx.NodeProto | None:
        source = producer.get(tensor)
        if source is None or source.op_type not in ops or tensor in graph_outputs \
                or len(consumers.get(tensor, [])) != 1:
            return None
        return source

    last = sole_producer(node.input[0], ("Slice", "DepthToSpace"))
    shuffle = sole_producer(last.input[0], ("DepthToSpace",)) if last is not None and last.op_type == "Slice" \
        else last
    if shuffle is None:
        return None
    joined = sole_producer(shuffle.input[0], ("Concat", "Conv"))
    if joined is None:
        return None
    convs = [joined] if joined.op_type == "Conv" else [sole_producer(name, ("Conv",)) for name in joined.input]
    if any(conv is None for conv in convs):
        return None
    return convs, last


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _forget_shapes(graph: onnx.GraphProto, names: tuple[str, ...]) -> None:
    """Drop the value_info of tensors that go or change what they hold."""
    for info in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(info)
