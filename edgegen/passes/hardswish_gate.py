"""A HardSwish between a DequantizeLinear and a QuantizeLinear as an integer Add and Mul (ONNX Runtime int8).

ONNX Runtime's CPU provider has no quantized HardSwish: DequantizeLinear -> HardSwish -> QuantizeLinear
ran in float, three passes over the tensor with a float one between them (four of MobileNet-ResNet's
11 ms int8 on this project's bench machine, more than its int8 convolutions). HardSwish(x) is
x * g / 6 with the gate g = clip(x + 3, 0, 6), so it is written in QDQ as

    DQ(x) + DQ(3) -> Q(gate grid over [0, 6])     the clip is the grid's saturation
    DQ(x) * DQ(gate, scale / 6) -> Q(y)           the / 6 is the gate's scale read a sixth as large

which ONNX Runtime fuses into QLinearAdd and QLinearMul on the integers (0.66 -> 0.35 ms for a
96x64x64 tensor, 1 thread) where the grids are uint8, as in its artifacts; on int8 grids it does not,
and they are left alone. The gate is rounded to its 8-bit grid (a step of 6/255, so at most
|x| / 510 off before the output is rounded to its own grid); the build's fidelity check measures the
artifact as it does every other one.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .qdq import conversions_around, rewrite_between_conversions

log = logging.getLogger(__name__)

SHIFT, CEILING = 3.0, 6.0  # HardSwish(x) = x * clip(x + SHIFT, 0, CEILING) / CEILING


def hardswish_as_integer_gate(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with every HardSwish between per-tensor Dequantize and Quantize nodes written
    as a quantized Add and Mul."""
    model, count = rewrite_between_conversions(model, _plan, _replacement)
    if count:
        log.info("%d quantized HardSwish written as integer Add and Mul", count)
    return model


def _plan(node: onnx.NodeProto, inits: dict, producer: dict, consumers: dict,
          graph_outputs: set) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(the QuantizeLinear after the HardSwish, the DequantizeLinear feeding it), else None."""
    found = conversions_around(node, inits, producer, consumers, graph_outputs) \
        if node.op_type == "HardSwish" else None
    if found is None:
        return None
    dequantize, quantize, grid, out_grid = found
    if {grid[2], out_grid[2]} != {np.dtype(np.uint8).str}:
        return None  # ONNX Runtime fuses the Add and Mul on uint8 grids only
    return quantize, dequantize


def _replacement(node: onnx.NodeProto, quantize: onnx.NodeProto, dequantize: onnx.NodeProto,
                 graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The quantized Add (gate) and Mul (output) nodes, each input with a Dequantize of its own (ONNX
    Runtime fuses a Dequantize into one reader only)."""
    at = (node.name or node.output[0]) + "/"

    def const(name: str, value, kind=np.float32) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, kind), at + name))
        return at + name

    def step(op: str, inputs: list[str], name: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [at + name], name=at + name)

    zero = const("zero_level", 0, np.uint8)
    gate_scale = CEILING / 255
    x = dequantize.input
    return [
        step("DequantizeLinear", list(x), "x_for_gate"),
        step("DequantizeLinear", [const("shift_level", 255, np.uint8), const("shift_scale", SHIFT / 255), zero],
             "shift"),
        step("Add", [at + "x_for_gate", at + "shift"], "shifted"),
        step("QuantizeLinear", [at + "shifted", const("gate_scale", gate_scale), zero], "gate"),
        step("DequantizeLinear", [at + "gate", const("gate_over_ceiling", gate_scale / CEILING), zero],
             "gate_fraction"),
        step("DequantizeLinear", list(x), "x_for_product"),
        step("Mul", [at + "x_for_product", at + "gate_fraction"], "product"),
        helper.make_node("QuantizeLinear", [at + "product", *quantize.input[1:]], list(quantize.output),
                         name=quantize.name or at + "out"),
    ]
