"""A device install (numpy + one backend, `pip install 'edgegen[ort]'`): the Python API and the CLI verbs a device
runs (verify, generate, bench, serve) work without the build host's packages (onnx, onnxscript, PyYAML, Pillow),
and what needs one of them says so in one line, never a traceback.

Each command runs in a subprocess whose imports of those packages fail as where they are not installed: a
sitecustomize on PYTHONPATH puts a finder first on sys.meta_path (inherited by the processes it starts, as
bench's workers), and at exit records any of them found in sys.modules."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edgegen.build import build
from edgegen.runtime import Generator
from runtime_models import upscaler_like

ROOT = Path(__file__).resolve().parent.parent
BUILD_PACKAGES = ("onnx", "onnxscript", "yaml", "PIL")  # import names of the `build` extra's packages

SITECUSTOMIZE = f"""
import atexit, os, sys

ABSENT = {BUILD_PACKAGES!r}


class _Absent:
    \"\"\"The build host's packages are not installed here.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Absent())


@atexit.register
def _record():
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ABSENT)
    with open(os.environ["EDGEGEN_TEST_LOADED"], "a") as log:
        log.write(repr(loaded) + "\\n")
"""


@pytest.fixture()
def device(tmp_path: Path) -> dict[str, str]:
    """The environment of a device install: the build packages cannot be imported."""
    site = tmp_path / "device-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "EDGEGEN_TEST_LOADED": str(tmp_path / "loaded.txt")}
    env.pop("EDGEGEN_TFLITE_RUNTIME", None)
    return env


def _loaded(env: dict[str, str]) -> list[str]:
    """Every build package any process of the test had in sys.modules at its exit."""
    lines = Path(env["EDGEGEN_TEST_LOADED"]).read_text().splitlines()
    assert lines, "the device sitecustomize did not run"
    return sorted({m for line in lines for m in ast.literal_eval(line)})


def _edgegen(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegen", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The one line a command that cannot run here prints (exit 2), holding each of names."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgegen: error:")]
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> Path:
    """An image-to-image bundle (an upscaler) for ONNX Runtime."""
    root = tmp_path_factory.mktemp("device-image")
    onnx.save(upscaler_like(), str(root / "up.onnx"))
    build(root / "up.onnx", "x86-onnxruntime", root / "up")
    return root / "up"


API = """
import sys
import numpy as np
from edgegen.errors import EdgegenError
from edgegen.runtime import Generator, to_pil
from edgegen.runtime.server import Server

gen = Generator.open(sys.argv[1])
img = gen.generate(seed=3, label=7)
batch = gen.generate_batch([{"seed": s, "label": s % 10} for s in range(3)])
assert np.array_equal(batch[0], gen.generate(seed=0, label=0)) and gen.self_test()["pass"]
up = Generator.open(sys.argv[2])
assert up.generate(image=np.zeros((32, 32, 3), np.uint8)).shape == (64, 64, 3)
Server(gen).close()
try:
    to_pil(img)
except EdgegenError as exc:
    print(f"to_pil: {exc}")
print("modules:", sorted(m for m in sys.modules if m.partition(".")[0] in ("onnx", "onnxscript", "yaml", "PIL")))
"""


def test_the_python_api_runs_without_the_build_packages(device, ort_bundle, image_bundle):
    proc = subprocess.run([sys.executable, "-c", API, str(ort_bundle), str(image_bundle)], capture_output=True,
                          text=True, env=device, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # to_pil needs Pillow: an EdgegenError (the CLI's exit 2) naming how to install it
    line = next((line for line in proc.stdout.splitlines() if line.startswith("to_pil:")), proc.stdout)
    assert "pip install pillow" in line and "\n" not in line, line
    assert "modules: []" in proc.stdout and _loaded(device) == []


def test_the_runtime_png_writer_gives_the_pixels():
    """What `edgegen generate` writes without Pillow: grey, grey + alpha (was refused), RGB and RGBA, read back by
    Pillow."""
    from edgegen.runtime.png import encode_png

    for channels in (1, 2, 3, 4):
        pixels = np.random.default_rng(channels).integers(0, 256, (5, 7, channels), dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels, level=6))))
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)


def test_verify_runs_on_a_device(device, ort_bundle):
    proc = _edgegen(device, "verify", str(ort_bundle), "--runs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "result: PASS" in proc.stdout and _loaded(device) == []


def test_generate_writes_a_png_on_a_device(device, ort_bundle, tmp_path):
    """Without Pillow a .png is written by the runtime's own PNG writer: the pixels Generator gives."""
    proc = _edgegen(device, "generate", str(ort_bundle), "--seed", "3", "--label", "7", "-o", str(tmp_path / "a.png"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and _loaded(device) == []
    written = np.asarray(Image.open(tmp_path / "a.png"))
    np.testing.assert_array_equal(written, Generator.open(ort_bundle).generate(seed=3, label=7))


def test_generate_to_another_format_names_pillow(device, ort_bundle, tmp_path):
    proc = _edgegen(device, "generate", str(ort_bundle), "--seed", "3", "--label", "7", "-o", str(tmp_path / "a.jpg"))
    _one_line_error(proc, "pip install pillow", ".png")
    assert not (tmp_path / "a.jpg").exists()


def test_generate_with_an_input_image_file_names_pillow(device, image_bundle, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    proc = _edgegen(device, "generate", str(image_bundle), "--image", str(tmp_path / "in.png"),
                    "-o", str(tmp_path / "out.png"))
    _one_line_error(proc, "pillow", "pip install")


def test_bench_runs_on_a_device(device, ort_bundle):
    proc = _edgegen(device, "bench", str(ort_bundle), "--runs", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| subject |" in proc.stdout and "onnxruntime" in proc.stdout
    assert _loaded(device) == []  # its worker processes' too


def test_bench_baseline_names_the_build_packages(device, ort_bundle):
    """The fp32 baseline runs the ONNX source model, which needs onnx: said in the command, not a worker's last line."""
    proc = _edgegen(device, "bench", str(ort_bundle), "--runs", "3", "--baseline")
    line = _one_line_error(proc, "onnx", "pip install -e '.[build]'")
    assert "edgegen bench --baseline" in line  # plain `edgegen bench` runs here


@pytest.mark.parametrize("verb", [["build", "MODEL", "-t", "x86-onnxruntime", "-o", "OUT"], ["inspect", "MODEL"],
                                  ["targets"]])
def test_a_build_host_verb_names_the_build_extra(device, cgen_path, tmp_path, verb):
    args = [str(cgen_path) if a == "MODEL" else str(tmp_path / "b") if a == "OUT" else a for a in verb]
    line = _one_line_error(_edgegen(device, *args), "pip install -e '.[build]'", f"edgegen {verb[0]}")
    assert "onnx" in line or "pyyaml" in line
    assert not (tmp_path / "b").exists()


def _serve(env: dict[str, str], bundle: Path) -> tuple[subprocess.Popen, str]:
    """`edgegen serve BUNDLE --port 0` started; the process and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "edgegen", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise AssertionError(f"serve did not start: {line}{proc.stderr.read()[-3000:]}")
    return proc, line.split(" at ")[1].split()[0].rstrip("/")


def _stop(proc: subprocess.Popen) -> str:
    """Stop a server with Ctrl-C; its stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err[-3000:]
    return err


def _post(url: str, body: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/v1/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_runs_on_a_device(device, ort_bundle):
    proc, url = _serve(device, ort_bundle)
    try:
        status, body = _post(url, {"seed": 3, "label": 7})
        assert status == 200 and body.startswith(b"\x89PNG")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))),
                                      Generator.open(ort_bundle).generate(seed=3, label=7))
    finally:
        err = _stop(proc)
    assert "pillow" not in err.lower()  # no image inputs: nothing to warn about
    assert _loaded(device) == []


def test_serve_answers_an_image_upload_without_pillow_naming_it(device, image_bundle):
    """The server decodes uploaded images with Pillow: without it, 501 naming `pip install pillow` (was a 500,
    "internal error"), and `serve` says so once as it starts."""
    proc, url = _serve(device, image_bundle)
    try:
        png = io.BytesIO()
        Image.new("RGB", (32, 32)).save(png, format="PNG")
        status, body = _post(url, {"image": base64.b64encode(png.getvalue()).decode()})
        assert status == 501, body
        assert "pip install pillow" in json.loads(body)["error"]
    finally:
        err = _stop(proc)
    assert err.count("pip install pillow") == 1, err
    assert "Traceback" not in err and _loaded(device) == []
