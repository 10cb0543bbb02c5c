"""The NPU's requantization against TFLite's int8 reference arithmetic, on hand-checked cases.

Each expected value below was worked out by hand from the reference code (gemmlowp's
SaturatingRoundingDoublingHighMul and RoundingDivideByPOT, TFLite's QuantizeMultiplier and
MultiplyByQuantizedMultiplier, and the int8 ADD kernel's Prepare/Eval); the comments show the work.
"""

import pytest

from edgegen.backends.fpga import arith

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),             # frexp(0.5) = 0.5 * 2**0 -> round(0.5 * 2**31)
    (1.0, (1 << 30, 1)),             # frexp(1.0) = 0.5 * 2**1
    (0.75, (1610612736, 0)),         # 0.75 * 2**31
    (0.3, (1288490189, -1)),         # frexp(0.3) = 0.6 * 2**-1; 0.6 * 2**31 = 1288490188.8 -> 1288490189
    (2.0 ** -40, (0, 0)),            # shift -39 < -31: flushed to zero
    (0.0, (0, 0)),
    (1 - 2.0 ** -40, (1 << 30, 1)),  # q rounds up to 2**31: halved, shift + 1
])
def test_quantize_multiplier(real, expected):
    assert arith.quantize_multiplier(real) == expected


@pytest.mark.parametrize("a, b, expected", [
    (3, 1 << 30, 2),                  # 1.5 -> 2: nudge +2**30, (3*2**30 + 2**30) / 2**31 = 2
    (-3, 1 << 30, -1),                # -1.5 -> -1: nudge 1 - 2**30, (-4*2**30 + 1) / 2**31 truncates to -1
    (5, 1 << 30, 3),                  # 2.5 -> 3
    (-5, 1 << 30, -2),                # -2.5 -> -2
    (100, 1288490189, 60),            # 100 * 0.6 = 60.0000000093
    (INT32_MIN, INT32_MIN, INT32_MAX),  # the one overflow: saturates
    (INT32_MIN, INT32_MAX, -INT32_MAX),  # -2**31 * (2**31 - 1) / 2**31 = -(2**31 - 1)
])
def test_saturating_rounding_doubling_high_mul(a, b, expected):
    assert int(arith.srdhm(a, b)) == expected


@pytest.mark.parametrize("x, exponent, expected", [
    (5, 1, 3),      # 2.5 -> 3 (ties away from zero)
    (-5, 1, -3),    # -2.5 -> -3
    (6, 2, 2),      # 1.5 -> 2
    (-6, 2, -2),    # -1.5 -> -2: remainder 2 (two's complement), threshold 1 + 1, not above: floor -2
    (7, 2, 2),      # 1.75 -> 2
    (-7, 2, -2),    # -1.75 -> -2
    (123, 0, 123),
    (INT32_MAX, 31, 1),  # 0.99999 -> 1
])
def test_rounding_divide_by_pot(x, exponent, expected):
    assert int(arith.rdbpot(x, exponent)) == expected


@pytest.mark.parametrize("x, m, shift, expected", [
    (100, 1288490189, -1, 30),  # 100 * 0.3: SRDHM -> 60, RDBPOT(60, 1) -> 30
    (5, 1 << 30, -1, 2),        # 5 * 0.25 = 1.25, yet 2: SRDHM rounds 2.5 -> 3, then 1.5 -> 2 (double rounding)
    (-5, 1 << 30, -1, -1),      # SRDHM -2.5 -> -2, then -1.0 -> -1
    (3, 1 << 30, 2, 6),         # left shift first: SRDHM(12, 2**30) = 6
    (1 << 28, 1 << 30, 3, INT32_MIN // 2),  # 2**28 << 3 wraps to -2**31 in int32; * 0.5 = -2**30
    (-7, 1073741824, 1, -7),    # multiplier 1.0 (2**30, shift 1) is the identity
])
def test_multiply_by_quantized_multiplier(x, m, shift, expected):
    assert int(arith.mbqm(x, m, shift)) == expected


def test_conv_multiplier_is_computed_in_double_from_float32_scales():
    # float32(0.1) * float32(0.02) / float32(0.05) in double = 0.03999999910593033 = 0.63999998569 * 2**-4
    # -> round(0.63999998569 * 2**31) = 1374389504; from the decimal scales it would be 1374389535
    assert arith.conv_multiplier(0.1, 0.02, 0.05) == (1374389504, -4)
    assert arith.quantize_multiplier(0.1 * 0.02 / 0.05) == (1374389535, -4)


def test_add_matches_tflite_int8_add_by_hand():
    # scales 1, 1 -> 1, zero points 0: twice_max = 2, input multipliers 0.5 = (2**30, 0),
    # output multiplier 2 / (2**20 * 1) = 2**-19 = 0.5 * 2**-18 -> (2**30, -18)
    (ma, sa), (mb, sb), (mo, so) = arith.add_multipliers(1.0, 1.0, 1.0)
    assert (ma, sa, mb, sb, mo, so) == (1 << 30, 0, 1 << 30, 0, 1 << 30, -18)
    a = arith.mbqm(3 << arith.ADD_LEFT_SHIFT, ma, sa)   # 3 * 2**20 * 0.5 = 1572864
    b = arith.mbqm(4 << arith.ADD_LEFT_SHIFT, mb, sb)   # 2097152
    assert (int(a), int(b)) == (1572864, 2097152)
    assert int(arith.mbqm(a + b, mo, so)) == 7          # SRDHM -> 1835008, RDBPOT(., 18) = 7.0
