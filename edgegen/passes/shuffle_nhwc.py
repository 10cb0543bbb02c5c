"""A DepthToSpace (DCR) of a quantized tensor as channels-last Reshape/Transpose on the integer tensor, exactly.

ONNX Runtime's CPU provider runs its int8 convolutions channels-last (NHWC) and puts a Transpose back
to NCHW in front of any op it has no channels-last kernel for. DepthToSpace is one: on a transposed-
convolution's or cubic upsampler's output it ran as a Transpose plus a DepthToSpace that moves one
byte at a time (0.3-0.5 ms each at 128x128 on this project's bench machine, 0.75 ms of CycleGAN's 11).
In DCR mode channel (i*bs + j)*C + c goes to pixel (h*bs + i, w*bs + j), so channels-last the move
is a transpose of whole runs of bs*C contiguous bytes; written as NCHW -> NHWC Transpose, Reshape,
Transpose of those runs, Reshape and NHWC -> NCHW Transpose, ONNX Runtime cancels the first
Transpose against its own and keeps only the usual one back to NCHW.

Only where the shuffle sits between a DequantizeLinear and a QuantizeLinear of one per-tensor grid:
a shuffle only moves values, so it is done on the integer values and the QuantizeLinear goes. And only
where the runs are at least MIN_RUN_BYTES long (C known from shape inference): runs of 6 bytes (a
3-channel image's phases) were slower than DepthToSpace, 8 bytes and more faster (1x1 QDQ convs around
the shuffle, 64x64 -> 128x128, 1 thread: 0.35 -> 0.23 ms at C = 4, 1.24 -> 0.44 ms at C = 32).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .channel_edit import drop_dead_nodes
from .qdq import links, tensor_grid

log = logging.getLogger(__name__)

MIN_RUN_BYTES = 8


def depth_to_space_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with every qualifying DepthToSpace rewritten on its integer tensor."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer, consumers = links(graph)
    channels = _channel_counts(model)
    graph_outputs = {o.name for o in graph.output}
    originals = list(graph.node)  # held, so that their ids stay theirs
    replaced = {}
    for node in originals:
        plan = _plan(node, inits, producer, consumers, graph_outputs, channels)
        if plan is not None:
            replaced[id(node)] = _replacement(node, plan[0], plan[1].output[0], graph)
            replaced[id(plan[1])] = []
    if not replaced:
        return model
    nodes = [new for node in originals for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_dead_nodes(model)  # the Dequantize that fed the shuffle
    log.info("%d DepthToSpace on quantized tensors rewritten channels-last", len(replaced) // 2)
    return model


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's channel count (axis 1) where shape inference knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference failed: no channel count is known, nothing qualifies
        return {}
    counts = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            counts[info.name] = dims[1].dim_value
    return counts


def _plan(node: onnx.NodeProto, inits: dict, producer: dict, consumers: dict, graph_outputs: set,
          channels: dict[str, int]) -> tuple[str, onnx.NodeProto] | None:
    """(the integer tensor to shuffle, the QuantizeLinear the shuffle replaces) for a qualifying node, else None."""
    if node.op_type != "DepthToSpace" or node.output[0] in graph_outputs:
        return None
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "DCR")
    block = next(a.i for a in node.attribute if a.name == "blocksize")
    if channels.get(node.input[0], 0) // block < MIN_RUN_BYTES:  # runs of blocksize x C bytes
        return None
    dequantize = producer.get(node.input[0])
    readers = consumers.get(node.output[0], [])
    if mode != "DCR" or dequantize is None or dequantize.op_type != "DequantizeLinear" or len(readers) != 1:
        return None
    (quantize,) = readers
    if quantize.op_type != "QuantizeLinear" or len(dequantize.input) < 3 or len(quantize.input) < 3:
        return None
    grid = tensor_grid(dequantize, inits)
    if grid is None or tensor_grid(quantize, inits) != grid:
        return None
    return dequantize.input[0], quantize


def _replacement(node: onnx.NodeProto, integer: str, output: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """NCHW [N, bs*bs*C, H, W] -> NHWC -> [N, H, W, bs, bs*C] -> [N, H, bs, W, bs*C] -> [N, H*bs, W*bs, C] -> NCHW."""
    block = next(a.i for a in node.attribute if a.name == "blocksize")
    at = (node.name or node.output[0]) + "/"

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), at + name))
        return at + name

    def step(op: str, inputs: list[str], name: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output if name == "out" else at + name], name=at + name, **attrs)

    return [
        step("Shape", [integer], "in_shape"),
        step("Div", [at + "in_shape", const("channel_split", [1, block * block, 1, 1])], "shrunk"),
        step("Mul", [at + "shrunk", const("space_growth", [1, 1, block, block])], "out_shape"),
        step("Gather", [at + "out_shape", const("channels_last", [0, 2, 3, 1])], "out_shape_nhwc"),
        step("Transpose", [integer], "nhwc", perm=[0, 2, 3, 1]),
        step("Reshape", [at + "nhwc", const("rows_shape", [0, 0, 0, block, -1])], "rows"),
        step("Transpose", [at + "rows"], "interleaved", perm=[0, 1, 3, 2, 4]),
        step("Reshape", [at + "interleaved", at + "out_shape_nhwc"], "shuffled_nhwc"),
        step("Transpose", [at + "shuffled_nhwc"], "out", perm=[0, 3, 1, 2]),
    ]
