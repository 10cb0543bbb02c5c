"""Build an NPU program: layer descriptors with symbolic buffer references, and the WGT, PAR,
LUT and TAP contents they point at. Addresses of activations are filled in after allocation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import arith
from .isa import KIND_ADD, KIND_CONV, KIND_MUL, Layer, NpuConfig, phase_entry, tap_entry
from .tensors import Tensor

Tap = tuple[int, int, int]  # dy, dx, channel-group offset


@dataclass
class Phase:
    """One output phase of a CONV layer: its taps and its weights [groups, taps, cin or 1, lanes]."""

    taps: list[Tap]
    weights: np.ndarray


class Program:
    """Layers in execution order plus the static memory contents they use."""

    def __init__(self, config: NpuConfig):
        self.config = config
        self.layers: list[Layer] = []
        self.refs: list[dict[str, Tensor]] = []  # per layer: "in", "out", "b" -> the tensor view
        self.wgt: list[np.ndarray] = []
        self.wgt_words = 0
        self.par: list[np.ndarray] = []
        self.par_rows = 0
        self.luts: dict[bytes, int] = {}
        self.regrid_luts: set[bytes] = set()  # tables that only move values onto another int8 grid
        self.tap: list[int] = []

    # -- static memories ---------------------------------------------------------------------
    def _weights(self, words: np.ndarray) -> int:
        base = self.wgt_words
        self.wgt.append(words.reshape(-1, self.config.lanes).astype(np.int8))
        self.wgt_words += len(self.wgt[-1])
        return base

    def _params(self, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> int:
        base = self.par_rows
        self.par.append(np.stack([bias, mult, shift], axis=1).astype(np.int64))
        self.par_rows += len(bias)
        return base

    def note_regrid(self, table: np.ndarray) -> None:
        """Record a table as a requantization only (no activation in it), for the fit report."""
        self.regrid_luts.add(table.astype(np.uint8).tobytes())

    def _lut(self, table: np.ndarray) -> int:
        key = table.astype(np.uint8).tobytes()
        if key not in self.luts:
            self.luts[key] = len(self.luts) * 256
        return self.luts[key]

    # -- layers ------------------------------------------------------------------------------
    def conv(self, name: str, op: str, src: Tensor, dst: Tensor, phases: list[Phase], params: tuple, *,
             depthwise: bool, up: bool, stride: int, oh: int, ow: int, out_gs: int, groups: int, cin: int,
             macs: int, lut: np.ndarray | None = None, edge: bool = False, even: bool = False) -> Layer:
        """A CONV layer reading `src` and writing `dst` (params: per physical output channel bias, M, shift)."""
        bases: dict[bytes, int] = {}
        phase_base = len(self.tap)
        self.tap.extend([0] * len(phases))
        for i, phase in enumerate(phases):
            key = phase.weights.tobytes()
            if key not in bases:
                bases[key] = self._weights(phase.weights)
            self.tap[phase_base + i] = phase_entry(len(self.tap), len(phase.taps), bases[key])
            self.tap.extend(tap_entry(dy, dx, (dy * src.w + dx) * src.gs + dg) for dy, dx, dg in phase.taps)
        col = src.gs * (1 if up else stride)
        layer = Layer(KIND_CONV, depthwise=depthwise, up=up, lut=lut is not None, stride=stride, edge=edge, even=even,
                      lanes_used=self._lanes_used(dst, groups), oh=oh, ow=ow,
                      ih=src.h, iw=src.w, groups=groups, cin=cin, in_gs=src.gs, out_gs=out_gs,
                      phase_base=phase_base, par_base=self._params(*params),
                      lut_base=self._lut(lut) if lut is not None else 0, zp_in=src.zero_point,
                      zp_out=dst.zero_point, col_step=col, row_step=col * src.w, name=name, op=op, macs=macs)
        layer.notes.update(wgt_end=self.wgt_words, par_end=self.par_rows, tap_end=len(self.tap), luts=len(self.luts))
        return self._append(layer, {"in": src, "out": dst})

    def elementwise(self, name: str, op: str, a: Tensor, b: Tensor, dst: Tensor) -> Layer:
        """TFLite's int8 ADD, SUB (a - b) or MUL of two tensors with the same channel layout."""
        if op == "Mul":
            kind, mults = KIND_MUL, ((0, 0), (0, 0), arith.conv_multiplier(a.scale, b.scale, dst.scale))
        else:
            kind, mults = KIND_ADD, arith.add_multipliers(a.scale, b.scale, dst.scale)
        (ma, sa), (mb, sb), (mo, so) = mults
        layer = Layer(kind, sub=op == "Sub", lanes_used=self._lanes_used(dst, dst.groups), oh=dst.h, ow=dst.w,
                      ih=dst.h, iw=dst.w, groups=dst.groups,
                      in_gs=a.gs, out_gs=dst.gs, b_gs=b.gs, zp_in=a.zero_point, zp_b=b.zero_point,
                      zp_out=dst.zero_point, shifts=(sa, sb, so), mults=(ma, mb, mo), name=name, op=op)
        layer.notes.update(wgt_end=self.wgt_words, par_end=self.par_rows, tap_end=len(self.tap), luts=len(self.luts))
        return self._append(layer, {"in": a, "b": b, "out": dst})

    def _lanes_used(self, dst: Tensor, groups: int) -> int:
        """Lanes holding real channels when a layer writes one group (the drain skips the others)."""
        return min(dst.physical, self.config.lanes) if groups == 1 else self.config.lanes

    def set_lut(self, index: int, table: np.ndarray) -> None:
        """Give an emitted CONV layer an activation table (a fused element-wise op)."""
        self.layers[index].lut = True
        self.layers[index].lut_base = self._lut(table)
        self.layers[index].notes["luts"] = len(self.luts)

    def _append(self, layer: Layer, refs: dict[str, Tensor]) -> Layer:
        index = len(self.layers)
        for role, tensor in refs.items():
            buf = tensor.buffer
            if role == "out":
                buf.first = index if buf.first is None else min(buf.first, index)
            buf.last = max(buf.last, index)
        self.layers.append(layer)
        self.refs.append(refs)
        return layer

    def resolve(self) -> None:
        """Fill activation addresses once every buffer has its base."""
        for layer, refs in zip(self.layers, self.refs):
            layer.in_base = refs["in"].buffer.base + refs["in"].goff
            layer.out_base = refs["out"].buffer.base + refs["out"].goff
            if "b" in refs:
                layer.b_base = refs["b"].buffer.base + refs["b"].goff


def requant_params(count: int, channels: np.ndarray, bias: np.ndarray, multipliers: list[tuple[int, int]]) -> tuple:
    """(bias, M, shift) per physical channel; channels[i] is the logical channel at physical i (-1: padding)."""
    out = np.zeros((3, count), np.int64)
    for i, c in enumerate(channels):
        if c >= 0:
            out[:, i] = (bias[c], *multipliers[c])
    return out[0], out[1], out[2]
