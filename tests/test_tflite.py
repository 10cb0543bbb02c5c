"""TFLite backend: fp32 / fp16 / int8 builds of the generator families for the TFLite targets,
bundles that reproduce PyTorch, int8 read from the QDQ graph, and the errors a user can fix."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conditional_generator
from onnx import TensorProto, helper

from edgegen import targets
from edgegen.backends.tflite import compile as tflite_compile
from edgegen.backends.tflite.flatbuffer import read_model
from edgegen.build import build
from edgegen.errors import BackendUnavailableError, BuildError, RequestError, UnsupportedOpError
from edgegen.graph import Graph
from edgegen.inputs import sample_feeds
from edgegen.inspect import inspect_model
from edgegen.runtime import Generator
from edgegen.toolchains import ToolNotFoundError

FAMILIES = sorted((Path(__file__).parent / "data" / "families").glob("*.onnx"))
NAMED = ["dcgan__legacy_b1", "pix2pix_unet__dynamo_dyn", "espcn__legacy_dyn", "cyclegan_resnet__legacy_b1",
         "tiny_decoder__dynamo_dyn"]


def _reference(model: Path) -> tuple[dict, dict]:
    data = np.load(model.with_suffix(".npz"))
    feeds = {k: data[k] for k in data.files if not k.startswith("output:")}
    return feeds, {k[7:]: data[k] for k in data.files if k.startswith("output:")}


def _ops(bundle: Path) -> Counter:
    return Counter(op.code for op in read_model((bundle / "model.tflite").read_bytes())[0])


@pytest.mark.parametrize("model", FAMILIES, ids=lambda p: p.stem)
def test_family_fp32_matches_source_and_pytorch_within_1e4(tmp_path, model):
    feeds, outputs = _reference(model)
    # TFLite models have static shapes: build at the reference's spatial size
    shapes = {k: [1, *v.shape[1:]] for k, v in feeds.items() if v.ndim == 4}
    result = build(model, "x86-litert", tmp_path / "b", graph_options={"input_shapes": shapes})
    assert result.fidelity["max_abs"] <= 1e-4, result.fidelity
    gen = Generator.open(tmp_path / "b")
    got = gen.run(feeds)
    for name, expected in outputs.items():
        np.testing.assert_allclose(got[name], expected, atol=1e-4, rtol=0)
    assert gen.self_test()["pass"]
    ops = _ops(tmp_path / "b")
    assert "TRANSPOSE" not in ops and "RESIZE_NEAREST_NEIGHBOR" not in ops, dict(ops)
    assert ops["GATHER"] == (1 if model.stem.startswith("cgan") else 0), dict(ops)  # only embedding lookups


def test_bundle_layout_manifest_and_delegation_report(tmp_path, cgen_path):
    result = build(cgen_path, "x86-litert", tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert {"model.tflite", "reference.npz", "reports/xnnpack.json"} <= set(manifest["files"])
    session = manifest["session"]
    assert session["runtime"] == "ai-edge-litert" and session["entry"] == "model.tflite"
    assert [s["name"] for s in session["inputs"]] == ["latent", "label"]
    assert session["inputs"][1]["dtype"] == "int64" and session["outputs"][0]["layout"] == "nhwc"
    report = json.loads((tmp_path / "b" / "reports" / "xnnpack.json").read_text())
    # the embedding lookup is the one operator XNNPACK does not take; it splits nothing off the rest
    assert report["cpu_ops"] == {"GATHER": 1} and report["delegated"] == report["ops"] - 1
    assert "XNNPACK took" in session["delegation"]
    assert manifest["tools"]["ai-edge-litert"] and result.fidelity["max_abs"] <= 1e-4
    execution = manifest["execution"]
    # the stride-2 ConvTranspose runs as a sub-pixel CONV_2D + DEPTH_TO_SPACE on XNNPACK
    assert execution["float"]["CONV_2D"] == 2 and execution["float"]["DEPTH_TO_SPACE"] == 1
    assert execution["delegation"]["partitions"] == 2


def test_no_transpose_inside_for_the_nchw_dependent_ops(tmp_path, cgen_path):
    """Gemm -> Reshape [N,C,H,W] and an embedding -> Reshape are laid out by permuting weights."""
    build(cgen_path, "x86-litert", tmp_path / "b")
    ops = _ops(tmp_path / "b")
    assert ops["FULLY_CONNECTED"] == 1 and ops["GATHER"] == 1 and "TRANSPOSE" not in ops, dict(ops)


def test_fp16_stores_half_weights_and_is_verified(tmp_path, cgen_path):
    fp32 = build(cgen_path, "x86-litert", tmp_path / "b32")
    fp16 = build(cgen_path, "x86-litert", tmp_path / "b16", precision="fp16")
    assert 40 < fp16.fidelity["psnr_db"] < 200 and "min_psnr_db" in fp16.manifest["reference"]["tolerance"]
    _, tensors = read_model((tmp_path / "b16" / "model.tflite").read_bytes())
    assert any(t.dtype == "float16" and t.constant for t in tensors)
    assert not any(t.dtype == "float32" and t.constant and t.data.size > 16 for t in tensors)
    assert (tmp_path / "b16" / "model.tflite").stat().st_size < 0.6 * (tmp_path / "b32" / "model.tflite").stat().st_size
    assert Generator.open(tmp_path / "b16").self_test()["pass"] and fp32.fidelity["max_abs"] <= 1e-4


@pytest.mark.parametrize("model", ["dcgan__legacy_b1", "espcn__legacy_b1", "pix2pix_unet__legacy_b1",
                                   "cgan_dcgan__legacy_b1", "mobilenet_resnet__legacy_b1"])
def test_int8_is_full_integer_from_the_quantize_pass(tmp_path, model):
    path = Path(__file__).parent / "data" / "families" / f"{model}.onnx"
    result = build(path, "x86-litert", tmp_path / "b", precision="int8")
    assert result.fidelity["psnr_db"] >= 35, result.fidelity
    session = result.manifest["session"]
    for spec in session["inputs"] + session["outputs"]:
        assert spec["dtype"] in ("int8", "int64") and ("quant" in spec) == (spec["dtype"] == "int8"), spec
    ops, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    floats = Counter(op.code for op in ops if tensors[op.outputs[0]].dtype == "float32")
    # no float island, except int8 HARD_SWISH, which LiteRT's XNNPACK does not take
    assert floats == (Counter({"DEQUANTIZE": 6, "HARD_SWISH": 6}) if "mobilenet" in model else Counter()), floats
    for op in ops:
        if op.code in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"):
            weights = tensors[op.inputs[1]]
            bias = tensors[op.inputs[3] if op.code == "TRANSPOSE_CONV" else op.inputs[2]]
            assert weights.dtype == "int8" and bias.dtype == "int32"
            assert op.version == {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 3, "FULLY_CONNECTED": 4}[op.code]
        if op.code in ("TANH", "CONCATENATION", "ADD", "PAD"):
            assert op.version == 2
    gen = Generator.open(tmp_path / "b")
    assert gen.self_test()["pass"]
    labelled = {"label": 3} if any(s.role == "label" for s in gen.inputs) else {}
    image = gen.generate(seed=1, **labelled) if any(s.role == "latent" for s in gen.inputs) else None
    assert image is None or image.dtype == np.uint8


def _ort_qdq(tmp_path: Path, source: Path) -> Path:
    """The QDQ form the project's quantize pass produces, made directly with onnxruntime.quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = Graph.load(source)
    feeds = sample_feeds(graph.inputs, list(range(16)))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(16)]

        def get_next(self):
            return self.items.pop() if self.items else None

    clean, pre, out = tmp_path / "clean.onnx", tmp_path / "pre.onnx", tmp_path / "qdq.onnx"
    graph.save(clean)
    quant_pre_process(str(clean), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return out


def test_int8_takes_every_grid_from_the_qdq_graph(tmp_path):
    source = Path(__file__).parent / "data" / "families" / "pix2pix_unet__legacy_b1.onnx"
    qdq_path = _ort_qdq(tmp_path, source)
    qdq = onnx.load(str(qdq_path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    grids = {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]])) for n in qdq.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    out = tmp_path / "staged"
    out.mkdir()
    compiled = tflite_compile.compile(Graph.load(qdq_path), targets.load("x86-litert"), "int8", out)
    _, tensors = read_model((out / "model.tflite").read_bytes())
    checked = [t for t in tensors if t.name in grids and t.dtype == "int8"]
    for t in checked:
        assert (np.float32(t.quant.scale[0]), t.quant.zero_point[0]) == (np.float32(grids[t.name][0]), grids[t.name][1])
    assert len(checked) >= 15  # the input and every conv / activation / concat output
    first = compiled["session"]["inputs"][0]["quant"]
    assert (first["scale"][0], first["zero_point"][0]) == pytest.approx(grids["input.1"])
    # the Tanh output takes TFLite's fixed int8 grid (1/128, 0): its range is the op's, not calibrated
    assert compiled["session"]["outputs"][0]["quant"] == {"scale": [1 / 128], "zero_point": [0]}


def test_device_targets_build_here_and_say_they_were_verified_on_the_host(tmp_path, cgen_path):
    for name in ("rpi4-litert", "rpi5-litert"):
        target = targets.load(name)
        assert target.arch == "aarch64" and target.backend == "tflite" and "int8" in target.precisions
        result = build(cgen_path, name, tmp_path / name)
        assert result.manifest["precision"] == "int8" and result.fidelity["psnr_db"] >= 30
        assert result.fidelity["ran_on"].startswith("build host fallback (needs an aarch64 device")
    assert targets.load("rpi4-litert").threads == 4
    ok, why = targets.runs_here(targets.load("x86-litert"))
    assert ok and why.startswith("ai-edge-litert ")


def test_coral_target_fails_clearly_without_edgetpu_compiler(tmp_path, cgen_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler here
    with pytest.raises(ToolNotFoundError, match=r"edgetpu_compiler.*apt-get install edgetpu-compiler.*"
                                                r"Edge TPU: \d+/\d+ ops would map"):
        build(cgen_path, "coral-edgetpu", tmp_path / "coral")
    assert not (tmp_path / "coral").exists()


def test_unsupported_op_names_node_and_op_and_shows_in_inspect(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="stem", pads=[1, 1, 1, 1]),
         helper.make_node("Erf", ["c"], ["y"], name="the_erf")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.numpy_helper.from_array(np.ones((3, 3, 3, 3), np.float32), "w")])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    missing = tflite_compile.unsupported_nodes(Graph.load(path), targets.load("x86-litert"))
    assert missing == [("the_erf", "Erf", "no TFLite lowering for this op")]
    with pytest.raises(UnsupportedOpError, match=r"node 'the_erf' \(op Erf\)"):
        build(path, "x86-litert", tmp_path / "b")
    report = inspect_model(str(path))
    for name in ("x86-litert", "rpi4-litert", "coral-edgetpu"):
        assert report["targets"][name]["unsupported"][0]["node"] == "the_erf"


def test_grouped_conv_runs_as_one_int8_conv_per_group(tmp_path):
    """A grouped conv that is not depthwise (CARN, ResNeXt) has no TFLite builtin: each group is a CONV_2D on
    a slice of the input, every one int8 with its own weights' scales, concatenated on the output grid."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="stem", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["g"], name="grouped", group=4, pads=[1, 1, 1, 1]),
         helper.make_node("Tanh", ["g"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
         for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 2, 3, 3)), ("b2", (8,)))])
    path = tmp_path / "grouped.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert tflite_compile.unsupported_nodes(Graph.load(path), targets.load("x86-litert")) == []
    result = build(path, "x86-litert", tmp_path / "b", precision="int8", samples=3, calibration_count=8)
    assert result.fidelity["psnr_db"] >= 35, result.fidelity
    ops, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    convs = [op for op in ops if op.code == "CONV_2D"]
    assert len(convs) == 5 and all(tensors[op.inputs[0]].dtype == "int8" for op in convs)


def test_int8_compile_needs_the_qdq_graph(tmp_path, cgen_path):
    with pytest.raises(BuildError, match="QDQ"):
        tflite_compile.compile(Graph.load(cgen_path), targets.load("x86-litert"), "int8", tmp_path)


def test_static_shape_mismatch_is_a_request_error(tmp_path):
    model = Path(__file__).parent / "data" / "families" / "espcn__legacy_dyn.onnx"
    build(model, "x86-litert", tmp_path / "b")  # default 64x64
    gen = Generator.open(tmp_path / "b")
    with pytest.raises(RequestError, match=r"built for 1x1x64x64.*give it that shape, or build "
                                           r".* --input-shape input=1x1x32x32"):
        gen.run({"input": np.zeros((1, 1, 32, 32), np.float32)})


def test_a_bundle_built_at_a_batch_runs_any_number_of_samples(tmp_path):
    """Built with --input-shape input=2x1x32x32, the build's own batch-1 latency run failed ("built for 2x...")."""
    model = Path(__file__).parent / "data" / "families" / "espcn__legacy_dyn.onnx"
    build(model, "x86-litert", tmp_path / "b", graph_options={"input_shapes": {"input": [2, 1, 32, 32]}})
    gen = Generator.open(tmp_path / "b")
    samples = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    together = gen.run({"input": samples})["output"]
    assert together.shape == (3, 1, 96, 96)
    np.testing.assert_array_equal(together[2:], gen.run({"input": samples[2:]})["output"])


def test_unknown_runtime_is_refused(tmp_path, cgen_path, monkeypatch):
    build(cgen_path, "x86-litert", tmp_path / "b")
    monkeypatch.setenv("EDGEGEN_TFLITE_RUNTIME", "tensorflow")
    with pytest.raises(BackendUnavailableError, match="unknown TFLite runtime 'tensorflow'"):
        Generator.open(tmp_path / "b")


def test_conditional_generator_int8_generates(tmp_path):
    path = tmp_path / "cgen.onnx"
    onnx.save(conditional_generator(), str(path))
    result = build(path, "x86-litert", tmp_path / "b", precision="int8")
    gen = Generator.open(tmp_path / "b")
    image = gen.generate(seed=3, label=7)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and result.fidelity["psnr_db"] >= 30
    np.testing.assert_array_equal(image, gen.generate(seed=3, label=7))


def _lowered_for_each_delegate(tmp_path: Path, qdq: Graph) -> tuple[dict, dict]:
    """{delegate: Counter of its int8 lowering's ops}, {delegate: its outputs on two spec inputs, run in LiteRT}."""
    from edgegen.backends.tflite.lower import lower
    from edgegen.backends.tflite.prepare import prepare
    from edgegen.backends.tflite.session import Session

    feeds = sample_feeds(qdq.inputs, [1, 2])
    ops, results = {}, {}
    for delegate in ("xnnpack", "edgetpu"):
        out = tmp_path / delegate
        out.mkdir()
        lowered = lower(prepare(qdq), "int8", delegate)
        ops[delegate] = Counter(r.code for r in lowered.builder.records)
        (out / "model.tflite").write_bytes(lowered.builder.serialize("test"))
        cfg = {"entry": "model.tflite", "inputs": lowered.inputs, "outputs": lowered.outputs}
        results[delegate] = Session(out, cfg, 1).run(feeds)
    return ops, results


def _edgetpu_report(qdq: Graph) -> dict:
    """The Edge TPU compatibility report of the graph's Edge TPU lowering, as a build writes it."""
    from edgegen.backends.tflite import edgetpu
    from edgegen.backends.tflite.lower import lower
    from edgegen.backends.tflite.prepare import prepare

    lowered = lower(prepare(qdq), "int8", "edgetpu")
    lowered.builder.reorder(edgetpu.schedule(*lowered.builder.view()))
    return edgetpu.compatibility(lowered.builder.serialize("test"), [r.origin for r in lowered.builder.records])


def test_int8_strided_transposed_conv_is_a_subpixel_conv_for_xnnpack_and_stays_for_the_edge_tpu(tmp_path):
    """XNNPACK's TRANSPOSE_CONV is slow, so x86/Pi targets get CONV_2D + DEPTH_TO_SPACE with the same
    integers (same numbers); the Edge TPU maps TRANSPOSE_CONV and not DEPTH_TO_SPACE, so it keeps it."""
    model = Path(__file__).parent / "data" / "families" / "dcgan__legacy_b1.onnx"
    ops, results = _lowered_for_each_delegate(tmp_path, Graph.load(_ort_qdq(tmp_path, model)))
    for delegate, expected in (("xnnpack", {"TRANSPOSE_CONV": 1, "DEPTH_TO_SPACE": 4, "CONV_2D": 4}),
                               ("edgetpu", {"TRANSPOSE_CONV": 5, "DEPTH_TO_SPACE": 0, "CONV_2D": 0})):
        assert {k: ops[delegate].get(k, 0) for k in expected} == expected, (delegate, dict(ops[delegate]))
    [name] = results["xnnpack"]
    assert np.abs(results["xnnpack"][name] - results["edgetpu"][name]).max() <= 2 / 128  # +-1 LSB rounding


@pytest.mark.parametrize("family, replaced, each, min_psnr", [
    ("mobilenet_resnet__legacy_b1", "HARD_SWISH", {"ADD": 1, "MUL": 2}, 40),  # x * clip(x + 3, 0, 6) / 6
    ("pix2pix_unet__legacy_b1", "LEAKY_RELU", {"PRELU": 1}, 40),
    ("espcn__legacy_b1", "DEPTH_TO_SPACE", {"TRANSPOSE_CONV": 1}, 200)])  # one-hot weights: exact
def test_int8_ops_the_edge_tpu_lacks_are_written_with_ops_it_maps(tmp_path, family, replaced, each, min_psnr):
    """The Edge TPU has no HARD_SWISH, LEAKY_RELU or DEPTH_TO_SPACE: the Edge TPU lowering writes them
    with ops it maps, close to the XNNPACK lowering's numbers, and the whole generator would map."""
    from edgegen.metrics import psnr

    qdq = Graph.load(_ort_qdq(tmp_path, Path(__file__).parent / "data" / "families" / f"{family}.onnx"))
    ops, results = _lowered_for_each_delegate(tmp_path, qdq)
    count = ops["xnnpack"][replaced]
    assert count >= 1 and ops["edgetpu"][replaced] == 0
    for code, per_op in each.items():
        assert ops["edgetpu"][code] - ops["xnnpack"][code] == per_op * count
    [name] = results["xnnpack"]
    assert psnr(results["xnnpack"][name], results["edgetpu"][name], 2.0) >= min_psnr
    report = _edgetpu_report(qdq)
    assert report["first_fallback"] is None and report["edgetpu_ops"] + report["uncertain_ops"] == report["ops"]


def test_int8_prelu_for_the_edge_tpu_runs_in_int8(tmp_path):
    """An SRGAN-style PReLU (a slope per channel) runs in float between DEQUANTIZE and QUANTIZE for
    XNNPACK; for the Edge TPU, which maps only int8 ops, it is an int8 PRELU, its slopes on one grid."""
    from onnx import numpy_helper

    from edgegen.metrics import psnr

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.uniform(0.05, 0.4, (16, 1, 1)).astype(np.float32), "slope"),
             numpy_helper.from_array(rng.standard_normal((3, 16, 3, 3)).astype(np.float32) * 0.2, "w2")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["h", "slope"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])], inits)
    path = tmp_path / "prelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    qdq = Graph.load(_ort_qdq(tmp_path, path))
    ops, results = _lowered_for_each_delegate(tmp_path, qdq)
    assert ops["xnnpack"]["PRELU"] == ops["edgetpu"]["PRELU"] == 1
    assert ops["xnnpack"]["DEQUANTIZE"] > ops["edgetpu"]["DEQUANTIZE"]
    [name] = results["xnnpack"]
    assert psnr(results["xnnpack"][name], results["edgetpu"][name], 2.0) > 40
    report = _edgetpu_report(qdq)
    assert report["first_fallback"] is None and report["edgetpu_ops"] == report["ops"]


@pytest.mark.parametrize("weight,warned", [(0.01, True), (1.0, False)])
def test_a_narrow_sigmoid_output_on_the_fixed_int8_grid_is_warned_about(tmp_path, caplog, weight, warned):
    import logging

    from onnx import numpy_helper

    caplog.set_level(logging.WARNING)
    w = numpy_helper.from_array(np.full((3, 3, 3, 3), weight, np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
                           helper.make_node("Sigmoid", ["y"], ["out"], name="to_image")], "narrow",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-litert", tmp_path / "b", precision="int8", samples=2, calibration_count=8)
    assert ("'to_image' (Sigmoid): its calibrated output range is" in caplog.text) is warned


def test_an_output_that_repeats_another_or_passes_the_input_through_is_lowered(tmp_path):
    """`return y, y, x`: the import keeps the exporter's Identity nodes (both ends are graph tensors), and every
    LiteRT target refused the model ("no TFLite lowering for this op")."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["out"]), helper.make_node("Identity", ["out"], ["copy"]),
             helper.make_node("Identity", ["image"], ["passthrough"])]
    image = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 8, 8])  # noqa: E731
    g = helper.make_graph(nodes, "dup", [image("image")], [image("out"), image("copy"), image("passthrough")], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dup.onnx"))
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    for precision in ("fp32", "int8"):
        build(tmp_path / "dup.onnx", "x86-litert", tmp_path / precision, precision=precision)
        out = Generator.open(tmp_path / precision).run({"image": x})
        np.testing.assert_array_equal(out["copy"], out["out"])
        assert np.abs(out["passthrough"] - x).max() <= (0 if precision == "fp32" else 0.05)  # int8: the input grid


def test_the_quality_floor_scores_int8_as_litert_runs_it(tmp_path):
    """The floor search scored the QDQ graph with a float Tanh at the output, which LiteRT runs in int8 on
    its fixed 1/128 grid: a floor met in that scoring failed on the artifact, and a Sigmoid the search
    kept in float for it was int8 in the .tflite all the same."""
    source = Path(__file__).parent / "data" / "families" / "dcgan__legacy_b1.onnx"
    result = build(source, "x86-litert", tmp_path / "b", precision="int8")
    searched = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]
    assert searched == pytest.approx(result.fidelity["psnr_db"], abs=0.05)
    assert "Tanh" not in result.manifest["passes"]["quantize"]["float_ops"]  # counted as LiteRT runs it: int8
    qdq = onnx.load(str(_ort_qdq(tmp_path, source)))
    deployed = tflite_compile.int8_form(qdq)
    last = next(n for n in deployed.graph.node if n.output[0] == deployed.graph.output[0].name)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in deployed.graph.initializer}
    assert last.op_type == "DequantizeLinear" and (float(inits[last.input[1]]), int(inits[last.input[2]])) == (
        1 / 128, 0)


def test_the_quality_floor_scores_int8_as_the_qdq_graph_defines_it_not_by_onnxruntime_kernels(tmp_path):
    """An ESPCN's Tanh layers on TFLite's fixed grid: ONNX Runtime's fused int8 kernels scored that form 1.7 dB
    below the artifact it becomes (10 dB on another ESPCN export), so a floor kept layers in float for nothing;
    scored by the QDQ graph's definition, as TFLite's integer kernels compute it, the two agree."""
    source = Path(__file__).parent / "data" / "families" / "espcn__legacy_b1.onnx"
    result = build(source, "x86-litert", tmp_path / "b", precision="int8")
    searched = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]
    assert searched == pytest.approx(result.fidelity["psnr_db"], abs=0.05)


def test_a_narrow_output_tanh_on_the_fixed_grid_is_warned_once_naming_it(tmp_path, monkeypatch):
    """A Tanh the QDQ graph leaves float (the model's output) runs int8 on TFLite's fixed 1/128 grid; over a
    narrow output range that costs many dB, and the build said nothing naming it."""
    import edgegen.build as build_module

    warnings = []
    monkeypatch.setattr(build_module.log, "warning", lambda message, *args: warnings.append(message % args))
    weights = np.random.default_rng(0).normal(0, 0.02, (3, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                           helper.make_node("Tanh", ["c"], ["out"], name="narrow_tanh")], "narrow",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [onnx.numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    result = build(tmp_path / "m.onnx", "x86-litert", tmp_path / "b", precision="int8", batch_sizes=[2])
    assert result.manifest["parts"]  # a part, lowered again, does not warn again
    named = [w for w in warnings if "'narrow_tanh'" in w]
    assert len(named) == 1 and "fixed grid" in named[0] and "dB of PSNR lost on LiteRT" in named[0], warnings


def _scaled_past_float16(tmp_path: Path) -> Path:
    """conv -> x1e5 -> conv -> x1e-5 -> tanh: finite in float32; 1e5 is infinity in float16."""
    rng = np.random.default_rng(3)
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((8, 3, 3, 3)) * 0.2), ("w2", rng.standard_normal((3, 8, 3, 3)) * 0.2),
        ("up", np.array(1e5)), ("down", np.array(1e-5)))]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["a"], pads=[1] * 4),
             helper.make_node("Mul", ["a", "up"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1] * 4),
             helper.make_node("Mul", ["c", "down"], ["d"]),
             helper.make_node("Tanh", ["d"], ["out"])]
    image, out = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 16, 16]) for name in ("image", "out"))
    graph = helper.make_graph(nodes, "scaled", [image], [out], inits)
    path = tmp_path / "scaled.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_fp16_keeps_constants_past_float16s_range_in_float32_and_refuses_an_artifact_giving_nan(tmp_path, monkeypatch):
    """The 1e5 stored as float16 was infinity: the artifact gave NaN, the build stated PSNR nan and shipped it,
    and generate wrote a black image. ONNX Runtime's converter clamped it to 65504 (23.7 dB); its node is kept
    float32 now."""
    from edgegen.backends.tflite import lower

    model = _scaled_past_float16(tmp_path)
    result = build(model, "x86-litert", tmp_path / "b", precision="fp16")
    assert 40 < result.fidelity["psnr_db"] < 200
    _, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    assert any(t.dtype == "float32" and t.constant and t.data.size == 1 and t.data.max() == 1e5 for t in tensors)
    assert build(model, "x86-onnxruntime", tmp_path / "ort", precision="fp16").fidelity["psnr_db"] > 40
    monkeypatch.setattr(lower, "FLOAT16_MAX", float("inf"))  # as before: every constant stored as float16
    with pytest.raises(BuildError, match="gives NaN or infinity in 6144 of output 'out'.s 6144 values on the 8 held"):
        build(model, "x86-litert", tmp_path / "nan", precision="fp16")
    assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("side, whole", [(33, False), (32, True)])
def test_a_linear_resize_by_a_scale_that_gives_no_whole_size_is_refused_naming_it(tmp_path, side, whole):
    """ONNX maps a resize given by scales through 1/scale, TFLite's through in/out: at 33 x 1.5 (49 rows) every
    pixel moved, the fp32 build was refused as 'report this model' and int8/fp16 builds shipped it."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="stem", pads=[1, 1, 1, 1]),
         helper.make_node("Resize", ["c", "", "scales"], ["y"], name="up15", mode="linear")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, side * 3 // 2, side * 3 // 2])],
        [onnx.numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
         onnx.numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales")])
    path = tmp_path / "up15.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if whole:
        assert build(path, "x86-litert", tmp_path / "b").fidelity["max_abs"] < 1e-4
        return
    for precision in ("fp32", "int8"):
        with pytest.raises(UnsupportedOpError, match=r"node 'up15' \(op Resize\).*not a whole size.*size=\(H, W\)"):
            build(path, "x86-litert", tmp_path / precision, precision=precision)


def test_an_int32_label_of_shape_n_1_cast_and_flattened_before_its_embedding(tmp_path):
    """PyTorch's emb(label.long().view(-1)) on an int32 [N, 1] label: the flattening RESHAPE was written with a
    float output, and the GATHER it fed would not load ('Positions of type FLOAT32 are not supported')."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["label"], ["long"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["long", "flat"], ["index"]),
             helper.make_node("Gather", ["table", "index"], ["row"], axis=0),
             helper.make_node("Reshape", ["row", "map"], ["grid"]),
             helper.make_node("Conv", ["grid", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["conv"], ["image"])]
    inits = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             onnx.numpy_helper.from_array(rng.standard_normal((7, 48)).astype(np.float32), "table"),
             onnx.numpy_helper.from_array(np.array([-1, 3, 4, 4], np.int64), "map"),
             onnx.numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "labels", [helper.make_tensor_value_info("label", TensorProto.INT32, ["N", 1])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    result = build(tmp_path / "m.onnx", "x86-litert", tmp_path / "b")
    assert result.fidelity["max_abs"] < 1e-5
    np.testing.assert_array_equal(Generator.open(tmp_path / "b").generate(label=5),
                                  Generator.open(tmp_path / "b").generate(label=5))


@pytest.mark.parametrize("dims", [[12, 10], ["h", "w"]])
def test_batch_sizes_on_a_dynamic_batch_model_say_how_a_static_artifact_takes_a_batch(tmp_path, dims):
    """A dynamic batch runs as batch-1 calls on LiteRT (static shapes): the refusal said every batch size
    "already runs in one call"; it names the --input-shape that compiles a batch of 4, which then builds."""
    weights = np.random.default_rng(0).normal(0, 0.2, (3, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                           helper.make_node("Sigmoid", ["c"], ["out"])], "dyn",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, *dims])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, *dims])],
                          [onnx.numpy_helper.from_array(weights, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="edgegen.default_size", value="12x10")  # the size a dynamic one is built at
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(BuildError, match=r"static shapes.*batch-1 calls.*--input-shape image=4x3x12x10 ") as refused:
        build(tmp_path / "m.onnx", "x86-litert", tmp_path / "b", batch_sizes=[1, 4])  # a shape the CLI takes
    assert "already runs in one call" not in str(refused.value) and not (tmp_path / "b").exists()
    result = build(tmp_path / "m.onnx", "x86-litert", tmp_path / "b",
                   graph_options={"input_shapes": {"image": [4, 3, 12, 10]}})
    assert result.manifest["model"]["inputs"][0]["default_shape"] == [4, 3, 12, 10]
