"""TFLite's int8 fixed-point arithmetic (gemmlowp), vectorized over numpy int64 arrays.

These are the reference kernels' rounding rules, which the NPU's requantizer implements in RTL:
`SaturatingRoundingDoublingHighMul`, `RoundingDivideByPOT`, `MultiplyByQuantizedMultiplier`, and
`QuantizeMultiplier`, which turns a real scale into a Q31 multiplier and a power-of-two shift.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD scales both inputs by 2**20 before requantizing them


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement int32 wrap-around of int64 values (what C int32 arithmetic does)."""
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul: round(a * b / 2**31), nudge toward +inf on ties, C division."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b  # |a*b| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C's division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def divide_by_pot_even(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """x / 2**exponent rounded half to even (ONNX QuantizeLinear's rounding)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    q = x >> exponent
    remainder = x & ((np.int64(1) << exponent) - 1)
    half = np.where(exponent > 0, np.int64(1) << np.maximum(exponent - 1, 0), 0)
    return q + ((exponent > 0) & ((remainder > half) | ((remainder == half) & (q & 1 == 1))))


def mbqm(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, even: bool = False) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(x, M, shift): shift > 0 shifts left first (int32 wrap), < 0 right after
    (even: that right shift rounds half to even instead of TFLite's half away from zero)."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    high = srdhm(wrap32(np.asarray(x, np.int64) << left), multiplier)
    return divide_by_pot_even(high, right) if even else rdbpot(high, right)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = M * 2**(shift - 31) with M in [2**30, 2**31) (Q31), or (0, 0)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def _round_half_away(v: float) -> int:
    """TfLiteRound / std::round: halves go away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def conv_multiplier(input_scale: float, weight_scale: float, output_scale: float) -> tuple[int, int]:
    """Per-channel multiplier of an int8 conv/dense as TFLite prepares it (double from float32 scales)."""
    real = float(np.float32(input_scale)) * float(np.float32(weight_scale)) / float(np.float32(output_scale))
    return quantize_multiplier(real)


def add_multipliers(scale_a: float, scale_b: float, scale_out: float) -> tuple[tuple[int, int], ...]:
    """(M, shift) for input a, input b and the output of TFLite's int8 ADD."""
    twice_max = float(2 * max(np.float32(scale_a), np.float32(scale_b)))
    return (quantize_multiplier(float(np.float32(scale_a)) / twice_max),
            quantize_multiplier(float(np.float32(scale_b)) / twice_max),
            quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * float(np.float32(scale_out)))))
