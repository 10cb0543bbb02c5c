"""DepthToSpace (DCR) and nearest upsampling between two conversions of one grid run channels-last on the
integer tensor, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.passes.shuffle_nhwc import moves_channels_last

from int8_builds import onnxruntime_int8, resize_between_convs, save_graph

CHANNELS = 32


def _model(mode: str = "DCR", blocksize: int = 2, out_scale: float = 0.05, readers: int = 1,
           channels: int = CHANNELS, upsample: dict | None = None) -> onnx.ModelProto:
    """x -> Quantize -> Dequantize -> DepthToSpace (or, given `upsample`, a Resize with those attributes
    and "scales") -> Quantize (scale out_scale) -> Dequantize -> Relu."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "s_out"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    if upsample is None:
        move = helper.make_node("DepthToSpace", ["xf"], ["y"], name="shuffle", blocksize=blocksize, mode=mode)
    else:
        attrs = dict(upsample)
        inits.append(numpy_helper.from_array(np.array(attrs.pop("scales"), np.float32), "scales"))
        move = helper.make_node("Resize", ["xf", "", "scales"], ["y"], name="upsample", **attrs)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             move,
             helper.make_node("QuantizeLinear", ["y", "s_out", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "z"], ["yf"]),
             helper.make_node("Relu", ["yf"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "C", "H2", "W2"])]
    if readers > 1:
        nodes.append(helper.make_node("Sigmoid", ["y"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", "C", "H2", "W2"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", channels, "H", "W"])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("blocksize", [2, 4])
def test_shuffle_on_the_integer_tensor_equals_the_original(blocksize):
    model = _model(blocksize=blocksize)
    rewritten = moves_channels_last(model)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "DepthToSpace" not in ops and ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert ops.count("Transpose") == 3
    rng = np.random.default_rng(1)
    for shape in [(1, CHANNELS, 5, 7), (2, CHANNELS, 16, 12)]:  # the spatial size is read at run time
        x = rng.uniform(-6, 6, shape).astype(np.float32)
        np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


@pytest.mark.parametrize("change", [{"mode": "CRD"}, {"out_scale": 0.1}, {"readers": 2},
                                    {"channels": 12}])  # runs of 2 x 3 bytes: slower than DepthToSpace
def test_other_shuffles_are_left_alone(change):
    model = _model(**change)
    rewritten = moves_channels_last(model)
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


NEAREST_X2 = {"mode": "nearest", "scales": [1, 1, 2, 2]}


@pytest.mark.parametrize("upsample", [NEAREST_X2, {**NEAREST_X2, "scales": [1, 1, 3, 3]},
                                      {**NEAREST_X2, "coordinate_transformation_mode": "asymmetric",
                                       "nearest_mode": "floor"}])
def test_nearest_upsampling_on_the_integer_tensor_equals_the_original(upsample):
    model = _model(upsample=upsample)
    rewritten = moves_channels_last(model)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Resize" not in ops and "Expand" in ops and ops.count("QuantizeLinear") == 1
    rng = np.random.default_rng(2)
    for shape in [(1, CHANNELS, 5, 7), (2, CHANNELS, 16, 12)]:
        x = rng.uniform(-6, 6, shape).astype(np.float32)
        np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


@pytest.mark.parametrize("upsample", [{**NEAREST_X2, "mode": "linear"}, {**NEAREST_X2, "scales": [1, 1, 2.5, 2.5]},
                                      {**NEAREST_X2, "scales": [1, 1, 2, 1]},
                                      {**NEAREST_X2, "nearest_mode": "ceil"}])  # x -> ceil(x / 2 - 0.25): not a copy
def test_other_resizes_are_left_alone(upsample):
    model = _model(upsample=upsample)
    rewritten = moves_channels_last(model)
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


def test_onnxruntime_int8_artifact_of_a_transposed_convolution_has_it(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["u"], strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1]),
             helper.make_node("Conv", ["u", "w2"], ["out"], pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "up.onnx", nodes, inits, 6)
    result, ops = onnxruntime_int8(path, tmp_path / "b", graph_options={"input_shapes": {"x": [1, 6, 16, 16]}})
    assert "DepthToSpace" not in ops and ops.count("Transpose") == 3
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]  # before the backend's rewrites
    assert abs(result.fidelity["psnr_db"] - qdq_graph) < 0.05


def test_onnxruntime_int8_artifact_of_a_nearest_upsampler_has_it(tmp_path):
    path = resize_between_convs(tmp_path / "nearest.onnx", 4, 16, [1, 1, 2, 2], mode="nearest")
    result, ops = onnxruntime_int8(path, tmp_path / "b", graph_options={"input_shapes": {"x": [1, 4, 16, 16]}})
    assert "Resize" not in ops and "Expand" in ops
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]  # before the backend's rewrites
    assert abs(result.fidelity["psnr_db"] - qdq_graph) < 0.05
