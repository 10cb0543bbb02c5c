"""Finding which bit columns of a memory image an iCE40 placed design holds (icebram's block layout),
and the column-restricted images that patch only those."""

import numpy as np
import pytest

from edgegen.toolchains import ToolFailedError, ice40_ram


def _asc(blocks: list[list[int]]) -> str:
    """An .asc text with one 256 x 16 (read mode 0) block RAM per entry: block bit 16 w + c is bit c of word w."""
    lines = []
    for n, words in enumerate(blocks):
        bits = sum(((word >> c) & 1) << (16 * w + c) for w, word in enumerate(words) for c in range(16))
        rows = [f"{(bits >> (256 * r)) & ((1 << 256) - 1):064x}" for r in range(16)]
        lines += [f".ramt_tile 6 {2 * n + 1}", *(["0" * 42] * 16), f".ram_data 6 {2 * n}", *rows]
    return "\n".join(lines) + "\n"


def _template(width: int, depth: int = 256, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(v) for v in rng.integers(0, 1 << 62, depth)] if width <= 62 else \
        [int(a) << 62 | int(b) for a, b in zip(rng.integers(0, 1 << 8, depth), rng.integers(0, 1 << 62, depth))]


def test_columns_of_a_removed_block_are_absent():
    """A 48-bit memory in three 16-bit blocks, the middle one removed (its outputs unread)."""
    words = [w & ((1 << 48) - 1) for w in _template(48)]
    low = [w & 0xFFFF for w in words]
    high = [(w >> 32) & 0xFFFF for w in words]
    asc = _asc([low, high])
    assert ice40_ram.present_columns(ice40_ram.block_slices(asc), words, 48) == [*range(16), *range(32, 48)]
    assert ice40_ram.present_columns(
        ice40_ram.block_slices(_asc([low, [(w >> 16) & 0xFFFF for w in words], high])), words, 48) == \
        list(range(48))


@pytest.mark.parametrize("keep", [list(range(8)), [0, 1, 2, 5, 6, 9]])
def test_column_images_patch_exactly_the_kept_columns(keep):
    template = [w & 0x3FF for w in _template(10)]
    image = [w & 0x3FF for w in _template(10, seed=1)]
    passes = ice40_ram.column_images(template, image, keep)
    assert len(passes) == (1 if len(keep) % 4 == 0 else 2)
    state = {bit: [(w >> bit) & 1 for w in template] for bit in keep}  # what the design holds, column by column
    for old, new in passes:
        olds = [int(x, 16) for x in old.split()]
        news = [int(x, 16) for x in new.split()]
        width = len(old.split()[0]) * 4
        assert width % 4 == 0 and len(olds) == 256
        # icebram: each from column must be a column the design holds now, all distinct
        columns = {tuple((w >> b) & 1 for w in olds): tuple((w >> b) & 1 for w in news) for b in range(width)}
        assert len(columns) == width
        held = {tuple(v): bit for bit, v in state.items()}
        for pattern, replacement in columns.items():
            state[held[pattern]] = list(replacement)
    assert all(state[bit] == [(w >> bit) & 1 for w in image] for bit in keep)


def test_fewer_than_four_columns_are_refused():
    with pytest.raises(ToolFailedError, match="only 3 bit columns"):
        ice40_ram.column_images([0] * 256, [1] * 256, [0, 1, 2])
