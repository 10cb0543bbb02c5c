"""A model saved by ONNX Runtime's optimizer (`SessionOptions.optimized_model_filepath`) in standard ONNX.

At its extended level ONNX Runtime fuses a Conv or Gemm with the activation after it into the contrib ops
`com.microsoft.FusedConv` / `FusedGemm`; every other tool (roles, MAC counts, the quantizer, OpenVINO, the
TFLite and FPGA lowerings) knows the standard ops, so those are written back as the Conv or Gemm and the
activation. What cannot be written back (the `com.microsoft.nchwc` layout ops of its highest level, other
contrib ops) is refused, naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .graph_load import default_opset

ORT_DOMAIN = "com.microsoft"
FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
# the activations ONNX Runtime fuses (contrib_ops/cpu/fused_activation.cc), with their parameters' names and
# defaults in the order FusedConv's activation_params gives them
ACTIVATION_PARAMS: dict[str, tuple[tuple[str, float], ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "Silu": (),
    "LeakyRelu": (("alpha", 0.01),), "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "Clip": (("min", float(np.finfo(np.float32).min)), ("max", float(np.finfo(np.float32).max))),
}
# FusedGemm names them activation_alpha, activation_beta
GEMM_PARAMS = ("activation_alpha", "activation_beta")


def unfuse_ort_ops(model: onnx.ModelProto, origin: str) -> int:
    """Write every FusedConv / FusedGemm as its Conv or Gemm and the activation (an Add of FusedConv's Z input
    before it); refuse any other ONNX Runtime contrib op. Returns how many nodes were written back."""
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {v.name for v in graph.input} | \
        {name for node in graph.node for name in [*node.input, *node.output]}
    dtypes = {t.name: t.data_type for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    unfused = 0
    for node in graph.node:
        if node.domain == ORT_DOMAIN and node.op_type in FUSED:
            nodes.extend(_unfused(node, model, taken, dtypes, origin))
            unfused += 1
        else:
            nodes.append(node)
    _refuse_contrib_ops(nodes, origin)
    if unfused:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {n.domain for n in nodes}
        kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return unfused


def _unfused(node: onnx.NodeProto, model: onnx.ModelProto, taken: set[str], dtypes: dict[str, int],
             origin: str) -> list[onnx.NodeProto]:
    """The standard nodes of one fused node: the Conv or Gemm keeps its name and inputs, the activation
    writes its output."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activation = attrs.pop("activation", b"").decode() or None
    if node.op_type == "FusedConv":
        params = list(attrs.pop("activation_params", []))
    else:
        params = [attrs.pop(name) for name in GEMM_PARAMS if name in attrs]
        attrs.pop("activation_gamma", None)
    if activation is not None and activation not in ACTIVATION_PARAMS:
        raise ModelError(f"{origin}: node {node.name!r} ({ORT_DOMAIN}.{node.op_type}) fuses activation "
                         f"{activation!r}, which edgegen cannot write back as a standard op. {RE_EXPORT}")
    inputs = list(node.input[:3])
    while inputs and not inputs[-1]:
        inputs.pop()
    result = node.output[0]
    summand = node.input[3] if node.op_type == "FusedConv" and len(node.input) > 3 else ""
    steps = (["Add"] if summand else []) + ([activation] if activation else [])
    # what each step reads: the Conv or Gemm writes the first, the last step the fused node's output
    outputs = [_fresh(f"{result}/{op.lower()}", taken) for op in [FUSED[node.op_type], *steps[:-1]]][:len(steps)]
    outputs.append(result)
    out = [helper.make_node(FUSED[node.op_type], inputs, [outputs[0]], node.name, **attrs)]
    for i, step in enumerate(steps):
        x, y, name = outputs[i], outputs[i + 1], f"{node.name}/{step}"
        if step == "Add":
            out.append(helper.make_node("Add", [x, summand], [y], name))
        else:
            out.extend(_activation(step, params, x, y, name, model, taken,
                                   dtypes.get(node.input[1], onnx.TensorProto.FLOAT)))
    return out


def _activation(kind: str, params: list[float], x: str, y: str, name: str, model: onnx.ModelProto,
                taken: set[str], dtype: int) -> list[onnx.NodeProto]:
    """The standard node(s) computing ONNX Runtime's fused activation `kind` of x into y."""
    values = {key: params[i] if i < len(params) else default
              for i, (key, default) in enumerate(ACTIVATION_PARAMS[kind])}
    if kind == "Silu":  # x * sigmoid(x)
        gate = _fresh(f"{y}/sigmoid", taken)
        return [helper.make_node("Sigmoid", [x], [gate], f"{name}/Sigmoid"),
                helper.make_node("Mul", [x, gate], [y], name)]
    opset = default_opset(model)
    if kind == "Clip" and opset < 11:  # its bounds were attributes before opset 11
        return [helper.make_node("Clip", [x], [y], name, **values)]
    if kind == "Clip":
        bounds = []
        for key in ("min", "max"):
            bound = _fresh(f"{name}/{key}", taken)
            array = np.array(values[key], helper.tensor_dtype_to_np_dtype(dtype))
            model.graph.initializer.append(numpy_helper.from_array(array, bound))
            bounds.append(bound)
        return [helper.make_node("Clip", [x, *bounds], [y], name)]
    return [helper.make_node(kind, [x], [y], name, **values)]


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`... where taken; recorded as taken."""
    fresh, i = name, 0
    while fresh in taken:
        i += 1
        fresh = f"{name}_{i}"
    taken.add(fresh)
    return fresh


RE_EXPORT = ("Re-export the model from its framework (torch.onnx.export), or save the ONNX Runtime-optimized file "
             "at a level that keeps standard ops: SessionOptions.graph_optimization_level = ORT_DISABLE_ALL or "
             "ORT_ENABLE_BASIC")


def _refuse_contrib_ops(nodes: list[onnx.NodeProto], origin: str) -> None:
    """ONNX Runtime's own ops (com.microsoft, its nchwc layout ops among them) that are not written back."""
    found = [n for n in nodes if n.domain == ORT_DOMAIN or n.domain.startswith(ORT_DOMAIN + ".")]
    if found:
        listed = ", ".join(f"{n.name or n.output[0]!r} ({n.domain}.{n.op_type})" for n in found[:4])
        more = f" and {len(found) - 4} more" if len(found) > 4 else ""
        layout = " (the nchwc ops are its CPU-specific blocked-layout form, saved at ORT_ENABLE_ALL)" \
            if any(n.domain.endswith(".nchwc") for n in found) else ""
        raise ModelError(f"{origin}: node(s) {listed}{more} are ONNX Runtime's own ops{layout}, which only ONNX "
                         f"Runtime runs: the file was saved by ONNX Runtime's graph optimizer. {RE_EXPORT}.")
