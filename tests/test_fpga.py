"""The fpga backend: the compiler onto the edgegen NPU, its functional model against the same QDQ
graph in ONNX Runtime, what does not fit or cannot run, and FPGA bundles through build and runtime."""

import json
import logging

import numpy as np
import onnx
import pytest
from fpga_models import (dense_decoder, gelu_block, gelu_tanh_pow_block, grouped_conv, hardswish_upsample,
                         instance_norm, mobile_block, prelu_block, residual_denoiser, rgb_head, view_decoder)

from edgegen import targets
from edgegen.backends.fpga.alloc import FitError
from edgegen.backends.fpga.compile import lower_graph, unsupported_nodes
from edgegen.backends.fpga.isa import DESC_WORDS, KIND_ADD, KIND_CONV, Layer, NpuConfig
from edgegen.build import build
from edgegen.emulate import fpga as emu
from edgegen.errors import BuildError, RequestError, UnsupportedOpError
from edgegen.graph import Graph
from edgegen.inputs import sample_feeds
from edgegen.runtime import Generator

from conftest import DATA

logging.getLogger().setLevel(logging.ERROR)
FAMILIES = DATA / "families"
ROOMY = NpuConfig.from_options({"lanes": 8, "act_kb": 512, "wgt_kb": 256, "par_entries": 4096, "tap_entries": 2048})


def mean_shift(pre: tuple[str, str] = ("Sub", "Div"), post: str = "Add", const_first: bool = False,
               noise: bool = False) -> onnx.ModelProto:
    """EDSR's MeanShift and (x - mean) / std: per-channel constant ops on the float image input
    (`pre`, constant first or second), two convolutions, `post` of the same [1, 3, 1, 1] constant on
    the int8 result; `noise`: a fixed [1, 1, 8, 8] map subtracted from the input instead."""
    rng = np.random.default_rng(7)
    c3 = np.array([0.4, 0.45, 0.41], np.float32)
    inits = [onnx.numpy_helper.from_array(c3.reshape(1, 3, 1, 1), "mean"),
             onnx.numpy_helper.from_array(np.array([0.5, 0.6, 0.7], np.float32).reshape(3, 1, 1), "std"),
             onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 1, 8, 8)).astype(np.float32), "noise"),
             *(onnx.numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (3, 8, 3, 3)), ("b2", (3,))))]
    first = [onnx.helper.make_node("Sub", ["image", "noise"], ["n"], name="noisy")] if noise else [
        onnx.helper.make_node(pre[0], ["mean", "image"] if const_first else ["image", "mean"], ["c"], name="shift"),
        onnx.helper.make_node(pre[1], ["c", "std"], ["n"], name="scale")]
    nodes = first + [
        onnx.helper.make_node("Conv", ["n", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Relu", ["h"], ["r"]),
        onnx.helper.make_node("Conv", ["r", "w2", "b2"], ["o"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node(post, ["mean", "o"] if const_first else ["o", "mean"], ["out"], name="unshift")]
    graph = onnx.helper.make_graph(
        nodes, "mean_shift", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _graph(tmp_path, model) -> Graph:
    if isinstance(model, str):
        return Graph.load(FAMILIES / f"{model}.onnx")
    path = tmp_path / "model.onnx"
    onnx.save(model(), str(path))
    return Graph.load(path)


@pytest.mark.parametrize("model", ["dcgan__legacy_b1", "cgan_dcgan__legacy_b1", "pix2pix_unet__legacy_b1",
                                   "espcn__legacy_b1", "tiny_decoder__legacy_b1", "mobilenet_resnet__legacy_b1",
                                   mobile_block, dense_decoder, view_decoder, hardswish_upsample, gelu_block,
                                   rgb_head, prelu_block, residual_denoiser],
                         ids=lambda m: m if isinstance(m, str) else m.__name__)
def test_functional_model_agrees_with_onnxruntime_within_one_lsb(tmp_path, model):
    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, model)), ROOMY, tmp_path / "npu")
    stats = emu.agreement(compiled, samples=3)
    print(f"{stats['values']} int8 outputs: {stats['exact']} equal, {stats['off_by_1']} off by 1 LSB, "
          f"{stats['over_1']} off by more (max {stats['max_lsb']} LSB)")
    assert stats["values"] > 0
    assert stats["within_1_lsb"] >= 0.99, stats
    assert stats["exact"] / stats["values"] >= 0.7, stats


def test_zoo_generator_agrees_with_onnxruntime_through_every_layer(tmp_path):
    # a generator amplifies any one-code difference through every layer after it: single rounding in the
    # requantizer and an exact BatchNormalization bias keep glyphgen's codes equal to ONNX Runtime's
    big = NpuConfig.from_options({"lanes": 8, "act_kb": 1024, "wgt_kb": 1024, "par_entries": 16384})
    compiled = emu.compile_for(emu.quantize(Graph.load("zoo:glyphgen"), 8), big, tmp_path / "npu")
    stats = emu.agreement(compiled, samples=2)
    print(f"glyphgen: {stats['exact']} of {stats['values']} codes equal, max {stats['max_lsb']} LSB")
    assert stats["within_1_lsb"] >= 0.99 and stats["exact"] / stats["values"] >= 0.99, stats


@pytest.mark.parametrize("model, layers", [("tiny_decoder__legacy_b1", 30), ("mobilenet_resnet__legacy_b1", 20)])
def test_each_layer_alone_agrees_with_onnxruntime_within_one_lsb(tmp_path, model, layers):
    # fed ONNX Runtime's own inputs, every layer stays within 1 LSB on >= 99.9% of its values (the MobileNet
    # family's bilinear Resize included: ONNX Runtime runs it in float32 between DequantizeLinear and
    # QuantizeLinear, the NPU in integers)
    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, model)), ROOMY, tmp_path / "npu")
    result = emu.layer_agreement(compiled)
    print([(row["op"], row["exact"], row["values"], row["max_lsb"]) for row in result["layers"]])
    assert result["isolated_layers"] >= layers
    assert result["worst_within_1_lsb"] >= 0.999, result["layers"]
    assert "Resize" in {row["op"] for row in result["layers"]} or model != "mobilenet_resnet__legacy_b1"


@pytest.mark.parametrize("half_last", [False, True])
def test_a_gelu_in_the_exporters_erf_form_gives_onnxruntimes_codes(tmp_path, half_last):
    """Its table replays the QDQ graph's Div, Erf, Add and Muls, each output rounded onto its own grid: one
    float GELU rounded once was a code off on up to a fifth of the outputs (a Conv + nn.GELU() export: 149 of
    720)."""
    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, lambda: gelu_block(half_last))), ROOMY, tmp_path / "n")
    layers = emu.layer_agreement(compiled)["layers"]
    assert [row["exact"] for row in layers] == [row["values"] for row in layers], layers


def test_a_tanh_gelu_with_pow_as_the_dynamo_exporter_writes_it_gives_onnxruntimes_codes(tmp_path):
    """x ** 3 of the dynamo exporter's tanh GELU was refused ("node_Pow_1 (op Pow): the edgegen NPU has no layer");
    a Pow by one constant exponent is a table like the other element-wise ops. One with a computed exponent is
    refused naming why."""
    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, gelu_tanh_pow_block)), ROOMY, tmp_path / "n")
    stats = emu.agreement(compiled, samples=3)
    assert stats["values"] > 0 and stats["exact"] == stats["values"], stats
    model = gelu_tanh_pow_block()
    next(n for n in model.graph.node if n.op_type == "Pow").input[1] = "h"  # x ** x
    onnx.save(model, str(tmp_path / "pow.onnx"))
    assert [m[1:] for m in unsupported_nodes(Graph.load(tmp_path / "pow.onnx"), targets.load("fpga-sim"))] == \
        [("Pow", "a Pow runs as a 256-entry table, so only with one constant exponent")]


def test_every_layer_kind_is_exercised(tmp_path):
    lowered, _, _ = lower_graph(emu.quantize(_graph(tmp_path, mobile_block)), ROOMY)
    kinds = {(layer.kind, layer.depthwise, layer.up, layer.lut) for layer in lowered.program.layers}
    assert (KIND_CONV, False, False, False) in kinds  # dense 3x3 convolutions (ReLU: the grid clamps it)
    assert (KIND_CONV, True, False, True) in kinds    # depthwise stride 2 + HardSwish table
    assert (KIND_ADD, False, False, True) in kinds    # residual add + LeakyReLU table
    resize = [layer for layer in lowered.program.layers if layer.notes.get("fused") == "Resize"]
    assert [(r.op, r.up, r.stride, r.depthwise) for r in resize] == [("Conv", True, 2, False)]  # nearest x2 + conv
    last = lowered.program.layers[-1]
    assert (last.op, last.depthwise, last.up, last.lut, last.notes.get("fused")) == \
        ("DepthToSpace", True, True, True, "Sigmoid")     # pixel shuffle + the Sigmoid table
    ops = [layer.op for layer in lowered.program.layers]
    assert ops == ["Conv", "Conv", "Conv", "Add", "Conv", "DepthToSpace"], ops


def test_glyphgen_style_head_lowers_to_views_and_elementwise_layers(tmp_path):
    lowered, _, _ = lower_graph(emu.quantize(_graph(tmp_path, rgb_head)), ROOMY)
    ops = [(layer.op, layer.kind) for layer in lowered.program.layers]
    assert ("Sub", KIND_ADD) in ops and ("Mul", 3) in ops and ("BatchNormalization", KIND_CONV) in ops
    assert not any(op in ("Slice", "Expand") for op, _ in ops)  # views: no layer, no cycles
    sub = next(layer for layer in lowered.program.layers if layer.op == "Sub")
    assert sub.sub and sub.lanes_used == 3
    mul = next(layer for layer in lowered.program.layers if layer.op == "Mul")
    assert mul.b_gs == 0 or mul.in_gs == 0  # the [1, 3, 1, 1] colour difference is broadcast over the map


def test_zoo_generator_does_not_fit_the_ecp5_and_says_why():
    graph = emu.quantize(Graph.load("zoo:glyphgen"), 8)
    config = NpuConfig.from_options(targets.load("ecp5-85f").backend_options)
    with pytest.raises(FitError, match=r"needs \d+ bytes of (weight|parameter) RAM .* has \d+ bytes"):
        lower_graph(graph, config, "ecp5-85f")
    lowered, memory, _ = lower_graph(graph, NpuConfig.from_options(
        {"lanes": 32, "act_kb": 1024, "wgt_kb": 1024, "par_entries": 16384}))
    assert memory["wgt_bytes"] > 460 * 1024 and memory["layers"] == len(lowered.program.layers)


def test_tiny_zoo_generator_builds_for_the_up5k_and_matches_onnxruntime(tmp_path):
    build("zoo:glyphtiny", "ice40-up5k-8lane", tmp_path / "b")
    report = json.loads((tmp_path / "b" / "reports" / "npu.json").read_text())
    memory, config = report["memory"], report["config"]
    assert config["lanes"] == 8 and memory["act_bytes"] <= memory["act_capacity"] == 64 * 1024
    assert memory["wgt_bytes"] <= memory["wgt_capacity"] == 64 * 1024
    image = Generator.open(tmp_path / "b").generate(seed=3, label=7)
    assert image.shape == (32, 32, 3)
    config = NpuConfig.from_options(targets.load("ice40-up5k-8lane").backend_options)
    compiled = emu.compile_for(emu.quantize(Graph.load("zoo:glyphtiny"), 8), config, tmp_path / "npu")
    stats = emu.agreement(compiled, samples=2)
    assert stats["within_1_lsb"] >= 0.99, stats


def test_descriptor_encoding_round_trips():
    layer = Layer(KIND_ADD, oh=5, ow=7, groups=3, in_base=100, in_gs=3, out_gs=6, out_base=4000, zp_in=-128,
                  zp_out=17, act_min=-100, act_max=90, b_base=77, b_gs=9, zp_b=-3, shifts=(-1, -2, -19),
                  mults=(1 << 30, 1234567890, -5))
    words = layer.encode()
    assert len(words) == DESC_WORDS
    back = Layer.decode(words)
    for key in ("kind", "oh", "ow", "groups", "in_base", "in_gs", "out_gs", "out_base", "zp_in", "zp_out",
                "act_min", "act_max", "b_base", "b_gs", "zp_b", "shifts", "mults"):
        assert getattr(back, key) == getattr(layer, key), key
    conv = Layer(KIND_CONV, depthwise=True, up=True, lut=True, stride=3, col_step=-4, row_step=96, phase_base=12)
    back = Layer.decode(conv.encode())
    assert (back.depthwise, back.up, back.lut, back.stride, back.col_step, back.row_step, back.phase_base) == \
        (True, True, True, 3, -4, 96, 12)


def test_activation_ram_fit_error_names_the_layer_and_bytes(tmp_path):
    small = NpuConfig.from_options({"lanes": 8, "act_kb": 8, "wgt_kb": 256, "par_entries": 4096})
    with pytest.raises(FitError) as err:
        lower_graph(emu.quantize(_graph(tmp_path, "pix2pix_unet__legacy_b1")), small, "tiny-npu")
    message = str(err.value)
    assert "tiny-npu" in message and "activation RAM" in message and "8192 bytes" in message
    assert "layer '" in message or "the host" in message
    needed = int(message.split(" needs ")[1].split(" bytes")[0])
    assert needed > 8192


def test_activation_ram_fit_error_says_when_lane_padding_is_the_cause(tmp_path):
    wide = NpuConfig.from_options({"lanes": 32, "act_kb": 16, "wgt_kb": 256, "par_entries": 4096})
    with pytest.raises(FitError, match=r"bytes are lane padding: the NPU stores each pixel's channels in groups of "
                                       r"32 lanes, and .*\(9 channels\), 12 \(1 channel\) fill few of them; a target with "
                                       r"fewer lanes wastes less"):
        lower_graph(emu.quantize(_graph(tmp_path, "espcn__legacy_b1")), wide, "wide-npu")
    narrow = NpuConfig.from_options({"lanes": 2, "act_kb": 1, "wgt_kb": 256, "par_entries": 4096})
    with pytest.raises(FitError) as err:  # on 2 lanes, padding is not what stops the model
        lower_graph(emu.quantize(_graph(tmp_path, "pix2pix_unet__legacy_b1")), narrow, "tiny-npu")
    assert "lane padding" not in str(err.value)


def test_weight_ram_fit_error_names_the_layer_and_bytes(tmp_path):
    small = NpuConfig.from_options({"lanes": 8, "act_kb": 512, "wgt_kb": 16, "par_entries": 4096})
    with pytest.raises(FitError, match=r"layer '.+' \(op Conv\) needs \d+ bytes of weight RAM .* "
                                       r"has 16384 bytes \(backend_options.wgt_kb\)"):
        lower_graph(emu.quantize(_graph(tmp_path, "pix2pix_unet__legacy_b1")), small, "tiny-npu")


def test_float_layers_and_unsupported_ops_are_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"node 'norm' \(op InstanceNormalization\)"):
        build(_graph(tmp_path, instance_norm), "fpga-sim", tmp_path / "b", precision="int8")
    with pytest.raises(UnsupportedOpError, match=r"\(op Conv\) cannot run on the edgegen NPU: grouped convolution"):
        lower_graph(emu.quantize(_graph(tmp_path, grouped_conv)), ROOMY)
    with pytest.raises(UnsupportedOpError, match=r"node 'prelu' \(op PRelu\).*per-channel slopes"):
        build(_graph(tmp_path, lambda: prelu_block(per_channel=True)), "fpga-sim", tmp_path / "b", precision="int8")
    noisy = dense_decoder()  # + a fixed noise map after the projection
    noisy.graph.initializer.append(onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32), "noise"))
    relu = next(n for n in noisy.graph.node if n.op_type == "Relu")
    relu.input[0] = "noisy_map"
    noisy.graph.node.insert(2, onnx.helper.make_node("Add", ["map", "noise"], ["noisy_map"], name="inject"))
    with pytest.raises(UnsupportedOpError, match=r"node 'inject' \(op Add\).*is a constant of shape \[1, 8, 4, 4\]"):
        build(_graph(tmp_path, lambda: noisy), "fpga-sim", tmp_path / "b", precision="int8")
    grouped = dense_decoder()
    up = next(n for n in grouped.graph.node if n.op_type == "ConvTranspose")
    up.attribute.append(onnx.helper.make_attribute("dilations", [2, 2]))
    up.name = "up"
    with pytest.raises(UnsupportedOpError, match=r"node 'up' \(op ConvTranspose\): the NPU runs a transposed "
                                                 r"convolution with group 1 and no dilation only"):
        build(_graph(tmp_path, lambda: grouped), "fpga-sim", tmp_path / "b", precision="int8")


def test_a_modulated_convolution_is_refused_as_one(tmp_path):
    """StyleGAN's modulated conv scales a [1, out, in, k, k] weight by the style: the refusal said to feed
    that constant as a model input."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "ws"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.3, (1, 4, 4, 3, 3)).astype(np.float32), "weight"),
             onnx.numpy_helper.from_array(np.array([1, 1, 4, 1, 1], np.int64), "s5"),
             onnx.numpy_helper.from_array(np.array([4, 4, 3, 3], np.int64), "s4")]
    nodes = [h.make_node("Gemm", ["z", "ws"], ["s"]), h.make_node("Reshape", ["s", "s5"], ["style"]),
             h.make_node("Mul", ["weight", "style"], ["wm"], name="modulate"), h.make_node("Reshape", ["wm", "s4"], ["w"]),
             h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Sigmoid", ["c"], ["y"])]
    g = h.make_graph(nodes, "modconv", [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 8]),
                                        h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"node 'modulate' \(op Mul\): its input 'weight' is a constant of "
                                                 r"shape \[1, 4, 4, 3, 3\], a conv weight scaled at run time .*build "
                                                 r"it for a CPU target"):
        build(tmp_path / "m.onnx", "fpga-sim", tmp_path / "b", precision="int8")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("pre, post, const_first, host_in, npu, host_out", [
    (("Sub", "Div"), "Add", False, [], ["Sub", "Mul", "Conv", "Conv", "Add"], []),
    (("Add", "Mul"), "Sub", True, [], ["Add", "Mul", "Conv", "Conv"], ["Sub"]),
    (("Sub", "Mul"), "Mul", False, [], ["Sub", "Mul", "Conv", "Conv", "Mul"], [])])
def test_per_channel_constant_ops_run_on_the_host_where_float_else_on_the_npu(tmp_path, pre, post, const_first,
                                                                            host_in, npu, host_out):
    """EDSR's MeanShift, (image - mean) / std with [1, 3, 1, 1] / [3, 1, 1] constants: what the QDQ graph
    computes in float before the first grid or after the last runs on the host, the same float32 ops as
    ONNX Runtime (the NPU's input codes equal ONNX Runtime's); on int8 values, a per-channel affine layer
    (depthwise) on the NPU. Every output code equals ONNX Runtime's."""
    qdq = emu.quantize(_graph(tmp_path, lambda: mean_shift(pre, post, const_first)))
    compiled = emu.compile_for(qdq, ROOMY, tmp_path / "npu")
    entry, output = compiled.session["inputs"][0], compiled.session["outputs"][0]
    assert [spec["op"] for spec in entry["chain"]] == host_in
    assert [spec["op"] for spec in output["chain"]] == host_out
    assert all(np.shape(spec["const"]) == (3, 1, 1) for spec in entry["chain"] + output["chain"])
    layers = json.loads((tmp_path / "npu" / "reports" / "npu.json").read_text())["layers"]
    assert [layer["op"] for layer in layers] == npu
    assert all(layer["kind"] == "depthwise" for layer in layers if layer["op"] != "Conv")
    feeds = sample_feeds(qdq.inputs, [1, 2, 3])
    want = emu.ort_codes(qdq, {entry["name"]: entry["placement"]}, feeds)[entry["name"]]
    session = compiled.open()
    for i in range(3):
        np.testing.assert_array_equal(session.input_codes(feeds, i)[entry["name"]], want[i])
    stats = emu.agreement(compiled, samples=3)
    assert stats["exact"] == stats["values"], stats


def test_per_channel_constant_ops_build_and_serve(tmp_path):
    path = tmp_path / "mean_shift.onnx"
    onnx.save(mean_shift(), path)
    result = build(path, "fpga-sim", tmp_path / "b", precision="int8")
    assert result.fidelity["psnr_db"] > 35, result.fidelity
    execution = json.loads((tmp_path / "b" / "manifest.json").read_text())["execution"]
    assert execution["float"] == {}, "(x - mean) / std: a Sub and a Mul by the reciprocal, both on the NPU"
    assert Generator.open(tmp_path / "b").generate(image=np.full((8, 8, 3), 128, np.uint8)).shape == (8, 8, 3)


def test_a_constant_map_subtracted_from_the_input_is_refused_with_the_file_and_a_remedy(tmp_path):
    path = tmp_path / "noisy_input.onnx"
    onnx.save(mean_shift(noise=True), path)
    with pytest.raises(UnsupportedOpError, match=r"noisy_input.onnx: node 'noisy' \(op Sub\) .*a constant of shape "
                                                 r"\[1, 1, 8, 8\]: .*one value or one per channel only.* Feed it as a "
                                                 r"model input"):
        build(path, "fpga-sim", tmp_path / "b", precision="int8")


def _conv_model(first: onnx.NodeProto, weight_shape: tuple[int, ...], out_shape: list[int],
                extra=()) -> onnx.ModelProto:
    """image [1, 8, 8, 8] -> `first` (writes "x") -> Conv "conv" (weights `weight_shape`, 3x3, pads 1) -> out."""
    rng = np.random.default_rng(11)
    w = onnx.numpy_helper.from_array((rng.standard_normal(weight_shape) * 0.3).astype(np.float32), "w")
    group = 8 // weight_shape[1]
    nodes = [first, onnx.helper.make_node("Conv", ["x", "w"], ["out"], pads=[1, 1, 1, 1], group=group, name="conv")]
    graph = onnx.helper.make_graph(
        nodes, "m", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, out_shape)], [w, *extra])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def grouped_conv_4() -> onnx.ModelProto:
    """CARN's efficient block: a ReLU, then a convolution of 4 groups of 2 channels."""
    return _conv_model(onnx.helper.make_node("Relu", ["image"], ["x"], name="relu"), (8, 2, 3, 3), [1, 8, 8, 8])


def resized_input() -> onnx.ModelProto:
    """SPADE's segmentation map resized to a layer's size: a nearest Resize of the float model input."""
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = onnx.helper.make_node("Resize", ["image", "", "scales"], ["x"], mode="nearest", name="resize")
    return _conv_model(resize, (4, 8, 3, 3), [1, 4, 16, 16], [scales])


@pytest.mark.parametrize("model, node", [(grouped_conv_4, "conv"), (resized_input, "resize")])
def test_inspect_names_what_the_lowering_refuses_with_its_reason(tmp_path, model, node):
    """An op-level refusal the float graph already shows is in `edgegen inspect` (and refused before a build
    calibrates), with the reason the lowering of the QDQ graph gives."""
    from edgegen.inspect import inspect_model

    path = tmp_path / "model.onnx"
    onnx.save(model(), str(path))
    [entry] = inspect_model(str(path))["targets"]["fpga-sim"]["unsupported"]
    assert entry["node"] == node
    with pytest.raises(UnsupportedOpError) as refused:
        lower_graph(emu.quantize(Graph.load(path)), ROOMY)
    assert f"node {node!r} (op {entry['op']}) cannot run on the edgegen NPU: {entry['why']}" in str(refused.value)
    with pytest.raises(UnsupportedOpError) as refused:
        build(path, "fpga-sim", tmp_path / "b", precision="int8")
    assert f"node {node!r} (op {entry['op']}): {entry['why']}" in str(refused.value)


def test_targets_describe_their_npu():
    for name, lanes in (("fpga-sim", 8), ("ice40-up5k-8lane", 8), ("ice40-up5k", 2), ("ecp5-85f", 32)):
        target = targets.load(name)
        assert target.backend == "fpga" and target.precisions == ["int8"]
        config = NpuConfig.from_options(target.backend_options)
        assert config.lanes == lanes
    for name in ("ice40-up5k-8lane", "ice40-up5k"):
        up5k = NpuConfig.from_options(targets.load(name).backend_options)
        assert up5k.act_bytes + up5k.wgt_bytes <= 128 * 1024  # the UP5K's SPRAM
    assert (up5k.act_banks, up5k.wgt_single_port) == (2, True)  # ice40-up5k's memories are in SPRAM


def test_fpga_bundle_builds_verifies_and_serves(tmp_path, cgen_path):
    result = build(cgen_path, "fpga-sim", tmp_path / "b", precision="int8")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["backend"] == "fpga" and manifest["precision"] == "int8"
    assert {"npu/program.npz", "npu/host.npz", "npu/wgt.hex", "npu/prog.hex", "reports/npu.json"} <= \
        set(manifest["files"])
    assert result.fidelity["psnr_db"] > 25, result.fidelity
    execution = manifest["execution"]
    assert execution["int8"].get("Gemm") == 1 and execution["int8"].get("ConvTranspose") == 1
    assert execution["float"] == {"Gather (host)": 1, "Tanh (host)": 1}
    gen = Generator.open(tmp_path / "b")
    image = gen.generate(seed=3, label=7)
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    assert np.array_equal(image, gen.generate(seed=3, label=7))
    assert not np.array_equal(image, gen.generate(seed=3, label=2))
    assert gen.self_test()["pass"]


def test_a_board_transport_runs_the_session(tmp_path):
    """Session(..., transport=link): what a UART/SPI link implements is all a board needs (here the
    functional model stands in for the board, behind the same byte-level interface)."""
    from edgegen.backends.fpga.model import FunctionalNpu
    from edgegen.inputs import sample_feeds

    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, dense_decoder)), ROOMY, tmp_path / "npu")
    board = FunctionalNpu(ROOMY)
    session = compiled.open(transport=board)
    assert session.mode == "board"
    feeds = sample_feeds(compiled.graph.inputs, [1, 2])
    np.testing.assert_array_equal(session.run(feeds)["image"], compiled.open().run(feeds)["image"])
    assert board.layers_run == len(board.program()) == compiled.session["summary"]["layers"]


def test_a_program_the_npu_cannot_run_is_an_error_naming_the_fix(tmp_path):
    from edgegen.backends.fpga.isa import region_address
    from edgegen.backends.fpga.transport import NpuError
    from edgegen.inputs import sample_feeds

    compiled = emu.compile_for(emu.quantize(_graph(tmp_path, dense_decoder)), ROOMY, tmp_path / "npu")
    session = compiled.open()
    session.device.write(region_address("prog", 16 * 4), bytes([9, 0, 0, 0]))  # layer 1: an unknown kind
    with pytest.raises(NpuError, match="did not finish this bundle's program: status 0x6 after 1 layers"):
        session.run(sample_feeds(compiled.graph.inputs, [1]))


def test_precision_other_than_int8_is_refused(tmp_path, cgen_path):
    with pytest.raises(BuildError, match="does not offer precision 'fp32'"):
        build(cgen_path, "fpga-sim", tmp_path / "b", precision="fp32")


def test_a_program_with_more_activation_tables_than_the_npu_holds_says_pruning_does_not_help():
    graph = emu.quantize(Graph.load("zoo:glyphgen"), 8)
    options = {"lanes": 32, "act_kb": 1024, "wgt_kb": 1024, "par_entries": 16384}
    _, memory, _ = lower_graph(graph, NpuConfig.from_options(options))
    tight = NpuConfig.from_options({**options, "lut_tables": memory["lut_tables"] - 1})
    with pytest.raises(FitError, match=r"bytes of activation-table RAM .* \(backend_options.lut_tables\)\. .*so "
                                       r"pruning does not help"):
        lower_graph(graph, tight, "tight")


def test_tables_that_only_requantize_concat_inputs_are_named_as_such(tmp_path):
    """A dense block (convs concatenated, no activation) ran out of tables, and the error blamed Sigmoid and Tanh."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(3)
    weights = [nh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name) for name, shape, scale in
               (("w1", (4, 3, 3, 3), 0.2), ("w2", (4, 7, 3, 3), 1.5), ("w3", (3, 11, 3, 3), 0.3))]
    nodes = [h.make_node("Conv", ["image", "w1"], ["a"], pads=[1] * 4),
             h.make_node("Concat", ["image", "a"], ["ia"], axis=1),
             h.make_node("Conv", ["ia", "w2"], ["b"], pads=[1] * 4),
             h.make_node("Concat", ["ia", "b"], ["iab"], axis=1),
             h.make_node("Conv", ["iab", "w3"], ["out"], pads=[1] * 4)]
    g = h.make_graph(nodes, "dense", [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 8, 8])], weights)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "dense.onnx"))
    graph = emu.quantize(Graph.load(tmp_path / "dense.onnx"), 8)
    _, memory, _ = lower_graph(graph, ROOMY)
    assert memory["lut_tables"] >= 2
    tight = NpuConfig.from_options({"lanes": 8, "act_kb": 512, "wgt_kb": 256, "par_entries": 4096, "tap_entries": 2048,
                                    "lut_tables": memory["lut_tables"] - 1})
    with pytest.raises(FitError, match=r"All \d+ of the model's tables only move values onto another int8 grid \(a "
                                       r"Concat input.*a model with Concats whose inputs share one range\.$"):
        lower_graph(graph, tight, "tight")


def test_a_fractional_resize_after_a_function_is_refused_alike_by_inspect_and_build(tmp_path):
    """inspect said every op of Conv -> Elu -> Resize(1.5x, linear) runs on the NPU (the resize's shape was
    checked only where a layer computes its input); the build refused the resize for its float input."""
    from edgegen.backends.fpga.compile import unsupported_nodes

    h = onnx.helper
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32), "w2"),
             onnx.numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), h.make_node("Elu", ["a"], ["e"]),
             h.make_node("Resize", ["e", "", "scales"], ["r"], name="grow", mode="linear"),
             h.make_node("Conv", ["r", "w2"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Sigmoid", ["c"], ["y"])]
    g = h.make_graph(nodes, "frac", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 24, 24])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    why = r"node 'grow' \(op Resize\): only nearest or bilinear upsampling by the same integer factor"
    missing = unsupported_nodes(Graph.load(tmp_path / "m.onnx"), targets.load("fpga-sim"))
    assert [(name, op) for name, op, _ in missing] == [("grow", "Resize")]
    with pytest.raises(UnsupportedOpError, match=why):
        build(tmp_path / "m.onnx", "fpga-sim", tmp_path / "b", precision="int8")


def test_serving_parts_cut_at_a_quantized_tensor_stay_int8_on_the_npu(tmp_path):
    """A part ending or starting at a tensor the QDQ graph quantizes was cut before its QuantizeLinear (or after
    its DequantizeLinear): the NPU, which runs int8 only, refused every --split and a U-Net's --roi, and the
    suggested --split named tensors of the quantized graph (`..._DequantizeLinear_Output`)."""
    split = ["/style/Gemm_output_0", "/Slice_1_output_0", "/Sub_output_0"]  # as `inspect --nodes` lists them
    built = build("zoo:glyphtiny", "fpga-sim", tmp_path / "split", split=split)
    assert built.manifest["serving"]["split"]["cut"] == split
    assert built.manifest["serving_report"]["split"]["max_abs"] == 0


@pytest.mark.parametrize("family", ["pix2pix_unet__legacy_b1", "dcgan__legacy_b1"])
def test_regions_are_not_offered_on_the_npu_whose_programs_have_static_shapes(tmp_path, family):
    """--roi on an FPGA target: a region runs on a crop of its own size, and the NPU program was compiled for the
    frame's (a DCGAN's region ended in an internal error, a reshape deep in the host I/O). The build refuses ROI
    by name and ships the rest; a region request is a RequestError saying why."""
    built = build(FAMILIES / f"{family}.onnx", "fpga-sim", tmp_path / "roi", roi=True)
    refusals = [entry.get("refused", "") for entry in built.manifest["serving"]["roi"].values()]
    assert refusals and all("fpga artifacts have static shapes" in why for why in refusals), refusals
    gen = Generator.open(tmp_path / "roi")
    request = {"seed": 1} if family.startswith("dcgan") else {"image": np.zeros((64, 64, 3), np.uint8)}
    with pytest.raises(RequestError, match="static shapes"):
        gen.generate(**request, roi=(0, 0, 8, 8))


def test_a_nearest_upsampling_of_the_input_scaled_before_an_add(tmp_path):
    """An ESPCN output plus `F.interpolate(x, scale_factor=2) * 0.5`: the Mul read the upsampling, which no layer
    had absorbed, and the build said its input 'is not computed by any node before it'."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (12, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.float32(0.5), "half")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["c"], ["d"], blocksize=2, mode="CRD"),
             helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("Mul", ["r", "half"], ["m"]), helper.make_node("Add", ["d", "m"], ["y"])]
    g = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    result = build(tmp_path / "m.onnx", "fpga-sim", tmp_path / "b", precision="int8")
    assert result.fidelity["psnr_db"] > 40 and result.manifest["execution"]["int8"]["Resize"] == 1


def test_an_activation_ram_overflow_names_the_layer_where_it_happens(tmp_path):
    """An intermediate tensor kept as an output stays live to the end, where two 64x64 images join it: the
    refusal named the first layer and said the tensors live there fit."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (12, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["feat"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Conv", ["feat", "w2"], ["c"], pads=[1, 1, 1, 1], name="c2"),
             helper.make_node("DepthToSpace", ["c"], ["d"], blocksize=2, mode="CRD", name="shuffle"),
             helper.make_node("Sigmoid", ["d"], ["image"], name="sigmoid")]
    g = helper.make_graph(nodes, "kept", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64]),
                           helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(BuildError) as caught:
        build(tmp_path / "m.onnx", "fpga-sim", tmp_path / "b", precision="int8")
    message = str(caught.value)
    assert "layer 'c1'" not in message and "but the NPU has 65536 bytes" in message and "feat" in message, message


def test_an_edited_npu_session_in_the_manifest_is_a_damaged_bundle_naming_the_key(tmp_path, cgen_path, capsys,
                                                                                 monkeypatch):
    """session.npu.lanes 0 was an IndexError traceback in verify; a bogus session.mode blamed EDGEGEN_FPGA_MODE
    (unset), and emulate, which runs the functional model whatever the mode, passed it."""
    import shutil

    from edgegen.cli import main

    build(cgen_path, "fpga-sim", tmp_path / "b", precision="int8")
    cases = {"lanes 0": (("npu", "lanes"), 0, "session.npu.lanes is 0, not a positive integer"),
             "lanes 6": (("npu", "lanes"), 6, "session.npu.lanes is 6, not a power of two"),
             "mode": (("mode",), "warp", "session.mode is 'warp', not one of functional, rtl"),
             "fmax 0": (("fmax_mhz",), 0, "session.fmax_mhz is 0, not a positive number")}
    for keys, value, said in cases.values():
        copy = tmp_path / "edited"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(tmp_path / "b", copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        place = manifest["session"]
        for key in keys[:-1]:
            place = place[key]
        place[keys[-1]] = value
        (copy / "manifest.json").write_text(json.dumps(manifest))
        for verb in ("verify", "emulate"):
            assert main([verb, str(copy), "--runs", "1", *(["--no-rtl"] if verb == "emulate" else [])]) == 3, said
            out = "".join(capsys.readouterr())
            assert f"{copy / 'manifest.json'}: {said}" in out and "a damaged or edited manifest" in out
    monkeypatch.setenv("EDGEGEN_FPGA_MODE", "warp")
    assert main(["verify", str(tmp_path / "b"), "--runs", "1"]) == 2
    assert "EDGEGEN_FPGA_MODE='warp' is not an NPU mode" in capsys.readouterr().err
