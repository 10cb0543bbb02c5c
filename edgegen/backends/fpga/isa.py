"""The NPU's program format and memory map (documented in hw/npu/README.md), shared by the
compiler, the functional model, the RTL-simulation runner and the session: numpy only.

A program is a list of 16-word layer descriptors in PROG, tap and phase tables in TAP, per-channel
(bias, multiplier, shift) in PAR, activation tables in LUT and int8 weights in WGT; activations
live in ACT. ACT and WGT words are `lanes` bytes wide: an activation word holds one channel group
(`lanes` channels) of one pixel. Every memory is reachable from the host as bytes at REGION << 20.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

DESC_WORDS = 16
KIND_END, KIND_CONV, KIND_ADD, KIND_MUL = 0, 1, 2, 3
REGIONS = {"ctrl": 0, "act": 1, "wgt": 2, "par": 3, "lut": 4, "tap": 5, "prog": 6}
PAR_STRIDE, TAP_STRIDE, PROG_STRIDE = 16, 8, 4  # host bytes per entry
CTRL_STATUS, CTRL_CYCLES, CTRL_LAYERS, CTRL_CONFIG = 0, 4, 8, 16  # CTRL byte offsets
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1, 2, 4
LUT_SIZE = 256


def region_address(region: str, offset: int) -> int:
    """Host byte address of `offset` within a memory region."""
    return (REGIONS[region] << 20) | offset


@dataclass(frozen=True)
class NpuConfig:
    """An NPU instance: MAC lanes and the depth of each on-chip memory (the RTL's parameters)."""

    lanes: int = 8
    act_words: int = 4096  # lanes bytes each
    wgt_words: int = 4096  # lanes bytes each
    par_entries: int = 512
    lut_bytes: int = 4096
    tap_entries: int = 1024
    prog_words: int = 1024
    act_banks: int = 1  # 2: ACT is two single-port banks; a layer's output and inputs sit in different banks
    wgt_single_port: bool = False  # WGT is single-port, loaded by the host (not initialised by the bitstream)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "NpuConfig":
        """From a target's backend_options: lanes, act_kb, wgt_kb, par_entries, lut_tables, tap_entries,
        prog_layers, act_banks, wgt_single_port."""
        lanes = int(options.get("lanes", 8))
        if lanes < 1 or lanes > 64 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two from 1 to 64, got {lanes}")
        banks = int(options.get("act_banks", 1))
        if banks not in (1, 2):
            raise ValueError(f"act_banks must be 1 or 2, got {banks}")
        act_kb = int(options.get("act_kb", 32))
        if banks == 2 and act_kb & (act_kb - 1):
            raise ValueError(f"act_kb must be a power of two with act_banks 2 (its top address bit picks the bank), "
                             f"got {act_kb}")
        return cls(lanes=lanes, act_banks=banks, wgt_single_port=bool(options.get("wgt_single_port", False)),
                   act_words=int(options.get("act_kb", 32)) * 1024 // lanes,
                   wgt_words=int(options.get("wgt_kb", 32)) * 1024 // lanes,
                   par_entries=int(options.get("par_entries", 512)),
                   lut_bytes=int(options.get("lut_tables", 16)) * LUT_SIZE,
                   tap_entries=int(options.get("tap_entries", 1024)),
                   prog_words=int(options.get("prog_layers", 64)) * DESC_WORDS)

    @property
    def act_bytes(self) -> int:
        return self.act_words * self.lanes

    @property
    def wgt_bytes(self) -> int:
        return self.wgt_words * self.lanes

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Layer:
    """One layer descriptor. CONV: broadcast (each lane an output channel, one input channel a cycle)
    or depthwise (lane l reads channel l of the group); down (input base = output * stride) or up
    (input base = output // stride, taps per output phase). ADD: TFLite's int8 add (or subtract) of two
    tensors; MUL: TFLite's int8 multiply. A stride of 0 reads one input pixel for every output pixel."""

    kind: int
    depthwise: bool = False
    up: bool = False
    lut: bool = False
    sub: bool = False  # ADD: a - b
    stride: int = 1
    lanes_used: int = 0  # lanes the drain / ADD unit serve (0: all); the others hold padding channels
    edge: bool = False  # CONV: a tap one pixel outside the input reads the border pixel (taps within +-1)
    even: bool = False  # the requantizer's final shift rounds half to even (layers ONNX computes in float)
    oh: int = 1
    ow: int = 1
    ih: int = 1
    iw: int = 1
    groups: int = 1  # output channel groups (words per output pixel written)
    cin: int = 1  # broadcast: input channels iterated per tap
    in_base: int = 0
    in_gs: int = 1  # words between input pixels
    out_gs: int = 1
    out_base: int = 0
    phase_base: int = 0  # CONV: TAP index of the phase table
    par_base: int = 0
    lut_base: int = 0
    zp_in: int = 0
    zp_out: int = 0
    act_min: int = -128
    act_max: int = 127
    col_step: int = 0  # CONV: words from one input base pixel to the next
    row_step: int = 0  # CONV: words from one input base row to the next
    b_base: int = 0  # ADD
    b_gs: int = 1
    zp_b: int = 0
    shifts: tuple[int, int, int] = (0, 0, 0)  # ADD: a, b, out
    mults: tuple[int, int, int] = (0, 0, 0)
    # not encoded: what the compiler reports about it
    name: str = ""
    op: str = ""
    macs: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> np.ndarray:
        s8 = lambda v: int(v) & 0xFF  # noqa: E731
        w = [0] * DESC_WORDS
        w[0] = (self.kind | self.depthwise << 4 | self.up << 5 | self.lut << 6 | self.sub << 7 | self.stride << 8
                | self.lanes_used << 16 | self.edge << 24 | self.even << 25)
        w[1] = self.oh | self.ow << 16
        w[2] = self.ih | self.iw << 16
        w[3] = self.groups | self.cin << 16
        w[4], w[6], w[8], w[9] = self.in_base, self.out_base, self.par_base, self.lut_base
        w[5] = self.in_gs | self.out_gs << 16
        w[10] = s8(self.zp_in) | s8(self.zp_out) << 8 | s8(self.act_min) << 16 | s8(self.act_max) << 24
        if self.kind in (KIND_ADD, KIND_MUL):
            w[7] = s8(self.shifts[0]) | s8(self.shifts[1]) << 8 | s8(self.shifts[2]) << 16
            w[11] = self.b_base
            w[12] = self.b_gs | s8(self.zp_b) << 16
            w[13:16] = [int(m) & 0xFFFFFFFF for m in self.mults]
        else:
            w[7], w[11], w[12] = self.phase_base, self.col_step, self.row_step
        return np.array([int(v) & 0xFFFFFFFF for v in w], dtype=np.uint32)

    @classmethod
    def decode(cls, words: np.ndarray) -> "Layer":
        w = [int(v) for v in words]
        s8 = lambda v: ((v & 0xFF) ^ 0x80) - 0x80  # noqa: E731
        s32 = lambda v: ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000  # noqa: E731
        layer = cls(kind=w[0] & 0xF, depthwise=bool(w[0] >> 4 & 1), up=bool(w[0] >> 5 & 1),
                    lut=bool(w[0] >> 6 & 1), sub=bool(w[0] >> 7 & 1), stride=w[0] >> 8 & 0xFF,
                    lanes_used=w[0] >> 16 & 0xFF, edge=bool(w[0] >> 24 & 1),
                    even=bool(w[0] >> 25 & 1), oh=w[1] & 0xFFFF, ow=w[1] >> 16,
                    ih=w[2] & 0xFFFF, iw=w[2] >> 16, groups=w[3] & 0xFFFF, cin=w[3] >> 16, in_base=w[4],
                    in_gs=w[5] & 0xFFFF, out_gs=w[5] >> 16, out_base=w[6], par_base=w[8], lut_base=w[9],
                    zp_in=s8(w[10]), zp_out=s8(w[10] >> 8), act_min=s8(w[10] >> 16), act_max=s8(w[10] >> 24))
        if layer.kind in (KIND_ADD, KIND_MUL):
            layer.shifts = (s8(w[7]), s8(w[7] >> 8), s8(w[7] >> 16))
            layer.b_base, layer.b_gs, layer.zp_b = w[11], w[12] & 0xFFFF, s8(w[12] >> 16)
            layer.mults = (s32(w[13]), s32(w[14]), s32(w[15]))
        else:
            layer.phase_base, layer.col_step, layer.row_step = w[7], s32(w[11]), s32(w[12])
        return layer


def tap_entry(dy: int, dx: int, offset: int) -> int:
    """A TAP word for one kernel tap: input pixel (base + dy, base + dx), word offset from the base pixel."""
    return (dy & 0xFF) << 56 | (dx & 0xFF) << 48 | (offset & 0xFFFFFFFF)


def phase_entry(tap_start: int, tap_count: int, wgt_base: int) -> int:
    """A TAP word for one output phase: where its taps start, how many, where its weights start."""
    return (tap_start & 0xFFFF) << 48 | (tap_count & 0xFFFF) << 32 | (wgt_base & 0xFFFFFFFF)


def split_tap(entry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, offset) of tap words."""
    e = np.asarray(entry, np.uint64)
    signed = lambda v, bits: (v.astype(np.int64) ^ (1 << (bits - 1))) - (1 << (bits - 1))  # noqa: E731
    return (signed((e >> np.uint64(56)) & np.uint64(0xFF), 8), signed((e >> np.uint64(48)) & np.uint64(0xFF), 8),
            signed(e & np.uint64(0xFFFFFFFF), 32))


def split_phase(entry: int) -> tuple[int, int, int]:
    """(tap_start, tap_count, wgt_base) of a phase word."""
    e = int(entry)
    return e >> 48 & 0xFFFF, e >> 32 & 0xFFFF, e & 0xFFFFFFFF


@dataclass
class Images:
    """Contents of the NPU's static memories for one program (what the bitstream's RAMs hold)."""

    wgt: np.ndarray  # int8 [words, lanes]
    par: np.ndarray  # int64 [entries, 3]: bias, multiplier, shift
    lut: np.ndarray  # uint8 [bytes]
    tap: np.ndarray  # uint64 [entries]
    prog: np.ndarray  # uint32 [words]

    def host_writes(self, only: list[str] | None = None) -> list[tuple[int, bytes]]:
        """(host byte address, bytes) that load this program into an NPU (only: these memories, by name)."""
        par = np.zeros((len(self.par), PAR_STRIDE), np.uint8)
        par[:, 0:4] = self.par[:, 0].astype("<i4").view(np.uint8).reshape(-1, 4)
        par[:, 4:8] = self.par[:, 1].astype("<i4").view(np.uint8).reshape(-1, 4)
        par[:, 8] = self.par[:, 2].astype(np.int8).view(np.uint8)
        writes = {"wgt": self.wgt.astype(np.int8).tobytes(), "par": par.tobytes(),
                  "lut": self.lut.astype(np.uint8).tobytes(), "tap": self.tap.astype("<u8").tobytes(),
                  "prog": self.prog.astype("<u4").tobytes()}
        return [(region_address(name, 0), data) for name, data in writes.items() if only is None or name in only]

    def save(self, path) -> None:
        np.savez(path, wgt=self.wgt, par=self.par, lut=self.lut, tap=self.tap, prog=self.prog)

    @classmethod
    def load(cls, path) -> "Images":
        data = np.load(path)
        return cls(**{k: data[k] for k in ("wgt", "par", "lut", "tap", "prog")})

    def write_hex(self, directory, lanes: int) -> list[str]:
        """$readmemh images, one word per line (what the RTL's *_INIT parameters and part 2's RAM patching read)."""
        from pathlib import Path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        wide = lambda rows: ["".join(f"{int(b) & 0xFF:02x}" for b in reversed(r)) for r in rows]  # noqa: E731
        par = [f"{int(s) & 0xFF:02x}{int(m) & 0xFFFFFFFF:08x}{int(b) & 0xFFFFFFFF:08x}" for b, m, s in self.par]
        images = {"wgt.hex": wide(self.wgt), "par.hex": par, "lut.hex": [f"{int(v):02x}" for v in self.lut],
                  "tap.hex": [f"{int(v):016x}" for v in self.tap], "prog.hex": [f"{int(v):08x}" for v in self.prog]}
        for name, lines in images.items():
            (directory / name).write_text("\n".join(lines) + "\n")
        return sorted(images)
