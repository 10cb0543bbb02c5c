"""The reports of a TFLite build: XNNPACK delegation, the Edge TPU compatibility report (on any
host) and the edgetpu_compiler wrapper (its command line and its log format)."""

import json
from pathlib import Path

import pytest

from edgegen.backends.tflite import edgetpu
from edgegen.backends.tflite.flatbuffer import read_model
from edgegen.build import build
from edgegen.runtime import Generator
from edgegen.toolchains import ToolNotFoundError
from edgegen.toolchains import edgetpu as compiler

FAMILIES = Path(__file__).parent / "data" / "families"
LOGS = Path(__file__).parent / "data" / "edgetpu"


def test_xnnpack_report_counts_partitions_around_ops_it_does_not_take(tmp_path, cgen_path):
    """XNNPACK takes no GATHER: the embedding lookup runs on TFLite's kernels, the rest in 2 partitions."""
    build(cgen_path, "x86-litert", tmp_path / "b")
    report = json.loads((tmp_path / "b" / "reports" / "xnnpack.json").read_text())
    ops = read_model((tmp_path / "b" / "model.tflite").read_bytes())[0]
    assert report["ops"] == len(ops) and report["delegate"] == "XNNPACK"
    assert report["cpu_ops"] == {"GATHER": 1} and report["delegated"] == len(ops) - 1
    assert report["partitions"] == 2 and report["by_op"]["CONV_2D"] == {"delegated": 2, "cpu": 0}
    session = Generator.open(tmp_path / "b").session
    assert session.delegation() == report  # the device half reports the same from its own interpreter


def test_int8_hardswish_stays_inside_xnnpack(tmp_path):
    """LiteRT's XNNPACK takes no int8 HARD_SWISH; it runs between DEQUANTIZE/QUANTIZE inside the delegate."""
    build(FAMILIES / "mobilenet_resnet__legacy_b1.onnx", "x86-litert", tmp_path / "b", precision="int8")
    report = json.loads((tmp_path / "b" / "reports" / "xnnpack.json").read_text())
    assert report["partitions"] == 1 and report["cpu_ops"] == {}
    assert report["by_op"]["HARD_SWISH"] == {"delegated": 6, "cpu": 0}


def test_reflect_pads_are_sliced_so_xnnpack_takes_the_whole_cyclegan(tmp_path):
    build(FAMILIES / "cyclegan_resnet__legacy_b1.onnx", "x86-litert", tmp_path / "b")
    report = json.loads((tmp_path / "b" / "reports" / "xnnpack.json").read_text())
    assert report["partitions"] == 1 and report["cpu_ops"] == {} and "MIRROR_PAD" not in report["by_op"]


def test_edgetpu_report_for_a_model_that_maps_entirely(tmp_path):
    result = build(FAMILIES / "dcgan__legacy_b1.onnx", "x86-litert", tmp_path / "b", precision="int8")
    report = json.loads((tmp_path / "b" / "reports" / "edgetpu.json").read_text())
    assert report["first_fallback"] is None and report["edgetpu_ops"] == report["ops"] == 6
    assert report["by_op"] == {"TANH": {"edgetpu": 1, "uncertain": 0, "cpu": 0},
                               "TRANSPOSE_CONV": {"edgetpu": 5, "uncertain": 0, "cpu": 0}}
    assert result.manifest["session"]["edgetpu"] == "Edge TPU: all 6 ops would map (one Edge TPU subgraph)"


def test_edgetpu_report_names_the_first_fallback_and_schedules_it_late(tmp_path, cgen_path):
    """A conditional generator's embedding lookup (GATHER) cannot map; the latent-only trunk is
    scheduled before it so that the trunk still maps."""
    build(cgen_path, "x86-litert", tmp_path / "b", precision="int8")
    report = json.loads((tmp_path / "b" / "reports" / "edgetpu.json").read_text())
    first = report["first_fallback"]
    assert first["op"] == "GATHER" and first["node"] and "not in the Edge TPU operator set" in first["why"]
    # the trunk (FULLY_CONNECTED, RESHAPE, TRANSPOSE_CONV, and the requantization before the concat) maps
    assert first["index"] == report["edgetpu_ops"] == 4 and report["cpu_ops"] == report["ops"] - 4
    # the trunk's maps; the other is the head's pixel shuffle (its to-RGB layer runs strided: narrow_conv_strided),
    # which the Edge TPU form writes as a TRANSPOSE_CONV, on the CPU after the GATHER
    assert report["by_op"]["TRANSPOSE_CONV"] == {"edgetpu": 1, "uncertain": 0, "cpu": 1}
    ops, _ = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    assert ops[0].code == "GATHER"  # in the graph's own order (the XNNPACK artifact) nothing would have mapped


def test_edgetpu_rules_on_tensor_types_and_ranks(tmp_path):
    """A float model maps nothing: every tensor must be int8."""
    build(FAMILIES / "dcgan__legacy_b1.onnx", "x86-litert", tmp_path / "b")
    ops, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    why = edgetpu.why_not(ops[0], tensors)
    assert "float32" in why and "int8/uint8 tensors only" in why
    report = edgetpu.compatibility((tmp_path / "b" / "model.tflite").read_bytes(), [])
    assert report["edgetpu_ops"] == 0 and sum(report["unmappable_by_op"].values()) == report["ops"] == len(ops)


def test_compiler_command_line(tmp_path):
    cmd = compiler.command("/usr/bin/edgetpu_compiler", tmp_path / "model.tflite", tmp_path / "out")
    assert cmd == ["/usr/bin/edgetpu_compiler", "--out_dir", str(tmp_path / "out"), "--show_operations",
                   "--timeout_sec", "180", str(tmp_path / "model.tflite")]


def test_compiler_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compiler.find() is None
    with pytest.raises(ToolNotFoundError, match="edgetpu_compiler is not on PATH.*coral.ai/docs/edgetpu/compiler"):
        compiler.compile_model(tmp_path / "model.tflite", tmp_path / "out")


def test_parse_partial_mapping_console_and_log():
    console = compiler.parse_log((LOGS / "partial_stdout.txt").read_text())
    assert console.version == "16.0.384591198" and console.subgraphs == 1
    assert (console.total_ops, console.edgetpu_ops, console.cpu_ops) == (56, 19, 37)
    assert console.on_chip_used_bytes == round(612.25 * 1024) and console.off_chip_bytes == 0
    assert console.on_chip_remaining_bytes == round(7.03 * 1024 ** 2)
    assert console.operators[0] == {"op": "GATHER", "count": 1, "status": "Operation not supported"}
    log = compiler.parse_log((LOGS / "partial_edgetpu.log").read_text())
    mapped = sum(r["count"] for r in log.operators if r["status"] == compiler.MAPPED)
    assert mapped == console.edgetpu_ops and sum(r["count"] for r in log.operators) == console.total_ops


def test_parse_fully_mapped_console():
    report = compiler.parse_log((LOGS / "mapped_stdout.txt").read_text())
    assert (report.total_ops, report.edgetpu_ops, report.cpu_ops) == (7, 7, 0)
    assert report.input_model == "model.tflite" and report.output_model == "model_edgetpu.tflite"


def test_parse_size_units():
    assert compiler.parse_size("0.00B") == 0 and compiler.parse_size("1.50KiB") == 1536
    with pytest.raises(ValueError):
        compiler.parse_size("12 parsecs")


@pytest.fixture
def stand_in_edgetpu_compiler(monkeypatch):
    """Coral's compiler cannot be installed here: a stand-in that copies the model as the compiled one."""
    from edgegen.backends.tflite import compile as tflite_compile

    def compile_model(model, out, compat, source=None):
        out.write_bytes(model.read_bytes())
        out.with_suffix(".log").write_text("stand-in\n")
        return {"version": "stand-in", "log": out.with_suffix(".log").name}

    monkeypatch.setattr(tflite_compile.edgetpu, "compile_model", compile_model)


def _latent_clamp_decoder(path: Path) -> Path:
    """A TAESD-style decoder's start: `tanh(latent / 3) * 3`, then convolutions and a sigmoid."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.float32(3), "three"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (3, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Div", ["latent", "three"], ["d"], name="clamp_div"),
             helper.make_node("Tanh", ["d"], ["t"]), helper.make_node("Mul", ["t", "three"], ["m"]),
             helper.make_node("Conv", ["m", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["o"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["o"], ["image"])]
    graph = helper.make_graph(nodes, "clamp",
                              [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_latent_clamp_maps_to_the_edge_tpu_from_its_first_op(tmp_path, stand_in_edgetpu_compiler, caplog):
    """The latent's `/ 3`, which the CPU targets keep float, split the Edge TPU graph at op 0 (0 of 29 ops of a
    TAESD-style decoder mapped, without a word): for the Edge TPU it is a Mul, quantized with the input."""
    import logging

    caplog.set_level(logging.WARNING)
    model = _latent_clamp_decoder(tmp_path / "clamp.onnx")
    result = build(model, "coral-edgetpu", tmp_path / "coral")
    assert result.manifest["session"]["edgetpu"].startswith("Edge TPU: all "), result.manifest["session"]["edgetpu"]
    assert result.manifest["passes"]["lowered"]["latent_arithmetic"] == [
        {"node": "clamp_div", "from": "Div"}]
    assert not [r for r in caplog.records if "would map" in r.getMessage()]
    cpu = build(model, "x86-litert", tmp_path / "cpu", precision="int8")  # the CPU targets keep it float
    assert "latent_arithmetic" not in cpu.manifest["passes"].get("lowered", {})


def test_an_edge_tpu_graph_that_splits_is_warned_of(tmp_path, cgen_path, stand_in_edgetpu_compiler, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    build(cgen_path, "coral-edgetpu", tmp_path / "coral")
    warned = [r.getMessage() for r in caplog.records if "ops would map" in r.getMessage()]
    assert len(warned) == 1 and "GATHER" in warned[0] and "its CPU" in warned[0], warned
    from edgegen.emulate.device import emulate  # its roofline is the Edge TPU's alone, and it says so

    estimate = emulate(tmp_path / "coral", runs=1, aarch64=False)["estimate"]
    assert estimate["uncounted"].startswith("only ") and "the device's CPU runs the rest" in estimate["uncounted"]


def _interpreter_costs(model: Path) -> tuple[int, int]:
    """(MACs, constant buffer bytes) of a .tflite counted apart from edgegen: ai-edge-litert's op and tensor details
    (its shapes) and the schema's buffers."""
    import math

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(model),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    shape = {t["index"]: [int(d) for d in t["shape"]] for t in it.get_tensor_details()}
    macs = 0
    for op in it._get_ops_details():
        out, w = math.prod(shape[op["outputs"][0]]), shape[op["inputs"][1]] if len(op["inputs"]) > 1 else []
        macs += {"CONV_2D": lambda: out * math.prod(w[1:]), "DEPTHWISE_CONV_2D": lambda: out * w[1] * w[2],
                 "TRANSPOSE_CONV": lambda: math.prod(shape[op["inputs"][2]]) * math.prod(w[:3]),
                 "FULLY_CONNECTED": lambda: out * w[1]}.get(op["op_name"], lambda: 0)()
    flat = schema.Model.GetRootAsModel(model.read_bytes(), 0)
    return macs, sum(flat.Buffers(i).DataLength() for i in range(flat.BuffersLength()))


def test_the_cost_of_a_sub_pixel_conv_transpose_is_the_artifacts(tmp_path):
    """On XNNPACK a strided ConvTranspose is a sub-pixel CONV_2D (every phase over the union of their taps) +
    DEPTH_TO_SPACE: a DCGAN's .tflite computes 2.2x the ONNX graph's MACs and stores 1.2x its weight bytes, and
    the cost line, the manifest and emulate's roofline gave the graph's alone."""
    from edgegen.emulate import roofline
    from edgegen.report import render_build_report
    from edgegen.targets import load

    result = build(FAMILIES / "dcgan__legacy_b1.onnx", "x86-litert", tmp_path / "b")
    model, own = result.manifest["model"], result.manifest["session"]["artifact"]
    assert (own["macs"], own["param_bytes"]) == _interpreter_costs(tmp_path / "b" / "model.tflite")
    assert own["macs"] > 2 * model["macs"] and own["param_bytes"] > 1.15 * model["param_bytes"]
    assert model["macs"] == model["source_macs"]  # model.macs stays the graph's
    cost = next(line for line in render_build_report(result.manifest, tmp_path / "b").splitlines()
                if line.strip().startswith("cost"))
    assert f"the tflite artifact computes {own['macs'] / 1e6:.2f} MMACs and stores " \
        f"{own['param_bytes'] / 1e3:.0f} KB as lowered" in cost, cost
    estimate = roofline.estimate(result.manifest, load("x86-litert"))
    assert estimate["ops"] == 2 * own["macs"] and estimate["costs_from"].startswith("the artifact")
    same = {**result.manifest, "session": {**result.manifest["session"],
                                           "artifact": {k: round(model[k] * 1.04) for k in ("macs", "param_bytes")}}}
    assert "artifact computes" not in render_build_report(same, tmp_path / "b")  # within a few percent: not said


def test_a_kept_transpose_conv_counts_the_graphs_macs():
    """The Edge TPU form keeps TRANSPOSE_CONV (it has no DEPTH_TO_SPACE): the same MACs as the graph."""
    from edgegen.backends.tflite.cost import artifact_cost
    from edgegen.backends.tflite.edgetpu import schedule
    from edgegen.backends.tflite.lower import lower
    from edgegen.backends.tflite.prepare import prepare
    from edgegen.graph import Graph

    graph = Graph.load(FAMILIES / "dcgan__legacy_b1.onnx")
    lowered = lower(prepare(graph), "fp32", "edgetpu")
    lowered.builder.reorder(schedule(*lowered.builder.view()))
    own = artifact_cost(lowered.builder.serialize("edgetpu"))
    assert own["macs"] == sum(c.macs for c in graph.node_costs())


def test_the_artifact_note_follows_the_macs_not_an_int8_graphs_scale_bytes():
    """An int8 graph's parameter bytes count its per-channel scales and zero points, which a .tflite keeps in
    its quantization records: 25% apart on a MobileNet-style model with no rewrite, and every int8 LiteRT build
    printed the note. The MACs decide."""
    from edgegen.report import _artifact_note

    manifest = {"backend": "tflite", "model": {"macs": 1_000_000, "param_bytes": 56_762},
                "session": {"artifact": {"macs": 1_000_000, "param_bytes": 42_368}}}
    assert _artifact_note(manifest) == ""
    manifest["session"]["artifact"]["macs"] = 2_200_000
    assert "computes 2.20 MMACs and stores 42 KB as lowered" in _artifact_note(manifest)
