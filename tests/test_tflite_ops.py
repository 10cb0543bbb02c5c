"""The ONNX -> TFLite lowering, op by op: small onnx.helper models built for x86-litert at fp32
must match the fp32 source in ONNX Runtime within 1e-4 max-abs, with the TFLite operators the
lowering promises (no Transpose left inside, XNNPACK-friendly forms)."""

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.backends.tflite.flatbuffer import read_model
from edgegen.build import build
from edgegen.errors import UnsupportedOpError

RNG = np.random.default_rng(0)


def _init(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _model(nodes, inits, in_shape, opset=17, extra_inputs=()):
    graph = helper.make_graph(
        nodes, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)


def _conv(name, cin, cout, k, group=1, **attrs):
    return [helper.make_node("Conv", ["x", f"{name}_w", f"{name}_b"], ["y"], group=group, **attrs)], \
        [_init(f"{name}_w", cout, cin // group, k, k), _init(f"{name}_b", cout)]


def _conv_t(k, s, p, op=0, cin=4, cout=3):
    attrs = dict(strides=[s, s], pads=[p, p, p, p])
    if op:
        attrs["output_padding"] = [op, op]
    return [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], [_init("w", cin, cout, k, k),
                                                                                  _init("b", cout)]


def _resize(mode, ctm, sizes=None, scales=None, **extra):
    inputs = ["x", "", "scales"] if scales else ["x", "", "", "sizes"]
    init = [numpy_helper.from_array(np.array(scales, np.float32), "scales")] if scales else [_const("sizes", sizes)]
    return [helper.make_node("Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=ctm, **extra)], init


def _unary(op, **attrs):
    return [helper.make_node(op, ["x"], ["y"], **attrs)], []


def _chain(*steps):
    """Nodes of single-input steps chained x -> t1 -> ... -> y (each step: (op, extra inputs, attrs))."""
    nodes, names = [], ["x"] + [f"t{i}" for i in range(1, len(steps))] + ["y"]
    for i, (op, extra, attrs) in enumerate(steps):
        nodes.append(helper.make_node(op, [names[i], *extra], [names[i + 1]], **attrs))
    return nodes


CASES = {
    # convolution padding: TF SAME, explicit PAD + VALID, VALID, dilation, depthwise (multiplier 2)
    "conv3x3_same": (*_conv("c", 4, 6, 3, pads=[1, 1, 1, 1]), [1, 4, 9, 9], {"CONV_2D": 1}),
    "conv3x3_s2_even_pads": (*_conv("c", 4, 6, 3, pads=[1, 1, 1, 1], strides=[2, 2]), [1, 4, 8, 8],
                             {"PAD": 1, "CONV_2D": 1}),
    "conv4x4_s2_valid": (*_conv("c", 3, 5, 4, strides=[2, 2]), [1, 3, 10, 10], {"CONV_2D": 1}),
    "conv_dilated": (*_conv("c", 4, 4, 3, pads=[2, 2, 2, 2], dilations=[2, 2]), [1, 4, 12, 12], {"CONV_2D": 1}),
    "conv_auto_pad_same": (*_conv("c", 4, 4, 3, auto_pad="SAME_UPPER", strides=[2, 2]), [1, 4, 9, 9], {}),
    "depthwise_mult2": (*_conv("c", 4, 8, 3, group=4, pads=[1, 1, 1, 1]), [1, 4, 8, 8], {"DEPTHWISE_CONV_2D": 1}),
    # strided transposed convolution: a sub-pixel CONV_2D + DEPTH_TO_SPACE for XNNPACK
    "convT_k4_s2_p1": (*_conv_t(4, 2, 1), [1, 4, 5, 5], {"TRANSPOSE_CONV": 0, "CONV_2D": 1, "DEPTH_TO_SPACE": 1}),
    "convT_k3_s2_p1_op1": (*_conv_t(3, 2, 1, 1), [1, 4, 5, 5], {"CONV_2D": 1, "DEPTH_TO_SPACE": 1}),
    "convT_k4_s1_p0": (*_conv_t(4, 1, 0), [1, 4, 1, 1], {"TRANSPOSE_CONV": 1}),
    "convT_k2_s2_p0": (*_conv_t(2, 2, 0), [1, 4, 6, 6], {"CONV_2D": 1, "DEPTH_TO_SPACE": 1}),
    # resizing: nearest integer factors as CONCATENATION + RESHAPE, never RESIZE_NEAREST_NEIGHBOR
    "nearest_x2_asymmetric": (*_resize("nearest", "asymmetric", scales=[1, 1, 2, 2], nearest_mode="floor"),
                              [1, 3, 5, 6], {"CONCATENATION": 2, "RESIZE_NEAREST_NEIGHBOR": 0}),
    "nearest_x3_half_pixel": (*_resize("nearest", "half_pixel", sizes=[1, 3, 12, 15]), [1, 3, 4, 5],
                              {"RESIZE_NEAREST_NEIGHBOR": 0}),
    "nearest_downscale": (*_resize("nearest", "asymmetric", sizes=[1, 3, 4, 4], nearest_mode="floor"),
                          [1, 3, 8, 8], {"RESIZE_NEAREST_NEIGHBOR": 1}),
    "bilinear_half_pixel": (*_resize("linear", "half_pixel", scales=[1, 1, 2, 2]), [1, 3, 5, 7],
                            {"RESIZE_BILINEAR": 1}),
    "bilinear_align_corners": (*_resize("linear", "align_corners", sizes=[1, 3, 9, 13]), [1, 3, 5, 7],
                               {"RESIZE_BILINEAR": 1}),
    "bicubic_x2": (*_resize("cubic", "pytorch_half_pixel", scales=[1, 1, 2, 2], cubic_coeff_a=-0.75),
                   [1, 3, 8, 9], {"CONV_2D": 1, "DEPTH_TO_SPACE": 1}),
    # pooling: TF SAME / VALID windows, explicit pads (lowest value for max, zeros counted for average)
    "maxpool_2x2": (*_unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2]), [1, 3, 8, 8], {"MAX_POOL_2D": 1}),
    "maxpool_3x3_s2_p1": (*_unary("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 3, 8, 8],
                          {"PADV2": 1, "MAX_POOL_2D": 1}),
    "maxpool_same": (*_unary("MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [1, 3, 7, 7], {"MAX_POOL_2D": 1}),
    "avgpool_2x2": (*_unary("AveragePool", kernel_shape=[2, 2], strides=[2, 2]), [1, 3, 8, 9],
                    {"AVERAGE_POOL_2D": 1}),
    "avgpool_same_excluding_pads": (*_unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [1, 3, 6, 6],
                                    {"AVERAGE_POOL_2D": 1, "PAD": 0}),
    "avgpool_counting_pads": (*_unary("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                      count_include_pad=1), [1, 3, 8, 8], {"PAD": 1, "AVERAGE_POOL_2D": 1}),
    # pads SAME reproduces: SAME left the border out of the count (PyTorch's avg_pool2d(x, 3, 1, 1) default)
    "avgpool_counting_same_pads": (*_unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                           count_include_pad=1), [1, 3, 6, 6], {"PAD": 1, "AVERAGE_POOL_2D": 1}),
    "global_avgpool": (*_unary("GlobalAveragePool"), [1, 3, 5, 6], {"MEAN": 1}),
    "global_maxpool": (*_unary("GlobalMaxPool"), [1, 3, 5, 6], {"REDUCE_MAX": 1}),
    "reduce_mean_hw": (*_unary("ReduceMean", axes=[2, 3], keepdims=1), [1, 3, 5, 6], {"MEAN": 1}),
    "reduce_max_c": (*_unary("ReduceMax", axes=[1], keepdims=1), [1, 3, 5, 6], {"REDUCE_MAX": 1}),
    "reduce_sum_c": (*_unary("ReduceSum", keepdims=1), [1, 3, 5, 6], {"SUM": 1}),
    "reduce_mean_hw_flat": (*_unary("ReduceMean", axes=[-2, -1], keepdims=0), [1, 3, 5, 6], {"MEAN": 1}),
    "squeeze_excite": ([helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3]),
                        helper.make_node("Conv", ["m", "w"], ["g"]), helper.make_node("HardSigmoid", ["g"], ["h"]),
                        helper.make_node("Mul", ["x", "h"], ["y"])], [_init("w", 4, 4, 1, 1)], [1, 4, 5, 5],
                       {"MEAN": 1, "CONV_2D": 1}),
    "elu": (*_unary("Elu"), [1, 3, 4, 4], {"ELU": 1}),
    "sqrt": ([helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])], [], [1, 3, 4, 4],
             {"SQRT": 1}),  # AdaIN's standard deviation
    "softplus_thresholded": ([helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Greater", ["x", "t"], ["g"]),
                              helper.make_node("Where", ["g", "x", "s"], ["y"])],
                             [numpy_helper.from_array(np.float32(0.5), "t")], [1, 3, 4, 4],
                             {"EXP": 1, "LOG": 1, "GREATER": 1, "SELECT_V2": 1}),
    # padding
    "pad_reflect": ([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")],
                    [_const("pads", [0, 0, 3, 1, 0, 0, 3, 2])], [1, 3, 8, 8], {"MIRROR_PAD": 0, "SLICE": 9}),
    "pad_reflect_wide": ([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")],
                         [_const("pads", [0, 0, 5, 5, 0, 0, 5, 5])], [1, 3, 8, 8], {"MIRROR_PAD": 1}),
    "pad_edge": ([helper.make_node("Pad", ["x", "pads"], ["y"], mode="edge")],
                 [_const("pads", [0, 0, 1, 2, 0, 0, 2, 1])], [1, 3, 6, 6], {"MIRROR_PAD": 0, "PAD": 0}),
    "pad_constant_value": ([helper.make_node("Pad", ["x", "pads", "v"], ["y"])],
                           [_const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), numpy_helper.from_array(np.float32(0.5), "v")],
                           [1, 3, 4, 4], {"PADV2": 1}),
    # activations
    "relu": (*_unary("Relu"), [1, 3, 4, 4], {"RELU": 1}),
    "leaky_relu": (*_unary("LeakyRelu", alpha=0.2), [1, 3, 4, 4], {"LEAKY_RELU": 1}),
    "sigmoid": (*_unary("Sigmoid"), [1, 3, 4, 4], {"LOGISTIC": 1}),
    "tanh": (*_unary("Tanh"), [1, 3, 4, 4], {"TANH": 1}),
    "hardswish": (*_unary("HardSwish"), [1, 3, 4, 4], {"HARD_SWISH": 1}),
    "hardsigmoid": (*_unary("HardSigmoid", alpha=0.25, beta=0.4), [1, 3, 4, 4], {}),
    "prelu": ([helper.make_node("PRelu", ["x", "slope"], ["y"])], [_init("slope", 3, 1, 1)], [1, 3, 4, 4],
              {"PRELU": 1}),
    "relu6": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
              [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")],
              [1, 3, 4, 4], {"RELU6": 1}),
    "clip_any": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                 [numpy_helper.from_array(np.float32(-0.3), "lo"), numpy_helper.from_array(np.float32(0.4), "hi")],
                 [1, 3, 4, 4], {"MAXIMUM": 1, "MINIMUM": 1}),
    # arithmetic with per-channel constants (laid out NHWC), normalizations
    "sub_div_consts": (_chain(("Sub", ["c1"], {}), ("Div", ["c2"], {}), ("Mul", ["c3"], {}), ("Add", ["c4"], {})),
                       [_init("c1", 3, 1, 1), numpy_helper.from_array(np.float32(3.0), "c2"),
                        _init("c3", 1, 3, 1, 1), _init("c4", 1, 1, 1, 4)], [1, 3, 4, 4], {}),
    "batchnorm_alone": ([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
                        [_init("g", 3), _init("b", 3), _init("m", 3),
                         numpy_helper.from_array(np.abs(RNG.standard_normal(3)).astype(np.float32) + 0.5, "v")],
                        [1, 3, 4, 4], {"MUL": 1, "ADD": 1}),
    "instance_norm": ([helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5)],
                      [_init("g", 3), _init("b", 3)], [1, 3, 6, 5], {"MEAN": 2, "RSQRT": 1}),
    "group_norm": (_chain(("Reshape", ["grouped"], {}), ("InstanceNormalization", ["ones", "zeros"], {"epsilon": 1e-5}),
                          ("Reshape", ["back"], {}), ("Mul", ["gamma"], {}), ("Add", ["beta"], {})),
                   [_const("grouped", [1, 2, -1]), numpy_helper.from_array(np.ones(2, np.float32), "ones"),
                    numpy_helper.from_array(np.zeros(2, np.float32), "zeros"), _const("back", [1, 6, 5, 4]),
                    _init("gamma", 6, 1, 1), _init("beta", 6, 1, 1)], [1, 6, 5, 4], {"MEAN": 2, "RSQRT": 1}),
    # data movement
    "depth_to_space_dcr": ([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR")], [],
                           [1, 12, 3, 4], {"DEPTH_TO_SPACE": 1}),
    "slice_hw": ([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
                 [_const("s", [1, 2]), _const("e", [-1, 100]), _const("a", [2, 3])], [1, 3, 6, 7],
                 {"STRIDED_SLICE": 1}),
    "transpose_hw": ([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], [], [1, 3, 4, 5],
                     {"TRANSPOSE": 1}),
    "expand_1x1": ([helper.make_node("Expand", ["x", "shape"], ["y"])], [_const("shape", [1, 5, 6, 6])],
                   [1, 5, 1, 1], {"CONCATENATION": 6}),  # x6 = (x2, x4) on each axis
    "flatten_gemm": (_chain(("Flatten", [], {}), ("Gemm", ["w", "b"], {"transB": 1, "alpha": 0.5})),
                     [_init("w", 7, 3 * 4 * 5), _init("b", 7)], [1, 3, 4, 5], {"FULLY_CONNECTED": 1}),
    "gemm_reshape_conv": (_chain(("Gemm", ["w", "b"], {}), ("Reshape", ["shape"], {}), ("Conv", ["cw"], {})),
                          [_init("w", 8, 4 * 3 * 5), _init("b", 4 * 3 * 5), _const("shape", [-1, 4, 3, 5]),
                           _init("cw", 2, 4, 1, 1)], [1, 8], {"FULLY_CONNECTED": 1, "CONV_2D": 1}),
    # ops with no TFLite builtin, rewritten into ones that have one (edgegen.backends.tflite.decompose)
    "split_gated": ([helper.make_node("Split", ["x", "halves"], ["a", "b"], axis=1),
                     helper.make_node("Sigmoid", ["b"], ["g"]), helper.make_node("Mul", ["a", "g"], ["y"])],
                    [_const("halves", [2, 2])], [1, 4, 5, 5], {"STRIDED_SLICE": 2, "MUL": 1}),
    "pixel_norm": ([helper.make_node("Pow", ["x", "two"], ["sq"]),
                    helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1]),
                    helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
                    helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["y"])],
                   [numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.float32(1e-8), "eps")],
                   [1, 4, 5, 5], {"MEAN": 1, "SQRT": 1, "DIV": 1}),
    "pow_cube_and_half": (_chain(("Pow", ["three"], {}), ("Pow", ["half"], {})),
                          [numpy_helper.from_array(np.float32(3), "three"),
                           numpy_helper.from_array(np.float32(0.5), "half")], [1, 3, 4, 4], {"MUL": 2, "SQRT": 1}),
    "layer_norm_last_axis": ([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1,
                                               epsilon=1e-5)],
                             [_init("gamma", 5), _init("beta", 5)], [1, 3, 4, 5], {"MEAN": 2, "SQRT": 1}),
    "layer_norm_tokens": ([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1,
                                            epsilon=1e-5)],
                          [_init("gamma", 5), _init("beta", 5)], [1, 12, 5], {"MEAN": 2, "SQRT": 1}),
    "linear_tokens": (_chain(("MatMul", ["w"], {}), ("Add", ["b"], {})), [_init("w", 5, 7), _init("b", 7)], [1, 6, 5],
                      {"FULLY_CONNECTED": 1}),
    "softmax_tokens": (*_unary("Softmax", axis=1), [1, 6, 4], {"REDUCE_MAX": 1, "EXP": 1, "SUM": 1, "DIV": 1}),
    "reduce_sum_2d_no_keepdims": ([helper.make_node("ReduceSum", ["x", "a"], ["y"], keepdims=0)],
                                  [_const("a", [1])], [3, 7], {"SUM": 1}),
    "softmax_channels": (*_unary("Softmax", axis=1), [1, 4, 3, 3], {"REDUCE_MAX": 1, "EXP": 1, "SUM": 1, "DIV": 1}),
    "grouped_conv": (*_conv("c", 8, 6, 3, group=2, pads=[1, 1, 1, 1]), [1, 8, 6, 6],
                     {"CONV_2D": 2, "STRIDED_SLICE": 2, "CONCATENATION": 1}),
    "space_to_depth": ([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], [], [1, 3, 6, 4],
                       {"SPACE_TO_DEPTH": 1}),
    "crd_pixel_shuffle": (_chain(("Conv", ["cw", "cb"], {"pads": [1, 1, 1, 1]}),
                                 ("DepthToSpace", [], {"blocksize": 3, "mode": "CRD"})),
                          [_init("cw", 18, 4, 3, 3), _init("cb", 18)], [1, 4, 5, 5],
                          {"DEPTH_TO_SPACE": 1, "GATHER": 0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime_at_fp32(tmp_path, case):
    nodes, inits, shape, expected_ops = CASES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_model(nodes, inits, shape), str(path))
    result = build(path, "x86-litert", tmp_path / "b", samples=3)
    assert result.fidelity["max_abs"] <= 1e-4, result.fidelity
    ops = Counter(op.code for op in read_model((tmp_path / "b" / "model.tflite").read_bytes())[0])
    for op, count in expected_ops.items():
        assert ops.get(op, 0) == count, (op, dict(ops))
    if case not in ("transpose_hw", "group_norm"):  # GroupNorm normalizes [N, groups, -1] in ONNX order
        assert "TRANSPOSE" not in ops, dict(ops)


@pytest.mark.parametrize("case, expected", [("convT_k4_s2_p1", {"TRANSPOSE_CONV": 1}),
                                            ("convT_k3_s2_p1_op1", {"TRANSPOSE_CONV": 1, "SLICE": 1}),
                                            ("convT_k2_s2_p0", {"TRANSPOSE_CONV": 1, "SLICE": 0})])
def test_transposed_conv_for_the_edge_tpu_is_transpose_conv(tmp_path, case, expected):
    """The Edge TPU lowering keeps TRANSPOSE_CONV: TF SAME where it reproduces ONNX pads, else VALID + SLICE."""
    from edgegen.backends.tflite.lower import lower
    from edgegen.backends.tflite.prepare import prepare
    from edgegen.backends.tflite.session import Session
    from edgegen.graph import Graph
    from edgegen.inputs import sample_feeds
    from edgegen.source import SourceSession

    nodes, inits, shape, _ = CASES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_model(nodes, inits, shape), str(path))
    graph = Graph.load(path)
    lowered = lower(prepare(graph), "fp32", "edgetpu")
    ops = Counter(r.code for r in lowered.builder.records)
    assert {k: ops.get(k, 0) for k in expected} == expected, dict(ops)
    (tmp_path / "model.tflite").write_bytes(lowered.builder.serialize(case))
    session = Session(tmp_path, {"entry": "model.tflite", "inputs": lowered.inputs, "outputs": lowered.outputs}, 1)
    feeds = sample_feeds(graph.inputs, [1])
    np.testing.assert_allclose(session.run(feeds)["y"], SourceSession(path).run(feeds)["y"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("k, s, p, op", [(4, 2, 1, 0), (9, 2, 4, 1), (9, 3, 4, 2), (3, 2, 1, 1)])
def test_int8_strided_transposed_conv_to_one_channel_loads_in_xnnpack(tmp_path, k, s, p, op):
    """FSRCNN on Y: the sub-pixel CONV_2D of a one-channel ConvTranspose has a one-scale filter and
    s*s outputs; its bias keeps that one scale (XNNPACK refuses a per-channel bias there)."""
    from edgegen.report import backend_gap_db

    nodes, inits = _conv_t(k, s, p, op, cin=4, cout=1)
    path = tmp_path / "convT.onnx"
    onnx.save(_model(nodes, inits, [1, 4, 8, 8]), str(path))
    result = build(path, "x86-litert", tmp_path / "b", precision="int8", samples=3, calibration_count=8)
    ops, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    [conv] = [o for o in ops if o.code == "CONV_2D"]
    assert [len(tensors[i].quant.scale) for i in conv.inputs[1:]] == [1, 1]
    assert backend_gap_db(result.manifest) <= 1.0, result.fidelity


def test_pools_run_int8_on_their_input_grid(tmp_path):
    """A conv -> max pool (explicit pads) -> conv -> average pool chain at int8: every pool is an int8 operator,
    and the model stays close to the fp32 source."""
    nodes = _chain(("Conv", ["w1", "b1"], {"pads": [1, 1, 1, 1]}), ("Relu", [], {}),
                   ("MaxPool", [], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
                   ("Conv", ["w2", "b2"], {"pads": [1, 1, 1, 1]}),
                   ("AveragePool", [], {"kernel_shape": [2, 2], "strides": [2, 2]}))
    path = tmp_path / "pools.onnx"
    onnx.save(_model(nodes, [_init("w1", 8, 3, 3, 3), _init("b1", 8), _init("w2", 8, 8, 3, 3), _init("b2", 8)],
                     [1, 3, 16, 16]), str(path))
    result = build(path, "x86-litert", tmp_path / "b", precision="int8", samples=3)
    assert result.fidelity["psnr_db"] >= 35, result.fidelity
    ops, tensors = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    pools = [op for op in ops if op.code in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "PADV2")]
    assert len(pools) == 3
    assert all(tensors[op.inputs[0]].dtype == "int8" for op in pools), [(op.code, tensors[op.inputs[0]].dtype) for op in pools]


@pytest.mark.parametrize("attrs, size, why", [
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 8, "count_include_pad=0"),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 7, "ceil_mode=1")])
def test_pools_without_a_tflite_form_are_refused_by_name(tmp_path, attrs, size, why):
    from edgegen.errors import EdgegenError

    path = tmp_path / "pool.onnx"
    onnx.save(_model(*_unary("AveragePool", **attrs), [1, 3, size, size]), str(path))
    with pytest.raises(EdgegenError, match=why) as info:
        build(path, "x86-litert", tmp_path / "b", samples=1)
    assert "AveragePool" in str(info.value)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_one_gelu_operator(tmp_path, approximate):
    """ONNX Gelu (opset 20) -> TFLite GELU with the same approximation."""
    path = tmp_path / "gelu.onnx"
    onnx.save(_model(*_unary("Gelu", approximate=approximate), [1, 3, 4, 4], opset=20), str(path))
    result = build(path, "x86-litert", tmp_path / "b", samples=3)
    assert result.fidelity["max_abs"] <= 1e-4, result.fidelity
    ops = Counter(op.code for op in read_model((tmp_path / "b" / "model.tflite").read_bytes())[0])
    assert ops["GELU"] == 1, dict(ops)


@pytest.mark.parametrize("target", ["x86-litert", "fpga-sim"])
@pytest.mark.parametrize("op, attrs", [("Mish", {}), ("Selu", {}), ("Selu", {"alpha": 1.2, "gamma": 0.9})])
def test_one_node_mish_and_selu_lower(tmp_path, target, op, attrs):
    """The dynamo exporter keeps nn.Mish and nn.SELU as one ONNX node: refused on every TFLite and FPGA
    target ("no TFLite lowering"), though the legacy exporter's spelling of the same function built."""
    path = tmp_path / "act.onnx"
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["h"], ["y"], **attrs)]
    onnx.save(_model(nodes, [_init("w", 3, 3, 3, 3, scale=1.0)], [1, 3, 6, 6], opset=18), str(path))
    precision = "fp32" if target == "x86-litert" else "int8"
    result = build(path, target, tmp_path / "b", precision=precision, samples=3)
    assert result.fidelity["max_abs"] <= 1e-4 if precision == "fp32" else result.fidelity["psnr_db"] > 35


_GELU_TAILS = {  # after Add(erf, 1) -> "shifted": how each exporter multiplies by x and by 0.5
    "torchscript": [helper.make_node("Mul", ["h", "shifted"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])],
    "dynamo": [helper.make_node("Mul", ["half", "shifted"], ["m"]), helper.make_node("Mul", ["h", "m"], ["y"])],
    "half_x_first": [helper.make_node("Mul", ["h", "half"], ["m"]), helper.make_node("Mul", ["m", "shifted"], ["y"])],
}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("tail", list(_GELU_TAILS))
def test_the_erf_form_of_gelu_is_one_gelu_operator(tmp_path, precision, tail):
    """x * 0.5 * (1 + erf(x / sqrt 2)), as the exporters write GELU below opset 20 -> TFLite GELU (TFLite
    has no ERF); the same form with another constant is not GELU and stays refused."""
    def erf_form(root: float) -> onnx.ModelProto:
        nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                 helper.make_node("Div", ["h", "root"], ["scaled"]), helper.make_node("Erf", ["scaled"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["shifted"]), *_GELU_TAILS[tail]]
        inits = [_init("w", 3, 3, 3, 3), numpy_helper.from_array(np.float32(root), "root"),
                 numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(0.5), "half")]
        return _model(nodes, inits, [1, 3, 6, 6], opset=17)

    path = tmp_path / "gelu_erf.onnx"
    onnx.save(erf_form(np.sqrt(2)), str(path))
    result = build(path, "x86-litert", tmp_path / "b", precision=precision, samples=3, calibration_count=8)
    if precision == "fp32":
        assert result.fidelity["max_abs"] <= 1e-4, result.fidelity
    ops = Counter(op.code for op in read_model((tmp_path / "b" / "model.tflite").read_bytes())[0])
    assert ops["GELU"] == 1 and "DIV" not in ops, dict(ops)
    onnx.save(erf_form(1.5), str(path))
    with pytest.raises(UnsupportedOpError, match="Erf"):
        build(path, "x86-litert", tmp_path / "c", precision=precision, samples=3, calibration_count=8)


@pytest.mark.parametrize("target, precision", [("x86-litert", "fp32"), ("x86-litert", "int8"), ("fpga-sim", "int8")])
def test_a_label_fed_as_int32_and_cast_for_its_embedding(tmp_path, target, precision):
    from conftest import conditional_generator

    model = conditional_generator(extras=False)
    label = next(i for i in model.graph.input if i.name == "label")
    label.type.tensor_type.elem_type = TensorProto.INT32
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    gather.input[1] = "label64"
    model.graph.node.insert(0, helper.make_node("Cast", ["label"], ["label64"], to=TensorProto.INT64))
    onnx.save(model, str(tmp_path / "int32.onnx"))
    result = build(tmp_path / "int32.onnx", target, tmp_path / "b", precision=precision)
    assert result.fidelity["psnr_db"] > (100 if precision == "fp32" else 30)


@pytest.mark.parametrize("exponent, got", [
    (np.float32(2.5), "got the exponent 2.5"),
    (np.full((1, 3, 1, 1), 2.0, np.float32), "its exponent is a constant of shape [1, 3, 1, 1], not one value")])
def test_a_pow_without_a_tflite_form_says_which_exponents_are_lowered(tmp_path, exponent, got):
    """A Pow by 2.5 was refused as "no TFLite lowering for this op", as if no Pow were lowered; `edgegen inspect`
    said the same."""
    from edgegen.inspect import inspect_model

    path = tmp_path / "pow.onnx"
    onnx.save(_model([helper.make_node("Pow", ["x", "e"], ["y"], "power")], [numpy_helper.from_array(exponent, "e")],
                     [1, 3, 8, 8]), str(path))
    why = f"Pow is lowered for a constant exponent of 0.5, 2 or 3 (as SQRT or products); {got}: write the power"
    with pytest.raises(UnsupportedOpError) as info:
        build(path, "x86-litert", tmp_path / "b", samples=1)
    assert f"node 'power' (op Pow): {why}" in str(info.value) and not (tmp_path / "b").exists()
    assert why in inspect_model(str(path))["targets"]["x86-litert"]["unsupported"][0]["why"]
