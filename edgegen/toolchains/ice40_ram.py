"""Which bit columns of a memory image an iCE40 placed design holds, for patching it with icebram.

icebram replaces block-RAM contents by matching every 256-word bit column ("bit slice") of its
from-image against the slices of the initialized block RAMs in an .asc file, and refuses when some
column is found less often than others. Yosys removes a block RAM whose outputs the design never
reads (e.g. the unused middle bits of a wide word), so the placed design may hold only some columns
of an image. `block_slices` and `present_columns` find them (the block-RAM layout below is icebram's:
4096 bits per block, read mode from the tile's configuration bits), and `column_images` writes
from/to images of just those columns for icebram.
"""

from __future__ import annotations

import re

from . import ToolFailedError

_SUBIDX = {0: (0,), 1: (0, 1), 2: (0, 2, 1, 3), 3: (0, 4, 2, 6, 1, 5, 3, 7)}
_RAM_DATA = re.compile(r"^\.ram_data (\d+) (\d+)$")
_RAMT_TILE = re.compile(r"^\.ramt_tile (\d+) (\d+)$")


def block_slices(asc: str) -> set[int]:
    """Every 256-bit slice of every initialized block RAM in an .asc text, each as an int (bit k = word k)."""
    lines = asc.splitlines()
    data, mode = {}, {}
    for n, line in enumerate(lines):
        if found := _RAM_DATA.match(line):
            data[(int(found[1]), int(found[2]))] = _block_bits(lines[n + 1:n + 17])
        elif found := _RAMT_TILE.match(line):
            mode[(int(found[1]), int(found[2]) - 1)] = (2 if lines[n + 3][7] == "1" else 0) | \
                (1 if lines[n + 4][7] == "1" else 0)
    slices = set()
    for pos, bits in data.items():
        read_mode = mode.get(pos, 0)
        subidx = _SUBIDX[read_mode]
        per = len(subidx)
        for block in range(0, 4096, 4096 // per):
            for base in range(0, 16, per):
                value = 0
                for k in range(256):
                    outer, inner = divmod(k, per)
                    value |= ((bits >> (block + base + outer * 16 + subidx[inner])) & 1) << k
                slices.add(value)
    return slices


def _block_bits(rows: list[str]) -> int:
    """A block's 4096 bits from its 16 .ram_data rows (row r holds bits 256 r .. 256 r + 255, MSB first)."""
    return sum(int(row, 16) << (256 * r) for r, row in enumerate(rows))


def columns(words: list[int], width: int) -> list[list[int]]:
    """The 256-word slices of each bit column of an image: columns(words, width)[bit] = [slice, ...]."""
    out = []
    for bit in range(width):
        slices = []
        for start in range(0, len(words), 256):
            value = 0
            for k, word in enumerate(words[start:start + 256]):
                value |= ((word >> bit) & 1) << k
            slices.append(value)
        out.append(slices)
    return out


def present_columns(found: set[int], template: list[int], width: int) -> list[int]:
    """The bit columns of a template image whose every slice is among `found` (a placed design's
    `block_slices`)."""
    return [bit for bit, slices in enumerate(columns(template, width)) if all(s in found for s in slices)]


def column_images(template: list[int], image: list[int], keep: list[int]) -> list[tuple[str, str]]:
    """icebram (from, to) image texts that replace the template's `keep` columns by the image's: one pair
    when len(keep) is a multiple of 4 (hex digits), else two, the first of which also carries the last
    columns unchanged (template to template) so that no digit holds a column the design lacks."""
    if len(keep) < 4:
        raise ToolFailedError(f"the placed design holds only {len(keep)} bit columns of a memory; icebram patches "
                              "whole hex digits (4 columns), so this memory cannot be patched in; change its depth in "
                              "the target's backend_options")
    rest = len(keep) % 4
    passes = [(keep[:4], keep[:rest]), (keep[rest:], keep[rest:])] if rest else [(keep, keep)]
    return [(_text(template, template, cols, set()), _text(template, image, cols, set(changed)))
            for cols, changed in passes]


def _text(template: list[int], image: list[int], cols: list[int], changed: set[int]) -> str:
    digits = len(cols) // 4
    lines = []
    for old, new in zip(template, image):
        value = 0
        for n, bit in enumerate(cols):
            value |= (((new if bit in changed else old) >> bit) & 1) << n
        lines.append(f"{value:0{digits}x}")
    return "\n".join(lines) + "\n"
