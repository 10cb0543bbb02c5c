"""Operator support on the target's accelerator, from the bundle's artifact: what an Edge TPU
would map (Coral's rules, edgegen.backends.tflite.edgetpu), what XNNPACK or the NPU took in the
emulated run, or why nothing can be said for this accelerator here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..targets import Target


def accelerator(target: Target) -> str | None:
    """The accelerator a target's runtime needs that emulation replaces by the CPU path, or None."""
    options = target.backend_options
    if options.get("delegate") == "edgetpu":
        return "Edge TPU"
    if options.get("required_providers"):
        return " / ".join(options["required_providers"])
    if target.backend == "openvino" and options.get("device", "CPU") != "CPU":
        return f"OpenVINO {options['device']}"
    return None


def runtime_replaced(target: Target, ran: str | None) -> str | None:
    """Where a TFLite target's runtime (backend_options.runtime) is not the one that ran here (tflite-runtime not
    installed, LiteRT in its place): a note saying which ran and whose op support and timings these are; else None."""
    if target.backend != "tflite" or not ran:
        return None
    from ..backends.tflite.session import DEFAULT_RUNTIME

    wanted, here = target.backend_options.get("runtime", DEFAULT_RUNTIME), ran.split(" ")[0]
    if here == wanted:
        return None
    return (f"the device runs {wanted}, not installed here: {ran} ran in its place, so the op support, self-test and "
            f"timings are {here}'s, not {wanted}'s")


def check(bundle: Path, manifest: dict[str, Any], target: Target, execution: dict[str, Any] | None) -> dict[str, Any]:
    """{"accelerator", "rules", "mapped", "total", "summary"} or {"checked": False, "summary": why}."""
    options = target.backend_options
    if target.backend == "tflite" and options.get("delegate") == "edgetpu":
        from ..backends.tflite import edgetpu

        data = (bundle / manifest["session"]["entry"]).read_bytes()
        report = edgetpu.compatibility(data, _origins(bundle))
        return {"checked": True, "accelerator": "Edge TPU", "rules": edgetpu.RULES_SOURCE,
                "mapped": report["edgetpu_ops"], "total": report["ops"], "summary": edgetpu.summary(report),
                "first_fallback": report["first_fallback"]}
    delegation = (execution or {}).get("delegation")
    if target.backend == "tflite" and delegation:
        return {"checked": True, "accelerator": delegation.get("delegate", "XNNPACK"), "rules": "the emulated run",
                "mapped": delegation["delegated"], "total": delegation["ops"],
                "summary": f"{delegation.get('delegate', 'XNNPACK')} took {delegation['delegated']}/"
                           f"{delegation['ops']} ops in the emulated run"}
    if target.backend == "fpga" and execution:
        layers = sum(execution.get("int8", {}).values())
        host = sum(execution.get("float", {}).values())
        return {"checked": True, "accelerator": "edgegen NPU", "rules": "the bundle's NPU program", "mapped": layers,
                "total": layers + host, "summary": f"{layers} layers on the NPU, {host} element-wise ops on the host"}
    name = accelerator(target)
    if name:
        return {"checked": False, "summary": f"no operator rules for {name} here; the build checked the backend's "
                                             "operator set and the emulated run uses its CPU path"}
    return {"checked": True, "accelerator": "CPU", "rules": "the backend's operator set (checked at build)",
            "summary": "every operator runs on the CPU runtime"}


def _origins(bundle: Path) -> list[str]:
    """The ONNX node of each TFLite operator the build's Edge TPU report names (others: "")."""
    try:
        unmappable = json.loads((bundle / "reports" / "edgetpu.json").read_text()).get("unmappable", [])
    except (OSError, ValueError):
        return []
    names = {u["index"]: u.get("node", "") for u in unmappable}
    return [names.get(i, "") for i in range(max(names, default=-1) + 1)]
