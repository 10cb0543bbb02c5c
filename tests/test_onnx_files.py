"""ONNX files as users have them: IR version 3, files saved by ONNX Runtime's optimizer, odd graph outputs."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import conditional_generator
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.errors import BuildError, ModelError, UnsupportedOpError
from edgegen.graph import Graph

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    """Seeded by its name: the same weights in every model that has it."""
    values = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape) * 0.3
    return numpy_helper.from_array(values.astype(np.float32), name)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _ort(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """A session of the model as it is (ONNX Runtime's own optimizer would rewrite FusedConv again)."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def test_an_ir3_model_with_weights_listed_as_inputs_builds_int8_on_openvino(tmp_path):
    """IR 3 requires every initializer to be an input; with the weights taken off the inputs the model is IR 4, where
    ONNX Runtime takes the initializers a later pass adds (the int8 lowering's scales: its scoring session failed)."""
    inits = [_weight("w1", 8, 3, 3, 3), _weight("b1", 8), _weight("w2", 3, 8, 3, 3), _weight("b2", 3)]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])]
        + [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    path = _save(model, tmp_path / "ir3.onnx")
    loaded = Graph.load(path).model
    assert loaded.ir_version >= 4 and [v.name for v in loaded.graph.input] == ["image"]
    result = build(path, "x86-openvino", tmp_path / "b", precision="int8", samples=2, calibration_count=4)
    assert result.manifest["precision"] == "int8" and result.fidelity["psnr_db"] > 30


FUSED_ACTIVATIONS = [("Relu", []), ("Tanh", []), ("Sigmoid", []), ("Silu", []), ("LeakyRelu", [0.2]),
                     ("HardSigmoid", [0.3, 0.4]), ("Clip", [-0.5, 0.7]), (None, [])]


def _ort_optimized(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list) -> onnx.ModelProto:
    """A model as ONNX Runtime's optimizer saves one (contrib ops in com.microsoft)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("com.microsoft.nchwc", 1)])


def _fused_conv(activation: str | None, params: list[float], summand: bool = False) -> onnx.ModelProto:
    attrs = {"activation": activation, "activation_params": params} if activation else {}
    if activation and not params:
        del attrs["activation_params"]
    inputs = ["image", "w", "b"] + (["image"] if summand else [])
    node = helper.make_node("FusedConv", inputs, ["out"], "/head/Conv", domain="com.microsoft", pads=[1, 1, 1, 1],
                            kernel_shape=[3, 3], **attrs)
    return _ort_optimized([node], [_weight("w", 3, 3, 3, 3), _weight("b", 3)], ["N", 3, 8, 8])


@pytest.mark.parametrize("activation, params", FUSED_ACTIVATIONS)
def test_fused_conv_is_written_as_conv_and_its_activation(tmp_path, activation, params):
    """FusedConv becomes the Conv (keeping the node's name) and its activation: the same outputs as ONNX Runtime
    gives for the file, its MACs counted, and an output range read from the activation."""
    path = _save(_fused_conv(activation, params), tmp_path / "fused.onnx")
    graph = Graph.load(path)
    assert all(n.domain in ("", "ai.onnx") for n in graph.model.graph.node)
    assert graph.model.graph.node[0].op_type == "Conv" and graph.model.graph.node[0].name == "/head/Conv"
    assert sum(c.macs for c in graph.node_costs()) == 3 * 8 * 8 * 3 * 3 * 3
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    if activation == "Silu":  # x * sigmoid(x) of the conv (this ONNX Runtime's FusedConv does not take Silu yet)
        (conv,) = _ort(_fused_conv(None, [])).run(None, {"image": x})
        want = conv / (1 + np.exp(-conv))
    else:
        (want,) = _ort(path).run(None, {"image": x})
    np.testing.assert_allclose(_ort(graph.model).run(None, {"image": x})[0], want, atol=1e-5)
    if activation in ("Tanh", "Sigmoid"):
        assert graph.outputs[0].range == ([-1.0, 1.0] if activation == "Tanh" else [0.0, 1.0])


def test_fused_conv_with_a_summand_and_fused_gemm(tmp_path):
    """FusedConv's fourth input is added before the activation; FusedGemm is a Gemm and its activation."""
    path = _save(_fused_conv("LeakyRelu", [0.1], summand=True), tmp_path / "sum.onnx")
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_ort(Graph.load(path).model).run(None, {"image": x})[0],
                               _ort(path).run(None, {"image": x})[0], atol=1e-6)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("FusedGemm", ["flat", "fw", "fb"], ["out"], "/fc/Gemm", domain="com.microsoft",
                              transB=1, activation="HardSigmoid", activation_alpha=0.3, activation_beta=0.4)]
    path = _save(_ort_optimized(nodes, [_weight("fw", 10, 192), _weight("fb", 10)], ["N", 10]), tmp_path / "gemm.onnx")
    graph = Graph.load(path)
    assert [n.op_type for n in graph.model.graph.node][1:] == ["Gemm", "HardSigmoid"]  # Flatten: a Reshape
    np.testing.assert_allclose(_ort(graph.model).run(None, {"image": x})[0], _ort(path).run(None, {"image": x})[0],
                               atol=1e-6)


def test_onnx_runtimes_layout_ops_are_refused_at_load_naming_node_and_op(tmp_path):
    nodes = [helper.make_node("ReorderInput", ["image"], ["blocked"], "ReorderInput", domain="com.microsoft.nchwc"),
             helper.make_node("ReorderOutput", ["blocked"], ["out"], "ReorderOutput", domain="com.microsoft.nchwc",
                              channels=3)]
    path = _save(_ort_optimized(nodes, [], ["N", 3, 8, 8]), tmp_path / "nchwc.onnx")
    with pytest.raises(ModelError, match=r"'ReorderInput' \(com\.microsoft\.nchwc\.ReorderInput\).*vector width of "
                                         r"the CPU that saved.*ORT_ENABLE_EXTENDED or below"):
        Graph.load(path)


def _silu_net(path) -> str:
    """Conv -> SiLU -> Conv -> Tanh, as a diffusion U-Net or VAE block computes it."""
    nodes = [helper.make_node("Conv", ["image", "sw1"], ["a"], "c1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["m"]),
             helper.make_node("Conv", ["m", "sw2"], ["c"], "c2", pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [_weight("sw1", 8, 3, 3, 3), _weight("sw2", 3, 8, 3, 3)])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_ort_extended_file_of_a_silu_net_has_its_quick_gelu_written_back_and_builds_everywhere(tmp_path):
    """ORT_ENABLE_EXTENDED turns SiLU into com.microsoft.QuickGelu (alpha 1): written back as Sigmoid and Mul, the
    file loads in standard ops, computes what the original file does, and builds for ONNX Runtime and LiteRT."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "silu_ext.onnx")
    original = ort.InferenceSession(_silu_net(tmp_path / "silu.onnx"), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(options.optimized_model_filepath)
    assert "QuickGelu" in [n.op_type for n in saved.graph.node if n.domain == "com.microsoft"]
    graph = Graph.load(options.optimized_model_filepath)
    assert all(n.domain in ("", "ai.onnx") for n in graph.model.graph.node)
    assert any("QuickGelu x1" in note for note in graph.notes)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_ort(graph.model).run(None, {"image": x})[0], original.run(None, {"image": x})[0],
                               atol=1e-5)
    for target in ("x86-onnxruntime", "x86-litert"):
        result = build(options.optimized_model_filepath, target, tmp_path / target, precision="fp32", samples=2)
        assert result.fidelity["psnr_db"] > 60, target


def _one_contrib_op(op: str, path, bias: bool = False, **attrs) -> str:
    """Conv -> com.microsoft `op` (with a bias input, along the last axis as ONNX Runtime's take one) -> Tanh."""
    inputs = ["c"] + (["bias"] if bias else [])
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, inputs, ["g"], f"/act/{op}", domain="com.microsoft", **attrs),
             helper.make_node("Tanh", ["g"], ["out"])]
    bias_init = numpy_helper.from_array(np.linspace(-0.5, 0.5, 8, dtype=np.float32), "bias")
    inits = [_weight("w", 3, 3, 3, 3)] + [bias_init] * bias
    return _save(_ort_optimized(nodes, inits, ["N", 3, 8, 8]), path)


@pytest.mark.parametrize("op, bias, attrs", [("QuickGelu", False, {"alpha": 1.702}), ("QuickGelu", False, {}),
                                             ("Gelu", False, {}), ("BiasGelu", True, {}), ("FastGelu", False, {}),
                                             ("FastGelu", True, {})])
def test_onnx_runtimes_gelu_ops_are_written_back_as_standard_ops(tmp_path, op, bias, attrs):
    """QuickGelu as x * sigmoid(alpha x), Gelu with Erf, FastGelu as its tanh approximation (a bias added first):
    the same outputs as ONNX Runtime's own kernels give for the file."""
    path = _one_contrib_op(op, tmp_path / "gelu.onnx", bias, **attrs)
    graph = Graph.load(path)
    assert all(n.domain in ("", "ai.onnx") for n in graph.model.graph.node)
    assert f"/act/{op}" in [n.name for n in graph.model.graph.node]  # the node writing its output keeps its name
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32) * 2
    np.testing.assert_allclose(_ort(graph.model).run(None, {"image": x})[0], _ort(path).run(None, {"image": x})[0],
                               atol=1e-5)


def test_other_contrib_ops_are_left_to_the_targets_support_check(tmp_path):
    """A contrib op edgegen does not write back builds for ONNX Runtime, which runs it, and is refused for a target
    whose backend cannot, naming the target, node and op."""
    path = _one_contrib_op("FusedMatMul", tmp_path / "matmul.onnx", alpha=0.5)
    model = onnx.load(path)
    model.graph.node[1].input.append("mm")
    model.graph.initializer.append(_weight("mm", 8, 8))
    path = _save(model, tmp_path / "matmul.onnx")
    result = build(path, "x86-onnxruntime", tmp_path / "ort", precision="fp32", samples=2)
    assert result.fidelity["psnr_db"] > 60
    with pytest.raises(UnsupportedOpError, match=r"target x86-litert: node '/act/FusedMatMul' \(op FusedMatMul\)"):
        build(path, "x86-litert", tmp_path / "litert", precision="fp32", samples=2)


def test_an_int8_build_that_quantizes_no_op_is_refused_saying_why(tmp_path):
    nodes = [helper.make_node("Softplus", ["image"], ["s"]), helper.make_node("Neg", ["s"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "plain.onnx")
    with pytest.raises(BuildError, match=r"left every op of the model in float \(Softplus x1, Neg x1\).*fp32"):
        build(path, "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2, calibration_count=2)
    assert not (tmp_path / "b").exists()


def _with_output(model: onnx.ModelProto, value: onnx.ValueInfoProto, init: onnx.TensorProto | None = None):
    if init is not None:
        model.graph.initializer.append(init)
    model.graph.output.append(value)
    return model


def test_an_input_also_listed_as_output_keeps_its_name_and_builds_in_fp32(tmp_path):
    model = _with_output(conditional_generator(extras=False),
                         helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", 16]))
    path = _save(model, tmp_path / "through.onnx")
    graph = Graph.load(path)
    assert [s.name for s in graph.inputs] == ["latent", "label"] and graph.outputs[1].name == "latent"
    assert graph.outputs[1].default_shape == [1, 16]
    result = build(path, "x86-onnxruntime", tmp_path / "b", precision="fp32", samples=2)
    assert result.fidelity["max_abs"] == 0
    with pytest.raises(BuildError, match=r"output 'latent' is the input 'latent' itself.*Drop it"):
        build(path, "x86-openvino", tmp_path / "b2", precision="fp32", samples=2)


def test_a_constant_output_without_a_batch_axis_is_refused_naming_it(tmp_path):
    model = _with_output(conditional_generator(extras=False),
                         helper.make_tensor_value_info("table", TensorProto.FLOAT, [10, 4]), _weight("table", 10, 4))
    with pytest.raises(BuildError, match=r"output 'table' is a constant in the file \(10x4.*Drop it"):
        build(_save(model, tmp_path / "table.onnx"), "x86-onnxruntime", tmp_path / "b", samples=2)


@pytest.mark.parametrize("target", ["x86-onnxruntime", "x86-openvino", "x86-litert"])
def test_an_output_whose_batch_a_resize_froze_at_one_is_refused_on_every_target(tmp_path, target):
    """A dynamic-batch model resized to `sizes` [1, C, H, W]: one image for any batch. It passed the batch check
    (an output of batch 1 for two inputs was taken for a constant); ONNX Runtime built it, OpenVINO and LiteRT
    ended in internal errors."""
    sizes = numpy_helper.from_array(np.array([1, 3, 12, 12], np.int64), "sizes")
    nodes = [helper.make_node("Resize", ["image", "", "", "sizes"], ["up"], mode="nearest"),
             helper.make_node("Sigmoid", ["up"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 12, 12])], [sizes])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "frozen.onnx")
    with pytest.raises(BuildError, match=r"output 'out' has no batch axis: it is 1x3x12x12 for one input and "
                                         r"1x3x12x12 for a batch of two.*froze a batch size.*Resize to `sizes`"):
        build(path, target, tmp_path / "b", samples=2)
    assert not (tmp_path / "b").exists()


def test_a_tensor_listed_twice_as_output_is_refused_naming_it(tmp_path):
    model = conditional_generator(extras=False)
    model.graph.output.append(onnx.ValueInfoProto.FromString(model.graph.output[0].SerializeToString()))
    with pytest.raises(ModelError, match=r"output 'image' is listed 2 times.*List it once"):
        Graph.load(_save(model, tmp_path / "twice.onnx"))


def test_a_constant_image_output_on_litert_names_the_file_output_and_what_to_do(tmp_path):
    background = numpy_helper.from_array(np.full((1, 3, 8, 8), 0.25, np.float32), "bg")
    model = _with_output(conditional_generator(extras=False),
                         helper.make_tensor_value_info("bg", TensorProto.FLOAT, [1, 3, 8, 8]), background)
    path = _save(model, tmp_path / "bg.onnx")
    with pytest.raises(UnsupportedOpError, match=r"bg\.onnx.*output 'bg' is a constant in the model file.*drop it"):
        build(path, "x86-litert", tmp_path / "b", precision="fp32", samples=2)


def test_a_batch_dim_declared_minus_one_is_dynamic(tmp_path):
    model = conditional_generator(extras=False)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = -1
    graph = Graph.load(_save(model, tmp_path / "minus1.onnx"))
    assert all(s.shape[0] is None and s.default_shape[0] == 1 for s in graph.inputs + graph.outputs)


def test_sparse_initializers_are_read_as_weights(tmp_path):
    model = conditional_generator(extras=False)
    bias = next(t for t in model.graph.initializer if t.name == "head_b")
    values = numpy_helper.to_array(bias)
    model.graph.initializer.remove(bias)
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(values[1:], "head_b"), numpy_helper.from_array(np.array([1, 2], np.int64)), [3]))
    graph = Graph.load(_save(model, tmp_path / "sparse.onnx"))
    dense = {t.name: numpy_helper.to_array(t) for t in graph.model.graph.initializer}
    assert not graph.model.graph.sparse_initializer
    np.testing.assert_array_equal(dense["head_b"], [0, *values[1:]])


def test_repeated_node_names_are_made_unique_and_the_model_builds(tmp_path):
    model = conditional_generator(extras=False)
    for node in model.graph.node:
        node.name = "node"
    path = _save(model, tmp_path / "dupnames.onnx")
    graph = Graph.load(path)
    assert len({n.name for n in graph.model.graph.node}) == len(graph.model.graph.node)
    assert build(path, "x86-onnxruntime", tmp_path / "b", samples=2).fidelity["max_abs"] == 0


@pytest.mark.parametrize("key, value, message", [
    ("edgegen.default_size", "0x0", r"edgegen.default_size '0x0' is not a size: give it as HxW"),
    ("edgegen.default_size", "big", r"edgegen.default_size 'big' is not a size"),
    ("edgegen.default_size", "²", r"edgegen.default_size '²' is not a size"),
    ("edgegen.num_classes", "ten", r"edgegen.num_classes 'ten' is not a class count"),
    ("edgegen.num_classes", "²", r"edgegen.num_classes '²' is not a class count"),
    ("edgegen.num_classes", "1000", r"edgegen.num_classes says 1000 classes, but the table label 'label' indexes "
                                    r"has 10 rows"),
    ("edgegen.roles", "image", r"edgegen.roles: 'image' is not NAME=VALUE"),
    ("edgegen.output_range", "1,0", r"edgegen.output_range: range '1,0' must have HIGH > LOW"),
])
def test_malformed_or_impossible_metadata_is_refused_naming_file_key_and_value(tmp_path, key, value, message):
    """The file, the key and the value; a Unicode digit ('²', a digit to str.isdigit) is no number either."""
    model = conditional_generator(extras=False)
    helper.set_model_props(model, {key: value})
    with pytest.raises(ModelError, match=r"meta\.onnx: model metadata " + message):
        Graph.load(_save(model, tmp_path / "meta.onnx"))


def test_default_size_metadata_may_give_one_side_of_a_square(tmp_path):
    inits = [_weight("w", 3, 3, 3, 3)]
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["out"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"edgegen.default_size": "32"})
    assert Graph.load(_save(model, tmp_path / "square.onnx")).inputs[0].default_shape == [1, 3, 32, 32]


def test_external_data_behind_a_symbolic_link_is_refused_saying_how_to_copy_it(tmp_path):
    onnx.save(conditional_generator(extras=False), str(tmp_path / "gen.onnx"), save_as_external_data=True,
              location="gen.onnx.data", size_threshold=0)
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "gen.onnx").symlink_to(tmp_path / "gen.onnx")
    (tmp_path / "snapshot" / "gen.onnx.data").symlink_to(tmp_path / "gen.onnx.data")
    with pytest.raises(ModelError, match=r"is a symbolic link, which onnx does not follow.*cp -L"):
        Graph.load(tmp_path / "snapshot" / "gen.onnx")


def test_a_quickgelu_after_a_where_keeps_its_float_alpha(tmp_path):
    """The write-back typed its constants by walking back through each writer's first input: through a Where
    (a bool condition first) alpha became a bool, and the clean-up then dropped the multiply by it, computing
    x * sigmoid(x) instead of x * sigmoid(1.702 x)."""
    mask = numpy_helper.from_array(np.ones((1, 3, 8, 8), bool), "mask")
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    nodes = [helper.make_node("Where", ["mask", "x", "zero"], ["m"], "where"),
             helper.make_node("QuickGelu", ["m"], ["y"], "qg", domain="com.microsoft", alpha=1.702)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [mask, zero])
    path = tmp_path / "where.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), str(path))
    loaded = Graph.load(path)
    x = np.linspace(-3, 3, 192, dtype=np.float32).reshape(1, 3, 8, 8)
    got = ort.InferenceSession(loaded.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(got, x / (1 + np.exp(-1.702 * x)), atol=1e-5)
