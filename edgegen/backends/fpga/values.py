"""What the lowering knows about each ONNX tensor besides NPU tensors: host values, float values
waiting for a grid, an upsampling not yet written, and the lowered model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .emit import Program
from .tensors import Buffer, Tensor


@dataclass
class Host:
    """Values the host computes before the NPU: a graph input through element-wise ops, or an
    embedding row looked up by an integer input (`gather`: the table as int8 codes)."""

    source: str
    shape: list[int]
    chain: list[dict] = field(default_factory=list)
    grid: tuple[float, int] | None = None
    gather: np.ndarray | None = None


@dataclass
class Func:
    """Float values: element-wise ops applied to an NPU tensor (a table once a grid follows)."""

    source: Tensor
    chain: list[dict]


@dataclass
class Upsampled:
    """A nearest upsampling not yet written: a stride-1 convolution reading it alone folds it into its
    taps (an "up" layer over the small input); any other reader gets it materialized."""

    source: Tensor
    factor: int
    grid: tuple[float, int]
    node: str


@dataclass
class Lowered:
    """A lowered model: the program, its ACT buffers, and what the host does at both ends."""

    program: Program
    buffers: list[Buffer]
    inputs: list[tuple[Tensor, Host]]
    outputs: list[tuple[str, Tensor, list[dict], list[int]]]  # graph output, tensor, epilogue chain, shape
