"""Bitstream stage of the `fpga` backend: the compiled program -> a bitstream for the target's board.

The NPU instance is the target's lane count with every memory sized to the program (rounded up to
whole block-RAM depths, which the block-RAM patchers accept), wrapped in the board top (`hw/boards/npu_board.v`, UART
link) with the program's memory images as $readmemh contents, so the bitstream carries the model.
The resource planner (`toolchains.fpga_parts`) checks the instance against the part before any tool
runs. Lattice parts are built with the open flow; the placed design is cached under
`$EDGEGEN_CACHE/bitstreams/<architecture hash>`, and a model with the same architecture and new
weights is patched into it with icebram / ecpbram instead of place-and-route (the result equals a
full rebuild byte for byte). Xilinx and Intel parts get a Vivado / Quartus project, built when the
tool is on PATH.

Single-port memories (`act_banks: 2`, `wgt_single_port`: the UP5K's SPRAM) keep their full depth
(the bank is the top address bit; a weight image of any size up to WGT's fits the same design).
SPRAM has no initial contents, so a host-loaded WGT is not in the bitstream: the report's
`host_loads` names it, the session uploads it over the board link when it opens, and a model whose
weights change but whose block-RAM memories do not needs no new bitstream at all.

When the part cannot hold the instance, or the vendor tool is absent, the bundle is built without a
bitstream and the report says why (`built: false`, `reason`); a tool that runs and fails fails the build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...toolchains import ToolFailedError, ToolNotFoundError, fpga_parts, openflow, quartus, vivado
from ...toolchains.fpga_parts import MEMORIES, Board, DoesNotFitError
from ...targets import Target
from .isa import DESC_WORDS, Images, NpuConfig

log = logging.getLogger(__name__)

NPU_DIR = fpga_parts.BOARDS_DIR.parent / "npu"
RTL = [NPU_DIR / f for f in ("npu_ram.v", "npu_spram.v", "npu_requant.v", "npu_core.v", "npu_top.v")] + \
      [fpga_parts.BOARDS_DIR / f for f in ("npu_uart.v", "npu_board.v")]
TOP = "npu_board"
CACHE = Path(os.environ.get("EDGEGEN_CACHE", Path.home() / ".cache" / "edgegen")) / "bitstreams"
REPORT = "reports/bitstream.json"
HEX = {"wgt": "WGT_INIT", "par": "PAR_INIT", "lut": "LUT_INIT", "tap": "TAP_INIT", "prog": "PROG_INIT"}
_MIN_DEPTH = {"ice40": 256, "ecp5": 512}  # ecpbram patches memories of 512-word multiples
_BITFILE = {"ice40": "npu.bin", "ecp5": "npu.bit", "xilinx7": "npu.bit", "cyclonev": "npu.sof"}


def host_loaded(config: NpuConfig) -> list[str]:
    """Memories the bitstream cannot initialise: the host loads them over the board link."""
    return ["wgt"] if config.wgt_single_port else []


def single_port(config: NpuConfig) -> dict[str, int]:
    """The NPU's single-port memories and their banks (what the planner puts into SPRAM)."""
    return {**({"act": config.act_banks} if config.act_banks > 1 else {}),
            **({"wgt": 1} if config.wgt_single_port else {})}


def depths(config: NpuConfig, memory: dict[str, Any], family: str) -> dict[str, int]:
    """RTL depth parameters sized to what the program uses, rounded up to whole block-RAM depths;
    single-port memories keep the configuration's full depth."""
    lanes = config.lanes
    used = {"ACT_WORDS": -(-memory["act_bytes"] // lanes), "WGT_WORDS": -(-memory["wgt_bytes"] // lanes),
            "PAR_WORDS": memory["par_entries"], "LUT_BYTES": memory["lut_tables"] * 256,
            "TAP_WORDS": memory["tap_entries"], "PROG_WORDS": (memory["layers"] + 1) * DESC_WORDS}
    floor = _MIN_DEPTH.get(family, 512)
    sizes = {k: max(1, -(-v // floor)) * floor for k, v in used.items()}
    if config.act_banks > 1:
        sizes["ACT_WORDS"] = config.act_words
    if config.wgt_single_port:
        sizes["WGT_WORDS"] = config.wgt_words
    return sizes


def _fitting_sizes(part: fpga_parts.Part, config: NpuConfig, sizes: dict[str, int]) -> dict[str, int]:
    """iCE40: every depth rounded up to a power of two when the block RAM allows it. A depth between two
    powers takes blocks of two depths and Yosys joins them with an output multiplexer: a 768 x 72 PAR
    cost 185 LUT4 (14 blocks), 1024 x 72 none (18 blocks), on a part with 5280 logic cells. Memories
    of 512 or 1024 words use the 512 x 8 / 1024 x 4 block modes, where icebram matches single bit
    columns and refuses repeated ones (PAR's sign-extended biases, PROG's zero high bits): the weight
    swap of such a design falls back to a full build."""
    if part.family != "ice40":
        return sizes
    rounded = {k: 1 << (v - 1).bit_length() for k, v in sizes.items()}
    need = fpga_parts.estimate(part, config.lanes, rounded, single_port(config))
    return rounded if need["ram"]["need"] <= need["ram"]["available"] else sizes


def padded_hex(images: Images, lanes: int, sizes: dict[str, int], directory: Path) -> dict[str, str]:
    """Write each static memory's $readmemh image at its full depth into directory; returns name -> text.
    Words past the program's end hold a fixed pseudo-random filler, so every block RAM of the placed
    design has contents the RAM patchers can recognise (blocks of equal contents are ambiguous to them)."""
    directory.mkdir(parents=True, exist_ok=True)
    images.write_hex(directory, lanes)
    params = {name: param for name, param, _ in MEMORIES}
    texts = {}
    for name in HEX:
        lines = (directory / f"{name}.hex").read_text().split()
        depth = sizes[params[name]]
        digits = {"wgt": 2 * lanes, "par": 18, "lut": 2, "tap": 16, "prog": 8}[name]
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
        filler = rng.integers(0, 16, size=(depth - len(lines), digits))
        lines += ["".join(f"{d:x}" for d in row) for row in filler]
        texts[name] = "\n".join(lines) + "\n"
        _write(directory / f"{name}.hex", texts[name])
    return texts


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def architecture(board: Board, config: NpuConfig, sizes: dict[str, int], freq_mhz: float, baud: int) -> str:
    """Hash of everything the placed design depends on except memory contents: RTL, board files, NPU
    parameters, clock, baud, tool versions. Two models with equal hashes differ only in RAM contents."""
    digest = hashlib.sha256()
    for path in [*RTL, board.constraint_path]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    facts = {"board": board.name, "part": board.part, "lanes": config.lanes, "act_banks": config.act_banks,
             "wgt_single_port": config.wgt_single_port, "sizes": sizes, "freq": freq_mhz,
             "baud": baud, "tools": openflow.versions() if board.fpga.flow == "open" else board.fpga.flow}
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def stage(workdir: Path, target: Target, config: NpuConfig, memory: dict[str, Any],
          images: Images) -> tuple[list[str], dict]:
    """Build (or patch) the bitstream for the target's board into workdir/fpga/; returns (files, report)."""
    options = target.backend_options
    board = fpga_parts.board(options["board"], f"{target.path}: backend_options.board")
    part = board.fpga
    sizes = _fitting_sizes(part, config, depths(config, memory, part.family))
    baud = int(options.get("baud", 1_000_000))
    freq = float(options.get("fmax_mhz", board.clock_hz / 1e6))
    report: dict[str, Any] = {"board": board.name, "part": part.name, "flow": part.flow, "lanes": config.lanes,
                              "memory_depths": sizes, "clock_mhz": board.clock_hz / 1e6, "baud": baud,
                              "host_loads": host_loaded(config),
                              "preloaded": [name for name in HEX if name not in host_loaded(config)]}
    try:
        report["plan"] = fpga_parts.check_fit(part, config.lanes, sizes, f"target {target.name}", single_port(config))
    except DoesNotFitError as exc:
        return _skipped(workdir, report, str(exc))
    params = {"CLK_HZ": board.clock_hz, "BAUD": baud, "LED_ACTIVE_LOW": int(board.led_active_low),
              "LANES": config.lanes, "ACT_BANKS": config.act_banks, "WGT_SINGLE_PORT": int(config.wgt_single_port),
              **sizes, **{param: f"mem/{name}.hex" for name, param in HEX.items()}}
    out = workdir / "fpga"
    out.mkdir(parents=True, exist_ok=True)
    try:
        if part.flow == "open":
            report.update(_open_flow(out, board, params, images, config, sizes, freq, baud))
        else:
            report.update(_vendor_flow(out, board, params, images, config, sizes))
    except ToolNotFoundError as exc:
        return _skipped(workdir, report, str(exc))
    report["built"] = True
    report.update(_cycles(config, images, report["fmax_mhz"], board.clock_hz))
    return _finish(workdir, report)


def _skipped(workdir: Path, report: dict, reason: str) -> tuple[list[str], dict]:
    log.warning("no bitstream: %s", reason)
    report.update(built=False, reason=reason)
    return _finish(workdir, report)


def _finish(workdir: Path, report: dict) -> tuple[list[str], dict]:
    """Write the report; returns the bundle files of this stage (fpga/..., the report) and the report."""
    (workdir / "reports").mkdir(exist_ok=True)
    _write(workdir / REPORT, json.dumps(report, indent=2) + "\n")
    files = sorted(p.relative_to(workdir).as_posix() for p in (workdir / "fpga").rglob("*") if p.is_file())
    return [*files, REPORT], report


def _open_flow(out: Path, board: Board, params: dict, images: Images, config: NpuConfig, sizes: dict[str, int],
               freq: float, baud: int) -> dict[str, Any]:
    """Lattice: patch the cached placed design when the architecture is known, else synthesize,
    place, route and pack (and cache the result)."""
    device = openflow.Device(board.fpga.family, _NEXTPNR_PART[board.part])
    key = architecture(board, config, sizes, freq, baud)
    cached = CACHE / key
    bitfile = _BITFILE[device.family]
    result = None
    if (cached / "summary.json").is_file():
        summary = json.loads((cached / "summary.json").read_text())
        try:
            result = _swap(cached, device, images, config.lanes, sizes, summary, host_loaded(config))
        except ToolFailedError as exc:  # the patcher cannot tell some block RAMs apart: build in full
            why = str(exc).strip().splitlines()[-1]
            log.warning("weight swap failed (%s); building the bitstream in full", why)
            result = _full_build(cached, board, device, params, images, config.lanes, sizes, freq)
            result["swap"] = {"used": False, "reason": f"the RAM patcher failed ({why}); built in full"}
    if result is None:
        result = _full_build(cached, board, device, params, images, config.lanes, sizes, freq)
    shutil.copyfile(result["bitstream"], out / bitfile)
    (out / "mem").mkdir(exist_ok=True)
    for name in HEX:
        if name not in host_loaded(config):
            shutil.copyfile(result["mem"] / f"{name}.hex", out / "mem" / f"{name}.hex")
    logs = result.get("logs", cached)
    for log_name in ("synth.log", "pnr.log", "nextpnr_report.json", "swap.log"):
        if (logs / log_name).is_file():
            shutil.copyfile(logs / log_name, out / log_name)
    summary = json.loads((logs / "summary.json").read_text())
    if result.get("work"):
        shutil.rmtree(result["work"], ignore_errors=True)
    return {"architecture": key, "bitstream": f"fpga/{bitfile}", "cache": str(cached), **summary["report"],
            "stages_s": result["stages_s"], "weight_swap": result["swap"]}


_NEXTPNR_PART = {"iCE40UP5K-SG48": ("--up5k", "--package", "sg48"),
                 "LFE5U-85F-6BG381C": ("--85k", "--package", "CABGA381", "--speed", "6")}


def _full_build(cached: Path, board: Board, device, params: dict, images: Images, lanes: int,
                sizes: dict[str, int], freq: float) -> dict[str, Any]:
    """Synthesize, place and route, pack; publish the work directory as the cache entry unless the
    architecture has one (a fallback from a failed swap), in which case the caller removes it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile_dir(CACHE, cached.name))
    stages: dict[str, float] = {}
    try:
        (work / "rtl").mkdir()
        for src in RTL:
            shutil.copyfile(src, work / "rtl" / src.name)
        shutil.copyfile(board.constraint_path, work / board.constraint_path.name)
        padded_hex(images, lanes, sizes, work / "mem")
        text = "design.asc" if device.family == "ice40" else "design.config"
        bitfile = _BITFILE[device.family]
        stages["synthesis"] = openflow.synthesize(device, [f"rtl/{s.name}" for s in RTL], TOP, params,
                                                  "netlist.json", work, work / "synth.log")
        stages["place_and_route"] = openflow.place_and_route(device, "netlist.json", board.constraint_path.name,
                                                             freq, text, "nextpnr_report.json", work,
                                                             work / "pnr.log")
        stages["pack"] = openflow.pack(device, text, bitfile, work, work / "pack.log")
        report = openflow.parse_report((work / "nextpnr_report.json").read_text(), device.family)
        report["synth_cells"] = openflow.parse_synth_stat((work / "synth_stat.txt").read_text())
        _write(work / "summary.json", json.dumps({"report": report, "text": text, "bitstream": bitfile,
                                                  "stages_s": stages}, indent=2))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result = {"bitstream": work / bitfile, "mem": work / "mem", "stages_s": stages, "logs": work, "work": work,
              "swap": {"used": False, "reason": "first build of this architecture (cache miss)"}}
    if not cached.exists():
        try:
            work.rename(cached)  # publish: later builds of this architecture patch it
            return {**result, "bitstream": cached / bitfile, "mem": cached / "mem", "logs": cached, "work": None}
        except OSError:  # another build published the same architecture meanwhile
            pass
    return result


def tempfile_dir(parent: Path, name: str) -> str:
    return tempfile.mkdtemp(prefix=f".{name}.", dir=parent)


def _swap(cached: Path, device, images: Images, lanes: int, sizes: dict[str, int], summary: dict,
          host_loads: list[str]) -> dict[str, Any]:
    """Patch the new memory images into the cached placed design and pack it: no place-and-route
    (memories the host loads are not in the bitstream: nothing to patch)."""
    work = Path(tempfile_dir(cached, "swap"))
    start = time.perf_counter()
    new = padded_hex(images, lanes, sizes, work / "mem")
    text = summary["text"]
    current = f"../{text}"
    patched = []
    bitfile = summary["bitstream"]
    try:
        for name in HEX:
            if name in host_loads or (cached / "mem" / f"{name}.hex").read_text() == new[name]:
                continue
            step = f"{len(patched)}_{text}"
            openflow.patch_bram(device, current, f"../mem/{name}.hex", f"mem/{name}.hex", step, work,
                                work / "swap.log")
            current = step
            patched.append(name)
        pack_s = openflow.pack(device, current, bitfile, work, work / "swap.log")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    total = time.perf_counter() - start
    shutil.copyfile(cached / "summary.json", work / "summary.json")
    for log_name in ("synth.log", "pnr.log", "nextpnr_report.json"):
        shutil.copyfile(cached / log_name, work / log_name)
    return {"bitstream": work / bitfile, "mem": work / "mem", "stages_s": {"weight_swap": total, "pack": pack_s},
            "swap": {"used": True, "patched": patched, "seconds": round(total, 3),
                     "full_build_s": round(sum(summary["stages_s"].values()), 3)}, "logs": work, "work": work}


def _vendor_flow(out: Path, board: Board, params: dict, images: Images, config: NpuConfig,
                 sizes: dict[str, int]) -> dict[str, Any]:
    """Vivado / Quartus: write the project (sources, a top setting the parameters, constraints, memory
    images, batch script) and run the tool when it is on PATH."""
    project = out / "project"
    (project / "rtl").mkdir(parents=True, exist_ok=True)
    for src in RTL:
        shutil.copyfile(src, project / "rtl" / src.name)
    padded_hex(images, config.lanes, sizes, project / "mem")
    (project / "rtl" / f"{VENDOR_TOP}.v").write_text(wrapper(params))
    tool = vivado if board.fpga.flow == "vivado" else quartus
    sources = [f"rtl/{s.name}" for s in RTL] + [f"rtl/{VENDOR_TOP}.v"]
    script = tool.write_project(project, board.part, VENDOR_TOP, sources, board.constraint_path, board.clock_hz)
    built = tool.build(project, script)
    return {"bitstream": f"fpga/project/{built['bitstream']}", **built["report"], "stages_s": built["stages_s"]}


VENDOR_TOP = "npu_fpga_top"


def wrapper(params: dict[str, object]) -> str:
    """A top module that instantiates npu_board with these parameters (vendor tools take string
    parameters most portably from the source)."""
    values = ", ".join(f".{k}({json.dumps(v) if isinstance(v, str) else int(v)})" for k, v in params.items())
    return (f"// generated by edgegen: the NPU board top with this bundle's parameters\n"
            f"module {VENDOR_TOP} (input wire clk, input wire uart_rx, output wire uart_tx, output wire led_busy,\n"
            f"                     output wire led_done);\n"
            f"    npu_board #({values}) board (.clk(clk), .uart_rx(uart_rx), .uart_tx(uart_tx),\n"
            f"        .led_busy(led_busy), .led_done(led_done));\nendmodule\n")


def _cycles(config: NpuConfig, images: Images, fmax_mhz: float, clock_hz: int) -> dict[str, Any]:
    """Cycles per image from the NPU's RTL in Verilator (the cycle count does not depend on the data);
    latency = cycles / Fmax and at the board's oscillator."""
    try:
        from .rtlsim import RtlNpu
        npu = RtlNpu(config)
    except (ToolNotFoundError, FileNotFoundError) as exc:
        return {"cycles_per_image": None, "cycles_note": f"not measured: {exc}"}
    try:
        for address, data in images.host_writes():
            npu.write(address, data)
        npu.start()
        status = npu.wait(1 << 31)
    finally:
        npu.close()
    cycles = status.cycles
    return {"cycles_per_image": cycles, "latency_ms": round(cycles / (fmax_mhz * 1e3), 3),
            "images_per_s": round(fmax_mhz * 1e6 / cycles, 2),
            "latency_ms_at_board_clock": round(cycles / (clock_hz / 1e3), 3)}
