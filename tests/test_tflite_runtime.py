"""The device half on both TFLite runtimes: ai-edge-litert here, and tflite-runtime 2.14 (which needs
numpy < 2) in its own virtual environment, created on first use. The session imports numpy and one
runtime only."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgegen.build import build
from edgegen.errors import BackendUnavailableError
from edgegen.runtime import Generator

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("onnx", "onnxruntime", "openvino", "yaml", "flatbuffers")

# opens bundles and prints what a device sees: runtime, self-test, pixels, delegation, imported modules
PROBE = """
import json, sys
import numpy as np
from edgegen.runtime import Generator
out = {}
for path in sys.argv[1:]:
    gen = Generator.open(path)
    report = gen.session.execution_report()
    out[path] = {"runtime": gen.session.runtime, "self_test": gen.self_test()["pass"],
                 "image": gen.generate(seed=5, label=2).tolist(), "delegated": report["delegation"]["delegated"],
                 "ops": report["delegation"]["ops"]}
out["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(out))
"""


def _probe(python: Path, bundles: list[Path], runtime: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGEGEN_TFLITE_RUNTIME", None)
    if runtime:
        env["EDGEGEN_TFLITE_RUNTIME"] = runtime
    proc = subprocess.run([str(python), "-c", PROBE, *map(str, bundles)], capture_output=True, text=True, env=env,
                          cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tflite_runtime_python() -> Path:
    """The Python of the tflite-runtime environment (numpy < 2), created with pip on first use."""
    spec = importlib.util.spec_from_file_location("tflite_runtime_env", ROOT / "tools" / "tflite_runtime_env.py")
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    return env.ensure()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, cgen_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite-bundles")
    for precision in ("fp32", "int8"):
        build(cgen_path, "x86-litert", root / precision, precision=precision)
    return {p: root / p for p in ("fp32", "int8")}


def test_session_imports_numpy_and_one_runtime_only(bundles):
    result = _probe(Path(sys.executable), [bundles["fp32"], bundles["int8"]])
    assert "ai_edge_litert" in result["modules"] and "tflite_runtime" not in result["modules"]
    assert not set(FORBIDDEN) & set(result["modules"]), set(FORBIDDEN) & set(result["modules"])
    assert result[str(bundles["int8"])]["self_test"] and result[str(bundles["fp32"])]["self_test"]


def test_tflite_runtime_opens_fp32_and_int8_bundles(tflite_runtime_python, bundles):
    here = _probe(Path(sys.executable), [bundles["fp32"], bundles["int8"]])
    there = _probe(tflite_runtime_python, [bundles["fp32"], bundles["int8"]], runtime="tflite-runtime")
    assert "tflite_runtime" in there["modules"] and "ai_edge_litert" not in there["modules"]
    assert not set(FORBIDDEN) & set(there["modules"])
    for precision, path in bundles.items():
        a, b = here[str(path)], there[str(path)]
        assert a["runtime"].startswith("ai-edge-litert") and b["runtime"] == "tflite-runtime 2.14.0"
        assert a["self_test"] and b["self_test"], precision
        diff = np.abs(np.asarray(a["image"], np.float64) - np.asarray(b["image"], np.float64))
        if precision == "fp32":
            assert diff.max() <= 1
        else:  # int8 requantization rounds differently (XNNPACK vs TFLite's reference kernels): +-1 LSB
            assert 10 * np.log10(255 ** 2 / np.mean(diff ** 2)) >= 30, diff.max()
    # tflite-runtime 2.14 gives int8 models no XNNPACK at all; LiteRT delegates them
    assert there[str(bundles["int8"])]["delegated"] == 0 and here[str(bundles["int8"])]["delegated"] > 0
    assert there[str(bundles["fp32"])]["delegated"] > 0


def test_missing_runtime_says_how_to_choose_another(tflite_runtime_python, bundles):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGEGEN_TFLITE_RUNTIME", None)
    code = "from edgegen.runtime import Generator; import sys; Generator.open(sys.argv[1])"
    proc = subprocess.run([str(tflite_runtime_python), "-c", code, str(bundles["fp32"])], capture_output=True,
                          text=True, env=env)
    assert proc.returncode != 0
    assert "ai-edge-litert package is not installed" in proc.stderr and "EDGEGEN_TFLITE_RUNTIME" in proc.stderr


def test_tflite_runtime_target_builds_on_a_numpy2_host_and_runs_natively_there(tmp_path, cgen_path,
                                                                              tflite_runtime_python, monkeypatch):
    target = yaml.safe_load((ROOT / "targets" / "x86-litert.yaml").read_text())
    target.update(name="x86-tflite-runtime", backend_options={"runtime": "tflite-runtime", "delegate": "xnnpack"})
    path = tmp_path / "x86-tflite-runtime.yaml"
    path.write_text(yaml.safe_dump(target))
    result = build(cgen_path, str(path), tmp_path / "b")
    assert result.fidelity["ran_on"].startswith("build host fallback (") and "tflite-runtime" in result.fidelity["ran_on"]
    with pytest.raises(BackendUnavailableError, match="tflite-runtime"):
        Generator.open(tmp_path / "b")
    monkeypatch.setenv("EDGEGEN_TFLITE_RUNTIME", "ai-edge-litert")  # a device may choose the other runtime
    assert Generator.open(tmp_path / "b").self_test()["pass"]
    there = _probe(tflite_runtime_python, [tmp_path / "b"])
    assert there[str(tmp_path / "b")]["runtime"] == "tflite-runtime 2.14.0" and there[str(tmp_path / "b")]["self_test"]


def test_an_absent_edge_tpu_is_reported_without_a_runtime_traceback():
    """load_delegate of a library that is not there leaves a Delegate whose __del__ raises; it is not tried."""
    import ctypes

    from edgegen.backends.tflite import session

    try:
        ctypes.CDLL(session.EDGETPU_LIBRARY)
        pytest.skip("this host has the Edge TPU runtime library")
    except OSError:
        pass
    code = ("import gc; from edgegen.backends.tflite.session import host_support; "
            "print(host_support({'delegate': 'edgetpu'})); gc.collect()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "needs a Coral Edge TPU" in done.stdout
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_absent_edge_tpu_names_the_host_fallback_not_another_runtime(tmp_path):
    """The message proposed EDGEGEN_TFLITE_RUNTIME, which brings no Edge TPU either, and not --host-fallback."""
    import ctypes

    from edgegen.backends.tflite import session

    try:
        ctypes.CDLL(session.EDGETPU_LIBRARY)
        pytest.skip("this host has the Edge TPU runtime library")
    except OSError:
        pass
    with pytest.raises(BackendUnavailableError) as caught:
        session.Session(tmp_path, {"delegate": "edgetpu", "runtime": "ai-edge-litert"}, threads=1)
    assert "needs a Coral Edge TPU" in str(caught.value) and "--host-fallback" in str(caught.value)
    assert session.RUNTIME_ENV not in str(caught.value)


def test_no_tflite_runtime_at_all_offers_no_host_fallback(tmp_path, monkeypatch):
    """With no TFLite runtime installed (a device with ONNX Runtime only), the message proposed host_fallback=True,
    which then failed with "no TFLite runtime is usable here"; it names the package to install, no more."""
    from edgegen.backends.tflite import session

    def absent(runtime: str):
        raise BackendUnavailableError(f"the {runtime} package is not installed here; `pip install {runtime}`")

    monkeypatch.setattr(session, "_load", absent)
    for options in ({"runtime": "ai-edge-litert"}, {"runtime": "ai-edge-litert", "delegate": "edgetpu"}):
        with pytest.raises(BackendUnavailableError) as caught:
            session.Session(tmp_path, options, threads=1)
        assert str(caught.value) == ("cannot run this TFLite bundle here: the ai-edge-litert package is not installed "
                                     "here; `pip install ai-edge-litert`"), str(caught.value)
