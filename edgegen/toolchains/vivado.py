"""Xilinx Vivado in batch mode: a non-project Tcl flow (read sources and XDC, synth_design,
opt/place/route, write_bitstream) and parsers for `report_utilization` and `report_timing_summary`.

Vivado is run when `vivado` is on PATH (`vivado -mode batch -source build.tcl`); without it the
project directory still holds everything needed to build on a machine that has it.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import ToolFailedError, runner

TOOL = "vivado"
INSTALL = ("Install AMD/Xilinx Vivado ML Standard (free for Artix-7; https://www.xilinx.com/support/download.html), "
           "source its settings64.sh so `vivado` is on PATH, then rebuild; or run `vivado -mode batch -source "
           "build.tcl` in the bundle's fpga/project directory.")
TIMEOUT_S = 4 * 3600
SCRIPT = "build.tcl"
UTILIZATION, TIMING, BITSTREAM = "utilization.rpt", "timing_summary.rpt", "npu.bit"
_ROWS = {"Slice LUTs": "luts", "Slice Registers": "ffs", "Block RAM Tile": "bram36", "DSPs": "dsp",
         "Bonded IOB": "io"}


def write_project(project: Path, part: str, top: str, sources: list[str], constraints: Path, clock_hz: int) -> str:
    """Write the board's XDC and the batch Tcl script into project; returns the script's name.
    (Parameters live in the top module's source; the XDC carries the board clock.)"""
    xdc = project / constraints.name
    xdc.write_text(constraints.read_text())
    script = "\n".join([
        "# edgegen NPU: Vivado batch build (vivado -mode batch -source build.tcl)",
        "set_param general.maxThreads 8",
        *(f"read_verilog {s}" for s in sources),
        f"read_xdc {xdc.name}",
        f"synth_design -top {top} -part {part}",
        "opt_design", "place_design", "route_design",
        f"report_utilization -file {UTILIZATION}",
        f"report_timing_summary -file {TIMING}",
        f"write_bitstream -force {BITSTREAM}", "",
    ])
    (project / SCRIPT).write_text(script)
    return SCRIPT


def build(project: Path, script: str) -> dict:
    """Run Vivado on the script (ToolNotFoundError when it is not on PATH); returns bitstream and report."""
    executable = runner.require((TOOL,), "build the bitstream for a Xilinx part", INSTALL)
    log, name = project / "vivado.log", Path(executable).name
    seconds = runner.run([executable, "-mode", "batch", "-nojournal", "-source", script], log, project, TIMEOUT_S,
                         outputs=(UTILIZATION, TIMING, BITSTREAM))
    report = runner.read_report(parse_utilization, project / UTILIZATION, log, name)
    report.update(runner.read_report(parse_timing_summary, project / TIMING, log, name))
    return {"bitstream": BITSTREAM, "report": report, "stages_s": {"vivado": seconds}}


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.lstrip().startswith("|") and not line.lstrip().startswith("|-")]


def parse_utilization(text: str) -> dict:
    """`report_utilization` text -> {"resources": {luts, ffs, bram36, dsp, io: {"used", "available"}}}.
    Reads the first table row of each site type, whichever columns (Fixed, Prohibited) the version prints."""
    resources: dict[str, dict] = {}
    header: list[str] = []
    for row in _table_rows(text):
        if row and row[0] == "Site Type":
            header = row
            continue
        if header and row[0] in _ROWS and _ROWS[row[0]] not in resources:
            values = dict(zip(header, row))
            resources[_ROWS[row[0]]] = {"used": _number(values["Used"]), "available": _number(values["Available"])}
    if "luts" not in resources:
        raise ToolFailedError("not a Vivado utilization report: no 'Slice LUTs' row")
    return {"resources": resources}


def parse_timing_summary(text: str) -> dict:
    """`report_timing_summary` text -> WNS, the first clock's period and Fmax = 1000 / (period - WNS)."""
    design = re.search(r"Design Timing Summary.*?\n\s*WNS\(ns\).*?\n\s*-+.*?\n\s*(-?[\d.]+|inf)\s", text, re.S)
    clocks = re.search(r"Clock Summary.*?\n\s*Clock\s+Waveform\(ns\)\s+Period\(ns\)\s+Frequency\(MHz\)\s*\n"
                       r"\s*-+.*?\n\s*(\S+)\s+\{[^}]*\}\s+([\d.]+)\s+([\d.]+)", text, re.S)
    if not design or not clocks:
        raise ToolFailedError("not a Vivado timing summary: no Design Timing Summary / Clock Summary table")
    wns, period = float(design.group(1)), float(clocks.group(2))
    if wns == float("inf"):
        raise ToolFailedError(f"Vivado's timing summary has no constrained path (WNS inf on clock {clocks.group(1)}): "
                              "the clock constraint did not reach the design, so its Fmax is unknown; check the "
                              "project's .xdc against the board's clock pin")
    return {"wns_ns": wns, "clock": clocks.group(1), "constraint_mhz": float(clocks.group(3)),
            "timing_met": wns >= 0 and "All user specified timing constraints are met" in text,
            "fmax_mhz": round(1000.0 / (period - wns), 2)}


def _number(text: str) -> float | int:
    value = float(text.replace(",", ""))
    return int(value) if value.is_integer() else value
