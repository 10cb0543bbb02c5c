"""Build half of the OpenVINO backend: ONNX -> OpenVINO IR (.xml/.bin)."""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import BuildError
from .. import require
from ...graph import Graph
from ...passes.channel_edit import drop_dead_nodes
from ...passes.lower_conv_transpose import short_output
from ...passes.qdq import (activations_to_uint8, computed_weights_in_float, fuse_activation_requantization,
                           shuffles_after_float_convs)
from ...targets import Target

ARTIFACT = "model.xml"
# cubic Interpolate runs in float (and slowly); its ConvTranspose runs in int8 and beats per-phase Convs,
# except a to-RGB one: its int8 (de)convolutions pad the output channels to 16, which 3 outputs waste
INT8_LOWERINGS = ("cubic_resize", "narrow_conv_transpose", "short_conv_transpose", "narrow_conv_strided",
                  "activation_into_phases")
# What OpenVINO's ONNX front end leaves in a partially converted model where it has no conversion.
_AUTOMATIC_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+(?:_[a-z]+)*")  # Constant_4769, Constant_4769_compressed
_UNCONVERTED = {"NotSupportedONNXNode", "ONNXFrameworkNode", "FrameworkNode"}


def _ov():
    return require("openvino", "building for OpenVINO", "openvino")


def unsupported_nodes(graph: Graph, target: Target) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node OpenVINO's ONNX front end cannot convert."""
    ov = _ov()
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    with _onnx_file(graph) as path:
        partial = frontend.convert_partially(frontend.load(path))
    producers = {out: (node.name or f"{node.op_type}_{i}", node.op_type)
                 for i, node in enumerate(graph.model.graph.node) for out in node.output}
    missing = []
    for op in partial.get_ordered_ops():
        if op.get_type_name() in _UNCONVERTED:
            name, op_type = producers.get(op.get_friendly_name(), (op.get_friendly_name(), op.get_type_name()))
            missing.append((name, op_type, f"openvino {ov.__version__} has no conversion for it"))
    return missing + _resizes_computed_otherwise(graph)


def _resizes_computed_otherwise(graph: Graph) -> list[tuple[str, str, str]]:
    """Resizes OpenVINO converts but computes otherwise than ONNX defines them: a downscale with antialias=1 (its
    CPU plugin filters differently: 0.06 max-abs off ONNX Runtime and PyTorch on a bilinear x0.5), and a cubic
    one with exclude_outside=1 (it clamps the border taps instead of dropping and renormalizing them: 2-3 levels
    of an 8-bit image off at the borders of a detailed image, which the build's smooth held-out inputs hid)."""
    shapes = graph.concrete_shapes()
    found = []
    for i, node in enumerate(graph.model.graph.node):
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute}
        src, dst = shapes.get(node.input[0]) if node.input else None, shapes.get(node.output[0])
        name = node.name or f"Resize_{i}"
        if "antialias" in attrs and attrs["antialias"].i and src and dst and \
                any(d < s for d, s in zip(dst[2:], src[2:])):
            found.append((name, "Resize", "OpenVINO's antialiased downscaling does not compute ONNX's (its filter "
                          "differs); export with antialias=False, or build for onnxruntime"))
        elif "exclude_outside" in attrs and attrs["exclude_outside"].i and "mode" in attrs and \
                attrs["mode"].s == b"cubic":
            found.append((name, "Resize", "OpenVINO computes a cubic resize with exclude_outside=1 as one with "
                          "exclude_outside=0 (its border pixels 2-3 levels off); export with exclude_outside=0 (as "
                          "PyTorch's bicubic interpolate does), or build for onnxruntime"))
    return found


def compile(graph: Graph, target: Target, precision: str, workdir: Path) -> dict[str, Any]:
    """Convert to IR in workdir (fp16 compresses weights); return files and session settings."""
    ov = _ov()
    source = graph if precision != "int8" else graph.with_model(int8_form(graph.model), [])
    try:
        with _onnx_file(source) as path:
            model = ov.convert_model(path)
    except Exception as exc:  # OpenVINO raises its own exception types per front end
        raise BuildError(f"OpenVINO could not convert {graph.source}: {str(exc).strip().splitlines()[0]}") from None
    _save_reproducibly(ov, model, workdir / ARTIFACT, compress_to_fp16=(precision == "fp16"))
    session = {"entry": ARTIFACT, "precision": precision, "device": target.backend_options.get("device", "CPU"),
               "outputs": [s.name for s in graph.outputs]}
    return {"files": [ARTIFACT, "model.bin"], "session": session, "tools": {"openvino": ov.__version__}}


# OpenVINO's CPU plugin runs a Deconvolution (ConvTranspose) in int8 only where its input's grid is symmetric
# (zero point 0 in int8, 128 in uint8), else in f32: a trained CycleGAN-ResNet's first ConvTranspose reads the
# residual sum, whose calibrated range is lopsided (zero point 118), and ran in f32, 8% of the model's time
SYMMETRIC_INT8_INPUTS = ("ConvTranspose",)


def int8_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ graph as OpenVINO is given it (and the quality-floor search scores it): uint8 activations, a
    layer before a pixel shuffle and an activation keeping its fused float output (no rounding before an
    image's Tanh), weights computed in float where OpenVINO would fold them."""
    return short_conv_transposes_in_float(computed_weights_in_float(fuse_activation_requantization(
        shuffles_after_float_convs(activations_to_uint8(model)))))


def short_conv_transposes_in_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """Feed each ConvTranspose whose output stops short of stride x its input on an axis (or whose size an
    output_shape or auto_pad sets) and that the int8 lowerings left whole (strides (1, 2), output_shape) its
    weights dequantized to float: OpenVINO 2026.4's int8 Deconvolution computes such a layer differently from
    call to call at 2 threads (2166 of 3000 calls of a strides-(1, 2) layer off, by up to 0.98 on a Sigmoid
    output), its f32 one is stable. The weights are the QDQ graph's values, so the numbers stay those of the
    QDQ graph."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = False
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "ConvTranspose" and len(node.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or \
                not short_output(node, inits[dq.input[0]].dims[2:]):
            continue
        values = [numpy_helper.to_array(inits[name]) if name in inits else None for name in dq.input]
        scale, zero = values[1], values[2] if len(values) > 2 and values[2] is not None else 0
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * values[0].ndim
        if np.ndim(scale):
            shape[axis] = -1
        weights = (values[0].astype(np.float32) - np.reshape(zero, shape).astype(np.float32)) * \
            np.reshape(scale, shape).astype(np.float32)
        name = f"{node.name or node.output[0]}_float_weights"
        model.graph.initializer.append(numpy_helper.from_array(weights.astype(np.float32), name))
        node.input[1] = name
        changed = True
    if changed:
        drop_dead_nodes(model)
    return model


def _save_reproducibly(ov, model, xml: Path, compress_to_fp16: bool) -> None:
    """ov.save_model, then the nodes that carry OpenVINO's automatic names (type + a process-wide
    counter, so they depend on what the process built before) renamed after their position: equal
    models give equal bytes, whichever process builds them."""
    staged = xml.with_name(f".{xml.stem}.staged.xml")
    ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
    saved = ov.Core().read_model(str(staged))
    for index, op in enumerate(saved.get_ordered_ops()):
        if _AUTOMATIC_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{index}")
    ov.serialize(saved, str(xml), str(xml.with_suffix(".bin")))
    staged.unlink()
    staged.with_suffix(".bin").unlink()


@contextlib.contextmanager
def _onnx_file(graph: Graph) -> Iterator[str]:
    """The graph as a temporary ONNX file for OpenVINO's front end to read in C++. From a Python stream, a
    Ctrl-C raised in its read callback came back out of the front end as a conversion error, blaming the model
    for the user's stop."""
    with tempfile.TemporaryDirectory(prefix="edgegen-ov-") as directory:
        path = Path(directory) / "source.onnx"
        path.write_bytes(graph.model.SerializeToString())
        yield str(path)
