"""What a .tflite artifact computes and stores, counted from the file itself.

The lowering rewrites layers, so the ONNX graph's costs (the manifest's model.macs and model.param_bytes) are not
the artifact's: on XNNPACK a strided ConvTranspose becomes one stride-1 CONV_2D computing every output phase over
the union of their taps, then DEPTH_TO_SPACE (ops/conv.py; a DCGAN's .tflite holds 1.2-1.7x the graph's weight bytes and
computes 2.2x its MACs), and an int8 cubic Resize becomes a CONV_2D the graph counts no MACs for. `compile` records
these counts as the session's `artifact` entry (beside `delegation` and `edgetpu_compiler`, the other facts of the
artifact the build measured); the build's cost line prints them where they differ from the graph's and the roofline
of `edgegen emulate` uses them. model.macs and model.param_bytes stay the graph's.
"""

from __future__ import annotations

import math

from .flatbuffer import ModelOp, ModelTensor, read_model

# the builtins that multiply-accumulate, as graph.node_costs counts Conv, ConvTranspose, Gemm and MatMul
LINEAR_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")


def artifact_cost(data: bytes) -> dict[str, int]:
    """The MACs of a .tflite file's linear ops at its tensors' shapes (the batch it was built at) and the bytes
    of its constant buffers (weights and biases as stored, with the few shape and axis operands)."""
    ops, tensors = read_model(data)
    return {"macs": sum(op_macs(op, tensors) for op in ops),
            "param_bytes": sum(int(t.data.nbytes) for t in tensors if t.constant)}


def op_macs(op: ModelOp, tensors: list[ModelTensor]) -> int:
    """Multiply-accumulates of one operator (0 but for LINEAR_OPS). Filters are [Cout, KH, KW, Cin/groups] for
    CONV_2D and TRANSPOSE_CONV (inputs: output shape, filter, input), [1, KH, KW, C] for DEPTHWISE_CONV_2D, and
    [units, K] for FULLY_CONNECTED."""
    if op.code not in LINEAR_OPS:
        return 0
    filt = tensors[op.inputs[1]].shape
    out = math.prod(tensors[op.outputs[0]].shape)
    if op.code == "CONV_2D":
        return out * math.prod(filt[1:])
    if op.code == "DEPTHWISE_CONV_2D":
        return out * filt[1] * filt[2]
    if op.code == "TRANSPOSE_CONV":  # every input pixel scatters through the whole filter
        return math.prod(tensors[op.inputs[2]].shape) * math.prod(filt[:3])
    return out * filt[-1]
