"""Operator versions as TFLite's own converter writes them (tflite/tools/versioning/op_version.cc),
for the operators and tensor types this backend emits. A runtime refuses versions it does not
know, so writing the lowest version that describes the op keeps old runtimes working."""

from __future__ import annotations

# ops whose int8 form is version 2 and float form version 1
_INT8_V2 = {"ADD", "SUB", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "MEAN", "RELU", "RELU6", "MAXIMUM",
            "MINIMUM", "TANH", "LOGISTIC", "SLICE", "STRIDED_SLICE", "TRANSPOSE", "GATHER", "DEPTH_TO_SPACE",
            "SPACE_TO_DEPTH", "SQUARED_DIFFERENCE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MUL", "RSQRT",
            "MAX_POOL_2D", "AVERAGE_POOL_2D", "REDUCE_MAX", "SUM", "GELU"}


def version(code: str, in_types: list[str], out_types: list[str], ranks: list[int], options=None,
            mul_ratio: float = 0.0) -> int:
    """The version of one operator given its tensor types, input ranks and options.

    mul_ratio: input1_scale * input2_scale / output_scale of an int8 MUL.
    """
    int8 = bool(in_types) and in_types[0] == "int8"
    if code in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if int8:
            return 3
        dilated = code == "DEPTHWISE_CONV_2D" and options is not None and \
            (options.dilationWFactor != 1 or options.dilationHFactor != 1)
        return 2 if dilated else 1
    if code == "TRANSPOSE_CONV":
        if len(in_types) == 4:
            return 3
        return 2 if in_types[1] == "int8" else 1
    if code == "FULLY_CONNECTED":
        if len(in_types) == 2:
            return 6
        if options is not None and options.keepNumDims:
            return 5
        return 4 if int8 else 1
    if code == "DEQUANTIZE":
        return {"float16": 3, "int8": 2}.get(in_types[0], 1)
    if code in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and options is not None and \
            (options.halfPixelCenters or options.alignCorners):
        return 3
    if code == "TRANSPOSE" and ranks[0] > 4:
        return 6 if ranks[0] > 5 else 4
    if code in ("PAD", "PADV2", "SLICE") and ranks[0] > 4:
        return 4 if code != "SLICE" else 5
    if code == "STRIDED_SLICE" and ranks[0] > 4:
        return 4
    if code == "MUL" and int8 and mul_ratio >= 1.0:
        return 3
    if code in _INT8_V2 and int8:
        return 2
    return 1
