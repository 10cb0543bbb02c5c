"""The int8 lowerings (cubic Resize, strided ConvTranspose): exact in float, applied only where exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.graph import Graph
from edgegen.passes.lower_conv_transpose import lower_conv_transposes, merge_narrow_conv_transposes
from edgegen.passes.lower_resize import lower_cubic_resizes
from edgegen.report import render_build_report
from edgegen.runtime import Generator

FAMILIES = Path(__file__).parent / "data" / "families"


def _resize_model(tmp_path, shape, factor, **attrs) -> Graph:
    n, c, h, w = shape
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, h * factor, w * factor])],
                              [scales])
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Graph.load(path)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("coord,factor,coeff,channels", [
    ("half_pixel", 2, -0.75, 3), ("pytorch_half_pixel", 2, -0.5, 8), ("asymmetric", 3, -0.75, 2),
    ("half_pixel", 4, -0.75, 1)])
def test_lowered_cubic_resize_equals_onnx_cubic(tmp_path, coord, factor, coeff, channels):
    graph = _resize_model(tmp_path, [2, channels, 9, 11], factor, mode="cubic", cubic_coeff_a=coeff,
                          coordinate_transformation_mode=coord)
    lowered, report = lower_cubic_resizes(graph)
    assert [r["node"] for r in report] == ["up"] and report[0]["factor"] == factor
    assert [n.op_type for n in lowered.model.graph.node] == ["Pad", "Conv", "DepthToSpace"]
    x = np.random.default_rng(1).uniform(-1, 1, graph.inputs[0].default_shape).astype(np.float32)
    assert np.abs(_run(lowered.model, x) - _run(graph.model, x)).max() <= 1e-5


@pytest.mark.parametrize("attrs", [
    {"mode": "linear"},
    {"mode": "cubic", "exclude_outside": 1},
    {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},  # not periodic in the output phase
])
def test_resizes_without_an_exact_convolution_form_are_left_alone(tmp_path, attrs):
    graph = _resize_model(tmp_path, [1, 3, 9, 9], 2, **attrs)
    lowered, report = lower_cubic_resizes(graph)
    assert report == [] and lowered is graph


def test_int8_build_runs_the_cubic_skip_of_the_zoo_upscaler_in_int8(tmp_path):
    built = build("zoo:upscale2x", "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2,
                  graph_options={"input_shapes": {"image": [1, 3, 32, 32]}})
    passes = built.manifest["passes"]
    assert passes["lowered"]["cubic_resize"] == [{"node": "/Resize", "factor": 2, "kernel": [5, 5], "channels": 3}]
    assert passes["quantize"]["float_ops"] == {}  # no float island left where the bicubic skip was
    assert passes["quantize"]["quantized_ops"]["Pad"] == 1 and passes["quantize"]["quantized_ops"]["DepthToSpace"] == 2
    assert built.fidelity["psnr_db"] >= 35.0


@pytest.mark.parametrize("kernel,stride,pads,output_padding,bias", [
    (3, 2, [1, 1, 1, 1], [1, 1], True), (4, 2, [1, 1, 1, 1], [0, 0], True), (2, 2, [0, 0, 0, 0], [0, 0], False),
    (5, 2, [2, 1, 2, 2], [1, 0], True), (3, 3, [0, 0, 0, 0], [0, 0], True), (1, 2, [0, 0, 0, 0], [1, 1], True)])
@pytest.mark.parametrize("merged", [False, True])
def test_lowered_conv_transpose_equals_onnx_conv_transpose(tmp_path, kernel, stride, pads, output_padding, bias, merged):
    rng = np.random.default_rng(kernel * 10 + stride)
    cin, cout, h, w = 5, 3, 6, 7
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout, kernel, kernel)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"], name="up",
                            strides=[stride] * 2, pads=pads, output_padding=output_padding)
    out = [(n - 1) * stride + kernel - p0 - p1 + op
           for n, p0, p1, op in zip((h, w), pads[:2], pads[2:], output_padding)]
    graph = helper.make_graph([node], "convT", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, *out])], inits)
    path = tmp_path / "convt.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    source = Graph.load(path)
    lowered, report = (merge_narrow_conv_transposes if merged else lower_conv_transposes)(source)
    if merged and any(size % stride for size in out):  # the phases would need a crop: left alone
        assert report == [] and lowered is source
        return
    assert report == [{"node": "up", "stride": stride, "phases": stride * stride, "merged": merged}]
    ops = [n.op_type for n in lowered.model.graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == (1 if merged else stride * stride)
    x = rng.uniform(-1, 1, (1, cin, h, w)).astype(np.float32)
    assert np.abs(_run(lowered.model, x) - _run(source.model, x)).max() <= 1e-5
    if kernel >= stride and not merged:  # every phase has taps: the phase convs do exactly the transposed conv's MACs
        assert sum(c.macs for c in lowered.node_costs()) == sum(c.macs for c in source.node_costs())


@pytest.mark.parametrize("target,lowered", [("x86-onnxruntime", True), ("x86-openvino", False)])
def test_int8_builds_lower_conv_transpose_only_where_the_backend_runs_it_in_float(tmp_path, cgen_path, target, lowered):
    built = build(cgen_path, target, tmp_path / "b", precision="int8", samples=2)
    passes = built.manifest["passes"]
    assert ("conv_transpose" in passes.get("lowered", {})) is lowered
    quantized = passes["quantize"]["quantized_ops"]
    assert quantized.get("ConvTranspose", 0) == (0 if lowered else 1)
    assert "ConvTranspose" not in passes["quantize"]["float_ops"]


@pytest.mark.parametrize("kernel,pads,output_padding,short", [(3, 1, 0, True), (5, 2, 0, True), (3, 1, 1, False),
                                                              (4, 1, 0, False), (3, 0, 0, False)])
def test_openvino_int8_lowers_a_conv_transpose_with_a_short_output(tmp_path, kernel, pads, output_padding, short):
    """OpenVINO's int8 Deconvolution of a stride-2 layer with a 2n - 1 output (k3 p1, k5 p2) gave other pixels
    on some calls at 2 threads (up to 97 levels off on a strip of the image); outputs of 2n and 2n + 1 were
    stable, and stay Deconvolutions (faster than phase Convs)."""
    rng = np.random.default_rng(kernel)
    inits = [numpy_helper.from_array((rng.standard_normal((12, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((12, 8, kernel, kernel)) * 0.2).astype(np.float32), "wt"),
             numpy_helper.from_array((rng.standard_normal((3, 8, 1, 1)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="up", strides=[2, 2], pads=[pads] * 4,
                              output_padding=[output_padding] * 2),
             helper.make_node("Conv", ["t", "w2"], ["o"]), helper.make_node("Sigmoid", ["o"], ["out"])]
    size = 15 * 2 + kernel - 2 * pads + output_padding
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, size, size])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    built = build(tmp_path / "m.onnx", "x86-openvino", tmp_path / "b", precision="int8", samples=2)
    lowered = built.manifest["passes"].get("lowered", {}).get("short_conv_transpose", [])
    assert [row["node"] for row in lowered] == (["up"] if short else [])
    assert ("ConvolutionBackpropData" in (tmp_path / "b" / "model.xml").read_text()) is not short


@pytest.mark.parametrize("form,out,short", [({"strides": [1, 2], "pads": [1, 1, 1, 1]}, [16, 31], True),
                                            ({"strides": [2, 2], "output_shape": [31, 31]}, [31, 31], True),
                                            ({"strides": [1, 2], "pads": [1, 1, 1, 1], "output_padding": [0, 1]},
                                             [16, 32], False)])
def test_openvino_int8_runs_a_short_conv_transpose_the_lowering_leaves_in_float(tmp_path, form, out, short):
    """Strides (1, 2) or an output_shape: the phase lowering leaves them whole, and OpenVINO's int8 Deconvolution
    of a 2n - 1 output gave other pixels on 2166 of 3000 calls at 2 threads. Such a layer gets its weights
    dequantized to float (OpenVINO's f32 Deconvolution is stable), the QDQ graph's values, so its numbers stay."""
    from edgegen.backends.openvino.compile import int8_form, short_conv_transposes_in_float
    from edgegen.passes.calibration import load_calibration
    from edgegen.passes.quantize import Quantizer

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((6, 4, 3, 3)) * 0.2).astype(np.float32), "wt")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="up", **form),
             helper.make_node("Sigmoid", ["t"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, *out])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    source = Graph.load(tmp_path / "m.onnx")
    qdq = Quantizer(source, load_calibration(source.inputs, None, 4)).emit()
    ov_form = int8_form(qdq)
    producer = {o: n.op_type for n in ov_form.graph.node for o in n.output}
    up = next(n for n in ov_form.graph.node if n.op_type == "ConvTranspose")
    assert (producer.get(up.input[1]) != "DequantizeLinear") is short
    x = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ graph's own arithmetic
    run = lambda m: ort.InferenceSession(m.SerializeToString(), plain).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(short_conv_transposes_in_float(qdq)), run(qdq), atol=1e-6)


def test_the_phases_of_a_lowered_conv_transpose_share_one_int8_grid(tmp_path, cgen_path):
    built = build(cgen_path, "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2)
    model = onnx.load(str(tmp_path / "b" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    grids = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and "/phase" in node.input[0]:
            lowered = node.input[0].split("/phase")[0]
            grids.setdefault(lowered, set()).add((float(inits[node.input[1]]), int(inits[node.input[2]])))
    assert grids and len(grids) == len(built.manifest["passes"]["lowered"]["conv_transpose"])
    assert all(len(grid) == 1 for grid in grids.values()), grids  # phases and their concatenation: one grid


def test_build_report_names_the_lowered_nodes(tmp_path, cgen_path):
    built = build(cgen_path, "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2)
    text = render_build_report(built.manifest, tmp_path / "b")
    lowered = [n["node"] for n in built.manifest["passes"]["lowered"]["conv_transpose"]]
    assert f"lowered for int8 (conv_transpose): {', '.join(lowered)}" in text
    latency = built.manifest["latency"]
    assert latency["speed_vs_source"] > 0 and latency["source_p50_ms"] > 0
    assert f"{latency['speed_vs_source']:.2f}x" in text  # "the speed of the fp32 source", or "unsteady" under load
    slow = {**built.manifest, "latency": {**latency, "speed_vs_source": 0.6, "other_load_cores": 0.0,  # a quiet host
                                          "source_p50_ms": 0.6 * latency["p50_ms"]}}  # and a steady measurement
    assert "warning   this int8 artifact runs at 0.60x the speed" in render_build_report(slow, tmp_path / "b")
    assert "warning" not in render_build_report({**slow, "precision": "fp32"}, tmp_path / "b")


def test_lowerings_hold_at_every_size_of_a_model_with_dynamic_spatial_axes(tmp_path):
    # ConvTranspose k3 s2 p1 (no output_padding) gives 2H-1 rows: the phase convs make 2H, cropped from the end
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["t", "", "scales"], ["y"], mode="cubic")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    source = Graph.load(tmp_path / "dyn.onnx")
    lowered, _ = lower_cubic_resizes(lower_conv_transposes(source)[0])
    assert {"ConvTranspose", "Resize"}.isdisjoint(n.op_type for n in lowered.model.graph.node)
    for h, w in [(5, 9), (12, 7)]:
        x = rng.uniform(-1, 1, (1, 4, h, w)).astype(np.float32)
        assert _run(lowered.model, x).shape == (1, 3, 2 * (2 * h - 1), 2 * (2 * w - 1))
        assert np.abs(_run(lowered.model, x) - _run(source.model, x)).max() <= 1e-5


def test_a_resize_to_fixed_sizes_is_left_alone(tmp_path):
    # `sizes` fix the output size, which is a factor of the input only at the default shape (on a static
    # input, import gives such a Resize by scales, see test_graph.py)
    sizes = numpy_helper.from_array(np.array([1, 3, 18, 18], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic")
    graph = helper.make_graph([node], "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 18, 18])], [sizes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fixed.onnx"))
    source = Graph.load(tmp_path / "fixed.onnx", input_shapes={"x": [1, 3, 9, 9]})
    assert lower_cubic_resizes(source) == (source, [])


def test_regions_of_an_int8_bundle_with_lowered_conv_transposes_match_the_full_image(tmp_path):
    # the phase convs read different input offsets; the region planner must take the union of their windows
    built = build(FAMILIES / "pix2pix_unet__legacy_b1.onnx", "x86-onnxruntime", tmp_path / "b", precision="int8",
                  roi=True, samples=2)
    assert "conv_transpose" in built.manifest["passes"]["lowered"]
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = gen.generate(image=image)
    for x, y, w, h in [(0, 0, 8, 8), (5, 3, 11, 9), (57, 58, 7, 6)]:
        np.testing.assert_array_equal(gen.generate(image=image, roi=(x, y, w, h)), full[y:y + h, x:x + w])


def test_tflite_int8_upscaler_gets_its_cubic_skip_without_a_channel_gather(tmp_path):
    # an RGB skip's phases come phase-major from one dense Conv: TFLite's DEPTH_TO_SPACE takes them as they are
    built = build("zoo:upscale2x", "x86-litert", tmp_path / "b", precision="int8", samples=2,
                  graph_options={"input_shapes": {"image": [1, 3, 32, 32]}})
    assert "cubic_resize" in built.manifest["passes"]["lowered"]
    execution = built.manifest["execution"]
    assert execution["float"] == {} and "GATHER" not in execution["int8"], execution
    assert execution["int8"]["DEPTH_TO_SPACE"] == 2
