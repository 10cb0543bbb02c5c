"""Scalar arithmetic on a latent or condition input as ops the quantizer makes int8: `x / c` -> `x * (1/c)`
and `x - c` -> `x + (-c)`, for the Edge TPU.

The quantizer leaves a Div or Sub by a constant on the latent chain in float and quantizes once after it
(see passes.quantize.latent_chain): on CPUs that costs nothing and saves 0.2 dB. The Edge TPU compiler
maps a graph only up to its first float op, so a TAESD-style decoder's `tanh(latent / 3) * 3` clamp left
all of it on the host CPU (0 of 29 ops mapped). As a product and a sum the same arithmetic (a Mul by the
reciprocal: the same values to a rounding) is quantized with the input, and the graph maps from its first op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import Graph
from .channel_edit import drop_unused_initializers
from .quantize import latent_chain


def latent_arithmetic_as_products(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite each Div (Sub) of a latent-chain tensor by a finite float constant without zeros as a Mul (Add);
    report what was rewritten."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    chain = latent_chain(graph)
    rows = []
    for node in model.graph.node:
        constant = inits.get(node.input[1]) if node.op_type in ("Div", "Sub") and len(node.input) == 2 else None
        if constant is None or node.input[0] not in chain or \
                constant.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            continue
        values = numpy_helper.to_array(constant)
        with np.errstate(divide="ignore", over="ignore"):
            replaced = (1 / values if node.op_type == "Div" else -values).astype(values.dtype)
        if not np.all(np.isfinite(replaced)) or not np.all(np.isfinite(values)):
            continue  # a division by 0, or by a divisor so small its reciprocal overflows
        name = f"{node.name or node.output[0]}/{'reciprocal' if node.op_type == 'Div' else 'negated'}"
        model.graph.initializer.append(numpy_helper.from_array(replaced, name))
        rows.append({"node": node.name or node.output[0], "from": node.op_type})
        node.op_type, node.input[1] = ("Mul" if node.op_type == "Div" else "Add"), name
    if not rows:
        return graph, []
    drop_unused_initializers(model)
    return graph.with_model(model, [f"{len(rows)} latent Div/Sub by a constant as Mul/Add"]), rows
