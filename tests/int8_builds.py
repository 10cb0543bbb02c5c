"""An ONNX Runtime int8 build of a test model, and the ops of the artifact it wrote (shared by the rewrite tests)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgegen.build import build


def onnxruntime_int8(source: Path, out: Path, **options):
    """(the build's result, the op types of its model.onnx), calibrated on 8 spec samples."""
    result = build(source, "x86-onnxruntime", out, precision="int8", calibration_count=8, **options)
    return result, [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]


def save_graph(path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_channels: int) -> Path:
    """An opset-17 model from input "x" [N, in_channels, H, W] to output "out" (4-D), saved at path."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", in_channels, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "C", "H2", "W2"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
