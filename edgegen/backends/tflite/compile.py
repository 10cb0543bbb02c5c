"""Build half of the TFLite backend: Graph -> .tflite, written with the schema object API (no
TensorFlow), plus the XNNPACK delegation report and, for int8, the Edge TPU compatibility report
(and the Edge TPU compile on Edge TPU targets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from ...errors import BuildError, UnsupportedOpError
from ...graph import Graph
from ...targets import Target
from .. import require
from . import edgetpu, xnnpack
from .cost import artifact_cost
from .lower import constant_output, lower, no_rule
from .ops import RULES
from .ops.elementwise import FIXED_GRID
from .prepare import prepare
from .qdq import with_fixed_grids

ARTIFACT = "model.tflite"
# a cubic Resize would otherwise be a float island in an int8 model; TRANSPOSE_CONV has int8 kernels (a
# 3-output one as one Conv was no faster); a 3-output CONV_2D with 12 outputs and stride 2 is (CycleGAN 0.89x)
INT8_LOWERINGS = ("cubic_resize", "narrow_conv_strided", "activation_into_phases")
# the Edge TPU has no DEPTH_TO_SPACE (ops/tensor.py writes one as a TRANSPOSE_CONV there): a to-RGB layer stays
# one CONV_2D rather than become two layers whose speed on a TPU nobody here has measured
EDGETPU_WITHOUT = ("narrow_conv_strided",)
# and it maps a graph only up to its first float op: a latent's `/ 3` (which CPUs keep float) made a TAESD-style
# decoder run all on the host; as a Mul it is quantized with the input
EDGETPU_WITH = ("latent_arithmetic",)
EDGETPU_ARTIFACT = "model_edgetpu.tflite"
# what the manifest's session.edgetpu_compiler keeps of the compiler's report (emulate's estimate reads it)
COMPILER_COUNTS = ("version", "total_ops", "edgetpu_ops", "cpu_ops", "subgraphs", "on_chip_used_bytes",
                   "on_chip_remaining_bytes", "off_chip_bytes")
REPORTS = "reports"


def unsupported_nodes(graph: Graph, target: Target) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node the TFLite lowering cannot express."""
    try:
        p = prepare(graph)
    except UnsupportedOpError as exc:
        return [("(quantized graph)", "QuantizeLinear/DequantizeLinear", str(exc))]
    missing = []
    for node in p.nodes:
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        why = rule.check(node, p) if rule else no_rule(node, p)
        if why:
            missing.append((node.name, node.op_type, why))
    missing += [(name, "Constant", constant_output(name)) for name in (s.name for s in p.outputs) if name in p.consts]
    return missing


def int8_lowerings(target: Target) -> tuple[str, ...]:
    """The exact rewrites before int8 quantization for this target (see passes.lowering)."""
    if target.backend_options.get("delegate") == "edgetpu":
        return EDGETPU_WITH + tuple(name for name in INT8_LOWERINGS if name not in EDGETPU_WITHOUT)
    return INT8_LOWERINGS


# TFLite's int8 kernels compute what the QDQ graph defines (int32 sums, one rounding per requantization): the floor
# search scores candidates by that definition; ONNX Runtime's fused kernels put an ESPCN's all-int8 form 10 dB
# below the artifact it becomes (41.3 against 51.7 dB, the definition's score exactly)
EXACT_INT8 = True


def int8_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ graph as the TFLite artifact computes it (and the quality-floor search scores it): an int8
    TANH or LOGISTIC writes TFLite's fixed output grid (1/128 and 1/256 steps)."""
    return with_fixed_grids(model, {"Tanh": FIXED_GRID["TANH"], "Sigmoid": FIXED_GRID["LOGISTIC"]})


# the QDQ graph as the lowering runs it: serving parts are cut from it (a boundary on the grid its op writes),
# and the report counts its int8 ops
lowered_form = int8_form


def compile(graph: Graph, target: Target, precision: str, workdir: Path) -> dict[str, Any]:
    """Write model.tflite (and reports) into workdir; return files, session settings and tool versions."""
    require("ai_edge_litert", "building for TFLite", "tflite")
    import ai_edge_litert
    import flatbuffers

    delegate = target.backend_options.get("delegate", "xnnpack")
    p = prepare(graph)
    if precision == "int8" and not p.quant:
        raise BuildError(f"{graph.source}: int8 TFLite is lowered from the quantized QDQ graph (QuantizeLinear/"
                         "DequantizeLinear around every int8 tensor), which carries the scales; this graph has "
                         "none: quantize it first (edgegen's quantize pass, `--precision int8`), or build fp32/fp16")
    if precision != "int8" and (p.quant or delegate == "edgetpu"):
        raise BuildError(f"{graph.source}: {'the Edge TPU runs int8 models only' if delegate == 'edgetpu' else 'the graph is quantized (QDQ)'}"
                         f"; build target {target.name} with --precision int8")
    lowered = lower(p, precision, delegate)
    if delegate == "edgetpu":
        lowered.builder.reorder(edgetpu.schedule(*lowered.builder.view()))
    workdir = Path(workdir)
    (workdir / ARTIFACT).write_bytes(lowered.builder.serialize(f"edgegen {graph.name} {precision}"))
    reports = {"xnnpack": _delegation(workdir / ARTIFACT)}
    session = {"entry": ARTIFACT, "precision": precision,
               "runtime": target.backend_options.get("runtime", "ai-edge-litert"), "delegate": delegate,
               "inputs": lowered.inputs, "outputs": lowered.outputs,
               "delegation": xnnpack.summary(reports["xnnpack"]),
               "artifact": artifact_cost((workdir / ARTIFACT).read_bytes())}  # see cost.py
    files = [ARTIFACT]
    tools = {"ai-edge-litert": ai_edge_litert.__version__, "flatbuffers": flatbuffers.__version__}
    if precision == "int8":
        reports["edgetpu"] = _edgetpu_compatibility(p, lowered if delegate == "edgetpu" else None)
        session["edgetpu"] = edgetpu.summary(reports["edgetpu"])
    if delegate == "edgetpu":
        compiled = edgetpu.compile_model(workdir / ARTIFACT, workdir / EDGETPU_ARTIFACT, reports["edgetpu"],
                                         str(graph.source))
        reports["edgetpu_compiler"] = compiled
        files += [EDGETPU_ARTIFACT, *([compiled["log"]] if compiled.get("log") else [])]
        session["edgetpu_entry"] = EDGETPU_ARTIFACT
        tools["edgetpu_compiler"] = compiled["version"]
        said = edgetpu.compiler_summary(compiled, reports["edgetpu"])
        if said:  # once the compiler ran, its counts are what the bundle states
            session["edgetpu"] = said
            session["edgetpu_compiler"] = {k: compiled.get(k) for k in COMPILER_COUNTS}
    (workdir / REPORTS).mkdir(exist_ok=True)
    for name, rep in reports.items():
        (workdir / REPORTS / f"{name}.json").write_text(json.dumps(rep, indent=2) + "\n")
        files.append(f"{REPORTS}/{name}.json")
    warnings = list(lowered.warnings)
    if delegate == "edgetpu":
        warnings += _edgetpu_warnings(session, reports)
    return {"files": files, "session": session, "tools": tools, "warnings": warnings}


def _edgetpu_warnings(session: dict[str, Any], reports: dict[str, Any]) -> list[str]:
    """A split Edge TPU graph (by the compiler's counts once it ran; else by edgegen's rules), and a compiler
    summary edgegen could not read."""
    compiled, warnings = reports.get("edgetpu_compiler") or {}, []
    if compiled.get("unknown"):
        warnings.append(f"{edgetpu.compiler.TOOL} {compiled.get('version') or '(version not recognised either)'} "
                        f"compiled the model (exit 0, {EDGETPU_ARTIFACT} written), but its summary is not in the "
                        f"format edgegen reads (that of compiler 16): {', '.join(compiled['unknown'])} not found, "
                        f"marked unknown in {REPORTS}/edgetpu_compiler.json; how much maps is edgegen's prediction "
                        f"alone ({session['edgetpu']}). Its last lines: {compiled.get('console_tail', '')}")
    counts = session.get("edgetpu_compiler")
    if counts:
        split = counts["cpu_ops"] or counts["edgetpu_ops"] != counts["total_ops"] or (counts["subgraphs"] or 1) > 1
        where = f"{REPORTS}/edgetpu_compiler.json lists the compiler's operator table"
    else:
        split = reports["edgetpu"]["first_fallback"] is not None
        where = f"{REPORTS}/edgetpu.json lists each op and why"
    if split:
        warnings.append(f"{session['edgetpu']}: on the device those run on its CPU, far slower than on the Edge TPU "
                        f"({where})")
    return warnings


EDGETPU_PREVIEW_SAMPLES = 4  # synthetic inputs inspect's Edge TPU preview calibrates on


def edgetpu_preview(graph: Graph, target: Target, calibration_count: int = EDGETPU_PREVIEW_SAMPLES) -> dict[str, Any]:
    """The Edge TPU compatibility report of a float graph (`edgegen inspect`): quantized with every layer in int8
    on `calibration_count` synthetic inputs, then checked as an Edge TPU build checks its own (a build that keeps
    layers in float to meet its quality floor splits the graph at the first of them)."""
    from ...passes.calibration import load_calibration
    from ...passes.lowering import lower as lower_graph
    from ...passes.quantize import Quantizer

    if prepare(graph).quant:  # already QDQ: as it is
        return _edgetpu_compatibility(prepare(graph), None)
    rewritten, _ = lower_graph(graph, int8_lowerings(target))
    model = Quantizer(rewritten, load_calibration(graph.inputs, None, calibration_count)).emit()
    return _edgetpu_compatibility(prepare(rewritten.with_model(model, [])), None)


def _edgetpu_compatibility(p, lowered) -> dict[str, Any]:
    """What an Edge TPU build of this graph would map (its own lowering and op order), on any host."""
    if lowered is None:
        lowered = lower(p, "int8", "edgetpu")
        lowered.builder.reorder(edgetpu.schedule(*lowered.builder.view()))
    return edgetpu.compatibility(lowered.builder.serialize("edgetpu"), [r.origin for r in lowered.builder.records])


def _delegation(model: Path) -> dict[str, Any]:
    """The XNNPACK delegation of the model in ai-edge-litert on this host (1 thread)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(model), num_threads=1)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise BuildError(f"the emitted {model.name} does not load in ai-edge-litert: "
                         f"{str(exc).strip().splitlines()[0]}. Report this model to the edgegen developers.") from None
    return xnnpack.report(interpreter)

