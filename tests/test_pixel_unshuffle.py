"""PyTorch's pixel_unshuffle (a Reshape/Transpose chain in every exporter's form) becomes SpaceToDepth
with the next convs' weights in its channel order: the same outputs, a move the region planner maps."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.graph import Graph
from edgegen.runtime import Generator
from edgegen.source import SourceSession

FAMILIES = Path(__file__).parent / "data" / "families"


@pytest.mark.parametrize("variant", ["legacy_b1", "legacy_dyn", "dynamo_dyn", "dynamo_hw_dyn"])
def test_each_exporters_pixel_unshuffle_is_space_to_depth(variant):
    path = FAMILIES / f"realesrgan_x2__{variant}.onnx"
    graph = Graph.load(path)
    ops = graph.op_inventory()
    assert ops["SpaceToDepth"] == 1 and not {"Transpose", "Reshape", "Unsqueeze", "Squeeze"} & set(ops)
    reference = np.load(path.with_suffix(".npz"))
    feeds = {k: reference[k] for k in reference.files if not k.startswith("output:")}
    ours, exported = SourceSession(graph.model).run(feeds), SourceSession(path).run(feeds)
    for name, array in exported.items():
        np.testing.assert_allclose(ours[name], array, atol=1e-6, rtol=0)


def test_a_dynamo_export_with_dynamic_sizes_now_offers_regions(tmp_path):
    """Its chain computes shapes from the input's Shape: ROI was refused at the Reshape."""
    built = build(FAMILIES / "realesrgan_x2__dynamo_hw_dyn.onnx", "x86-onnxruntime", tmp_path / "b", roi=True,
                  graph_options={"input_shapes": {"x": [1, 3, 64, 64]}})
    assert "conv2d_20" in built.manifest["serving"]["roi"]
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(gen.generate(image=image, roi=(10, 70, 30, 20)), gen.generate(image=image)[70:90, 10:40])


def _chain(perm: list[int], reader: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 2, 4, 2, 4, 2], np.int64), "split"),
             numpy_helper.from_array(np.array([1, 8, 4, 4], np.int64), "merge"),
             numpy_helper.from_array(rng.normal(0, 0.3, (3, 8, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["image", "split"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=perm),
             helper.make_node("Reshape", ["t", "merge"], ["moved"]),
             helper.make_node("Conv", ["moved", "w"], ["out"], pads=[1, 1, 1, 1]) if reader == "Conv" else
             helper.make_node("Relu", ["moved"], ["out"])]
    out_channels = 3 if reader == "Conv" else 8
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, out_channels, 4, 4])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("perm, reader", [([0, 1, 3, 5, 2, 4], "Relu"),  # read by a non-Conv: kept
                                          ([0, 1, 5, 3, 2, 4], "Conv")])  # another order of the blocks: kept
def test_other_moves_are_left_as_exported(tmp_path, perm, reader):
    onnx.save(_chain(perm, reader), str(tmp_path / "m.onnx"))
    assert "Transpose" in Graph.load(tmp_path / "m.onnx").op_inventory()


def test_the_same_chain_read_by_a_conv_is_rewritten_exactly(tmp_path):
    onnx.save(_chain([0, 1, 3, 5, 2, 4], "Conv"), str(tmp_path / "m.onnx"))
    graph = Graph.load(tmp_path / "m.onnx")
    assert "Transpose" not in graph.op_inventory()
    x = {"image": np.random.default_rng(1).random((1, 2, 8, 8), dtype=np.float32)}
    np.testing.assert_allclose(SourceSession(graph.model).run(x)["out"], SourceSession(tmp_path / "m.onnx").run(x)["out"],
                               atol=1e-6, rtol=0)
