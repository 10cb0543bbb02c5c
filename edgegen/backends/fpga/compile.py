"""Build half of the `fpga` backend: the QDQ graph -> an NPU program and its memory images.

Files in the bundle: `npu/program.npz` (WGT, PAR, LUT, TAP, PROG contents), `npu/host.npz`
(embedding tables the host looks rows up in), `npu/*.hex` ($readmemh images of the same memories,
what a bitstream's RAMs are initialized or patched with) and `reports/npu.json` (every layer, its
MACs and ideal cycles, memory use against the target's RAM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError
from ...graph import Graph
from ...targets import Target
from ..tflite.prepare import prepare
from .alloc import allocate, check_static, encode
from .banks import assign_banks
from .isa import KIND_ADD, KIND_MUL, NpuConfig
from .lower import SUPPORTED, Lowerer, unary_spec
from .lower_linear import transposed_form_problem
from .support import static_problem

PROGRAM = "npu/program.npz"
# the NPU runs transposed convolution itself and has no cubic resize (refused before any pass runs)
INT8_LOWERINGS: tuple[str, ...] = ()
INT8_ONLY = "the edgegen NPU runs every layer in int8"  # the quality floor cannot keep layers in float here
EXACT_INT8 = True  # integer layers as the QDQ graph defines them: the floor is scored by that definition
HOST_TABLES = "npu/host.npz"
REPORT = "reports/npu.json"
_FLOAT_ONLY = {"InstanceNormalization": "instance normalization needs per-image statistics, which the QDQ graph "
                                        "keeps in float"}


def config_of(target: Target) -> NpuConfig:
    """The NPU instance a target describes (backend_options: lanes and memory sizes)."""
    try:
        return NpuConfig.from_options(target.backend_options)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"{target.path}: backend_options of an fpga target: {exc}") from None


def unsupported_nodes(graph: Graph, target: Target) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node of the (float) graph the NPU has no layer for, or that its lowering
    refuses whatever the int8 grids (`support.static_problem`: same reasons). The NPU runs one image at a
    time, so the graph is read at batch 1 with its constants folded: shape arithmetic of a dynamic batch
    (Shape/ConstantOfShape/Equal/Where feeding an Expand) needs no layer."""
    missing = []
    prepared = prepare(graph, fold_batchnorm=False, decompose_ops=False)
    for node in prepared.nodes:
        if node.op_type in _FLOAT_ONLY:
            missing.append((node.name, node.op_type, _FLOAT_ONLY[node.op_type]))
        elif node.op_type == "ConvTranspose" and (problem := transposed_form_problem(node)):
            missing.append((node.name, node.op_type, problem))
        elif node.op_type == "PRelu" and unary_spec(node, prepared) is None:
            missing.append((node.name, node.op_type, "per-channel slopes: the NPU applies one 256-entry table per "
                                                      "layer, so only a PRelu with a single slope runs"))
        elif node.op_type == "Pow" and unary_spec(node, prepared) is None:
            missing.append((node.name, node.op_type, "a Pow runs as a 256-entry table, so only with one constant "
                                                      "exponent"))
        elif node.op_type not in SUPPORTED and node.op_type not in ("Constant", "BatchNormalization", "Dropout",
                                                                      "Identity", "Shape", "Cast"):
            missing.append((node.name, node.op_type, "the edgegen NPU has no layer for this op"))
        elif problem := static_problem(node, prepared):
            missing.append((node.name, node.op_type, problem))
    return missing


def lower_graph(graph: Graph, config: NpuConfig, target: str = "the target"):
    """Prepared QDQ graph -> (lowered model, memory report, images); raises on what cannot run or fit."""
    # the QDQ graph rounds after the conv, then normalizes
    p = prepare(graph, fold_batchnorm=False, decompose_ops=False)
    if not p.quant:
        raise BuildError(f"{graph.source}: the NPU runs int8 only and is compiled from the quantized QDQ graph; "
                         "build with --precision int8")
    lowerer = Lowerer(p, config, graph.source)
    lowered = lowerer.run()
    bank_copies = assign_banks(lowerer, lowered) if config.act_banks > 1 else None
    memory = {**check_static(lowered.program, target), **allocate(lowered.program, lowered.buffers, target)}
    if bank_copies is not None:
        memory["bank_copies"] = bank_copies
    return lowered, memory, encode(lowered.program)


def compile(graph: Graph, target: Target, precision: str, workdir: Path) -> dict[str, Any]:
    """Write the program, memory images and report into workdir; return files and session settings."""
    if precision != "int8":
        raise BuildError(f"target {target.name}: the NPU computes int8 only; build with --precision int8")
    config = config_of(target)
    lowered, memory, images = lower_graph(graph, config, target.name)
    workdir = Path(workdir)
    (workdir / "npu").mkdir(exist_ok=True)
    images.save(workdir / PROGRAM)
    tables = {f"gather{i}": host.gather for i, (_, host) in enumerate(lowered.inputs) if host.gather is not None}
    np.savez(workdir / HOST_TABLES, **tables)
    hex_files = [f"npu/{name}" for name in images.write_hex(workdir / "npu", config.lanes)]
    layers = [_layer_report(layer, config.lanes) for layer in lowered.program.layers]
    report = {"config": config.to_json(), "memory": memory, "layers": layers,
              "macs": sum(r["macs"] for r in layers), "ideal_cycles": sum(r["macs"] for r in layers) / config.lanes}
    (workdir / "reports").mkdir(exist_ok=True)
    (workdir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    inputs = []
    for i, (tensor, host) in enumerate(lowered.inputs):
        entry = {"name": tensor.name, "source": host.source, "chain": host.chain, "placement": tensor.placement()}
        if host.gather is not None:
            entry["gather"] = f"gather{i}"
        inputs.append(entry)
    outputs = [{"name": name, "tensor": tensor.name, "chain": chain, "shape": shape, "placement": tensor.placement()}
               for name, tensor, chain, shape in lowered.outputs]
    layer_ops: dict[str, int] = {}
    for layer in lowered.program.layers:
        for op in (layer.op, layer.notes.get("fused")):
            if op:
                layer_ops[op] = layer_ops.get(op, 0) + 1
    session = {"entry": PROGRAM, "host_tables": HOST_TABLES, "precision": precision, "npu": config.to_json(),
               "mode": target.backend_options.get("mode", "functional"), "inputs": inputs, "outputs": outputs,
               "fmax_mhz": target.backend_options.get("fmax_mhz"), "layer_ops": layer_ops,
               "summary": {"layers": len(layers), "macs": report["macs"], **memory}}
    files = [PROGRAM, HOST_TABLES, REPORT, *hex_files]
    if target.backend_options.get("board") and target.backend_options.get("bitstream", True):  # part 2
        from .bitstream import stage

        extra, session["bitstream"] = stage(workdir, target, config, memory, images)
        files += extra
    return {"files": files, "session": session,
            "tools": {"npu_rtl": "hw/npu (edgegen)", "numpy": np.__version__}}


def _layer_report(layer, lanes: int) -> dict[str, Any]:
    names = {KIND_ADD: "sub" if layer.sub else "add", KIND_MUL: "mul"}
    kind = names.get(layer.kind) or ("depthwise" if layer.depthwise else "broadcast") + ("-up" if layer.up else "")
    return {"name": layer.name, "op": layer.op, "kind": kind, "macs": layer.macs, "out": [layer.oh, layer.ow],
            "groups": layer.groups, "table": layer.lut,
            **({"fused": layer.notes["fused"]} if "fused" in layer.notes else {})}

