"""Fold an inference-mode BatchNormalization into the Gemm (or MatMul) before it.

Exporters fold BatchNorm into a Conv or ConvTranspose, but not into a Linear layer whose output is
reshaped into a feature map first (`Linear -> view(N, C, H, W) -> BatchNorm2d`, the usual start of a
conditional DCGAN) or read directly (`Linear -> BatchNorm1d`). Left alone, that BatchNorm is a float
layer between two int8 ones and an extra layer on the NPU. Each output channel c of the BatchNorm
scales and shifts a contiguous run of the Gemm's columns (c * H * W ... (c + 1) * H * W - 1), so its
affine map folds into those columns' weights and bias exactly. A `Linear(bias=False)` is exported by
TorchScript as a MatMul by a constant matrix: on a 2-D input that is a Gemm without bias, and it
becomes one, carrying the BatchNorm's shift as its bias.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .passes.channel_edit import add_initializer


def fold_norm_into_gemm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every foldable Gemm/MatMul [-> Reshape] -> BatchNormalization chain folded; (model, count)."""
    graph = model.graph
    ranks = _ranks(model) if any(n.op_type == "MatMul" for n in graph.node) else {}
    values = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    folded = 0
    for norm in [n for n in graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
        chain = _chain(norm, producer, readers, outputs, values, ranks)
        if chain is None:
            continue
        gemm, reshape = chain
        scale, shift = _affine(norm, values)
        columns = _gemm_columns(gemm, values)
        if columns % scale.size or reshape is not None and _sample_size(reshape, values) != columns:
            continue  # the BatchNorm's channels are not runs of one row of the Gemm
        per_channel = columns // scale.size
        gemm.op_type = "Gemm"  # a MatMul of a 2-D input by a matrix is a Gemm with the default attributes
        _scale_gemm(model, gemm, values, np.repeat(scale, per_channel), np.repeat(shift, per_channel))
        last = reshape or gemm
        last.output[0] = norm.output[0]
        graph.node.remove(norm)
        folded += 1
    if folded:
        used = {i for n in graph.node for i in n.input}
        for init in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(init)
    return model, folded


def _chain(norm: onnx.NodeProto, producer: dict, readers: dict, outputs: set, values: dict,
           ranks: dict[str, int]):
    """(gemm, reshape or None) when `norm` reads a constant-weight Gemm (or a MatMul of a 2-D input by a
    constant matrix) alone, directly or through a Reshape to [batch, C, ...] (batch as 0, -1 or a
    number); else None."""
    if any(a.name == "training_mode" and a.i for a in norm.attribute) or len([o for o in norm.output if o]) > 1:
        return None
    if not all(name in values for name in norm.input[1:5]):
        return None
    source = producer.get(norm.input[0])
    reshape = None
    if source is not None and source.op_type == "Reshape":
        if len(source.input) < 2 or source.input[1] not in values:
            return None
        shape = numpy_helper.to_array(values[source.input[1]])
        if shape.ndim != 1 or shape.size < 2 or shape[0] < -1 or (shape[1:] <= 0).any():
            return None
        reshape, source = source, producer.get(source.input[0])
    if source is None or not _dense(source, values, ranks):
        return None
    for node, out in ((source, source.output[0]), (reshape, reshape.output[0] if reshape else None)):
        if out is not None and (len(readers.get(out, [])) != 1 or out in outputs):
            return None
    if reshape is not None and int(np.prod(numpy_helper.to_array(values[reshape.input[1]])[1:])) != _gemm_columns(
            source, values):
        return None
    return source, reshape


def _dense(node: onnx.NodeProto, values: dict, ranks: dict[str, int]) -> bool:
    """Whether `node` is A @ B (+ C) with constant B and C: a Gemm with A not transposed, or a MatMul
    of a 2-D input by a 2-D constant."""
    if len(node.input) < 2 or node.input[1] not in values:
        return False
    if node.op_type == "MatMul":
        return len(values[node.input[1]].dims) == 2 and ranks.get(node.input[0]) == 2
    if node.op_type != "Gemm" or any(a.name == "transA" and a.i for a in node.attribute):
        return False
    return len(node.input) < 3 or not node.input[2] or node.input[2] in values


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor shape inference knows."""
    graph = shape_inference.infer_shapes(model).graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)
            if v.type.tensor_type.HasField("shape")}


def _sample_size(reshape: onnx.NodeProto, values: dict) -> int:
    """Elements per batch entry after a Reshape (its shape past the batch entry, which may be 0, -1 or
    the exported batch)."""
    return int(np.prod(numpy_helper.to_array(values[reshape.input[1]])[1:]))


def _affine(norm: onnx.NodeProto, values: dict) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (numpy_helper.to_array(values[n]).astype(np.float64) for n in norm.input[1:5])
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _gemm_columns(gemm: onnx.NodeProto, values: dict) -> int:
    weight = values[gemm.input[1]]
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    return int(weight.dims[0] if trans_b else weight.dims[1])


def _scale_gemm(model: onnx.ModelProto, gemm: onnx.NodeProto, values: dict, scale: np.ndarray,
                shift: np.ndarray) -> None:
    """Y' = scale * Y + shift per column: scale B's columns, and C (made per column) by scale plus shift / beta."""
    attrs = {a.name: a for a in gemm.attribute}
    trans_b = "transB" in attrs and attrs["transB"].i
    beta = attrs["beta"].f if "beta" in attrs else 1.0
    weight = numpy_helper.to_array(values[gemm.input[1]])
    weight = weight * (scale[:, None] if trans_b else scale[None, :]).astype(weight.dtype)
    has_bias = len(gemm.input) > 2 and gemm.input[2]
    if has_bias and beta != 0.0:
        bias = np.broadcast_to(numpy_helper.to_array(values[gemm.input[2]]).astype(np.float64), scale.shape)
        bias = bias * scale + shift / beta
    else:
        bias = shift
        _set_attr(gemm, "beta", 1.0)
    base = gemm.name or gemm.output[0]
    names = [add_initializer(model, weight, base, "bn_weight"), add_initializer(model, bias.astype(weight.dtype), base,
                                                                                "bn_bias")]
    gemm.input[1] = names[0]
    if len(gemm.input) > 2:
        gemm.input[2] = names[1]
    else:
        gemm.input.append(names[1])


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))
