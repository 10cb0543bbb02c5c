"""Intel Quartus Prime in batch mode: a project (.qpf/.qsf with the board's pin assignments and the
NPU's parameters), `quartus_sh --flow compile`, and parsers for the fitter summary (`.fit.summary`)
and the timing analyzer's Fmax panels (`.sta.rpt`).

Quartus is run when `quartus_sh` is on PATH; without it the project directory still holds
everything needed to build on a machine that has it.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import ToolFailedError, runner

TOOL = "quartus_sh"
INSTALL = ("Install Intel Quartus Prime Lite (free, with Cyclone V device support; "
           "https://www.intel.com/content/www/us/en/software-kit/825278/), put its quartus/bin on PATH, "
           "then rebuild; or run `quartus_sh -t build.tcl` in the bundle's fpga/project directory.")
TIMEOUT_S = 4 * 3600
SCRIPT = "build.tcl"
REVISION = "npu"
_FIT = {"Logic utilization (in ALMs)": "alms", "Total registers": "ffs", "Total RAM Blocks": "m10k",
        "Total DSP Blocks": "dsp", "Total pins": "io", "Total block memory bits": "ram_bits"}


def write_project(project: Path, part: str, top: str, sources: list[str], constraints: Path, clock_hz: int) -> str:
    """Write the .qpf, the .qsf (device, sources, the board's pins), the SDC clock and the batch Tcl
    script into project; returns the script's name. (Parameters live in the top module's source.)"""
    (project / f"{REVISION}.qpf").write_text(f'PROJECT_REVISION = "{REVISION}"\n')
    lines = ["set_global_assignment -name FAMILY \"Cyclone V\"", f"set_global_assignment -name DEVICE {part}",
             f"set_global_assignment -name TOP_LEVEL_ENTITY {top}",
             "set_global_assignment -name PROJECT_OUTPUT_DIRECTORY output_files",
             "set_global_assignment -name SDC_FILE npu.sdc",
             *(f"set_global_assignment -name VERILOG_FILE {s}" for s in sources),
             constraints.read_text().strip(), ""]
    (project / f"{REVISION}.qsf").write_text("\n".join(lines))
    (project / "npu.sdc").write_text(f"create_clock -name clk -period {1e9 / clock_hz:.3f} [get_ports clk]\n"
                                     "derive_clock_uncertainty\n")
    (project / SCRIPT).write_text("# edgegen NPU: Quartus batch build (quartus_sh -t build.tcl)\n"
                                  "load_package flow\n"
                                  f"project_open {REVISION}\nexecute_flow -compile\nproject_close\n")
    return SCRIPT


def build(project: Path, script: str) -> dict:
    """Run Quartus on the script (ToolNotFoundError when it is not on PATH); returns bitstream and report."""
    executable = runner.require((TOOL,), "build the bitstream for an Intel part", INSTALL)
    fit, sta, sof = (f"output_files/{REVISION}.{kind}" for kind in ("fit.summary", "sta.rpt", "sof"))
    log, name = project / "quartus.log", Path(executable).name
    seconds = runner.run([executable, "-t", script], log, project, TIMEOUT_S, outputs=(fit, sta, sof))
    report = runner.read_report(parse_fit_summary, project / fit, log, name)
    report.update(runner.read_report(parse_sta_fmax, project / sta, log, name))
    return {"bitstream": sof, "report": report, "stages_s": {"quartus": seconds}}


def parse_fit_summary(text: str) -> dict:
    """`.fit.summary` text -> {"status", "device", "resources": {alms, ffs, m10k, dsp, io, ram_bits}}."""
    resources: dict[str, dict] = {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" : ")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() in _FIT:
            match = re.match(r"([\d,]+)(?:\s*/\s*([\d,]+))?", value.strip())
            if match:
                used = int(match.group(1).replace(",", ""))
                available = int(match.group(2).replace(",", "")) if match.group(2) else None
                resources[_FIT[key.strip()]] = {"used": used, "available": available}
    if "Fitter Status" not in fields or "alms" not in resources:
        raise ToolFailedError("not a Quartus fitter summary: no 'Fitter Status' / 'Logic utilization (in ALMs)'")
    return {"status": fields["Fitter Status"], "device": fields.get("Device"), "resources": resources}


def parse_sta_fmax(text: str) -> dict:
    """The timing analyzer's `<corner> Model Fmax Summary` panels -> the worst corner's restricted Fmax."""
    panels = re.findall(r";\s*(.+?) Model Fmax Summary\s*;.*?\n(?:[+;].*\n)*?;\s*Fmax\s*;.*\n\+[-+]+\n((?:;.*\n)+)",
                        text)
    corners = {}
    for corner, rows in panels:
        for row in rows.splitlines():
            cells = [c.strip() for c in row.strip().strip(";").split(";")]
            if len(cells) >= 3 and cells[1].endswith("MHz"):
                corners[f"{corner} {cells[2]}"] = float(cells[1].split()[0])
    if not corners:
        raise ToolFailedError("not a Quartus timing report: no 'Model Fmax Summary' panel with a clock")
    return {"fmax_mhz": min(corners.values()), "fmax_by_corner": corners}
