"""An activation after a lowered ConvTranspose runs on each phase convolution instead: exact, and fused in int8."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.graph import Graph
from edgegen.passes.activation_phases import activations_into_phases
from edgegen.passes.calibration import load_calibration
from edgegen.passes.lower_conv_transpose import lower_conv_transposes
from edgegen.passes.quantize import Quantizer

from int8_builds import onnxruntime_int8


def _source(tmp_path, activation: str = "Relu", kernel: int = 4, output_padding: int = 0, other_reader: bool = False,
            constant_bounds: bool = True, tail: bool = False) -> Graph:
    """x -> ConvTranspose (stride 2) -> activation [-> Conv 3x3], with options that keep the move from applying."""
    rng = np.random.default_rng(kernel)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 8, kernel, kernel)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 7, 9])]
    args, attrs = ["u"], {}
    if activation == "LeakyRelu":
        attrs["alpha"] = 0.2
    if activation == "Clip":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo")]
        if constant_bounds:
            inits.append(numpy_helper.from_array(np.array(1.5, np.float32), "hi"))
        else:
            inputs.append(helper.make_tensor_value_info("hi", TensorProto.FLOAT, []))
        args += ["lo", "hi"]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["u"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[output_padding] * 2),
             helper.make_node(activation, args, ["a"], name="act", **attrs)]
    outputs = ["a"]
    if tail:
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.3, "w2"))
        nodes.append(helper.make_node("Conv", ["a", "w2"], ["out"], pads=[1, 1, 1, 1]))
        outputs = ["out"]
    if other_reader:
        nodes.append(helper.make_node("Sigmoid", ["u"], ["s"]))
        outputs.append("s")
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", "C", "H", "W"])
                                                   for o in outputs], inits)
    path = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("activation,kernel,output_padding", [
    ("Relu", 4, 0), ("LeakyRelu", 3, 1), ("Clip", 3, 0)])  # (3, 0): a Slice crops the interleaved output
def test_activation_on_each_phase_computes_the_same(tmp_path, activation, kernel, output_padding):
    source = _source(tmp_path, activation, kernel, output_padding)
    lowered, _ = lower_conv_transposes(source)
    moved, report = activations_into_phases(lowered)
    assert report == [{"node": "act", "op": activation, "phases": 4}]
    ops = [n.op_type for n in moved.model.graph.node]
    assert ops.count(activation) == 4 and ops[-1] in ("DepthToSpace", "Slice")
    onnx.checker.check_model(moved.model)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 6, 7, 9)).astype(np.float32)
    np.testing.assert_allclose(_run(moved.model, {"x": x})[0], _run(source.model, {"x": x})[0], atol=1e-5)


@pytest.mark.parametrize("change", [{"other_reader": True}, {"activation": "Sigmoid"},
                                    {"activation": "Clip", "constant_bounds": False}])
def test_other_activations_stay(tmp_path, change):
    lowered, _ = lower_conv_transposes(_source(tmp_path, **change))
    moved, report = activations_into_phases(lowered)
    assert report == [] and moved is lowered


@pytest.mark.parametrize("kernel", [4, 3])  # 3: the interleave is cropped by a Slice, which runs in int8 too
def test_onnxruntime_int8_build_fuses_it_and_shuffles_integers(tmp_path, kernel):
    _source(tmp_path, kernel=kernel, tail=True)
    result, ops = onnxruntime_int8(tmp_path / "up.onnx", tmp_path / "b")
    passes = result.manifest["passes"]
    assert passes["lowered"]["activation_into_phases"] == [{"node": "act", "op": "Relu", "phases": 4}]
    assert not {"Relu", "DepthToSpace", "Slice"} & set(passes["quantize"]["float_ops"])
    assert "DepthToSpace" not in ops  # the interleave now moves values of one grid: run on the integers
    assert result.fidelity["psnr_db"] >= 40


def test_shuffles_are_quantized_but_not_floor_search_layers(tmp_path):
    lowered, _ = lower_conv_transposes(_source(tmp_path, kernel=3, tail=True))
    quantizer = Quantizer(lowered, load_calibration(lowered.inputs, None, 4))
    assert "DepthToSpace" not in {op for _, op in quantizer.layers()}  # quantized, but never kept in float alone
    ops = [n.op_type for n in quantizer.emit().graph.node]
    shuffle = ops.index("DepthToSpace")
    assert ops[shuffle - 1] == "DequantizeLinear" and ops[shuffle + 1] == "QuantizeLinear"
