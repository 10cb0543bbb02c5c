"""Build half of the ONNX Runtime backend: an ONNX artifact optimized at ONNX Runtime's portable level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .. import require
from ...graph import Graph
from ...passes.hardswish_gate import hardswish_as_integer_gate
from ...passes.narrow_conv import narrow_convs_as_col2im
from ...passes.qdq import activations_to_uint8, pads_on_quantized
from ...passes.shuffle_nhwc import moves_channels_last
from ...targets import Target

ARTIFACT = "model.onnx"
# its CPU provider runs ConvTranspose and cubic Resize in float only; as Conv + DepthToSpace they run in int8,
# with an activation after them fused into the phase convolutions; pixel shuffles in DCR mode (the one it
# runs channels-last on integers); a to-RGB layer (3 outputs, transposed or not) with 4x the outputs
INT8_LOWERINGS = ("cubic_resize", "narrow_conv_transpose", "conv_transpose", "shuffle_dcr", "narrow_conv_strided",
                  "activation_into_phases")


def _ort():
    return require("onnxruntime", "building for ONNX Runtime", "ort")


def unsupported_nodes(graph: Graph, target: Target) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node ONNX Runtime has no CPU kernel for (execution
    providers fall back to CPU kernels, so this is the set that cannot run anywhere)."""
    ort = _ort()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in state.get_all_opkernel_def():
        kernels.setdefault((k.domain or "", k.op_name), []).append(tuple(k.version_range))
    opsets = {o.domain or "": o.version for o in graph.model.opset_import}
    missing = []
    for i, node in enumerate(graph.model.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        ranges = kernels.get((domain, node.op_type))
        name = node.name or f"{node.op_type}_{i}"
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:
            schema = None
        if schema is not None and (schema.has_function or schema.has_context_dependent_function
                                   or node.op_type == "Constant"):
            continue  # ONNX Runtime expands function ops (HardSwish, Mish, ...) and folds Constant
        if not ranges:
            missing.append((name, node.op_type, f"onnxruntime {ort.__version__} has no kernel for it"))
            continue
        if schema is None:
            continue
        since = schema.since_version
        if not any(lo <= since <= hi for lo, hi in ranges):
            missing.append((name, node.op_type, f"no kernel for opset version {since}"))
    return missing


def compile(graph: Graph, target: Target, precision: str, workdir: Path) -> dict[str, Any]:
    """Write the artifact into workdir; return its files and the session settings for the manifest."""
    ort = _ort()
    if precision == "int8":
        onnx.save(int8_form(graph.model), str(workdir / ARTIFACT))
    else:
        model = graph.model
        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                             node_block_list=past_float16(model))
        _optimize_offline(ort, model, workdir)
    providers = target.backend_options.get("providers", ["CPUExecutionProvider"])
    session = {"entry": ARTIFACT, "precision": precision, "providers": providers}
    if "required_providers" in target.backend_options:
        session["required_providers"] = target.backend_options["required_providers"]
    return {"files": [ARTIFACT], "session": session,
            "tools": {"onnx": onnx.__version__, "onnxruntime": ort.__version__}}


def past_float16(model: onnx.ModelProto) -> list[str]:
    """The nodes that take a float constant past float16's range: kept float32 (the converter would clamp the
    constant to 65504, changing what the node computes)."""
    limit = float(np.finfo(np.float16).max)
    large = {t.name for t in model.graph.initializer
             if t.data_type == onnx.TensorProto.FLOAT and np.abs(numpy_helper.to_array(t)).max(initial=0) > limit}
    return [node.name for node in model.graph.node if node.name and large.intersection(node.input)]


def int8_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ graph as the artifact holds it (and the quality-floor search scores it). QDQ stays as it is
    (ONNX Runtime fuses it at load time on the device), with uint8 activations; pads, DepthToSpace shuffles
    and nearest upsampling on the integer tensors, the last two channels-last; a large-kernel convolution
    with few outputs (an image's last layer) as a 1x1 convolution and Col2Im, which sums its taps in float
    (no rounding of its output before the image's activation: above the QDQ graph's quality). Then
    HardSwish as a quantized Add and Mul (its gate rounded to 8 bits: the one step below it)."""
    model = pads_on_quantized(activations_to_uint8(model))
    model = narrow_convs_as_col2im(moves_channels_last(model))
    return hardswish_as_integer_gate(model)


def _optimize_offline(ort, model: onnx.ModelProto, workdir: Path) -> None:
    """Save the model optimized at ONNX Runtime's portable (basic) level, which any device's ORT loads."""
    staged = workdir / ".staged.onnx"
    onnx.save(model, str(staged))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(workdir / ARTIFACT)
    options.log_severity_level = 3
    ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    staged.unlink()
