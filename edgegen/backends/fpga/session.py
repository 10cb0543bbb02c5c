"""Device half of the `fpga` backend (numpy only): run a bundle's NPU program on an NPU.

The NPU is reached through a `Transport`: the functional model in-process (default, the golden
reference), the RTL in Verilator (mode "rtl", or EDGEGEN_FPGA_MODE=rtl), or a board link a user
passes in (`Session(..., transport=MySpiLink())`). The session uploads the program once, then per
image: runs the host prologue (element-wise float ops, embedding lookups, quantization), writes the
inputs, starts, waits, reads the outputs, dequantizes and runs the host epilogue (a final Tanh).
On a board flashed with the bundle's bitstream it uploads only what the bitstream cannot hold.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, DamagedBundle, RequestError
from . import hostio, unary
from .isa import Images, NpuConfig
from .model import FunctionalNpu
from .transport import NpuError, RunStatus, Transport

MODES = ("functional", "rtl")
MODE_ENV = "EDGEGEN_FPGA_MODE"
CYCLE_LIMIT = 1 << 31


def host_support(options: dict[str, Any]) -> tuple[bool, str]:
    """FPGA bundles run anywhere numpy does (functional model); RTL mode needs Verilator."""
    mode = os.environ.get(MODE_ENV) or options.get("mode", "functional")
    if mode == "rtl":
        from ...toolchains import ToolNotFoundError
        from .rtlsim import verilator_command
        try:
            verilator_command()
        except ToolNotFoundError as exc:
            return False, str(exc)
        return True, "NPU RTL simulation (Verilator)"
    return True, "NPU functional model (numpy)"


def _npu_problem(npu: object) -> str | None:
    """What is wrong with a manifest's session.npu (the NPU configuration the program was built for), or None."""
    names = [f.name for f in dataclasses.fields(NpuConfig)]
    if not isinstance(npu, dict) or set(npu) - set(names):
        return f"session.npu is {npu!r}, not a mapping of {', '.join(names)}"
    for key, value in npu.items():
        if key == "wgt_single_port":
            if not isinstance(value, bool):
                return f"session.npu.{key} is {value!r}, not true or false"
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"session.npu.{key} is {value!r}, not a positive integer"
    lanes = npu.get("lanes", NpuConfig.lanes)
    if lanes > 64 or lanes & (lanes - 1):
        return f"session.npu.lanes is {lanes}, not a power of two from 1 to 64"
    if npu.get("act_banks", 1) not in (1, 2):
        return f"session.npu.act_banks is {npu['act_banks']}, not 1 or 2"
    return None


def session_problem(session: dict[str, Any]) -> str | None:
    """What is wrong with the options of a manifest's session the NPU reads (npu, mode, fmax_mhz), or None."""
    if "npu" not in session:
        return "session.npu is missing"
    if session.get("mode", "functional") not in MODES:
        return f"session.mode is {session['mode']!r}, not one of {', '.join(MODES)}"
    fmax = session.get("fmax_mhz")
    if fmax is not None and (isinstance(fmax, bool) or not isinstance(fmax, (int, float)) or not 0 < fmax < 1e6):
        return f"session.fmax_mhz is {fmax!r}, not a positive number of MHz"
    return _npu_problem(session["npu"])


def latency_clock(session: dict[str, Any]) -> dict[str, Any] | None:
    """The clock a run's latency is quoted at: a built bitstream's achieved Fmax (fmax_source "bitstream", with
    its timing verdict at the board's NPU clock), else the target's fmax_mhz ("target": no timing result, so
    timing_met and board_clock_mhz None); None where neither is known. Its keys go into the execution report
    as they are, with latency_ms_at_board_clock None until a run's cycles give it at a clock the bitstream meets:
    every key is there whether or not a bitstream checked timing."""
    bitstream = session.get("bitstream") or {}
    fmax, clock = _mhz(bitstream.get("fmax_mhz")), _mhz(bitstream.get("clock_mhz"))
    if bitstream.get("built") and fmax:
        return {"fmax_mhz": fmax, "fmax_source": "bitstream", "timing_met": bitstream.get("timing_met") is True,
                "board_clock_mhz": clock, "latency_ms_at_board_clock": None}
    if not session.get("fmax_mhz"):
        return None
    return {"fmax_mhz": session["fmax_mhz"], "fmax_source": "target", "timing_met": None, "board_clock_mhz": None,
            "latency_ms_at_board_clock": None}


def _mhz(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6
    return float(value) if ok else None


def open_device(mode: str, config: NpuConfig) -> Transport:
    """A fresh NPU of this configuration: the functional model or the RTL simulation."""
    if mode == "functional":
        return FunctionalNpu(config)
    if mode == "rtl":
        from .rtlsim import RtlNpu
        return RtlNpu(config)
    raise BackendUnavailableError(f"unknown NPU mode {mode!r}; use one of {', '.join(MODES)}, or pass a board "
                                  "transport")


def _env_mode() -> str | None:
    """EDGEGEN_FPGA_MODE, checked (None where unset or empty)."""
    mode = os.environ.get(MODE_ENV)
    if mode and mode not in MODES:
        raise BackendUnavailableError(f"{MODE_ENV}={mode!r} is not an NPU mode; set it to one of {', '.join(MODES)}, "
                                      "or unset it to run the mode the bundle records")
    return mode or None


class Session:
    """Runs an FPGA bundle: batch elements one at a time through the NPU."""

    one_at_a_time = True  # a sample's result never depends on the batch it came in (build.py need not check)

    def __init__(self, bundle_dir: Path, session: dict[str, Any], threads: int, host_fallback: bool = False,
                 transport: Transport | None = None, mode: str | None = None):
        bundle_dir = Path(bundle_dir)
        problem = session_problem(session)
        if problem:
            raise DamagedBundle(f"{bundle_dir / 'manifest.json'}: {problem} (a damaged or edited manifest); rebuild "
                                "the bundle or copy it again")
        self.config = NpuConfig(**session["npu"])
        self.mode = "board" if transport is not None else (mode or _env_mode() or session.get("mode", "functional"))
        self.device = transport or open_device(self.mode, self.config)
        self.inputs, self.outputs = session["inputs"], session["outputs"]
        self.output_names = [o["name"] for o in self.outputs]
        tables = np.load(bundle_dir / session["host_tables"])
        self.tables = {k: tables[k] for k in tables.files}
        self.clock = latency_clock(session)
        self.layer_ops = session.get("layer_ops", {})
        self.last_status: RunStatus | None = None
        for address, data in Images.load(bundle_dir / session["entry"]).host_writes(self.uploads(session)):
            self.device.write(address, data)

    def uploads(self, session: dict[str, Any]) -> list[str] | None:
        """Memories to load when the session opens: on a board flashed with the bundle's bitstream only
        those the bitstream cannot hold (`host_loads`: a WGT in SPRAM); an emulated NPU starts empty."""
        bitstream = session.get("bitstream") or {}
        return bitstream.get("host_loads", []) if self.mode == "board" and bitstream.get("built") else None

    def close(self) -> None:
        self.device.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def run_codes(self, codes: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], RunStatus]:
        """One NPU run on int8 input codes (by NPU input name) -> int8 output codes (by output name)."""
        lanes = self.config.lanes
        for entry in self.inputs:
            self.device.write(*hostio.to_words(entry["placement"], codes[entry["name"]], lanes))
        self.device.start()
        status = self.device.wait(CYCLE_LIMIT)
        if not status.ok:
            raise NpuError(f"the NPU ({self.mode}) did not finish this bundle's program: status {status.status:#x} "
                           f"after {status.layers} layers. Check that the NPU has the configuration the bundle was "
                           f"built for ({self.config.lanes} lanes, its memory sizes) and that its link works.")
        out = {}
        for entry in self.outputs:
            address, count = hostio.span(entry["placement"], lanes)
            out[entry["name"]] = hostio.from_words(entry["placement"], self.device.read(address, count), lanes)
        self.last_status = status
        return out, status

    def input_codes(self, feeds: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """The host prologue for batch element `index`: int8 codes of every NPU input."""
        codes = {}
        for entry in self.inputs:
            if entry["source"] not in feeds:
                raise RequestError(f"input {entry['source']!r} is missing; this model takes "
                                   f"{sorted({e['source'] for e in self.inputs})}")
            value = np.asarray(feeds[entry["source"]])[index]
            grid = entry["placement"]["scale"], entry["placement"]["zero_point"]
            if "gather" in entry:
                table = self.tables[entry["gather"]]
                row = int(np.asarray(value).reshape(-1)[0])
                if not 0 <= row < len(table):
                    raise RequestError(f"input {entry['source']!r}: index {row} is outside the table's "
                                       f"{len(table)} rows")
                codes[entry["name"]] = table[row]
            else:
                codes[entry["name"]] = unary.quantize(unary.apply(entry["chain"], value), *grid)
        return codes

    def outputs_from(self, codes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The host epilogue: dequantize and run what the QDQ graph computes in float after the NPU."""
        result = {}
        for entry in self.outputs:
            grid = entry["placement"]["scale"], entry["placement"]["zero_point"]
            values = unary.apply(entry["chain"], unary.dequantize(codes[entry["name"]], *grid))
            result[entry["name"]] = values.reshape(entry["shape"][1:])
        return result

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch of inputs (each element is one NPU run)."""
        count = len(next(iter(feeds.values()))) if feeds else 1
        parts = [self.outputs_from(self.run_codes(self.input_codes(feeds, i))[0]) for i in range(count)]
        return {name: np.stack([p[name] for p in parts]).astype(np.float32) for name in self.output_names}

    def execution_report(self) -> dict[str, Any]:
        """Where the layers run (the NPU, int8) and the last run's cycles and latency at Fmax (`latency_clock`:
        the bitstream's achieved Fmax where one was built, then also at the board's clock where it meets timing)."""
        host = [spec["op"] for entry in self.inputs + self.outputs for spec in entry["chain"]]
        host += ["Gather" for entry in self.inputs if "gather" in entry]
        report: dict[str, Any] = {"int8": dict(self.layer_ops), "device": self.mode,
                                  "float": {f"{op} (host)": host.count(op) for op in host}}
        if self.last_status is not None and self.last_status.cycles:
            report["cycles"] = self.last_status.cycles
            clock = self.clock or {}
            if clock:
                report.update(clock, latency_ms_at_fmax=round(report["cycles"] / (clock["fmax_mhz"] * 1e3), 3))
            if clock.get("timing_met") and clock.get("board_clock_mhz"):
                report["latency_ms_at_board_clock"] = round(report["cycles"] / (clock["board_clock_mhz"] * 1e3), 3)
        return report
