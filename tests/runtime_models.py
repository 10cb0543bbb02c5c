"""Small models for the serving tests, built with onnx.helper (seeded random weights).

glyph_like: the zoo generator's structure in miniature: latent [N,16] + label [N] -> image
[N,3,32,32] and preview [N,3,16,16]; a latent-only trunk (Gemm -> 4x4 -> nearest x2 ->
depthwise-separable convs -> 8x8 -> 16x16, plus a colour vector) holds most of the MACs, then a
label embedding is broadcast over the 16x16 map and concatenated.

upscaler_like: a fully-convolutional x2 upscaler like the zoo one: stem conv, depthwise-separable
residual blocks, a tail to 12 channels, DepthToSpace(2), plus a linear x2 resize of the input as
a global skip; image [N,3,H,W] in [0,1] -> image_2x [N,3,2H,2W], dynamic N, H, W.

unet_like: one U-Net level (stride-2 conv down, nearest x2 up, Concat with the input), dynamic H, W:
it runs only on even sides.

spade_like: an image [N,3,H,W] modulated by a float map seg [N,2,H,W] (a latent: drawn from the seed
unless given), dynamic H, W.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, array, name=None) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape, scale=None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        return self.const((self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type, inputs, **attrs) -> str:
        self.count += 1
        out = f"{op_type.lower()}{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}_{op_type}", **attrs))
        return out

    def conv(self, x, cin, cout, k=3, groups=1, stride=1) -> str:
        w = self.weight(cout, cin // groups, k, k)
        b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        return self.op("Conv", [x, w, b], pads=[k // 2] * 4, group=groups, strides=[stride, stride])

    def sep(self, x, cin, cout) -> str:
        return self.op("Relu", [self.conv(self.conv(x, cin, cin, 3, groups=cin), cin, cout, 1)])

    def up(self, x, mode="nearest") -> str:
        scales = self.const(np.array([1, 1, 2, 2], np.float32))
        attrs = {"mode": mode}
        if mode != "nearest":
            attrs["coordinate_transformation_mode"] = "half_pixel"
        return self.op("Resize", [x, "", scales], **attrs)

    def model(self, inputs, outputs, name) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def glyph_like(seed: int = 0, width: int = 16) -> onnx.ModelProto:
    b, c = _Builder(seed), width
    h = b.op("Gemm", ["latent", b.weight(16, c * 16), b.weight(c * 16, scale=0.1)])
    h = b.op("Relu", [b.op("Reshape", [h, b.const(np.array([-1, c, 4, 4], np.int64))])])
    h = b.sep(b.up(h), c, c)                       # 8x8
    h = b.sep(b.up(h), c, c)                       # 16x16
    h = b.sep(h, c, c)
    colors = b.op("Reshape", [b.op("Gemm", ["latent", b.weight(16, 3), b.weight(3, scale=0.1)]),
                              b.const(np.array([-1, 3, 1, 1], np.int64))])
    emb = b.op("Gather", [b.weight(10, 4, scale=1.0), "label"])
    emb = b.op("Reshape", [emb, b.const(np.array([-1, 4, 1, 1], np.int64))])
    emb = b.op("Expand", [emb, b.const(np.array([1, 4, 16, 16], np.int64))])
    x = b.sep(b.op("Concat", [h, emb], axis=1), c + 4, c)
    preview = b.op("Tanh", [b.op("Add", [b.conv(b.sep(x, c, c), c, 3, 1), colors])])
    image = b.op("Tanh", [b.op("Add", [b.conv(b.sep(b.up(x), c, c), c, 3, 3), colors])])
    rename = {preview: "preview", image: "image"}
    for node in b.nodes:
        node.output[:] = [rename.get(o, o) for o in node.output]
    return b.model(
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32]),
         helper.make_tensor_value_info("preview", TensorProto.FLOAT, ["N", 3, 16, 16])], "glyph_like")


def upscaler_like(seed: int = 0, width: int = 12, blocks: int = 3) -> onnx.ModelProto:
    b, c = _Builder(seed), width
    x = b.op("Relu", [b.conv("image", 3, c)])
    for _ in range(blocks):
        x = b.op("Add", [x, b.conv(b.op("Relu", [b.conv(x, c, c, 3, groups=c)]), c, c, 1)])
    x = b.conv(b.conv(x, c, c, 3, groups=c), c, 12, 1)
    x = b.op("DepthToSpace", [x], blocksize=2, mode="CRD")
    skip = b.up("image", mode="linear")
    b.op("Clip", [b.op("Add", [skip, b.op("Mul", [x, b.const(np.float32(0.1))])]),
                  b.const(np.float32(0.0)), b.const(np.float32(1.0))])
    b.nodes[-1].output[0] = "image_2x"
    model = b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                    [helper.make_tensor_value_info("image_2x", TensorProto.FLOAT, ["N", 3, "H2", "W2"])],
                    "upscaler_like")
    model.metadata_props.add(key="edgegen.default_size", value="32x32")
    return model


def unet_like(seed: int = 0, c: int = 4) -> onnx.ModelProto:
    b = _Builder(seed)
    down = b.op("Relu", [b.conv("image", 3, c, stride=2)])
    x = b.op("Concat", ["image", b.up(down)], axis=1)
    b.op("Sigmoid", [b.conv(x, 3 + c, 3)])
    b.nodes[-1].output[0] = "out"
    model = b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])], "unet_like")
    model.metadata_props.add(key="edgegen.default_size", value="16x16")
    return model


def geometry_like(seed: int = 0, c: int = 4) -> onnx.ModelProto:
    """Every kind of local op the ROI planner maps, on dynamic H, W: reflect and edge pads before valid
    convolutions, strided and dilated convolutions, average and max pooling, a transposed convolution,
    cubic and linear resizes, space-to-depth and depth-to-space. image [N,3,H,W] -> out [N,3,2H,2W]."""
    b = _Builder(seed)

    def valid_conv(x, cin, cout, k, **attrs):
        return b.op("Conv", [x, b.weight(cout, cin, k, k), b.weight(cout, scale=0.1)], **attrs)

    def pad(x, p, mode):
        return b.op("Pad", [x, b.const(np.array([0, 0, p, p, 0, 0, p, p], np.int64))], mode=mode)

    a = b.op("Relu", [valid_conv(pad("image", 2, "reflect"), 3, c, 5)])                    # H
    d = valid_conv(a, c, c, 3, strides=[2, 2], pads=[1, 1, 1, 1])                            # H/2
    d = b.op("AveragePool", [d], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    d = b.op("Relu", [valid_conv(pad(d, 1, "edge"), c, c, 3)])                                # H/2
    e = b.op("ConvTranspose", [d, b.weight(c, c, 4, 4), b.weight(c, scale=0.1)], strides=[2, 2],
             pads=[1, 1, 1, 1])                                                              # H
    f = b.op("Resize", [e, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="cubic",
             coordinate_transformation_mode="half_pixel")                                    # 2H
    f = valid_conv(b.op("SpaceToDepth", [f], blocksize=2), 4 * c, c, 1)                      # H
    g = b.op("Add", [f, a])
    g = b.up(g, mode="linear")                                                               # 2H
    g = valid_conv(g, c, c, 3, dilations=[2, 2], pads=[2, 2, 2, 2])
    g = b.op("MaxPool", [g], kernel_shape=[2, 2], strides=[2, 2])                            # H
    b.op("DepthToSpace", [valid_conv(g, c, 12, 3, pads=[1, 1, 1, 1])], blocksize=2, mode="DCR")  # 2H
    b.nodes[-1].output[0] = "out"
    b.nodes.append(helper.make_node("Tanh", ["out"], ["image_2x"]))
    model = b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                    [helper.make_tensor_value_info("image_2x", TensorProto.FLOAT, ["N", 3, "H2", "W2"])],
                    "geometry_like")
    model.metadata_props.add(key="edgegen.default_size", value="24x24")
    return model


def sized_resize_like(seed: int = 0, c: int = 6, form: str = "sizes", skip: bool = True) -> onnx.ModelProto:
    """An image-to-image model that upsamples back with a Resize to fixed sizes, as exporters write
    `F.interpolate(x, size=(32, 32), mode="bilinear")`: form "sizes" for a static input, "axes" the
    opset-18 form (sizes for H and W only), "shape" a dynamic batch (sizes = Concat(Shape(x)[0:2], [32, 32])).
    skip: the upsampled map is concatenated with the image (a U-Net's skip), else the last conv reads it
    alone. image [N,3,32,32] -> out [N,3,32,32]."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("image", 3, c, stride=2)])
    x = b.op("Relu", [b.conv(x, c, c, stride=2)])                                            # 8x8
    if form == "shape":
        kept = b.op("Slice", [b.op("Shape", [x]), b.const(np.array([0], np.int64)), b.const(np.array([2], np.int64))])
        sizes = b.op("Concat", [kept, b.const(np.array([32, 32], np.int64))], axis=0)
    else:
        sizes = b.const(np.array([32, 32] if form == "axes" else [1, c, 32, 32], np.int64))
    attrs = {"axes": [2, 3]} if form == "axes" else {}
    x = b.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel", **attrs)
    b.op("Tanh", [b.conv(b.op("Concat", [x, "image"], axis=1), c + 3, 3) if skip else b.conv(x, c, 3)])
    b.nodes[-1].output[0] = "out"
    batch = "N" if form == "shape" else 1
    model = b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 32, 32])], "sized_resize_like")
    if form == "axes":
        model.opset_import[0].version = 18
    return model


def spade_like(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "wi"),
             numpy_helper.from_array(rng.normal(0, 0.3, (3, 2, 3, 3)).astype(np.float32), "ws")]
    g = helper.make_graph([helper.make_node("Conv", ["image", "wi"], ["a"], pads=[1, 1, 1, 1]),
                           helper.make_node("Conv", ["seg", "ws"], ["b"], pads=[1, 1, 1, 1]),
                           helper.make_node("Mul", ["a", "b"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])],
                          "spade", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                                    helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", 2, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
