"""Edge TPU: a compatibility report computed on any host from the emitted .tflite, and the compile
step through Coral's edgetpu_compiler (edgegen.toolchains.edgetpu).

The rules follow Coral's published requirements (coral.ai/docs/edgetpu/models-intro, "Supported
operations"): every tensor int8/uint8 (int32 only for constant biases and shapes), static
shapes, at most the 3 innermost dimensions larger than 1, and the per-operator limits below. The
compiler maps operators in execution order up to the first one it cannot map; that operator and
everything after it run on the CPU (one Edge TPU subgraph).
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
        if sum(d > 1 for d in t.shape[:-3]):
            return f"tensor {t.name!r} {t.shape} has more than 3 dimensions larger than 1"
    limit = SUPPORTED[op.code]
    return limit(op, tensors) if limit else None


def compatibility(data: bytes, origins: list[str]) -> dict[str, Any]:
    """Which operators would map to the Edge TPU and where the first CPU fallback splits the graph.

    origins: the ONNX node each operator was lowered from (same order as the model's operators).
    """
    ops, tensors = read_model(data)
    reasons = [why_not(op, tensors) for op in ops]
    split = next((i for i, why in enumerate(reasons) if why), len(ops))
    by_op: dict[str, dict[str, int]] = {}
    for i, op in enumerate(ops):
        entry = by_op.setdefault(op.code, {"edgetpu": 0, "cpu": 0})
        entry["edgetpu" if i < split else "cpu"] += 1
    node = (lambda i: origins[i] if i < len(origins) else "")
    unmappable = [{"index": i, "op": ops[i].code, "node": node(i), "why": why} for i, why in enumerate(reasons) if why]
    return {
        "rules": RULES_SOURCE, "ops": len(ops), "edgetpu_ops": split, "cpu_ops": len(ops) - split,
        "first_fallback": unmappable[0] if unmappable else None,
        "unmappable": unmappable, "unmappable_by_op": dict(Counter(u["op"] for u in unmappable)),
        "by_op": dict(sorted(by_op.items())),
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
    first = rep["first_fallback"]
    if first is None:
        return f"Edge TPU: all {rep['ops']} ops would map (one Edge TPU subgraph)"
    return (f"Edge TPU: {rep['edgetpu_ops']}/{rep['ops']} ops would map; the graph splits at op {first['index']} "
            f"{first['op']} (node {first['node']!r}): {first['why']}; it and the {rep['cpu_ops'] - 1} ops after it "
            "run on the CPU")


def compile_model(model: Path, out: Path, compat: dict[str, Any]) -> dict[str, Any]:
    """Compile model for the Edge TPU into `out` (+ its log beside it); the compiler's parsed report."""
    work = out.parent / ".edgetpu"
    try:
        compiled, log_file, report = compiler.compile_model(model, work)
    except ToolNotFoundError as exc:
        raise ToolNotFoundError(f"this target's compile step needs {compiler.TOOL}: {exc} The compatibility "
                                f"check on this host says: {summary(compat)}") from None
    if compiled.name != out.name:
        raise BuildError(f"{compiler.TOOL} wrote {compiled.name}, expected {out.name}")
    shutil.move(str(compiled), out)
    shutil.move(str(log_file), out.with_suffix(".log"))
    shutil.rmtree(work, ignore_errors=True)
    return {"version": report.version, "log": out.with_suffix(".log").name, **report.to_json()}
