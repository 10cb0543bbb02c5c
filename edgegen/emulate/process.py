"""Launch the emulation worker (edgegen.emulate.worker) natively or in the arm64 userland, and
read back its report and the outputs it saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import EmulationError, qemu
from .userland import in_use as userland_lock

TIMEOUT_S = {"native": 900, "aarch64": 1800}


@dataclass
class Settings:
    """What a run imposes: threads, the address-space ceiling (None: none), timed runs, extra env."""

    threads: int
    memory_mb: int | None
    runs: int = 20
    warmup: int = 3
    host_fallback: bool = False
    env: dict[str, str] | None = None


def run(bundle: Path, settings: Settings, userland: Path | None = None) -> dict[str, Any]:
    """The worker's report ({"ok", "self_test", "latency_ms", "peak_rss_mb", ...}) with its
    outputs under "outputs"; userland: run under QEMU in that arm64 root instead of natively."""
    if userland is None:
        with tempfile.TemporaryDirectory(prefix="edgegen-emulate-") as tmp:
            argv = [sys.executable, "-m", "edgegen.emulate.worker", f"{tmp}/config.json"]
            env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
            return _launch(argv, env, Path(tmp), tmp, str(bundle), settings, "native")
    with userland_lock(userland), qemu.staged(userland, bundle, max(settings.threads, 1)) as (host_dir, inside):
        argv = qemu.command(userland, inside, [qemu.python(), "-m", "edgegen.emulate.worker", f"{inside}/config.json"])
        return _launch(argv, qemu.environment(inside, settings.threads), host_dir, inside, f"{inside}/bundle",
                       settings, "aarch64")


def _launch(argv: list[str], env: dict[str, str], host_dir: Path, inside: str, bundle: str, settings: Settings,
            kind: str) -> dict[str, Any]:
    """Write the worker's config into host_dir (seen as `inside` by the worker), run argv, read the report."""
    config = {"bundle": bundle, "threads": settings.threads, "memory_mb": settings.memory_mb, "runs": settings.runs,
              "warmup": settings.warmup, "host_fallback": settings.host_fallback,
              "result": f"{inside}/result.json", "outputs": f"{inside}/outputs.npz"}
    (host_dir / "config.json").write_text(json.dumps(config))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env={**env, **(settings.env or {})},
                              timeout=TIMEOUT_S[kind])
    except subprocess.TimeoutExpired:
        raise EmulationError(f"{bundle}: the {kind} run did not finish in {TIMEOUT_S[kind]} s") from None
    result_file = host_dir / "result.json"
    if not result_file.is_file():
        return {"ok": False, "error": "died", "message": _death(proc), "machine": kind}
    result = json.loads(result_file.read_text())
    if result.get("ok"):
        with np.load(host_dir / "outputs.npz") as saved:
            result["outputs"] = {name: saved[name] for name in saved.files}
    return result


def _death(proc: subprocess.CompletedProcess) -> str:
    """What killed a worker that wrote no report: the signal or exit status and its last stderr lines."""
    code = proc.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-4:])
    return f"the process {how}" + (f": {tail}" if tail else "")
