"""Lossless re-encodings of the QDQ IR for backends that prefer another integer type, and the shared
machinery of rewrites of an op between a DequantizeLinear and a QuantizeLinear."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..graph_load import default_opset
from .channel_edit import drop_dead_nodes


def activations_to_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-encode int8 activation quantization as uint8 with the zero point shifted by 128.

    The grid is the same (q_u8 = q_s8 + 128, zp_u8 = zp_s8 + 128), so the numbers do not change;
    x86 ONNX Runtime fuses far more uint8-activation QDQ patterns, and OpenVINO runs
    ConvTranspose in int8 only with unsigned activations. Weights stay int8.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    quantized_by_q = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2:
            quantized_by_q[node.output[0]] = node
    shifted: dict[str, str] = {}

    def shift(zp_name: str) -> str | None:
        zp = inits.get(zp_name)
        if zp is None or zp.data_type != TensorProto.INT8:
            return None
        if zp_name not in shifted:
            value = numpy_helper.to_array(zp).astype(np.int16) + 128
            new = numpy_helper.from_array(value.astype(np.uint8), f"{zp_name}_u8")
            graph.initializer.append(new)
            shifted[zp_name] = new.name
        return shifted[zp_name]

    for node in graph.node:
        is_activation_q = node.op_type == "QuantizeLinear" and node.output[0] in quantized_by_q
        is_activation_dq = node.op_type == "DequantizeLinear" and node.input[0] in quantized_by_q
        if (is_activation_q or is_activation_dq) and len(node.input) > 2:
            new = shift(node.input[2])
            if new:
                node.input[2] = new
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name in shifted and t.name not in used]:
        graph.initializer.remove(init)
    for value in list(graph.value_info):
        if value.name in quantized_by_q and value.type.tensor_type.elem_type == TensorProto.INT8:
            value.type.tensor_type.elem_type = TensorProto.UINT8
    return model


# Element-wise activations that CPU plugins fuse into the preceding convolution or matmul.
FUSABLE_ACTIVATIONS = ("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Softplus", "Mish", "Gelu")
_FUSING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def fuse_activation_requantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the Quantize/Dequantize pair between a Conv (ConvTranspose, Gemm, MatMul) and the one
    element-wise activation that alone consumes it by a Clip to the pair's grid, so a backend can run
    the clip and the activation as post-ops of the int8 layer and requantize once after them; also after
    a DepthToSpace of such a layer's float output (see `shuffles_after_float_convs`). Not lossless: that
    one intermediate rounding disappears, which only moves the result closer to the float model. The
    clip keeps the grid's saturation, which is all that is left of a Relu the quantizer folded into it
    (Conv -> Relu -> Sigmoid: without it, negative values reached the Sigmoid, 23-30 dB lost)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if default_opset(model) < 11:  # Clip takes its bounds as inputs from opset 11
        return model
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer, consumers = links(graph)
    graph_outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        pair = _sole_requantization(node.input[0], producer, consumers, graph_outputs) \
            if node.op_type in FUSABLE_ACTIVATIONS else None
        source = producer.get(pair[0].input[0]) if pair else None
        if source is not None and source.op_type == "DepthToSpace":
            source = producer.get(source.input[0])
        grid = tensor_grid(pair[0], inits) if pair else None
        if source is None or source.op_type not in _FUSING_PRODUCERS or grid is None:
            continue
        scale, zero, dtype = grid
        info = np.iinfo(np.dtype(dtype))
        bounds = [f"{pair[0].output[0]}_clip_min", f"{pair[0].output[0]}_clip_max"]
        for name, level in zip(bounds, (info.min, info.max)):
            graph.initializer.append(numpy_helper.from_array(np.array((level - zero) * scale, np.float32), name))
        clip = onnx.helper.make_node("Clip", [pair[0].input[0], *bounds], [pair[1].output[0]],
                                     name=f"{pair[0].name}_grid_clip")
        graph.node.insert(list(graph.node).index(pair[1]), clip)
        for dropped in pair:
            graph.node.remove(dropped)
    return model


_FUSED_BEFORE_SHUFFLES = ("Relu", "LeakyRelu", "Clip")  # as passes.activation_phases moves them


def _sole_requantization(tensor: str, producer: dict, consumers: dict, graph_outputs: set[str]
                         ) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(QuantizeLinear, DequantizeLinear) where a tensor is the Dequantize of a Quantize and each of the
    three tensors has one reader and is no graph output, else None."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return None
    names = (q.input[0], q.output[0], dq.output[0])
    if any(len(consumers.get(name, [])) != 1 for name in names) or set(names) & graph_outputs:
        return None
    return q, dq


def shuffles_after_float_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the Quantize/Dequantize pair between a Conv (ConvTranspose; or a Relu, LeakyRelu or Clip the
    layer fuses) and the DepthToSpace that alone reads it where the shuffle's output is quantized again on the
    same grid, so the backend runs the layer with a float output (dequantization fused in) and quantizes
    once, after the shuffle. Lossless:
    a shuffle only moves values, and quantizing twice on one grid is quantizing once. OpenVINO otherwise
    shuffles the integer tensor and runs the dequantization as a separate multiply after it (0.56 ms of
    a narrow layer's 0.87 ms)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer, consumers = links(graph)
    graph_outputs = {o.name for o in graph.output}
    dropped = []
    for shuffle in graph.node:
        pair = _sole_requantization(shuffle.input[0], producer, consumers, graph_outputs) \
            if shuffle.op_type == "DepthToSpace" else None
        source = producer.get(pair[0].input[0]) if pair else None
        if source is not None and source.op_type in _FUSED_BEFORE_SHUFFLES \
                and len(consumers.get(source.input[0], [])) == 1:
            source = producer.get(source.input[0])
        after = consumers.get(shuffle.output[0], [])
        if source is None or source.op_type not in ("Conv", "ConvTranspose") or len(after) != 1 \
                or after[0].op_type != "QuantizeLinear" or shuffle.output[0] in graph_outputs:
            continue
        grid = tensor_grid(pair[0], inits)
        if grid is None or grid != tensor_grid(pair[1], inits) or grid != tensor_grid(after[0], inits):
            continue
        shuffle.input[0] = pair[0].input[0]
        dropped += pair
    for node in dropped:
        graph.node.remove(node)
    return model


def computed_weights_in_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """Feed each Conv or ConvTranspose whose weights are computed at run time (a StyleGAN modulated
    convolution: the style scales the kernel per sample) its float weights, not their Quantize ->
    Dequantize. OpenVINO 2026.4 runs such a convolution in int8 wrongly (one exported StyleGAN layer's
    output was 1.67 off, the image 20 dB below the same QDQ graph in ONNX Runtime); in float it is exact."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producer, _ = links(model.graph)
    changed = False
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[1] = q.input[0]
            changed = True
    if changed:
        drop_dead_nodes(model)
    return model


def pads_on_quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run each Pad on the quantized tensor: Dequantize -> Pad -> Quantize with the same per-tensor scale
    and zero point on both sides becomes a Pad of the integer tensor (its Quantize nodes removed).

    Lossless: padding only copies values (reflect, edge) or adds one value, and a constant is taken only
    when it lies on the grid. ONNX Runtime keeps such a Pad in float between two conversions, and
    reflection padding sits before every convolution of CycleGAN- and fast-style generators."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer, consumers = links(graph)
    graph_outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    dropped = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        dq = producer.get(pad.input[0])
        qs = consumers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or not qs or \
                pad.output[0] in graph_outputs:
            continue
        grid = tensor_grid(dq, inits)
        if grid is None or any(q.op_type != "QuantizeLinear" or len(q.input) < 3 or tensor_grid(q, inits) != grid
                               or q.output[0] in graph_outputs for q in qs):
            continue
        on_grid, fill = _fill_on_grid(pad, inits, grid)
        if not on_grid:
            continue
        if fill is not None:
            graph.initializer.append(numpy_helper.from_array(fill, f"{pad.output[0]}_fill_quantized"))
            pad.input.extend([""] * (3 - len(pad.input)))
            pad.input[2] = graph.initializer[-1].name
        pad.input[0] = dq.input[0]
        pad.output[0] = f"{pad.output[0]}_quantized"
        for q in qs:
            renamed[q.output[0]] = pad.output[0]
            dropped.append(q)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    drop_dead_nodes(model)  # the Dequantizes that fed the Pads
    return model


def tensor_grid(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> tuple | None:
    """(scale, zero point, its dtype) of a per-tensor Quantize/Dequantize node, or None."""
    scale, zero = inits.get(node.input[1]), inits.get(node.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    return float(scale.reshape(())), int(zero.reshape(())), zero.dtype.str


def _fill_on_grid(pad: onnx.NodeProto, inits: dict[str, np.ndarray], grid: tuple) -> tuple[bool, np.ndarray | None]:
    """(whether the Pad can run on the grid, the quantized constant it fills with or None when it fills
    none). It cannot when its constant is off the grid, not known, or given the opset-2 way (attributes)."""
    attributes = {a.name: a for a in pad.attribute}
    if "pads" in attributes:
        return False, None
    if "mode" in attributes and attributes["mode"].s.decode() != "constant":
        return True, None
    value = inits.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros((), np.float32)
    if value is None:
        return False, None
    scale, zero, dtype = grid
    level = float(value.reshape(())) / scale + zero
    info = np.iinfo(np.dtype(dtype))
    if level != round(level) or not info.min <= level <= info.max:
        return False, None
    return True, np.array(round(level), np.dtype(dtype))


def links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """The node producing each tensor, and the nodes consuming it."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def conversions_around(node: onnx.NodeProto, inits: dict[str, np.ndarray], producer: dict, consumers: dict,
                       graph_outputs: set[str]) -> tuple[onnx.NodeProto, onnx.NodeProto, tuple, tuple] | None:
    """(the DequantizeLinear feeding the node's first input, the one QuantizeLinear reading its output,
    their per-tensor grids) where the node sits between such a pair, else None."""
    if node.output[0] in graph_outputs:
        return None
    dequantize = producer.get(node.input[0])
    readers = consumers.get(node.output[0], [])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(readers) != 1:
        return None
    (quantize,) = readers
    if quantize.op_type != "QuantizeLinear" or len(dequantize.input) < 3 or len(quantize.input) < 3:
        return None
    grids = tensor_grid(dequantize, inits), tensor_grid(quantize, inits)
    return None if None in grids else (dequantize, quantize, *grids)


Plan = Callable[[onnx.NodeProto, dict, dict, dict, set], "tuple[onnx.NodeProto, Any] | None"]
Rewrite = Callable[[onnx.NodeProto, onnx.NodeProto, Any, onnx.GraphProto], list[onnx.NodeProto]]


def rewrite_between_conversions(model: onnx.ModelProto, plan: Plan, rewrite: Rewrite) -> tuple[onnx.ModelProto, int]:
    """(a copy of the model, how many nodes were rewritten): each node for which
    plan(node, inits, producer, consumers, graph_outputs) gives (its QuantizeLinear, detail) is replaced,
    with that QuantizeLinear, by rewrite(node, quantize, detail, graph), whose last node writes the
    QuantizeLinear's output; the Dequantizes nothing reads any more go."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer, consumers = links(graph)
    graph_outputs = {o.name for o in graph.output}
    originals = list(graph.node)  # held, so that their ids stay theirs
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in originals:
        found = plan(node, inits, producer, consumers, graph_outputs)
        if found is not None:
            quantize, detail = found
            replaced[id(node)] = rewrite(node, quantize, detail, graph)
            replaced[id(quantize)] = []
    if replaced:
        nodes = [new for node in originals for new in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(nodes)
        drop_dead_nodes(model)
    return model, len(replaced) // 2
