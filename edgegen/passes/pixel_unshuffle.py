"""PyTorch's pixel_unshuffle as ONNX SpaceToDepth.

torch.onnx writes `F.pixel_unshuffle(x, s)` as data-movement nodes: Reshape [N, C, H/s, s, W/s, s] ->
Transpose (0, 1, 3, 5, 2, 4) -> Reshape [N, C*s*s, H/s, W/s] with constant shapes (the TorchScript
exporter at a fixed size), with an Unsqueeze, two Reshapes and a Squeeze around the Transpose (the
same exporter with dynamic axes), or with shapes computed from the input's Shape (the dynamo exporter).
Channel c*s*s + i*s + j of the result holds pixel (h*s + i, w*s + j) of channel c; ONNX's SpaceToDepth
puts that pixel in channel (i*s + j)*C + c.

A chain of Reshape / Transpose / Unsqueeze / Squeeze from a 4-D tensor to a 4-D one with s*s times its
channels at 1/s its size, read only by Convs with constant weights, is checked by running it on the
index of every element (exporters' forms vary; the element map decides), and where it is
pixel_unshuffle it becomes one SpaceToDepth, the readers' weights taking its channel order. The outputs
are the same numbers; the 6-D moves, which the region planner could not map (a dynamo export got no
ROI, a TorchScript one none through the shuffle) and TFLite and the NPU cannot express, are gone.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.utils
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .channel_edit import drop_dead_nodes

MOVES = ("Reshape", "Transpose", "Unsqueeze", "Squeeze")
SHAPE_OPS = ("Shape", "Gather", "Slice", "Concat", "Div", "Mul", "Add", "Sub", "Cast", "Constant", "Unsqueeze",
             "Squeeze", "Reshape", "ConstantOfShape", "Range", "Floor", "Ceil")


def pixel_unshuffles_as_space_to_depth(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> int:
    """Rewrite every pixel_unshuffle found (see the module doc) in place, given each tensor's concrete shape
    at the default input shapes; return how many."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rewritten = 0
    for node in list(model.graph.node):
        found = _unshuffle(node, producers, readers, weights, outputs, shapes, model)
        if found is None:
            continue
        source, block = found
        channels = shapes[source][1]
        result = node.output[0]
        moved = f"{result}/space_to_depth"
        model.graph.node.insert(list(model.graph.node).index(node), helper.make_node(
            "SpaceToDepth", [source], [moved], name=f"{node.name}/pixel_unshuffle", blocksize=block))
        order = _torch_channel_of(channels, block)
        for conv in readers[result]:
            weight = numpy_helper.to_array(weights[conv.input[1]])
            name = f"{conv.input[1]}/{conv.name}/space_to_depth"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, order]), name))
            conv.input[0], conv.input[1] = moved, name
        rewritten += 1
    if rewritten:
        drop_dead_nodes(model)
    return rewritten


def _torch_channel_of(channels: int, block: int) -> np.ndarray:
    """For each SpaceToDepth channel (i*s + j)*C + c, the pixel_unshuffle channel c*s*s + i*s + j."""
    i, j, c = np.meshgrid(np.arange(block), np.arange(block), np.arange(channels), indexing="ij")
    return (c * block * block + i * block + j).reshape(-1)


def _unshuffle(node: onnx.NodeProto, producers, readers, weights, outputs, shapes, model) -> tuple[str, int] | None:
    """(the 4-D source, the block size) where `node` ends a pixel_unshuffle chain whose readers are all
    Convs with constant weights; else None."""
    if node.op_type not in ("Reshape", "Squeeze") or node.output[0] in outputs:
        return None
    out = shapes.get(node.output[0])
    chain, current = [node], node
    while True:  # up the data inputs through moves the chain alone reads (a Shape of them aside: dynamo)
        up = producers.get(current.input[0])
        if up is None or up.op_type not in MOVES or \
                sum(r.op_type != "Shape" for r in readers.get(up.output[0], [])) != 1:
            break
        chain.append(up)
        current = up
    source = current.input[0]
    src = shapes.get(source)
    if out is None or src is None or len(out) != 4 or len(src) != 4 or "Transpose" not in {n.op_type for n in chain}:
        return None
    block = math.isqrt(out[1] // src[1]) if src[1] and out[1] % src[1] == 0 else 0
    if block < 2 or out != [src[0], src[1] * block * block, src[2] // block, src[3] // block] \
            or src[2] % block or src[3] % block:
        return None
    convs = readers.get(node.output[0], [])
    if not convs or any(c.op_type != "Conv" or c.input[0] != node.output[0] or c.input[1] not in weights
                        or _group(c) != 1 for c in convs):
        return None
    if not _moves_like_unshuffle(model, source, node.output[0], src, block):
        return None
    return source, block


def _group(conv: onnx.NodeProto) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _moves_like_unshuffle(model: onnx.ModelProto, source: str, result: str, shape: list[int], block: int) -> bool:
    """Whether the nodes computing `result` from `source` (data moves, and shape arithmetic on its Shape)
    put every element where pixel_unshuffle does: run on the elements' indices."""
    try:
        sub = onnx.utils.Extractor(model).extract_model([source], [result])
    except Exception:  # noqa: BLE001 - a result that depends on more than the source: not this pattern
        return False
    if any(n.op_type not in MOVES + SHAPE_OPS for n in sub.graph.node):
        return False
    index = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    try:
        got = ReferenceEvaluator(sub).run(None, {source: index})[0]
    except Exception:  # noqa: BLE001 - the reference evaluator lacks an op or an input dtype differs
        return False
    n, c, h, w = shape
    expected = index.reshape(n, c, h // block, block, w // block, block).transpose(0, 1, 3, 5, 2, 4)
    return got.shape == (n, c * block * block, h // block, w // block) and \
        np.array_equal(got, expected.reshape(got.shape))
