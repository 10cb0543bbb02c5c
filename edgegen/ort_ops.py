"""A model saved by ONNX Runtime's optimizer (`SessionOptions.optimized_model_filepath`) in standard ONNX.

At its extended level ONNX Runtime fuses a Conv or Gemm with the activation after it into the contrib ops
`com.microsoft.FusedConv` / `FusedGemm`, and SiLU (`x * sigmoid(x)`) or GELU into `QuickGelu`, `Gelu`,
`BiasGelu`, `FastGelu`; every other tool (roles, MAC counts, the quantizer, OpenVINO, the TFLite and FPGA
lowerings) knows the standard ops, so those are written back as the standard ops they fuse. Other contrib ops
(SkipLayerNormalization, Attention, ...) stay: ONNX Runtime runs them, and each target's support check refuses
them where its backend cannot. Only the `com.microsoft.nchwc` layout ops of its highest level are refused at load:
their weights are blocked to the vector width of the CPU that saved the file, which no backend runs elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .graph_load import default_opset

ORT_DOMAIN = "com.microsoft"
FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
GELUS = ("QuickGelu", "Gelu", "BiasGelu", "FastGelu")
# ONNX Runtime's CPU provider blocks channels by its MLAS vector width (8 with AVX2, 16 with AVX-512) and saves the
# weights so blocked: a file with these ops runs only on a CPU like the one that saved it, in ONNX Runtime alone
LAYOUT_DOMAINS = (f"{ORT_DOMAIN}.nchwc",)
# the activations ONNX Runtime fuses (contrib_ops/cpu/fused_activation.cc), with their parameters' names and
# defaults in the order FusedConv's activation_params gives them
ACTIVATION_PARAMS: dict[str, tuple[tuple[str, float], ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "Silu": (),
    "LeakyRelu": (("alpha", 0.01),), "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "Clip": (("min", float(np.finfo(np.float32).min)), ("max", float(np.finfo(np.float32).max))),
}
# FusedGemm names them activation_alpha, activation_beta
GEMM_PARAMS = ("activation_alpha", "activation_beta")
QUICK_GELU_ALPHA = 1.702  # QuickGelu's default: x * sigmoid(1.702 x)
TANH_GELU = (math.sqrt(2 / math.pi), 0.044715)  # FastGelu: 0.5 x (1 + tanh(a (x + b x^3)))
ERF_OPSET = 9  # Gelu's standard form needs Erf


class _Writer:
    """Emits standard nodes for one contrib node: tensors and nodes named fresh after it, constants as
    initializers of the tensor's element type."""

    def __init__(self, model: onnx.ModelProto, taken: set[str], name: str, dtype: int):
        self.model, self.taken, self.name, self.dtype = model, taken, name, dtype
        self.nodes: list[onnx.NodeProto] = []

    def const(self, value: float) -> str:
        """A scalar initializer holding value."""
        name = _fresh(f"{self.name}/const", self.taken)
        array = np.array(value, helper.tensor_dtype_to_np_dtype(self.dtype))
        self.model.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        """The output of a new node `op_type(inputs)`: `out` (the node then named after the contrib node), or a
        fresh tensor."""
        node_name = self.name if out is not None else _fresh(f"{self.name}/{op_type}", self.taken)
        out = out if out is not None else _fresh(f"{self.name}/{op_type.lower()}", self.taken)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], node_name, **attrs))
        return out


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def unfuse_ort_ops(model: onnx.ModelProto, origin: str) -> Counter[str]:
    """Write every FusedConv / FusedGemm as its Conv or Gemm and the activation (an Add of FusedConv's Z input
    before it), and every QuickGelu / Gelu / BiasGelu / FastGelu as the standard ops it computes; refuse the
    hardware-specific layout ops. Returns how many nodes of each contrib op were written back."""
    _refuse_layout_ops(model.graph.node, origin)
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {v.name for v in graph.input} | \
        {name for node in graph.node for name in [node.name, *node.input, *node.output]}
    types = {t.name: t.data_type for t in graph.initializer} | \
        {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    producers = {o: n for n in graph.node for o in n.output}
    nodes: list[onnx.NodeProto] = []
    written: Counter[str] = Counter()
    for node in graph.node:
        if not _writes_back(node, model):
            nodes.append(node)
            continue
        if node.op_type in FUSED:
            nodes.extend(_unfused(node, model, taken, types.get(node.input[1], onnx.TensorProto.FLOAT), origin))
        else:
            writer = _Writer(model, taken, node.name or node.output[0], _elem_type(node.input[0], types, producers))
            _gelu(node, writer)
            nodes.extend(writer.nodes)
        written[node.op_type] += 1
    if written:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {n.domain for n in nodes}
        kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return written


def _writes_back(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """Whether node is a contrib op written back: Gelu and BiasGelu only where the opset has Erf."""
    if node.domain != ORT_DOMAIN or node.op_type not in (*FUSED, *GELUS):
        return False
    return node.op_type not in ("Gelu", "BiasGelu") or default_opset(model) >= ERF_OPSET


def _elem_type(name: str, types: dict[str, int], producers: dict[str, onnx.NodeProto]) -> int:
    """A float tensor's element type: as declared, else that of the Cast or DequantizeLinear that wrote it or of
    its writer's data input, walking back (ONNX Runtime saves no value_info); float32 where none says, or where
    the walk ends on a tensor that is not float (a Where's condition, a ConstantOfShape's shape)."""
    seen = set()
    while name not in types and name in producers and name not in seen:
        seen.add(name)
        node = producers[name]
        if node.op_type == "Cast":
            found = next(a.i for a in node.attribute if a.name == "to")
            return found if found in FLOAT_TYPES else onnx.TensorProto.FLOAT
        data = 1 if node.op_type in ("DequantizeLinear", "Where") else 0
        name = node.input[data] if len(node.input) > data else ""
    found = types.get(name)
    return found if found in FLOAT_TYPES else onnx.TensorProto.FLOAT


def _gelu(node: onnx.NodeProto, w: _Writer) -> None:
    """ONNX Runtime's GELU family in standard ops: QuickGelu x * sigmoid(alpha x); Gelu the exact (Erf) form as
    PyTorch exports it; FastGelu the tanh approximation as ONNX Runtime computes it; BiasGelu and FastGelu with a
    bias add it first."""
    x, y = node.input[0], node.output[0]
    if node.op_type == "QuickGelu":
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), QUICK_GELU_ALPHA)
        w.op("Mul", x, w.op("Sigmoid", x if alpha == 1 else w.op("Mul", x, w.const(alpha))), out=y)
        return
    if len(node.input) > 1 and node.input[1]:
        x = w.op("Add", x, node.input[1])
    if node.op_type == "FastGelu":  # x (a + a b x^2), one Mul fewer than a (x + b x^3)
        a, b = TANH_GELU
        t = w.op("Tanh", w.op("Mul", x, w.op("Add", w.op("Mul", w.op("Mul", x, x), w.const(a * b)), w.const(a))))
    else:
        t = w.op("Erf", w.op("Div", x, w.const(math.sqrt(2))))
    w.op("Mul", w.op("Mul", x, w.op("Add", t, w.const(1.0))), w.const(0.5), out=y)


def _unfused(node: onnx.NodeProto, model: onnx.ModelProto, taken: set[str], dtype: int,
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
                         f"{activation!r}, which edgegen cannot write back as a standard op. "
                         f"{_re_export('ORT_DISABLE_ALL or ORT_ENABLE_BASIC')}")
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
            writer = _Writer(model, taken, name, dtype)
            _activation(step, params, x, y, writer)
            out.extend(writer.nodes)
    return out


def _activation(kind: str, params: list[float], x: str, y: str, w: _Writer) -> None:
    """The standard node(s) computing ONNX Runtime's fused activation `kind` of x into y."""
    values = {key: params[i] if i < len(params) else default
              for i, (key, default) in enumerate(ACTIVATION_PARAMS[kind])}
    if kind == "Silu":  # x * sigmoid(x)
        w.op("Mul", x, w.op("Sigmoid", x), out=y)
    elif kind == "Clip" and default_opset(w.model) < 11:  # its bounds were attributes before opset 11
        w.op("Clip", x, out=y, **values)
    elif kind == "Clip":
        w.op("Clip", x, w.const(values["min"]), w.const(values["max"]), out=y)
    else:
        w.op(kind, x, out=y, **values)


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`... where taken; recorded as taken."""
    fresh, i = name, 0
    while fresh in taken:
        i += 1
        fresh = f"{name}_{i}"
    taken.add(fresh)
    return fresh


def _re_export(levels: str) -> str:
    """What to do instead: re-export, or save the ONNX Runtime-optimized file at one of levels."""
    return ("Re-export the model from its framework (torch.onnx.export), or save the ONNX Runtime-optimized file at a "
            f"level that keeps it portable: SessionOptions.graph_optimization_level = {levels}")


def _refuse_layout_ops(nodes: Iterable[onnx.NodeProto], origin: str) -> None:
    """ONNX Runtime's CPU layout ops (com.microsoft.nchwc): blocked to the saving CPU's vector width."""
    found = [n for n in nodes if n.domain in LAYOUT_DOMAINS]
    if found:
        listed = ", ".join(f"{n.name or n.output[0]!r} ({n.domain}.{n.op_type})" for n in found[:4])
        more = f" and {len(found) - 4} more" if len(found) > 4 else ""
        raise ModelError(f"{origin}: node(s) {listed}{more} are ONNX Runtime's nchwc layout ops, saved at "
                         "ORT_ENABLE_ALL: their weights are blocked to the vector width of the CPU that saved the "
                         "file (8 channels with AVX2, 16 with AVX-512), so no backend runs it on another device, "
                         f"ONNX Runtime's included. {_re_export('ORT_ENABLE_EXTENDED or below')}.")
