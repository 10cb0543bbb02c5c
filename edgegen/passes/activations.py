"""Run a model over calibration samples and hand back intermediate tensors (ONNX Runtime)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import BuildError
from .calibration import Calibration

CHUNK = 8  # samples per run when the batch axis is dynamic


def capture(model: onnx.ModelProto, names: list[str], calibration: Calibration, batch: int | None,
            each: Callable[[int, dict[str, np.ndarray]], None]) -> None:
    """Run `model` over the calibration samples in chunks; call each(first sample index, {name: array}).

    batch: the model's fixed batch size (the last chunk is padded by repeating a sample, then trimmed),
    or None when its batch axis is dynamic. Only the nodes the named tensors depend on are run.
    """
    import onnxruntime as ort

    if not names:
        return
    probe = _truncated(model, names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads would starve numpy
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BuildError(f"ONNX Runtime cannot run the model to capture activations: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    step = batch or CHUNK
    for start in range(0, calibration.count, step):
        feeds = {k: v[start:start + step] for k, v in calibration.feeds.items()}
        count = len(next(iter(feeds.values())))
        if batch and count < batch:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], batch - count, axis=0)]) for k, v in feeds.items()}
        each(start, {name: value[:count] for name, value in zip(names, session.run(names, feeds))})


def _truncated(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` with just the nodes `names` depend on, and `names` as its outputs."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    graph = probe.graph
    declared = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    needed, kept = set(names), []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.output[:]
    graph.output.extend(declared.get(n) or helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return probe
