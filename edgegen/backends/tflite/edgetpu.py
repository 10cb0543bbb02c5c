"""Edge TPU: a compatibility report computed on any host from the emitted .tflite, and the compile
step through Coral's edgetpu_compiler (edgegen.toolchains.edgetpu).

The rules follow Coral's published requirements (coral.ai/docs/edgetpu/models-intro, "Supported
operations"): every tensor int8/uint8 (int32 only for constant biases and shapes), static
shapes, no dimension outside the 3 innermost larger than 1, and the per-operator limits below. The
compiler maps operators in execution order up to the first one it cannot map; that operator and
everything after it run on the CPU (one Edge TPU subgraph). Where Coral documents only that the compiler
decides (RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR: by input/output size), the report says the op may
not map rather than count it as mapped.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ...errors import BuildError
from ...toolchains import ToolNotFoundError
from ...toolchains import edgetpu as compiler
from .flatbuffer import ModelOp, ModelTensor, read_model

RULES_SOURCE = "Coral Edge TPU supported operations (coral.ai/docs/edgetpu/models-intro), compiler 16"
Limit = Callable[[ModelOp, list[ModelTensor]], "str | None"]


def _no_fused_activation(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    act = getattr(op.options, "fusedActivationFunction", 0)
    return "fused activation functions are not supported" if act else None


def _same_dilation(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    o = op.options
    return "dilation must be the same in x and y" if o is not None and o.dilationWFactor != o.dilationHFactor else None


def _not_along_batch(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    """MEAN, REDUCE_*, PAD, TRANSPOSE: nothing may happen along the batch dimension."""
    if len(op.inputs) < 2 or tensors[op.inputs[1]].data is None:
        return f"{op.code} needs constant axes/paddings/permutation"
    data = tensors[op.inputs[1]].data
    if op.code == "PAD":
        along_batch = bool(data.reshape(-1, 2)[0].any())
    elif op.code == "TRANSPOSE":
        along_batch = int(data.reshape(-1)[0]) != 0
    else:
        along_batch = 0 in {int(a) % max(len(tensors[op.inputs[0]].shape), 1) for a in data.reshape(-1)}
    return f"{op.code} along the batch dimension is not supported" if along_batch else None


def _one_dimensional_output(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    shape = tensors[op.outputs[0]].shape
    return None if sum(d > 1 for d in shape) <= 1 else "the output must be one-dimensional"


def _concat_constants(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    why = _no_fused_activation(op, tensors)
    if why:
        return why
    if any(tensors[i].constant for i in op.inputs) and len(op.inputs) != 2:
        return "a constant input is allowed only as one of exactly two inputs (zero padding)"
    return None


def _softmax(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    shape = tensors[op.inputs[0]].shape
    size = 1
    for d in shape:
        size *= d
    return None if sum(d > 1 for d in shape) <= 1 and size <= 16000 else "only 1-D inputs of <= 16000 elements"


# operator -> its limit (None: no limit beyond the general rules)
SUPPORTED: dict[str, Limit | None] = {
    "ADD": None, "AVERAGE_POOL_2D": _no_fused_activation, "CONCATENATION": _concat_constants,
    "CONV_2D": _same_dilation, "DEPTHWISE_CONV_2D": _same_dilation, "EXPAND_DIMS": None,
    "FULLY_CONNECTED": _one_dimensional_output, "L2_NORMALIZATION": None, "LOGISTIC": None, "LSTM": None,
    "MAXIMUM": None, "MAX_POOL_2D": _no_fused_activation, "MEAN": _not_along_batch, "MINIMUM": None, "MUL": None,
    "PACK": None, "PAD": _not_along_batch, "PRELU": None, "QUANTIZE": None, "REDUCE_MAX": _not_along_batch,
    "REDUCE_MIN": _not_along_batch, "RELU": None, "RELU6": None, "RELU_N1_TO_1": None, "RESHAPE": None,
    "RESIZE_BILINEAR": None, "RESIZE_NEAREST_NEIGHBOR": None, "RSQRT": None, "SLICE": None, "SOFTMAX": _softmax,
    "SPACE_TO_DEPTH": None, "SPLIT": None, "SQUEEZE": None, "STRIDED_SLICE": None, "SUB": None, "SUM": None,
    "SQUARED_DIFFERENCE": None, "TANH": None, "TRANSPOSE": _not_along_batch, "TRANSPOSE_CONV": None,
}
_INT_TYPES = ("int8", "uint8")
# operators Coral's table says the compiler may leave on the CPU at its own discretion ("Depending on input/output
# size, this operation may not be mapped to the Edge TPU to avoid loss in precision"): no rule here can say
_COMPILER_DECIDES = "the compiler decides by input/output size (and op version) whether it maps, to avoid loss " \
    "in precision"
MAY_NOT_MAP = {"RESIZE_BILINEAR": _COMPILER_DECIDES, "RESIZE_NEAREST_NEIGHBOR": _COMPILER_DECIDES}


def why_not(op: ModelOp, tensors: list[ModelTensor]) -> str | None:
    """Why the Edge TPU compiler would not map this operator, or None."""
    if op.code not in SUPPORTED:
        return f"{op.code} is not in the Edge TPU operator set"
    for index in [*op.inputs, *op.outputs]:
        if index < 0:
            continue
        t = tensors[index]
        if t.constant and t.dtype in ("int32", *_INT_TYPES):
            continue
        if t.dtype not in _INT_TYPES:
            return f"tensor {t.name!r} is {t.dtype}; the Edge TPU runs int8/uint8 tensors only"
        outer = [d for d in t.shape[:-3] if d > 1]
        if outer:
            what = "the batch" if len(t.shape) == 4 and t.shape[0] > 1 else "a dimension"
            return (f"tensor {t.name!r} {t.shape}: {what} ({outer[0]}) is outside the 3 innermost dimensions and "
                    "larger than 1 (the Edge TPU allows only the 3 innermost to be); build with batch 1")
    limit = SUPPORTED[op.code]
    return limit(op, tensors) if limit else None


def compatibility(data: bytes, origins: list[str]) -> dict[str, Any]:
    """Which operators would map to the Edge TPU and where the first CPU fallback splits the graph.

    origins: the ONNX node each operator was lowered from (same order as the model's operators).
    Operators are counted "edgetpu" up to the first one that may not map (MAY_NOT_MAP), "uncertain" from
    there to the first that cannot, "cpu" from that one on.
    """
    ops, tensors = read_model(data)
    reasons = [why_not(op, tensors) for op in ops]
    split = next((i for i, why in enumerate(reasons) if why), len(ops))
    node = (lambda i: origins[i] if i < len(origins) else "")
    maybe = [{"index": i, "op": ops[i].code, "node": node(i), "why": MAY_NOT_MAP[ops[i].code]}
             for i in range(split) if ops[i].code in MAY_NOT_MAP]
    certain = maybe[0]["index"] if maybe else split
    by_op: dict[str, dict[str, int]] = {}
    for i, op in enumerate(ops):
        entry = by_op.setdefault(op.code, {"edgetpu": 0, "uncertain": 0, "cpu": 0})
        entry["edgetpu" if i < certain else "uncertain" if i < split else "cpu"] += 1
    unmappable = [{"index": i, "op": ops[i].code, "node": node(i), "why": why} for i, why in enumerate(reasons) if why]
    return {
        "rules": RULES_SOURCE, "ops": len(ops), "edgetpu_ops": certain, "uncertain_ops": split - certain,
        "cpu_ops": len(ops) - split, "first_fallback": unmappable[0] if unmappable else None,
        "may_not_map": maybe, "unmappable": unmappable,
        "unmappable_by_op": dict(Counter(u["op"] for u in unmappable)), "by_op": dict(sorted(by_op.items())),
    }


def schedule(ops: list[ModelOp], tensors: list[ModelTensor]) -> list[int]:
    """A topological order of the operators that runs every operator the Edge TPU can map before
    the first one it cannot (the compiler maps only up to that one); otherwise the given order."""
    producer = {t: i for i, op in enumerate(ops) for t in op.outputs}
    waiting = [{producer[t] for t in op.inputs if t in producer} for op in ops]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            users.setdefault(d, []).append(i)
    mappable = [why_not(op, tensors) is None for op in ops]
    ready = sorted(i for i, deps in enumerate(waiting) if not deps)
    order: list[int] = []
    while ready:
        pick = next((i for i in ready if mappable[i]), ready[0])
        ready.remove(pick)
        order.append(pick)
        for user in users.get(pick, []):
            waiting[user].discard(pick)
            if not waiting[user]:
                ready.append(user)
        ready.sort()
    return order


def summary(rep: dict[str, Any]) -> str:
    """One line of the compatibility report."""
    first, maybe = rep["first_fallback"], rep.get("may_not_map") or []
    if first is None and not maybe:
        return f"Edge TPU: all {rep['ops']} ops would map (one Edge TPU subgraph)"
    line = f"Edge TPU: {rep['edgetpu_ops']}/{rep['ops']} ops would map"
    if maybe:
        m = maybe[0]
        kinds = " / ".join(sorted({x["op"] for x in maybe}))
        line += (f" for certain; {rep['uncertain_ops']} more only if the compiler maps {len(maybe)} {kinds} op(s) "
                 f"(first: op {m['index']}, node {m['node']!r}), which may not map: {m['why']}")
    if first is None:
        return line
    return (f"{line}; the graph splits at op {first['index']} {first['op']} (node {first['node']!r}): {first['why']}; "
            f"it and the {rep['cpu_ops'] - 1} ops after it run on the CPU")


def compiler_summary(compiled: dict[str, Any], predicted: dict[str, Any]) -> str | None:
    """One line of what edgetpu_compiler reported (None where its counts are unknown), with edgegen's
    prediction beside it where the two disagree."""
    if compiled.get("edgetpu_ops") is None or compiled.get("total_ops") is None:
        return None
    total, tpu, cpu = compiled["total_ops"], compiled["edgetpu_ops"], compiled.get("cpu_ops") or 0
    subgraphs = compiled.get("subgraphs")
    graphs = f"{subgraphs} Edge TPU subgraph{'s' * (subgraphs != 1)}" if subgraphs is not None else "subgraphs unknown"
    tool = f"{compiler.TOOL} {compiled.get('version') or '(version unknown)'}"
    line = (f"Edge TPU ({tool}): all {total} ops mapped ({graphs})" if cpu == 0 and tpu == total else
            f"Edge TPU ({tool}): {tpu}/{total} ops run on the Edge TPU, {cpu} on the CPU ({graphs})")
    agree = (predicted["ops"], predicted["edgetpu_ops"], predicted.get("uncertain_ops", 0)) == (total, tpu, 0)
    return line if agree else f"{line}; edgegen's rules predicted: {summary(predicted).removeprefix('Edge TPU: ')}"


def compile_model(model: Path, out: Path, compat: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Compile model for the Edge TPU into `out` (+ its log beside it, where the compiler wrote one); the
    compiler's parsed report, paths relative to the bundle, "log" (None without one) and "unknown" (the
    summary fields the compiler's output did not give). source: the user's model, which messages name."""
    work = out.parent / ".edgetpu"
    label = f"the int8 {model.name} built from {source}" if source else model.name
    try:
        compiled, log_file, report, console = compiler.compile_model(model, work, label=label)
    except (ToolNotFoundError, compiler.CompilerNotRunnableError) as exc:  # the README: both end the same way
        raise type(exc)(f"this target's compile step needs {compiler.TOOL}: {exc} The compatibility check on this "
                        f"host says: {summary(compat)}") from None
    if compiled.name != out.name:
        raise BuildError(f"{compiler.TOOL} wrote {compiled.name}, expected {out.name}")
    shutil.move(str(compiled), out)
    log = None
    if log_file is not None:
        log = out.with_suffix(".log").name
        shutil.move(str(log_file), out.with_suffix(".log"))
    shutil.rmtree(work, ignore_errors=True)
    report.input_model, report.output_model = model.name, out.name  # the bundle's names, not the build's temp dir
    unknown = report.unknown()
    tail = {"console_tail": " | ".join(console.splitlines()[-3:])} if unknown else {}
    return {**report.to_json(), "log": log, "unknown": unknown, **tail}
