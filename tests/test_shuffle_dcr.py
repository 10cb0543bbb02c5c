"""A Conv feeding a CRD DepthToSpace (PyTorch's PixelShuffle) becomes DCR with its channels permuted, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.graph import Graph
from edgegen.passes.shuffle_dcr import depth_to_space_as_dcr

from int8_builds import onnxruntime_int8

CHANNELS = 8


def _source(tmp_path, block: int = 2, bias: bool = True, mode: str = "CRD", other_reader: bool = False,
            group: int = 1) -> Graph:
    """x -> Conv 3x3 (to block^2 x CHANNELS) -> DepthToSpace -> Conv 3x3."""
    rng = np.random.default_rng(block)
    wide = CHANNELS * block * block
    inits = [numpy_helper.from_array(rng.standard_normal((wide, 4 // group, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal((16, CHANNELS, 3, 3)).astype(np.float32) * 0.3, "w2")]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(wide).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["wide"], name="expand", pads=[1, 1, 1, 1], group=group),
             helper.make_node("DepthToSpace", ["wide"], ["up"], name="shuffle", blocksize=block, mode=mode),
             helper.make_node("Conv", ["up", "w2"], ["out"], pads=[1, 1, 1, 1])]
    outputs = ["out"]
    if other_reader:
        nodes.append(helper.make_node("Sigmoid", ["wide"], ["side"]))
        outputs.append("side")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 10])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", "C", "H", "W"])
                               for o in outputs], inits)
    path = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("block,bias", [(2, True), (3, False), (4, True)])
def test_dcr_with_permuted_channels_computes_the_same(tmp_path, block, bias):
    source = _source(tmp_path, block, bias)
    rewritten, report = depth_to_space_as_dcr(source)
    assert report == [{"node": "shuffle", "conv": "expand", "blocksize": block}]
    shuffle = next(n for n in rewritten.model.graph.node if n.op_type == "DepthToSpace")
    assert helper.get_attribute_value(shuffle.attribute[[a.name for a in shuffle.attribute].index("mode")]) == b"DCR"
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten.model, x), _run(source.model, x), atol=1e-5)


@pytest.mark.parametrize("change", [{"mode": "DCR"}, {"other_reader": True}, {"group": 2}])
def test_other_shuffles_stay(tmp_path, change):
    source = _source(tmp_path, **change)
    rewritten, report = depth_to_space_as_dcr(source)
    assert report == [] and rewritten is source


def test_onnxruntime_int8_build_runs_the_pixel_shuffle_channels_last(tmp_path):
    _source(tmp_path)
    result, ops = onnxruntime_int8(tmp_path / "up.onnx", tmp_path / "b")
    assert result.manifest["passes"]["lowered"]["shuffle_dcr"] == [{"node": "shuffle", "conv": "expand", "blocksize": 2}]
    assert "DepthToSpace" not in ops and ops.count("Transpose") == 3
    assert result.fidelity["psnr_db"] >= 40
