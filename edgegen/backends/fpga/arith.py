"""TFLite's int8 fixed-point arithmetic, vectorized over numpy int64 arrays.

The NPU's requantizer implements TFLite's `MultiplyByQuantizedMultiplier` in its single-rounding form
(the reference kernels built with TFLITE_SINGLE_ROUNDING): the exact 64-bit product of the int32
accumulator and a Q31 multiplier, rounded once. The default gemmlowp form rounds twice
(SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT), which moves ~0.2% of outputs by one
code against ONNX Runtime's float requantization; a generator amplifies each such code through every
layer after it. `QuantizeMultiplier` turns a real scale into a Q31 multiplier and a power-of-two shift.
"""

from __future__ import annotations

import math

import numpy as np

ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD scales both inputs by 2**20 before requantizing them


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement int32 wrap-around of int64 values (what C int32 arithmetic does)."""
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def divide_by_pot_even(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """x / 2**exponent rounded half to even (ONNX QuantizeLinear's rounding)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    q = x >> exponent
    remainder = x & ((np.int64(1) << exponent) - 1)
    half = np.where(exponent > 0, np.int64(1) << np.maximum(exponent - 1, 0), 0)
    return q + ((exponent > 0) & ((remainder > half) | ((remainder == half) & (q & 1 == 1))))


def mbqm(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, even: bool = False) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(x, M, shift) with TFLite's single rounding (TFLITE_SINGLE_ROUNDING):
    x * M / 2**(31 - shift) computed exactly in 64 bits and rounded once, ties toward +inf (even: ties to
    even, ONNX's rounding); the result wraps to int32 like the RTL's 32-bit output register."""
    total = 31 - np.asarray(shift, np.int64)
    product = np.asarray(x, np.int64) * np.asarray(multiplier, np.int64)  # |x|, |M| <= 2**31: exact in int64
    if even:
        return wrap32(divide_by_pot_even(product, total))
    half = np.where(total > 0, np.int64(1) << np.maximum(total - 1, 0), 0)
    return wrap32((product + half) >> total)


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
