"""The NPU's requantization against TFLite's int8 reference arithmetic, on hand-checked cases.

Each expected value below was worked out by hand from the reference code (TFLite's QuantizeMultiplier,
MultiplyByQuantizedMultiplier in its single-rounding form, and the int8 ADD kernel's Prepare/Eval);
the comments show the work.
"""

import pytest

from edgegen.backends.fpga import arith



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


@pytest.mark.parametrize("x, m, shift, expected", [
    (100, 1288490189, -1, 30),  # 100 * 1288490189 / 2**32 = 30.0000000047 -> 30
    (5, 1 << 30, -1, 1),        # 5 * 0.25 = 1.25 -> 1 (gemmlowp's double rounding gives 2: 2.5 -> 3, 1.5 -> 2)
    (-5, 1 << 30, -1, -1),      # -1.25 -> -1
    (3, 1 << 30, 0, 2),         # 1.5: ties go toward +inf
    (-3, 1 << 30, 0, -1),       # -1.5 -> -1
    (3, 1 << 30, 2, 6),         # shift > 0: 3 * 2**30 / 2**29
    (1 << 28, 1 << 30, 3, 1 << 30),  # no pre-shift, so no int32 wrap before the multiply
    (-7, 1073741824, 1, -7),    # multiplier 1.0 (2**30, shift 1) is the identity
    ((1 << 31) - 1, (1 << 31) - 1, 31, 1),  # shift 31: (2**31-1)**2 = 2**62 - 2**32 + 1, low 32 bits kept
])
def test_multiply_by_quantized_multiplier(x, m, shift, expected):
    assert int(arith.mbqm(x, m, shift)) == expected


@pytest.mark.parametrize("x, m, shift, expected", [
    (3, 1 << 30, 0, 2),         # 1.5 -> 2
    (5, 1 << 30, 0, 2),         # 2.5 -> 2
    (-3, 1 << 30, 0, -2),       # -1.5 -> -2
    (7, 1 << 30, -1, 2),        # 1.75 -> 2
])
def test_multiply_by_quantized_multiplier_half_to_even(x, m, shift, expected):
    assert int(arith.mbqm(x, m, shift, even=True)) == expected


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
    assert int(arith.mbqm(a + b, mo, so)) == 7          # 3670016 * 2**30 / 2**49 = 7.0
