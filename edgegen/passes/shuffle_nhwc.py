"""Pixel moves of a quantized tensor, run channels-last on the integer tensor, exactly: a DepthToSpace
(DCR) and a nearest Resize by an integer factor (a pure copy).

ONNX Runtime's CPU provider runs its int8 convolutions channels-last (NHWC) and puts a Transpose back
to NCHW in front of any op it has no channels-last kernel for. DepthToSpace is one: on a transposed-
convolution's or cubic upsampler's output it ran as a Transpose plus a DepthToSpace that moves one
byte at a time (0.3-0.5 ms each at 128x128 on this project's bench machine, 0.75 ms of CycleGAN's 11).
In DCR mode channel (i*bs + j)*C + c goes to pixel (h*bs + i, w*bs + j), so channels-last the move
is a transpose of whole runs of bs*C contiguous bytes; written as NCHW -> NHWC Transpose, Reshape,
Transpose of those runs, Reshape and NHWC -> NCHW Transpose, ONNX Runtime cancels the first
Transpose against its own and keeps only the usual one back to NCHW. A nearest Resize whose every
output pixel copies input pixel (y // s, x // s) is, channels-last, an Expand of runs of C bytes
(its uint8 NCHW Resize took 5.5 of the TAESD-like decoder's 90 ms int8; 64 channels, 128 -> 256:
two 1x1 QDQ convs around it 16.5 -> 8.9 ms in all).

Only where the move sits between a DequantizeLinear and a QuantizeLinear of one per-tensor grid:
it only moves values, so it is done on the integer values and the QuantizeLinear goes. And only
where the runs are at least MIN_RUN_BYTES long (C known from shape inference): runs of 6 bytes (a
3-channel image's phases) were slower than DepthToSpace, 8 bytes and more faster (1x1 QDQ convs around
the shuffle, 64x64 -> 128x128, 1 thread: 0.35 -> 0.23 ms at C = 4, 1.24 -> 0.44 ms at C = 32).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..resample import onnx_nearest
from .qdq import conversions_around, rewrite_between_conversions

log = logging.getLogger(__name__)

MIN_RUN_BYTES = 8


def moves_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with every qualifying DepthToSpace and nearest Resize rewritten on its integer tensor."""
    channels = _channel_counts(model)
    model, count = rewrite_between_conversions(
        model, lambda node, *links: _plan(node, *links, channels), _replacement)
    if count:
        log.info("%d DepthToSpace / nearest Resize on quantized tensors rewritten channels-last", count)
    return model


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's channel count (axis 1) where shape inference knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference failed: no channel count is known, nothing qualifies
        return {}
    counts = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            counts[info.name] = dims[1].dim_value
    return counts


def _plan(node: onnx.NodeProto, inits: dict, producer: dict, consumers: dict, graph_outputs: set,
          channels: dict[str, int]) -> tuple[onnx.NodeProto, tuple[str, int, int]] | None:
    """(the QuantizeLinear the move replaces, (the integer tensor to move, its block or factor, its
    channels)) for a qualifying node, else None."""
    if node.op_type == "DepthToSpace":
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "DCR")
        factor = next(a.i for a in node.attribute if a.name == "blocksize")
        run = channels.get(node.input[0], 0) // factor  # runs of blocksize x C bytes
        if mode != "DCR":
            return None
    elif node.op_type == "Resize":
        factor, run = _copy_factor(node, inits), channels.get(node.input[0], 0)  # runs of C bytes
        if factor is None:
            return None
    else:
        return None
    found = conversions_around(node, inits, producer, consumers, graph_outputs) if run >= MIN_RUN_BYTES else None
    if found is None or found[2] != found[3]:
        return None
    dequantize, quantize = found[:2]
    return quantize, (dequantize.input[0], factor, channels[node.input[0]])


def _replacement(node: onnx.NodeProto, quantize: onnx.NodeProto, detail: tuple[str, int, int],
                 graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    integer, factor, channels = detail
    if node.op_type == "DepthToSpace":
        return _shuffle(node, integer, quantize.output[0], graph, factor)
    return _upsample(node, integer, quantize.output[0], graph, factor, channels)


def _copy_factor(node: onnx.NodeProto, inits: dict) -> int | None:
    """s for a nearest Resize by constant scales (1, 1, s, s), s an integer > 1, whose output pixel x
    reads input pixel x // s (checked on a few lengths); else None."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"nearest") != b"nearest" or len(node.input) < 3 or node.input[2] not in inits:
        return None
    if len(node.input) > 3 and node.input[3] or attrs.get("antialias", 0) or "axes" in attrs:
        return None
    scales = inits[node.input[2]].tolist()
    if len(scales) != 4 or scales[:2] != [1, 1] or scales[2] != scales[3] or scales[2] != int(scales[2]) or \
            scales[2] < 2:
        return None
    factor = int(scales[2])
    mode = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
    rounding = attrs.get("nearest_mode", b"round_prefer_floor").decode()
    for length in (1, 2, 7, 64):
        source = onnx_nearest(length * factor, length, mode, rounding)
        if source is None or not np.array_equal(source, np.arange(length * factor) // factor):
            return None
    return factor


def _steps(node: onnx.NodeProto, output: str, graph: onnx.GraphProto):
    """(prefix, const, step): the replacement's name prefix and makers of its int64 constants and nodes."""
    at = (node.name or node.output[0]) + "/"

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), at + name))
        return at + name

    def step(op: str, inputs: list[str], name: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output if name == "out" else at + name], name=at + name, **attrs)

    return at, const, step


def _shuffle(node: onnx.NodeProto, integer: str, output: str, graph: onnx.GraphProto,
             block: int) -> list[onnx.NodeProto]:
    """NCHW [N, bs*bs*C, H, W] -> NHWC -> [N, H, W, bs, bs*C] -> [N, H, bs, W, bs*C] -> [N, H*bs, W*bs, C] -> NCHW."""
    at, const, step = _steps(node, output, graph)
    return [
        step("Shape", [integer], "in_shape"),
        step("Div", [at + "in_shape", const("channel_split", [1, block * block, 1, 1])], "shrunk"),
        step("Mul", [at + "shrunk", const("space_growth", [1, 1, block, block])], "out_shape"),
        step("Gather", [at + "out_shape", const("channels_last", [0, 2, 3, 1])], "out_shape_nhwc"),
        step("Transpose", [integer], "nhwc", perm=[0, 2, 3, 1]),
        step("Reshape", [at + "nhwc", const("rows_shape", [0, 0, 0, block, -1])], "rows"),
        step("Transpose", [at + "rows"], "interleaved", perm=[0, 1, 3, 2, 4]),
        step("Reshape", [at + "interleaved", at + "out_shape_nhwc"], "shuffled_nhwc"),
        step("Transpose", [at + "shuffled_nhwc"], "out", perm=[0, 3, 1, 2]),
    ]


def _upsample(node: onnx.NodeProto, integer: str, output: str, graph: onnx.GraphProto, factor: int,
              channels: int) -> list[onnx.NodeProto]:
    """NCHW [N, C, H, W] -> NHWC -> [N, H, 1, W, 1, C] -> Expand [N, H, s, W, s, C] -> [N, H*s, W*s, C] -> NCHW."""
    at, const, step = _steps(node, output, graph)
    return [
        step("Shape", [integer], "in_shape"),
        step("Mul", [at + "in_shape", const("space_growth", [1, 1, factor, factor])], "out_shape"),
        step("Gather", [at + "out_shape", const("channels_last", [0, 2, 3, 1])], "out_shape_nhwc"),
        step("Transpose", [integer], "nhwc", perm=[0, 2, 3, 1]),
        step("Reshape", [at + "nhwc", const("pixels_shape", [0, 0, 1, -1, 1, channels])], "pixels"),
        step("Expand", [at + "pixels", const("copies", [1, 1, factor, 1, factor, 1])], "copied"),
        step("Reshape", [at + "copied", at + "out_shape_nhwc"], "copied_nhwc"),
        step("Transpose", [at + "copied_nhwc"], "out", perm=[0, 3, 1, 2]),
    ]
