"""Device latency from a roofline model: the larger of compute time (ops / peak ops/s) and memory
time (bytes moved / bandwidth), with the peaks a target YAML records and cites. It is the latency
of a device running at its peak: an estimate, a lower bound on what a real device measures. On an
accelerator that caches the parameters in on-chip memory and keeps activations on chip (the Edge
TPU), only the inputs, outputs and off-chip-streamed parameters cross its link per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backends import STORED_AS
from ..errors import TargetError
from ..targets import ROOFLINE_KEYS, Target

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# (backend, precision) -> the precision the device computes it in, where another: LiteRT dequantizes an fp16
# bundle's float16 weights once at load and computes in f32 (weights and activations at 4 bytes)
COMPUTED_AS = {("tflite", "fp16"): "fp32"}
# a bundle's session.delegate -> its accelerator's on-chip memory for parameters, in bytes: its activations stay on
# chip too, so the target's bandwidth_gbs is the host link's (Coral: "roughly 8 MB of SRAM" on the Edge TPU; its
# compiler's on-chip / off-chip split, session.edgetpu_compiler, is used where the build recorded it)
ON_CHIP_PARAMETER_BYTES = {"edgetpu": 8 * 1024 ** 2}


def device_costs(manifest: dict[str, Any]) -> dict[str, Any]:
    """The MACs and parameter bytes of what the device runs: the artifact's own where its backend counted them
    (session.artifact: a LiteRT build's sub-pixel CONV_2D computes 2.2x a DCGAN graph's MACs and stores 1.2-1.7x its
    weight bytes), else the compiled graph's (model.macs, model.param_bytes); `from` says which."""
    own, model = manifest.get("session", {}).get("artifact"), manifest["model"]
    if own:
        return {"macs": own["macs"], "param_bytes": own["param_bytes"], "from": "the artifact (session.artifact)"}
    return {"macs": model["macs"], "param_bytes": model["param_bytes"], "from": "the compiled graph (model)"}


def computed_precision(manifest: dict[str, Any]) -> str:
    """The precision the bundle's backend computes in on its device (its own, or COMPUTED_AS's)."""
    return COMPUTED_AS.get((manifest["backend"], manifest["precision"]), manifest["precision"])


def traffic(manifest: dict[str, Any]) -> tuple[int, str]:
    """(bytes one image moves, how they were counted): the bundle's parameters once, plus every
    activation written and read once at the precision's element size: as the build recorded them, or
    from the source model where a bundle of an earlier edgegen did not and it is at hand (else inputs
    and outputs only, a smaller lower bound). At the precision the backend computes in: a LiteRT fp16
    bundle's weights and activations in f32. An accelerator with on-chip parameter memory
    (ON_CHIP_PARAMETER_BYTES): see link_traffic."""
    if manifest.get("session", {}).get("delegate") in ON_CHIP_PARAMETER_BYTES:
        return link_traffic(manifest)
    model, precision, computed = manifest["model"], manifest["precision"], computed_precision(manifest)
    element = ELEMENT_BYTES[computed]
    stored = STORED_AS.get((manifest["backend"], precision), precision)  # OpenVINO's bf16: an fp32 IR
    params = device_costs(manifest)["param_bytes"] * element // ELEMENT_BYTES[stored]
    how = f" ({manifest['backend']} computes {precision} bundles in {computed})" if computed != precision else ""
    source = Path(model.get("source", ""))
    if "activation_bytes" in model:
        activation_bytes = model["activation_bytes"]
    elif source.is_file():
        from ..graph import Graph
        from ..specs import TensorSpec

        specs = [TensorSpec.from_json(s) for s in model["inputs"]]  # at the shapes the bundle was built for
        shapes = {s.name: s.source_dims(s.default_shape) for s in specs}
        costs = Graph.load(str(source), input_shapes=shapes).node_costs()
        activation_bytes = sum(c.activation_bytes for c in costs)
    else:
        io = sum(_numel(s["default_shape"]) for s in model["inputs"] + model["outputs"])
        return params + io * element, "parameters + inputs and outputs (source model absent)" + how
    activations = activation_bytes // 4  # counted as fp32 elements
    return params + 2 * activations * element, "parameters + activations written and read once" + how


def link_traffic(manifest: dict[str, Any]) -> tuple[int, str]:
    """(bytes one call moves over the link to an accelerator that caches parameters on chip and keeps
    activations there, how they were counted): the inputs and outputs, plus the parameters the compiler streams
    from off-chip memory (session.edgetpu_compiler.off_chip_bytes; without it, those beyond the on-chip memory)."""
    model, session = manifest["model"], manifest["session"]
    element = ELEMENT_BYTES[computed_precision(manifest)]
    io = sum(_numel(s["default_shape"]) for s in model["inputs"] + model["outputs"]) * element
    off_chip = (session.get("edgetpu_compiler") or {}).get("off_chip_bytes")
    if off_chip is not None:
        how = "the compiler's off-chip parameters"
    else:
        on_chip = ON_CHIP_PARAMETER_BYTES[session["delegate"]]
        off_chip = max(0, device_costs(manifest)["param_bytes"] - on_chip)
        how = f"parameters beyond the {on_chip / 1024 ** 2:g} MiB on-chip memory"
    return io + off_chip, (f"inputs and outputs over the host link + {how} ({off_chip} bytes); parameters cached on "
                           "chip and activations kept there do not cross it")


def estimate(manifest: dict[str, Any], target: Target) -> dict[str, Any]:
    """The roofline estimate of one image's latency on the target at the bundle's precision (at the peak of the
    precision it computes in, where the target gives one): the cost of the batch the bundle was built for
    (`model.cost_batch`) divided by that batch; batch_latency_ms is the whole batch's."""
    if not target.roofline:
        raise TargetError(f"{target.path}: target {target.name!r} has no 'roofline' key, so its latency cannot be "
                          f"estimated; add roofline: {{{', '.join(ROOFLINE_KEYS)}}} with a cited public source")
    precision = manifest["precision"]
    peaks = target.roofline["peak_gops"]
    if precision not in peaks:
        raise TargetError(f"{target.path}: roofline.peak_gops has no entry for {precision} (the bundle's precision)")
    peak = peaks.get(computed_precision(manifest), peaks[precision])
    costs = device_costs(manifest)
    ops = 2 * costs["macs"]
    batch = int(manifest["model"].get("cost_batch") or 1)
    moved, counted = traffic(manifest)
    compute_ms = ops / (peak * 1e9) * 1e3
    memory_ms = moved / (target.roofline["bandwidth_gbs"] * 1e9) * 1e3
    result = {"label": "estimate (roofline: the device at its peak; real devices are slower)",
              "latency_ms": round(max(compute_ms, memory_ms) / batch, 4), "batch": batch,
              "batch_latency_ms": round(max(compute_ms, memory_ms), 4),
              "bound": "compute" if compute_ms >= memory_ms else "memory", "compute_ms": round(compute_ms, 4),
              "memory_ms": round(memory_ms, 4), "ops": ops, "bytes": moved, "bytes_counted": counted,
              "costs_from": costs["from"], "peak_gops": peak, "bandwidth_gbs": target.roofline["bandwidth_gbs"],
              "source": target.roofline["source"]}
    counts = manifest.get("session", {}).get("edgetpu_compiler")
    if counts and counts.get("edgetpu_ops") is not None:  # the compiler's own mapping, which the build recorded
        cpu = (f"the compiler maps {counts['edgetpu_ops']}/{counts['total_ops']} ops to the Edge TPU; the device's "
               f"CPU runs the other {counts['cpu_ops']}, which this does not count") if counts.get("cpu_ops") else None
        result["edgetpu_compiler"] = {**counts, "summary": manifest["session"]["edgetpu"], "uncounted": cpu}
        if cpu:
            result["uncounted"] = cpu
    return result


def _numel(shape: list) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
