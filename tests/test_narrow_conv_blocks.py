"""A convolution with few outputs and a large kernel runs on 2x2 blocks (SpaceToDepth -> Conv -> DepthToSpace)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.graph import Graph
from edgegen.passes.narrow_conv_blocks import narrow_convs_on_blocks

from int8_builds import onnxruntime_int8

CIN = 5


def _source(tmp_path, kernel=(7, 7), pads=(3, 3, 3, 3), size=(16, 12), cout=3, bias=True, dynamic=False) -> Graph:
    rng = np.random.default_rng(kernel[0] * 10 + pads[0])
    inits = [numpy_helper.from_array(rng.standard_normal((cout, CIN, *kernel)).astype(np.float32) * 0.2, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["y"], name="to_rgb", pads=list(pads)),
             helper.make_node("Tanh", ["y"], ["out"])]
    dims = ["H", "W"] if dynamic else list(size)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, *dims])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", cout, "H2", "W2"])], inits)
    path = tmp_path / "rgb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path, input_shapes={"x": [1, CIN, *size]} if dynamic else None)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,pads,size,bias", [
    ((7, 7), (3, 3, 3, 3), (16, 12), True), ((9, 9), (4, 4, 4, 4), (16, 12), False),
    ((7, 7), (0, 0, 0, 0), (16, 12), True), ((5, 7), (2, 1, 0, 3), (16, 10), True)])
def test_block_convolution_computes_the_same(tmp_path, kernel, pads, size, bias):
    source = _source(tmp_path, kernel, pads, size, bias=bias)
    rewritten, report = narrow_convs_on_blocks(source)
    assert [r["node"] for r in report] == ["to_rgb"]
    assert all(k // 2 <= b <= (k + 3) // 2 for k, b in zip(kernel, report[0]["block_kernel"]))
    assert [n.op_type for n in rewritten.model.graph.node] == ["SpaceToDepth", "Conv", "DepthToSpace", "Tanh"]
    x = np.random.default_rng(1).uniform(-1, 1, source.inputs[0].default_shape).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten.model, x), _run(source.model, x), atol=1e-5)


@pytest.mark.parametrize("change", [{"size": (15, 12)}, {"cout": 8}, {"kernel": (3, 3), "pads": (1, 1, 1, 1)},
                                    {"dynamic": True}])
def test_other_convolutions_stay(tmp_path, change):
    source = _source(tmp_path, **change)
    rewritten, report = narrow_convs_on_blocks(source)
    assert report == [] and rewritten is source


def test_onnxruntime_int8_build_runs_it_on_blocks(tmp_path):
    _source(tmp_path)
    result, ops = onnxruntime_int8(tmp_path / "rgb.onnx", tmp_path / "b")
    assert [r["node"] for r in result.manifest["passes"]["lowered"]["narrow_conv_blocks"]] == ["to_rgb"]
    quantized = result.manifest["passes"]["quantize"]["quantized_ops"]
    assert quantized.get("SpaceToDepth") == 1 and quantized.get("DepthToSpace") == 1
    assert "Col2Im" not in ops  # 12 outputs on the blocks: not narrow any more
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]
    assert result.fidelity["psnr_db"] >= 30 and abs(result.fidelity["psnr_db"] - qdq_graph) < 0.05
