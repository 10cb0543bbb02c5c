"""The Edge TPU path with a stand-in `edgetpu_compiler` that prints compiler 16's formats (FAKE_MODE picks
the case): a missing log, an unreadable summary, the compiler's own counts, its error paths; the
compatibility rules, the roofline over the USB link, `bench --host-fallback` and `inspect`."""

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from edgegen import targets
from edgegen.backends.tflite import edgetpu
from edgegen.build import build
from edgegen.toolchains import ToolFailedError

FAMILIES = Path(__file__).parent / "data" / "families"
ESPCN = FAMILIES / "espcn__legacy_dyn.onnx"

FAKE = '''#!{python}
"""edgetpu_compiler 16 stand-in: copies the model; FAKE_MODE = ok | partial | nolog | weird | notquant."""
import os, shutil, sys
from pathlib import Path
args, out = sys.argv[1:], "."
model = args[-1]
if "--out_dir" in args:
    out = args[args.index("--out_dir") + 1]
mode, base = os.environ.get("FAKE_MODE", "ok"), Path(model).stem
print("Edge TPU Compiler version 16.0.384591198")
if mode == "notquant":
    print(f"Invalid model: {{model}}")
    print("Model not quantized")
    sys.exit(1)
shutil.copy(model, f"{{out}}/{{base}}_edgetpu.tflite")
if mode == "weird":
    print("Edge TPU compilation finished: 38 operations, 38 on Edge TPU")
    Path(f"{{out}}/{{base}}_edgetpu.log").write_text("Operations\\nCONV_2D: 12 (Edge TPU)\\n")
    sys.exit(0)
print(f"""
Model compiled successfully in 1124 ms.

Input model: {{model}}
Input size: 3.03MiB
Output model: {{out}}/{{base}}_edgetpu.tflite
Output size: 3.33MiB
On-chip memory used for caching model parameters: 6.91MiB
On-chip memory remaining for caching model parameters: 1.02MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Operation log: {{out}}/{{base}}_edgetpu.log""")
if mode == "partial":
    print("Number of operations that will run on Edge TPU: 2")
    print("Number of operations that will run on CPU: 4")
    table = ("TRANSPOSE_CONV                 2          Mapped to Edge TPU\\n"
             "TRANSPOSE_CONV                 3          More than one subgraph is not supported\\n"
             "TANH                           1          More than one subgraph is not supported")
else:
    table = ("TRANSPOSE_CONV                 5          Mapped to Edge TPU\\n"
             "TANH                           1          Mapped to Edge TPU")
print("\\nOperator                       Count      Status\\n")
print(table)
if mode != "nolog":
    header = "Operator                       Count      Status"
    Path(f"{{out}}/{{base}}_edgetpu.log").write_text(
        f"Edge TPU Compiler version 16.0.384591198\\n\\n{{header}}\\n\\n{{table}}\\n")
'''


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """Puts the stand-in on PATH; returns a function that sets FAKE_MODE."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    tool = bin_dir / "edgetpu_compiler"
    tool.write_text(FAKE.format(python=sys.executable))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda mode: monkeypatch.setenv("FAKE_MODE", mode)


@pytest.fixture(scope="module")
def espcn_int8(tmp_path_factory) -> Path:
    """The ESPCN family model built int8 for x86-litert: its model.tflite, the one an Edge TPU build compiles."""
    out = tmp_path_factory.mktemp("edgetpu") / "espcn-int8"
    build(ESPCN, "x86-litert", out, precision="int8")
    return out


def _compile(bundle: Path, tmp_path: Path, source: str = "user/model.onnx", work: str = "work") -> dict:
    work = tmp_path / work
    work.mkdir()
    (work / "model.tflite").write_bytes((bundle / "model.tflite").read_bytes())
    compat = json.loads((bundle / "reports" / "edgetpu.json").read_text())
    return edgetpu.compile_model(work / "model.tflite", work / "model_edgetpu.tflite", compat, source)


def test_a_compiler_that_writes_no_log_is_not_fatal(espcn_int8, tmp_path, fake_compiler):
    fake_compiler("nolog")
    report = _compile(espcn_int8, tmp_path)
    assert report["log"] is None and not (tmp_path / "work" / "model_edgetpu.log").exists()
    assert (tmp_path / "work" / "model_edgetpu.tflite").is_file() and not (tmp_path / "work" / ".edgetpu").exists()
    assert report["operators"] == [{"op": "TRANSPOSE_CONV", "count": 5, "status": "Mapped to Edge TPU"},
                                   {"op": "TANH", "count": 1, "status": "Mapped to Edge TPU"}]  # the console's table


def test_report_paths_are_the_bundles_and_errors_name_the_users_model(espcn_int8, tmp_path, fake_compiler):
    fake_compiler("ok")
    report = _compile(espcn_int8, tmp_path)
    assert (report["input_model"], report["output_model"]) == ("model.tflite", "model_edgetpu.tflite")
    assert report["unknown"] == [] and (report["edgetpu_ops"], report["cpu_ops"]) == (6, 0)
    fake_compiler("notquant")
    with pytest.raises(ToolFailedError) as err:
        _compile(espcn_int8, tmp_path, work="again")
    assert "failed on the int8 model.tflite built from user/model.onnx (exit 1)" in str(err.value)
    assert str(tmp_path) not in str(err.value) and "Invalid model: model.tflite" in str(err.value)


def test_a_compiler_that_cannot_be_executed_is_a_clear_error(espcn_int8, tmp_path, monkeypatch):
    bin_dir = tmp_path / "badbin"
    bin_dir.mkdir()
    tool = bin_dir / "edgetpu_compiler"
    tool.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(64))  # an executable that is no binary for this host
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ToolFailedError, match=r"cannot execute edgetpu_compiler at .*badbin/edgetpu_compiler: "
                                              r"Exec format error; the compiler runs on x86-64 Linux only.*apt") as err:
        _compile(espcn_int8, tmp_path)
    # it ends as the not-found case does (the README): with what the compatibility check on this host says
    compat = json.loads((espcn_int8 / "reports" / "edgetpu.json").read_text())
    assert str(err.value).endswith(f"The compatibility check on this host says: {edgetpu.summary(compat)}")


def test_an_unreadable_compiler_summary_is_a_warning_and_unknown(tmp_path, fake_compiler, caplog):
    fake_compiler("weird")
    caplog.set_level(logging.WARNING)
    result = build(ESPCN, "coral-edgetpu", tmp_path / "b")
    report = json.loads((tmp_path / "b" / "reports" / "edgetpu_compiler.json").read_text())
    assert report["unknown"] == ["subgraphs", "total_ops", "edgetpu_ops", "cpu_ops"] and report["total_ops"] is None
    warned = [r.getMessage() for r in caplog.records if "not in the format edgegen reads" in r.getMessage()]
    assert len(warned) == 1 and "edgetpu_compiler 16.0.384591198" in warned[0], warned
    assert "38 operations" in warned[0]  # the console's last lines
    assert result.manifest["session"]["edgetpu"].startswith("Edge TPU: all 6 ops would map")  # the prediction


def test_the_compilers_counts_are_what_the_bundle_states(tmp_path, fake_compiler, caplog):
    from edgegen.emulate.device import emulate
    from edgegen.emulate.render import emulation

    fake_compiler("partial")
    caplog.set_level(logging.WARNING)
    result = build(ESPCN, "coral-edgetpu", tmp_path / "b")
    said = result.manifest["session"]["edgetpu"]
    assert said.startswith("Edge TPU (edgetpu_compiler 16.0.384591198): 2/6 ops run on the Edge TPU, 4 on the CPU")
    assert "edgegen's rules predicted: all 6 ops would map" in said
    assert result.manifest["session"]["edgetpu_compiler"]["cpu_ops"] == 4
    warned = [r.getMessage() for r in caplog.records if "far slower" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(said), warned
    report = emulate(tmp_path / "b", runs=1, aarch64=False)
    text = emulation(report)
    assert f"op support   {said}" in text
    assert "the compiler maps 2/6 ops to the Edge TPU; the device's CPU runs the other 4" in text


def test_emulate_states_the_compilers_counts_where_the_rules_predict_a_split(tmp_path, fake_compiler):
    """The rules' predicted split overwrote the estimate's caveat with the prediction's counts."""
    from edgegen.emulate.device import emulate

    fake_compiler("partial")
    build("zoo:glyphtiny", "coral-edgetpu", tmp_path / "b")
    report = emulate(tmp_path / "b", runs=1, aarch64=False)
    assert report["op_support"]["first_fallback"]  # the rules split it at the label's GATHER
    assert report["estimate"]["uncounted"].startswith("the compiler maps 2/6 ops to the Edge TPU")


def test_resizes_are_reported_as_may_not_map():
    """Coral: RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR "may not be mapped" depending on input/output size."""
    from edgegen.backends.tflite.compile import edgetpu_preview
    from edgegen.graph import Graph

    report = edgetpu_preview(Graph.load(str(FAMILIES / "mobilenet_resnet__legacy_b1.onnx")),
                             targets.load("coral-edgetpu"))
    assert report["by_op"]["RESIZE_BILINEAR"]["edgetpu"] == 0 and report["uncertain_ops"] > 0
    assert report["edgetpu_ops"] + report["uncertain_ops"] + report["cpu_ops"] == report["ops"]
    line = edgetpu.summary(report)
    assert "may not map: the compiler decides by input/output size" in line and "all" not in line.split(";")[0]


def test_the_rank_rule_names_a_batch_over_one():
    from edgegen.backends.tflite.compile import edgetpu_preview
    from edgegen.graph import Graph

    report = edgetpu_preview(Graph.load(str(ESPCN), input_shapes={"input": [2, 1, 32, 32]}),
                             targets.load("coral-edgetpu"))
    why = report["first_fallback"]["why"]
    assert "[2, 32, 32, 1]: the batch (2) is outside the 3 innermost dimensions and larger than 1" in why, why
    assert "build with batch 1" in why and "more than 3" not in why


def test_the_edge_tpu_roofline_counts_the_link_traffic_only():
    """MobileNetV2 at 224x224 (Coral's benchmark: 2.6 ms on the USB Accelerator): parameters cached on chip
    and activations kept there, the estimate stays below the measured time."""
    from edgegen.emulate import roofline

    model = {"macs": 300_000_000, "param_bytes": 3_500_000, "activation_bytes": 64_000_000, "cost_batch": 1,
             "inputs": [{"default_shape": [1, 3, 224, 224]}], "outputs": [{"default_shape": [1, 1000]}]}
    manifest = {"backend": "tflite", "precision": "int8", "model": model,
                "session": {"delegate": "edgetpu", "edgetpu_compiler": {"off_chip_bytes": 0}}}
    coral = roofline.estimate(manifest, targets.load("coral-edgetpu"))
    assert coral["bytes"] == 3 * 224 * 224 + 1000 and coral["latency_ms"] < 2.6
    del manifest["session"]["edgetpu_compiler"]  # without the compiler's figure: what exceeds the 8 MiB
    model["param_bytes"] = 10 * 1024 ** 2
    assert roofline.traffic(manifest)[0] == 3 * 224 * 224 + 1000 + 2 * 1024 ** 2
    manifest["session"] = {"delegate": "xnnpack"}  # other targets: parameters and activations, as before
    assert roofline.traffic(manifest)[0] == 10 * 1024 ** 2 + 2 * 16_000_000


def test_bench_host_fallback_rows_say_the_cpu_model_ran():
    from edgegen import bench

    manifest = {"backend": "tflite", "session": {"runtime": "ai-edge-litert", "delegate": "edgetpu",
                                                 "entry": "model.tflite", "edgetpu_entry": "model_edgetpu.tflite"}}
    said = bench.host_fallback(manifest)
    assert said.startswith("host fallback (the bundle needs a Coral Edge TPU") and "ran model.tflite instead of " \
        "the Edge TPU" in said
    row = {"subject": "coral-edgetpu int8 (ai-edge-litert)", "threads": 1, "batch": 1, "p50_ms": 1.0, "p95_ms": 1.0,
           "images_per_s": 1000.0, "peak_rss_mb": 50, "delegation": None, "host_fallback": said}
    table = bench.table({"rows": [row]})
    assert "| coral-edgetpu int8 (ai-edge-litert) (host fallback) |" in table and table.endswith(said)
    assert bench.host_fallback({"backend": "onnxruntime", "session": {}}) is None  # runs here as on its target


def test_inspect_gives_the_edge_tpu_summary():
    from edgegen.inspect import inspect_model, render

    report = inspect_model("zoo:glyphtiny")
    coral = report["targets"]["coral-edgetpu"]
    assert "GATHER" in coral["edgetpu"] and "ops would map; the graph splits" in coral["edgetpu"]
    line = next(x for x in render(report).splitlines() if x.strip().startswith("coral-edgetpu"))
    assert "all ops supported" not in line and "Edge TPU: " in line


def test_inspect_reports_on_where_the_edge_tpu_check_cannot_run(monkeypatch):
    """A failure of the preview's quantization (ONNX Runtime out of memory at 2048x2048) was a traceback, and
    an upscaler at 1024x1024 took 4 GB and 5x inspect's time to check."""
    from edgegen import host_memory
    from edgegen.backends.tflite import compile as tflite_compile
    from edgegen.inspect import inspect_model

    def fails(graph, target):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node")

    monkeypatch.setattr(tflite_compile, "edgetpu_preview", fails)
    coral = inspect_model("zoo:glyphtiny")["targets"]["coral-edgetpu"]
    assert coral["edgetpu"] == ("Edge TPU mapping not checked: quantizing the model for the check failed: "
                                "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node")
    activations = inspect_model("zoo:glyphtiny")["activation_bytes"]  # the check's run at its shapes needs less
    monkeypatch.setattr(host_memory, "over_share", lambda nbytes: 1 << 20 if nbytes > 4 * activations else None)
    coral = inspect_model("zoo:glyphtiny")["targets"]["coral-edgetpu"]
    assert coral["edgetpu"].startswith("Edge TPU mapping not checked: quantizing the model for the check at these "
                                       "input shapes would take over half of this host's available memory")


def test_a_dcgan_viewing_its_latent_takes_int8_input_and_maps_whole(tmp_path):
    """A DCGAN whose forward starts with `z.view(N, nz, 1, 1)` kept the RESHAPE and its input float: 0 of its ops
    mapped (the graph split at op 0 RESHAPE)."""
    from test_quantize import latent_view_model

    bundle = tmp_path / "b"
    result = build(latent_view_model(tmp_path / "view.onnx"), "x86-litert", bundle, precision="int8",
                   calibration_count=8)
    assert [i["dtype"] for i in result.manifest["session"]["inputs"]] == ["int8"]
    compat = json.loads((bundle / "reports" / "edgetpu.json").read_text())
    assert compat["first_fallback"] is None and compat["edgetpu_ops"] == compat["ops"]
    assert edgetpu.summary(compat).startswith("Edge TPU: all ")
