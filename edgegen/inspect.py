"""`edgegen inspect` and `edgegen targets`: what a model is, and where it can run."""

from __future__ import annotations

from typing import Any

from . import backends, targets
from .errors import BackendUnavailableError
from .graph import Graph
from .inputs import cost_batch
from .io_forms import describe as describe_form

EDGETPU_CAVEAT = (" (every layer int8, calibrated on 4 synthetic inputs; a build that keeps a layer float to meet "
                  "its quality floor splits the graph there, and its edgetpu_compiler has the last word)")


def target_rows() -> list[dict[str, Any]]:
    """Every shipped target with whether it runs on this host, and at which of its precisions it does not
    where it runs at its own (OpenVINO's bf16 needs AVX-512-BF16 or AMX)."""
    rows = []
    for target in targets.load_all():
        ok, why = targets.runs_here(target)
        others = {p: targets.runs_here(target, p) for p in target.precisions if ok and p != target.precision}
        rows.append({"name": target.name, "backend": target.backend, "device": target.device,
                     "precisions": target.precisions, "runs_here": ok, "why": why,
                     "precisions_not_here": {p: reason for p, (runs, reason) in others.items() if not runs}})
    return rows


def inspect_model(model: str, **graph_options: Any) -> dict[str, Any]:
    """Inputs/outputs with roles, op inventory, costs per node and op support per target."""
    graph = Graph.load(model, **graph_options)
    costs = graph.node_costs()
    problem = _runs_at_its_shapes(graph, sum(c.activation_bytes for c in costs))
    support = {}
    for target in targets.load_all():
        try:
            missing = backends.compiler_module(target.backend).unsupported_nodes(graph, target)
        except BackendUnavailableError as exc:
            support[target.name] = {"checked": False, "why": str(exc)}
            continue
        except MemoryError:  # a check that computes per-pixel tables (a resize's) at huge shapes
            support[target.name] = {"checked": False, "why": "not checked: its check at these input shapes takes "
                                                             "more memory than this host has; inspect at a smaller "
                                                             "--input-shape"}
            continue
        support[target.name] = {"checked": True, "supported": not missing,
                                "unsupported": [{"node": n, "op": op, "why": why} for n, op, why in missing]}
        if not missing and target.backend_options.get("delegate") == "edgetpu" and not problem:
            support[target.name]["edgetpu"] = _edgetpu(graph, target, sum(c.activation_bytes for c in costs))
    return {
        "model": str(graph.source),
        "opset": graph.opset,
        "cleanup": graph.notes,
        "inputs": [s.to_json() for s in graph.inputs],
        "outputs": [s.to_json() for s in graph.outputs],
        "ops": dict(sorted(graph.op_inventory().items(), key=lambda kv: (-kv[1], kv[0]))),
        "batch": cost_batch(graph.inputs),  # the batch the costs are for
        "macs": sum(c.macs for c in costs),
        "param_bytes": sum(c.param_bytes for c in costs),
        "activation_bytes": sum(c.activation_bytes for c in costs),
        "nodes": [vars(c) for c in costs],
        "targets": support,
        **({"shape_problem": problem} if problem else {}),
    }


def _edgetpu(graph: Graph, target: targets.Target, activation_bytes: int) -> str:
    """The Edge TPU compatibility summary of the model quantized with every layer in int8 (see edgetpu_preview);
    not checked where calibrating it would take over half of this host's available memory (an upscaler at
    2048x2048: about 16 GB), or where quantizing it fails (the runtime's own error: inspect still reports)."""
    from .backends.tflite import edgetpu
    from .backends.tflite.compile import EDGETPU_PREVIEW_SAMPLES, edgetpu_preview
    from .host_memory import over_share

    if over_share(2 * EDGETPU_PREVIEW_SAMPLES * activation_bytes):  # the activations, and their calibration ranges
        return ("Edge TPU mapping not checked: quantizing the model for the check at these input shapes would take "
                "over half of this host's available memory; inspect at a smaller --input-shape, or build for "
                f"{target.name}")
    try:
        return edgetpu.summary(edgetpu_preview(graph, target)) + EDGETPU_CAVEAT
    except Exception as exc:  # a summary line of inspect's, not its verdict: say why and go on
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"Edge TPU mapping not checked: quantizing the model for the check failed: {why}"


def _runs_at_its_shapes(graph: Graph, activation_bytes: int) -> str | None:
    """Why the model does not run at its input shapes, from one run on zeros (None when it does): shape
    inference can follow a Reshape or Concat that fails to run, and leaves what it cannot follow at 0. Not run
    where its inputs and activations would take over half of this host's available memory (an extra zero in
    --input-shape took 24 GB, or ended in a MemoryError), and said so."""
    import numpy as np

    from .host_memory import over_share
    from .source import SourceRunError, SourceSession

    given = ", ".join(f"{s.name} {'x'.join(map(str, s.default_shape))}" for s in graph.inputs)
    needed = activation_bytes + sum(int(np.prod(s.default_shape)) * np.dtype(s.dtype).itemsize for s in graph.inputs)
    available = over_share(needed)
    if available:
        return (f"the model was not run at input shapes {given} to check them: its inputs and activations would "
                f"take about {needed / 1e9:,.1f} GB, over half of the {available / 1e9:.1f} GB this host has "
                "available; the costs below are computed from the shapes alone")
    feeds = {s.name: np.zeros(s.default_shape, s.dtype) for s in graph.inputs}
    try:
        SourceSession(graph.model).run(feeds)
    except SourceRunError as exc:
        return (f"the model does not run at input shapes {given} ({exc.failure}); the costs leave what cannot run at "
                "0. Choose with --input-shape a size the model runs at")
    return None


def render(report: dict[str, Any], nodes: bool = False) -> str:
    """The inspect report as text."""
    lines = [f"model   {report['model']} (opset {report['opset']})"]
    if report["cleanup"]:
        lines.append(f"cleanup {'; '.join(report['cleanup'])}")
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for s in report[kind]:
            shape = "x".join("N" if (d is None and i == 0) else ("?" if d is None else str(d))
                             for i, d in enumerate(s["shape"]))
            extra = []
            if "num_classes" in s:
                extra.append(f"{s['num_classes']} classes")
            if "range" in s:
                extra.append(f"range [{s['range'][0]:g}, {s['range'][1]:g}]" + (
                    f" (assumed: {s['range_assumed']}; --input-range LO,HI if it is not)" if "range_assumed" in s else ""))
            if "source_form" in s:
                extra.append(f"the model file's form: {describe_form(s['source_form'])} (run() takes and gives that)")
            lines.append(f"  {s['name']:<20} {s['dtype']:<8} {shape:<18} {s['role']:<9} {', '.join(extra)}")
    lines.append("ops     " + ", ".join(f"{op} x{n}" for op, n in report["ops"].items()))
    lines.append(f"cost    {report['macs'] / 1e6:.2f} MMACs, {report['param_bytes'] / 1e6:.2f} MB parameters, "
                 f"{report['activation_bytes'] / 1e6:.2f} MB activations (batch {report['batch']})")
    if "shape_problem" in report:
        lines.append(f"warning {report['shape_problem']}")
    if nodes:
        lines.append(f"  {'node':<40} {'op':<18} {'MMACs':>9} {'param KB':>9} {'act KB':>9}  output tensor")
        for c in report["nodes"]:
            lines.append(f"  {c['name'][:40]:<40} {c['op']:<18} {c['macs'] / 1e6:>9.3f} "
                         f"{c['param_bytes'] / 1e3:>9.1f} {c['activation_bytes'] / 1e3:>9.1f}  {c['output']}")
    lines.append("targets:")
    for name, s in report["targets"].items():
        if not s["checked"]:
            lines.append(f"  {name:<26} not checked: {s['why']}")
        elif s.get("edgetpu"):
            lines.append(f"  {name:<26} lowers to TFLite; {s['edgetpu']}")
        elif s["supported"]:
            lines.append(f"  {name:<26} all ops supported")
        else:
            first = s["unsupported"][0]
            lines.append(f"  {name:<26} UNSUPPORTED: {len(s['unsupported'])} node(s), first: node {first['node']!r} "
                         f"(op {first['op']}): {first['why']}")
    lines.append("  (per op; whether the model fits an FPGA's on-chip RAM is checked when it is built)")
    return "\n".join(lines)
