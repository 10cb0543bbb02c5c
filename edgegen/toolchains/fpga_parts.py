"""FPGA parts and boards edgegen builds the NPU for, and the resource planner: before any tool runs,
estimate the block RAM, DSP and logic an NPU instance needs on a part and refuse what cannot fit.

RAM is counted exactly as blocks of the part's block-RAM aspect ratios (the cheapest ratio per memory);
single-port memories (a banked ACT, a host-loaded WGT) go into the part's single-port RAM where it
has one (the UP5K's four 16K x 16 SB_SPRAM256KA), else into block RAM like the others. DSP and logic
are linear models of the NPU fitted to Yosys/nextpnr runs (iCE40: 4415 LC for 2 lanes in block RAM,
4849 with the SPRAM banks; estimated 4400 and 4850).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError

BOARDS_DIR = Path(__file__).resolve().parents[2] / "hw" / "boards"


class DoesNotFitError(BuildError):
    """An NPU instance needs more of a resource than the FPGA part has."""


@dataclass(frozen=True)
class Part:
    """An FPGA part: its flow, capacities, block-RAM aspect ratios (depth, width) and the NPU cost model."""

    name: str
    family: str  # ice40, ecp5, xilinx7, cyclonev
    flow: str  # open, vivado, quartus
    logic_unit: str
    logic: int
    ram_unit: str
    ram_blocks: int
    ram_modes: tuple[tuple[int, int], ...]
    dsp_unit: str
    dsp: int
    dsp_per_lane: float
    dsp_requant: int  # the 32 x 32 requantizer multiply
    logic_base: int  # NPU + UART bridge at 0 lanes
    logic_per_lane: int
    spram_unit: str = ""
    spram: int = 0  # single-port RAM blocks of spram_depth x spram_width bits
    spram_depth: int = 0
    spram_width: int = 0
    logic_single_port: int = 0  # bank selection and port sharing when memories are single-port


PARTS = {
    "iCE40UP5K-SG48": Part("iCE40UP5K-SG48", "ice40", "open", "LC", 5280, "SB_RAM40_4K", 30,
                           ((256, 16), (512, 8), (1024, 4), (2048, 2)), "SB_MAC16", 8, 1, 5, 4000, 200,
                           "SB_SPRAM256KA", 4, 16384, 16, logic_single_port=450),
    "LFE5U-85F-6BG381C": Part("LFE5U-85F-6BG381C", "ecp5", "open", "LUT4", 83640, "DP16KD", 208,
                              ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
                              "MULT18X18D", 156, 1, 5, 3700, 245),
    "xc7a100tcsg324-1": Part("xc7a100tcsg324-1", "xilinx7", "vivado", "LUT6", 63400, "RAMB36", 135,
                             ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1)),
                             "DSP48E1", 240, 1, 4, 2400, 110),
    "5CSEBA6U23I7": Part("5CSEBA6U23I7", "cyclonev", "quartus", "ALM", 41910, "M10K", 553,
                         ((256, 40), (512, 20), (1024, 10), (2048, 5), (4096, 2), (8192, 1)),
                         "DSP block", 112, 0.5, 2, 2200, 100),
}


@dataclass(frozen=True)
class Board:
    """A board: its FPGA part, constraint file (under hw/boards/), oscillator, LED polarity, and whether
    the oscillator's pin feeds a PLL the open flow can configure (icepll / ecppll)."""

    name: str
    part: str
    constraints: str
    clock_hz: int
    led_active_low: bool = False
    pll: bool = False

    @property
    def fpga(self) -> Part:
        return PARTS[self.part]

    @property
    def constraint_path(self) -> Path:
        return BOARDS_DIR / self.constraints


BOARDS = {
    "icebreaker": Board("icebreaker", "iCE40UP5K-SG48", "icebreaker/icebreaker.pcf", 12_000_000, True, pll=True),
    # no PLL on the ULX3S yet: with an EHXPLLL at 50 MHz, nextpnr-ecp5 had not finished placing and
    # routing the 32-lane NPU after 44 minutes (13 minutes without it)
    "ulx3s": Board("ulx3s", "LFE5U-85F-6BG381C", "ulx3s/ulx3s.lpf", 25_000_000),
    "arty-a7-100t": Board("arty-a7-100t", "xc7a100tcsg324-1", "arty-a7/arty_a7.xdc", 100_000_000),
    "de10-nano": Board("de10-nano", "5CSEBA6U23I7", "de10-nano/de10_nano.qsf", 50_000_000),
}

# the NPU's memories: (name, RTL depth parameter, bits per word as a function of lanes)
MEMORIES = (("act", "ACT_WORDS", lambda lanes: 8 * lanes), ("wgt", "WGT_WORDS", lambda lanes: 8 * lanes),
            ("par", "PAR_WORDS", lambda lanes: 72), ("lut", "LUT_BYTES", lambda lanes: 8),
            ("tap", "TAP_WORDS", lambda lanes: 64), ("prog", "PROG_WORDS", lambda lanes: 32))


def board(name: str, where: str) -> Board:
    """A board by name; an unknown name is a BuildError naming `where` and the known boards."""
    if name not in BOARDS:
        raise BuildError(f"{where}: unknown board {name!r}; known boards: {', '.join(BOARDS)}")
    return BOARDS[name]


def ram_blocks(part: Part, depth: int, width: int) -> int:
    """Block RAMs one depth x width memory with byte write enables takes at the cheapest aspect ratio
    (a block wider than a byte holds whole bytes: x9 and x36 modes store 8 and 32 bits)."""
    return min(math.ceil(depth / d) * math.ceil(width / (w if w < 8 else w // 8 * 8)) for d, w in part.ram_modes)


def estimate(part: Part, lanes: int, depths: dict[str, int],
             single_port: dict[str, int] | None = None) -> dict[str, dict]:
    """Estimated use of each resource: {"logic"|"ram"|"dsp"[|"spram"]: {"unit", "need", "available",
    "detail"}}. single_port: memory name -> banks (ACT in 2 banks, WGT in 1) for the single-port memories."""
    single_port = single_port or {}
    ram, spram = {}, {}
    for name, param, width in MEMORIES:
        banks = single_port.get(name)
        if banks and part.spram:
            spram[name] = banks * math.ceil(depths[param] / banks / part.spram_depth) * \
                math.ceil(width(lanes) / part.spram_width)
        elif banks:
            ram[name] = banks * ram_blocks(part, depths[param] // banks, width(lanes))
        else:
            ram[name] = ram_blocks(part, depths[param], width(lanes))
    need = {
        "logic": {"unit": part.logic_unit, "need": part.logic_base + part.logic_per_lane * lanes
                  + (part.logic_single_port if single_port else 0),
                  "available": part.logic},
        "ram": {"unit": part.ram_unit, "need": sum(ram.values()), "available": part.ram_blocks, "detail": ram},
        "dsp": {"unit": part.dsp_unit, "need": math.ceil(part.dsp_per_lane * lanes) + part.dsp_requant,
                "available": part.dsp},
    }
    if spram:
        need["spram"] = {"unit": part.spram_unit, "need": sum(spram.values()), "available": part.spram,
                         "detail": spram}
    return need


def check_fit(part: Part, lanes: int, depths: dict[str, int], where: str,
              single_port: dict[str, int] | None = None) -> dict[str, dict]:
    """The estimate, or a DoesNotFitError naming each resource that is over and what to change."""
    need = estimate(part, lanes, depths, single_port)
    over = [f"{r['need']} {r['unit']} ({key}) of {r['available']}" for key, r in need.items()
            if r["need"] > r["available"]]
    if over:
        per = "; ".join(f"{need[key]['unit']} per memory: "
                        + ", ".join(f"{k} {v}" for k, v in need[key]["detail"].items())
                        for key in ("ram", "spram") if key in need)
        raise DoesNotFitError(
            f"{where}: the {lanes}-lane NPU does not fit {part.name}: it needs about {'; '.join(over)} "
            f"({per}). Use fewer lanes (backend_options.lanes) or smaller memories, "
            "a smaller model, or a larger part.")
    return need
