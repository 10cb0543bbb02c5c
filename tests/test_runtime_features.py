"""Feature cache: split points from the graph, trunk + head equal to the whole model, variations run the head only."""

import numpy as np
import onnx
import pytest

from edgegen.build import build
from edgegen.errors import BuildError
from edgegen.graph import Graph
from edgegen.runtime import Generator
from edgegen.split import find_split, split_at
from runtime_models import glyph_like

FAMILIES = "tests/data/families"


@pytest.fixture(scope="module")
def glyph_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "glyph.onnx"
    onnx.save(glyph_like(width=24), str(path))
    return path


@pytest.fixture(scope="module", params=["x86-onnxruntime", "x86-openvino"])
def split_bundle(request, tmp_path_factory, glyph_path):
    out = tmp_path_factory.mktemp("bundles") / request.param
    build(glyph_path, request.param, out, split=["auto"])
    return out


def test_automatic_split_is_the_latent_only_trunk(glyph_path):
    graph = Graph.load(glyph_path)
    split, why = find_split(graph)
    assert why == "" and split.trunk_inputs == ["latent"] and split.chosen_by == "auto"
    shapes = graph.concrete_shapes()
    assert sorted(shapes[t] for t in split.cut) == [[1, 3, 1, 1], [1, 24, 16, 16]]  # colours and the 16x16 map
    costs = graph.node_costs()
    assert split.trunk_macs + split.head_macs == sum(c.macs for c in costs) and 0 < split.head_share < 1


def test_split_results_equal_unsplit_and_variations_skip_the_trunk(split_bundle):
    gen = Generator.open(split_bundle)
    report = gen.manifest["serving_report"]["split"]
    assert report["max_abs"] <= 1e-5
    whole = Generator.open(split_bundle, cache_bytes=0)
    feeds = whole.feeds([{"seed": 5, "label": label} for label in range(3)])
    via_parts = gen.features.run("head", feeds)
    raw = whole.run(feeds)
    for name in ("image", "preview"):
        assert np.max(np.abs(via_parts[name] - raw[name])) <= 1e-5
    assert gen.stats()["features"]["misses"] == 1, "three samples of one seed: one trunk run"
    trunk = gen.parts.session("trunk")
    calls = []
    gen.parts._sessions["trunk"] = type("Spy", (), {"run": lambda self, f: calls.append(1) or trunk.run(f)})()
    first = gen.generate(seed=11, label=0)
    variations = [gen.generate(seed=11, label=label) for label in range(1, 10)]
    assert len(calls) == 1, "one trunk run for ten labels of one seed"
    stats = gen.stats()["features"]
    assert stats["hits"] == 9 and stats["misses"] == 2 and stats["bytes"] <= stats["budget_bytes"]
    cold = Generator.open(split_bundle, feature_cache_bytes=0, cache_bytes=0)
    for label, image in enumerate([first] + variations):
        np.testing.assert_array_equal(image, cold.generate(seed=11, label=label))
    batch = cold.generate_batch([{"seed": 11, "label": label} for label in range(10)])
    np.testing.assert_array_equal(batch, np.stack([first] + variations))
    assert cold.stats()["features"]["misses"] == 0, "a zero budget runs the trunk without keys or lookups"


def test_split_at_named_tensors_and_clear_refusals(tmp_path, glyph_path):
    graph = Graph.load(glyph_path)
    auto, _ = find_split(graph)
    named = split_at(graph, auto.cut[:1])
    assert named.cut[0] == auto.cut[0] and named.chosen_by == "--split"
    with pytest.raises(BuildError, match="not a tensor of the model; .* lists each node's output tensor"):
        split_at(graph, ["nope"])
    with pytest.raises(BuildError, match="is a graph input"):
        split_at(graph, ["latent"])
    with pytest.raises(BuildError, match="depend on every input"):
        split_at(graph, ["image"])
    result = build(glyph_path, "x86-onnxruntime", tmp_path / "b", split=auto.cut[:1])
    assert result.manifest["serving"]["split"]["chosen_by"] == "--split"


def test_a_split_tensor_inside_the_trunk_of_another_is_named_in_a_warning(glyph_path, caplog):
    """--split T1,T2 with T1 upstream of T2 cut at T2 alone, silently."""
    import logging

    caplog.set_level(logging.WARNING)
    graph = Graph.load(glyph_path)
    auto, _ = find_split(graph)
    producer = {out: n for n in graph.model.graph.node for out in n.output}
    downstream = auto.cut[0]
    upstream = producer[downstream].input[0]
    split = split_at(graph, [upstream, downstream])
    assert upstream not in split.cut and downstream in split.cut
    assert f"--split tensor(s) {upstream} are computed inside the trunk" in caplog.text


def test_split_naming_a_tensor_the_import_folded_names_the_one_that_carries_it_on(tmp_path):
    model = glyph_like(width=8)
    at = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    conv_out = model.graph.node[at].output[0]
    bn_out = "after_batchnorm"
    for node in model.graph.node[at + 1:]:
        node.input[:] = [bn_out if x == conv_out else x for x in node.input]
    stats = {k: onnx.numpy_helper.from_array(np.full(8, v, np.float32), f"bn_{k}")
             for k, v in (("scale", 1.5), ("bias", 0.1), ("mean", 0.2), ("var", 2.0))}
    model.graph.initializer.extend(stats.values())
    model.graph.node.insert(at + 1, onnx.helper.make_node(
        "BatchNormalization", [conv_out, *(f"bn_{k}" for k in stats)], [bn_out], "bn"))
    path = tmp_path / "bn.onnx"
    onnx.save(model, str(path))
    graph = Graph.load(path)
    assert "BatchNormalization" not in graph.op_inventory()
    with pytest.raises(BuildError, match=f"was folded away .* carries it on is '{bn_out}': --split {bn_out}"):
        split_at(graph, [conv_out])
    assert split_at(graph, [bn_out]).cut == [bn_out]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_model_whose_label_joins_first_has_no_split(tmp_path, precision):
    """The label's embedding alone (int8: the latent's quantization) was offered as a trunk of 0.0% of the
    MACs with a --split naming it (on int8 a tensor of the quantized graph, not of the user's model)."""
    result = build(f"{FAMILIES}/cgan_dcgan__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b", split=["auto"],
                   precision=precision, calibration_count=8)
    why = result.manifest["serving"]["split"]["none"]
    assert "holds none of the MACs" in why and "--split" not in why
    assert "one input" in find_split(Graph.load(f"{FAMILIES}/espcn__legacy_dyn.onnx"))[1]
    gen = Generator.open(tmp_path / "b")
    assert gen.features is None and gen.generate(seed=1, label=2).shape == (32, 32, 3)


def _spade_like(path) -> None:
    """A segmentation map resized to the size of the latent's feature map, as `F.interpolate(seg,
    size=x.shape[2:])` exports with a dynamic batch: Shape -> Gather of x's static height and width."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    inits = []
    nodes = [helper.make_node("Gemm", ["z", const("fc", rng.standard_normal((16, 256)).astype(np.float32))], ["h"]),
             helper.make_node("Shape", ["z"], ["z_shape"]),
             helper.make_node("Gather", ["z_shape", const("i0", np.array(0, np.int64))], ["batch"]),
             helper.make_node("Unsqueeze", ["batch", const("ax0", np.array([0], np.int64))], ["batch1"]),
             helper.make_node("Concat", ["batch1", const("chw", np.array([4, 8, 8], np.int64))], ["view"], axis=0),
             helper.make_node("Reshape", ["h", "view"], ["x"]),
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Gather", ["x_shape", const("hw", np.array([2, 3], np.int64))], ["x_hw"]),
             helper.make_node("Shape", ["seg"], ["seg_shape"]),
             helper.make_node("Slice", ["seg_shape", const("s0", np.array([0], np.int64)),
                                        const("s2", np.array([2], np.int64))], ["seg_nc"]),
             helper.make_node("Concat", ["seg_nc", "x_hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["seg", "", "", "sizes"], ["seg_r"], mode="nearest"),
             helper.make_node("Conv", ["seg_r", const("w1", rng.standard_normal((32, 4, 3, 3)).astype(np.float32))],
                              ["g1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["g1"], ["g2"]),
             helper.make_node("Conv", ["g2", const("w2", rng.standard_normal((4, 32, 3, 3)).astype(np.float32))],
                              ["g3"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["x", "g3"], ["joined"]),
             helper.make_node("Conv", ["joined", const("w3", rng.standard_normal((3, 4, 1, 1)).astype(np.float32))],
                              ["o"]),
             helper.make_node("Tanh", ["o"], ["image"])]
    graph = helper.make_graph(nodes, "spade", [helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", 4, 16, 16]),
                                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_map_resized_to_the_size_of_a_latent_feature_map_splits_on_the_map(tmp_path):
    _spade_like(tmp_path / "spade.onnx")
    split, why = find_split(Graph.load(tmp_path / "spade.onnx"))
    assert split is not None and split.trunk_inputs == ["seg"], why
    build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "b", split=["auto"], samples=2)
    assert Generator.open(tmp_path / "b").manifest["serving"]["split"]["trunk_inputs"] == ["seg"]


def test_an_int8_split_that_rounds_otherwise_than_the_whole_artifact_is_warned_of(tmp_path, monkeypatch,
                                                                                   glyph_path):
    """OpenVINO int8 fuses across the cut otherwise than in the whole artifact: a SPADE-like export's split
    route gave 1-2 levels off run() on a fifth of its values, published without a word."""
    import edgegen.serving as serving
    from edgegen.runtime.features import FeatureCache

    warnings = []
    monkeypatch.setattr(serving.log, "warning", lambda message, *args: warnings.append(message % args))
    run = FeatureCache.run
    monkeypatch.setattr(FeatureCache, "run", lambda self, head, feeds: {
        k: v + np.float32(2 / 255) for k, v in run(self, head, feeds).items()})  # a level off over [-1, 1]
    build(glyph_path, "x86-onnxruntime", tmp_path / "b", precision="int8", split=["auto"])
    assert any("split: trunk + head differ from the whole int8 artifact by up to 0.00784 (1.0 levels of an "
               "8-bit image)" in w for w in warnings), warnings


def test_an_int8_split_at_a_gate_that_reads_an_input_the_head_reads_too(tmp_path):
    """int8 --split br, where br = sigmoid(conv(seg)) and the head reads seg as well: the cut held the QDQ
    graph's copy of the input (`seg_DequantizeLinear_Output`), which LiteRT could not lower; and LiteRT's int8
    LOGISTIC writes its fixed 1/256 grid, which the head requantized onto the calibrated one (2 levels off)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {name: rng.normal(0, 0.3, shape).astype(np.float32)
               for name, shape in (("wi", (3, 3, 3, 3)), ("ws", (3, 2, 3, 3)), ("wd", (3, 2, 3, 3)))}
    nodes = [helper.make_node("Conv", ["image", "wi"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["seg", "ws"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["b"], ["br"]), helper.make_node("Mul", ["a", "br"], ["c"]),
             helper.make_node("Conv", ["seg", "wd"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "d"], ["e"]), helper.make_node("Sigmoid", ["e"], ["y"])]
    g = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16]),
                                          helper.make_tensor_value_info("seg", TensorProto.FLOAT, [1, 2, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [numpy_helper.from_array(w, name) for name, w in weights.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    for target in ("x86-litert", "x86-onnxruntime"):
        result = build(tmp_path / "m.onnx", target, tmp_path / target, precision="int8", split=["br"])
        assert result.manifest["serving"]["split"]["cut"] == ["br"]
        assert result.manifest["serving_report"]["split"]["max_abs"] == 0, target


def test_a_split_tensor_the_int8_lowering_rewrote_is_named_as_such(tmp_path):
    """The int8 lowering moves a ReLU into a ConvTranspose's phases: --split at the ConvTranspose's output
    (which `inspect --nodes` lists) was said to be folded away by the import."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "wc"),
               numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 4, 4)).astype(np.float32), "wt")]
    nodes = [helper.make_node("Conv", ["image", "wc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "wt"], ["up"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["up"], ["u"]), helper.make_node("Mul", ["u", "z"], ["y"])]
    g = helper.make_graph(nodes, "convt", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], weights)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    assert build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "f", split=["up"]).manifest["serving"]["split"]
    with pytest.raises(BuildError, match="rewritten by its int8 lowering"):
        build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "q", precision="int8", split=["up"])


def test_a_split_at_a_tensor_that_is_also_an_output_is_served_from_the_trunk(tmp_path):
    """`feat` (the image branch's last tensor, a second model output) is the cut: the head took it as an input
    and gave it back as an output, and LiteRT could not lower a head output that no op computes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
               for name, shape in (("wa", (4, 3, 3, 3)), ("wo", (3, 4, 3, 3)), ("fc", (8, 4)))]
    nodes = [helper.make_node("Conv", ["image", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["feat"]),
             helper.make_node("MatMul", ["z", "fc"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "axes"], ["s4"]),
             helper.make_node("Mul", ["feat", "s4"], ["m"]),
             helper.make_node("Conv", ["m", "wo"], ["o"], pads=[1, 1, 1, 1]), helper.make_node("Tanh", ["o"], ["out"])]
    g = helper.make_graph(nodes, "outcut", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16]),
                                            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16]),
                           helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 16, 16])],
                          weights + [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    image = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    for target, precision in (("x86-litert", "fp32"), ("x86-litert", "int8"), ("x86-onnxruntime", "int8")):
        out = tmp_path / f"{target}-{precision}"
        result = build(tmp_path / "m.onnx", target, out, precision=precision, split=["auto"])
        assert result.manifest["serving"]["split"]["cut"] == ["feat"], target
        assert result.manifest["serving_report"]["split"]["max_abs"] == 0, (target, precision)
        split, whole = Generator.open(out, cache_bytes=0), Generator.open(out, cache_bytes=0, feature_cache_bytes=0)
        for seed in (1, 2):  # the second seed: the image's features come from the cache
            for name in ("out", "feat"):
                np.testing.assert_array_equal(split.generate(seed=seed, image=image, output=name),
                                              whole.generate(seed=seed, image=image, output=name))
        assert split.stats()["features"]["hits"] >= 1
