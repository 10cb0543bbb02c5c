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
