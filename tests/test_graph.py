import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import conditional_generator
from onnx import TensorProto, helper, numpy_helper

from edgegen.errors import ModelError
from edgegen.graph import Graph


def test_cleanup_removes_passthrough_and_folds_constants(cgen_path):
    graph = Graph.load(cgen_path)
    ops = graph.op_inventory()
    assert "Identity" not in ops and "Dropout" not in ops and "Constant" not in ops
    assert "Div" not in ops  # the constant subgraph two*two/four folded away
    assert graph.notes


def test_computed_output_shape_replaces_wrong_declared_one(cgen_path):
    graph = Graph.load(cgen_path)
    out = graph.outputs[0]
    assert out.shape == [None, 3, 8, 8]
    assert out.default_shape == [1, 3, 8, 8]
    assert any("disagrees" in n for n in graph.notes)


def test_cleaned_graph_computes_the_same(cgen_path, tmp_path):
    graph = Graph.load(cgen_path)
    graph.save(tmp_path / "clean.onnx")
    feeds = {"latent": np.random.default_rng(1).standard_normal((3, 16), dtype=np.float32),
             "label": np.array([0, 5, 9])}
    a = ort.InferenceSession(str(cgen_path)).run(None, feeds)[0]
    b = ort.InferenceSession(str(tmp_path / "clean.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_roles_and_label_classes(cgen_path):
    graph = Graph.load(cgen_path)
    roles = {s.name: s.role for s in graph.inputs + graph.outputs}
    assert roles == {"latent": "latent", "label": "label", "image": "image"}
    assert graph.input("label").num_classes == 10
    assert graph.outputs[0].range == [-1.0, 1.0]  # from the Tanh that produces it


def test_a_one_channel_map_named_noise_is_a_latent_not_an_image(tmp_path):
    """StyleGAN's per-layer noise inputs [N, 1, H, W] were images: verified and calibrated with smooth pictures."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, 8, 8]) for name in
              ("noise_0", "z", "mask", "image")]
    nodes = [helper.make_node("Sum", [i.name for i in inputs], ["s"]), helper.make_node("Sigmoid", ["s"], ["y"])]
    g = helper.make_graph(nodes, "noise", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    roles = {s.name: s.role for s in Graph.load(tmp_path / "m.onnx").inputs}
    assert roles == {"noise_0": "latent", "z": "latent", "mask": "image", "image": "image"}


def test_macs_are_exact(cgen_path):
    costs = {c.op: c for c in Graph.load(cgen_path).node_costs()}
    assert costs["Gemm"].macs == 16 * 128
    assert costs["ConvTranspose"].macs == 8 * 4 * 4 * 8 * 4 * 4  # input elements x (Cout x k x k)
    assert costs["Conv"].macs == 3 * 8 * 8 * 12 * 3 * 3
    assert costs["Gemm"].param_bytes == (16 * 128 + 128) * 4


def test_input_dependencies_find_the_latent_only_trunk(cgen_path):
    graph = Graph.load(cgen_path)
    deps = graph.input_dependencies()
    trunk = [n for n in graph.model.graph.node if deps[n.output[0]] == {"latent"}]
    assert {n.op_type for n in trunk} >= {"Gemm", "ConvTranspose"}
    assert deps["image"] == {"latent", "label"}


def test_external_data_is_loaded(tmp_path):
    model = conditional_generator(extras=False)
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    graph = Graph.load(tmp_path / "ext.onnx")
    assert graph.node_costs()[0].param_bytes > 0


def test_missing_external_data_is_a_clear_error(tmp_path):
    model = conditional_generator(extras=False)
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.data", size_threshold=0)
    data = (tmp_path / "w.data").read_bytes()
    (tmp_path / "w.data").write_bytes(data[:len(data) // 2])  # a partial copy: not "keep it next to the .onnx"
    with pytest.raises(ModelError, match="external weight data is shorter than the model says .* Copy the .data "
                                         "file again whole"):
        Graph.load(tmp_path / "ext.onnx")
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelError, match="external weight data could not be read .* Keep the .data file next to"):
        Graph.load(tmp_path / "ext.onnx")


@pytest.mark.parametrize("content", [b"", b"hello, not a model", b"\x08\x07\x12\x04junk" * 50])
def test_non_onnx_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="bad.onnx"):
        Graph.load(path)


def test_truncated_file_is_refused(tmp_path, cgen_path):
    data = cgen_path.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelError, match="cut.onnx"):
        Graph.load(path)


@pytest.mark.parametrize("opset", [13, 21])
def test_supported_opset_range(tmp_path, opset):
    path = tmp_path / f"op{opset}.onnx"
    onnx.save(conditional_generator(opset=opset, extras=False), str(path))
    assert Graph.load(path).opset == opset


def test_older_opset_is_raised_with_the_version_converter(tmp_path):
    path = tmp_path / "op11.onnx"
    onnx.save(conditional_generator(opset=11, extras=False), str(path))
    graph = Graph.load(path)
    assert graph.opset == 17 and "opset 11 raised to 17 with onnx's version converter" in graph.notes


@pytest.mark.parametrize("mode, scale", [("linear", 2.0), ("nearest", 3.0)])
def test_an_opset_9_upsample_keeps_its_coordinate_mapping_when_raised(tmp_path, mode, scale):
    """Upsample (opset <= 10) maps output x to x / scale; opset 11's Resize defaults to half_pixel."""
    scales = numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")
    g = helper.make_graph([helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)], "up9",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5 * int(scale), 5 * int(scale)])],
                          [scales])
    path = tmp_path / "up9.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]), str(path))
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    raised = Graph.load(path).model
    got = ort.InferenceSession(raised.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_opset_the_converter_cannot_raise_is_refused(tmp_path):
    g = helper.make_graph([helper.make_node("Pad", ["x"], ["y"], paddings=[0, 0, 1, 1, 0, 0, 1, 1])], "pad1",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])])
    path = tmp_path / "op1.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 1)]), str(path))
    with pytest.raises(ModelError, match="opset 1 is older .* could not raise it to 17 .*No Adapter .* Re-export"):
        Graph.load(path)


def test_newer_opset_is_refused(tmp_path):
    path = tmp_path / "op22.onnx"
    model = conditional_generator(opset=21, extras=False)
    model.opset_import[0].version = 22
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="opset 22 is newer"):
        Graph.load(path)


def test_a_model_exported_without_its_weights_is_refused_not_given_weight_inputs(tmp_path):
    """torch.onnx.export(..., export_params=False) lists the weights as graph inputs with no value: they were
    taken for request inputs (a conv weight as an image, its first dim as the batch)."""
    w = lambda name, *shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))  # noqa: E731
    nodes = [helper.make_node("Conv", ["image", "0.weight", "0.bias"], ["h"], "/0/Conv", pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "2.weight", "2.bias"], ["out"], "/2/Conv", pads=[1] * 4)]
    g = helper.make_graph(nodes, "noparams", [w("image", "N", 3, 16, 16), w("0.weight", 8, 3, 3, 3), w("0.bias", 8),
                                              w("2.weight", 3, 8, 3, 3), w("2.bias", 3)], [w("out", "N", 3, 16, 16)])
    path = tmp_path / "noparams.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match=r"input '0.weight' is the weight of Conv node '/0/Conv', and the file holds no "
                                         r"value for it \(4 such input\(s\): 0.bias, 0.weight, 2.bias, 2.weight\): .*"
                                         r"export_params=True"):
        Graph.load(path)
    # the weights also listed as inputs, with their values (keep_initializers_as_inputs=True) load as weights
    rng = np.random.default_rng(0)
    g.initializer.extend(numpy_helper.from_array(rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim])
                                                 .astype(np.float32), v.name) for v in g.input[1:])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert [s.name for s in Graph.load(path).inputs] == ["image"]


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Graph.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a directory, not a model file"):
        Graph.load(tmp_path)


def _one_conv(path, channels_out: int = 3):
    """A 3x3 convolution from 3 channels, with dynamic batch, height and width."""
    w = numpy_helper.from_array(np.ones((channels_out, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels_out, "H", "W"])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_dynamic_spatial_dims_take_given_shape(tmp_path):
    path = _one_conv(tmp_path / "fc.onnx")
    graph = Graph.load(path, input_shapes={"x": [1, 3, 32, 48]})
    assert graph.inputs[0].role == "image" and graph.inputs[0].default_shape == [1, 3, 32, 48]
    assert graph.node_costs()[0].macs == 3 * 32 * 48 * 27
    assert Graph.load(path).inputs[0].default_shape == [1, 3, 64, 64]
    with pytest.raises(ModelError, match="does not fit"):
        Graph.load(path, input_shapes={"x": [1, 4, 32, 32]})
    with pytest.raises(ModelError, match=r"--input-shape names \['image'\], which the model does not take; its "
                                         r"inputs are \['x'\]"):
        Graph.load(path, input_shapes={"image": [1, 3, 32, 32]})


def _resize_model(in_shape, sizes) -> onnx.ModelProto:
    sizes_init = numpy_helper.from_array(np.array(sizes, np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [sizes_init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("in_shape, sizes, rewritten", [
    ([1, 2, 8, 8], [1, 2, 16, 24], True),      # x2, x3
    ([1, 2, 12, 12], [1, 2, 4, 8], True),      # /3, x2/3
    ([1, 2, 3, 8], [1, 2, 5, 16], False),      # 5/3 in float32 gives 4 rows back
    (["N", 2, "H", "W"], [1, 2, 16, 16], False),  # the ratio depends on the frame
])
def test_fixed_size_resize_is_given_by_scales_only_where_exact(in_shape, sizes, rewritten):
    from edgegen.resize_sizes import sizes_as_scales

    model = _resize_model(in_shape, sizes)
    original = onnx.ModelProto.FromString(model.SerializeToString())
    assert sizes_as_scales(model) == int(rewritten)
    resize = model.graph.node[0]
    assert (len(resize.input) == 3) == rewritten
    if rewritten:
        x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in in_shape],
                                                     np.float32)
        run = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in (original, model)]
        np.testing.assert_array_equal(run[1], run[0])


def test_a_size_from_shape_start_end_is_given_by_scales():
    """The dynamo exporter's F.interpolate(x, size=(16, 16)) on a dynamic batch: Concat(Shape(x, end=2), [16, 16])."""
    from edgegen.resize_sizes import sizes_as_scales

    nodes = [helper.make_node("Shape", ["x"], ["nc"], start=0, end=2),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                              coordinate_transformation_mode="half_pixel")]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([16, 16], np.int64), "hw")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    original = onnx.ModelProto.FromString(model.SerializeToString())
    assert sizes_as_scales(model) == 1 and [n.op_type for n in model.graph.node] == ["Resize"]
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8), np.float32)
    run = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in (original, model)]
    np.testing.assert_array_equal(run[1], run[0])


def test_an_int32_label_cast_for_its_lookup_keeps_its_class_count(tmp_path):
    model = conditional_generator(extras=False)
    next(i for i in model.graph.input if i.name == "label").type.tensor_type.elem_type = TensorProto.INT32
    next(n for n in model.graph.node if n.op_type == "Gather").input[1] = "label64"
    model.graph.node.insert(0, helper.make_node("Cast", ["label"], ["label64"], to=TensorProto.INT64))
    onnx.save(model, str(tmp_path / "int32.onnx"))
    label = Graph.load(tmp_path / "int32.onnx").input("label")
    assert label.dtype == "int32" and label.num_classes == 10


def test_a_pooled_second_output_keeps_the_range_of_the_activation_before_it(tmp_path):
    w = numpy_helper.from_array(np.full((3, 3, 3, 3), 0.1, np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["out"]),
             helper.make_node("AveragePool", ["out"], ["half"], kernel_shape=[2, 2], strides=[2, 2])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8]),
                           helper.make_tensor_value_info("half", TensorProto.FLOAT, ["N", 3, 4, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
    assert [o.range for o in Graph.load(tmp_path / "two.onnx").outputs] == [[-1.0, 1.0], [-1.0, 1.0]]


def test_a_declared_output_shape_is_kept_where_inference_cannot_follow_the_shape_arithmetic(tmp_path):
    """z.view(z.size(0), 16, 1, 1) at opset 13 with a dynamic batch: Shape -> Gather -> Unsqueeze -> Concat."""
    w = numpy_helper.from_array(np.full((16, 3, 4, 4), 0.05, np.float32), "w")
    consts = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([0], np.int64), "axes"),
              numpy_helper.from_array(np.array([16, 1, 1], np.int64), "rest")]
    nodes = [helper.make_node("Shape", ["z"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["z", "target"], ["z4"]),
             helper.make_node("ConvTranspose", ["z4", "w"], ["up"]),
             helper.make_node("Tanh", ["up"], ["image"])]
    g = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])], [w, *consts])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "view.onnx"))
    image = Graph.load(tmp_path / "view.onnx").outputs[0]
    assert image.role == "image" and image.default_shape == [1, 3, 4, 4]


def test_nodes_out_of_topological_order_are_sorted(tmp_path):
    """onnxruntime's float16 converter (keep_io_types) appends the casts of the graph's inputs at the end."""
    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float16), "w")
    nodes = [helper.make_node("Conv", ["x16", "w"], ["y16"]),
             helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16)]
    g = helper.make_graph(nodes, "casts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "casts.onnx"))
    graph = Graph.load(tmp_path / "casts.onnx")  # the ONNX checker refused it before
    x = np.ones((1, 3, 4, 4), np.float32)
    got = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], np.full((1, 3, 4, 4), 1.5, np.float32))


def test_shapes_inference_cannot_follow_are_read_from_one_run(monkeypatch):
    """Shape arithmetic through float ops (as the dynamo exporter writes some broadcasts), with folding
    unable to resolve it: the concrete shapes come from one ONNX Runtime run at the input shapes."""
    import edgegen.graph as graph_module

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["sf", "two"], ["sf2"]),
             helper.make_node("Cast", ["sf2"], ["s2"], to=TensorProto.INT64),
             helper.make_node("ConstantOfShape", ["s2"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    g = helper.make_graph(nodes, "gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(2, np.float32), "two")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.setattr(graph_module, "fold_constants", lambda m: m)
    assert graph_module._infer_concrete(model, {"x": [1, 3]}, "gap")["y"] == [2, 6]


def test_concrete_shapes_are_inferred_once_per_graph_and_input_shapes(cgen_path, monkeypatch):
    from edgegen import graph as graph_module

    calls = []
    infer = graph_module._infer_concrete
    monkeypatch.setattr(graph_module, "_infer_concrete", lambda *a: calls.append(a) or infer(*a))
    g = Graph.load(cgen_path)
    calls.clear()
    first = g.concrete_shapes()
    first[next(iter(first))].append(99)  # a caller's edit does not reach the next caller
    assert g.concrete_shapes() == infer(g.model, {s.name: s.default_shape for s in g.inputs}, "x")
    assert len(calls) == 1
    g.with_model(g.model, []).concrete_shapes()
    assert len(calls) == 2  # another Graph: inferred again


def test_samples_per_run_keeps_the_largest_activation_within_budget(tmp_path):
    path = _one_conv(tmp_path / "wide.onnx", channels_out=64)
    assert Graph.load(path, input_shapes={"x": [1, 3, 512, 512]}).samples_per_run() == 1  # 64 MiB per sample
    assert Graph.load(path, input_shapes={"x": [1, 3, 64, 64]}).samples_per_run() == 64  # 1 MiB per sample


def test_declared_output_dims_fill_in_what_inference_cannot_follow(tmp_path):
    """A U-Net that pads to a multiple of 8 and crops back: the crop's ends are shape arithmetic (Mod)
    that inference leaves unknown, so the output's declared channel count (3) must stay."""
    w = numpy_helper.from_array(np.full((3, 3, 3, 3), 0.1, np.float32), "w")
    consts = [numpy_helper.from_array(np.array([8, 8], np.int64), "eight"),
              numpy_helper.from_array(np.array([0, 0], np.int64), "zeros"),
              numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Shape", ["x"], ["hw"], start=2),
             helper.make_node("Mod", ["hw", "eight"], ["extra"]),
             helper.make_node("Sub", ["hw", "extra"], ["ends"]),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["y", "zeros", "ends", "axes"], ["out"])]
    g = helper.make_graph(nodes, "crop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "oh", "ow"])], [w, *consts])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "crop.onnx"))
    out = Graph.load(tmp_path / "crop.onnx").outputs[0]
    assert out.shape[1] == 3 and out.role == "image"


def test_a_label_role_on_a_map_is_refused(tmp_path):
    w = numpy_helper.from_array(np.full((3, 8, 3, 3), 0.1, np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["segmap", "w"], ["y"], pads=[1, 1, 1, 1])], "spade",
                          [helper.make_tensor_value_info("segmap", TensorProto.FLOAT, ["N", 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "spade.onnx"))
    with pytest.raises(ModelError, match=r"input 'segmap' \(float32 \?x8x16x16\) cannot be a label: .* pass it by "
                                         r"name \(generate\(segmap=\.\.\.\)\)"):
        Graph.load(tmp_path / "spade.onnx", roles={"segmap": "label"})


def test_the_class_count_of_a_label_flattened_before_its_embedding_is_read(tmp_path):
    """`emb(label.view(-1))` of an [N, 1] label: no class count was read, so label 1000 reached the backend
    (OpenVINO served it, ONNX Runtime raised from inside)."""
    nodes = [helper.make_node("Reshape", ["label", "flat"], ["index"]),
             helper.make_node("Gather", ["table", "index"], ["embedded"]),
             helper.make_node("Add", ["latent", "embedded"], ["out"])]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", 16]),
                                         helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16])],
                          [numpy_helper.from_array(np.zeros((10, 16), np.float32), "table"),
                           numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "emb.onnx"))
    label = next(s for s in Graph.load(tmp_path / "emb.onnx").inputs if s.name == "label")
    assert (label.role, label.num_classes) == ("label", 10)


def test_a_model_exported_without_a_batch_axis_is_refused_naming_its_shapes(tmp_path):
    """z: [16] -> image: [3, 8, 8] (a one-sample forward, `[0]` taken off): the build ran it on a batch and
    died inside the runtime (internal error)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["image"])]
    g = helper.make_graph(nodes, "nobatch", [helper.make_tensor_value_info("z", TensorProto.FLOAT, [16])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, 8, 8])],
                          [numpy_helper.from_array(rng.standard_normal((16, 192)).astype(np.float32), "w"),
                           numpy_helper.from_array(np.array([3, 8, 8], np.int64), "shape")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "nobatch.onnx"))
    with pytest.raises(ModelError, match=r"no batch axis: the first axes of its inputs and outputs \('z' 16, 'image' "
                                         r"3x8x8\) differ.*torch.randn\(1, \.\.\.\)"):
        Graph.load(tmp_path / "nobatch.onnx")


def test_roles_that_do_not_fit_the_tensor_are_refused(cgen_path):
    """--role label=image died in the synthetic-image code (internal error); inspect showed an int64 image."""
    with pytest.raises(ModelError, match=r"input 'label' \(int64 \?\) cannot be an image: .* edgegen takes it as a label"):
        Graph.load(cgen_path, roles={"label": "image"})
    with pytest.raises(ModelError, match=r"input 'latent' \(float32 \?x16\) cannot be an image: .* as a latent"):
        Graph.load(cgen_path, roles={"latent": "image"})
    # an index as a latent fed standard_normal().astype(int64) as class indices; an output took input roles
    with pytest.raises(ModelError, match=r"input 'label' \(int64 \?\) cannot be a latent: .* takes it as a label"):
        Graph.load(cgen_path, roles={"label": "latent"})
    output = Graph.load(cgen_path).outputs[0].name
    with pytest.raises(ModelError, match=rf"output '{output}' cannot have role 'label': an output is an image or a tensor"):
        Graph.load(cgen_path, roles={output: "label"})


def test_constant_folding_keeps_the_optimizers_own_notes_out_of_the_users_log(caplog):
    import logging

    from edgegen.graph_load import fold_constants

    caplog.set_level(logging.WARNING)
    ones = [numpy_helper.from_array(np.ones(4, np.float32), name) for name in ("a", "b")]  # equal: deduplicated
    g = helper.make_graph([helper.make_node("Add", ["x", "a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])], ones)
    fold_constants(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert "Skipped deduplication" not in caplog.text


def test_a_split_by_num_outputs_gets_its_sizes_and_builds_for_openvino(tmp_path):
    """torch.chunk exported by dynamo: Split(num_outputs=4) at opset 18, part of it concatenated again.
    OpenVINO 2026.4 misread that Split (the next conv saw 3 input channels for 24)."""
    from edgegen.build import build

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["image", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Split", ["a"], ["q0", "q1", "q2", "q3"], axis=1, num_outputs=4),
             helper.make_node("Concat", ["q1", "q2", "q3"], ["rest"], axis=1),
             helper.make_node("Conv", ["rest", "wb"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["b"], ["out"])]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (32, 3, 3, 3)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.normal(0, 0.3, (3, 24, 3, 3)).astype(np.float32), "wb")]
    graph = helper.make_graph(nodes, "chunk", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 16, 16])], inits)
    path = tmp_path / "chunk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    [split] = [n for n in Graph.load(path).model.graph.node if n.op_type == "Split"]
    assert not any(a.name == "num_outputs" for a in split.attribute) and len(split.input) == 2
    result = build(path, "x86-openvino", tmp_path / "b")
    assert result.fidelity["max_abs"] <= 1e-4


def test_a_node_the_optimizer_fuses_keeps_the_models_name(tmp_path):
    """ConvTranspose + BatchNorm folded at cleanup: messages must still name '/dec/up/ConvTranspose'."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w")] + \
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
         (("g", rng.uniform(0.5, 1.5, 4)), ("b", rng.normal(0, 0.1, 4)), ("m", rng.normal(0, 0.1, 4)),
          ("v", rng.uniform(0.5, 1.5, 4)))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="/dec/up/ConvTranspose", group=4,
                              strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
             helper.make_node("BatchNormalization", ["t", "g", "b", "m", "v"], ["y"], name="/dec/bn/BatchNormalization")]
    graph = helper.make_graph(nodes, "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    path = tmp_path / "ct.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert [(n.op_type, n.name) for n in Graph.load(path).model.graph.node] == \
        [("ConvTranspose", "/dec/up/ConvTranspose")]


def test_an_input_shape_with_a_dimension_below_one_is_refused():
    """A zero dim died in numpy (build) or with a ZeroDivisionError (inspect)."""
    for dims in ([1, 1, 0, 16], [1, 1, -4, 16]):
        with pytest.raises(ModelError, match=r"input 'input': the shape .* has a dimension below 1"):
            Graph.load("tests/data/families/espcn__legacy_dyn.onnx", input_shapes={"input": dims})


def test_nodes_the_optimizer_merges_keep_a_name_of_the_model(tmp_path):
    """Two Unsqueeze chains from one Gemm, each merged into one node: the second kept the optimizer's own
    name (node_Unsqueeze_3), which a pruning refusal then quoted."""
    w = numpy_helper.from_array(np.full((8, 4), 0.1, np.float32), "w")
    axes = [numpy_helper.from_array(np.array([a], np.int64), f"ax{a}") for a in (1, 2, 3)]
    nodes = [helper.make_node("Gemm", ["z", "w"], ["g"], name="fc")]
    for chain, first in (("a", "ax2"), ("b", "ax1")):  # [1, 4, 1, 1] and [1, 1, 4, 1]
        nodes += [helper.make_node("Unsqueeze", ["g", first], [f"{chain}1"], name=f"/{chain}/Unsqueeze"),
                  helper.make_node("Unsqueeze", [f"{chain}1", "ax3"], [f"{chain}2"], name=f"/{chain}/Unsqueeze_1")]
    nodes.append(helper.make_node("Mul", ["a2", "b2"], ["y"], name="mul"))
    g = helper.make_graph(nodes, "chains", [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 1])], [w, *axes])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    names = {n.name for n in Graph.load(tmp_path / "m.onnx").model.graph.node}
    assert not [n for n in names if n.startswith("node_")], names


@pytest.mark.parametrize("training", [True, False])
def test_a_model_exported_in_training_mode_is_refused_naming_the_nodes(tmp_path, training):
    """training=TrainingMode.TRAINING: Dropout drew random masks and BatchNormalization used the batch's statistics;
    the build blamed a frozen batch, or edgegen, or an op OpenVINO lacked."""
    inits = [numpy_helper.from_array(np.array(training), "train"), numpy_helper.from_array(np.float32(0.5), "ratio")]
    inits += [numpy_helper.from_array(np.full(3, v, np.float32), n) for n, v in (("g", 1), ("b", 0), ("m", 0), ("v", 1))]
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["d"], name="drop"),
             helper.make_node("BatchNormalization", ["d", "g", "b", "m", "v"], ["y"], name="bn",
                              training_mode=int(training))]
    g = helper.make_graph(nodes, "train", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)]), str(tmp_path / "m.onnx"))
    if not training:  # inference mode: the Dropout is removed, the BatchNorm kept
        assert "Dropout" not in {n.op_type for n in Graph.load(tmp_path / "m.onnx").model.graph.node}
        return
    with pytest.raises(ModelError, match=r"exported in training mode: drop \(Dropout, training_mode: random masks\), "
                                         r"bn \(BatchNormalization, training_mode=1.*model\.eval\(\)"):
        Graph.load(tmp_path / "m.onnx")


def _masked_model(path) -> None:
    """`torch.where(mask, x, 0)` with a bool [N, 1, 8, 8] mask and an image x, saved at path."""
    zero = numpy_helper.from_array(np.float32(0), "zero")
    g = helper.make_graph([helper.make_node("Where", ["mask", "x", "zero"], ["y"])], "masked",
                          [helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 1, 8, 8]),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])], [zero])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_boolean_mask_input_is_a_tensor_given_by_name(tmp_path):
    """`torch.where(mask, x, 0)` with a bool [N, 1, H, W] mask: edgegen guessed the role image and then
    refused its own guess ("Drop the image role for it, and edgegen takes it as a image")."""
    _masked_model(tmp_path / "m.onnx")
    roles = {s.name: s.role for s in Graph.load(tmp_path / "m.onnx").inputs}
    assert roles == {"mask": "tensor", "x": "image"}


def test_a_boolean_mask_is_sampled_half_set_and_its_synthetic_samples_are_warned_of(tmp_path, caplog):
    """Seeded noise cast to bool was all True: calibration and the held-out inputs of an inpainting model saw
    only whole-image masks (64.8 dB stated, 41.1 dB on masks 30% set), and no warning said so."""
    import logging

    from edgegen.build import build
    from edgegen.inputs import sample_feeds

    _masked_model(tmp_path / "m.onnx")
    masks = sample_feeds(Graph.load(tmp_path / "m.onnx").inputs, list(range(8)))["mask"]
    assert masks.dtype == np.bool_ and 0.3 < masks.mean() < 0.7
    caplog.set_level(logging.WARNING)
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b")
    assert "input 'mask' (tensor) is fed random masks (seeded noise > 0)" in caplog.text


def test_an_opset_21_group_normalization_is_written_as_its_function_body(tmp_path):
    """The dynamo exporter writes nn.GroupNorm at opset 21 as one GroupNormalization, whose output onnx's shape
    inference leaves untyped: the import failed blaming the node after it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(1, 0.1, 4).astype(np.float32), "s"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")]
    g = helper.make_graph([helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=2),
                           helper.make_node("Relu", ["g"], ["y"])], "gn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    graph = Graph.load(tmp_path / "m.onnx")
    assert "GroupNormalization" not in {n.op_type for n in graph.model.graph.node}
    x = np.random.default_rng(1).random((1, 4, 8, 8), np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(graph.model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(want - got).max() <= 1e-5


def test_an_output_expanded_to_a_batch_read_from_the_input_is_still_an_image(tmp_path):
    """`y + b.expand(B, 3, H, W)` with B = z.shape[0]: shape inference could not follow the Expand's shape, the
    exporter named the output's dims (`Tanhimage_dim_1`), and the 3-channel image became a shapeless tensor."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (16, 48)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (1, 3, 4, 4)).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axis"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([3, 4, 4], np.int64), "chw"),
             numpy_helper.from_array(np.array(-1, np.int64), "minus")]
    nodes = [helper.make_node("Shape", ["z"], ["zs"]), helper.make_node("Gather", ["zs", "zero"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "axis"], ["n"]),
             helper.make_node("Concat", ["n", "chw"], ["joined"], axis=0),
             helper.make_node("MatMul", ["z", "w"], ["m"]), helper.make_node("Reshape", ["m", "joined"], ["r"]),
             # then the Expand's shape, behind the legacy exporter's -1 guard
             helper.make_node("Reshape", ["joined", "flat"], ["cat"]),
             helper.make_node("Shape", ["cat"], ["cs"]),  # Where(Equal(shape, -1), ones, shape)
             helper.make_node("ConstantOfShape", ["cs"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.int64))),
             helper.make_node("Mul", ["ones", "minus"], ["neg"]), helper.make_node("Equal", ["cat", "neg"], ["eq"]),
             helper.make_node("Where", ["eq", "ones", "cat"], ["to"]),
             helper.make_node("Expand", ["bias", "to"], ["bb"]), helper.make_node("Add", ["r", "bb"], ["a"]),
             helper.make_node("Tanh", ["a"], ["image"])]
    out = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "Tanhimage_dim_1", "Tanhimage_dim_2",
                                                                     "Tanhimage_dim_3"])
    g = helper.make_graph(nodes, "expand", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])], [out],
                          inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "m.onnx"))
    spec = Graph.load(tmp_path / "m.onnx").outputs[0]
    assert spec.role == "image" and spec.shape[1:] == [3, 4, 4] and spec.range == [-1.0, 1.0]


@pytest.mark.parametrize("op, value", [("Add", 1e-8), ("Mul", 1.000001)])
def test_cleanup_keeps_an_epsilon_close_to_its_ops_identity(tmp_path, op, value):
    """onnxscript's no-op rules take x + 0 within 1e-8 and x * 1 within 1e-5: PixelNorm's `+ 1e-8` was dropped,
    and an all-zero pixel gave 0 / 0 = NaN."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["mean"], axes=[1], keepdims=1),
             helper.make_node(op, ["mean", "near"], ["moved"]),
             helper.make_node("Add", ["moved", "eps"], ["safe"]) if op == "Mul" else
             helper.make_node("Identity", ["moved"], ["safe"]),
             helper.make_node("Sqrt", ["safe"], ["root"]),
             helper.make_node("Div", ["x", "root"], ["y"])]
    inits = [numpy_helper.from_array(np.array(value, np.float32), "near"),
             numpy_helper.from_array(np.array(1e-3, np.float32), "eps")]
    graph = helper.make_graph(nodes, "pixelnorm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    cleaned = Graph.load(tmp_path / "m.onnx").model
    near = [t for t in cleaned.graph.initializer if numpy_helper.to_array(t).size == 1
            and np.float32(numpy_helper.to_array(t).flat[0]) == np.float32(value)]
    assert near, [n.op_type for n in cleaned.graph.node]
    x = np.random.default_rng(0).random((1, 4, 8, 8)).astype(np.float32)
    x[0, :, 3, 3] = 0  # an all-zero pixel
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    got = ort.InferenceSession(cleaned.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
