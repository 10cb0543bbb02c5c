"""A convolution with few outputs runs with stride 2 and 4x the outputs (Conv -> DepthToSpace), exactly;
on OpenVINO the shuffle then reads the layer's float output, quantized once after it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgegen.backends.openvino.compile as openvino_compile
import edgegen.backends.tflite.compile as tflite_compile
from edgegen import targets
from edgegen.build import build
from edgegen.graph import Graph
from edgegen.passes.narrow_conv_strided import narrow_convs_strided
from edgegen.passes.qdq import shuffles_after_float_convs

from int8_builds import onnxruntime_int8

CIN = 5


def _source(tmp_path, kernel=(7, 7), pads=(3, 3, 3, 3), size=(16, 12), cout=3, bias=True, dynamic=False,
            tail="Tanh", cin=CIN) -> Graph:
    rng = np.random.default_rng(kernel[0] * 10 + pads[0])
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin, *kernel)).astype(np.float32) * 0.2, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["y"], name="to_rgb", pads=list(pads)),
             helper.make_node(tail, ["y", *(["lo", "hi"] if tail == "Clip" else [])], ["out"])]
    if tail == "Clip":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(1), "hi")]
    dims = ["H", "W"] if dynamic else list(size)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *dims])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", cout, "H2", "W2"])], inits)
    path = tmp_path / "rgb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path, input_shapes={"x": [1, cin, *size]} if dynamic else None)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,pads,size,bias", [
    ((7, 7), (3, 3, 3, 3), (16, 12), True), ((9, 9), (4, 4, 4, 4), (16, 12), False),
    ((7, 7), (0, 0, 0, 0), (16, 12), True), ((5, 7), (2, 1, 0, 3), (16, 10), True),
    ((3, 3), (1, 1, 1, 1), (8, 8), True), ((3, 3), (0, 0, 0, 0), (10, 6), False)])
def test_strided_convolution_computes_the_same(tmp_path, kernel, pads, size, bias):
    source = _source(tmp_path, kernel, pads, size, bias=bias)
    rewritten, report = narrow_convs_strided(source)
    assert report == [{"node": "to_rgb", "kernel": list(kernel), "strided_kernel": [k + 1 for k in kernel]}]
    assert [n.op_type for n in rewritten.model.graph.node] == ["Conv", "DepthToSpace", "Tanh"]
    x = np.random.default_rng(1).uniform(-1, 1, source.inputs[0].default_shape).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten.model, x), _run(source.model, x), atol=1e-5)


@pytest.mark.parametrize("change", [{"size": (15, 12)}, {"cout": 8}, {"kernel": (1, 1), "pads": (0, 0, 0, 0)},
                                    {"dynamic": True}])
def test_other_convolutions_stay(tmp_path, change):
    source = _source(tmp_path, **change)
    rewritten, report = narrow_convs_strided(source)
    assert report == [] and rewritten is source


def test_onnxruntime_int8_build_runs_it_strided(tmp_path):
    _source(tmp_path)
    result, ops = onnxruntime_int8(tmp_path / "rgb.onnx", tmp_path / "b")
    assert [r["node"] for r in result.manifest["passes"]["lowered"]["narrow_conv_strided"]] == ["to_rgb"]
    assert result.manifest["passes"]["quantize"]["quantized_ops"].get("DepthToSpace") == 1
    assert "Col2Im" not in ops  # 12 outputs: not narrow any more
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]
    assert result.fidelity["psnr_db"] >= 30 and abs(result.fidelity["psnr_db"] - qdq_graph) < 0.05


@pytest.mark.parametrize("target,compiler,tail", [
    ("x86-openvino", openvino_compile, "Tanh"), ("x86-openvino", openvino_compile, "Relu"),
    ("x86-openvino", openvino_compile, "Clip"), ("x86-litert", tflite_compile, "Tanh"),
    ("x86-litert", tflite_compile, "Relu")])
def test_int8_build_gives_what_the_plain_convolution_gave(tmp_path, monkeypatch, target, compiler, tail):
    """The rewrite is exact, and on OpenVINO the shuffle reads the float output: the same pixels as without it
    (LiteRT shuffles the int8 tensor, which holds the same values). A Relu or Clip after the layer is moved
    before the shuffle, so that the layer's output and the image share one grid."""
    _source(tmp_path, size=(32, 32), tail=tail)
    strided = build(tmp_path / "rgb.onnx", target, tmp_path / "strided", precision="int8", calibration_count=8)
    assert [r["node"] for r in strided.manifest["passes"]["lowered"]["narrow_conv_strided"]] == ["to_rgb"]
    monkeypatch.setattr(compiler, "INT8_LOWERINGS", ())
    plain = build(tmp_path / "rgb.onnx", target, tmp_path / "plain", precision="int8", calibration_count=8)
    assert "lowered" not in plain.manifest["passes"]
    from edgegen.runtime import Generator

    x = np.random.default_rng(2).uniform(-1, 1, (1, CIN, 32, 32)).astype(np.float32)
    outputs = [Generator.open(tmp_path / name).run({"x": x})["out"] for name in ("strided", "plain")]
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-5
    assert strided.fidelity["psnr_db"] == pytest.approx(plain.fidelity["psnr_db"], abs=0.01)


def _shuffle_model(after_grid=(0.05, 0)) -> onnx.ModelProto:
    """Conv -> Q -> DQ -> DepthToSpace -> Q -> DQ -> Relu, the second pair on `after_grid`."""
    inits = [numpy_helper.from_array(np.ones((8, 2, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(after_grid[0], np.float32), "s2"),
             numpy_helper.from_array(np.array(after_grid[1], np.int8), "z2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
             helper.make_node("DepthToSpace", ["cd"], ["d"], blocksize=2, mode="DCR"),
             helper.make_node("QuantizeLinear", ["d", "s2", "z2"], ["dq"]),
             helper.make_node("DequantizeLinear", ["dq", "s2", "z2"], ["dd"]),
             helper.make_node("Relu", ["dd"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shuffle_reads_the_float_conv_output_where_it_is_quantized_again_on_the_same_grid():
    model = _shuffle_model()
    dropped = shuffles_after_float_convs(model)
    assert [n.op_type for n in dropped.graph.node] == ["Conv", "DepthToSpace", "QuantizeLinear", "DequantizeLinear",
                                                       "Relu"]
    x = np.random.default_rng(0).uniform(-3, 3, (1, 2, 4, 4)).astype(np.float32)
    assert np.array_equal(_run(dropped, x), _run(model, x))  # quantizing twice on one grid is quantizing once
    other_grid = _shuffle_model(after_grid=(0.04, 0))
    assert len(shuffles_after_float_convs(other_grid).graph.node) == len(other_grid.graph.node)


def test_the_edge_tpu_keeps_a_to_rgb_layer_whole():
    """The Edge TPU has no DEPTH_TO_SPACE: the rewrite would hand the image's last ops to the CPU."""
    assert "narrow_conv_strided" not in tflite_compile.int8_lowerings(targets.load("coral-edgetpu"))
    assert "narrow_conv_strided" in tflite_compile.int8_lowerings(targets.load("rpi4-litert"))


def test_tiers_keep_the_plain_convolution(tmp_path):
    """Tier parts are the lowered graph at other sizes, where the stride-2 form would give an even size only."""
    _source(tmp_path, size=(16, 16), cin=3)  # an image input: a picture of a tier's size picks that tier
    built = build(tmp_path / "rgb.onnx", "x86-onnxruntime", tmp_path / "b", precision="int8", calibration_count=8,
                  tiers=[16, 15])
    assert "narrow_conv_strided" not in built.manifest["passes"].get("lowered", {})
    from edgegen.runtime import Generator

    picture = np.random.default_rng(3).integers(0, 256, (15, 15, 3), dtype=np.uint8)
    assert Generator.open(tmp_path / "b").generate(image=picture).shape == (15, 15, 3)
