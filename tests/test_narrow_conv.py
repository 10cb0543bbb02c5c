"""A convolution with few outputs and a large kernel becomes a 1x1 Conv + Col2Im computing the same sums."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.passes.narrow_conv import narrow_convs_as_col2im

CIN = 6


def _model(cout: int = 3, kernel: tuple[int, int] = (7, 7), pads: tuple = (3, 3, 3, 3), bias: bool = True,
           strides: tuple = (1, 1), group: int = 1, quantized: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((cout, CIN // group, *kernel)).astype(np.float32)
    inits, conv_inputs, nodes = [], ["x", "w"], []
    if quantized:  # per-channel symmetric int8 under a DequantizeLinear, as the QDQ graph has them
        scale = np.abs(weight).max(axis=(1, 2, 3)) / 127
        inits += [numpy_helper.from_array(np.round(weight / scale[:, None, None, None]).astype(np.int8), "wq"),
                  numpy_helper.from_array(scale.astype(np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(cout, np.int8), "wz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0))
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes += [helper.make_node("Conv", conv_inputs, ["y"], pads=list(pads), strides=list(strides), group=group,
                               name="to_rgb"),
              helper.make_node("Tanh", ["y"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CIN, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", cout, "H2", "W2"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,pads,bias,quantized", [
    ((7, 7), (3, 3, 3, 3), True, False), ((9, 9), (4, 4, 4, 4), False, False),
    ((5, 3), (1, 2, 3, 0), True, False), ((3, 3), (1, 1, 1, 1), True, True)])
def test_rewritten_convolution_computes_the_same(kernel, pads, bias, quantized):
    model = _model(kernel=kernel, pads=pads, bias=bias, quantized=quantized)
    rewritten = narrow_convs_as_col2im(model)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Col2Im" in ops and ops.count("Conv") == 1
    assert next(o.version for o in rewritten.opset_import if o.domain == "") == 18
    if quantized:  # the same int8 values, still under a DequantizeLinear
        assert ops.count("DequantizeLinear") == 1
    rng = np.random.default_rng(1)
    for size in [(16, 16), (11, 20)]:  # the spatial size is read at run time
        x = rng.uniform(-1, 1, (2, CIN, *size)).astype(np.float32)
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-5)


def test_a_bias_named_after_the_convolution_keeps_its_name_apart_from_the_rewrite(tmp_path):
    """A lowered ConvTranspose's phases conv "X" has its bias as "X/bias": the rewrite's reshaped bias took
    the same name (ONNX Runtime: "Duplicate definition of name"; an internal error of an FSRCNN int8 build)."""
    model = _model()
    for tensor in model.graph.initializer:
        if tensor.name == "b":
            tensor.name = "to_rgb/bias"
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[2] = "to_rgb/bias"
    rewritten = narrow_convs_as_col2im(model)
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(2).uniform(-1, 1, (1, CIN, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-5)


@pytest.mark.parametrize("change", [{"cout": 16}, {"kernel": (1, 1), "pads": (0, 0, 0, 0)}, {"strides": (2, 2)},
                                    {"group": 3}, {"kernel": (3, 3), "pads": (3, 3, 3, 3)}])
def test_other_convolutions_are_left_alone(change):
    model = _model(**change)
    assert narrow_convs_as_col2im(model) is model


def test_onnxruntime_int8_artifact_has_it_and_holds_its_quality(tmp_path):
    path = tmp_path / "rgb.onnx"
    onnx.save(_model(), str(path))
    result = build(path, "x86-onnxruntime", tmp_path / "b", precision="int8", calibration_count=8,
                   graph_options={"input_shapes": {"x": [1, CIN, 32, 32]}})
    artifact = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert "Col2Im" in [n.op_type for n in artifact.graph.node]
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]  # before the backend's rewrites
    assert abs(result.fidelity["psnr_db"] - qdq_graph) < 0.05
