"""Run a model over calibration samples and hand back intermediate tensors (ONNX Runtime)."""

from __future__ import annotations

from typing import Callable, Container, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import BuildError
from .calibration import Calibration

CHUNK = 8  # samples per run when the batch axis is dynamic
Each = Callable[[int, dict[str, np.ndarray]], None]


def capture(model: onnx.ModelProto, names: list[str], calibration: Calibration, batch: int | None,
            each: Each) -> None:
    """Run `model` over the calibration samples in chunks; call each(first sample index, {name: array}).

    batch: the model's fixed batch size (the last chunk is padded by repeating a sample, then trimmed),
    or None when its batch axis is dynamic. Only the nodes the named tensors depend on are run, from the
    tensors the calibration holds: graph inputs, or intermediate tensors captured before (see `Replay`).
    """
    if not names:
        return
    known = calibration.feeds
    wanted = [n for n in dict.fromkeys(names) if n not in known]
    session = _session(_subgraph(model, wanted, known)) if wanted else None
    inputs = [i.name for i in session.get_inputs()] if session else []
    step = batch or CHUNK
    for start in range(0, calibration.count, step):
        chunk = {k: v[start:start + step] for k, v in known.items()}
        count = len(next(iter(chunk.values())))
        found = {n: chunk[n] for n in names if n in chunk}
        if session:
            feeds = {k: chunk[k] for k in inputs}
            if batch and count < batch:
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], batch - count, axis=0)]) for k, v in feeds.items()}
            found.update((n, v[:count]) for n, v in zip(wanted, session.run(wanted, feeds)))
        each(start, found)


class Replay:
    """A model's tensors over calibration samples, computed step by step: each step runs only the nodes
    between the tensors earlier steps kept and the ones it asks for, and keeps what later steps will read
    (a few frontier tensors, not every sample's activations). Between steps the caller may change the
    weights of nodes only where no kept tensor depends on them."""

    def __init__(self, calibration: Calibration, batch: int | None):
        self.known, self.source, self.batch = dict(calibration.feeds), calibration.source, batch

    def run(self, model: onnx.ModelProto, names: list[str], later: list[str], each: Each) -> None:
        """capture(names) from the known tensors; then keep just the tensors that computing `later` reads."""
        nodes = model.graph.node
        # shape arithmetic has no batch axis to split into chunks and join again: later steps recompute it
        shapes = _shape_only(model)
        produced = {o for i in _needed(model, names, self.known) for o in nodes[i].output} - shapes
        future = _needed(model, later, set(self.known) | produced)
        reads = {x for i in future for x in nodes[i].input} | set(later)
        kept = sorted(reads & (produced | set(names)) - set(self.known) - shapes)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in kept}

        def collect(start: int, tensors: dict[str, np.ndarray]) -> None:
            for n in kept:
                parts[n].append(tensors[n])
            each(start, {n: tensors[n] for n in names})

        capture(model, list(dict.fromkeys(names + kept)), Calibration(self.known, self.source), self.batch, collect)
        self.known = {n: v for n, v in self.known.items() if n in reads}
        self.known.update((n, np.concatenate(p)) for n, p in parts.items())


def _shape_only(model: onnx.ModelProto) -> set[str]:
    """Tensors whose values depend on no graph input's values: shapes (Shape, Size) and what is computed
    from them and constants alone."""
    graph = model.graph
    valued = {i.name for i in graph.input}
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type not in ("Shape", "Size") and valued.intersection(node.input):
            valued.update(node.output)
    return {o for node in graph.node for o in node.output} - valued


def _needed(model: onnx.ModelProto, names: Iterable[str], known: Container[str]) -> list[int]:
    """Indices of the nodes that computing `names` runs when the `known` tensors are given, in graph order."""
    missing, kept = set(names) - set(known), []
    for i in range(len(model.graph.node) - 1, -1, -1):
        node = model.graph.node[i]
        if missing.intersection(node.output):
            kept.append(i)
            missing.update(x for x in node.input if x and x not in known)
    return kept[::-1]


def _subgraph(model: onnx.ModelProto, names: list[str], known: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model computing `names` from the `known` tensors it reads, with just the nodes and weights that needs."""
    graph = model.graph
    nodes = [graph.node[i] for i in _needed(model, names, known)]
    reads = {x for node in nodes for x in node.input}
    declared = {v.name: v for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    inputs = [declared.get(k) or helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                [None] * v.ndim)
              for k, v in known.items() if k in reads]
    outputs = [declared.get(n) or helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    probe = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    probe.graph.name = graph.name
    probe.graph.node.extend(nodes)
    probe.graph.input.extend(inputs)
    probe.graph.output.extend(outputs)
    probe.graph.initializer.extend(t for t in graph.initializer if t.name in reads)
    return probe


def _session(probe: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads would starve numpy
    try:
        return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BuildError(f"ONNX Runtime cannot run the model to capture activations: "
                         f"{str(exc).strip().splitlines()[0]}") from None
