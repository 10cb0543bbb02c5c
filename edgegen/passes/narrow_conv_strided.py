"""A convolution with few outputs, as a stride-2 convolution with 4x the outputs + DepthToSpace, exactly.

A generator's to-RGB layer (3 outputs) is a product only 3 columns wide; OpenVINO's int8 kernels pad
the output channels to 16, so CycleGAN's 7x7 to-RGB layer took 1.0 of its 5.3 ms for 6% of its MACs.
Output (2Y + a, 2X + b) of channel o is channel (a, b, o) (DepthToSpace DCR order) of a convolution
with stride 2 whose kernel is one tap larger on each axis: its tap (a + ky, b + kx) holds the original
tap (ky, kx) and the rest are zero. Same input, same pads, the same sums; 4x the output channels for
(k + 1)^2 / k^2 the MACs. Where every spatial size is static and the output's even (elsewhere ONNX
Runtime's backend uses `narrow_conv`'s 1x1 + Col2Im form). A SpaceToDepth(2) -> Conv on 2x2 blocks ->
DepthToSpace(2) form was no faster on ONNX Runtime, and on OpenVINO slower than the plain convolution
(it ran the SpaceToDepth of a reflection-padded tensor in bf16 between dequantizations).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph
from .narrow_conv import plain_stride_one
from .node_rewrite import rewrite_nodes

MAX_OUTPUTS = 4  # 4x as many after the rewrite: at most 16, one vector of int8 output channels
MIN_KERNEL = 3   # a 1x1 layer would do 4x the MACs
BLOCK = 2


def narrow_convs_strided(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every qualifying Conv of a model whose inputs have static spatial sizes."""
    if any(not dim.HasField("dim_value") for value in graph.model.graph.input
           for dim in value.type.tensor_type.shape.dim[2:]):
        return graph, []
    return rewrite_nodes(graph, _rewrite, "narrow convolution(s) run with stride 2 and 4x the outputs")


def _rewrite(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    weight = numpy_helper.to_array(inits[node.input[1]])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = shapes.get(node.output[0])
    if weight.ndim != 4 or weight.shape[0] > MAX_OUTPUTS or min(weight.shape[2:]) < MIN_KERNEL or not out:
        return None
    if not plain_stride_one(attrs) or any(size % BLOCK for size in out[2:]):
        return None
    at = f"{node.name or node.output[0]}/strided"
    model.graph.initializer.append(numpy_helper.from_array(strided_weight(weight), f"{at}/weight"))
    conv_inputs = [node.input[0], f"{at}/weight"]
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(inits[node.input[2]])
        model.graph.initializer.append(numpy_helper.from_array(np.tile(bias, BLOCK * BLOCK), f"{at}/bias"))
        conv_inputs.append(f"{at}/bias")
    kernel = [k + BLOCK - 1 for k in weight.shape[2:]]
    nodes = [helper.make_node("Conv", conv_inputs, [f"{at}/output"], f"{at}/conv", kernel_shape=kernel,
                              strides=[BLOCK, BLOCK], pads=list(attrs.get("pads", [0, 0, 0, 0]))),
             helper.make_node("DepthToSpace", [f"{at}/output"], [node.output[0]], f"{at}/merge", blocksize=BLOCK,
                              mode="DCR")]
    return nodes, {"node": node.name or node.output[0], "kernel": list(weight.shape[2:]), "strided_kernel": kernel}


def strided_weight(weight: np.ndarray) -> np.ndarray:
    """The weight of the stride-2 convolution: output channel (a * 2 + b) * Cout + o holds the original
    kernel of channel o shifted by (a, b)."""
    cout, cin, kh, kw = weight.shape
    strided = np.zeros((BLOCK * BLOCK * cout, cin, kh + BLOCK - 1, kw + BLOCK - 1), weight.dtype)
    for a in range(BLOCK):
        for b in range(BLOCK):
            phase = (a * BLOCK + b) * cout
            strided[phase:phase + cout, :, a:a + kh, b:b + kw] = weight
    return strided
