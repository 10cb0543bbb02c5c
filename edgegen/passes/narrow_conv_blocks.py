"""A convolution with few outputs and a large kernel, run on 2x2 pixel blocks, exactly.

A generator's to-RGB layer (3 outputs, 7x7 or 9x9) is a matrix product only 3 columns wide, which
int8 kernels run far below their speed: ONNX Runtime's QLinearConv took 3.1 of CycleGAN's 11 ms with
it. On 2x2 blocks, SpaceToDepth(2) -> Conv -> DepthToSpace(2) computes the same image with 4x the
output channels and a kernel of about (k + 1) / 2 taps: output (2Y + a, 2X + b) of channel o is
channel (a, b, o) at (Y, X), and its tap (ky, kx) on input channel c reads block offset
(dy, dx) = floor((a + ky - pad) / 2) at sub-pixel (i, j) = (a + ky - pad) mod 2. The layer's output
grid is the same, so the int8 graph quantizes the same values. Only where every spatial size is
static and even, so the blocks tile the input and the output exactly (elsewhere `narrow_conv`'s
1x1 + Col2Im form applies). ONNX Runtime only: OpenVINO ran the SpaceToDepth of a reflection-padded
tensor in bf16 and kept dequantization multiplies around it, and CycleGAN got slower there.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph
from .node_rewrite import rewrite_nodes

MAX_OUTPUTS = 4  # 4x as many on the blocks: at most 16
MIN_KERNEL = 5   # below this the 2x2 block kernel does more than 1.6x the MACs for little gain
BLOCK = 2


def narrow_convs_on_blocks(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every qualifying Conv of a model whose inputs have static spatial sizes."""
    if any(not dim.HasField("dim_value") for value in graph.model.graph.input
           for dim in value.type.tensor_type.shape.dim[2:]):
        return graph, []
    return rewrite_nodes(graph, _rewrite, "narrow convolution(s) run on 2x2 blocks")


def _rewrite(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    weight = numpy_helper.to_array(inits[node.input[1]])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    if weight.ndim != 4 or weight.shape[0] > MAX_OUTPUTS or min(weight.shape[2:]) < MIN_KERNEL or not src or not dst:
        return None
    if attrs.get("group", 1) != 1 or any(s != 1 for s in attrs.get("strides", [1, 1])) \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or any(size % BLOCK for size in [*src[2:], *dst[2:]]):
        return None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    block_weight, block_pads = _block_weight(weight, pads, src[2:], dst[2:])
    if min(block_pads) < 0:
        return None
    at = f"{node.name or node.output[0]}/blocks"
    model.graph.initializer.append(numpy_helper.from_array(block_weight, f"{at}/weight"))
    conv_inputs = [f"{at}/input", f"{at}/weight"]
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(inits[node.input[2]])
        model.graph.initializer.append(numpy_helper.from_array(np.tile(bias, BLOCK * BLOCK), f"{at}/bias"))
        conv_inputs.append(f"{at}/bias")
    nodes = [helper.make_node("SpaceToDepth", [node.input[0]], [f"{at}/input"], f"{at}/split", blocksize=BLOCK),
             helper.make_node("Conv", conv_inputs, [f"{at}/output"], f"{at}/conv", pads=block_pads,
                              kernel_shape=list(block_weight.shape[2:])),
             helper.make_node("DepthToSpace", [f"{at}/output"], [node.output[0]], f"{at}/merge", blocksize=BLOCK,
                              mode="DCR")]
    return nodes, {"node": node.name or node.output[0], "kernel": list(weight.shape[2:]),
                   "block_kernel": list(block_weight.shape[2:])}


def _block_weight(weight: np.ndarray, pads: list[int], size: list[int], out_size: list[int]
                  ) -> tuple[np.ndarray, list[int]]:
    """The Conv weight on 2x2 blocks (channels in SpaceToDepth / DepthToSpace DCR order) and its pads."""
    cout, cin, kh, kw = weight.shape
    (top, left), spans = pads[:2], []
    for kernel, begin in ((kh, top), (kw, left)):
        spans.append(((-begin) // BLOCK, (BLOCK - 1 + kernel - 1 - begin) // BLOCK))
    (y0, y1), (x0, x1) = spans
    blocks = np.zeros((BLOCK * BLOCK * cout, BLOCK * BLOCK * cin, y1 - y0 + 1, x1 - x0 + 1), weight.dtype)
    phases = range(BLOCK)
    for a, b, i, j, dy, dx in itertools.product(phases, phases, phases, phases, range(y0, y1 + 1), range(x0, x1 + 1)):
        ky, kx = BLOCK * dy + i - a + top, BLOCK * dx + j - b + left
        if 0 <= ky < kh and 0 <= kx < kw:
            out, inp = (a * BLOCK + b) * cout, (i * BLOCK + j) * cin
            blocks[out:out + cout, inp:inp + cin, dy - y0, dx - x0] = weight[:, :, ky, kx]
    block_pads = [-y0, -x0]
    block_pads += [out // BLOCK - n // BLOCK - p + k - 1
                   for out, n, p, k in zip(out_size, size, block_pads, blocks.shape[2:])]
    return blocks, block_pads
