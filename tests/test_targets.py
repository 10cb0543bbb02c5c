import pytest
import yaml

from edgegen import targets
from edgegen.errors import TargetError

GOOD = """name: {name}
description: test target
device: x86-64 CPU
arch: x86_64
backend: onnxruntime
precision: fp32
threads: 2
memory_mb: 512
"""


def test_shipped_targets_load():
    names = {t.name for t in targets.load_all()}
    assert {"x86-onnxruntime", "x86-openvino", "jetson-orin-onnxruntime", "intel-npu-openvino"} <= names


def test_openvino_cpu_target_is_fp32_and_npu_is_fp16():
    assert targets.load("x86-openvino").precision == "fp32"
    assert targets.load("intel-npu-openvino").precision == "fp16"
    jetson = targets.load("jetson-orin-onnxruntime")
    assert jetson.precision == "fp16" and "TensorrtExecutionProvider" in jetson.backend_options["providers"]


def test_runs_here_reflects_this_host():
    assert targets.runs_here(targets.load("x86-onnxruntime"))[0] is (targets.host_arch() == "x86_64")
    ok, why = targets.runs_here(targets.load("jetson-orin-onnxruntime"))
    if targets.host_arch() != "aarch64":
        assert not ok and "aarch64" in why


def test_target_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD.format(name="mine"))
    assert targets.load(str(path)).name == "mine"


def test_a_target_file_path_that_does_not_exist_says_so(tmp_path):
    """It was an "unknown target" listing the names, and advised passing a .yaml path: what was done."""
    missing = tmp_path / "tg" / "missing.yaml"
    with pytest.raises(TargetError, match="does not exist") as caught:
        targets.load(str(missing))
    assert str(missing) in str(caught.value) and "Known targets" not in str(caught.value)


def test_unknown_target_suggests_close_name():
    with pytest.raises(TargetError, match="did you mean 'x86-openvino'|Did you mean 'x86-openvino'"):
        targets.load("x86-openvno")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("threads: 2", "threads: two"), "key 'threads' must be a int"),
    (lambda t: t.replace("backend: onnxruntime", "backend: tensorflow"), "key 'backend' is 'tensorflow'"),
    (lambda t: t.replace("precision: fp32", "precision: fp8"), "key 'precision' is 'fp8'"),
    (lambda t: t.replace("memory_mb: 512\n", ""), "missing required key 'memory_mb'"),
    (lambda t: t + "thread: 4\n", "unknown key 'thread' \\(did you mean 'threads'\\?\\)"),
    (lambda t: t.replace("name: bad", "name: other"), "key 'name' is 'other'"),
    (lambda t: "- just\n- a list\n", "must be a mapping"),
    (lambda t: "name: [unclosed\n", "not valid YAML"),
    (lambda t: t + "threads: 4\n", "key 'threads' is given twice; keep one"),
    (lambda t: t.replace("memory_mb: 512", "memory_mb: 8"), "key 'memory_mb' is 8; give 16 or more"),
    (lambda t: t.replace("threads: 2", "threads: 0"), "key 'threads' is 0; give 1 or more"),
    (lambda t: t + "backend_options:\n  provider: [CPUExecutionProvider]\n",
     "backend_options: unknown key 'provider' \\(did you mean 'providers'\\?\\) for the onnxruntime backend"),
    (lambda t: t + "backend_options:\n  providers: [CPUExecutionProvidr]\n",
     "backend_options.providers: \\['CPUExecutionProvidr'\\] are not execution providers"),
    (lambda t: t.replace("precision: fp32", "precision: bf16"), "'bf16'\\] are not ones the onnxruntime backend"),
])
def test_invalid_target_names_file_and_key(tmp_path, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(GOOD.format(name="bad")))
    with pytest.raises(TargetError, match=message) as info:
        targets.load(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, options, message", [
    ("fpga-sim", {"act_kbytes": 64}, "unknown key 'act_kbytes' \\(did you mean 'act_kb'\\?\\) for the fpga backend"),
    ("fpga-sim", {"lanes": 0}, "'lanes' must be a positive integer, got 0"),
    ("fpga-sim", {"wgt_single_port": "yes"}, "'wgt_single_port' must be true or false"),
    ("x86-litert", {"delegate": "xnnpak"}, "'delegate' is 'xnnpak'; allowed: xnnpack, edgetpu"),
    ("x86-openvino", {"devices": "GPU"}, "unknown key 'devices' \\(did you mean 'device'\\?\\)"),
    # OpenVINO's names are case-sensitive and CPU has no index: both built as a "host fallback" for a device
    # OpenVINO itself would refuse
    ("intel-npu-openvino", {"device": "npu"}, "'device' must be an OpenVINO device name, upper case: .*got 'npu'"),
    ("x86-openvino", {"device": "CPU.0"}, "'device' must be an OpenVINO device name, .*got 'CPU.0'"),
    ("x86-openvino", {"device": "HETERO"}, "'device' must be an OpenVINO device name, .*got 'HETERO'"),
])
def test_backend_options_are_checked_against_what_the_backend_reads(tmp_path, name, options, message):
    data = yaml.safe_load((targets.TARGETS_DIR / f"{name}.yaml").read_text())
    data["backend_options"].update(options)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TargetError, match=f"{path}: backend_options: {message}"):
        targets.load(str(path))


def test_a_targets_directory_without_target_files_is_an_error_saying_where_targets_come_from(tmp_path, monkeypatch):
    """A copy of the package without the checkout's targets/ listed no target and exited 0."""
    monkeypatch.setattr(targets, "TARGETS_DIR", tmp_path)
    wanted = r"no target files \(\*\.yaml\) there; .*pip install -e '\.\[build\]'.*EDGEGEN_TARGETS_DIR"
    with pytest.raises(TargetError, match=wanted):
        targets.load_all()


@pytest.mark.parametrize("device, here", [("AUTO", True), ("AUTO:NPU,CPU", True), ("MULTI:CPU", True),
                                          ("HETERO:NPU,CPU", False), ("GPU.1", False), ("AUTO:-CPU", False),
                                          ("AUTO:-GPU", True), ("BATCH:CPU(4)", True), ("BATCH:GPU(4)", False)])
def test_openvino_virtual_devices_run_where_their_devices_are(device, here):
    """AUTO, which OpenVINO runs on any host, was always "absent" (the host's device list never names it)."""
    from edgegen.backends import option_problem
    from edgegen.backends.openvino.session import host_support

    ov = pytest.importorskip("openvino")
    if set(ov.Core().available_devices) != {"CPU"}:
        pytest.skip("this host has OpenVINO devices besides the CPU")
    assert option_problem("openvino", "device", device) is None
    assert host_support({"device": device, "precision": "fp32"})[0] is here
