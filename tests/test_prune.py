"""Structured channel pruning: coupling rules on small onnx.helper models (with dead channels, so the
pruned model must compute exactly what the original does), least-squares reconstruction, the ratio
searches, bad input, and 30% pruning of the PyTorch-exported generator families."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.errors import BuildError, RequestError
from edgegen.graph import Graph
from edgegen.passes.activations import _subgraph
from edgegen.passes.calibration import Calibration, load_calibration
from edgegen.passes.floor import QualityFloor
from edgegen.passes.prune import Pruner, prune, prune_to_floor, prune_to_macs
from edgegen.passes.reconstruct import reconstruct, record_targets, refit_samples

FAMILIES = Path(__file__).parent / "data" / "families"


def _graph(tmp_path, nodes, inits, inputs, outputs, name="m") -> Graph:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    return Graph.load(tmp_path / f"{name}.onnx")


def _image(name, channels, size=8):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, size, size])


def _weights(rng, shape, dead=(), axis=0):
    """Random weights whose `dead` slices along `axis` are zero (channels that carry nothing)."""
    w = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    np.moveaxis(w, axis, 0)[list(dead)] = 0
    return w


def _bias(rng, n, dead=()):
    b = (rng.standard_normal(n) * 0.1).astype(np.float32)
    b[list(dead)] = 0
    return b


def _run(model: onnx.ModelProto, feeds) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _weight(graph: Graph, node_name: str, slot: int = 1) -> np.ndarray:
    node = next(n for n in graph.model.graph.node if n.name == node_name)
    return numpy_helper.to_array(next(t for t in graph.model.graph.initializer if t.name == node.input[slot]))


def _same_function(graph: Graph, ratio: float) -> tuple[Graph, dict]:
    """Prune with and without reconstruction; both must compute what the original does (the removed
    channels were dead), and run with another batch size."""
    calibration = load_calibration(graph.inputs, None, 10)
    feeds = load_calibration(graph.inputs, None, 3).feeds
    expected = _run(graph.model, feeds)
    for refit in (False, True):
        pruned, report = prune(graph, ratio, calibration, reconstruct=refit)
        np.testing.assert_allclose(_run(pruned.model, feeds), expected, atol=2e-4)
    assert report["quality"]["with_reconstruction"]["psnr_db"] > 60
    return pruned, report


def test_residual_add_ties_both_branches(tmp_path):
    rng = np.random.default_rng(0)
    dead = [1, 5]
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="ra"),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["ra", "b"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["rs"], name="rs"),
        helper.make_node("Conv", ["rs", "wc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (8, 3, 3, 3), dead), "ba": _bias(rng, 8, dead),
        "wb": _weights(rng, (8, 8, 3, 3), dead), "bb": _bias(rng, 8, dead), "wc": _weights(rng, (3, 8, 3, 3))},
        [_image("x", 3)], [_image("y", 3)])
    pruned, report = _same_function(graph, 0.25)
    assert [g["layers"] for g in report["groups"]] == [["a", "b"]]
    assert report["groups"][0]["channels"] == [8, 6] and report["groups"][0]["consumers"] == ["b", "c"]
    assert _weight(pruned, "a").shape == (6, 3, 3, 3) and _weight(pruned, "b").shape == (6, 6, 3, 3)
    assert _weight(pruned, "c").shape == (3, 6, 3, 3)


def test_concat_keeps_each_inputs_offsets(tmp_path):
    rng = np.random.default_rng(1)
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("LeakyRelu", ["cat"], ["act"], name="act", alpha=0.2),
        helper.make_node("Conv", ["act", "wc", "bc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (4, 3, 3, 3), [0]), "ba": _bias(rng, 4, [0]),
        "wb": _weights(rng, (6, 3, 3, 3), [2, 4]), "bb": _bias(rng, 6, [2, 4]),
        "wc": _weights(rng, (3, 10, 3, 3)), "bc": _bias(rng, 3)},
        [_image("x", 3)], [_image("y", 3)])
    pruned, report = _same_function(graph, 0.34)  # floor(0.34 * 4) = 1, floor(0.34 * 6) = 2
    assert sorted(g["channels"] for g in report["groups"]) == [[4, 3], [6, 4]]
    assert _weight(pruned, "c").shape == (3, 7, 3, 3)


def test_depthwise_batchnorm_and_clip_follow_the_producer(tmp_path):
    rng = np.random.default_rng(2)
    dead = [3, 6]
    bn = {"scale": rng.uniform(0.5, 1.5, 8), "bias": _bias(rng, 8, dead), "mean": _bias(rng, 8, dead),
          "var": rng.uniform(0.5, 1.5, 8)}
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r"),  # keeps the BatchNorm from being folded into the Conv
        helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Conv", ["n", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["clip"], name="clip"),
        helper.make_node("Conv", ["clip", "wc"], ["y"], name="c"),
    ], {"wa": _weights(rng, (8, 3, 3, 3), dead), "ba": _bias(rng, 8, dead),
        **{k: v.astype(np.float32) for k, v in bn.items()},
        "wd": _weights(rng, (8, 1, 3, 3)), "bd": _bias(rng, 8, dead),
        "lo": np.float32(0), "hi": np.float32(6), "wc": _weights(rng, (3, 8, 1, 1))},
        [_image("x", 3)], [_image("y", 3)])
    pruned, report = _same_function(graph, 0.25)
    assert report["groups"][0]["adjusted"] == ["bn", "dw"]
    dw = next(n for n in pruned.model.graph.node if n.name == "dw")
    assert _weight(pruned, "dw").shape == (6, 1, 3, 3) and helper.get_attribute_value(dw.attribute[0]) == 6
    assert _weight(pruned, "bn", 4).shape == (6,) and _weight(pruned, "c").shape == (3, 6, 1, 1)


@pytest.mark.parametrize("opset", [17, 18])
def test_squeeze_excite_pooling_by_reduce_mean_follows_the_producer(tmp_path, opset):
    """The dynamo exporter writes a squeeze-excite's AdaptiveAvgPool2d(1) as ReduceMean (its axes an input from
    opset 18): the block was left unpruned, while the legacy export's GlobalAveragePool was pruned."""
    rng = np.random.default_rng(4)
    dead = [2, 5]
    axes = {"axes": [2, 3]} if opset < 18 else {}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="r"),
             helper.make_node("ReduceMean", ["r"] + (["axes"] if opset >= 18 else []), ["m"], name="pool",
                              keepdims=1, **axes),
             helper.make_node("Conv", ["m", "w1", "b1"], ["s1"], name="s1"),
             helper.make_node("Relu", ["s1"], ["s1r"], name="s1r"),
             helper.make_node("Conv", ["s1r", "w2", "b2"], ["s2"], name="s2"),
             helper.make_node("Sigmoid", ["s2"], ["g"], name="g"),
             helper.make_node("Mul", ["r", "g"], ["e"], name="excite"),
             helper.make_node("Conv", ["e", "wc"], ["y"], name="c")]
    inits = {"wa": _weights(rng, (8, 3, 3, 3), dead), "ba": _bias(rng, 8, dead), "w1": _weights(rng, (4, 8, 1, 1), [1]),
             "b1": _bias(rng, 4, [1]), "w2": _weights(rng, (8, 4, 1, 1)), "b2": _bias(rng, 8),
             "wc": _weights(rng, (3, 8, 1, 1)), "axes": np.array([2, 3], np.int64)}
    graph = helper.make_graph(nodes, "se", [_image("x", 3)], [_image("y", 3)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items() if opset >= 18 or k != "axes"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "se.onnx"))
    pruned, report = _same_function(Graph.load(tmp_path / "se.onnx"), 0.25)
    assert _weight(pruned, "a").shape[0] == 6 and _weight(pruned, "s1").shape == (3, 6, 1, 1)
    assert _weight(pruned, "s2").shape == (6, 3, 1, 1) and _weight(pruned, "c").shape == (3, 6, 1, 1)


def _linear_gate(tmp_path, pooled: list, to_4d: list, inits: dict) -> Graph:
    """conv a (8 channels, 2 dead) -> Relu r -> pooled to [N, 8] m -> Linear l1 -> Relu -> Linear l2 -> Sigmoid g
    -> `to_4d` g4 ([N, 8, 1, 1]) -> r * g4 -> conv c: a squeeze-excite gate of Linear layers."""
    rng = np.random.default_rng(13)
    dead = [2, 5]
    return _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        *pooled,  # [N, 8]
        helper.make_node("Gemm", ["m", "w1", "b1"], ["f1"], name="l1", transB=1),
        helper.make_node("Relu", ["f1"], ["f1r"], name="f1r"),
        helper.make_node("Gemm", ["f1r", "w2", "b2"], ["f2"], name="l2", transB=1),
        helper.make_node("Sigmoid", ["f2"], ["g"], name="gate"), *to_4d,  # [N, 8, 1, 1]
        helper.make_node("Mul", ["r", "g4"], ["e"], name="excite"),
        helper.make_node("Conv", ["e", "wc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (8, 3, 3, 3), dead), "ba": _bias(rng, 8, dead), "w1": _weights(rng, (4, 8), [1]),
        "b1": _bias(rng, 4, [1]), "w2": _weights(rng, (8, 4)), "b2": _bias(rng, 8), "wc": _weights(rng, (3, 8, 3, 3)),
        **inits}, [_image("x", 3)], [_image("y", 3)])


def _gate_pruned_with_its_trunk(graph: Graph) -> dict:
    """Prune `_linear_gate`'s model by 25% (its dead channels go); the trunk's group holds the gate's l2."""
    pruned, report = _same_function(graph, 0.25)
    trunk = next(g for g in report["groups"] if "a" in g["layers"])
    assert trunk["layers"] == ["a", "l2"] and trunk["consumers"] == ["l1", "c"] and trunk["channels"] == [8, 6]
    assert _weight(pruned, "a").shape == (6, 3, 3, 3) and _weight(pruned, "l2").shape == (6, 3)
    assert _weight(pruned, "l1").shape == (3, 6) and _weight(pruned, "c").shape == (3, 6, 3, 3)
    assert [g["reasons"] for g in report["excluded"]] == [["graph input 'x'"], ["reaches graph output 'y'"]]
    return pruned


@pytest.mark.parametrize("pool,view", [("ReduceMean", "Reshape"), ("ReduceMean", "Unsqueeze"),
                                       ("Flatten", "Reshape"), ("Squeeze", "Unsqueeze")])
def test_a_squeeze_excite_gate_of_linear_layers_prunes_with_the_trunk_it_multiplies(tmp_path, pool, view):
    """SENet's gate pool -> Linear -> Sigmoid -> view(-1, C, 1, 1) (or [:, :, None, None]) moves no channel: the
    gated trunk was excluded as "Reshape node ... regroups channels"; its Linear's output rows now go with the
    trunk's channels. The pool: x.mean((2, 3)), or a GlobalAveragePool flattened or squeezed to [N, C]."""
    to_4d = helper.make_node("Reshape", ["g", "shape"], ["g4"], name="view") if view == "Reshape" else \
        helper.make_node("Unsqueeze", ["g", "axes"], ["g4"], name="view")
    pooled = [helper.make_node("ReduceMean", ["r"], ["m"], name="pool", axes=[2, 3], keepdims=0)] if \
        pool == "ReduceMean" else [helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
                                   helper.make_node(pool, ["p"] + (["axes"] if pool == "Squeeze" else []), ["m"])]
    pruned = _gate_pruned_with_its_trunk(_linear_gate(tmp_path, pooled, [to_4d], {
        "shape": np.array([-1, 8, 1, 1], np.int64), "axes": np.array([2, 3], np.int64)}))
    if view == "Reshape":
        assert _weight(pruned, "view", 1).tolist() == [-1, 8 - 2, 1, 1]


@pytest.mark.parametrize("channels", ["shape", "folded", "constant", "maximum"])
def test_a_gate_viewed_to_a_shape_computed_from_the_trunks_prunes_with_it(tmp_path, monkeypatch, channels):
    """The TorchScript exporter writes SENet's `n, c = x.shape[:2]; x * g.view(n, c, 1, 1)` as Shape -> Gather ->
    Unsqueeze -> Concat -> Reshape: with a dynamic batch the shape stays computed, and the trunk was excluded
    ("read by Shape node", "Reshape node ... has a computed shape"), leaving a MobileNet block's expansion
    unpruned (83 -> 45 MMACs at --prune 0.5; its dynamo export 21 MMACs). The channel count: the trunk's Shape's
    entry 1, which follows the pruned count at run time (where shape inference does not reach the gate and the
    load's folding leaves it), that entry folded to a constant [8] by the load, or `view(n, C, 1, 1)`'s constant
    [8, 1, 1], re-counted. Through arithmetic edgegen does not follow (max(c, 1)) the trunk stays excluded."""
    if channels in ("shape", "maximum"):
        monkeypatch.setattr("edgegen.graph_load._static_shape_parts", lambda model: model)
    gather = [helper.make_node("Shape", ["r"], ["r_shape"], name="shape"),
              helper.make_node("Gather", ["r_shape", "zero"], ["n"], name="n", axis=0),
              helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], name="n1")]
    if channels == "constant":
        to_4d = [*gather, helper.make_node("Concat", ["n1", "c11"], ["to_4d"], name="to_4d", axis=0)]
    else:
        count = [helper.make_node("Gather", ["r_shape", "one"], ["c"], name="c_of", axis=0)] + (
            [helper.make_node("Max", ["c", "one"], ["c_max"], name="max")] if channels == "maximum" else [])
        to_4d = [*gather, *count, helper.make_node("Unsqueeze", [count[-1].output[0], "axis0"], ["c1"], name="c1"),
                 helper.make_node("Concat", ["n1", "c1", "ones"], ["to_4d"], name="to_4d", axis=0)]
    pooled = [helper.make_node("ReduceMean", ["r"], ["m"], name="pool", axes=[2, 3], keepdims=0)]
    graph = _linear_gate(tmp_path, pooled, [*to_4d, helper.make_node("Reshape", ["g", "to_4d"], ["g4"], name="view")],
                         {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64),
                          "ones": np.array([1, 1], np.int64), "c11": np.array([8, 1, 1], np.int64)})
    assert graph.op_inventory()["Gather"] == (2 if channels in ("shape", "maximum") else 1)  # the load's folding
    if channels == "maximum":
        with pytest.raises(BuildError, match="its channel count, read by Shape node 'shape', reaches Max node 'max', "
                                             "which edgegen does not re-count; Reshape node 'view' has a computed"):
            prune(graph, 0.25, load_calibration(graph.inputs, None, 4))
        return
    pruned = _gate_pruned_with_its_trunk(graph)
    if channels != "shape":
        concat = next(n for n in pruned.model.graph.node if n.name == "to_4d")
        pieces = [numpy_helper.to_array(t).tolist() for name in concat.input[1:]
                  for t in pruned.model.graph.initializer if t.name == name]
        assert pieces == ([[6, 1, 1]] if channels == "constant" else [[6], [1, 1]])


def test_channel_means_broadcast_along_w_keep_their_channels(tmp_path):
    """h * h.mean((2, 3)) with W == C multiplies the [N, C] means along W, not along the channels: they were
    pruned as channels and the build ended in "pruning produced an invalid ONNX model". (A batch of one: the
    means' batch axis meets H.)"""
    rng = np.random.default_rng(14)
    one = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 8, 8]) for n, c in (("x", 3), ("y", 3))]

    def model(means_of: str, name: str) -> Graph:  # y = c(h * mean(means_of)), an 8x8 map of 8 channels
        return _graph(tmp_path, [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["h"], name="h"),
            helper.make_node("Conv", ["x", "wb"], ["b"], name="b", pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", [means_of], ["m"], name="pool", axes=[2, 3], keepdims=0),
            helper.make_node("Mul", ["h", "m"], ["e"], name="mul"),
            helper.make_node("Conv", ["e", "wc"], ["y"], name="c", pads=[1, 1, 1, 1]),
        ], {"wa": _weights(rng, (8, 3, 3, 3), [1, 6]), "ba": _bias(rng, 8, [1, 6]), "wb": _weights(rng, (8, 3, 3, 3)),
            "wc": _weights(rng, (3, 8, 3, 3))}, one[:1], one[1:], name=name)

    other = model("b", "other")  # b's means: a's channels still prune
    pruned, report = prune(other, 0.25, load_calibration(other.inputs, None, 4))
    feeds = load_calibration(other.inputs, None, 1).feeds
    np.testing.assert_allclose(_run(pruned.model, feeds), _run(other.model, feeds), atol=2e-4)
    assert [g["layers"] for g in report["groups"]] == [["a"]] and _weight(pruned, "c").shape == (3, 6, 3, 3)
    broadcast = "Mul node 'mul' broadcasts the channels of 'm' along axis 3 of its output, not its channel axis"
    assert next(g["reasons"] for g in report["excluded"] if g["layers"] == ["b"]) == [broadcast]
    own = model("h", "own")
    with pytest.raises(BuildError, match=f"no prunable channels: .*{broadcast}"):
        prune(own, 0.25, load_calibration(own.inputs, None, 4))


def test_conv_transpose_and_instance_norm(tmp_path):
    rng = np.random.default_rng(3)
    up = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    graph = _graph(tmp_path, [
        helper.make_node("ConvTranspose", ["x", "wa", "ba"], ["a"], name="a", **up),
        helper.make_node("InstanceNormalization", ["a", "scale", "shift"], ["n"], name="in"),
        helper.make_node("Relu", ["n"], ["r"], name="r"),
        helper.make_node("ConvTranspose", ["r", "wb"], ["b"], name="b", **up),
        helper.make_node("Relu", ["b"], ["rb"], name="rb"),
        helper.make_node("Conv", ["rb", "wc"], ["c"], name="c", pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["y"], name="tanh"),
    ], {"wa": _weights(rng, (4, 8, 4, 4), [2, 7], axis=1), "ba": _bias(rng, 8, [2, 7]),
        "scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "shift": _bias(rng, 8, [2, 7]),
        "wb": _weights(rng, (8, 6, 4, 4), [1], axis=1), "wc": _weights(rng, (3, 6, 3, 3))},
        [_image("x", 4, 4)], [_image("y", 3, 16)])
    pruned, _ = _same_function(graph, 0.25)
    assert _weight(pruned, "a").shape == (4, 6, 4, 4) and _weight(pruned, "in").shape == (6,)
    assert _weight(pruned, "b").shape == (6, 5, 4, 4) and _weight(pruned, "c").shape == (3, 5, 3, 3)


@pytest.mark.parametrize("linear,batch", [("Gemm", "-1"), ("MatMul", "-1"), ("Gemm", "z"), ("Gemm", "f"),
                                          ("Gemm", "z, -1")])
def test_latent_projection_prunes_whole_channel_blocks(tmp_path, linear, batch):
    """fc(z).view(-1, C, H, W), and the TorchScript export of `view(z.size(0), C, H, W)` or PyTorch-GAN's
    `out.view(out.shape[0], C, H, W)`: Shape -> Gather -> Unsqueeze -> Concat with [C, H, W] -> Reshape. The
    computed shape's batch left the projection unpruned ("Reshape node 'view' regroups channels: axis 1 goes from
    128 to 8 entries"); its constant [C, H, W] is re-counted now as the constant shape is, and so is the -1 of
    `view(z.size(0), -1, H, W)`."""
    rng = np.random.default_rng(4)
    w = _weights(rng, (16, 8, 16), [2, 5], axis=1).reshape(16, 128)  # channel c = features c*16..c*16+15
    bias = np.repeat(_bias(rng, 8, [2, 5]), 16)
    first = [helper.make_node("Gemm", ["z", "w", "bias"], ["f"], name="fc")] if linear == "Gemm" else [
        helper.make_node("MatMul", ["z", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "bias"], ["f"])]
    shape = [] if batch == "-1" else [
        helper.make_node("Shape", [batch[0]], ["z_shape"], name="size"),
        helper.make_node("Gather", ["z_shape", "zero"], ["n"], name="n", axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], name="n1"),
        helper.make_node("Concat", ["n1", "chw"], ["shape"], name="to_4d", axis=0)]
    constants = {"shape": np.array([-1, 8, 4, 4], dtype=np.int64)} if batch == "-1" else {
        "zero": np.array(0, np.int64), "axis0": np.array([0], np.int64),
        "chw": np.array([-1 if batch == "z, -1" else 8, 4, 4], np.int64)}
    graph = _graph(tmp_path, first + shape + [
        helper.make_node("Reshape", ["f", "shape"], ["f4"], name="view"),
        helper.make_node("Relu", ["f4"], ["r"], name="r"),
        helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t"], ["rt"], name="rt"),
        helper.make_node("Conv", ["rt", "wc"], ["y"], name="head", pads=[1, 1, 1, 1]),
    ], {"w": w, "bias": bias, **constants,
        "wt": _weights(rng, (8, 4, 4, 4), [0], axis=1), "bt": _bias(rng, 4, [0]), "wc": _weights(rng, (3, 4, 3, 3))},
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])], [_image("y", 3)])
    pruned, report = _same_function(graph, 0.25)
    counted = _weight(pruned, "view") if batch == "-1" else _weight(pruned, "to_4d", 1)
    assert _weight(pruned, "fc").shape == (16, 96) and counted.tolist() == ([-1] if batch == "-1" else []) + [6, 4, 4]
    assert _weight(pruned, "up").shape == (6, 3, 4, 4)
    assert sorted(g["channels"] for g in report["groups"]) == [[4, 3], [8, 6]]


def test_conditional_generator_keeps_the_label_channels(cgen_path):
    graph = Graph.load(cgen_path)
    pruned, report = prune(graph, 0.5, load_calibration(graph.inputs, None, 8))
    assert sorted(g["channels"] for g in report["groups"]) == [[8, 4], [8, 4]]
    label = next(g for g in report["excluded"] if g["channels"] == 4)  # the label's embedding, reshaped
    assert label["consumers"] == ["Conv_12"]
    assert label["reasons"] == ["Reshape node 'Reshape_10' regroups channels: axis 1 goes from 256 to 4 entries (256 "
                                "channels)"]
    assert _weight(pruned, "Gemm_3").shape == (16, 64)  # 4 channels x 4x4 features
    feeds = load_calibration(graph.inputs, None, 3).feeds
    assert _run(pruned.model, feeds).shape == (3, 3, 8, 8)
    assert json.loads(json.dumps(report)) == report


def test_least_squares_patches_reproduce_every_layer_geometry(tmp_path):
    """Re-fitting the unpruned model against itself: the im2col patches (strided, dilated, SAME-padded
    Conv; zero-stuffed ConvTranspose with asymmetric pads and output_padding) must give back each output."""
    rng = np.random.default_rng(7)
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="a", strides=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["t"], name="t", strides=[3, 2], pads=[1, 0, 2, 1],
                         output_padding=[1, 1], dilations=[2, 1]),
        helper.make_node("Relu", ["t"], ["rt"], name="rt"),
        helper.make_node("Conv", ["rt", "w3"], ["y"], name="c", pads=[0, 1, 2, 0]),
    ], {"w1": _weights(rng, (6, 3, 3, 3)), "w2": _weights(rng, (6, 5, 3, 3)), "b2": _bias(rng, 5),
        "w3": _weights(rng, (3, 5, 2, 3))},
        [_image("x", 3, 16)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 25, 16])])
    calibration = load_calibration(graph.inputs, None, 5)
    pruner = Pruner(graph, calibration)
    layers = [(c.node, c.kind) for c in pruner.cg.consumers]
    _, rows = reconstruct(pruner.work, [(node, kind, None) for node, kind in layers],
                          record_targets(pruner.work, layers, calibration, batch=None))
    assert [r["op"] for r in rows] == ["Conv", "ConvTranspose", "Conv"]
    assert all(r["relative_error_before"] < 1e-5 for r in rows)


def test_fixed_batch_models_calibrate_in_padded_chunks(tmp_path):
    rng = np.random.default_rng(8)
    fixed = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3, 8, 8])
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "wb"], ["y"], name="b", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (8, 3, 3, 3), [0, 4]), "ba": _bias(rng, 8, [0, 4]), "wb": _weights(rng, (3, 8, 3, 3))},
        [fixed], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3, 8, 8])])
    pruned, report = prune(graph, 0.25, load_calibration(graph.inputs, None, 7))  # chunks of 3, 3 and 1 (+2)
    feeds = load_calibration(graph.inputs, None, 3).feeds
    np.testing.assert_allclose(_run(pruned.model, feeds), _run(graph.model, feeds), atol=2e-4)
    assert report["groups"][0]["channels"] == [8, 6] and report["reconstruction"]["layers"]


def _two_convs(tmp_path, channels: int = 8) -> Graph:
    """Conv (`channels` channels) -> Relu -> Conv: one prunable group."""
    rng = np.random.default_rng(5)
    return _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "wb"], ["y"], name="b", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (channels, 3, 3, 3)), "ba": _bias(rng, channels),
        "wb": _weights(rng, (3, channels, 3, 3))}, [_image("x", 3)], [_image("y", 3)], name=f"two{channels}")


def test_a_ratio_that_removes_no_channel_is_refused_and_a_larger_one_refits(tmp_path):
    graph = _two_convs(tmp_path)
    with pytest.raises(BuildError, match=r"--prune 0.01 removes no channel \(its 1 prunable groups have 8-8 "
                                         r"channels; the smallest ratio that removes one is 0.125\)"):
        prune(graph, 0.01, load_calibration(graph.inputs, None, 8))
    with pytest.raises(BuildError, match=r"no pruning ratio up to 0.1 removes a channel"):
        calibration = load_calibration(graph.inputs, None, 8)
        prune_to_floor(graph, calibration, Pruner(graph, calibration).default_evaluator(), QualityFloor(min_psnr=30),
                       max_ratio=0.1)
    pruned, report = prune(graph, 0.5, load_calibration(graph.inputs, None, 8))
    quality = report["quality"]
    assert quality["with_reconstruction"]["psnr_db"] > quality["without_reconstruction"]["psnr_db"]


def test_a_floor_search_tries_the_ratio_asked_for_and_the_smallest_that_removes_a_channel(tmp_path):
    """--prune 0.08 --min-psnr 30 on groups of 16 channels said no ratio up to 0.08 removes a channel, the smallest
    that does being 0.07: the grid held only 0.05, which removes none, and 1/16 = 0.0625 removes one."""
    graph = _two_convs(tmp_path, 16)
    calibration = load_calibration(graph.inputs, None, 8)
    pruner = Pruner(graph, calibration)
    evaluator = pruner.default_evaluator()
    _, report = prune_to_floor(graph, calibration, evaluator, QualityFloor(min_psnr=10), max_ratio=0.08)
    assert report["ratio"] == 0.08 and [t["ratio"] for t in report["search"]["tried"]] == [0.08]  # it meets: shipped
    assert pruner.smallest_ratio() == 0.0625 and pruner.floor_grid(0.08) == [0.0625, 0.08]
    assert pruner.floor_grid(0.5) == [0.0625, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    with pytest.raises(BuildError, match=r": 0.0625, the smallest ratio that removes any channel, already gives"):
        prune_to_floor(graph, calibration, evaluator, QualityFloor(min_psnr=200), max_ratio=0.5)
    with pytest.raises(BuildError, match=r"--prune 0.06 removes no channel .* the smallest ratio that removes one is "
                                         r"0.0625\)"):
        prune(graph, 0.06, calibration)
    wide = _two_convs(tmp_path, 40)  # 32+ channels keep a multiple of 8: the first ratio that removes any takes 8
    assert Pruner(wide, load_calibration(wide.inputs, None, 4)).smallest_ratio() == 0.2


def test_a_floor_the_ratio_asked_for_meets_as_plain_pruning_ships_it_is_not_searched_below(tmp_path):
    """--prune 0.3 alone shipped 30% (re-allocated, 48.9 dB on a U-Net) but --prune 0.3 --min-psnr 40 shipped 10%:
    the search stepped the uniform ratio, which missed the floor at 0.3. The ratio asked for is tried first as a
    plain --prune ships it."""
    from runtime_models import glyph_like

    onnx.save(glyph_like(), str(tmp_path / "glyph.onnx"))
    graph = Graph.load(tmp_path / "glyph.onnx")
    calibration = load_calibration(graph.inputs, None, 16)
    _, plain = prune(graph, 0.5, calibration)
    uniform, allocated = plain["allocation"]["uniform_psnr_db"], plain["allocation"]["allocated_psnr_db"]
    assert plain["allocation"]["used"] and allocated > uniform + 0.5  # the case: only the allocation meets the floor
    floor = QualityFloor(min_psnr=round((uniform + allocated) / 2, 2))
    _, report = prune_to_floor(graph, calibration, Pruner(graph, calibration).default_evaluator(), floor, max_ratio=0.5)
    assert report["ratio"] == 0.5 and report["quality"]["result"]["psnr_db"] == pytest.approx(allocated, abs=0.01)


def test_a_refit_that_scores_lower_than_the_plain_pruned_graph_is_not_shipped(tmp_path, monkeypatch):
    """A ridge fitted on few samples can lower the quality (BigGAN-lite: 72.5 dB pruned, 69.3 dB re-fitted), and
    the re-fitted graph was shipped."""
    graph = _two_convs(tmp_path)
    refit = Pruner._reconstruct

    def weight_of_b(model: onnx.ModelProto) -> onnx.TensorProto:
        name = next(n.input[1] for n in model.graph.node if n.name == "b")
        return next(t for t in model.graph.initializer if t.name == name)

    def damaged(self, model, keep):  # a re-fit that went wrong: the last layer's weights scaled by 3
        fitted, rows, skipped = refit(self, model, keep)
        fitted = onnx.ModelProto.FromString(fitted.SerializeToString())
        weight = weight_of_b(fitted)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3, weight.name))
        return fitted, rows, skipped

    monkeypatch.setattr(Pruner, "_reconstruct", damaged)
    calibration = load_calibration(graph.inputs, None, 8)
    pruned, report = prune(graph, 0.5, calibration)
    quality = report["quality"]
    assert quality["with_reconstruction"]["psnr_db"] < quality["without_reconstruction"]["psnr_db"]
    assert quality["result"] == quality["without_reconstruction"] and not report["reconstruction"]["kept"]
    plain = Pruner(graph, calibration).model(0.5, False)[0]
    np.testing.assert_array_equal(_weight(pruned, "b"), numpy_helper.to_array(weight_of_b(plain)))


def test_unprunable_models_and_bad_input_fail_clearly(tmp_path):
    rng = np.random.default_rng(6)
    grouped = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["a", "wg"], ["g"], name="g", group=2),
        helper.make_node("DepthToSpace", ["g", ], ["y"], name="d2s", blocksize=2),
    ], {"wa": _weights(rng, (8, 3, 1, 1)), "wg": _weights(rng, (12, 4, 1, 1))},
        [_image("x", 3)], [_image("y", 3, 16)])
    calibration = load_calibration(grouped.inputs, None, 4)
    with pytest.raises(BuildError, match="no prunable channels.*grouped Conv node 'g'.*DepthToSpace"):
        prune(grouped, 0.3, calibration)
    graph = Graph.load(FAMILIES / "espcn__dynamo_dyn.onnx")
    calibration = load_calibration(graph.inputs, None, 4)
    for ratio in (0, 1, -0.2, 1.5, float("nan"), True, "0.3"):
        with pytest.raises(RequestError, match="strictly between 0 and 1"):
            prune(graph, ratio, calibration)
    wrong = Calibration({"x": np.zeros((4, 3, 32, 32), np.float32)}, "test")
    with pytest.raises(RequestError, match="calibration array 'x'"):
        prune(graph, 0.3, wrong)


def test_a_pruned_build_reports_its_fidelity_on_inputs_no_choice_saw(tmp_path):
    """The allocation and the floor search choose by the held-out inputs, so their PSNR flatters the build."""
    from edgegen.build import FRESH_SEED, build
    from edgegen.inputs import sample_feeds
    from edgegen.metrics import psnr
    from edgegen.report import render_build_report
    from edgegen.runtime import Generator

    model = FAMILIES / "espcn__legacy_dyn.onnx"
    result = build(model, "x86-onnxruntime", tmp_path / "b", prune=0.5, min_psnr=30)
    fresh = result.fidelity["fresh"]
    assert fresh["seed"] == FRESH_SEED and fresh["samples"] == 8
    gen = Generator.open(tmp_path / "b")
    feeds = sample_feeds(gen.inputs, list(range(FRESH_SEED, FRESH_SEED + 8)))
    source = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected, got = source.run(None, feeds)[0], gen.run(feeds)[gen.outputs[0].name]
    assert fresh["psnr_db"] == pytest.approx(psnr(expected, got, 1.0), abs=0.01)
    assert "fresh inputs no choice of the build saw" in render_build_report(result.manifest, tmp_path / "b")
    build(model, "x86-onnxruntime", tmp_path / "plain")  # chose nothing: nothing to report beside
    assert "fresh" not in Generator.open(tmp_path / "plain").manifest["fidelity"]


def test_fresh_inputs_that_miss_the_floor_are_warned_of_with_the_lever_the_build_used(tmp_path, caplog):
    import logging

    from edgegen.build import build

    caplog.set_level(logging.WARNING)
    result = build("zoo:glyphtiny", "x86-onnxruntime", tmp_path / "b", prune_to_macs=9_000_000, min_psnr=28.0)
    assert result.fidelity["psnr_db"] >= 28 > result.fidelity["fresh"]["psnr_db"]  # 30.24 dB, and 27.53 fresh
    assert "below the floor (PSNR >= 28.0 dB) that the 8 held-out inputs it was chosen by meet" in caplog.text
    assert "a larger --prune-to-macs, or more --samples, leaves more" in caplog.text


def test_prune_to_floor_and_to_macs():
    graph = Graph.load(FAMILIES / "espcn__dynamo_dyn.onnx")
    calibration = load_calibration(graph.inputs, None, 8)
    pruner = Pruner(graph, calibration)
    evaluator = pruner.default_evaluator()
    pruned, report = prune_to_floor(graph, calibration, evaluator, QualityFloor(min_psnr=40))
    tried = {t["ratio"]: t["met"] for t in report["search"]["tried"]}
    assert tried[report["ratio"]] and report["quality"]["with_reconstruction"]["psnr_db"] >= 40
    assert report["ratio"] == 0.9 or tried.get(round(report["ratio"] + 0.05, 2)) is False
    with pytest.raises(BuildError, match="no pruning ratio meets the quality floor"):
        prune_to_floor(graph, calibration, evaluator, QualityFloor(min_psnr=250))
    with pytest.raises(RequestError, match="needs --min-psnr"):
        prune_to_floor(graph, calibration, evaluator, QualityFloor())
    before = report["macs"]["before"]
    pruned, report = prune_to_macs(graph, calibration, before // 2, evaluator)
    smaller = round(report["ratio"] - 0.01, 2)  # the next smaller ratio on the grid does not fit
    assert report["macs"]["after"] <= before // 2 < pruner.costs(pruner.model(smaller, False)[0])["macs"]
    with pytest.raises(RequestError, match="between 1 and"):
        prune_to_macs(graph, calibration, before + 1)
    with pytest.raises(BuildError, match="cannot reach"):
        prune_to_macs(graph, calibration, 10)



def test_each_group_alone_prunes_one_group_per_model():
    graph = Graph.load(FAMILIES / "mobilenet_resnet__dynamo_dyn.onnx")
    pruner = Pruner(graph, load_calibration(graph.inputs, None, 8))
    alone = list(pruner.each_group_alone(0.3))
    assert len(alone) == len(pruner.keep(0.3)) >= 2
    before, together = pruner.costs_before["macs"], pruner.costs(pruner.model(0.3, True)[0])["macs"]
    for group, model in alone:
        macs = pruner.costs(model)["macs"]
        assert together < macs < before, (group.producers, together, macs, before)



def test_sensitivity_allocation_beats_the_uniform_ratio_at_its_macs():
    """On the TAESD-like decoder, 50%: the channels re-allocated by measured sensitivity keep far more quality
    than the same ratio in every group, with no more MACs; the searches keep the uniform ratio."""
    graph = Graph.load(FAMILIES / "tiny_decoder__dynamo_dyn.onnx")
    calibration = load_calibration(graph.inputs, None, 8)
    pruned, report = prune(graph, 0.5, calibration)
    allocation = report["allocation"]
    assert allocation["used"] and allocation["allocated_psnr_db"] >= allocation["uniform_psnr_db"] + 5, allocation
    assert report["macs"]["after"] <= allocation["uniform_macs"]
    assert report["quality"]["with_reconstruction"]["psnr_db"] == allocation["allocated_psnr_db"]
    shares = {g["channels"][1] / g["channels"][0] for g in report["groups"]}
    assert len(shares) > 2  # groups keep different shares
    _, uniform = prune(graph, 0.5, calibration, allocate=False)
    assert uniform["allocation"] == {"used": False}
    assert uniform["quality"]["with_reconstruction"]["psnr_db"] == allocation["uniform_psnr_db"]
    # a floor search settles on a uniform ratio, then re-allocates it too (it shipped the uniform one)
    evaluator = Pruner(graph, calibration).default_evaluator()
    _, floored = prune_to_floor(graph, calibration, evaluator, QualityFloor(min_psnr=20), max_ratio=0.5)
    assert floored["ratio"] == 0.5 and floored["allocation"]["used"]
    assert floored["quality"]["result"]["psnr_db"] > floored["allocation"]["uniform_psnr_db"]


# The CycleGAN and fast-style fixtures are random networks with an InstanceNorm after every conv: their
# channels are close to independent (the top 70% of principal components hold only 84-94% of each layer's
# activation energy), so no linear reconstruction can bring 30% pruning near 30 dB; there reconstruction
# must still help. The others carry the issue's >= 30 dB.
MIN_PSNR = {"cyclegan_resnet": None, "fast_style": None, "pix2pix_unet": 30, "mobilenet_resnet": 30, "dcgan": 30,
            "tiny_decoder": 30}


@pytest.mark.parametrize("variant", ["legacy_dyn", "dynamo_dyn"])
@pytest.mark.parametrize("family", sorted(MIN_PSNR))
def test_families_prune_30_percent(tmp_path, family, variant):
    import openvino as ov

    graph = Graph.load(FAMILIES / f"{family}__{variant}.onnx")
    pruned, report = prune(graph, 0.3, load_calibration(graph.inputs, None, 8))
    quality = report["quality"]
    with_fit, without = quality["with_reconstruction"]["psnr_db"], quality["without_reconstruction"]["psnr_db"]
    assert with_fit >= without + 0.5
    assert MIN_PSNR[family] is None or with_fit >= MIN_PSNR[family]
    allocation = report["allocation"]
    if allocation["used"]:  # the sensitivity allocation: no more MACs than the uniform 30%, better quality
        assert report["macs"]["after"] <= allocation["uniform_macs"] < 0.8 * report["macs"]["before"]
        assert allocation["allocated_psnr_db"] > allocation["uniform_psnr_db"]
    else:
        kept = sum(g["channels"][1] for g in report["groups"]) / sum(g["channels"][0] for g in report["groups"])
        shrink = report["macs"]["after"] / report["macs"]["before"]
        assert 0.9 * kept ** 2 <= shrink <= 1.05 * kept < 0.8
    reference = np.load(FAMILIES / f"{family}__{variant}.npz")
    feeds = {k: reference[k] for k in reference.files if not k.startswith("output:")}
    onnx.save(pruned.model, str(tmp_path / "pruned.onnx"))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "pruned.onnx")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(feeds)[0], _run(pruned.model, feeds), atol=1e-4)


def test_large_images_are_refitted_on_the_first_samples_that_hold_enough_pixels():
    def calibration(size, count=32):
        return Calibration({"image": np.zeros((count, 3, size, size), np.float32)}, "spec")

    assert refit_samples(calibration(64), None).count == 32  # 4096 pixels a sample: every sample
    large = refit_samples(calibration(256), None)
    assert large.count == 10 and large.source == "spec, its first 10 samples"
    assert refit_samples(calibration(256), 4).count == 12  # whole fixed batches
    assert refit_samples(calibration(128, count=8), None).count == 8


def test_pruning_reports_its_progress_step_by_step(cgen_path):
    steps = []
    prune(Graph.load(cgen_path), 0.3, load_calibration(Graph.load(cgen_path).inputs, None, 8),
          progress=lambda step, done, total: steps.append((step, done, total)))
    assert steps[:2] == [("importance", 0, 1), ("importance", 1, 1)]
    refits = [s for s in steps if s[0] == "re-fit"]
    assert refits and all(0 < done <= total for _, done, total in refits) and refits[-1][1] == refits[-1][2]
    groups = [s for s in steps if s[0] == "sensitivity"]
    assert [done for _, done, _ in groups] == list(range(1, groups[-1][2] + 1))


def test_a_gemm_whose_bias_is_off_is_refitted_with_one(tmp_path):
    """A Gemm with beta=0 ignores its C input: the re-fit starts from no bias, then fits one (beta set to 1)."""
    rng = np.random.default_rng(9)
    graph = _graph(tmp_path, [
        helper.make_node("Gemm", ["z", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="r"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", beta=0.0),
    ], {"w1": _weights(rng, (16, 32)), "b1": _bias(rng, 32), "w2": _weights(rng, (32, 8)),
        "b2": np.full(8, 5.0, np.float32)},
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])
    pruned, report = prune(graph, 0.25, load_calibration(graph.inputs, None, 64), allocate=False)
    row = report["reconstruction"]["layers"][0]
    assert row["layer"] == "fc2" and row["relative_error_after"] < row["relative_error_before"] < 1
    fc2 = next(n for n in pruned.model.graph.node if n.name == "fc2")
    assert helper.get_attribute_value(next(a for a in fc2.attribute if a.name == "beta")) == 1.0


def test_reconstructions_replay_the_model_from_where_the_last_wave_stopped(tmp_path, monkeypatch):
    """The unpruned targets are recorded once for every reconstruction (uniform, each group alone, allocated);
    a step of the replay runs only the nodes past the tensors it kept, and keeps only what later steps read."""
    from edgegen.passes import activations, prune as prune_module

    rng = np.random.default_rng(10)
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="ra"),
        helper.make_node("Conv", ["ra", "wb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"], name="rb"),
        helper.make_node("Conv", ["rb", "wc"], ["c"], name="c", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["y"], name="skip"),
    ], {"wa": _weights(rng, (8, 3, 3, 3)), "wb": _weights(rng, (8, 8, 3, 3)), "wc": _weights(rng, (3, 8, 3, 3))},
        [_image("x", 3)], [_image("y", 3)])
    calibration = load_calibration(graph.inputs, None, 10)
    recorded = []
    monkeypatch.setattr(prune_module, "record_targets",
                        lambda *args, **kw: recorded.append(args) or record_targets(*args, **kw))
    _, report = prune(graph, 0.25, calibration)
    assert len(recorded) == 1 and "uniform_psnr_db" in report["allocation"]

    whole = {}
    activations.capture(graph.model, ["rb"], calibration, None, lambda start, t: whole.setdefault(start, t["rb"]))
    replay, seen = activations.Replay(calibration, None), {}
    replay.run(graph.model, ["ra"], ["rb", "y"], lambda start, t: None)
    assert sorted(replay.known) == ["ra", "x"]  # x: the skip Add reads it later
    ran = []
    monkeypatch.setattr(activations, "_subgraph", lambda model, names, known: ran.append(
        activations._needed(model, names, known)) or _subgraph(model, names, known))
    replay.run(graph.model, ["rb"], [], lambda start, t: seen.setdefault(start, t["rb"]))
    assert ran == [[2, 3]] and replay.known == {}
    np.testing.assert_allclose(np.concatenate(list(seen.values())), np.concatenate(list(whole.values())), atol=1e-6)


def test_shape_arithmetic_between_waves_is_recomputed_not_joined_across_chunks(tmp_path):
    """A shape computed from the input's Shape (with a dynamic batch it does not fold), read at two
    depths, as a SPADE generator reads one size in every block: the re-fit waves kept it between steps
    and joined it over calibration chunks like an activation, and ONNX Runtime refused the longer
    'shape' (an internal error)."""
    rng = np.random.default_rng(11)
    graph = _graph(tmp_path, [
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Slice", ["x_shape", "zero", "one"], ["n"], name="n"),
        helper.make_node("Concat", ["n", "flat"], ["to_rows"], name="to_rows", axis=0),
        helper.make_node("Concat", ["n", "chw"], ["to_map"], name="to_map", axis=0),
        helper.make_node("Reshape", ["x", "to_rows"], ["x_rows"], name="rows1"),
        helper.make_node("Reshape", ["x_rows", "to_map"], ["x1"], name="map1"),
        helper.make_node("Conv", ["x1", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "wb", "bb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Neg", ["x"], ["negated"], name="neg"),
        helper.make_node("Reshape", ["negated", "to_rows"], ["n_rows"], name="rows2"),
        helper.make_node("Reshape", ["n_rows", "to_map"], ["x2"], name="map2"),
        helper.make_node("Conv", ["x2", "ws"], ["s"], name="s", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "s"], ["joined"], name="join"),
        helper.make_node("Relu", ["joined"], ["rj"], name="rj"),
        helper.make_node("Conv", ["rj", "wc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ], {"wa": _weights(rng, (8, 3, 3, 3)), "ba": _bias(rng, 8), "wb": _weights(rng, (8, 8, 3, 3)),
        "bb": _bias(rng, 8), "ws": _weights(rng, (8, 3, 3, 3)), "wc": _weights(rng, (3, 8, 3, 3)),
        "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "flat": np.array([192], np.int64),
        "chw": np.array([3, 8, 8], np.int64)},
        [_image("x", 3)], [_image("y", 3)])
    pruned, report = prune(graph, 0.25, load_calibration(graph.inputs, None, 20))  # chunks of 8, 8 and 4
    assert report["reconstruction"]["layers"]
    feeds = load_calibration(graph.inputs, None, 3).feeds
    assert _run(pruned.model, feeds).shape == (3, 3, 8, 8)


def test_a_model_whose_prunable_groups_hold_almost_no_macs_is_refused(tmp_path):
    """Pruning that could save under 5% of the MACs (a StyleGAN: only its mapping MLP is prunable) would
    cost quality for no speed."""
    rng = np.random.default_rng(12)
    graph = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Relu", ["a"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "wb"], ["b"], name="b"),
        helper.make_node("Add", ["b", "x"], ["res"], name="res"),  # ties b's outputs to the input's channels
        helper.make_node("Conv", ["res", "wc"], ["y"], name="c", pads=[3, 3, 3, 3]),
    ], {"wa": _weights(rng, (4, 3, 1, 1)), "wb": _weights(rng, (3, 4, 1, 1)), "wc": _weights(rng, (3, 3, 7, 7))},
        [_image("x", 3, 32)], [_image("y", 3, 32)])
    with pytest.raises(BuildError, match=r"pruning cannot make this model faster: its 1 prunable channel group\(s\) "
                                         r"hold 3\.87% of the MACs"):
        prune(graph, 0.3, load_calibration(graph.inputs, None, 4))
