"""Lower a prepared graph to one TFLite subgraph.

`Lowerer` keeps, for every ONNX tensor, the TFLite tensor that holds it (`Value`: NHWC or not,
channel order, int8 grid). Op rules (`ops/`) read their inputs through it and define their
outputs. In int8 mode an op runs on int8 when every input has a grid and its output has one
(from the QDQ graph, or the fixed grid of TANH/LOGISTIC); otherwise it runs in float, with
DEQUANTIZE/QUANTIZE inserted where the representation changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ...errors import UnsupportedOpError
from .decompose import why_kept
from .flatbuffer import ModelBuilder, QParams
from .layout import channel_axis, plan_orders, tfl_shape
from .prepare import Prepared
from .versions import version

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass
class Value:
    """The TFLite tensor holding an ONNX tensor."""

    index: int
    nhwc: bool
    order: np.ndarray | None = None  # stored channel j holds ONNX channel order[j]
    quant: QParams | None = None


@dataclass
class Lowered:
    """A lowered model (its builder, still reorderable) and its inputs and outputs as the session sees them."""

    builder: ModelBuilder
    inputs: list[dict]
    outputs: list[dict]
    warnings: list[str]  # precision the op rules lose, for the build to log once


class Lowerer:
    """Emission state of one lowering."""

    def __init__(self, p: Prepared, precision: str, delegate: str = "xnnpack"):
        self.p = p
        self.precision = precision
        self.delegate = delegate  # the accelerator the model is laid out for: xnnpack | edgetpu
        self.b = ModelBuilder()
        self.fb = self.b.fb
        self.values: dict[str, Value] = {}
        self.plan = plan_orders(p)
        self.node: onnx.NodeProto | None = None
        self._converted: dict[tuple[str, str], Value] = {}
        self.warnings: list[str] = []

    # -- what the graph says -------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.p.consts.get(name) if name else None

    def shape(self, name: str) -> list[int]:
        if name not in self.p.shapes:
            raise self.unsupported(f"the shape of {name!r} is not known at the default input shapes")
        return list(self.p.shapes[name])

    def unsupported(self, why: str) -> UnsupportedOpError:
        node = self.node
        return UnsupportedOpError(f"node {node.name!r} (op {node.op_type}) cannot be lowered to TFLite: {why}")

    # -- emission ------------------------------------------------------------------------------
    def options(self, kind: str, **fields):
        """A schema options object, e.g. options("Conv2D", padding=...)."""
        opts = getattr(self.fb, f"{kind}OptionsT")()
        for key, value in fields.items():
            setattr(opts, key, value)
        return opts

    def op(self, code: str, inputs: list[int], outputs: list[int], options=None) -> None:
        """Append an operator; its version follows from its tensor types (see versions.py)."""
        b = self.b
        ratio = 0.0
        if code == "MUL" and b.quant(outputs[0]) is not None:
            ratio = b.quant(inputs[0]).scale[0] * b.quant(inputs[1]).scale[0] / b.quant(outputs[0]).scale[0]
        v = version(code, [b.dtype(i) for i in inputs], [b.dtype(o) for o in outputs],
                    [len(b.shape(i)) for i in inputs], options, ratio)
        b.op(code, inputs, outputs, options, v, self.node.name if self.node else "")

    def temp(self, shape: list[int], quant: QParams | None = None, hint: str = "t") -> int:
        """An intermediate tensor (int8 when quant is given)."""
        base = self.node.name if self.node else "io"
        return self.b.tensor(f"{base}/{hint}", shape, "int8" if quant else "float32", quant)

    def define(self, name: str, shape: list[int], nhwc: bool, order: np.ndarray | None = None,
               quant: QParams | None = None, dtype: str | None = None) -> int:
        """Create the tensor holding ONNX tensor `name` (TFLite shape given) and register it."""
        index = self.b.tensor(name, shape, dtype or ("int8" if quant else "float32"), quant)
        self.values[name] = Value(index, nhwc, order, quant)
        return index

    def bind(self, name: str, value: Value) -> None:
        """Let ONNX tensor `name` be held by an existing tensor."""
        self.values[name] = value

    def emit_keeping_grid(self, code: str, inputs: list[int], name: str, shape: list[int], nhwc: bool,
                          grid: QParams | None, options=None, order: np.ndarray | None = None) -> None:
        """An op whose int8 output stays on its input's grid (data movement, padding, resizing);
        requantized onto the QDQ graph's grid for `name` when that one differs."""
        target = self.p.quant.activations.get(name) if grid else None
        if target is None or target == grid:
            moved = self.b.dtype(inputs[0])  # integer indices moved (a label's RESHAPE) stay integers
            dtype = moved if grid is None and moved in ("int32", "int64") and code != "GATHER" else None
            self.op(code, inputs, [self.define(name, shape, nhwc, order, grid, dtype)], options)
            return
        moved = self.temp(shape, grid, hint=code.lower())
        self.op(code, inputs, [moved], options)
        self.op("QUANTIZE", [moved], [self.define(name, shape, nhwc, order, target)])

    def weight(self, array: np.ndarray, hint: str, quant: QParams | None = None) -> int:
        """A constant operand; float constants are stored as float16 + DEQUANTIZE at fp16, but for those past
        float16's range (kept float32: as float16 they would be infinity)."""
        array = np.ascontiguousarray(array)
        if self.precision != "fp16" or array.dtype != np.float32 or np.abs(array).max(initial=0) > FLOAT16_MAX:
            return self.b.constant(hint, array, quant)
        half = self.b.constant(f"{hint}/fp16", array.astype(np.float16))
        index = self.b.tensor(hint, list(array.shape), "float32")
        self.op("DEQUANTIZE", [half], [index])
        return index

    def int32(self, values, hint: str) -> int:
        base = self.node.name if self.node else "io"
        return self.weight(np.asarray(values, dtype=np.int32), f"{base}/{hint}")

    def value(self, name: str) -> Value:
        if name not in self.values:
            raise self.unsupported(f"input {name!r} is neither a graph input, a constant nor computed before")
        return self.values[name]

    def tshape(self, value: Value) -> list[int]:
        return self.b.shape(value.index)

    # -- precision -----------------------------------------------------------------------------
    def grid(self, name: str) -> QParams | None:
        """The int8 grid of an activation, from its Value or from the QDQ graph."""
        value = self.values.get(name)
        if value is not None and value.quant is not None:
            return value.quant
        return self.p.quant.activations.get(name)

    def quantized(self, inputs: list[str], output: str, fixed: QParams | None = None) -> QParams | None:
        """The output grid when this op runs on int8 (all inputs and the output have grids), else None."""
        if self.precision != "int8" or any(self.grid(n) is None for n in inputs):
            return None
        return fixed or self.p.quant.activations.get(output)

    def keeps_grid(self, name: str) -> bool:
        """Whether a data-movement op on `name` runs on int8: its output stays on the input's grid
        (requantized onto the QDQ graph's output grid where that one exists)."""
        return self.precision == "int8" and self.grid(name) is not None

    def as_float(self, name: str) -> Value:
        value = self.value(name)
        if value.quant is None:
            return value
        key = (name, "float")
        if key not in self._converted:
            out = self.temp(self.tshape(value), hint="dequantized")
            self.op("DEQUANTIZE", [value.index], [out])
            self._converted[key] = Value(out, value.nhwc, value.order)
        return self._converted[key]

    def as_int8(self, name: str) -> Value:
        value = self.value(name)
        if value.quant is not None:
            return value
        key = (name, "int8")
        if key not in self._converted:
            grid = self.p.quant.activations[name]
            out = self.temp(self.tshape(value), grid, hint="quantized")
            self.op("QUANTIZE", [value.index], [out])
            self._converted[key] = Value(out, value.nhwc, value.order, grid)
        return self._converted[key]

    def operand(self, name: str, int8: bool) -> Value:
        return self.as_int8(name) if int8 else self.as_float(name)

    def requantize(self, index: int, to: QParams | None) -> int:
        """The int8 tensor `index` moved onto grid `to` (QUANTIZE int8 -> int8) when it differs."""
        source = self.b.quant(index)
        if to is None or source is None or source == to:
            return index
        out = self.temp(self.b.shape(index), to, hint="requantized")
        self.op("QUANTIZE", [index], [out])
        return out

    def reorder(self, value: Value, order: np.ndarray | None) -> Value:
        """The same tensor with its channels in `order` (None: ONNX order), by a GATHER."""
        shape = self.tshape(value)
        axis = channel_axis(len(shape), value.nhwc)
        current = value.order if value.order is not None else np.arange(shape[axis] if axis is not None else 0)
        wanted = order if order is not None else np.arange(len(current))
        if np.array_equal(current, wanted):
            return value
        inverse = np.argsort(current)
        out = self.temp(shape, value.quant, hint="reordered")
        self.op("GATHER", [value.index, self.int32(inverse[wanted], "order")], [out],
                self.options("Gather", axis=axis))
        return Value(out, value.nhwc, order, value.quant)


def lower(p: Prepared, precision: str, delegate: str = "xnnpack") -> Lowered:
    """Lower every node; graph inputs and outputs keep their ONNX names."""
    from .ops import RULES

    lw = Lowerer(p, precision, delegate)
    inputs = []
    for spec in p.inputs:
        shape = spec.default_shape
        nhwc = len(shape) == 4
        grid = p.quant.activations.get(spec.name) if precision == "int8" and spec.dtype == "float32" else None
        dtype = "int8" if grid else spec.dtype
        lw.b.inputs.append(lw.define(spec.name, tfl_shape(shape, nhwc), nhwc, quant=grid, dtype=dtype))
        inputs.append(_boundary(spec.name, nhwc, dtype, grid))
    for node in p.nodes:
        lw.node = node
        rule = RULES.get(node.op_type)
        why = rule.check(node, p) if rule else no_rule(node, p)
        if why:
            raise lw.unsupported(why)
        rule.lower(lw, node)
    lw.node = None
    outputs = []
    for spec in p.outputs:
        if spec.name not in lw.values:
            raise UnsupportedOpError(constant_output(spec.name) if spec.name in p.consts else
                                     f"output {spec.name!r} is not computed by any lowered node")
        value = lw.reorder(lw.values[spec.name], None)
        lw.b.outputs.append(value.index)
        outputs.append(_boundary(spec.name, value.nhwc, lw.b.dtype(value.index), value.quant))
    return Lowered(lw.b, inputs, outputs, lw.warnings)


def no_rule(node: onnx.NodeProto, p: Prepared) -> str:
    """Why a node no lowering rule takes is refused: the reason its decomposition (see decompose.py) did not apply
    (a Pow's exponent), or that TFLite has no builtin for the op."""
    return why_kept(node, p.consts) or "no TFLite lowering for this op"


def constant_output(name: str) -> str:
    """Why an output that is a constant of the model cannot be a TFLite output, and what to do."""
    return (f"output {name!r} is a constant in the model file (computed from no input), and a TFLite model returns "
            "only tensors its operators compute: drop it from the model's outputs (the application can hold the "
            "constant itself), or build for an onnxruntime or openvino target, which return it")


def _boundary(name: str, nhwc: bool, dtype: str, grid: QParams | None) -> dict:
    entry = {"name": name, "layout": "nhwc" if nhwc else "plain", "dtype": dtype}
    if grid is not None:
        entry["quant"] = grid.to_json()
    return entry
