"""Where an int8 activation lives on the NPU: a buffer in ACT and a view of it.

A tensor [C, H, W] is stored pixel by pixel (row-major), each pixel as `gs` words of `lanes`
bytes. Logical channel c sits at physical channel cmap[c] (word goff + cmap[c] // lanes, byte
cmap[c] % lanes); physical channels no logical channel maps to are padding. Convolutions absorb
any channel map into their weights, so the compiler lays tensors out for their consumers (concat
segments, pixel-shuffle phases, a dense layer's output already in pixel order) without copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Buffer:
    """A region of ACT, allocated after lowering: words, and the layers that write and read it."""

    name: str
    words: int
    first: int | None = None  # index of the first layer that writes it (-1: written by the host)
    last: int = -1  # index of the last layer that reads it (end of program for outputs)
    base: int | None = None
    tensors: list[str] = field(default_factory=list)
    bank: int | None = None  # ACT bank (act_banks 2): the top address bit of every word of the buffer
    channels: int | None = None  # logical channels of the tensor it was made for (the rest of its lanes: padding)


@dataclass
class Tensor:
    """An int8 tensor on the NPU: shape, grid (scale, zero point) and its place in a buffer."""

    name: str
    c: int
    h: int
    w: int
    scale: float
    zero_point: int
    cmap: np.ndarray
    groups: int  # channel groups of its own
    buffer: Buffer
    gs: int  # words per pixel in the buffer
    goff: int = 0  # its first group within each pixel of the buffer

    @property
    def grid(self) -> tuple[float, int]:
        return self.scale, self.zero_point

    def inverse(self, lanes: int) -> np.ndarray:
        """Logical channel at each of its groups * lanes physical channels, -1 for padding."""
        inv = np.full(self.groups * lanes, -1, np.int64)
        inv[self.cmap] = np.arange(self.c)
        return inv

    @property
    def physical(self) -> int:
        """Physical channels up to the last one used (what a broadcast layer iterates)."""
        return int(self.cmap.max()) + 1

    def placement(self) -> dict:
        """How the session finds it: base word, words per pixel, group offset, channel map."""
        return {"base": int(self.buffer.base) + self.goff, "gs": self.gs, "groups": self.groups,
                "h": self.h, "w": self.w, "c": self.c, "cmap": [int(v) for v in self.cmap],
                "scale": float(self.scale), "zero_point": int(self.zero_point)}


def dense_layout(c: int, lanes: int) -> tuple[np.ndarray, int]:
    """The default channel map (identity) and its channel groups."""
    return np.arange(c), -(-c // lanes)


def phase_major_layout(c: int, r: int, mode: str, lanes: int) -> tuple[np.ndarray, int]:
    """Channel map that puts each pixel-shuffle phase's channels in their own channel groups."""
    out_c = c // (r * r)
    groups = -(-out_c // lanes)
    k = np.arange(c)
    if mode == "CRD":
        ch, phase = k // (r * r), k % (r * r)
    else:
        ch, phase = k % out_c, k // out_c
    return phase * groups * lanes + ch, groups * r * r
