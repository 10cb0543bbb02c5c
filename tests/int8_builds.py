"""An ONNX Runtime int8 build of a test model, and the ops of the artifact it wrote (shared by the rewrite tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


def resize_between_convs(path: Path, in_channels: int, channels: int, scales: list[float], **resize) -> Path:
    """x -> Conv 3x3 (channels) -> Relu -> Resize(scales, **resize) -> Conv 3x3 (3) -> out, seeded weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, in_channels, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.array(scales, np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal((3, channels, 3, 3)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Resize", ["a", "", "scales"], ["u"], **resize),
             helper.make_node("Conv", ["u", "w2"], ["out"], pads=[1, 1, 1, 1])]
    return save_graph(path, nodes, inits, in_channels)
