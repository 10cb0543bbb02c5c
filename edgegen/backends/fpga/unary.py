"""Element-wise functions of one tensor, in float32 numpy (device-safe: numpy only).

The compiler turns any chain of them between two int8 grids into a 256-entry activation table; the
session runs a chain before the first grid (host prologue) or after the last one (host epilogue).
A spec is a small dict: {"op": "LeakyRelu", "alpha": 0.2}, {"op": "Mul", "const": 3.0}, ... (on the host,
"const" may also be one value per channel of a sample, as nested lists: [[[0.4]], [[0.5]], [[0.6]]]).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Spec = dict[str, Any]
F = np.float32


def _const(spec: Spec) -> np.ndarray:
    """A spec's constant operand: a scalar, or per channel as nested lists (broadcast over one sample)."""
    return np.asarray(spec["const"], F)


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(F(alpha) * x + F(beta), F(0), F(1))


_erf = np.vectorize(math.erf, otypes=[np.float64])  # numpy has no erf; a table needs 256 values at most


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return F(0.5) * x * (F(1) + np.tanh(F(np.sqrt(2 / np.pi)) * (x + F(0.044715) * x * x * x)))
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(F)


_STEP_OPS = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Erf": lambda v: _erf(v).astype(F)}


def _gelu_steps(x: np.ndarray, spec: Spec) -> np.ndarray:
    """A GELU in the exporters' Erf form as the QDQ graph computes it: node by node in float32, each output
    rounded onto its own grid (one float GELU, rounded once, was a code off on up to a fifth of the outputs)."""
    values = {spec["input"]: x}
    for step in spec["steps"]:
        out = np.asarray(_STEP_OPS[step["op"]](*[values[i] if isinstance(i, str) else F(i) for i in step["inputs"]]),
                         F)
        values[step["out"]] = dequantize(quantize(out, *step["grid"]), *step["grid"]) if step["grid"] else out
    return values[spec["steps"][-1]["out"]]


_FUNCTIONS = {
    "Identity": lambda x, s: x,
    "Relu": lambda x, s: np.maximum(x, F(0)),
    "LeakyRelu": lambda x, s: np.where(x >= 0, x, x * F(s.get("alpha", 0.01))),
    "Clip": lambda x, s: np.clip(x, F(s.get("min", -np.inf)), F(s.get("max", np.inf))),
    "Tanh": lambda x, s: np.tanh(x),
    "Sigmoid": lambda x, s: F(1) / (F(1) + np.exp(-x)),
    "HardSigmoid": lambda x, s: _hard_sigmoid(x, s.get("alpha", 0.2), s.get("beta", 0.5)),
    "HardSwish": lambda x, s: x * _hard_sigmoid(x, 1 / 6, 0.5),
    "Elu": lambda x, s: np.where(x >= 0, x, F(s.get("alpha", 1.0)) * (np.exp(x) - F(1))),
    "Softplus": lambda x, s: np.log1p(np.exp(x)),
    "Mish": lambda x, s: x * np.tanh(np.logaddexp(F(0), x)),
    "Selu": lambda x, s: F(s["gamma"]) * np.where(x > 0, x, F(s["alpha"]) * np.expm1(np.minimum(x, F(0)))),
    "Neg": lambda x, s: -x,
    "Abs": lambda x, s: np.abs(x),
    "Exp": lambda x, s: np.exp(x),
    "Erf": lambda x, s: _erf(x).astype(F),
    "Gelu": lambda x, s: _gelu(x, s.get("approximate", "none")),
    "GeluSteps": _gelu_steps,
    "Add": lambda x, s: x + _const(s),
    "Sub": lambda x, s: _const(s) - x if s.get("const_first") else x - _const(s),
    "Mul": lambda x, s: x * _const(s),
    "Div": lambda x, s: _const(s) / x if s.get("const_first") else x / _const(s),
    "Pow": lambda x, s: np.power(x, _const(s)),
}
OPS = tuple(_FUNCTIONS)


def apply(chain: list[Spec], x: np.ndarray) -> np.ndarray:
    """Apply a chain of element-wise specs to float32 values."""
    x = np.asarray(x, F)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for spec in chain:
            x = np.asarray(_FUNCTIONS[spec["op"]](x, spec), F)
    return x


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX QuantizeLinear to int8: x / scale rounded half to even, plus the zero point, saturated."""
    q = np.rint(np.asarray(x, F) / F(scale)) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX DequantizeLinear of int8 codes."""
    return ((np.asarray(q, np.int32) - zero_point).astype(F) * F(scale)).astype(F)


def table(chain: list[Spec], grid_in: tuple[float, int], grid_out: tuple[float, int]) -> np.ndarray:
    """The 256-entry activation table: entry i is the output code for input code i - 128."""
    codes = np.arange(-128, 128, dtype=np.int32)
    return quantize(apply(chain, dequantize(codes, *grid_in)), *grid_out).view(np.uint8)
