"""The cubic-Resize lowering pass: exact in float, applied only where exact, and int8 end to end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.graph import Graph
from edgegen.passes.lower_resize import lower_cubic_resizes


def _resize_model(tmp_path, shape, factor, **attrs) -> Graph:
    n, c, h, w = shape
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, h * factor, w * factor])],
                              [scales])
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("coord,factor,coeff,channels", [
    ("half_pixel", 2, -0.75, 3), ("pytorch_half_pixel", 2, -0.5, 8), ("asymmetric", 3, -0.75, 2),
    ("half_pixel", 4, -0.75, 1)])
def test_lowered_cubic_resize_equals_onnx_cubic(tmp_path, coord, factor, coeff, channels):
    graph = _resize_model(tmp_path, [2, channels, 9, 11], factor, mode="cubic", cubic_coeff_a=coeff,
                          coordinate_transformation_mode=coord)
    lowered, report = lower_cubic_resizes(graph)
    assert [r["node"] for r in report] == ["up"] and report[0]["factor"] == factor
    assert [n.op_type for n in lowered.model.graph.node] == ["Pad", "Conv", "DepthToSpace"]
    x = np.random.default_rng(1).uniform(-1, 1, graph.inputs[0].default_shape).astype(np.float32)
    assert np.abs(_run(lowered.model, x) - _run(graph.model, x)).max() <= 1e-5


@pytest.mark.parametrize("attrs", [
    {"mode": "linear"},
    {"mode": "cubic", "exclude_outside": 1},
    {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},  # not periodic in the output phase
])
def test_resizes_without_an_exact_convolution_form_are_left_alone(tmp_path, attrs):
    graph = _resize_model(tmp_path, [1, 3, 9, 9], 2, **attrs)
    lowered, report = lower_cubic_resizes(graph)
    assert report == [] and lowered is graph


def test_int8_build_runs_the_cubic_skip_of_the_zoo_upscaler_in_int8(tmp_path):
    built = build("zoo:upscale2x", "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2,
                  graph_options={"input_shapes": {"image": [1, 3, 32, 32]}})
    passes = built.manifest["passes"]
    assert passes["lower_resize"] == [{"node": "/Resize", "factor": 2, "kernel": [5, 5], "channels": 3}]
    assert passes["quantize"]["float_ops"] == {}  # no float island left where the bicubic skip was
    assert passes["quantize"]["quantized_ops"]["Pad"] == 1 and passes["quantize"]["quantized_ops"]["DepthToSpace"] == 2
    assert built.fidelity["psnr_db"] >= 35.0
