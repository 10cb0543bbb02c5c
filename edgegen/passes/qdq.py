"""Lossless re-encodings of the QDQ IR for backends that prefer another integer type."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def activations_to_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-encode int8 activation quantization as uint8 with the zero point shifted by 128.

    The grid is the same (q_u8 = q_s8 + 128, zp_u8 = zp_s8 + 128), so the numbers do not change;
    x86 ONNX Runtime fuses far more uint8-activation QDQ patterns, and OpenVINO runs
    ConvTranspose in int8 only with unsigned activations. Weights stay int8.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    quantized_by_q = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2:
            quantized_by_q[node.output[0]] = node
    shifted: dict[str, str] = {}

    def shift(zp_name: str) -> str | None:
        zp = inits.get(zp_name)
        if zp is None or zp.data_type != TensorProto.INT8:
            return None
        if zp_name not in shifted:
            value = numpy_helper.to_array(zp).astype(np.int16) + 128
            new = numpy_helper.from_array(value.astype(np.uint8), f"{zp_name}_u8")
            graph.initializer.append(new)
            shifted[zp_name] = new.name
        return shifted[zp_name]

    for node in graph.node:
        is_activation_q = node.op_type == "QuantizeLinear" and node.output[0] in quantized_by_q
        is_activation_dq = node.op_type == "DequantizeLinear" and node.input[0] in quantized_by_q
        if (is_activation_q or is_activation_dq) and len(node.input) > 2:
            new = shift(node.input[2])
            if new:
                node.input[2] = new
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name in shifted and t.name not in used]:
        graph.initializer.remove(init)
    for value in list(graph.value_info):
        if value.name in quantized_by_q and value.type.tensor_type.elem_type == TensorProto.INT8:
            value.type.tensor_type.elem_type = TensorProto.UINT8
    return model


# Element-wise activations that CPU plugins fuse into the preceding convolution or matmul.
FUSABLE_ACTIVATIONS = ("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Softplus", "Mish", "Gelu")
_FUSING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def fuse_activation_requantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the Quantize/Dequantize pair between a Conv (ConvTranspose, Gemm, MatMul) and the one
    element-wise activation that alone consumes it, so a backend can run the activation as a post-op
    of the int8 layer and requantize once after it. Not lossless: that one intermediate rounding
    disappears, which only moves the result closer to the float model."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    dropped = []
    for node in graph.node:
        if node.op_type not in FUSABLE_ACTIVATIONS:
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        source = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if source is None or source.op_type not in _FUSING_PRODUCERS:
            continue
        if consumers.get(q.output[0]) != 1 or consumers.get(dq.output[0]) != 1 or \
                consumers.get(q.input[0]) != 1 or {q.output[0], dq.output[0]} & graph_outputs:
            continue
        node.input[0] = q.input[0]
        dropped += [q, dq]
    for node in dropped:
        graph.node.remove(node)
    return model
