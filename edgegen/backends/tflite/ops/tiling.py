"""Repetition built from two-input CONCATENATIONs and SLICEs, which XNNPACK takes (it takes no
TILE, BROADCAST_TO, RESIZE_NEAREST_NEIGHBOR or edge padding)."""

from __future__ import annotations

from ..lower import Lowerer


def concat(lw: Lowerer, inputs: list[int], axis: int) -> int:
    """CONCATENATION of tensors on one int8 grid (or float) into a new temporary."""
    shape = lw.b.shape(inputs[0])
    shape[axis] = sum(lw.b.shape(i)[axis] for i in inputs)
    out = lw.temp(shape, lw.b.quant(inputs[0]), hint=f"concat{axis}")
    lw.op("CONCATENATION", inputs, [out], lw.options("Concatenation", axis=axis))
    return out


def tile(lw: Lowerer, index: int, axis: int, k: int) -> int:
    """`index` repeated k times along axis, by doubling (log2(k) concatenations of two inputs)."""
    result, have, power, size = None, 0, index, 1
    while True:
        if k & size:
            result = power if result is None else concat(lw, [result, power], axis)
            have += size
        if have == k:
            return result
        power, size = concat(lw, [power, power], axis), size * 2


def row(lw: Lowerer, index: int, axis: int, position: int) -> int:
    """One slice (size 1) of a tensor along axis."""
    shape = lw.b.shape(index)
    begin = [0] * len(shape)
    size = list(shape)
    begin[axis], size[axis] = position, 1
    out = lw.temp(size, lw.b.quant(index), hint="row")
    lw.op("SLICE", [index, lw.int32(begin, "begin"), lw.int32(size, "size")], [out])
    return out


def join(lw: Lowerer, parts: list[int], axis: int) -> int:
    """Concatenate parts pairwise (XNNPACK takes two-input CONCATENATIONs of any size)."""
    while len(parts) > 1:
        parts = [concat(lw, parts[i:i + 2], axis) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def edge_pad(lw: Lowerer, index: int, pads: dict[int, tuple[int, int]]) -> int:
    """Pad by repeating the border values: pads maps a stored axis to (before, after)."""
    for axis, (before, after) in pads.items():
        size = lw.b.shape(index)[axis]
        parts = [tile(lw, row(lw, index, axis, 0), axis, before)] if before else []
        parts.append(index)
        parts += [tile(lw, row(lw, index, axis, size - 1), axis, after)] if after else []
        index = join(lw, parts, axis)
    return index


def reflect_pad(lw: Lowerer, index: int, pads: dict[int, tuple[int, int]]) -> int:
    """Pad by mirroring without the border (ONNX reflect): rows before, ..., 1 | x | n-2, ..., n-1-after."""
    for axis, (before, after) in pads.items():
        size = lw.b.shape(index)[axis]
        rows = [*range(before, 0, -1)], [*range(size - 2, size - 2 - after, -1)]
        parts = [row(lw, index, axis, r) for r in rows[0]] + [index] + [row(lw, index, axis, r) for r in rows[1]]
        index = join(lw, parts, axis)
    return index
