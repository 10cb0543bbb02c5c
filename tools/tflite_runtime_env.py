"""The tflite-runtime environment: tflite-runtime 2.14 needs numpy < 2, so it lives in its own virtual
environment (`.venv-tflite-runtime`), created with pip on first use. Used by the tests and by
tools/bench_tflite.py; `python tools/tflite_runtime_env.py` creates it and prints its Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-tflite-runtime"
REQUIREMENTS = ["numpy<2", "tflite-runtime==2.14.0", "pillow"]


def ensure(venv: Path = VENV) -> Path:
    """The environment's Python, after creating the environment if it is missing or incomplete."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import tflite_runtime.interpreter, numpy; assert numpy.__version__ < '2'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"installing {' '.join(REQUIREMENTS)} into {venv} failed:\n{proc.stderr[-2000:]}")
    return python


if __name__ == "__main__":
    print(ensure())
