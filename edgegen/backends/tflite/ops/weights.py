"""Constant weights that may carry int8 data from the QDQ graph, transformed together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..flatbuffer import QParams
from ..lower import Lowerer


@dataclass
class Weights:
    """Float values plus, when quantized symmetrically, the int8 data and scales along `axis`."""

    real: np.ndarray
    q: np.ndarray | None = None
    scale: np.ndarray | None = None
    axis: int = 0

    @classmethod
    def of(cls, lw: Lowerer, name: str, channel_axis: int) -> "Weights":
        """The weights of initializer `name`; int8 data kept only for symmetric per-tensor or
        per-output-channel grids (what TFLite's int8 kernels take)."""
        real = lw.const(name)
        qc = lw.p.quant.constants.get(name)
        if qc is None or qc.data.dtype != np.int8 or any(qc.params.zero_point):
            return cls(real)
        scale = np.asarray(qc.params.scale, np.float32)
        if scale.size > 1 and qc.params.axis % real.ndim != channel_axis:
            return cls(real)
        return cls(real, qc.data, scale, channel_axis)

    @property
    def quantized(self) -> bool:
        return self.q is not None

    def take(self, index: np.ndarray, axis: int) -> "Weights":
        """Reorder along an axis (the scales too when it is the quantized axis)."""
        scale = self.scale
        if scale is not None and scale.size > 1 and axis == self.axis:
            scale = scale[index]
        q = None if self.q is None else self.q.take(index, axis)
        return Weights(self.real.take(index, axis), q, scale, self.axis)

    def transpose(self, axes: tuple[int, ...]) -> "Weights":
        q = None if self.q is None else self.q.transpose(axes)
        return Weights(self.real.transpose(axes), q, self.scale, axes.index(self.axis))

    def scaled(self, factor: float) -> "Weights":
        scale = None if self.scale is None else self.scale * np.float32(factor)
        return Weights(self.real * np.float32(factor), self.q, scale, self.axis)

    def tensor(self, lw: Lowerer, hint: str, int8: bool) -> int:
        """The constant tensor: int8 with its grid, or float (fp16-stored at fp16)."""
        if int8:
            zeros = np.zeros(self.scale.size, np.int64)
            return lw.weight(self.q, hint, QParams.of(self.scale, zeros, self.axis if self.scale.size > 1 else 0))
        return lw.weight(self.real.astype(np.float32), hint)


def bias_tensor(lw: Lowerer, name: str | None, size: int, order: np.ndarray | None, hint: str,
                input_scale: float | None, weight_scale: np.ndarray | None, repeat: int = 1) -> int:
    """The bias operand: float, or int32 on the grid input_scale * weight_scale when int8; its
    `size` values (in `order`) repeated `repeat` times.

    An int32 bias from the QDQ graph is used as stored when its grid is that one; a float bias
    is rounded onto it (the grid follows from scales the QDQ graph already fixed). The grid has
    one scale where the weights have one, else one per value: XNNPACK refuses a per-tensor filter
    with a per-channel bias (a one-channel ConvTranspose's sub-pixel CONV_2D has both)."""
    real = lw.const(name) if name else None
    real = np.zeros(size, np.float32) if real is None else real.reshape(-1).astype(np.float32)
    if input_scale is None:
        return lw.weight(np.tile(real if order is None else real[order], repeat), hint)
    grid = (np.float64(input_scale) * weight_scale.astype(np.float64).reshape(-1)).astype(np.float32)
    qc = lw.p.quant.constants.get(name) if name else None
    if qc is not None and qc.data.dtype == np.int32 and np.allclose(qc.params.scale, grid, rtol=1e-6, atol=0):
        data = qc.data.reshape(-1)
    else:
        data = np.round(real.astype(np.float64) / grid).astype(np.int32)
    if grid.size > 1:
        grid = np.tile(grid if order is None else grid[order], repeat)
    data = np.tile(data if order is None else data[order], repeat)
    return lw.weight(data, hint, QParams.of(grid, np.zeros(grid.size, np.int64), 0))
