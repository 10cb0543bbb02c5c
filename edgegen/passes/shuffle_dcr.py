"""A convolution feeding a DepthToSpace in CRD mode (PyTorch's PixelShuffle) -> DCR mode, exactly.

CRD takes output channel c*bs*bs + i*bs + j to channel c at pixel offset (i, j); DCR takes channel
(i*bs + j)*C + c there. Permuting the convolution's output channels (weights and bias) from the one
order to the other gives the same image. ONNX Runtime runs a DCR shuffle of a quantized tensor
channels-last on whole runs of bytes (`shuffle_nhwc`); a CRD one it moves a byte at a time. For an
SRResNet-style upsampler (64 channels after the shuffle, 64x64 -> 128x128) that is 2.5 against 0.7 ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph
from .channel_edit import drop_unused_initializers
from .qdq import links


def depth_to_space_as_dcr(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every CRD DepthToSpace fed only by a Conv with constant weights; report what was rewritten."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    producer, consumers = links(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    rows = []
    for node in model.graph.node:
        conv = _conv_before(node, producer, consumers, inits, graph_outputs)
        if conv is None:
            continue
        block = next(a.i for a in node.attribute if a.name == "blocksize")
        weight = numpy_helper.to_array(inits[conv.input[1]])
        order = _crd_index_of_dcr_channel(weight.shape[0], block)
        for slot in (1, 2) if len(conv.input) > 2 and conv.input[2] else (1,):
            values = numpy_helper.to_array(inits[conv.input[slot]])[order]
            name = f"{conv.input[slot]}/dcr"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
            conv.input[slot] = name
        for attribute in node.attribute:
            if attribute.name == "mode":
                attribute.CopyFrom(helper.make_attribute("mode", "DCR"))
        rows.append({"node": node.name or node.output[0], "conv": conv.name or conv.output[0], "blocksize": block})
    if not rows:
        return graph, []
    drop_unused_initializers(model)
    return graph.with_model(model, [f"{len(rows)} DepthToSpace(s) switched from CRD to DCR"]), rows


def _conv_before(node: onnx.NodeProto, producer: dict, consumers: dict, inits: dict,
                 graph_outputs: set) -> onnx.NodeProto | None:
    """The ungrouped Conv a CRD DepthToSpace reads, when nothing else reads it and its weights (and bias) are
    constants."""
    if node.op_type != "DepthToSpace" or next((a.s.decode() for a in node.attribute if a.name == "mode"),
                                              "DCR") != "CRD":
        return None
    conv = producer.get(node.input[0])
    if conv is None or conv.op_type != "Conv" or len(consumers.get(node.input[0], [])) != 1 \
            or node.input[0] in graph_outputs:
        return None
    if any(name not in inits for name in conv.input[1:] if name) \
            or any(a.name == "group" and a.i != 1 for a in conv.attribute):  # groups would mix under the permutation
        return None
    return conv


def _crd_index_of_dcr_channel(channels: int, block: int) -> np.ndarray:
    """For each channel in DCR order, the channel holding the same value in CRD order."""
    per_pixel = channels // (block * block)
    phase, channel = np.divmod(np.arange(channels), per_pixel)  # DCR: (i*bs + j)*C + c
    return channel * block * block + phase                       # CRD: c*bs*bs + i*bs + j
