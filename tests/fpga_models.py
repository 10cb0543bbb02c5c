"""Small float models that exercise every NPU layer kind (built with onnx.helper, seeded)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "npu_test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _init(rng, name, *shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mobile_block(size: int = 8) -> onnx.ModelProto:
    """image [1,3,S,S] -> conv 3x3 -> ReLU -> depthwise 3x3 stride 2 -> HardSwish -> pointwise -> residual Add
    -> LeakyRelu -> nearest x2 -> conv 3x3 -> pixel shuffle (CRD, r=2) -> Sigmoid -> image [1,3,S*2,S*2]."""
    rng = np.random.default_rng(1)
    inits = [_init(rng, "w1", 16, 3, 3, 3), _init(rng, "b1", 16), _init(rng, "wd", 16, 1, 3, 3), _init(rng, "bd", 16),
             _init(rng, "wp", 16, 16, 1, 1, scale=0.2), _init(rng, "bp", 16), _init(rng, "w2", 12, 16, 3, 3, scale=0.1),
             _init(rng, "b2", 12), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], pads=[1, 1, 1, 1], strides=[2, 2], group=16),
        helper.make_node("HardSwish", ["d1"], ["h1"]),
        helper.make_node("Conv", ["h1", "wp", "bp"], ["p1"]),
        helper.make_node("Add", ["p1", "h1"], ["a1"]),
        helper.make_node("LeakyRelu", ["a1"], ["l1"], alpha=0.2),
        helper.make_node("Resize", ["l1", "", "scales"], ["u1"], mode="nearest"),
        helper.make_node("Conv", ["u1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["c2"], ["s1"], blocksize=2, mode="CRD"),
        helper.make_node("Sigmoid", ["s1"], ["out"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, size * 2, size * 2])], inits)


def dense_decoder() -> onnx.ModelProto:
    """latent [1,16] -> Gemm -> Reshape [1,8,4,4] -> ReLU -> ConvTranspose k4 s2 p1 -> Tanh -> image [1,3,8,8]."""
    rng = np.random.default_rng(2)
    inits = [_init(rng, "fc_w", 16, 128), _init(rng, "fc_b", 128),
             numpy_helper.from_array(np.array([1, 8, 4, 4], np.int64), "shape"),
             _init(rng, "up_w", 8, 3, 4, 4), _init(rng, "up_b", 3)]
    nodes = [
        helper.make_node("Gemm", ["latent", "fc_w", "fc_b"], ["fc"]),
        helper.make_node("Reshape", ["fc", "shape"], ["map"]),
        helper.make_node("Relu", ["map"], ["act"]),
        helper.make_node("ConvTranspose", ["act", "up_w", "up_b"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["up"], ["image"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 16])],
                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])], inits)


def view_decoder() -> onnx.ModelProto:
    """latent [1,16] -> Reshape [1,16,1,1] (a DCGAN's z.view) -> ConvTranspose k4 -> ReLU -> ConvTranspose k4 s2 p1
    -> Tanh -> image [1,3,8,8]: the model input is quantized after the reshape."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.array([1, 16, 1, 1], np.int64), "shape"),
             _init(rng, "w1", 16, 8, 4, 4), _init(rng, "b1", 8), _init(rng, "w2", 8, 3, 4, 4), _init(rng, "b2", 3)]
    nodes = [
        helper.make_node("Reshape", ["latent", "shape"], ["z"]),
        helper.make_node("ConvTranspose", ["z", "w1", "b1"], ["up1"]),
        helper.make_node("Relu", ["up1"], ["act"]),
        helper.make_node("ConvTranspose", ["act", "w2", "b2"], ["up2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["up2"], ["image"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 16])],
                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])], inits)


def hardswish_upsample() -> onnx.ModelProto:
    """image [1,3,8,8] -> conv 3x3 -> HardSwish -> nearest x2 -> conv 3x3 -> image [1,3,16,16]: the resize
    only passes its input's grid through, so the HardSwish output must be quantized for it."""
    rng = np.random.default_rng(8)
    inits = [_init(rng, "w1", 8, 3, 3, 3), _init(rng, "b1", 8), _init(rng, "w2", 3, 8, 3, 3, scale=0.2),
             _init(rng, "b2", 3), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["h1"]),
        helper.make_node("Resize", ["h1", "", "scales"], ["u1"], mode="nearest"),
        helper.make_node("Conv", ["u1", "w2", "b2"], ["out"], pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])], inits)


def gelu_block(half_last: bool = False) -> onnx.ModelProto:
    """image [1,3,8,8] -> conv 3x3 -> exact GELU as exporters write it below opset 20 (x / sqrt 2, Erf, + 1,
    * 0.5, * x; or * x, * 0.5 as torch.onnx.export writes nn.GELU) -> conv 3x3 -> image [1,3,8,8]."""
    rng = np.random.default_rng(9)
    inits = [_init(rng, "w1", 8, 3, 3, 3), _init(rng, "w2", 3, 8, 3, 3, scale=0.2),
             *(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
               (("root2", np.sqrt(2)), ("one", 1.0), ("half", 0.5)))]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["h", "root2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        *([helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"])] if half_last
          else [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", ["h", "m"], ["g"])]),
        helper.make_node("Conv", ["g", "w2"], ["out"], pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])], inits)


def gelu_tanh_pow_block() -> onnx.ModelProto:
    """image [1,3,8,8] -> conv 3x3 -> tanh GELU as the dynamo exporter writes it (0.5 * x * (1 + tanh(sqrt(2 / pi)
    * (x + 0.044715 * Pow(x, 3))))) -> conv 3x3 -> image [1,3,8,8]."""
    rng = np.random.default_rng(11)
    inits = [_init(rng, "w1", 8, 3, 3, 3), _init(rng, "w2", 3, 8, 3, 3, scale=0.2),
             *(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
               (("three", 3.0), ("k", 0.044715), ("root", np.sqrt(2 / np.pi)), ("one", 1.0), ("half", 0.5)))]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Pow", ["h", "three"], ["cube"]),
        helper.make_node("Mul", ["cube", "k"], ["kc"]),
        helper.make_node("Add", ["h", "kc"], ["inner"]),
        helper.make_node("Mul", ["inner", "root"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["a"]),
        helper.make_node("Mul", ["h", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("Conv", ["g", "w2"], ["out"], pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])], inits)


def grouped_conv() -> onnx.ModelProto:
    """A convolution with 2 groups of 4 channels: neither dense nor depthwise."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["image", "w"], ["out"], pads=[1, 1, 1, 1], group=2, name="grouped")]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
                  [_init(rng, "w", 8, 4, 3, 3)])


def instance_norm() -> onnx.ModelProto:
    """A conv followed by InstanceNormalization (float in the QDQ graph): not for the NPU."""
    rng = np.random.default_rng(3)
    inits = [_init(rng, "w", 4, 3, 3, 3), numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("InstanceNormalization", ["c", "g", "b"], ["n"], name="norm"),
             helper.make_node("Tanh", ["n"], ["out"], name="tanh")]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)


def rgb_head(size: int = 8) -> onnx.ModelProto:
    """glyphgen's compositing head in miniature: latent -> Gemm -> (fg, bg) slices, their difference;
    map -> BatchNorm -> conv to 4 channels -> sigmoid(alpha) * (fg - bg) + bg + residual -> Tanh;
    the latent also broadcast over the map (Unsqueeze + Expand) and concatenated."""
    rng = np.random.default_rng(4)
    inits = [_init(rng, "cw", 16, 6), _init(rng, "cb", 6), _init(rng, "w", 4, 8, 3, 3), _init(rng, "b", 4),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "g"),
             numpy_helper.from_array(rng.uniform(-0.3, 0.3, 4).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.uniform(-0.2, 0.2, 4).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "var"),
             _init(rng, "ew", 4, 16), _init(rng, "eb", 4),
             *(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
               (("axes", [2, 3]), ("z", [0]), ("one", [1]), ("three", [3]), ("four", [4]), ("six", [6]),
                ("ax1", [1]), ("full", [1, 4, size, size])))]
    nodes = [
        helper.make_node("Gemm", ["latent", "cw", "cb"], ["colors"], transB=0),
        helper.make_node("Unsqueeze", ["colors", "axes"], ["c4"]),
        helper.make_node("Slice", ["c4", "z", "three", "ax1"], ["fg"]),
        helper.make_node("Slice", ["c4", "three", "six", "ax1"], ["bg"]),
        helper.make_node("Sub", ["fg", "bg"], ["diff"]),
        helper.make_node("Gemm", ["latent", "ew", "eb"], ["e"], transB=1),
        helper.make_node("Unsqueeze", ["e", "axes"], ["e4"]),
        helper.make_node("Expand", ["e4", "full"], ["emap"]),
        helper.make_node("BatchNormalization", ["image", "g", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Concat", ["bn", "emap"], ["joined"], axis=1),
        helper.make_node("Conv", ["joined", "w", "b"], ["o"], pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["o", "z", "one", "ax1"], ["alpha_logit"]),
        helper.make_node("Slice", ["o", "one", "four", "ax1"], ["residual"]),
        helper.make_node("Sigmoid", ["alpha_logit"], ["alpha"]),
        helper.make_node("Mul", ["alpha", "diff"], ["mix"]),
        helper.make_node("Add", ["bg", "mix"], ["base"]),
        helper.make_node("Add", ["base", "residual"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["out"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 16]),
                          helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, size, size])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, size, size])], inits)


def prelu_block(per_channel: bool = False) -> onnx.ModelProto:
    """conv 3x3 -> PRelu (one slope, as nn.PReLU() exports it, or one per channel) -> conv 1x1."""
    rng = np.random.default_rng(7)
    slope = np.full((8, 1, 1), 0.25, np.float32) if not per_channel else rng.uniform(0.1, 0.4, (8, 1, 1))
    inits = [_init(rng, "w1", 8, 3, 3, 3), _init(rng, "b1", 8), _init(rng, "w2", 3, 8, 1, 1),
             numpy_helper.from_array(slope.astype(np.float32) if per_channel else np.array([0.25], np.float32),
                                     "slope")]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c1", "slope"], ["p1"], name="prelu"),
             helper.make_node("Conv", ["p1", "w2"], ["out"])]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])], inits)


def residual_denoiser() -> onnx.ModelProto:
    """DnCNN-style: image [1,1,8,8] -> conv -> ReLU -> conv = noise; output image - noise (a Sub, int8 like Add)."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["noise"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["image", "noise"], ["out"])]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])],
                  [_init(rng, "w1", 8, 1, 3, 3), _init(rng, "b1", 8), _init(rng, "w2", 1, 8, 3, 3, scale=0.1),
                   _init(rng, "b2", 1)])
