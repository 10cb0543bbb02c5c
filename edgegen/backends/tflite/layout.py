"""NCHW -> NHWC, once for the whole graph.

Every 4-D tensor is stored NHWC. Where ONNX semantics depend on NCHW element order (a Reshape
from [N, C*H*W] to [N, C, H, W], DepthToSpace in CRD mode), the tensor feeding it is produced
with its channels already in the order the NHWC op needs: the planner walks back from such a
consumer through channel-wise ops to an op with constant weights (Conv, ConvTranspose, Gemm,
MatMul, Gather of a table) and permutes those weights instead of inserting a Transpose.
"""

from __future__ import annotations

import numpy as np
import onnx

from .prepare import Prepared, attrs

NHWC = (0, 2, 3, 1)  # ONNX axes in TFLite order for 4-D tensors
NCHW = (0, 3, 1, 2)  # TFLite NHWC axes back to ONNX order

_ABSORBERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
_UNARY = ("Relu", "LeakyRelu", "Tanh", "Sigmoid", "HardSwish", "Clip", "PRelu", "BatchNormalization",
          "InstanceNormalization")
_BINARY = ("Add", "Sub", "Mul", "Div")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def tfl_shape(shape: list[int], nhwc: bool) -> list[int]:
    """A tensor's TFLite shape."""
    return [shape[i] for i in NHWC] if nhwc else list(shape)


def tfl_axis(axis: int, rank: int, nhwc: bool) -> int:
    """An ONNX axis as the axis of the stored tensor."""
    axis %= rank
    return NHWC.index(axis) if nhwc else axis


def channel_axis(rank: int, nhwc: bool) -> int | None:
    """Where the channel axis of a stored tensor is (None for ranks that carry no channel order)."""
    return 3 if nhwc else (1 if rank == 2 else None)


def flatten_order(c: int, h: int, w: int) -> np.ndarray:
    """Element order of an NHWC-flattened [C,H,W] block: entry j holds NCHW-flat index order[j]."""
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def crd_order(c: int, block: int) -> np.ndarray:
    """Channel order that makes DepthToSpace DCR (TFLite) compute ONNX's CRD mode."""
    return np.arange(c * block * block).reshape(c, block, block).transpose(1, 2, 0).ravel()


def reshape_demand(in_shape: list[int], out_shape: list[int]) -> np.ndarray | None:
    """The channel order a [N,K] -> [N,C,H,W] reshape needs from its input (None when H*W == 1)."""
    if len(in_shape) == 2 and len(out_shape) == 4 and out_shape[0] == in_shape[0] and out_shape[2] * out_shape[3] > 1:
        return flatten_order(*out_shape[1:])
    return None


def plan_orders(p: Prepared) -> dict[str, np.ndarray]:
    """Channel order each tensor is produced in, for the tensors whose consumers need one."""
    plan: dict[str, np.ndarray] = {}
    for node in p.nodes:
        demand = None
        if node.op_type in _RESHAPES and node.input[0] in p.shapes and node.output[0] in p.shapes:
            demand = reshape_demand(p.shapes[node.input[0]], p.shapes[node.output[0]])
        elif node.op_type == "DepthToSpace" and attrs(node).get("mode", "DCR") == "CRD" and node.output[0] in p.shapes:
            demand = crd_order(p.shapes[node.output[0]][1], attrs(node)["blocksize"])
        if demand is not None:
            _request(p, plan, node.input[0], demand)
    return plan


def _request(p: Prepared, plan: dict[str, np.ndarray], name: str, order: np.ndarray) -> None:
    chain = []
    while True:
        if name in plan or not p.single_use(name) or name in p.consts:
            return
        chain.append(name)
        node = p.producer(name)
        if node is None:
            return
        if _absorbs(node, p):
            break
        source = _channelwise_source(node, p)
        if source is None:
            return
        name = source
    for n in chain:
        plan[n] = order


def _absorbs(node: onnx.NodeProto, p: Prepared) -> bool:
    """Whether node has constant weights whose output-channel order can be chosen."""
    if node.op_type not in _ABSORBERS:
        return False
    a = attrs(node)
    if node.op_type in ("Conv", "ConvTranspose"):
        return node.input[1] in p.consts and a.get("group", 1) == 1
    if node.op_type == "Gemm":
        return node.input[1] in p.consts and not a.get("transA", 0)
    if node.op_type == "MatMul":
        return node.input[1] in p.consts and p.consts[node.input[1]].ndim == 2
    return node.input[0] in p.consts and p.consts[node.input[0]].ndim == 2 and a.get("axis", 0) == 0


def _channelwise_source(node: onnx.NodeProto, p: Prepared) -> str | None:
    """The one activation input of a channel-wise op (other operands constant), else None."""
    if node.op_type in _UNARY:
        others = [i for i in node.input[1:] if i]
        return node.input[0] if all(i in p.consts for i in others) else None
    if node.op_type in _BINARY:
        variable = [i for i in node.input if i not in p.consts]
        return variable[0] if len(variable) == 1 else None
    return None
