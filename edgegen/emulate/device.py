"""`edgegen emulate`: a bundle run as its target device would run it, on this host.

The bundle runs in a child process with the target's thread count and its memory ceiling as an
address-space limit, runs its self-test and is timed; the target's accelerator is checked for
operator support; device latency is estimated from the target's roofline. aarch64 targets also
run in an arm64 userland under QEMU (same runtime package, aarch64 wheels) and must give the same
images as this host; FPGA targets run the NPU's functional model and its RTL simulation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import reference, targets
from ..bundle import MANIFEST, read_manifest, verify_files
from ..errors import BundleError, TargetError
from ..metrics import compare, quality_outputs, value_range
from ..reference import criteria, meets
from ..specs import TensorSpec
from . import SCHEMA, EmulatorUnavailableError, process, roofline, support, userland
from .render import last_line, tolerance as output_tolerance

QEMU_RUNS = 3
FP32_MAX_ABS = 1e-5
RTL_CLOCK_KEYS = ("fmax_mhz", "fmax_source", "timing_met", "latency_ms_at_board_clock")  # rtl.execution's, always
log = logging.getLogger(__name__)


def emulate(bundle: str | Path, target: str | None = None, runs: int = 20, rebuild: bool = False,
            aarch64: bool = True, rtl: bool = True, userland_root: Path | None = None,
            keep_outputs: bool = False) -> dict[str, Any]:
    """Emulate a bundle on its target (or `target`, which must be the one it was built for).

    aarch64=False skips the QEMU run of aarch64 targets, rtl=False the RTL tier of FPGA targets.
    Returns the report: constraints, the runs, checks (each with pass and detail), estimate, pass;
    keep_outputs adds "outputs": the reference input's outputs as the emulated device computed them
    (under QEMU for aarch64 targets).
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    reference.load(bundle, manifest)  # a reference that does not fit the manifest: DamagedBundle, naming it
    device = _target(bundle, manifest, target)
    estimate = roofline.estimate(manifest, device)
    # an FPGA bundle's host tier is the NPU's functional model, whatever EDGEGEN_FPGA_MODE or the target says:
    # the RTL tier is compared with it
    settings = process.Settings(threads=device.threads, memory_mb=device.memory_mb, runs=runs, host_fallback=True,
                                env={"EDGEGEN_FPGA_MODE": "functional"} if device.backend == "fpga" else None)
    host = process.run(bundle, settings)
    checks = [_memory_check(bundle, host, settings)]
    report: dict[str, Any] = {
        "schema": SCHEMA, "bundle": str(bundle), "target": device.name, "device": device.device, "arch": device.arch,
        "backend": manifest["backend"], "precision": manifest["precision"],
        "constraints": {"threads": device.threads, "memory_mb": device.memory_mb,
                        "accelerator_replaced_by_cpu": support.accelerator(device)},
        "host": _summary(host), "estimate": estimate, "checks": checks}
    if host["ok"]:
        report["constraints"]["runtime_replaced"] = support.runtime_replaced(device, host.get("runtime"))
        checks.append(_self_test_check("self-test on this host", host))
        report["op_support"] = support.check(bundle, manifest, device, host.get("execution"))
        if report["op_support"].get("first_fallback") and "edgetpu_compiler" not in estimate:  # the
            # roofline is the accelerator's alone; the compiler's own counts, where recorded, already say so
            estimate["uncounted"] = (f"only {report['op_support']['mapped']}/{report['op_support']['total']} ops "
                                     "map to the Edge TPU; the device's CPU runs the rest, which this does not count")
        outputs = host["outputs"]
        if device.arch == "aarch64":
            report["aarch64"], outputs = _aarch64(bundle, manifest, device, host, checks, rebuild, userland_root) \
                if aarch64 else ({"skipped": "not run (--no-aarch64): this result covers this host only"}, outputs)
        if device.backend == "fpga":
            report["rtl"] = _rtl(bundle, device, host, checks) if rtl else \
                {"skipped": "not run (--no-rtl): the functional model alone was checked"}
        if keep_outputs:
            report["outputs"] = outputs
    report["pass"] = all(c["pass"] for c in checks)
    return report


def _target(bundle: Path, manifest: dict[str, Any], name: str | None) -> targets.Target:
    built_for = manifest["target"]["name"]
    device = targets.load(name) if name else targets.recorded(manifest["target"])
    if device.name != built_for:
        raise BundleError(f"{bundle} was built for target {built_for!r} ({manifest['backend']}, "
                          f"{manifest['precision']}), not {device.name!r}; emulate it as {built_for!r}, or build "
                          f"the model for {device.name!r} with `edgegen build MODEL --target {device.name}`")
    if manifest["precision"] not in device.precisions:
        raise BundleError(f"{bundle}: precision {manifest['precision']} is not one target {device.name!r} runs "
                          f"({', '.join(device.precisions)})")
    if not name and not device.roofline:  # the file named may have one now: the manifest is what lacks it
        raise TargetError(f"{bundle / MANIFEST}: the target {built_for!r} it records has no 'roofline' key (its file "
                          f"{device.path} had none when the bundle was built, or the manifest was edited), so the "
                          f"latency cannot be estimated; emulate with --target {built_for} (the target file installed "
                          "here) or a target file of that name that has one, or rebuild the bundle")
    return device


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "outputs"}


def _memory_check(bundle: Path, run: dict[str, Any], settings: process.Settings) -> dict[str, Any]:
    """Within the ceiling; when the run failed, a run without the ceiling tells whether the ceiling
    was the cause and how much the bundle needs."""
    limit = settings.memory_mb
    if run["ok"]:
        return {"name": "memory ceiling", "pass": True,
                "detail": f"peak RSS {run['peak_rss_mb']:.0f} MB, peak address space {run['peak_vm_mb']:.0f} MB "
                          f"<= {limit} MB"}
    free = process.run(bundle, process.Settings(settings.threads, None, runs=1, warmup=0, host_fallback=True,
                                                env=settings.env))
    if not free["ok"]:
        return {"name": "bundle runs", "pass": False, "detail": run["message"]}
    return {"name": "memory ceiling", "pass": False,
            "detail": f"exceeded the target's {limit} MB: under the ceiling it failed ({last_line(run['message'])}); "
                      f"without it, it needs {free['peak_vm_mb']:.0f} MB of address space "
                      f"(peak RSS {free['peak_rss_mb']:.0f} MB)"}


def _self_test_check(name: str, run: dict[str, Any]) -> dict[str, Any]:
    test = run["self_test"]
    parts = [f"{out}: PSNR {r['psnr_db']:.2f} dB, max-abs {r['max_abs']:.3g} ({output_tolerance(r['tolerance'])})"
             + ("" if np.isfinite([r["psnr_db"], r["max_abs"]]).all() else
                " (not finite numbers, null in --json: the output or its reference holds NaN or infinite values)")
             for out, r in test["outputs"].items()]
    return {"name": name, "pass": bool(test["pass"]), "detail": "; ".join(parts)}


def _tolerance(tolerance: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in tolerance.items()) or "none"


def _aarch64(bundle: Path, manifest: dict[str, Any], device: targets.Target, host: dict[str, Any],
             checks: list[dict[str, Any]], rebuild: bool, root: Path | None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The QEMU run in the arm64 userland: (its report, its outputs; none where it did not run)."""
    if manifest["backend"] not in userland.BACKEND_PACKAGES:  # a custom aarch64 target with another runtime
        detail = (f"the arm64 userland holds {', '.join(userland.PACKAGES)}, and a bundle for {manifest['backend']} needs "
                  "a runtime it does not install: test this one on the device itself")
        checks.append({"name": "loads on aarch64 (QEMU)", "pass": False, "detail": detail})
        return {"skipped": detail}, {}
    root = Path(root or userland.default_root())
    stamp = userland.ensure(root, rebuild=rebuild)
    settings = process.Settings(threads=device.threads, memory_mb=None, runs=QEMU_RUNS, warmup=1, host_fallback=True)
    arm = process.run(bundle, settings, userland=root)
    loads = arm["ok"] and arm.get("machine") == "aarch64"
    checks.append({"name": "loads on aarch64 (QEMU)", "pass": loads,
                   "detail": f"{arm.get('runtime')} on {arm.get('machine')}" if arm["ok"] else arm["message"]})
    ran = arm.get("packages") or stamp.get("packages") or {}  # the versions that ran (the stamp's: a failed run)
    result = {"userland": str(root), "userland_build_s": stamp.get("build_s"), **_summary(arm), "packages": ran}
    drift = runtime_drift(ran, {name: userland.host_version(name) for name in ran})
    if drift:
        result["runtime_drift"] = drift
        log.warning("the arm64 userland %s: %s", root, drift)
    if not arm["ok"]:
        return result, {}
    checks.append(_self_test_check("self-test on aarch64", arm))
    match = same_images(manifest, host["outputs"], arm["outputs"])
    checks.append({"name": "same images on aarch64 as x86", "pass": match["pass"], "detail": match["detail"]})
    result["match"] = match
    result["slowdown_vs_host"] = round(arm["latency_ms"]["p50"] / host["latency_ms"]["p50"], 1)
    return result, arm["outputs"]


def runtime_drift(userland_versions: dict[str, str], host_versions: dict[str, str | None]) -> str | None:
    """What differs between the userland's runtime packages and this host's (None: nothing): a comparison of
    arm64 with x86 is then one of two runtime versions."""
    differ = [f"{name} {version} (this host: {host_versions[name]})" for name, version in userland_versions.items()
              if host_versions.get(name) and host_versions[name] != version]
    if not differ:
        return None
    return (f"its runtimes differ from this host's: {', '.join(differ)}, so arm64 is compared with x86 across two "
            "versions; run `edgegen emulate --rebuild` to install this host's versions in it")


def same_images(manifest: dict[str, Any], reference: dict[str, np.ndarray], got: dict[str, np.ndarray]
                ) -> dict[str, Any]:
    """arm64's outputs against x86's. int8 where every op of the artifact runs in int8 (the manifest's
    `execution` lists none in float): identical. fp32: each output's max-abs <= 1e-5 x the width of its declared
    range (FP32_MAX_ABS itself where it declares none): float32 rounding differs between the two CPUs' kernels by
    some ulps of the values, so the limit scales with them. fp16/bf16, and int8 with ops kept in float (their
    rounding differs, and the requantized values after them by a step): the bundle's self-test tolerance (max-abs
    and PSNR, each output's own); for int8 the images' PSNR against x86's at least the build's PSNR against the
    fp32 source: the two CPUs may differ by less than int8 differs from float, not by the self-test's 6 dB
    margin below it (a shift of 0.05 on every pixel passed). The rule, with what it was applied to, is in the
    detail."""
    precision = manifest["precision"]
    specs = [TensorSpec.from_json(s) for s in manifest["model"]["outputs"] if s["name"] in reference]
    diffs = {k: float(np.max(np.abs(reference[k].astype(np.float64) - got[k]))) if reference[k].size else 0.0
             for k in reference}
    worst = max(diffs.values())
    floats = _float_ops(manifest) if precision == "int8" else None
    if precision == "int8" and floats == "":
        ok, rule = worst == 0.0, "identical (int8: every op of the artifact runs in int8)"
    elif precision == "fp32":
        limits = {name: FP32_MAX_ABS for name in diffs}  # an output the manifest does not name: 1e-5
        limits.update({s.name: FP32_MAX_ABS * (s.range[1] - s.range[0]) for s in specs if s.range})
        ok = all(diffs[name] <= limit for name, limit in limits.items())
        each = "; ".join(f"{s.name} {limits[s.name]:.3g}" + (f" over [{s.range[0]:g}, {s.range[1]:g}]" if s.range
                                                              else " (no declared range)") for s in specs)
        rule = (f"max-abs <= {FP32_MAX_ABS:g} x the output's declared range width, {FP32_MAX_ABS:g} where it declares "
                f"none (fp32: {each})")
    else:
        tolerance = manifest["reference"]["tolerance"]
        images = {s.name for s in quality_outputs(specs)}
        wanted = criteria(tolerance, [s.name for s in specs], images)
        built = manifest.get("fidelity", {}).get("psnr_db")
        if precision == "int8" and isinstance(built, (int, float)):  # the CPUs may differ by less than int8 does
            wanted = {name: {**w, "min_psnr_db": max(w.get("min_psnr_db", built), built)} if name in images else w
                      for name, w in wanted.items()}
            tolerance = {**tolerance, "min_psnr_db vs x86": round(float(built), 2)}
        numbers = {s.name: compare(reference[s.name], got[s.name], value_range(s.range, reference[s.name]))
                   for s in specs}
        ok = all(meets(numbers[name], wanted[name]) for name in numbers)
        psnr = "; ".join(f"{name} {n['psnr_db']:.1f} dB" for name, n in numbers.items())
        why = precision if precision != "int8" else (f"int8 with {floats} in float" if floats else
                                                     "int8, the ops kept in float not recorded")
        rule = f"the bundle's tolerance ({why}: {_tolerance(tolerance)}; PSNR vs x86: {psnr})"
    return {"rule": rule, "max_abs": worst, "pass": ok, "detail": f"max-abs {worst:.3g} vs x86, rule: {rule}"}


def _float_ops(manifest: dict[str, Any]) -> str | None:
    """The ops an int8 artifact keeps in float, as its manifest's `execution` records them ("Tanh x1, ..."; ""
    where none), or None where it records no such list."""
    execution = manifest.get("execution")
    floats = execution.get("float") if isinstance(execution, dict) else None
    if not isinstance(floats, dict):
        return None
    return ", ".join(f"{op} x{count}" for op, count in floats.items() if count)


def _rtl(bundle: Path, device: targets.Target, functional: dict[str, Any], checks: list[dict[str, Any]]
         ) -> dict[str, Any]:
    """The RTL-simulation tier: same outputs as the functional model, bit for bit, and its cycles."""
    from ..backends import session_module

    ok, why = session_module("fpga").host_support({"mode": "rtl"})
    if not ok:
        raise EmulatorUnavailableError(f"the RTL tier of {bundle} cannot run here: {why} (or pass --no-rtl, "
                                       "rtl=False, to check the functional model alone)")
    settings = process.Settings(threads=1, memory_mb=None, runs=1, warmup=0, host_fallback=True,
                                env={"EDGEGEN_FPGA_MODE": "rtl"})
    rtl = process.run(bundle, settings)
    if rtl.get("error") == "unavailable":  # the simulator cannot be built here (its cache not writable, say)
        raise EmulatorUnavailableError(f"the RTL tier of {bundle} cannot run here: {rtl['message']}")
    if not rtl["ok"]:
        checks.append({"name": "RTL simulation", "pass": False, "detail": rtl["message"]})
        return _summary(rtl)
    same = all(np.array_equal(functional["outputs"][k], rtl["outputs"][k]) for k in functional["outputs"])
    execution = rtl.setdefault("execution", {})
    for key in RTL_CLOCK_KEYS:  # each there (null: unknown, or no bitstream checked timing), as the README lists them
        execution.setdefault(key, None)
    checks.append({"name": "RTL identical to the functional model", "pass": same,
                   "detail": f"{execution.get('cycles')} cycles" + (", outputs bit-identical" if same else
                                                                    ", outputs differ")})
    return {**_summary(rtl), "identical": same, "cycles": execution.get("cycles"),
            "latency_ms_at_fmax": execution.get("latency_ms_at_fmax"),
            "latency_ms_at_board_clock": execution.get("latency_ms_at_board_clock")}
