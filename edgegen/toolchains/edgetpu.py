"""Coral's `edgetpu_compiler`: compile an int8 .tflite for the Edge TPU, and parse its report.

The compiler is a closed x86-64 Linux binary from Coral's apt repository; it is run when it is on
PATH and otherwise a ToolNotFoundError says how to get it (a CompilerNotRunnableError where this host
cannot execute the one on PATH). It prints a summary (model sizes, on-chip
memory, number of Edge TPU subgraphs, ops on the Edge TPU and on the CPU) and writes
`<model>_edgetpu.log` with one row per operator type and status; `parse_log` reads either text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import ToolFailedError, ToolNotFoundError

TOOL = "edgetpu_compiler"
INSTALL = ("install it from Coral's apt repository on an x86-64 Debian/Ubuntu host: add "
           "`deb https://packages.cloud.google.com/apt coral-edgetpu-stable main` with its key, then "
           "`sudo apt-get install edgetpu-compiler` (see https://coral.ai/docs/edgetpu/compiler/); "
           "or build this target on such a host")
TIMEOUT_S = 180
MAPPED = "Mapped to Edge TPU"

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
_FIELDS = {
    "version": (r"Edge TPU Compiler version (\S+)", str),
    "input_model": (r"Input model: (.+)", str),
    "output_model": (r"Output model: (.+)", str),
    "on_chip_used_bytes": (r"On-chip memory used for caching model parameters: (\S+)", "size"),
    "on_chip_remaining_bytes": (r"On-chip memory remaining for caching model parameters: (\S+)", "size"),
    "off_chip_bytes": (r"Off-chip memory used for streaming uncached model parameters: (\S+)", "size"),
    "subgraphs": (r"Number of Edge TPU subgraphs: (\d+)", int),
    "total_ops": (r"Total number of operations: (\d+)", int),
    "edgetpu_ops": (r"Number of operations that will run on Edge TPU: (\d+)", int),
    "cpu_ops": (r"Number of operations that will run on CPU: (\d+)", int),
}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
# the summary fields without which the compiler's result is not known (its format was not recognised)
REQUIRED = ("subgraphs", "total_ops", "edgetpu_ops", "cpu_ops")


class CompilerNotRunnableError(ToolFailedError):
    """The compiler is on PATH but this host cannot execute it (the x86-64 binary on an aarch64 host, a file
    that is not executable): as good as missing, so the message says how to install one that runs."""


@dataclass
class CompilerReport:
    """What edgetpu_compiler said about one model."""

    version: str | None = None
    input_model: str | None = None
    output_model: str | None = None
    on_chip_used_bytes: int | None = None
    on_chip_remaining_bytes: int | None = None
    off_chip_bytes: int | None = None
    subgraphs: int | None = None
    total_ops: int | None = None
    edgetpu_ops: int | None = None
    cpu_ops: int | None = None
    operators: list[dict] = field(default_factory=list)  # {"op", "count", "status"}

    def to_json(self) -> dict:
        return asdict(self)

    def unknown(self) -> list[str]:
        """The REQUIRED fields the compiler's output did not give (its format was not recognised)."""
        return [key for key in REQUIRED if getattr(self, key) is None]


def parse_size(text: str) -> int:
    """'4.21MiB' -> bytes."""
    match = re.fullmatch(r"([\d.]+)\s*([KMG]?i?B)", text.strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


def parse_log(text: str) -> CompilerReport:
    """Parse the compiler's console summary and/or its `*_edgetpu.log` operator table."""
    report = CompilerReport()
    for key, (pattern, kind) in _FIELDS.items():
        match = re.search(pattern, text)
        if match:
            value = match.group(1).strip()
            setattr(report, key, parse_size(value) if kind == "size" else kind(value))
    header = re.search(r"^Operator\s+Count\s+Status\s*$", text, re.M)
    for line in (text[header.end():] if header else "").splitlines():
        row = _ROW.match(line.strip())
        if row:
            report.operators.append({"op": row.group(1), "count": int(row.group(2)), "status": row.group(3)})
    if report.total_ops is not None and report.edgetpu_ops is None and \
            all(r["status"] == MAPPED for r in report.operators):
        report.edgetpu_ops, report.cpu_ops = report.total_ops, 0  # the summary omits the split when all map
    return report


def find() -> str | None:
    """The compiler's path, if it is on PATH."""
    return shutil.which(TOOL)


def command(executable: str, model: Path, out_dir: Path, timeout_s: int = TIMEOUT_S) -> list[str]:
    """The command line that compiles `model` into out_dir (model_edgetpu.tflite + model_edgetpu.log)."""
    return [executable, "--out_dir", str(out_dir), "--show_operations", "--timeout_sec", str(timeout_s), str(model)]


def require() -> str:
    """The compiler's path, or a ToolNotFoundError saying how to get it."""
    path = find()
    if path is None:
        raise ToolNotFoundError(f"{TOOL} is not on PATH; it is needed to compile for the Edge TPU. {INSTALL}.")
    return path


def compile_model(model: Path, out_dir: Path, timeout_s: int = TIMEOUT_S, label: str | None = None
                  ) -> tuple[Path, Path | None, CompilerReport, str]:
    """Run the compiler; returns (compiled model, its log file or None where it wrote none, parsed report,
    its console output). label: what messages call the model (default: its path)."""
    executable = require()
    label = label or str(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(executable, model, out_dir, timeout_s)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise ToolFailedError(f"{TOOL} did not finish compiling {label} within {timeout_s + 30} s") from None
    except OSError as exc:  # the x86-64 binary on an aarch64 host (exec format error), a file not executable
        raise CompilerNotRunnableError(f"cannot execute {TOOL} at {executable}: {exc.strerror or exc}; the compiler "
                                       f"runs on x86-64 Linux only: {INSTALL}.") from None
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    log_file = out_dir / f"{model.stem}_edgetpu.log"
    # the paths it prints are the build's temporary ones: the model's and the output's names say as much
    console = (proc.stdout + proc.stderr).strip().replace(f"{out_dir}{os.sep}", "").replace(str(model), model.name)
    if proc.returncode != 0 or not compiled.is_file():
        tail = "\n".join(console.splitlines()[-8:])
        raise ToolFailedError(f"{TOOL} failed on {label} (exit {proc.returncode}): {tail}")
    report = parse_log(proc.stdout)
    if not log_file.is_file():
        return compiled, None, report, console  # the console's operator table (--show_operations) stands
    logged = parse_log(log_file.read_text()).operators  # every operator type; the console only the unmapped ones
    report.operators = logged or report.operators
    return compiled, log_file, report, console
