"""The NPU's functional model: the golden reference the RTL must match bit for bit.

It holds the same memories as the RTL, is loaded through the same host byte address map, decodes
the same descriptors and computes each layer with the requantizer's integer arithmetic
(`arith`), vectorized over pixels and lanes with numpy. Cycle counts come from the RTL only.
"""

from __future__ import annotations

import numpy as np

from . import arith
from .isa import (CTRL_LAYERS, CTRL_STATUS, DESC_WORDS, KIND_ADD, KIND_CONV, KIND_END, KIND_MUL, PAR_STRIDE,
                  PROG_STRIDE, REGIONS, STATUS_DONE, STATUS_ERROR, TAP_STRIDE, Layer, NpuConfig, split_phase,
                  split_tap)
from .transport import RunStatus, Transport


class FunctionalNpu(Transport):
    """An NPU instance in numpy, addressed like the hardware (host byte writes/reads, start, status)."""

    def __init__(self, config: NpuConfig):
        self.config = config
        lanes = config.lanes
        self.act = np.zeros((config.act_words, lanes), np.int8)
        self.wgt = np.zeros((config.wgt_words, lanes), np.int8)
        self.par = np.zeros((config.par_entries, PAR_STRIDE), np.uint8)
        self.lut = np.zeros(config.lut_bytes, np.uint8)
        self.tap = np.zeros((config.tap_entries, TAP_STRIDE), np.uint8)
        self.prog = np.zeros((config.prog_words, PROG_STRIDE), np.uint8)
        self.status = 0
        self.layers_run = 0

    # -- host port ---------------------------------------------------------------------------
    def _region(self, address: int) -> tuple[np.ndarray, int]:
        region, offset = address >> 20, address & 0xFFFFF
        names = {v: k for k, v in REGIONS.items()}
        if region not in names or names[region] == "ctrl":
            raise ValueError(f"host address {address:#x} is not a memory region")
        memory = getattr(self, names[region]).reshape(-1).view(np.uint8)
        return memory, offset

    def write(self, address: int, data: bytes) -> None:
        """Host writes bytes at a byte address (the compiler sizes every image to its memory)."""
        memory, offset = self._region(address)
        chunk = np.frombuffer(bytes(data), np.uint8)[:max(0, memory.size - offset)]
        memory[offset:offset + chunk.size] = chunk

    def read(self, address: int, count: int) -> bytes:
        """Host reads bytes; the control region gives status and the layer counter."""
        if address >> 20 == REGIONS["ctrl"]:
            regs = np.zeros(32, np.uint8)
            regs[CTRL_STATUS] = self.status
            regs[CTRL_LAYERS:CTRL_LAYERS + 4] = np.array([self.layers_run], "<u4").view(np.uint8)
            offset = address & 0xFFFFF
            return regs[offset:offset + count].tobytes()
        memory, offset = self._region(address)
        return memory[offset:offset + count].tobytes()

    def start(self) -> None:
        """Run the loaded program to its END descriptor."""
        self.status, self.layers_run = 0, 0
        try:
            for layer in self.program():
                self.run_layer(layer)
                self.layers_run += 1
        except IndexError:  # an address past a memory: the RTL would wrap; the program is wrong
            self.status = STATUS_ERROR | STATUS_DONE
            return
        self.status = STATUS_DONE

    def wait(self, limit_cycles: int) -> RunStatus:
        """The run is over when start returns; the functional model counts no cycles (the RTL does)."""
        return RunStatus(self.status, 0, self.layers_run)

    # -- decoded memories ---------------------------------------------------------------------
    def program(self) -> list[Layer]:
        words = self.prog.reshape(-1).view("<u4")
        layers = []
        for i in range(0, words.size - DESC_WORDS + 1, DESC_WORDS):
            layer = Layer.decode(words[i:i + DESC_WORDS])
            if layer.kind == KIND_END:
                break
            layers.append(layer)
        return layers

    def params(self, base: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self.par[base:base + count]
        if len(rows) < count:
            raise IndexError("PAR")
        bias = rows[:, 0:4].copy().view("<i4").reshape(-1).astype(np.int64)
        mult = rows[:, 4:8].copy().view("<i4").reshape(-1).astype(np.int64)
        return bias, mult, rows[:, 8].view(np.int8).astype(np.int64)

    def taps(self, base: int, count: int) -> np.ndarray:
        rows = self.tap[base:base + count]
        if len(rows) < count:
            raise IndexError("TAP")
        return rows.copy().view("<u8").reshape(-1)

    # -- layers -------------------------------------------------------------------------------
    def run_layer(self, layer: Layer) -> None:
        if layer.kind == KIND_CONV:
            self._conv(layer)
        elif layer.kind in (KIND_ADD, KIND_MUL):
            self._elementwise(layer)
        else:
            raise IndexError(f"unknown layer kind {layer.kind}")

    def _post(self, layer: Layer, y: np.ndarray) -> np.ndarray:
        """Output zero point (int32 wrap, as the RTL adds), clamp, then the activation table."""
        y = np.clip(arith.wrap32(y + layer.zp_out), layer.act_min, layer.act_max)
        if layer.lut:
            table = self.lut[layer.lut_base:layer.lut_base + 256]
            if table.size < 256:
                raise IndexError("LUT")
            y = table[y + 128].view(np.int8)
        return y.astype(np.int8)

    def _conv(self, layer: Layer) -> None:
        lanes, s = self.config.lanes, layer.stride
        oy, ox = np.meshgrid(np.arange(layer.oh), np.arange(layer.ow), indexing="ij")
        oy, ox = oy.reshape(-1), ox.reshape(-1)
        if layer.up:  # base pixel (by, bx) and its step counts (ry, rx), as the sequencer keeps them
            ry, rx, phase = oy // s, ox // s, (oy % s) * s + (ox % s)
            by, bx = ry, rx
        else:
            ry, rx, phase = oy, ox, np.zeros_like(oy)
            by, bx = oy * s, ox * s
        pix = layer.in_base + ry * layer.row_step + rx * layer.col_step
        acc = np.zeros((oy.size, layer.groups, lanes), np.int64)
        phases = self.taps(layer.phase_base, s * s if layer.up else 1)
        for p, entry in enumerate(phases):
            sel = np.nonzero(phase == p)[0]
            if sel.size:
                acc[sel] = self._accumulate(layer, entry, by[sel], bx[sel], pix[sel])
        bias, mult, shift = self.params(layer.par_base, layer.groups * lanes)
        y = arith.mbqm(arith.wrap32(acc + bias.reshape(layer.groups, lanes)), mult.reshape(layer.groups, lanes),
                       shift.reshape(layer.groups, lanes), layer.even)
        out = self._post(layer, y)
        rows = layer.out_base + (np.arange(oy.size) * layer.out_gs)[:, None] + np.arange(layer.groups)[None, :]
        self._store(rows, out)

    def _accumulate(self, layer: Layer, entry: int, by: np.ndarray, bx: np.ndarray, pix: np.ndarray) -> np.ndarray:
        """int32 sums of one output phase: [pixels, groups, lanes]."""
        lanes = self.config.lanes
        tap_start, tap_count, wbase = split_phase(entry)
        dy, dx, off = split_tap(self.taps(tap_start, tap_count))
        per_group = tap_count * (1 if layer.depthwise else layer.cin)
        w = self._rows(self.wgt, wbase + np.arange(layer.groups * per_group)).astype(np.int64)
        w = w.reshape(layer.groups, tap_count, -1, lanes)  # [groups, taps, cin or 1, lanes]
        acc = np.zeros((by.size, layer.groups, lanes), np.int64)
        for t in range(tap_count):
            iy, ix = by + dy[t], bx + dx[t]
            y_out, x_out = (iy < 0) | (iy >= layer.ih), (ix < 0) | (ix >= layer.iw)
            base = pix + off[t]
            if layer.edge:  # one pixel outside reads the border: the tap's step is undone
                base = base - np.where(y_out, dy[t] * layer.row_step, 0) - np.where(x_out, dx[t] * layer.col_step, 0)
                valid = np.ones((by.size, 1), bool)
            else:
                valid = (~y_out & ~x_out)[:, None]
            if not valid.any():
                continue
            if layer.depthwise:
                rows = base[:, None] + np.arange(layer.groups)[None, :]
                x = np.where(valid[:, :, None], self._gather(rows, valid) - layer.zp_in, 0)
                acc += x * w[:, t, 0, :][None]
            else:
                ic = np.arange(layer.cin)
                words = self._gather(base[:, None] + ic // lanes, valid)  # [pixels, cin, lanes]
                x = np.take_along_axis(words, (ic % lanes)[None, :, None], axis=2)[..., 0]
                acc += np.einsum("pi,gil->pgl", np.where(valid, x - layer.zp_in, 0), w[:, t])
        return acc

    def _gather(self, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """ACT words at rows [pixels, k] (rows of invalid pixels are not read) -> int64 [pixels, k, lanes]."""
        safe = np.where(valid, rows, 0)
        return self._rows(self.act, safe).astype(np.int64)

    @staticmethod
    def _rows(memory: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if rows.size and (rows.min() < 0 or rows.max() >= len(memory)):
            raise IndexError("address past the end of a memory")
        return memory[rows]

    def _store(self, rows: np.ndarray, values: np.ndarray) -> None:
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.act)):
            raise IndexError("ACT")
        self.act[rows] = values

    def _elementwise(self, layer: Layer) -> None:
        """ADD/SUB: both inputs scaled by 2**20 and requantized, summed, requantized; MUL: the product of
        the offset inputs, requantized (TFLite's int8 kernels). A pixel stride of 0 broadcasts a pixel."""
        pixels = np.arange(layer.oh * layer.ow)[:, None]
        groups = np.arange(layer.groups)[None, :]
        a = self._rows(self.act, layer.in_base + pixels * layer.in_gs + groups).astype(np.int64) - layer.zp_in
        b = self._rows(self.act, layer.b_base + pixels * layer.b_gs + groups).astype(np.int64) - layer.zp_b
        (ma, mb, mo), (sa, sb, so) = layer.mults, layer.shifts
        if layer.kind == KIND_MUL:
            total = a * b
        else:
            scaled_a = arith.mbqm(arith.wrap32(a << arith.ADD_LEFT_SHIFT), ma, sa, layer.even)
            scaled_b = arith.mbqm(arith.wrap32(b << arith.ADD_LEFT_SHIFT), mb, sb, layer.even)
            total = arith.wrap32(scaled_a - scaled_b if layer.sub else scaled_a + scaled_b)
        out = self._post(layer, arith.mbqm(total, mo, so, layer.even))
        self._store(layer.out_base + pixels * layer.out_gs + groups, out)
